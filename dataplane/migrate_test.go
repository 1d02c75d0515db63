package dataplane

import (
	"bytes"
	"encoding/hex"
	"testing"
)

// TestBuildRARP compares the announce frame with QEMU's
// (net/announce.c announce_self_create) for the same MAC.
func TestBuildRARP(t *testing.T) {
	mac := MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	want, _ := hex.DecodeString("ffffffffffff525400123456" + "8035" +
		"0001" + "0800" + "06" + "04" + "0003" +
		"525400123456" + "00000000" + "525400123456" + "00000000")
	want = append(want, make([]byte, rarpLen-len(want))...)
	got := bytes.Repeat([]byte{0xee}, rarpLen+8)
	buildRARP(got, mac)
	if !bytes.Equal(got[:rarpLen], want) {
		t.Fatalf("RARP\n got %x\nwant %x", got[:rarpLen], want)
	}
	if got[rarpLen] != 0xee {
		t.Fatal("wrote past the frame")
	}
}
