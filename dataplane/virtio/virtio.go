// Package virtio holds the parts of the virtio 1.1 specification that both
// sides of a vhost-user connection share: feature bits, the split
// virtqueue layout and the virtio-net header.
package virtio

// Feature bits (virtio 1.1, 5.1.3 and 6; vhost-user for bit 30).
const (
	NetFCsum          = 1 << 0
	NetFGuestCsum     = 1 << 1
	NetFMTU           = 1 << 3
	NetFMAC           = 1 << 5
	NetFGuestTSO4     = 1 << 7
	NetFGuestTSO6     = 1 << 8
	NetFGuestECN      = 1 << 9
	NetFGuestUFO      = 1 << 10
	NetFHostTSO4      = 1 << 11
	NetFHostTSO6      = 1 << 12
	NetFHostECN       = 1 << 13
	NetFHostUFO       = 1 << 14
	NetFMrgRxbuf      = 1 << 15
	NetFStatus        = 1 << 16
	NetFCtrlVQ        = 1 << 17
	NetFCtrlRx        = 1 << 18
	NetFMQ            = 1 << 22
	RingFIndirectDesc = 1 << 28
	RingFEventIdx     = 1 << 29
	FProtocolFeatures = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	FVersion1         = 1 << 32
	FAccessPlatform   = 1 << 33
	FRingPacked       = 1 << 34
	FInOrder          = 1 << 35
)

// Descriptor flags.
const (
	DescFNext     = 1
	DescFWrite    = 2
	DescFIndirect = 4
)

// Ring flags: the driver asks for no interrupts (avail.flags), the device
// asks for no notifications (used.flags).
const (
	AvailFNoInterrupt = 1
	UsedFNoNotify     = 1
)

// Split virtqueue layout (virtio 1.1, 2.6).
const (
	DescSize      = 16 // addr u64, len u32, flags u16, next u16
	UsedElemSize  = 8  // id u32, len u32
	MaxQueueSize  = 32768
	ringHeaderLen = 4 // flags u16, idx u16
)

// DescTableSize is the size in bytes of a descriptor table of n entries.
func DescTableSize(n int) int { return DescSize * n }

// AvailRingSize is the size of the available ring of n entries,
// including used_event.
func AvailRingSize(n int) int { return ringHeaderLen + 2*n + 2 }

// UsedRingSize is the size of the used ring of n entries, including
// avail_event.
func UsedRingSize(n int) int { return ringHeaderLen + UsedElemSize*n + 2 }

// NetHdrLen is the size of struct virtio_net_hdr with num_buffers, used
// when VERSION_1 or MRG_RXBUF is negotiated (always, for vmq).
const NetHdrLen = 12

// NetHdrLegacyLen is the header without num_buffers (legacy, no MRG_RXBUF).
const NetHdrLegacyLen = 10

// NetHdrLenFor returns the header length for the negotiated features.
func NetHdrLenFor(features uint64) int {
	if features&(FVersion1|NetFMrgRxbuf) != 0 {
		return NetHdrLen
	}
	return NetHdrLegacyLen
}

// Net config status bits.
const NetSLinkUp = 1

// NeedEvent reports whether an event index crossed by moving from old to
// new requires a notification (vring_need_event in the spec).
func NeedEvent(eventIdx, newIdx, oldIdx uint16) bool {
	return newIdx-eventIdx-1 < newIdx-oldIdx
}
