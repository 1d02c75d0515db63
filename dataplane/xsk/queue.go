package xsk

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Mode selects how sockets bind to the driver.
type Mode int

const (
	// ModeAuto binds zero-copy when the driver supports it, copy otherwise.
	ModeAuto Mode = iota
	// ModeCopy forces copy mode (XDP_COPY).
	ModeCopy
	// ModeZeroCopy forces zero-copy (XDP_ZEROCOPY) and fails without it.
	ModeZeroCopy
)

func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeCopy:
		return "copy"
	case ModeZeroCopy:
		return "zero-copy"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// BusyRetry is how long OpenQueue retries a queue that is busy (EBUSY)
// before reporting it: the kernel releases a closed socket's queue
// asynchronously, shortly after close.
var BusyRetry = time.Second

// QueueConfig shapes a Queue and its primary socket. Ring sizes are powers
// of two; zero means DefaultRingSize.
type QueueConfig struct {
	// Frames is how many UMEM frames the queue owns; 0 takes the largest
	// free range of the UMEM.
	Frames int
	// FillSize and CompSize size the queue's fill and completion rings.
	FillSize, CompSize int
	// RxSize and TxSize size the primary socket's rings; negative means
	// the primary socket has no such ring.
	RxSize, TxSize int
	// Mode is the bind mode. Queues sharing a UMEM with an open queue
	// inherit that queue's mode (the kernel takes no flags then).
	Mode Mode
	// DisableNeedWakeup binds without XDP_USE_NEED_WAKEUP, so every tx
	// batch and fill shortage costs a syscall. For comparisons only.
	DisableNeedWakeup bool
	// MultiBuffer binds with XDP_USE_SG: frames larger than a chunk
	// arrive as several descriptors and may be sent as several (see
	// PktContd). Queues sharing a UMEM with an open queue inherit the
	// setting of the first one (the kernel keeps it in the UMEM).
	MultiBuffer bool
}

// SocketConfig shapes an additional socket on a queue. Zero sizes mean
// DefaultRingSize, negative sizes mean no such ring; a socket needs at
// least one of the two.
type SocketConfig struct {
	RxSize, TxSize int
}

// Queue is one NIC queue (interface, queue id) opened for AF_XDP: the
// queue's fill and completion rings, its frames of the UMEM with their
// allocator, and the sockets bound to the queue. The primary socket
// (Primary) registers the rings with the kernel and lives as long as the
// queue; further sockets (NewSocket), one per VM, share the queue's rings
// through XDP_SHARED_UMEM.
//
// Ownership: a Queue and everything reached through it (rings, frames,
// sockets) belong to one goroutine, the queue's worker. None of its
// methods is safe for concurrent use, except Stats, Socket.Stats and
// Socket.KernelStats, which may be called from any goroutine. Setup and
// teardown (NewSocket, Close) are done by the worker between batches, or
// before it starts.
type Queue struct {
	umem      *UMEM
	mem       []byte // the whole UMEM
	name      string // "ifname (ifindex N) queue Q", resolved at open in the caller's netns
	ifindex   int
	queueID   int
	frames    frameRange
	lo, hi    uint64 // UMEM offsets of the queue's frames [lo, hi)
	frameMask uint64
	zeroCopy  bool
	wakeups   bool // XDP_USE_NEED_WAKEUP in effect
	multiBuf  bool // XDP_USE_SG in effect

	fill    ring[uint64]
	comp    ring[uint64]
	pool    *framePool
	primary *Socket
	sockets []*Socket
	pollfds []unix.PollFd
	closed  atomic.Bool

	filled      atomic.Uint64
	received    atomic.Uint64
	txSubmitted atomic.Uint64
	completed   atomic.Uint64
	fillWakeups atomic.Uint64
	polls       atomic.Uint64
	rejected    atomic.Uint64 // addresses refused by Fill and Transmit
}

// NewQueue opens a queue on a UMEM of its own, closed with the queue.
func NewQueue(ifindex, queueID int, ucfg UMEMConfig, qcfg QueueConfig) (*Queue, error) {
	u, err := NewUMEM(ucfg)
	if err != nil {
		return nil, err
	}
	u.private = true
	q, err := u.OpenQueue(ifindex, queueID, qcfg)
	if err != nil {
		u.Close()
		return nil, err
	}
	return q, nil
}

func ringSize(n int, what string) (uint32, error) {
	if n == 0 {
		n = DefaultRingSize
	}
	if n < 1 || n > 1<<20 || n&(n-1) != 0 {
		return 0, fmt.Errorf("%s ring size %d: must be a power of two up to %d", what, n, 1<<20)
	}
	return uint32(n), nil
}

// OpenQueue opens (ifindex, queueID) on this UMEM. The first open queue
// registers the memory with the kernel; later ones create their own fill
// and completion rings and bind with XDP_SHARED_UMEM to a socket already
// holding the UMEM. A (ifindex, queueID) can be opened once per UMEM; add
// sockets to it with Queue.NewSocket.
func (u *UMEM) OpenQueue(ifindex, queueID int, cfg QueueConfig) (*Queue, error) {
	where := linkName(ifindex, queueID)
	fillSize, err := ringSize(cfg.FillSize, "fill")
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", where, err)
	}
	compSize, err := ringSize(cfg.CompSize, "completion")
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", where, err)
	}
	if cfg.RxSize < 0 && cfg.TxSize < 0 {
		return nil, fmt.Errorf("open %s: the primary socket needs an rx or a tx ring", where)
	}
	if queueID < 0 || ifindex <= 0 {
		return nil, fmt.Errorf("open %s: invalid interface index or queue", where)
	}

	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed || u.mem == nil {
		return nil, fmt.Errorf("open %s: UMEM is closed", where)
	}
	key := queueKey{ifindex, queueID}
	if _, dup := u.queues[key]; dup {
		return nil, fmt.Errorf("open %s: already open on this UMEM; add sockets with Queue.NewSocket", where)
	}
	fr, err := u.takeFramesLocked(cfg.Frames)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", where, err)
	}
	q := &Queue{
		umem:      u,
		name:      where,
		mem:       u.mem,
		ifindex:   ifindex,
		queueID:   queueID,
		frames:    fr,
		lo:        uint64(fr.first) * uint64(u.frameSize),
		hi:        uint64(fr.first+fr.n) * uint64(u.frameSize),
		frameMask: ^uint64(u.frameSize - 1),
	}
	q.pool = newFramePool(q.lo, uint64(u.frameSize), fr.n)

	owner := u.ownerFDLocked()
	mode := cfg.Mode
	if owner >= 0 {
		mode = ModeAuto // inherited; the kernel refuses mode flags here
	}
	// The kernel frees a closed socket's hold on its queue after an RCU
	// grace period and a workqueue run, so a queue closed a moment ago
	// still looks busy: retry EBUSY for a short while.
	deadline := time.Now().Add(BusyRetry)
	for {
		err = q.openPrimary(cfg, fillSize, compSize, owner, mode)
		if err != nil && mode == ModeAuto && owner < 0 && errors.Is(err, unix.EOPNOTSUPP) {
			slog.Debug("xsk: zero-copy not supported, binding in copy mode", "queue", where)
			mode = ModeCopy
			err = q.openPrimary(cfg, fillSize, compSize, owner, mode)
		}
		if err == nil || !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		u.returnFramesLocked(fr)
		return nil, fmt.Errorf("open %s: %w", where, err)
	}
	u.queues[key] = q
	return q, nil
}

// openPrimary creates the queue's first socket: UMEM registration (when
// owner < 0), fill/completion rings, the socket's own rings, bind. On
// error everything it made is undone.
func (q *Queue) openPrimary(cfg QueueConfig, fillSize, compSize uint32, owner int, mode Mode) (err error) {
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("create AF_XDP socket: %w", err)
	}
	s := &Socket{q: q, fd: fd}
	defer func() {
		if err != nil {
			q.fill.unmap()
			q.comp.unmap()
			s.unmapAndClose()
		}
	}()
	if owner < 0 {
		reg := unix.XDPUmemReg{
			Addr:     memAddr(q.umem.mem),
			Len:      uint64(len(q.umem.mem)),
			Size:     uint32(q.umem.frameSize),
			Headroom: uint32(q.umem.headroom),
		}
		if err := setsockoptUMEMReg(fd, &reg); err != nil {
			return fmt.Errorf("register %d-byte UMEM: %w%s", reg.Len, err, memlockHint(err))
		}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_XDP, unix.XDP_UMEM_FILL_RING, int(fillSize)); err != nil {
		return fmt.Errorf("set fill ring size %d: %w", fillSize, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_XDP, unix.XDP_UMEM_COMPLETION_RING, int(compSize)); err != nil {
		return fmt.Errorf("set completion ring size %d: %w", compSize, err)
	}
	if err := s.createRings(cfg.RxSize, cfg.TxSize); err != nil {
		return err
	}
	off, err := getsockoptMmapOffsets(fd)
	if err != nil {
		return fmt.Errorf("get mmap offsets: %w", err)
	}
	if q.fill, err = mapRing[uint64](fd, unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, fillSize); err != nil {
		return fmt.Errorf("fill ring: %w", err)
	}
	if q.comp, err = mapRing[uint64](fd, unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, compSize); err != nil {
		return fmt.Errorf("completion ring: %w", err)
	}
	if err := s.mapRings(off); err != nil {
		return err
	}
	sa := &unix.SockaddrXDP{Ifindex: uint32(q.ifindex), QueueID: uint32(q.queueID)}
	if owner >= 0 {
		sa.Flags = unix.XDP_SHARED_UMEM
		sa.SharedUmemFD = uint32(owner)
	} else {
		if !cfg.DisableNeedWakeup {
			sa.Flags |= unix.XDP_USE_NEED_WAKEUP
		}
		switch mode {
		case ModeCopy:
			sa.Flags |= unix.XDP_COPY
		case ModeZeroCopy, ModeAuto:
			sa.Flags |= unix.XDP_ZEROCOPY
		}
		if cfg.MultiBuffer {
			sa.Flags |= unix.XDP_USE_SG
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		if sa.Flags&unix.XDP_USE_SG != 0 && errors.Is(err, unix.EINVAL) {
			if perr := ProbeMultiBuffer(); errors.Is(perr, ErrNoMultiBuffer) {
				return fmt.Errorf("bind AF_XDP socket to %s with XDP_USE_SG: %w: lower the MTU to fit one frame, or upgrade the kernel", q.name, perr)
			}
		}
		return bindError(q.name, mode, err)
	}
	opts, err := getsockoptOptions(fd)
	if err != nil {
		return fmt.Errorf("get XDP options: %w", err)
	}
	q.zeroCopy = opts&unix.XDP_OPTIONS_ZEROCOPY != 0
	// The flag is in the ring when need_wakeup is on; with it off the
	// kernel never sets it, and we must kick every time.
	if owner >= 0 {
		q.wakeups = q.umem.needWakeup // the kernel copies it from the UMEM's first pool
		q.multiBuf = q.umem.multiBuf
	} else {
		q.wakeups = !cfg.DisableNeedWakeup
		q.umem.needWakeup = q.wakeups
		q.multiBuf = cfg.MultiBuffer
		q.umem.multiBuf = q.multiBuf
	}
	s.setTxBudget()
	q.primary = s
	q.sockets = append(q.sockets, s)
	q.rebuildPollFDs()
	return nil
}

// bindError turns the kernel's terse errnos into what went wrong.
func bindError(where string, mode Mode, err error) error {
	var why string
	switch {
	case errors.Is(err, unix.ENODEV):
		why = "no such interface"
	case errors.Is(err, unix.EINVAL):
		why = "queue does not exist or is not active (see ethtool -l), or bad ring setup"
	case errors.Is(err, unix.EBUSY):
		why = "queue is busy: another UMEM is already bound to it"
	case errors.Is(err, unix.EOPNOTSUPP) && mode != ModeCopy:
		why = "driver does not support zero-copy"
	}
	if why != "" {
		return fmt.Errorf("bind AF_XDP socket to %s (%s mode): %s: %w", where, mode, why, err)
	}
	return fmt.Errorf("bind AF_XDP socket to %s (%s mode): %w", where, mode, err)
}

func linkName(ifindex, queueID int) string {
	if ifi, err := net.InterfaceByIndex(ifindex); err == nil {
		return fmt.Sprintf("%s (ifindex %d) queue %d", ifi.Name, ifindex, queueID)
	}
	return fmt.Sprintf("ifindex %d queue %d", ifindex, queueID)
}

// NewSocket adds a socket bound to the same queue, sharing its UMEM, fill
// and completion rings (XDP_SHARED_UMEM). Frames it receives come from the
// queue's fill ring; frames it transmits complete on the queue's
// completion ring.
func (q *Queue) NewSocket(cfg SocketConfig) (*Socket, error) {
	where := q.name
	if q.closed.Load() {
		return nil, fmt.Errorf("new socket on %s: queue is closed", where)
	}
	if cfg.RxSize < 0 && cfg.TxSize < 0 {
		return nil, fmt.Errorf("new socket on %s: needs an rx or a tx ring", where)
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("new socket on %s: create AF_XDP socket: %w", where, err)
	}
	s := &Socket{q: q, fd: fd}
	if err := s.setup(cfg); err != nil {
		s.unmapAndClose()
		return nil, fmt.Errorf("new socket on %s: %w", where, err)
	}
	q.sockets = append(q.sockets, s)
	q.rebuildPollFDs()
	return s, nil
}

func (q *Queue) rebuildPollFDs() {
	q.pollfds = q.pollfds[:0]
	for _, s := range q.sockets {
		if s.rx.size > 0 {
			q.pollfds = append(q.pollfds, unix.PollFd{Fd: int32(s.fd), Events: unix.POLLIN})
		}
	}
}

// Primary is the queue's first socket. It lives as long as the queue
// (closing it alone is refused), which makes it the natural flood/default
// socket of the queue.
func (q *Queue) Primary() *Socket { return q.primary }

// Sockets are the queue's open sockets, primary first. The slice is the
// queue's own: do not modify it.
func (q *Queue) Sockets() []*Socket { return q.sockets }

// Name describes the queue in messages: interface name, index and queue.
func (q *Queue) Name() string { return q.name }

// Ifindex is the interface the queue is bound to.
func (q *Queue) Ifindex() int { return q.ifindex }

// ID is the queue's id on its interface.
func (q *Queue) ID() int { return q.queueID }

// ZeroCopy reports whether the queue is bound in zero-copy mode.
func (q *Queue) ZeroCopy() bool { return q.zeroCopy }

// UMEM is the memory the queue's frames live in.
func (q *Queue) UMEM() *UMEM { return q.umem }

// NumFrames is how many frames the queue owns.
func (q *Queue) NumFrames() int { return q.pool.total() }

// FreeFrames is how many of the queue's frames are in its allocator.
func (q *Queue) FreeFrames() int { return int(q.pool.free.Load()) }

// RingFrames counts the frames in the queue's rings from the rings' shared
// indices, independently of the allocator: the fill ring, the completion
// ring and every socket's rx and tx rings. Frames the caller holds and
// frames the kernel is moving between two rings are not counted. Only the
// queue's worker may call it.
func (q *Queue) RingFrames() int {
	if q.closed.Load() {
		return 0
	}
	n := int(q.fill.pending()) + int(q.comp.pending())
	for _, s := range q.sockets {
		n += s.RxPending() + s.TxPending()
	}
	return n
}

// Alloc takes up to len(addrs) free frames for the caller (e.g. to copy a
// guest frame into for TX) and returns how many it took. addrs are the
// frames' UMEM addresses.
func (q *Queue) Alloc(addrs []uint64) int { return q.pool.alloc(addrs) }

// Free returns frames the caller holds to the allocator; any address
// inside a frame frees that frame. Addresses that are not the queue's, and
// frames that are already free or owned by the kernel (in the fill or a tx
// ring), are refused and counted (QueueStats.DoubleFrees, BadAddrs). It
// returns how many frames were freed.
func (q *Queue) Free(addrs []uint64) int { return q.pool.put(addrs) }

// FreeDescs returns the frames of received descriptors to the allocator.
func (q *Queue) FreeDescs(descs []Desc) int {
	ok := 0
	for i := range descs {
		if q.pool.putFrom(descs[i].Addr, frameHeld) {
			ok++
		}
	}
	q.pool.sync()
	return ok
}

// Frame is the data of a received (or to be sent) descriptor, or nil when
// the descriptor lies outside the queue's frames.
func (q *Queue) Frame(d Desc) []byte {
	end := d.Addr + uint64(d.Len)
	if d.Addr < q.lo || end > q.hi || end < d.Addr || (d.Len > 0 && (end-1)&q.frameMask != d.Addr&q.frameMask) {
		return nil
	}
	return q.mem[d.Addr:end:end]
}

// Buffer is the writable space from addr to the end of its frame, for
// building a frame to transmit; nil when addr is not in the queue's frames.
func (q *Queue) Buffer(addr uint64) []byte {
	if addr < q.lo || addr >= q.hi {
		return nil
	}
	end := addr&q.frameMask + uint64(q.umem.frameSize)
	return q.mem[addr:end:end]
}

// Refill moves up to max free frames (max <= 0: as many as fit) from the
// allocator to the fill ring and returns how many it moved. It wakes the
// kernel only when the fill ring asks (need_wakeup).
func (q *Queue) Refill(max int) int {
	want := q.fill.size
	if max > 0 && uint32(max) < want {
		want = uint32(max)
	}
	want = min(want, uint32(len(q.pool.stack)))
	if want == 0 {
		q.wakeFill()
		return 0
	}
	idx, n := q.fill.reserve(want)
	for i := uint32(0); i < n; i++ {
		*q.fill.at(idx + i) = q.pool.popToKernel()
	}
	q.pool.sync()
	q.publishFill(n)
	return int(n)
}

// Fill puts frames the caller holds (typically just-received ones) back
// on the fill ring and returns how many of addrs it consumed (fewer when the ring is
// full: the caller still owns addrs[n:]). Addresses that are not frames
// handed out by this queue are skipped and counted as rejected.
func (q *Queue) Fill(addrs []uint64) int {
	idx, n := q.fill.reserve(uint32(len(addrs)))
	var put uint32
	used := 0
	for ; used < len(addrs) && put < n; used++ {
		a := addrs[used]
		if !q.pool.toKernel(a) {
			q.rejected.Add(1)
			continue
		}
		*q.fill.at(idx + put) = a & q.frameMask
		put++
	}
	q.fill.cachedProd -= n - put // give back what invalid entries left unused
	q.publishFill(put)
	return used
}

// FillDescs puts the frames of received descriptors back on the fill
// ring; see Fill.
func (q *Queue) FillDescs(descs []Desc) int {
	idx, n := q.fill.reserve(uint32(len(descs)))
	var put uint32
	used := 0
	for ; used < len(descs) && put < n; used++ {
		a := descs[used].Addr
		if !q.pool.toKernel(a) {
			q.rejected.Add(1)
			continue
		}
		*q.fill.at(idx + put) = a & q.frameMask
		put++
	}
	q.fill.cachedProd -= n - put
	q.publishFill(put)
	return used
}

func (q *Queue) publishFill(n uint32) {
	if n > 0 {
		q.fill.submit()
		q.filled.Add(uint64(n))
	}
	q.wakeFill()
}

// wakeFill tells the kernel about new fill entries when it asked to be told
// (zero-copy drivers; in copy mode the fill ring never asks).
func (q *Queue) wakeFill() {
	if q.wakeups && q.fill.needWakeup() {
		q.fillWakeups.Add(1)
		recvfromNoWait(q.primary.fd)
	}
}

// Complete takes up to len(addrs) completed tx frames off the completion
// ring; the caller owns them afterwards (reuse for TX, or Free).
func (q *Queue) Complete(addrs []uint64) int {
	idx, n := q.comp.peek(uint32(len(addrs)))
	for i := uint32(0); i < n; i++ {
		a := *q.comp.at(idx + i)
		q.pool.fromKernel(a)
		addrs[i] = a
	}
	if n > 0 {
		q.comp.release(n)
		q.completed.Add(uint64(n))
	}
	return int(n)
}

// Reap moves every completed tx frame straight back to the allocator.
func (q *Queue) Reap() int {
	idx, n := q.comp.peek(q.comp.size)
	if n == 0 {
		return 0
	}
	for i := uint32(0); i < n; i++ {
		q.pool.putFrom(*q.comp.at(idx + i), frameKernel)
	}
	q.comp.release(n)
	q.pool.sync()
	q.completed.Add(uint64(n))
	return int(n)
}

// Poll sleeps until a socket of the queue has received frames or the
// timeout passes (negative: forever), for the worker's idle fallback. It
// returns how many sockets are readable.
func (q *Queue) Poll(timeout time.Duration) (int, error) {
	ms := -1
	if timeout >= 0 {
		ms = int(timeout.Milliseconds())
	}
	q.polls.Add(1)
	for {
		n, err := unix.Poll(q.pollfds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("poll AF_XDP sockets of %s: %w", q.name, err)
		}
		return n, nil
	}
}

// Close closes every socket of the queue and gives its frames back to the
// UMEM. Frames still held by the caller become invalid.
func (q *Queue) Close() error {
	if q.closed.Swap(true) {
		return nil
	}
	var errs []error
	for _, s := range slices.Backward(q.sockets) {
		if s != q.primary {
			errs = append(errs, s.close())
		}
	}
	errs = append(errs, q.fill.unmap(), q.comp.unmap(), q.primary.close())
	q.sockets = nil
	u := q.umem
	u.mu.Lock()
	delete(u.queues, queueKey{q.ifindex, q.queueID})
	u.returnFramesLocked(q.frames)
	if u.private {
		u.closed = true
	}
	errs = append(errs, u.maybeUnmapLocked())
	u.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close %s: %w", q.name, err)
	}
	return nil
}
