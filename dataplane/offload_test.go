package dataplane

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
)

// tsoSpec describes a TCP frame as a guest hands it to vmq with TSO.
type tsoSpec struct {
	v6      bool
	tags    int // 802.1Q tags
	ipOpts  int // IPv4 option bytes (a multiple of 4)
	v6Ext   int // IPv6 destination-options header bytes (a multiple of 8, 0: none)
	tcpOpts int // TCP option bytes (a multiple of 4)
	payload int
	flags   byte
	mss     int
	ecn     bool
}

// tsoFrame builds the frame and its virtio-net header. The TCP checksum
// field holds the pseudo-header sum as Linux leaves it for the device.
func tsoFrame(s tsoSpec) ([]byte, virtio.NetHdr) {
	var f []byte
	f = append(f, 0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1)
	for i := 0; i < s.tags; i++ {
		f = append(f, 0x81, 0x00, 0, byte(10+i))
	}
	ipOff := len(f) + 2
	var l4Off int
	if s.v6 {
		f = append(f, 0x86, 0xdd)
		nh := byte(protoTCP)
		if s.v6Ext > 0 {
			nh = 60
		}
		f = append(f, 0x60, 0, 0, 0, 0, 0, nh, 64)
		f = append(f, bytes.Repeat([]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 1)...)
		f = append(f, bytes.Repeat([]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}, 1)...)
		if s.v6Ext > 0 {
			ext := make([]byte, s.v6Ext)
			ext[0], ext[1] = protoTCP, byte(s.v6Ext/8-1)
			ext[2], ext[3] = 1, byte(s.v6Ext-4) // PadN
			f = append(f, ext...)
		}
	} else {
		f = append(f, 0x08, 0x00)
		ihl := 20 + s.ipOpts
		f = append(f, 0x40|byte(ihl/4), 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, protoTCP, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2)
		for i := 0; i < s.ipOpts; i++ {
			f = append(f, 1) // NOP
		}
	}
	l4Off = len(f)
	thl := 20 + s.tcpOpts
	f = append(f, 0x30, 0x39, 0x1f, 0x90, 0xff, 0xff, 0xfa, 0x00, 0, 0, 0, 7, byte(thl/4)<<4, s.flags, 0xff, 0xff, 0, 0, 0, 0)
	for i := 0; i < s.tcpOpts; i++ {
		f = append(f, 1)
	}
	for i := 0; i < s.payload; i++ {
		f = append(f, byte(i*13+i>>8))
	}
	ip := f[ipOff:]
	if s.v6 {
		binary.BigEndian.PutUint16(ip[4:], uint16(len(f)-ipOff-40))
	} else {
		binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-ipOff))
		putCsum(ip[10:], csumFold(csumAdd(0, ip[:l4Off-ipOff])))
	}
	p := l34{ipOff: ipOff, l4Off: l4Off, hdrEnd: l4Off + thl, v6: s.v6}
	// Linux leaves the folded, uncomplemented pseudo-header sum.
	putCsum(f[l4Off+16:], ^csumFold(pseudoSum(f, &p)))
	h := virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, HdrLen: uint16(l4Off + thl),
		GSOSize: uint16(s.mss), CsumStart: uint16(l4Off), CsumOffset: 16}
	if s.mss > 0 {
		h.GSOType = virtio.GSOTCPv4
		if s.v6 {
			h.GSOType = virtio.GSOTCPv6
		}
		if s.ecn {
			h.GSOType |= virtio.GSOECN
		}
	}
	return f, h
}

// naiveCsum is RFC 1071 the slow, obvious way, to check the fast one.
func naiveCsum(parts ...[]byte) uint16 {
	var sum uint32
	for _, b := range parts {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// checkSegment verifies one output frame independently of the segmenter:
// a TCP/IP frame no longer than limit whose IP lengths match its size and
// whose IPv4 header and TCP checksums are right. It returns the parsed
// headers and the payload.
func checkSegment(seg []byte, limit int) (l34, []byte, error) {
	if len(seg) > limit {
		return l34{}, nil, fmt.Errorf("%d bytes, limit %d", len(seg), limit)
	}
	p, ok := parseTCP(seg)
	if !ok {
		return p, nil, fmt.Errorf("not a TCP/IP frame: %x", seg[:min(len(seg), 80)])
	}
	ip := seg[p.ipOff:]
	tcpLen := len(seg) - p.l4Off
	var pseudo []byte
	if p.v6 {
		if got := int(binary.BigEndian.Uint16(ip[4:])); got != len(seg)-p.ipOff-40 {
			return p, nil, fmt.Errorf("IPv6 payload length %d, frame says %d", got, len(seg)-p.ipOff-40)
		}
		pseudo = append(append([]byte{}, ip[8:40]...), 0, 0, byte(tcpLen>>8), byte(tcpLen), 0, 0, 0, protoTCP)
	} else {
		if got := int(binary.BigEndian.Uint16(ip[2:])); got != len(seg)-p.ipOff {
			return p, nil, fmt.Errorf("IPv4 total length %d, frame says %d", got, len(seg)-p.ipOff)
		}
		if c := naiveCsum(ip[:p.l4Off-p.ipOff]); c != 0 {
			return p, nil, fmt.Errorf("IPv4 header checksum wrong (residue %#x)", c)
		}
		pseudo = append(append([]byte{}, ip[12:20]...), 0, protoTCP, byte(tcpLen>>8), byte(tcpLen))
	}
	if c := naiveCsum(pseudo, seg[p.l4Off:]); c != 0 {
		return p, nil, fmt.Errorf("TCP checksum wrong (residue %#x)", c)
	}
	return p, seg[p.hdrEnd:], nil
}

// segmentAll runs the segmenter over frame and checks every property of
// its output: valid frames within limit, payloads concatenating to the
// input's, sequence numbers, flags, IPv4 ids, unchanged headers.
func segmentAll(t testing.TB, frame []byte, h *virtio.NetHdr, limit int) [][]byte {
	t.Helper()
	p, ok := checkGSO(h, frame)
	if !ok {
		t.Fatalf("checkGSO refused the frame")
	}
	mss := min(int(h.GSOSize), limit-p.hdrEnd)
	if mss <= 0 {
		t.Fatalf("no room for payload: headers %d, limit %d", p.hdrEnd, limit)
	}
	var s segmenter
	s.init(frame, p, mss)
	want := s.count()
	var segs [][]byte
	var payload []byte
	seq0 := binary.BigEndian.Uint32(frame[p.l4Off+4:])
	flags0 := frame[p.l4Off+13]
	id0 := uint16(0)
	if !p.v6 {
		id0 = binary.BigEndian.Uint16(frame[p.ipOff+4:])
	}
	buf := make([]byte, scratchLen)
	for !s.done() {
		n := s.next(buf)
		if n == 0 {
			t.Fatalf("segment %d did not fit %d bytes", len(segs), len(buf))
		}
		seg := bytes.Clone(buf[:n])
		i := len(segs)
		sp, pl, err := checkSegment(seg, limit)
		if err != nil {
			t.Fatalf("segment %d of %d: %v", i, want, err)
		}
		if sp != p {
			t.Fatalf("segment %d: headers at %+v, input's at %+v", i, sp, p)
		}
		if got := binary.BigEndian.Uint32(seg[p.l4Off+4:]); got != seq0+uint32(len(payload)) {
			t.Fatalf("segment %d: seq %d, want %d", i, got, seq0+uint32(len(payload)))
		}
		wantFlags := flags0
		if i > 0 {
			wantFlags &^= tcpFlagCWR
		}
		if i < want-1 {
			wantFlags &^= tcpFlagFIN | tcpFlagPSH
		}
		if got := seg[p.l4Off+13]; got != wantFlags {
			t.Fatalf("segment %d of %d: flags %#x, want %#x", i, want, got, wantFlags)
		}
		if !p.v6 {
			if got := binary.BigEndian.Uint16(seg[p.ipOff+4:]); got != id0+uint16(i) {
				t.Fatalf("segment %d: IP id %d, want %d", i, got, id0+uint16(i))
			}
		}
		// Everything else in the headers is the input's.
		for _, r := range [][2]int{{0, p.ipOff}, {p.l4Off, p.l4Off + 4}, {p.l4Off + 8, p.l4Off + 13}, {p.l4Off + 14, p.l4Off + 16}, {p.l4Off + 18, p.hdrEnd}} {
			if !bytes.Equal(seg[r[0]:r[1]], frame[r[0]:r[1]]) {
				t.Fatalf("segment %d: bytes %d..%d changed", i, r[0], r[1])
			}
		}
		if i < want-1 && len(pl) != mss {
			t.Fatalf("segment %d: %d payload bytes, want %d", i, len(pl), mss)
		}
		payload = append(payload, pl...)
		segs = append(segs, seg)
	}
	if len(segs) != want {
		t.Fatalf("%d segments, count said %d", len(segs), want)
	}
	if !bytes.Equal(payload, frame[p.hdrEnd:]) {
		t.Fatalf("segments' payloads (%d bytes) differ from the input's (%d)", len(payload), len(frame)-p.hdrEnd)
	}
	return segs
}

func TestSegment(t *testing.T) {
	const fin, psh, ack, cwr = 0x01, 0x08, 0x10, 0x80
	cases := []tsoSpec{
		{payload: 65535 - 20 - 32, tcpOpts: 12, mss: 1448, flags: ack | psh},
		{payload: 3000, mss: 1460, flags: ack | psh | fin | cwr, ecn: true},
		{payload: 1, mss: 1460, flags: ack | fin},
		{payload: 0, mss: 1460, flags: ack | fin},
		{payload: 1460 * 3, mss: 1460, flags: ack | psh},
		{payload: 20000, mss: 536, ipOpts: 8, tcpOpts: 40, flags: ack | cwr, ecn: true},
		{payload: 40000, tags: 1, mss: 1448, tcpOpts: 12, flags: ack | psh},
		{payload: 40000, tags: 2, mss: 1448, flags: ack},
		{v6: true, payload: 65535 - 40 - 32, tcpOpts: 12, mss: 1428, flags: ack | psh | fin},
		{v6: true, payload: 9000, tags: 1, v6Ext: 16, mss: 1400, flags: ack | cwr, ecn: true},
		{v6: true, payload: 100, mss: 48, flags: ack},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%+v", c), func(t *testing.T) {
			frame, h := tsoFrame(c)
			if err := h.Validate(len(frame)); err != nil {
				t.Fatalf("header %+v: %v", h, err)
			}
			limit := 14 + 4*c.tags + 1500
			segs := segmentAll(t, frame, &h, limit)
			if c.payload > c.mss && len(segs) < 2 {
				t.Fatalf("%d segments", len(segs))
			}
		})
	}
	// A guest's gso_size above the MTU is cut to it.
	frame, h := tsoFrame(tsoSpec{payload: 30000, mss: 8948, flags: ack})
	if segs := segmentAll(t, frame, &h, 1514); len(segs) != (30000+1459)/1460 {
		t.Fatalf("%d segments at MTU 1500", len(segs))
	}
}

func TestCheckGSORefuses(t *testing.T) {
	frame, h := tsoFrame(tsoSpec{payload: 3000, mss: 1448, flags: 0x10})
	bad := func(what string, h virtio.NetHdr, frame []byte) {
		t.Helper()
		if _, ok := checkGSO(&h, frame); ok {
			t.Errorf("%s: accepted", what)
		}
	}
	h2 := h
	h2.CsumStart--
	bad("csum_start before TCP", h2, frame)
	h2 = h
	h2.CsumOffset = 6
	bad("UDP checksum offset", h2, frame)
	h2 = h
	h2.GSOType = virtio.GSOTCPv6
	bad("TCPv6 on an IPv4 frame", h2, frame)
	bad("truncated TCP header", h, frame[:h.CsumStart+10])
	udp := bytes.Clone(frame)
	udp[14+9] = 17
	bad("UDP", h, udp)
	frag := bytes.Clone(frame)
	frag[14+6] |= 0x20 // more fragments
	bad("IPv4 fragment", h, frag)
	if _, ok := checkGSO(&h, frame); !ok {
		t.Fatal("the good frame was refused")
	}
}

func TestFillCsum(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 100, 1399, 1400, 9000} {
		frame, h := tsoFrame(tsoSpec{payload: n, flags: 0x18})
		fillCsum(frame, int(h.CsumStart), int(h.CsumOffset))
		if _, pl, err := checkSegment(frame, 1<<20); err != nil || len(pl) != n {
			t.Fatalf("%d payload bytes: %v", n, err)
		}
	}
	// Odd lengths and every alignment against the naive sum.
	data := make([]byte, 300)
	for i := range data {
		data[i] = byte(i*31 + 7)
	}
	for n := 0; n < len(data); n++ {
		got := csumFold(csumAdd(0, data[:n]))
		if want := naiveCsum(data[:n]); got != (want>>8 | want<<8) {
			t.Fatalf("%d bytes: csum %#04x, naive %#04x", n, got, want)
		}
	}
}

func TestAcceptsHdr(t *testing.T) {
	all := uint64(virtio.OffloadFeatures)
	csum := virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum}
	tso4 := virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOTCPv4}
	ecn6 := virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOTCPv6 | virtio.GSOECN}
	for _, c := range []struct {
		f    uint64
		h    virtio.NetHdr
		want bool
	}{
		{0, virtio.NetHdr{}, true},
		{0, csum, false},
		{virtio.NetFGuestCsum, csum, true},
		{virtio.NetFGuestCsum, tso4, false},
		{virtio.NetFGuestCsum | virtio.NetFGuestTSO4, tso4, true},
		{all &^ virtio.NetFGuestECN, ecn6, false},
		{all &^ virtio.NetFGuestTSO6, ecn6, false},
		{all, ecn6, true},
	} {
		if got := acceptsHdr(c.f, &c.h); got != c.want {
			t.Errorf("features %#x, header %+v: %v, want %v", c.f, c.h, got, c.want)
		}
	}
}

func TestSegmentZeroAllocs(t *testing.T) {
	frame, h := tsoFrame(tsoSpec{payload: 65535 - 20 - 32, tcpOpts: 12, mss: 1448, flags: 0x18})
	p, _ := checkGSO(&h, frame)
	buf := make([]byte, 2048)
	var s segmenter
	if a := testing.AllocsPerRun(100, func() {
		s.init(frame, p, 1448)
		for !s.done() {
			s.next(buf)
		}
	}); a != 0 {
		t.Fatalf("%v allocations per 64 KiB segment", a)
	}
}

// BenchmarkSegment64K cuts a 64 KiB TSO segment into 1448-byte frames
// with their checksums: ns per 64 KiB segment.
func BenchmarkSegment64K(b *testing.B) {
	for _, v6 := range []bool{false, true} {
		b.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(b *testing.B) {
			frame, h := tsoFrame(tsoSpec{v6: v6, payload: 65535 - 60 - 32, tcpOpts: 12, mss: 1448, flags: 0x18})
			p, _ := checkGSO(&h, frame)
			buf := make([]byte, 2048)
			var s segmenter
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				s.init(frame, p, 1448)
				for !s.done() {
					s.next(buf)
				}
			}
		})
	}
}

// BenchmarkFillCsum completes the checksum of one 64 KiB frame.
func BenchmarkFillCsum(b *testing.B) {
	frame, h := tsoFrame(tsoSpec{payload: 65000, flags: 0x18})
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		fillCsum(frame, int(h.CsumStart), int(h.CsumOffset))
	}
}

// FuzzSegment: any frame and header the checks accept segments into
// valid TCP/IP frames within the limit whose payloads concatenate to the
// input's.
func FuzzSegment(f *testing.F) {
	for _, c := range []tsoSpec{
		{payload: 4000, tcpOpts: 12, mss: 1448, flags: 0x18},
		{payload: 3000, mss: 1460, flags: 0x99, ecn: true},
		{payload: 0, mss: 1460, flags: 0x11},
		{payload: 5000, ipOpts: 8, tcpOpts: 40, mss: 536, flags: 0x90},
		{payload: 5000, tags: 1, mss: 1448, flags: 0x10},
		{payload: 5000, tags: 2, mss: 1448, flags: 0x10},
		{v6: true, payload: 4000, tcpOpts: 12, mss: 1428, flags: 0x19},
		{v6: true, payload: 3000, tags: 1, v6Ext: 16, mss: 1400, flags: 0x90, ecn: true},
	} {
		frame, h := tsoFrame(c)
		var hb [virtio.NetHdrLen]byte
		h.Encode(hb[:])
		f.Add(hb[:], frame, uint16(1500))
	}
	f.Fuzz(func(t *testing.T, hb, frame []byte, mtu uint16) {
		if len(hb) < virtio.NetHdrLen || len(frame) > scratchLen {
			return
		}
		var h virtio.NetHdr
		h.Decode(hb[:virtio.NetHdrLen])
		if h.Validate(len(frame)) != nil || h.GSOType == virtio.GSONone {
			return
		}
		p, ok := checkGSO(&h, frame)
		if !ok {
			return
		}
		limit := p.ipOff + max(int(mtu), 68)
		if limit-p.hdrEnd <= 0 {
			return
		}
		segmentAll(t, frame, &h, limit)
	})
}
