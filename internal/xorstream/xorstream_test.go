package xorstream

import (
	"encoding/binary"
	"testing"
)

// The stream is xorshift64 from Seed, little-endian, and continues
// across calls: two fills of 8 bytes equal one of 16.
func TestFill(t *testing.T) {
	x := Seed
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	one := make([]byte, 16)
	s := Seed
	Fill(one, &s)
	if got := binary.LittleEndian.Uint64(one); got != x {
		t.Fatalf("first word %#x, want %#x", got, x)
	}
	two := make([]byte, 8)
	s = Seed
	Fill(two, &s)
	Fill(two, &s)
	if got, want := binary.LittleEndian.Uint64(two), binary.LittleEndian.Uint64(one[8:]); got != want {
		t.Fatalf("second word across calls %#x, want %#x", got, want)
	}
	tail := []byte{1, 2, 3}
	Fill(tail, &s)
	if tail[0] != 1 || tail[2] != 3 {
		t.Fatalf("a tail shorter than a word was written: %v", tail)
	}
}
