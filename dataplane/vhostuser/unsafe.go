package vhostuser

import (
	"errors"
	"fmt"
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

// callRing signals a guest's call eventfd from the worker's own thread
// without ever blocking and without waking a thread on the worker's CPU:
// the eventfd is registered with a small io_uring (IORING_REGISTER_EVENTFD)
// and each call submits one NOP, whose completion the kernel signals with
// eventfd_signal, which saturates the counter instead of waiting (a
// write(2) blocks on a saturated counter once the guest clears
// O_NONBLOCK). One syscall per call, as DPDK's inline write.
type callRing struct {
	fd     int
	ring   []byte // SQ and CQ rings (IORING_FEAT_SINGLE_MMAP)
	sqes   []byte
	sqTail *uint32
	sqMask uint32
	sqArr  unsafe.Pointer
	cqHead *uint32
	cqTail *uint32
}

// uringParams is struct io_uring_params; sqOff and cqOff are
// io_sqring_offsets and io_cqring_offsets as words.
type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff, cqOff                                                           [10]uint32
}

const (
	uringOffSQEs         = 0x10000000 // IORING_OFF_SQES
	uringRegisterEventfd = 4          // IORING_REGISTER_EVENTFD
	uringFeatSingleMmap  = 1 << 0     // IORING_FEAT_SINGLE_MMAP
	uringSQESize         = 64
	uringCQESize         = 16
	sqOffTail, sqOffMask = 1, 2
	sqOffArray           = 6
	cqOffHead, cqOffTail = 0, 1
	cqOffCQEs            = 5
)

// newCallRing sets up a ring whose completions signal evfd.
func newCallRing(evfd int) (r *callRing, err error) {
	var p uringParams
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", e)
	}
	r = &callRing{fd: int(fd)}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if p.features&uringFeatSingleMmap == 0 {
		return nil, errors.New("io_uring without IORING_FEAT_SINGLE_MMAP")
	}
	size := max(p.sqOff[sqOffArray]+p.sqEntries*4, p.cqOff[cqOffCQEs]+p.cqEntries*uringCQESize)
	prot, flags := unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE
	if r.ring, err = unix.Mmap(r.fd, 0, int(size), prot, flags); err != nil {
		return nil, fmt.Errorf("io_uring rings mmap: %w", err)
	}
	if r.sqes, err = unix.Mmap(r.fd, uringOffSQEs, int(p.sqEntries*uringSQESize), prot, flags); err != nil {
		return nil, fmt.Errorf("io_uring SQEs mmap: %w", err)
	}
	base := unsafe.Pointer(&r.ring[0])
	r.sqTail = (*uint32)(unsafe.Add(base, p.sqOff[sqOffTail]))
	r.sqMask = *(*uint32)(unsafe.Add(base, p.sqOff[sqOffMask]))
	r.sqArr = unsafe.Add(base, p.sqOff[sqOffArray])
	r.cqHead = (*uint32)(unsafe.Add(base, p.cqOff[cqOffHead]))
	r.cqTail = (*uint32)(unsafe.Add(base, p.cqOff[cqOffTail]))
	efd := int32(evfd)
	if _, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, fd, uringRegisterEventfd, uintptr(unsafe.Pointer(&efd)), 1, 0, 0); e != 0 {
		return nil, fmt.Errorf("io_uring register eventfd: %w", e)
	}
	return r, nil
}

// signal submits one NOP (its completion signals the eventfd) and drops
// every completion: one syscall, no allocation, never blocks. Only the
// queue's worker calls it.
func (r *callRing) signal() unix.Errno {
	tail := atomic.LoadUint32(r.sqTail)
	i := tail & r.sqMask
	clear(r.sqes[i*uringSQESize : (i+1)*uringSQESize]) // opcode 0: IORING_OP_NOP
	*(*uint32)(unsafe.Add(r.sqArr, i*4)) = i
	atomic.StoreUint32(r.sqTail, tail+1)
	_, _, e := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 1, 0, 0, 0, 0)
	atomic.StoreUint32(r.cqHead, atomic.LoadUint32(r.cqTail))
	return e
}

// close releases the ring (and its reference to the eventfd).
func (r *callRing) close() {
	if r.sqes != nil {
		unix.Munmap(r.sqes)
	}
	if r.ring != nil {
		unix.Munmap(r.ring)
	}
	unix.Close(r.fd)
}
