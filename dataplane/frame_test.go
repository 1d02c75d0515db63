package dataplane

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func tagged(dst, src MAC, tpid uint16, vlan uint16, payload string) []byte {
	f := append(append([]byte{}, dst[:]...), src[:]...)
	f = binary.BigEndian.AppendUint16(f, tpid)
	f = binary.BigEndian.AppendUint16(f, vlan)
	f = binary.BigEndian.AppendUint16(f, 0x0800)
	return append(f, payload...)
}

func untagged(dst, src MAC, payload string) []byte {
	f := append(append([]byte{}, dst[:]...), src[:]...)
	f = binary.BigEndian.AppendUint16(f, 0x0800)
	return append(f, payload...)
}

var (
	macA = MAC{0x02, 0, 0, 0, 0, 0x0a}
	macB = MAC{0x02, 0, 0, 0, 0, 0x0b}
)

func TestFrameVLAN(t *testing.T) {
	for _, tc := range []struct {
		name   string
		frame  []byte
		vlan   uint16
		tagged bool
		ok     bool
	}{
		{"untagged", untagged(macA, macB, "x"), 0, false, true},
		{"802.1Q", tagged(macA, macB, tpid8021Q, 100, "x"), 100, true, true},
		{"802.1ad outer", tagged(macA, macB, tpid8021AD, 0x3000|7, "x"), 7, true, true},
		{"truncated tag", tagged(macA, macB, tpid8021Q, 5, "")[:15], 0, true, false},
	} {
		vlan, isTagged, ok := frameVLAN(tc.frame)
		if vlan != tc.vlan || isTagged != tc.tagged || ok != tc.ok {
			t.Errorf("%s: got (%d,%v,%v), want (%d,%v,%v)", tc.name, vlan, isTagged, ok, tc.vlan, tc.tagged, tc.ok)
		}
	}
}

func TestStripAndInsertTagRoundTrip(t *testing.T) {
	orig := tagged(macA, macB, tpid8021Q, 42, "payload")
	buf := append([]byte{}, orig...)
	stripped := stripTag(buf)
	if want := untagged(macA, macB, "payload"); !bytes.Equal(stripped, want) {
		t.Fatalf("strip: got % x, want % x", stripped, want)
	}
	// The stripped frame starts 4 bytes into buf: re-tag it in place.
	back := insertTag(buf, vlanTagLen, len(stripped), 42)
	if !bytes.Equal(back, orig) {
		t.Fatalf("insert: got % x, want % x", back, orig)
	}
}

func TestMACString(t *testing.T) {
	if got := (MAC{0x02, 0xab, 0, 0x10, 0xff, 1}).String(); got != "02:ab:00:10:ff:01" {
		t.Fatalf("got %s", got)
	}
	if !(MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}).IsMulticast() || macA.IsMulticast() {
		t.Fatal("IsMulticast wrong")
	}
}
