package dataplane

import (
	"encoding/binary"
	"math/bits"
)

// Internet checksums (RFC 1071). Sums are kept in "little-endian space":
// the bytes read as little-endian 16-bit words, which gives the same
// ones'-complement sum byte-swapped, so storing the folded result with
// PutUint16 little-endian yields the right bytes on the wire.

// csumAdd adds b to a running sum; b must start at an even offset of the
// checksummed data (an odd length is fine only for the last piece).
func csumAdd(sum uint64, b []byte) uint64 {
	var c uint64
	for len(b) >= 32 {
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[0:]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[8:]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[16:]), c)
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b[24:]), c)
		b = b[32:]
	}
	for len(b) >= 8 {
		sum, c = bits.Add64(sum, binary.LittleEndian.Uint64(b), c)
		b = b[8:]
	}
	if len(b) >= 4 {
		sum, c = bits.Add64(sum, uint64(binary.LittleEndian.Uint32(b)), c)
		b = b[4:]
	}
	if len(b) >= 2 {
		sum, c = bits.Add64(sum, uint64(binary.LittleEndian.Uint16(b)), c)
		b = b[2:]
	}
	if len(b) == 1 {
		sum, c = bits.Add64(sum, uint64(b[0]), c)
	}
	sum, c = bits.Add64(sum, c, 0)
	return sum + c
}

// csumFold folds a sum to 16 bits and complements it: the checksum to
// store (little-endian) in a field that was zero when summed.
func csumFold(sum uint64) uint16 {
	s := sum&0xffffffff + sum>>32
	s = s&0xffffffff + s>>32
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	return ^uint16(s)
}

// putCsum stores a checksum computed by csumFold at b[0:2].
func putCsum(b []byte, c uint16) { binary.LittleEndian.PutUint16(b, c) }
