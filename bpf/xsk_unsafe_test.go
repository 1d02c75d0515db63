package bpf

// A minimal AF_XDP socket for the tests, with raw syscalls so this package
// does not depend on dataplane/xsk. All unsafe code of the tests is here.

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	testFrameSize = 2048
	testFrames    = 64
	testRingSize  = 64
)

type testRing struct {
	mem              []byte
	producer         *uint32
	consumer         *uint32
	desc             unsafe.Pointer
	mask             uint32
	cachedProd, prod uint32
}

func mapRing(fd int, pgoff int64, off unix.XDPRingOffset, descSize uintptr) (*testRing, error) {
	size := int(off.Desc) + testRingSize*int(descSize)
	mem, err := unix.Mmap(fd, pgoff, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap ring at %#x: %w", pgoff, err)
	}
	base := unsafe.Pointer(&mem[0])
	return &testRing{
		mem:      mem,
		producer: (*uint32)(unsafe.Add(base, off.Producer)),
		consumer: (*uint32)(unsafe.Add(base, off.Consumer)),
		desc:     unsafe.Add(base, off.Desc),
		mask:     testRingSize - 1,
	}, nil
}

// testXSK is an AF_XDP socket bound to one queue, with its own UMEM or
// sharing another socket's.
type testXSK struct {
	fd     int
	umem   []byte // nil when shared
	owner  *testXSK
	fill   *testRing
	rx     *testRing
	frames []uint64 // free UMEM addresses this socket may put in the fill ring
}

func setsockopt(fd, opt int, p unsafe.Pointer, n uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(p), n, 0)
	if e != 0 {
		return e
	}
	return nil
}

// openTestXSK binds a socket to (ifindex, queue). With shared != nil it
// shares shared's UMEM (same queue) and uses half of its frames.
func openTestXSK(ifindex, queue int, shared *testXSK) (x *testXSK, err error) {
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket AF_XDP: %w", err)
	}
	x = &testXSK{fd: fd}
	defer func() {
		if err != nil {
			x.Close()
		}
	}()
	ringSize := uint32(testRingSize)
	if shared == nil {
		x.umem, err = unix.Mmap(-1, 0, testFrames*testFrameSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
		if err != nil {
			return nil, fmt.Errorf("mmap umem: %w", err)
		}
		reg := unix.XDPUmemReg{Addr: uint64(uintptr(unsafe.Pointer(&x.umem[0]))), Len: uint64(len(x.umem)), Size: testFrameSize}
		if err := setsockopt(fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
			return nil, fmt.Errorf("XDP_UMEM_REG: %w", err)
		}
		for _, opt := range []int{unix.XDP_UMEM_FILL_RING, unix.XDP_UMEM_COMPLETION_RING} {
			if err := setsockopt(fd, opt, unsafe.Pointer(&ringSize), 4); err != nil {
				return nil, fmt.Errorf("ring size opt %d: %w", opt, err)
			}
		}
	}
	if err := setsockopt(fd, unix.XDP_RX_RING, unsafe.Pointer(&ringSize), 4); err != nil {
		return nil, fmt.Errorf("XDP_RX_RING: %w", err)
	}
	var off unix.XDPMmapOffsets
	n := uint32(unsafe.Sizeof(off))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_MMAP_OFFSETS, uintptr(unsafe.Pointer(&off)), uintptr(unsafe.Pointer(&n)), 0); e != 0 {
		return nil, fmt.Errorf("XDP_MMAP_OFFSETS: %w", e)
	}
	if x.rx, err = mapRing(fd, unix.XDP_PGOFF_RX_RING, off.Rx, unsafe.Sizeof(unix.XDPDesc{})); err != nil {
		return nil, err
	}
	sa := &unix.SockaddrXDP{Ifindex: uint32(ifindex), QueueID: uint32(queue)}
	if shared == nil {
		if x.fill, err = mapRing(fd, unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, 8); err != nil {
			return nil, err
		}
		for i := range testFrames / 2 {
			x.frames = append(x.frames, uint64(i*testFrameSize))
		}
	} else {
		x.owner = shared
		x.frames = shared.frames[len(shared.frames)/2:]
		shared.frames = shared.frames[:len(shared.frames)/2]
		sa.Flags = unix.XDP_SHARED_UMEM
		sa.SharedUmemFD = uint32(shared.fd)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("bind xsk to ifindex %d queue %d: %w", ifindex, queue, err)
	}
	return x, nil
}

func (x *testXSK) umemOwner() *testXSK {
	if x.owner != nil {
		return x.owner
	}
	return x
}

// refill hands this socket's free frames to the (shared) fill ring.
func (x *testXSK) refill() {
	o := x.umemOwner()
	fr := o.fill
	prod := atomic.LoadUint32(fr.producer)
	cons := atomic.LoadUint32(fr.consumer)
	for len(x.frames) > 0 && prod-cons < testRingSize {
		*(*uint64)(unsafe.Add(fr.desc, uintptr(prod&fr.mask)*8)) = x.frames[len(x.frames)-1]
		x.frames = x.frames[:len(x.frames)-1]
		prod++
	}
	atomic.StoreUint32(fr.producer, prod)
}

// receive returns copies of the frames in the rx ring and recycles them.
func (x *testXSK) receive() [][]byte {
	o := x.umemOwner()
	r := x.rx
	prod := atomic.LoadUint32(r.producer)
	cons := atomic.LoadUint32(r.consumer)
	var out [][]byte
	for ; cons != prod; cons++ {
		d := (*unix.XDPDesc)(unsafe.Add(r.desc, uintptr(cons&r.mask)*unsafe.Sizeof(unix.XDPDesc{})))
		if d.Addr+uint64(d.Len) <= uint64(len(o.umem)) {
			out = append(out, append([]byte(nil), o.umem[d.Addr:d.Addr+uint64(d.Len)]...))
		}
		x.frames = append(x.frames, d.Addr&^(testFrameSize-1))
	}
	atomic.StoreUint32(r.consumer, cons)
	x.refill()
	return out
}

func (x *testXSK) Close() {
	for _, r := range []*testRing{x.rx, x.fill} {
		if r != nil {
			unix.Munmap(r.mem)
		}
	}
	unix.Close(x.fd)
	if x.umem != nil {
		unix.Munmap(x.umem)
	}
}
