package xsk

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// DirectConfig shapes a socket whose UMEM is memory the caller owns and
// keeps mapped until Close returns: a guest's memory region, so the
// kernel (copy mode) or the NIC (zero-copy) writes each frame straight
// into the buffer whose address the caller put on the fill ring.
type DirectConfig struct {
	Ifindex, QueueID int
	// Mem is registered as is (page-aligned start) with unaligned chunks:
	// any fill address works whose chunk [addr, addr+ChunkSize) lies in Mem.
	Mem []byte
	// ChunkSize (2048..4096) bounds what the kernel writes for one fill
	// address: at most ChunkSize-256 bytes, from addr+256 on (MaxFrame).
	ChunkSize int
	// Headroom is added to DirectHeadroom before each frame: the kernel
	// writes at most ChunkSize-256-Headroom bytes (MaxFrame).
	Headroom int
	// FillSize and RxSize size the rings (0: DefaultRingSize).
	FillSize, RxSize int
	Mode             Mode
}

// Direct is an AF_XDP socket with a UMEM of its own on the caller's
// memory: one fill ring, one rx ring, no tx. Like a Queue it belongs to
// one goroutine; KernelStats, ZeroCopy and Frames may be called from any.
type Direct struct {
	fd       int
	name     string
	memLen   uint64
	chunk    uint64
	headroom uint64
	zeroCopy bool
	wakeups  bool
	fill     ring[uint64]
	comp     ring[uint64]
	rx       ring[Desc]
	frames   atomic.Uint64
	// mu orders KernelStats (any goroutine) with Close: a closed fd's
	// number may be reused at once.
	mu sync.Mutex
}

// DirectHeadroom is where the kernel puts a frame after its fill address
// (XDP_PACKET_HEADROOM; the UMEM has no headroom of its own).
const DirectHeadroom = unix.XDP_PACKET_HEADROOM

// ErrMemory: the memory cannot be a UMEM (not page-aligned, too small,
// or more than RLIMIT_MEMLOCK allows); the reason is in the error.
var ErrMemory = errors.New("memory cannot be registered as UMEM")

// OpenDirect registers cfg.Mem and binds a socket to the queue.
func OpenDirect(cfg DirectConfig) (_ *Direct, err error) {
	where := linkName(cfg.Ifindex, cfg.QueueID)
	if cfg.ChunkSize < 2048 || cfg.ChunkSize > 4096 {
		return nil, fmt.Errorf("direct socket on %s: chunk size %d outside 2048..4096", where, cfg.ChunkSize)
	}
	page := uint64(unix.Getpagesize())
	if len(cfg.Mem) < cfg.ChunkSize || memAddr(cfg.Mem)%page != 0 {
		return nil, fmt.Errorf("direct socket on %s: %w: %d bytes at %#x (a UMEM starts on a page and holds a chunk)",
			where, ErrMemory, len(cfg.Mem), memAddr(cfg.Mem))
	}
	fillSize, err := ringSize(cfg.FillSize, "fill")
	if err != nil {
		return nil, err
	}
	rxSize, err := ringSize(cfg.RxSize, "rx")
	if err != nil {
		return nil, err
	}
	if cfg.Headroom < 0 || cfg.ChunkSize-DirectHeadroom-cfg.Headroom < 64 {
		return nil, fmt.Errorf("direct socket on %s: headroom %d leaves no room in %d-byte chunks", where, cfg.Headroom, cfg.ChunkSize)
	}
	d := &Direct{fd: -1, name: where, memLen: uint64(len(cfg.Mem)), chunk: uint64(cfg.ChunkSize), headroom: uint64(cfg.Headroom)}
	mode := cfg.Mode
	deadline := time.Now().Add(BusyRetry)
	for {
		err = d.open(cfg, fillSize, rxSize, mode)
		if err != nil && mode == ModeAuto && errors.Is(err, unix.EOPNOTSUPP) {
			mode = ModeCopy
			err = d.open(cfg, fillSize, rxSize, mode)
		}
		if err == nil || !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("direct socket on %s: %w", where, err)
	}
	return d, nil
}

func (d *Direct) open(cfg DirectConfig, fillSize, rxSize uint32, mode Mode) (err error) {
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("create AF_XDP socket: %w", err)
	}
	d.fd = fd
	defer func() {
		if err != nil {
			d.closeAll()
		}
	}()
	reg := unix.XDPUmemReg{
		Addr:     memAddr(cfg.Mem),
		Len:      uint64(len(cfg.Mem)),
		Size:     uint32(cfg.ChunkSize),
		Headroom: uint32(cfg.Headroom),
		Flags:    unix.XDP_UMEM_UNALIGNED_CHUNK_FLAG,
	}
	if err := setsockoptUMEMReg(fd, &reg); err != nil {
		return fmt.Errorf("register %d bytes of guest memory: %w: %w%s", reg.Len, ErrMemory, err, memlockHint(err))
	}
	for _, o := range []struct {
		opt  int
		size uint32
	}{{unix.XDP_UMEM_FILL_RING, fillSize}, {unix.XDP_UMEM_COMPLETION_RING, 64}, {unix.XDP_RX_RING, rxSize}} {
		if err := unix.SetsockoptInt(fd, unix.SOL_XDP, o.opt, int(o.size)); err != nil {
			return fmt.Errorf("set ring %d size %d: %w", o.opt, o.size, err)
		}
	}
	off, err := getsockoptMmapOffsets(fd)
	if err != nil {
		return fmt.Errorf("get mmap offsets: %w", err)
	}
	if d.fill, err = mapRing[uint64](fd, unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, fillSize); err != nil {
		return fmt.Errorf("fill ring: %w", err)
	}
	if d.comp, err = mapRing[uint64](fd, unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, 64); err != nil {
		return fmt.Errorf("completion ring: %w", err)
	}
	if d.rx, err = mapRing[Desc](fd, unix.XDP_PGOFF_RX_RING, off.Rx, rxSize); err != nil {
		return fmt.Errorf("rx ring: %w", err)
	}
	sa := &unix.SockaddrXDP{Flags: unix.XDP_USE_NEED_WAKEUP, Ifindex: uint32(cfg.Ifindex), QueueID: uint32(cfg.QueueID)}
	if mode == ModeCopy {
		sa.Flags |= unix.XDP_COPY
	} else {
		sa.Flags |= unix.XDP_ZEROCOPY
	}
	if err := unix.Bind(fd, sa); err != nil {
		return bindError(d.name, mode, err)
	}
	opts, err := getsockoptOptions(fd)
	if err != nil {
		return fmt.Errorf("get XDP options: %w", err)
	}
	d.zeroCopy = opts&unix.XDP_OPTIONS_ZEROCOPY != 0
	d.wakeups = true
	return nil
}

// FD is the socket, for the XSKMAP and poll.
func (d *Direct) FD() int { return d.fd }

// ZeroCopy reports whether the driver writes frames itself (XDP_ZEROCOPY).
func (d *Direct) ZeroCopy() bool { return d.zeroCopy }

// MaxFrame is the longest frame the kernel writes for one fill address;
// longer frames are dropped by the kernel (rx_dropped).
func (d *Direct) MaxFrame() int { return int(d.chunk-d.headroom) - DirectHeadroom }

// FrameOffset is where a frame starts after its fill address.
func (d *Direct) FrameOffset() uint64 { return d.headroom + DirectHeadroom }

// Chunk is the registered chunk size: a fill address addr is usable when
// addr+Chunk() <= len(Mem).
func (d *Direct) Chunk() uint64 { return d.chunk }

// FillRoom is how many addresses Fill can take now.
func (d *Direct) FillRoom() int { return int(d.fill.free(d.fill.size)) }

// Fill gives buffer addresses (offsets in Mem) to the kernel and returns
// how many it took. Each must satisfy addr+Chunk() <= len(Mem): the
// caller checks (the kernel would skip it silently).
func (d *Direct) Fill(addrs []uint64) int {
	idx, n := d.fill.reserve(uint32(len(addrs)))
	for i := uint32(0); i < n; i++ {
		*d.fill.at(idx + i) = addrs[i]
	}
	if n > 0 {
		d.fill.submit()
	}
	if d.wakeups && d.fill.needWakeup() {
		recvfromNoWait(d.fd)
	}
	return int(n)
}

// Receive takes up to len(descs) received descriptors. In unaligned mode
// a descriptor's Addr is the fill address with the frame's offset from
// it in the upper 16 bits (DirectOffset).
func (d *Direct) Receive(descs []Desc) int {
	idx, n := d.rx.peek(uint32(len(descs)))
	if n == 0 {
		return 0
	}
	for i := uint32(0); i < n; i++ {
		descs[i] = *d.rx.at(idx + i)
	}
	d.rx.release(n)
	d.frames.Add(uint64(n))
	return int(n)
}

// unalignedOffsetShift is XSK_UNALIGNED_BUF_OFFSET_SHIFT (include/uapi/linux/if_xdp.h).
const unalignedOffsetShift = 48

// DirectAddr splits an rx descriptor address of an unaligned UMEM into
// the fill address it came from and the frame's offset from it.
func DirectAddr(a uint64) (fill, off uint64) {
	return a & (1<<unalignedOffsetShift - 1), a >> unalignedOffsetShift
}

// Frames counts the descriptors received.
func (d *Direct) Frames() uint64 { return d.frames.Load() }

// KernelStats reads XDP_STATISTICS; safe from any goroutine while open.
func (d *Direct) KernelStats() (KernelStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return KernelStats{}, fmt.Errorf("get XDP statistics of %s: socket closed", d.name)
	}
	st, err := getsockoptStatistics(d.fd)
	if err != nil {
		return KernelStats{}, fmt.Errorf("get XDP statistics of %s: %w", d.name, err)
	}
	return KernelStats{RxDropped: st.Rx_dropped, RxInvalid: st.Rx_invalid_descs, RxRingFull: st.Rx_ring_full,
		FillRingEmpty: st.Rx_fill_ring_empty_descs}, nil
}

// Close closes the socket: from its return on, the kernel writes nothing
// more into the memory and every fill entry is released, so the caller
// may unmap (or hand back) the memory afterwards.
func (d *Direct) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closeAll()
}

func (d *Direct) closeAll() error {
	var err error
	if d.fd >= 0 {
		// xsk_release unbinds the device and waits for the rx path
		// (synchronize_net) before it returns.
		err = unix.Close(d.fd)
		d.fd = -1
	}
	return errors.Join(err, d.fill.unmap(), d.comp.unmap(), d.rx.unmap())
}

// WaitReleased waits until no UMEM is bound to the queue any more, by
// binding a small probe socket to it (in copy mode) until the kernel
// stops answering EBUSY. A zero-copy driver gives up its queue (and stops
// DMA into the old UMEM) in a deferred teardown after close returns:
// only then may the memory go back to its owner. Copy mode needs no wait
// (close waits for the rx path itself).
func WaitReleased(ifindex, queueID int, timeout time.Duration) error {
	mem, err := unix.Mmap(-1, 0, 2*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("probe UMEM: %w", err)
	}
	defer unix.Munmap(mem)
	deadline := time.Now().Add(timeout)
	for {
		err := probeBind(ifindex, queueID, mem)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("wait for %s to be released: %w", linkName(ifindex, queueID), err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func probeBind(ifindex, queueID int, mem []byte) error {
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	reg := unix.XDPUmemReg{Addr: memAddr(mem), Len: uint64(len(mem)), Size: 4096}
	if err := setsockoptUMEMReg(fd, &reg); err != nil {
		return err
	}
	for _, o := range []int{unix.XDP_UMEM_FILL_RING, unix.XDP_UMEM_COMPLETION_RING, unix.XDP_RX_RING} {
		if err := unix.SetsockoptInt(fd, unix.SOL_XDP, o, 2); err != nil {
			return err
		}
	}
	return unix.Bind(fd, &unix.SockaddrXDP{Flags: unix.XDP_COPY, Ifindex: uint32(ifindex), QueueID: uint32(queueID)})
}
