package xsk

// Every use of package unsafe in xsk lives in this file: the kernel shares
// rings and UMEM with us through mmap, and the XDP socket options have no
// typed wrappers in x/sys/unix.

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Desc must match struct xdp_desc byte for byte: rx/tx rings hold them.
var _ [unsafe.Sizeof(unix.XDPDesc{}) - unsafe.Sizeof(Desc{})]struct{}
var _ [unsafe.Sizeof(Desc{}) - unsafe.Sizeof(unix.XDPDesc{})]struct{}

// mapRing maps one ring of fd at pgoff and returns the mapping with
// pointers into it. off comes from XDP_MMAP_OFFSETS; entrySize is 8 for
// fill/completion rings and 16 for rx/tx rings.
func mapRing[T any](fd int, pgoff int64, off unix.XDPRingOffset, size uint32) (ring[T], error) {
	var zero T
	length := int(off.Desc) + int(size)*int(unsafe.Sizeof(zero))
	mem, err := unix.Mmap(fd, pgoff, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return ring[T]{}, fmt.Errorf("mmap ring (pgoff %#x, %d bytes): %w", pgoff, length, err)
	}
	base := unsafe.Pointer(&mem[0])
	return ring[T]{
		producer: (*uint32)(unsafe.Add(base, off.Producer)),
		consumer: (*uint32)(unsafe.Add(base, off.Consumer)),
		flags:    (*uint32)(unsafe.Add(base, off.Flags)),
		descs:    unsafe.Slice((*T)(unsafe.Add(base, off.Desc)), size),
		mask:     size - 1,
		size:     size,
		mem:      mem,
	}, nil
}

// newTestRing builds a ring over ordinary memory, for unit tests of the
// index arithmetic without a kernel.
func newTestRing[T any](size uint32) ring[T] {
	var idx [3]uint32
	return ring[T]{
		producer: &idx[0], consumer: &idx[1], flags: &idx[2],
		descs: make([]T, size), mask: size - 1, size: size,
	}
}

func setsockoptUMEMReg(fd int, reg *unix.XDPUmemReg) error {
	return setsockopt(fd, unix.XDP_UMEM_REG, unsafe.Pointer(reg), unsafe.Sizeof(*reg))
}

func getsockoptMmapOffsets(fd int) (unix.XDPMmapOffsets, error) {
	var off unix.XDPMmapOffsets
	n := uint32(unsafe.Sizeof(off))
	err := getsockopt(fd, unix.XDP_MMAP_OFFSETS, unsafe.Pointer(&off), &n)
	if err == nil && n != uint32(unsafe.Sizeof(off)) {
		err = fmt.Errorf("kernel returned %d bytes of mmap offsets, want %d (kernel too old for flags)", n, unsafe.Sizeof(off))
	}
	return off, err
}

func getsockoptStatistics(fd int) (unix.XDPStatistics, error) {
	var st unix.XDPStatistics
	n := uint32(unsafe.Sizeof(st))
	err := getsockopt(fd, unix.XDP_STATISTICS, unsafe.Pointer(&st), &n)
	return st, err
}

func getsockoptOptions(fd int) (uint32, error) {
	var opts uint32
	n := uint32(unsafe.Sizeof(opts))
	err := getsockopt(fd, unix.XDP_OPTIONS, unsafe.Pointer(&opts), &n)
	return opts, err
}

func setsockopt(fd, opt int, val unsafe.Pointer, size uintptr) error {
	_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(val), size, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func getsockopt(fd, opt int, val unsafe.Pointer, size *uint32) error {
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(val), uintptr(unsafe.Pointer(size)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// memAddr is the user address of the UMEM mapping, for XDP_UMEM_REG.
func memAddr(mem []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&mem[0]))) }

// txqAt is queue q's state in the mmapped tx_queues map (XDPTx).
func txqAt(mem []byte, q int) *xdptxTxq {
	stride := (int(unsafe.Sizeof(xdptxTxq{})) + 7) &^ 7
	return (*xdptxTxq)(unsafe.Pointer(&mem[q*stride]))
}

// ifnameOf asks fd's network namespace for ifindex's name (SIOCGIFNAME).
func ifnameOf(fd, ifindex int) (string, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return "", err
	}
	ifr.SetUint32(uint32(ifindex))
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFNAME, ifr); err != nil {
		return "", err
	}
	return ifr.Name(), nil
}
