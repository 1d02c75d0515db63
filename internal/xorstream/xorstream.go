// Package xorstream is the fixed pseudo-random byte stream (xorshift64)
// of the TCP offload tests: the in-guest tcpx program and the wire-side
// sender both write it, and the tests compare the SHA-256 of what
// arrived, so both must make the same bytes.
package xorstream

// Seed is the stream's first state.
const Seed uint64 = 0x9e3779b97f4a7c15

// Fill writes the next whole 8-byte words of the stream into buf (a
// shorter tail is left as it was) and advances *x.
func Fill(buf []byte, x *uint64) {
	s := *x
	for i := 0; i+8 <= len(buf); i += 8 {
		s ^= s << 13
		s ^= s >> 7
		s ^= s << 17
		for j := range 8 {
			buf[i+j] = byte(s >> (8 * j))
		}
	}
	*x = s
}
