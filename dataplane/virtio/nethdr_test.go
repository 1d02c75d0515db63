package virtio

import (
	"bytes"
	"errors"
	"testing"
)

func TestNetHdrEncodeDecode(t *testing.T) {
	h := NetHdr{Flags: NetHdrFNeedsCsum, GSOType: GSOTCPv6 | GSOECN, HdrLen: 86, GSOSize: 1428, CsumStart: 54, CsumOffset: 16, NumBuffers: 3}
	var b [NetHdrLen]byte
	h.Encode(b[:])
	want := []byte{1, 0x84, 86, 0, 0x94, 0x05, 54, 0, 16, 0, 3, 0}
	if !bytes.Equal(b[:], want) {
		t.Fatalf("encoded %x, want %x", b, want)
	}
	var g NetHdr
	g.Decode(b[:])
	if g != h {
		t.Fatalf("decoded %+v, want %+v", g, h)
	}
	g.Decode(b[:NetHdrLegacyLen])
	if g.NumBuffers != 0 || g.CsumOffset != 16 {
		t.Fatalf("legacy decode %+v", g)
	}
}

func TestNetHdrValidate(t *testing.T) {
	tso := NetHdr{Flags: NetHdrFNeedsCsum, GSOType: GSOTCPv4, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	for _, c := range []struct {
		name string
		h    NetHdr
		n    int
		want error
	}{
		{"plain", NetHdr{}, 60, nil},
		{"tso", tso, 65000, nil},
		{"csum at the very end", NetHdr{Flags: NetHdrFNeedsCsum, CsumStart: 40, CsumOffset: 18}, 60, nil},
		{"csum past the end", NetHdr{Flags: NetHdrFNeedsCsum, CsumStart: 40, CsumOffset: 19}, 60, ErrHdrCsum},
		{"csum start past the end", NetHdr{Flags: NetHdrFNeedsCsum, CsumStart: 0xffff, CsumOffset: 0xffff}, 60, ErrHdrCsum},
		{"data valid on tx", NetHdr{Flags: NetHdrFDataValid}, 60, ErrHdrFlags},
		{"rsc info", NetHdr{Flags: NetHdrFRSCInfo}, 60, ErrHdrFlags},
		{"udp gso", NetHdr{Flags: NetHdrFNeedsCsum, GSOType: GSOUDP, GSOSize: 1400, CsumStart: 34, CsumOffset: 6}, 9000, ErrHdrGSOType},
		{"udp l4 gso", NetHdr{Flags: NetHdrFNeedsCsum, GSOType: GSOUDPL4, GSOSize: 1400, CsumStart: 34, CsumOffset: 6}, 9000, ErrHdrGSOType},
		{"unknown gso", NetHdr{GSOType: 9}, 60, ErrHdrGSOType},
		{"ecn alone", NetHdr{GSOType: GSOECN}, 60, ErrHdrECNNoGSO},
		{"tso without csum", NetHdr{GSOType: GSOTCPv4, GSOSize: 1448}, 9000, ErrHdrGSOCsum},
		{"tiny gso_size", NetHdr{Flags: NetHdrFNeedsCsum, GSOType: GSOTCPv4, GSOSize: 1, CsumStart: 34, CsumOffset: 16}, 9000, ErrHdrGSOSize},
		{"hdr_len past the end", NetHdr{HdrLen: 61}, 60, ErrHdrHdrLen},
	} {
		if err := c.h.Validate(c.n); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// FuzzNetHdr: any 12 bytes decode, validate against any length without
// panicking, and a header that validates has its checksum field inside
// the frame; encoding gives the bytes back.
func FuzzNetHdr(f *testing.F) {
	f.Add([]byte{1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0}, 65000)
	f.Add([]byte{1, 0x84, 86, 0, 0x94, 0x05, 54, 0, 16, 0, 0, 0}, 9000)
	f.Add([]byte{1, 0, 0, 0, 0, 0, 40, 0, 18, 0, 0, 0}, 60)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		if len(b) < NetHdrLen {
			return
		}
		var h NetHdr
		h.Decode(b)
		if h.Validate(n) == nil {
			if h.Flags&NetHdrFNeedsCsum != 0 && int(h.CsumStart)+int(h.CsumOffset)+2 > n {
				t.Fatalf("%+v validated for %d bytes", h, n)
			}
			if h.GSOType != GSONone && (h.GSOSize < MinGSOSize || h.Flags&NetHdrFNeedsCsum == 0) {
				t.Fatalf("%+v validated", h)
			}
		}
		var e [NetHdrLen]byte
		h.Encode(e[:])
		if !bytes.Equal(e[:], b[:NetHdrLen]) {
			t.Fatalf("encode(decode(%x)) = %x", b[:NetHdrLen], e)
		}
	})
}
