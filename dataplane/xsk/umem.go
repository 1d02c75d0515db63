package xsk

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Defaults for zero fields of UMEMConfig and QueueConfig.
const (
	DefaultFrameSize = 2048
	DefaultNumFrames = 4096
	DefaultRingSize  = 2048
)

// UMEMConfig shapes a UMEM.
type UMEMConfig struct {
	// FrameSize is 2048 or 4096 bytes (aligned chunk mode).
	FrameSize int
	// NumFrames is the number of frames in the UMEM; queues carve their
	// frames out of it.
	NumFrames int
	// Headroom is reserved in front of every received frame's data, in
	// addition to the kernel's XDP_PACKET_HEADROOM (256).
	Headroom int
}

func (c *UMEMConfig) setDefaults() error {
	if c.FrameSize == 0 {
		c.FrameSize = DefaultFrameSize
	}
	if c.NumFrames == 0 {
		c.NumFrames = DefaultNumFrames
	}
	if c.FrameSize != 2048 && c.FrameSize != 4096 {
		return fmt.Errorf("UMEM frame size %d: must be 2048 or 4096", c.FrameSize)
	}
	if c.NumFrames < 1 || c.NumFrames > 1<<22 {
		return fmt.Errorf("UMEM frame count %d: must be in 1..%d", c.NumFrames, 1<<22)
	}
	// Leave at least 1518 bytes for a frame after both headrooms.
	if c.Headroom < 0 || c.FrameSize-unix.XDP_PACKET_HEADROOM-c.Headroom < 1518 {
		return fmt.Errorf("UMEM headroom %d: must be 0..%d for %d-byte frames",
			c.Headroom, c.FrameSize-unix.XDP_PACKET_HEADROOM-1518, c.FrameSize)
	}
	return nil
}

// UMEM is the packet memory shared with the kernel: NumFrames frames of
// FrameSize bytes, mapped with MAP_POPULATE and registered with the kernel
// by the first Queue opened on it. Several queues (NIC queues, even of
// different interfaces) may share one UMEM, each with its own fill and
// completion rings and its own disjoint range of frames.
//
// Opening and closing queues is control-plane work and is serialised by a
// mutex; nothing on the packet path takes it.
type UMEM struct {
	mem       []byte
	frameSize int
	headroom  int
	numFrames int

	mu      sync.Mutex
	free    []frameRange // frame ranges not given to a queue
	queues  map[queueKey]*Queue
	closed  bool
	private bool // created by NewQueue: closed with its only queue
	// needWakeup is whether the registering queue bound with
	// XDP_USE_NEED_WAKEUP; queues sharing the UMEM inherit it.
	needWakeup bool
	// multiBuf is whether it bound with XDP_USE_SG (kept in the kernel's
	// UMEM, so every socket on it has it).
	multiBuf bool
}

type queueKey struct{ ifindex, queue int }

type frameRange struct{ first, n int }

// NewUMEM maps and populates the UMEM memory. The kernel pins it when the
// first queue registers it; that needs CAP_IPC_LOCK or enough
// RLIMIT_MEMLOCK, and the error then says so.
func NewUMEM(cfg UMEMConfig) (*UMEM, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	size := cfg.FrameSize * cfg.NumFrames
	mem, err := mapUMEM(size)
	if err != nil {
		return nil, fmt.Errorf("map %d-byte UMEM: %w%s", size, err, memlockHint(err))
	}
	return &UMEM{
		mem:       mem,
		frameSize: cfg.FrameSize,
		headroom:  cfg.Headroom,
		numFrames: cfg.NumFrames,
		free:      []frameRange{{0, cfg.NumFrames}},
		queues:    make(map[queueKey]*Queue),
	}, nil
}

// FrameSize is the size of one frame (chunk).
func (u *UMEM) FrameSize() int { return u.frameSize }

// NumFrames is the number of frames in the UMEM.
func (u *UMEM) NumFrames() int { return u.numFrames }

// Headroom is the configured rx headroom (excluding XDP_PACKET_HEADROOM).
func (u *UMEM) Headroom() int { return u.headroom }

// FreeFrames is how many frames are not yet given to a queue.
func (u *UMEM) FreeFrames() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, r := range u.free {
		n += r.n
	}
	return n
}

// Close releases the memory once every queue opened on it is closed; until
// then it only refuses new queues.
func (u *UMEM) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	return u.maybeUnmapLocked()
}

func (u *UMEM) maybeUnmapLocked() error {
	if !u.closed || len(u.queues) > 0 || u.mem == nil {
		return nil
	}
	err := unix.Munmap(u.mem)
	u.mem = nil
	if err != nil {
		return fmt.Errorf("unmap UMEM: %w", err)
	}
	return nil
}

// takeFrames carves n frames (n == 0: all that are left in the largest
// free range) for a queue.
func (u *UMEM) takeFramesLocked(n int) (frameRange, error) {
	best := -1
	for i, r := range u.free {
		if n > 0 && r.n >= n {
			best = i
			break
		}
		if n == 0 && (best < 0 || r.n > u.free[best].n) {
			best = i
		}
	}
	if best < 0 || u.free[best].n == 0 {
		return frameRange{}, fmt.Errorf("UMEM has no range of %d free frames (%d frames in total)", n, u.numFrames)
	}
	r := u.free[best]
	if n == 0 {
		n = r.n
	}
	got := frameRange{r.first, n}
	if r.n == n {
		u.free = append(u.free[:best], u.free[best+1:]...)
	} else {
		u.free[best] = frameRange{r.first + n, r.n - n}
	}
	return got, nil
}

// returnFramesLocked gives a closed queue's range back, merging neighbours.
func (u *UMEM) returnFramesLocked(fr frameRange) {
	u.free = append(u.free, fr)
	// Few ranges ever exist: insertion sort and merge is plenty.
	for i := len(u.free) - 1; i > 0 && u.free[i].first < u.free[i-1].first; i-- {
		u.free[i], u.free[i-1] = u.free[i-1], u.free[i]
	}
	out := u.free[:0]
	for _, r := range u.free {
		if len(out) > 0 && out[len(out)-1].first+out[len(out)-1].n == r.first {
			out[len(out)-1].n += r.n
			continue
		}
		out = append(out, r)
	}
	u.free = out
}

// ownerFDLocked returns a bound socket that holds the kernel's UMEM, or -1
// when no queue is open and the next one must register the memory.
func (u *UMEM) ownerFDLocked() int {
	for _, q := range u.queues {
		return q.primary.fd
	}
	return -1
}

// memlockHint explains the usual causes of a failed pin or map.
func memlockHint(err error) string {
	// XDP_UMEM_REG says ENOBUFS when the pages exceed RLIMIT_MEMLOCK.
	if !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.ENOMEM) && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EAGAIN) {
		return ""
	}
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim) != nil {
		return " (cannot lock the memory: raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK)"
	}
	return fmt.Sprintf(" (cannot lock the memory: RLIMIT_MEMLOCK is %d bytes; raise it (ulimit -l, LimitMEMLOCK=) or grant CAP_IPC_LOCK)", lim.Cur)
}

// mapUMEM maps size bytes of anonymous memory, on transparent huge pages
// where the kernel allows (THP "madvise" or "always"), and populates it.
// Every received frame is a new 4 KiB page otherwise: the worker's first
// read of each frame was a TLB miss (a two-level walk in a VM), the
// largest single cost per frame in its profile.
func mapUMEM(size int) ([]byte, error) {
	if size < hugePageSize {
		return unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	}
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	_ = unix.Madvise(mem, unix.MADV_HUGEPAGE) // THP off: 4 KiB pages, as before
	if unix.Madvise(mem, unix.MADV_POPULATE_WRITE) != nil {
		for i := 0; i < len(mem); i += 4096 { // kernels before 5.14
			mem[i] = 0
		}
	}
	return mem, nil
}

// hugePageSize is the PMD size of amd64 and arm64 (4 KiB base pages).
const hugePageSize = 2 << 20
