package frontend

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// All unsafe code of the package lives here: the shared memory mapping,
// the addresses the backend needs, and atomic access to ring indices that
// another process reads and writes.

// mapShared maps size bytes of fd shared, so the backend sees our writes.
func mapShared(fd, size int) ([]byte, error) {
	b, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes of fd %d: %w", size, fd, err)
	}
	return b, nil
}

// userAddr is the address of b[0] in this process, the "user address" of
// vhost-user memory tables and vring addresses.
func userAddr(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

// The split ring's 16-bit indices share a 4-byte aligned word with a field
// written by the same side (avail: flags+idx, both ours; used: flags+idx,
// both the device's; the event fields are followed by padding we reserve),
// so 32-bit atomics read and publish them: sync/atomic has no 16-bit ops.

func word(b []byte, off int) *uint32 {
	_ = b[off+3]
	if off&3 != 0 {
		panic("frontend: unaligned ring word") // layout bug, never guest input
	}
	return (*uint32)(unsafe.Pointer(&b[off]))
}

func load32(b []byte, off int) uint32     { return atomic.LoadUint32(word(b, off)) }
func store32(b []byte, off int, v uint32) { atomic.StoreUint32(word(b, off), v) }
