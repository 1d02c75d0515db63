package virtio

// Packed virtqueue layout (virtio 1.1, 2.7): one ring of descriptors that
// the driver makes available and the device marks used in place, plus
// two 4-byte event suppression structures (the driver area, written by
// the driver, and the device area, written by the device).
const (
	// PackedDescSize: addr u64, len u32, id u16, flags u16.
	PackedDescSize = 16
	// PackedEventSize: off_wrap u16 (offset in bits 0-14, wrap counter
	// in bit 15), flags u16.
	PackedEventSize = 4
)

// Packed descriptor flags, besides DescFNext, DescFWrite, DescFIndirect.
// A descriptor is available when AVAIL equals the driver's wrap counter
// and USED does not; used when both equal the device's wrap counter.
const (
	DescFAvail = 1 << 7
	DescFUsed  = 1 << 15
)

// Event suppression flags (pvirtq_event_suppress.flags).
const (
	EventFEnable  = 0 // notify on every event
	EventFDisable = 1 // no notifications
	EventFDesc    = 2 // notify when the descriptor at off_wrap is reached (EVENT_IDX only)
)

// EventWrapBit is bit 15 of off_wrap and of a packed vring base.
const EventWrapBit = 1 << 15

// PackedDescTableSize is the size in bytes of a packed ring of n entries.
func PackedDescTableSize(n int) int { return PackedDescSize * n }
