package dataplane

import "encoding/binary"

// Ethernet header facts the switch needs. Frames from the wire and from
// guests are untrusted: every helper checks lengths before reading.
const (
	ethAddrLen  = 6
	ethHdrLen   = 14
	vlanTagLen  = 4
	tpid8021Q   = 0x8100
	tpid8021AD  = 0x88a8
	macPairLen  = 2 * ethAddrLen
	minFrameLen = ethHdrLen
)

// MAC is a hardware address as a comparable value.
type MAC [ethAddrLen]byte

// IsMulticast reports whether m is a group address (broadcast included).
func (m MAC) IsMulticast() bool { return m[0]&1 == 1 }

// String formats m as aa:bb:cc:dd:ee:ff.
func (m MAC) String() string {
	const hexdigits = "0123456789abcdef"
	b := make([]byte, 0, 17)
	for i, x := range m {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, hexdigits[x>>4], hexdigits[x&0xf])
	}
	return string(b)
}

func dstMAC(frame []byte) (m MAC) { copy(m[:], frame[0:6]); return }
func srcMAC(frame []byte) (m MAC) { copy(m[:], frame[6:12]); return }

// frameVLAN returns the VLAN id of the outer tag (802.1Q or 802.1ad) of an
// Ethernet frame at least ethHdrLen long, and whether it is tagged. A
// truncated tag reports ok=false.
func frameVLAN(frame []byte) (vlan uint16, tagged, ok bool) {
	tpid := binary.BigEndian.Uint16(frame[12:14])
	if tpid != tpid8021Q && tpid != tpid8021AD {
		return 0, false, true
	}
	if len(frame) < ethHdrLen+vlanTagLen {
		return 0, true, false
	}
	return binary.BigEndian.Uint16(frame[14:16]) & 0x0fff, true, true
}

// stripTag removes the outer VLAN tag in place by moving the two MAC
// addresses forward over it, and returns the shorter frame, which starts 4
// bytes later in the same buffer.
func stripTag(frame []byte) []byte {
	copy(frame[vlanTagLen:vlanTagLen+macPairLen], frame[:macPairLen])
	return frame[vlanTagLen:]
}

// insertTag adds an 802.1Q tag with the given VLAN id to the frame
// buf[off:off+n], using the 4 bytes of headroom before it; off must be at
// least 4. It returns the tagged frame buf[off-4 : off+n].
func insertTag(buf []byte, off, n int, vlan uint16) []byte {
	start := off - vlanTagLen
	copy(buf[start:start+macPairLen], buf[off:off+macPairLen])
	binary.BigEndian.PutUint16(buf[start+12:], tpid8021Q)
	binary.BigEndian.PutUint16(buf[start+14:], vlan&0x0fff)
	return buf[start : off+n]
}
