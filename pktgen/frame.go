package pktgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Frame size limits (Ethernet without FCS). A frame must also hold its
// headers and the 24-byte payload, so the smallest frame is 66 bytes
// untagged, 70 with one VLAN tag and 74 with QinQ; smaller sizes are raised
// to that (see Template.FrameLen).
const (
	MinFrameLen = 60
	// MaxFrameLen is a jumbo frame (MTU 9000, one VLAN tag). The
	// live-frames and AF_XDP senders carry one page or chunk per frame:
	// up to MaxLiveFrameLen; the AF_PACKET sender any size.
	MaxFrameLen = 9018
	// MaxLiveFrameLen is the largest frame of the live-frames and AF_XDP
	// senders.
	MaxLiveFrameLen = 1514
	// MaxDests is how many destinations one flow can rotate through.
	MaxDests = 256
)

// Ethertypes of the tags the generator writes.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeVLAN = 0x8100 // 802.1Q C-tag
	EtherTypeQinQ = 0x88a8 // 802.1ad S-tag
)

// Dest is one destination of a flow, usually a VM: frames go to its MAC,
// tagged with its VLAN (0 = untagged), addressed to its IP (invalid = the
// flow's DstIP).
type Dest struct {
	MAC  net.HardwareAddr
	VLAN uint16
	IP   netip.Addr
}

// PortRange is an inclusive range of UDP ports. The zero value means port 9
// (discard). Rotating source ports spreads flows over RSS queues.
type PortRange struct {
	First, Last uint16
}

// ParsePortRange parses "1000" or "1000-1999".
func ParsePortRange(s string) (PortRange, error) {
	a, b, isRange := strings.Cut(s, "-")
	first, err := strconv.ParseUint(a, 10, 16)
	if err != nil {
		return PortRange{}, fmt.Errorf("port range %q: want PORT or FIRST-LAST", s)
	}
	last := first
	if isRange {
		if last, err = strconv.ParseUint(b, 10, 16); err != nil {
			return PortRange{}, fmt.Errorf("port range %q: want PORT or FIRST-LAST", s)
		}
	}
	r := PortRange{uint16(first), uint16(last)}
	return r, r.validate()
}

func (r PortRange) validate() error {
	if r.Last < r.First {
		return fmt.Errorf("port range %d-%d: last below first", r.First, r.Last)
	}
	return nil
}

func (r PortRange) norm() PortRange {
	if r == (PortRange{}) {
		return PortRange{9, 9}
	}
	return r
}

// Count is the number of ports in the range.
func (r PortRange) Count() int {
	r = r.norm()
	return int(r.Last) - int(r.First) + 1
}

// FlowSpec describes the frames of one generator: Ethernet (optionally
// 802.1Q tagged, optionally QinQ) / IPv4 / UDP with the vmq-pktgen payload.
//
// Frame n of the flow goes to Dests[n % len(Dests)] and is frame
// s = n / len(Dests) of that destination's stream (Stream + index); its UDP
// source port is SrcPorts.First + s % SrcPorts.Count() and its destination
// port DstPorts.First + (s / SrcPorts.Count()) % DstPorts.Count().
type FlowSpec struct {
	SrcMAC net.HardwareAddr // zero if nil
	Dests  []Dest           // at least one; all tagged or all untagged
	// OuterVLAN, when not 0, adds an 802.1ad S-tag outside each Dest's
	// C-tag (QinQ); the Dests must then be tagged.
	OuterVLAN uint16
	SrcIP     netip.Addr // 10.0.0.1 if invalid
	DstIP     netip.Addr // 10.0.0.2 if invalid; used by Dests without IP
	SrcPorts  PortRange
	DstPorts  PortRange
	// Size is the frame length without FCS, MinFrameLen..MaxFrameLen
	// (0 means the smallest frame that holds the payload).
	Size int
	// UDPChecksum computes the UDP checksum; otherwise it is 0 (none).
	UDPChecksum bool
	// Stream is the payload stream of Dests[0]; Dests[i] uses Stream+i.
	Stream uint32
	// TTL of the IPv4 header, 64 if 0.
	TTL uint8
}

// Template is a validated FlowSpec with every destination's header
// precomputed. It is immutable and safe for concurrent use.
type Template struct {
	spec     FlowSpec
	tags     int
	hdrLen   int // up to the UDP data
	frameLen int
	src, dst PortRange
	dests    []destHdr
}

type destHdr struct {
	hdr      [56]byte // the header with UDP ports and checksum zero
	csumBase uint32   // unfolded sum over everything but the per-frame fields
}

// NewTemplate validates spec and precomputes its headers.
func NewTemplate(spec FlowSpec) (*Template, error) {
	if len(spec.Dests) == 0 {
		return nil, errors.New("flow: no destination")
	}
	if len(spec.Dests) > MaxDests {
		return nil, fmt.Errorf("flow: %d destinations, at most %d", len(spec.Dests), MaxDests)
	}
	if spec.SrcMAC != nil && len(spec.SrcMAC) != 6 {
		return nil, fmt.Errorf("flow: source MAC %v is not 6 bytes", spec.SrcMAC)
	}
	if err := spec.SrcPorts.validate(); err != nil {
		return nil, fmt.Errorf("flow: source %w", err)
	}
	if err := spec.DstPorts.validate(); err != nil {
		return nil, fmt.Errorf("flow: destination %w", err)
	}
	tagged := spec.Dests[0].VLAN != 0
	for i, d := range spec.Dests {
		if len(d.MAC) != 6 {
			return nil, fmt.Errorf("flow: destination %d: MAC %v is not 6 bytes", i, d.MAC)
		}
		if d.VLAN > 4094 {
			return nil, fmt.Errorf("flow: destination %d: VLAN %d out of 1..4094", i, d.VLAN)
		}
		if (d.VLAN != 0) != tagged {
			return nil, fmt.Errorf("flow: destination %d: mixing tagged and untagged destinations in one flow", i)
		}
		if d.IP.IsValid() && !d.IP.Is4() {
			return nil, fmt.Errorf("flow: destination %d: IP %v is not IPv4", i, d.IP)
		}
	}
	if spec.OuterVLAN > 4094 {
		return nil, fmt.Errorf("flow: outer VLAN %d out of 1..4094", spec.OuterVLAN)
	}
	if spec.OuterVLAN != 0 && !tagged {
		return nil, errors.New("flow: QinQ needs tagged destinations (an inner VLAN)")
	}
	if !spec.SrcIP.IsValid() {
		spec.SrcIP = netip.AddrFrom4([4]byte{10, 0, 0, 1})
	}
	if !spec.DstIP.IsValid() {
		spec.DstIP = netip.AddrFrom4([4]byte{10, 0, 0, 2})
	}
	if !spec.SrcIP.Is4() || !spec.DstIP.Is4() {
		return nil, fmt.Errorf("flow: %v -> %v: only IPv4", spec.SrcIP, spec.DstIP)
	}
	if spec.TTL == 0 {
		spec.TTL = 64
	}
	t := &Template{spec: spec, src: spec.SrcPorts.norm(), dst: spec.DstPorts.norm()}
	if tagged {
		t.tags = 1
	}
	if spec.OuterVLAN != 0 {
		t.tags = 2
	}
	t.hdrLen = EthHdrLen + t.tags*VLANHdrLen + IPv4HdrLen + UDPHdrLen
	minLen := max(MinFrameLen, t.hdrLen+PayloadLen)
	switch {
	case spec.Size == 0:
		t.frameLen = minLen
	case spec.Size < MinFrameLen || spec.Size > MaxFrameLen:
		return nil, fmt.Errorf("flow: frame size %d out of %d..%d", spec.Size, MinFrameLen, MaxFrameLen)
	default:
		t.frameLen = max(spec.Size, minLen)
	}
	t.dests = make([]destHdr, len(spec.Dests))
	for i, d := range spec.Dests {
		t.buildHeader(&t.dests[i], d)
	}
	return t, nil
}

func (t *Template) buildHeader(h *destHdr, d Dest) {
	b := h.hdr[:]
	copy(b[0:6], d.MAC)
	copy(b[6:12], t.spec.SrcMAC)
	off := 12
	if t.tags == 2 {
		binary.BigEndian.PutUint16(b[off:], EtherTypeQinQ)
		binary.BigEndian.PutUint16(b[off+2:], t.spec.OuterVLAN)
		off += 4
	}
	if t.tags >= 1 {
		binary.BigEndian.PutUint16(b[off:], EtherTypeVLAN)
		binary.BigEndian.PutUint16(b[off+2:], d.VLAN)
		off += 4
	}
	binary.BigEndian.PutUint16(b[off:], EtherTypeIPv4)
	off += 2
	ip := b[off : off+IPv4HdrLen]
	ipLen := t.frameLen - off
	udpLen := ipLen - IPv4HdrLen
	dstIP := t.spec.DstIP
	if d.IP.IsValid() {
		dstIP = d.IP
	}
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(ipLen))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF: the frames are never fragmented
	ip[8] = t.spec.TTL
	ip[9] = 17
	s4, d4 := t.spec.SrcIP.As4(), dstIP.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum16(ip)))
	udp := b[off+IPv4HdrLen : off+IPv4HdrLen+UDPHdrLen]
	binary.BigEndian.PutUint16(udp[4:], uint16(udpLen))
	// The UDP checksum covers the pseudo-header, the UDP header and data.
	// Ports, stream, seq and timestamp change per frame and are added
	// then; the magic is constant and padding is zero.
	var s uint32
	s += sum16(s4[:]) + sum16(d4[:]) + 17 + uint32(udpLen)
	s += uint32(udpLen) // the UDP length field
	s += PayloadMagic>>16 + PayloadMagic&0xffff
	h.csumBase = s
}

// sum16 is the unfolded one's-complement sum of b's big-endian 16-bit words.
func sum16(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

func fold64(s uint64) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// Spec returns the flow's spec with defaults filled in.
func (t *Template) Spec() FlowSpec { return t.spec }

// FrameLen is the length of every frame of the flow.
func (t *Template) FrameLen() int { return t.frameLen }

// HeaderLen is the offset of the payload (the UDP data) in each frame.
func (t *Template) HeaderLen() int { return t.hdrLen }

// Tags is the number of VLAN tags in each frame (0, 1 or 2).
func (t *Template) Tags() int { return t.tags }

// Dests is the number of destinations frames rotate through.
func (t *Template) Dests() int { return len(t.dests) }

// FrameInfo says where frame n of the flow goes.
type FrameInfo struct {
	Dest             int    // index into FlowSpec.Dests
	Stream           uint32 // payload stream
	Seq              uint64 // payload sequence number within the stream
	SrcPort, DstPort uint16
}

// Info returns the destination, stream, sequence number and ports of frame
// n of the flow.
func (t *Template) Info(n uint64) FrameInfo {
	nd := uint64(len(t.dests))
	di := n % nd
	s := n / nd
	ns, ndp := uint64(t.src.Count()), uint64(t.dst.Count())
	return FrameInfo{
		Dest:    int(di),
		Stream:  t.spec.Stream + uint32(di),
		Seq:     s,
		SrcPort: t.src.First + uint16(s%ns),
		DstPort: t.dst.First + uint16((s/ns)%ndp),
	}
}

// Frame returns a new buffer holding frame n of the flow, stamped with
// timestamp ts.
func (t *Template) Frame(n, ts uint64) []byte {
	b := make([]byte, t.frameLen)
	t.Stamp(b, n, ts)
	return b
}

// Stamp writes frame n of the flow with timestamp ts into b, which must be
// FrameLen bytes (it panics otherwise: that is a caller bug, not input).
// Every byte of b is written, so buffers can be reused without clearing.
func (t *Template) Stamp(b []byte, n, ts uint64) {
	_ = b[t.frameLen-1]
	fi := t.Info(n)
	d := &t.dests[fi.Dest]
	copy(b, d.hdr[:t.hdrLen])
	clear(b[t.hdrLen+PayloadLen : t.frameLen])
	udp := b[t.hdrLen-UDPHdrLen : t.hdrLen]
	binary.BigEndian.PutUint16(udp[0:], fi.SrcPort)
	binary.BigEndian.PutUint16(udp[2:], fi.DstPort)
	Payload{Stream: fi.Stream, Seq: fi.Seq, TimestampNS: ts}.Put(b[t.hdrLen:])
	if t.spec.UDPChecksum {
		s := uint64(d.csumBase) + uint64(fi.SrcPort) + uint64(fi.DstPort) +
			uint64(fi.Stream>>16) + uint64(fi.Stream&0xffff) +
			words64(fi.Seq) + words64(ts)
		c := ^fold64(s)
		if c == 0 {
			c = 0xffff // 0 means "no checksum"; its one's-complement twin is sent
		}
		binary.BigEndian.PutUint16(udp[6:], c)
	}
}

func words64(v uint64) uint64 {
	return v>>48 + (v>>32)&0xffff + (v>>16)&0xffff + v&0xffff
}

// Base returns frame 0 with a zero timestamp: the data_in of live-frames
// mode, whose padding the XDP program leaves alone.
func (t *Template) Base() []byte { return t.Frame(0, 0) }
