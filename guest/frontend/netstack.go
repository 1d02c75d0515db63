package frontend

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/vmq/vmq/pktgen"
)

const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	arpLen        = 28
	protoICMP     = 1
	protoUDP      = 17
)

// replyKind says what answer, if any, a frame got.
type replyKind int

const (
	replyNone replyKind = iota
	replyARP
	replyICMP
)

// responder answers ARP requests and ICMP echo requests for one IPv4
// address and nothing else. It reads wire frames, which are untrusted: every
// offset is checked against the frame length.
type responder struct {
	mac net.HardwareAddr
	ip  [4]byte
	on  bool
}

func newResponder(mac net.HardwareAddr, ip netip.Addr) responder {
	r := responder{mac: mac}
	if ip.Is4() {
		r.ip, r.on = ip.As4(), true
	}
	return r
}

var broadcast = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// reply writes the answer to frame into out and returns its length, or 0
// when the frame asks for nothing (or the answer would not fit out).
func (r *responder) reply(frame, out []byte) (int, replyKind) {
	if !r.on || len(frame) < 14 {
		return 0, replyNone
	}
	dst := [6]byte(frame[0:6])
	toUs := dst == [6]byte(r.mac)
	switch binary.BigEndian.Uint16(frame[12:]) {
	case etherTypeARP:
		if !toUs && dst != broadcast {
			return 0, replyNone
		}
		return r.arp(frame, out), replyARP
	case etherTypeIPv4:
		if !toUs {
			return 0, replyNone
		}
		return r.icmp(frame, out), replyICMP
	}
	return 0, replyNone
}

func (r *responder) arp(frame, out []byte) int {
	a := frame[14:]
	if len(a) < arpLen || len(out) < 14+arpLen {
		return 0
	}
	// Ethernet/IPv4 request for our address.
	if binary.BigEndian.Uint16(a[0:]) != 1 || binary.BigEndian.Uint16(a[2:]) != etherTypeIPv4 ||
		a[4] != 6 || a[5] != 4 || binary.BigEndian.Uint16(a[6:]) != 1 || [4]byte(a[24:28]) != r.ip {
		return 0
	}
	copy(out[0:6], a[8:14]) // to the sender's hardware address
	copy(out[6:12], r.mac)
	binary.BigEndian.PutUint16(out[12:], etherTypeARP)
	o := out[14:]
	binary.BigEndian.PutUint16(o[0:], 1)
	binary.BigEndian.PutUint16(o[2:], etherTypeIPv4)
	o[4], o[5] = 6, 4
	binary.BigEndian.PutUint16(o[6:], 2)
	copy(o[8:14], r.mac)
	copy(o[14:18], r.ip[:])
	copy(o[18:24], a[8:14])
	copy(o[24:28], a[14:18])
	return 14 + arpLen
}

func (r *responder) icmp(frame, out []byte) int {
	ip := frame[14:]
	if len(ip) < 20 || ip[0]>>4 != 4 {
		return 0
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || total < ihl+8 || total > len(ip) || ip[9] != protoICMP || [4]byte(ip[16:20]) != r.ip {
		return 0
	}
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return 0 // a fragment: not reassembled, not answered
	}
	if checksum(ip[:ihl], 0) != 0 {
		return 0
	}
	icmp := ip[ihl:total]
	if icmp[0] != 8 || icmp[1] != 0 || checksum(icmp, 0) != 0 {
		return 0
	}
	// The reply drops IP options: a plain 20-byte header.
	n := 14 + 20 + len(icmp)
	if len(out) < n {
		return 0
	}
	copy(out[0:6], frame[6:12])
	copy(out[6:12], r.mac)
	binary.BigEndian.PutUint16(out[12:], etherTypeIPv4)
	o := out[14:]
	o[0], o[1] = 0x45, ip[1]
	binary.BigEndian.PutUint16(o[2:], uint16(20+len(icmp)))
	copy(o[4:6], ip[4:6]) // keep the request's id
	binary.BigEndian.PutUint16(o[6:], 0)
	o[8], o[9] = 64, protoICMP
	o[10], o[11] = 0, 0
	copy(o[12:16], r.ip[:])
	copy(o[16:20], ip[12:16])
	binary.BigEndian.PutUint16(o[10:], checksum(o[:20], 0))
	oi := o[20 : 20+len(icmp)]
	copy(oi, icmp)
	oi[0] = 0
	oi[2], oi[3] = 0, 0
	binary.BigEndian.PutUint16(oi[2:], checksum(oi, 0))
	return n
}

// checksum is the Internet checksum (RFC 1071) of b folded with initial.
// Over a region that contains its own correct checksum it returns 0.
func checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// UDPTemplate describes the Ethernet/IPv4/UDP frames of a traffic run.
type UDPTemplate struct {
	Dst, Src         net.HardwareAddr
	SrcIP, DstIP     netip.Addr
	SrcPort, DstPort uint16
	// Size is the frame length without FCS, at least MinUDPFrame.
	Size int
}

// MinUDPFrame is the smallest frame that carries a pktgen payload.
const MinUDPFrame = pktgen.EthHdrLen + pktgen.IPv4HdrLen + pktgen.UDPHdrLen + pktgen.PayloadLen

// BuildUDP writes the template frame (headers, zero data) into a new
// slice; callers stamp pktgen.Payload at PayloadOffset per frame. The UDP
// checksum is 0 (none, legal for IPv4) so stamping needs no recomputation.
func BuildUDP(t UDPTemplate) ([]byte, error) {
	if t.Size < MinUDPFrame || t.Size > 65535 {
		return nil, fmt.Errorf("udp frame size %d: want %d..65535", t.Size, MinUDPFrame)
	}
	if len(t.Dst) != 6 || len(t.Src) != 6 {
		return nil, fmt.Errorf("udp frame: need 6-byte MACs, got %v and %v", t.Dst, t.Src)
	}
	if !t.SrcIP.Is4() || !t.DstIP.Is4() {
		return nil, fmt.Errorf("udp frame: need IPv4 addresses, got %v and %v", t.SrcIP, t.DstIP)
	}
	f := make([]byte, t.Size)
	copy(f[0:6], t.Dst)
	copy(f[6:12], t.Src)
	binary.BigEndian.PutUint16(f[12:], etherTypeIPv4)
	ip := f[14:]
	ipLen := t.Size - 14
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(ipLen))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8], ip[9] = 64, protoUDP
	s, d := t.SrcIP.As4(), t.DstIP.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip[:20], 0))
	u := ip[20:]
	binary.BigEndian.PutUint16(u[0:], t.SrcPort)
	binary.BigEndian.PutUint16(u[2:], t.DstPort)
	binary.BigEndian.PutUint16(u[4:], uint16(ipLen-20))
	return f, nil
}

// PayloadOffset is where BuildUDP frames carry the pktgen payload.
const PayloadOffset = pktgen.EthHdrLen + pktgen.IPv4HdrLen + pktgen.UDPHdrLen
