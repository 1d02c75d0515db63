package pktgen

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
)

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// parsed is what checkFrame reads back from a frame, independently of the
// builder's code.
type parsed struct {
	dst, src         net.HardwareAddr
	tags             []uint32 // TPID<<16 | TCI
	srcIP, dstIP     netip.Addr
	sport, dport     uint16
	udpCsum          uint16
	payload          Payload
	ttl              uint8
	ipLen, udpLength int
}

// checkFrame verifies a generated frame: length, ethertypes, IPv4 header
// checksum and lengths, UDP checksum (if not zero), payload, zero padding.
func checkFrame(t testing.TB, f []byte, wantLen int) parsed {
	t.Helper()
	p, udp := checkHeaders(t, f, wantLen)
	var ok bool
	p.payload, ok = ParsePayload(udp[8:])
	if !ok {
		t.Fatal("no payload")
	}
	if !bytes.Equal(udp[8+PayloadLen:], make([]byte, len(udp)-8-PayloadLen)) {
		t.Fatal("padding not zero")
	}
	if got, ok := ParseFrame(f); !ok || got != p.payload {
		t.Fatalf("ParseFrame = %+v, %v; want %+v", got, ok, p.payload)
	}
	return p
}

// checkHeaders checks a frame's headers and checksums, whatever its UDP
// data, and returns them and the UDP header and data.
func checkHeaders(t testing.TB, f []byte, wantLen int) (parsed, []byte) {
	t.Helper()
	var p parsed
	if len(f) != wantLen {
		t.Fatalf("frame length %d, want %d", len(f), wantLen)
	}
	p.dst, p.src = net.HardwareAddr(f[0:6]), net.HardwareAddr(f[6:12])
	off := 12
	for {
		et := binary.BigEndian.Uint16(f[off:])
		if et == EtherTypeIPv4 {
			off += 2
			break
		}
		if et != EtherTypeVLAN && et != EtherTypeQinQ {
			t.Fatalf("unexpected ethertype %#x at %d", et, off)
		}
		p.tags = append(p.tags, uint32(et)<<16|uint32(binary.BigEndian.Uint16(f[off+2:])))
		off += 4
	}
	ip := f[off : off+20]
	if ip[0] != 0x45 || ip[9] != 17 {
		t.Fatalf("IP version/ihl %#x proto %d", ip[0], ip[9])
	}
	var s uint32
	for i := 0; i < 20; i += 2 {
		s += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	if s != 0xffff {
		t.Fatalf("IPv4 header checksum wrong (sum %#x)", s)
	}
	p.ipLen = int(binary.BigEndian.Uint16(ip[2:]))
	if p.ipLen != len(f)-off {
		t.Fatalf("IP total length %d, frame has %d after the L2 header", p.ipLen, len(f)-off)
	}
	p.ttl = ip[8]
	p.srcIP = netip.AddrFrom4([4]byte(ip[12:16]))
	p.dstIP = netip.AddrFrom4([4]byte(ip[16:20]))
	udp := f[off+20:]
	p.sport = binary.BigEndian.Uint16(udp[0:])
	p.dport = binary.BigEndian.Uint16(udp[2:])
	p.udpLength = int(binary.BigEndian.Uint16(udp[4:]))
	if p.udpLength != len(udp) {
		t.Fatalf("UDP length %d, have %d", p.udpLength, len(udp))
	}
	p.udpCsum = binary.BigEndian.Uint16(udp[6:])
	if p.udpCsum != 0 {
		var s uint64
		for i := 12; i < 20; i += 2 {
			s += uint64(binary.BigEndian.Uint16(ip[i:]))
		}
		s += 17 + uint64(len(udp))
		for i := 0; i+1 < len(udp); i += 2 {
			s += uint64(binary.BigEndian.Uint16(udp[i:]))
		}
		if len(udp)%2 == 1 {
			s += uint64(udp[len(udp)-1]) << 8
		}
		for s > 0xffff {
			s = s>>16 + s&0xffff
		}
		if s != 0xffff {
			t.Fatalf("UDP checksum %#x wrong (sum %#x)", p.udpCsum, s)
		}
	}
	return p, udp
}

func TestFrameBuild(t *testing.T) {
	vm1, vm2 := mac("02:00:00:00:00:0a"), mac("02:00:00:00:00:0b")
	src := mac("02:00:00:00:00:01")
	for _, tags := range []int{0, 1, 2} {
		for _, size := range []int{0, 60, 61, 64, 66, 70, 73, 74, 75, 128, 1000, 1513, 1514} {
			for _, csum := range []bool{false, true} {
				name := fmt.Sprintf("tags=%d/size=%d/csum=%v", tags, size, csum)
				t.Run(name, func(t *testing.T) {
					spec := FlowSpec{
						SrcMAC:      src,
						Dests:       []Dest{{MAC: vm1}, {MAC: vm2, IP: netip.MustParseAddr("192.168.7.9")}},
						SrcIP:       netip.MustParseAddr("10.1.2.3"),
						DstIP:       netip.MustParseAddr("10.1.2.4"),
						SrcPorts:    PortRange{1000, 1002},
						DstPorts:    PortRange{5000, 5001},
						Size:        size,
						UDPChecksum: csum,
						Stream:      40,
					}
					if tags >= 1 {
						spec.Dests[0].VLAN, spec.Dests[1].VLAN = 100, 4094
					}
					if tags == 2 {
						spec.OuterVLAN = 7
					}
					tm, err := NewTemplate(spec)
					if err != nil {
						t.Fatal(err)
					}
					hdr := 14 + 4*tags + 20 + 8
					want := max(size, 60, hdr+PayloadLen)
					if tm.FrameLen() != want || tm.HeaderLen() != hdr || tm.Tags() != tags {
						t.Fatalf("FrameLen %d HeaderLen %d Tags %d, want %d %d %d", tm.FrameLen(), tm.HeaderLen(), tm.Tags(), want, hdr, tags)
					}
					buf := bytes.Repeat([]byte{0xee}, want) // Stamp must overwrite every byte
					for n := uint64(0); n < 14; n++ {
						ts := 0xfedcba9876543210 + n*0x1111
						tm.Stamp(buf, n, ts)
						p := checkFrame(t, buf, want)
						if !bytes.Equal(buf, tm.Frame(n, ts)) {
							t.Fatal("Stamp into a dirty buffer differs from Frame")
						}
						di, s := n%2, n/2
						wantDst, wantIP := vm1, netip.MustParseAddr("10.1.2.4")
						if di == 1 {
							wantDst, wantIP = vm2, netip.MustParseAddr("192.168.7.9")
						}
						if !bytes.Equal(p.dst, wantDst) || !bytes.Equal(p.src, src) || p.dstIP != wantIP || p.srcIP != netip.MustParseAddr("10.1.2.3") || p.ttl != 64 {
							t.Fatalf("frame %d: dst %v src %v ip %v->%v ttl %d", n, p.dst, p.src, p.srcIP, p.dstIP, p.ttl)
						}
						if p.sport != uint16(1000+s%3) || p.dport != uint16(5000+(s/3)%2) {
							t.Fatalf("frame %d: ports %d->%d", n, p.sport, p.dport)
						}
						if want := (Payload{Stream: 40 + uint32(di), Seq: s, TimestampNS: ts}); p.payload != want {
							t.Fatalf("frame %d: payload %+v, want %+v", n, p.payload, want)
						}
						if (p.udpCsum != 0) != csum {
							t.Fatalf("frame %d: UDP checksum %#x with UDPChecksum=%v", n, p.udpCsum, csum)
						}
						var wantTags []uint32
						vid := []uint32{100, 4094}[di]
						switch tags {
						case 1:
							wantTags = []uint32{0x8100<<16 | vid}
						case 2:
							wantTags = []uint32{0x88a8<<16 | 7, 0x8100<<16 | vid}
						}
						if fmt.Sprint(p.tags) != fmt.Sprint(wantTags) {
							t.Fatalf("frame %d: tags %x, want %x", n, p.tags, wantTags)
						}
						off, ok := UDPDataOffset(buf)
						if !ok || off != hdr {
							t.Fatalf("UDPDataOffset = %d, %v; want %d", off, ok, hdr)
						}
						info := tm.Info(n)
						if info.Dest != int(di) || info.Seq != s || info.Stream != 40+uint32(di) {
							t.Fatalf("Info(%d) = %+v", n, info)
						}
					}
				})
			}
		}
	}
}

// A known frame, checked byte for byte against a hand-assembled one.
func TestFrameGolden(t *testing.T) {
	tm, err := NewTemplate(FlowSpec{
		SrcMAC:   mac("02:00:00:00:00:01"),
		Dests:    []Dest{{MAC: mac("02:00:00:00:00:0a"), VLAN: 5}},
		SrcIP:    netip.MustParseAddr("10.0.0.1"),
		DstIP:    netip.MustParseAddr("10.0.0.2"),
		SrcPorts: PortRange{1234, 1234},
		DstPorts: PortRange{80, 80},
		Size:     74,
		Stream:   3,
	})
	if err != nil {
		t.Fatal(err)
	}
	got := tm.Frame(0, 0x0102030405060708)
	want := []byte{
		0x02, 0, 0, 0, 0, 0x0a, 0x02, 0, 0, 0, 0, 0x01, // MACs
		0x81, 0x00, 0x00, 0x05, // 802.1Q VID 5
		0x08, 0x00,
		0x45, 0x00, 0x00, 0x38, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, // IPv4, len 56, DF, TTL 64, UDP, csum below
		10, 0, 0, 1, 10, 0, 0, 2,
		0x04, 0xd2, 0x00, 0x50, 0x00, 0x24, 0x00, 0x00, // UDP 1234->80 len 36 no csum
		0x56, 0x4d, 0x51, 0x31, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, // payload
		0, 0, 0, 0, // padding
	}
	// IPv4 checksum of this header, by hand: ~(0x4500+0x0038+0x4000+0x4011+0x0a00+0x0001+0x0a00+0x0002) = 0x26b3.
	want[28], want[29] = 0x26, 0xb3
	var s uint32
	for i := 18; i < 38; i += 2 {
		s += uint32(want[i])<<8 | uint32(want[i+1])
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	if s != 0xffff {
		t.Fatalf("hand checksum wrong: sum %#x", s)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("frame\n got %x\nwant %x", got, want)
	}
}

func TestFlowSpecErrors(t *testing.T) {
	m := mac("02:00:00:00:00:0a")
	bad := map[string]FlowSpec{
		"no dests":         {},
		"short mac":        {Dests: []Dest{{MAC: m[:5]}}},
		"vlan range":       {Dests: []Dest{{MAC: m, VLAN: 4095}}},
		"mixed tags":       {Dests: []Dest{{MAC: m, VLAN: 3}, {MAC: m}}},
		"qinq no inner":    {Dests: []Dest{{MAC: m}}, OuterVLAN: 3},
		"small":            {Dests: []Dest{{MAC: m}}, Size: 59},
		"big":              {Dests: []Dest{{MAC: m}}, Size: MaxFrameLen + 1},
		"ipv6":             {Dests: []Dest{{MAC: m}}, DstIP: netip.MustParseAddr("::1")},
		"ports backwards":  {Dests: []Dest{{MAC: m}}, SrcPorts: PortRange{10, 9}},
		"dest ip v6":       {Dests: []Dest{{MAC: m, IP: netip.MustParseAddr("::2")}}},
		"too many dests":   {Dests: make([]Dest, MaxDests+1)},
		"short source mac": {Dests: []Dest{{MAC: m}}, SrcMAC: m[:3]},
	}
	for name, spec := range bad {
		if _, err := NewTemplate(spec); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParsePortRange(t *testing.T) {
	good := map[string]PortRange{"9": {9, 9}, "1000-1999": {1000, 1999}, "0-65535": {0, 65535}}
	for in, want := range good {
		if got, err := ParsePortRange(in); err != nil || got != want {
			t.Errorf("ParsePortRange(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "-", "x", "70000", "5-4", "1-2-3", "-5", "5-"} {
		if _, err := ParsePortRange(in); err == nil {
			t.Errorf("ParsePortRange(%q): no error", in)
		}
	}
}

func FuzzParseFrame(f *testing.F) {
	tm, _ := NewTemplate(FlowSpec{Dests: []Dest{{MAC: mac("02:00:00:00:00:0a"), VLAN: 9}}, OuterVLAN: 4, Size: 80})
	f.Add(tm.Frame(3, 99))
	f.Add([]byte{})
	f.Add(make([]byte, 14))
	f.Add(bytes.Repeat([]byte{0x81, 0x00}, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		off, ok := UDPDataOffset(b)
		if ok && (off > len(b) || off < EthHdrLen+IPv4HdrLen+UDPHdrLen) {
			t.Fatalf("offset %d out of frame of %d", off, len(b))
		}
		p, ok := ParseFrame(b)
		if ok {
			var back [PayloadLen]byte
			p.Put(back[:])
			if !bytes.Equal(back[:], b[off:off+PayloadLen]) {
				t.Fatal("payload does not round-trip")
			}
		}
	})
}

// FuzzTemplate builds frames from arbitrary specs: either an error or a
// frame that checks out.
func FuzzTemplate(f *testing.F) {
	f.Add(uint16(0), uint16(0), uint16(60), uint16(1000), uint16(3), uint8(2), true, uint64(7))
	f.Add(uint16(5), uint16(8), uint16(1514), uint16(0), uint16(65535), uint8(1), false, uint64(1<<40))
	f.Fuzz(func(t *testing.T, vlan, outer, size, sport, nports uint16, ndst uint8, csum bool, n uint64) {
		spec := FlowSpec{Size: int(size), OuterVLAN: outer, UDPChecksum: csum,
			SrcPorts: PortRange{sport, sport + nports}}
		for i := 0; i <= int(ndst); i++ {
			spec.Dests = append(spec.Dests, Dest{MAC: net.HardwareAddr{2, 0, 0, 0, 0, byte(i)}, VLAN: vlan})
		}
		tm, err := NewTemplate(spec)
		if err != nil {
			return
		}
		p := checkFrame(t, tm.Frame(n, n*3), tm.FrameLen())
		if info := tm.Info(n); p.payload.Seq != info.Seq || p.sport != info.SrcPort {
			t.Fatalf("frame %d: %+v vs %+v", n, p, info)
		}
	})
}
