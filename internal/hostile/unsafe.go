package hostile

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// All unsafe code of the package: the shared mapping and 32-bit atomics
// on ring words the back-end reads and writes concurrently.

func mapShared(fd, size int) ([]byte, error) {
	b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes of memfd: %w", size, err)
	}
	return b, nil
}

func word(b []byte, off int) *uint32 {
	_ = b[off+3]
	if off&3 != 0 {
		panic("hostile: unaligned ring word") // a layout bug in this package
	}
	return (*uint32)(unsafe.Pointer(&b[off]))
}

func load32(b []byte, off int) uint32     { return atomic.LoadUint32(word(b, off)) }
func store32(b []byte, off int, v uint32) { atomic.StoreUint32(word(b, off), v) }
