package bpf

// Every use of package unsafe in bpf (outside tests) lives in this file.

import "unsafe"

// words views mmapped map memory (page-aligned, a multiple of 8 bytes)
// as 64-bit words, for atomic access shared with the program.
func words(mem []byte) []uint64 {
	return unsafe.Slice((*uint64)(unsafe.Pointer(&mem[0])), len(mem)/8)
}
