package vhostuser

import (
	"sync/atomic"
	"unsafe"
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
