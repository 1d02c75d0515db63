package virtio

import (
	"encoding/binary"
	"errors"
)

// NetHdr is struct virtio_net_hdr (virtio 1.1, 5.1.6), little-endian as
// VERSION_1 has it. On a frame the driver sends, Flags NeedsCsum asks the
// device to fill the checksum at CsumStart+CsumOffset, and a GSOType other
// than GSONone asks it to cut the frame into segments of GSOSize payload
// bytes. On a frame the device hands the driver, the same fields say the
// frame is still a large segment or still lacks its checksum, or
// (DataValid) that its checksum was checked.
type NetHdr struct {
	Flags, GSOType                                     uint8
	HdrLen, GSOSize, CsumStart, CsumOffset, NumBuffers uint16
}

// NetHdr.Flags.
const (
	NetHdrFNeedsCsum = 1
	NetHdrFDataValid = 2
	NetHdrFRSCInfo   = 4
)

// NetHdr.GSOType; GSOECN is or-ed to the others: the segment has CWR set,
// which only the first of its segments may carry.
const (
	GSONone  = 0
	GSOTCPv4 = 1
	GSOUDP   = 3
	GSOTCPv6 = 4
	GSOUDPL4 = 5
	GSOECN   = 0x80
)

// MinGSOSize is the smallest gso_size vmq accepts from a guest: Linux's
// smallest TCP MSS is 48 (net.ipv4.tcp_min_snd_mss); a smaller one would
// only make one frame cost thousands of segments.
const MinGSOSize = 48

// OffloadFeatures are the checksum and TCP segmentation offloads a device
// can offer (HOST_*: the driver may send them; GUEST_*: it accepts them).
const OffloadFeatures = NetFCsum | NetFGuestCsum | NetFHostTSO4 | NetFHostTSO6 | NetFHostECN |
	NetFGuestTSO4 | NetFGuestTSO6 | NetFGuestECN

// Decode reads a header of NetHdrLen (or NetHdrLegacyLen: no NumBuffers)
// bytes.
func (h *NetHdr) Decode(b []byte) {
	_ = b[NetHdrLegacyLen-1]
	h.Flags, h.GSOType = b[0], b[1]
	h.HdrLen = binary.LittleEndian.Uint16(b[2:])
	h.GSOSize = binary.LittleEndian.Uint16(b[4:])
	h.CsumStart = binary.LittleEndian.Uint16(b[6:])
	h.CsumOffset = binary.LittleEndian.Uint16(b[8:])
	h.NumBuffers = 0
	if len(b) >= NetHdrLen {
		h.NumBuffers = binary.LittleEndian.Uint16(b[10:])
	}
}

// Encode writes the header into b (NetHdrLen or NetHdrLegacyLen bytes).
func (h *NetHdr) Encode(b []byte) {
	_ = b[NetHdrLegacyLen-1]
	b[0], b[1] = h.Flags, h.GSOType
	binary.LittleEndian.PutUint16(b[2:], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:], h.CsumOffset)
	if len(b) >= NetHdrLen {
		binary.LittleEndian.PutUint16(b[10:], h.NumBuffers)
	}
}

// IsPlain reports whether the header asks nothing of the device: the
// frame is complete as it is.
func (h *NetHdr) IsPlain() bool { return h.Flags&NetHdrFNeedsCsum == 0 && h.GSOType == GSONone }

// Errors of Validate: what is wrong with a driver's header.
var (
	ErrHdrFlags    = errors.New("virtio-net header: flags other than NEEDS_CSUM")
	ErrHdrCsum     = errors.New("virtio-net header: checksum position outside the frame")
	ErrHdrGSOType  = errors.New("virtio-net header: unsupported gso_type")
	ErrHdrGSOCsum  = errors.New("virtio-net header: segmentation without NEEDS_CSUM")
	ErrHdrGSOSize  = errors.New("virtio-net header: gso_size out of range")
	ErrHdrHdrLen   = errors.New("virtio-net header: hdr_len beyond the frame")
	ErrHdrECNNoGSO = errors.New("virtio-net header: ECN bit without segmentation")
)

// Validate checks a header a driver sent with a frame of frameLen bytes
// (guest input): only NEEDS_CSUM in flags, the checksum field inside the
// frame, TCP segmentation only (v4 or v6, ECN allowed), with NEEDS_CSUM,
// gso_size at least MinGSOSize, hdr_len within the frame. A header that
// passes is safe to act on; whether it matches the frame's protocol
// headers is for the one who parses them.
func (h *NetHdr) Validate(frameLen int) error {
	if h.Flags&^NetHdrFNeedsCsum != 0 {
		return ErrHdrFlags
	}
	if h.Flags&NetHdrFNeedsCsum != 0 && int(h.CsumStart)+int(h.CsumOffset)+2 > frameLen {
		return ErrHdrCsum
	}
	if int(h.HdrLen) > frameLen {
		return ErrHdrHdrLen
	}
	switch h.GSOType &^ GSOECN {
	case GSONone:
		if h.GSOType != GSONone {
			return ErrHdrECNNoGSO
		}
		return nil
	case GSOTCPv4, GSOTCPv6:
	default:
		return ErrHdrGSOType
	}
	if h.Flags&NetHdrFNeedsCsum == 0 {
		return ErrHdrGSOCsum
	}
	if h.GSOSize < MinGSOSize {
		return ErrHdrGSOSize
	}
	return nil
}
