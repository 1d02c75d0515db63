package frontend

import (
	"bytes"
	"encoding/hex"
	"net"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

var (
	guestMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x0a}
	guestIP  = netip.MustParseAddr("10.0.0.10")
	peerMAC  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestChecksumKnownVector(t *testing.T) {
	// The IPv4 header example of RFC 1071 style walkthroughs: checksum 0xb861.
	h := unhex(t, "4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7")
	if got := checksum(h, 0); got != 0xb861 {
		t.Fatalf("checksum %#04x, want 0xb861", got)
	}
	h[10], h[11] = 0xb8, 0x61
	if got := checksum(h, 0); got != 0 {
		t.Fatalf("checksum over a valid header %#04x, want 0", got)
	}
	if got := checksum([]byte{0x01}, 0); got != 0xfeff {
		t.Fatalf("odd length: %#04x", got)
	}
}

func TestARPReply(t *testing.T) {
	r := newResponder(guestMAC, guestIP)
	req := unhex(t, `ffffffffffff 020000000001 0806
		0001 0800 06 04 0001 020000000001 0a000001 000000000000 0a00000a`)
	want := unhex(t, `020000000001 02000000000a 0806
		0001 0800 06 04 0002 02000000000a 0a00000a 020000000001 0a000001`)
	out := make([]byte, 2048)
	n, kind := r.reply(req, out)
	if kind != replyARP || !bytes.Equal(out[:n], want) {
		t.Fatalf("ARP reply (%v)\n got %x\nwant %x", kind, out[:n], want)
	}
	// Unicast to us, with Ethernet padding: same answer.
	uni := append(append([]byte(nil), req...), make([]byte, 18)...)
	copy(uni, guestMAC)
	if n, _ := r.reply(uni, out); !bytes.Equal(out[:n], want) {
		t.Fatalf("unicast ARP reply %x", out[:n])
	}
	for name, mut := range map[string]func(b []byte){
		"other target": func(b []byte) { b[41] = 11 },
		"a reply":      func(b []byte) { b[21] = 2 },
		"other dst":    func(b []byte) { b[0] = 0x04 },
		"ipv6 ptype":   func(b []byte) { b[16] = 0x86 },
		"truncated":    nil,
	} {
		b := append([]byte(nil), req...)
		if mut == nil {
			b = b[:40]
		} else {
			mut(b)
		}
		if n, _ := r.reply(b, out); n != 0 {
			t.Errorf("%s: answered %x", name, out[:n])
		}
	}
}

// echoRequest builds an ICMP echo request with x/net (an independent
// encoder) so the checksums are not ours.
func echoRequest(t testing.TB, dstMAC net.HardwareAddr, dst netip.Addr, typ icmp.Type, data []byte) []byte {
	t.Helper()
	m := icmp.Message{Type: typ, Body: &icmp.Echo{ID: 0x1234, Seq: 7, Data: data}}
	ib, err := m.Marshal(nil)
	if err != nil {
		t.Fatal(err)
	}
	return ipv4Frame(t, dstMAC, peerMAC, netip.MustParseAddr("10.0.0.1"), dst, 0xabcd, 61, ib)
}

func ipv4Frame(t testing.TB, dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, id, ttl int, payload []byte) []byte {
	t.Helper()
	h := ipv4.Header{Version: 4, Len: 20, TotalLen: 20 + len(payload), ID: id, TTL: ttl, Protocol: 1,
		Src: src.AsSlice(), Dst: dst.AsSlice()}
	hb, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c := checksum(hb, 0)
	hb[10], hb[11] = byte(c>>8), byte(c)
	f := append(append(append([]byte(nil), dstMAC...), srcMAC...), 0x08, 0x00)
	return append(append(f, hb...), payload...)
}

func TestICMPEchoReply(t *testing.T) {
	r := newResponder(guestMAC, guestIP)
	data := []byte("0123456789abcdefghijklmnopqrstuvwxyz!")
	req := echoRequest(t, guestMAC, guestIP, ipv4.ICMPTypeEcho, data)
	out := make([]byte, 2048)
	n, kind := r.reply(req, out)
	if kind != replyICMP || n == 0 {
		t.Fatalf("no ICMP reply")
	}
	m := icmp.Message{Type: ipv4.ICMPTypeEchoReply, Body: &icmp.Echo{ID: 0x1234, Seq: 7, Data: data}}
	ib, _ := m.Marshal(nil)
	want := ipv4Frame(t, peerMAC, guestMAC, guestIP, netip.MustParseAddr("10.0.0.1"), 0xabcd, 64, ib)
	if !bytes.Equal(out[:n], want) {
		t.Fatalf("echo reply\n got %x\nwant %x", out[:n], want)
	}
	// A hand-checked frame: ping 10.0.0.10 with 4 data bytes.
	hand := unhex(t, `02000000000a 020000000001 0800
		4500 0020 0001 0000 4001 66d2 0a000001 0a00000a
		0800 32d9 0010 0050 6162 6364`)
	handWant := unhex(t, `020000000001 02000000000a 0800
		4500 0020 0001 0000 4001 66d2 0a00000a 0a000001
		0000 3ad9 0010 0050 6162 6364`)
	if n, _ := r.reply(hand, out); !bytes.Equal(out[:n], handWant) {
		t.Fatalf("hand frame reply\n got %x\nwant %x", out[:n], handWant)
	}

	bad := map[string][]byte{
		"other ip":      echoRequest(t, guestMAC, netip.MustParseAddr("10.0.0.11"), ipv4.ICMPTypeEcho, data),
		"other mac":     echoRequest(t, peerMAC, guestIP, ipv4.ICMPTypeEcho, data),
		"echo reply":    echoRequest(t, guestMAC, guestIP, ipv4.ICMPTypeEchoReply, data),
		"bad icmp csum": flip(req, len(req)-1),
		"bad ip csum":   flip(req, 14+8),
		"truncated":     req[:len(req)-5],
		"broadcast":     echoRequest(t, net.HardwareAddr{255, 255, 255, 255, 255, 255}, guestIP, ipv4.ICMPTypeEcho, data),
		"fragment":      fragment(req),
	}
	for name, f := range bad {
		if n, _ := r.reply(f, out); n != 0 {
			t.Errorf("%s: answered %x", name, out[:n])
		}
	}
	none := newResponder(guestMAC, netip.Addr{})
	if n, _ := none.reply(req, out); n != 0 {
		t.Error("responder without an IP answered")
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x40
	return c
}

func fragment(req []byte) []byte {
	c := append([]byte(nil), req...)
	c[14+6] |= 0x20 // MF
	c[14+10], c[14+11] = 0, 0
	s := checksum(c[14:34], 0)
	c[14+10], c[14+11] = byte(s>>8), byte(s)
	return c
}

func TestBuildUDP(t *testing.T) {
	f, err := BuildUDP(UDPTemplate{Dst: peerMAC, Src: guestMAC, SrcIP: guestIP, DstIP: netip.MustParseAddr("10.0.0.1"),
		SrcPort: 1000, DstPort: 2000, Size: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(f) != 100 || checksum(f[14:34], 0) != 0 {
		t.Fatalf("frame %x", f)
	}
	var h ipv4.Header
	if err := h.Parse(f[14:34]); err != nil || h.TotalLen != 86 || h.Protocol != 17 || !h.Dst.Equal(net.IPv4(10, 0, 0, 1)) {
		t.Fatalf("ip header %+v %v", h, err)
	}
	if f[34] != 0x03 || f[35] != 0xe8 || f[38] != 0 || f[39] != 66 {
		t.Fatalf("udp header %x", f[34:42])
	}
	if _, err := BuildUDP(UDPTemplate{Dst: peerMAC, Src: guestMAC, SrcIP: guestIP, DstIP: guestIP, Size: 40}); err == nil {
		t.Fatal("runt template accepted")
	}
}

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }
