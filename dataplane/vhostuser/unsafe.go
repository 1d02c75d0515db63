package vhostuser

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Guest memory is shared with another process, so ring indices are read
// and published with 32-bit atomics on the aligned word that contains the
// 16-bit index (sync/atomic has no 16-bit operations). Callers guarantee
// that b[off:off+4] is in bounds and 4-byte aligned in memory; virtio is
// little-endian, as are the hosts vmq supports (amd64, arm64).

func atomicLoad32(b []byte, off int) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[off:][:4][0])))
}

func atomicStore32(b []byte, off int, v uint32) {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&b[off:][:4][0])), v)
}

// addrOf is the address of b's first byte, for alignment checks.
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// readNoWait reads an eventfd's 8-byte counter into b without ever
// blocking, whatever O_NONBLOCK on the shared file description says (a
// guest can clear it): preadv2 with RWF_NOWAIT returns EAGAIN at 0. It is
// a raw syscall: it cannot block, so a locked worker thread keeps its P.
// The offset -1 means "the current position", as read(2).
func readNoWait(fd int, b *[8]byte) (int, unix.Errno) {
	iov := unix.Iovec{Base: &b[0], Len: 8}
	n, _, e := unix.RawSyscall6(unix.SYS_PREADV2, uintptr(fd), uintptr(unsafe.Pointer(&iov)), 1,
		^uintptr(0), 0, unix.RWF_NOWAIT)
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// atomicOr32 sets bits in the aligned word at b[off:off+4] (the dirty
// log, which the front-end clears with atomic exchanges).
func atomicOr32(b []byte, off int, v uint32) {
	atomic.OrUint32((*uint32)(unsafe.Pointer(&b[off:][:4][0])), v)
}

// eventfdOne is the 8-byte 1 that writeOne adds to an eventfd.
var eventfdOne = uint64(1)

// writeOne adds 1 to an eventfd of vmq's own with a raw write: on a
// non-blocking eventfd nobody else holds it cannot block (EAGAIN only at
// saturation), so a locked worker thread keeps its P.
func writeOne(fd int) unix.Errno {
	_, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&eventfdOne)), 8)
	return e
}
