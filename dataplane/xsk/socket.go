package xsk

import (
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Desc is an rx or tx descriptor: a frame's UMEM address and length (the
// layout of struct xdp_desc).
type Desc struct {
	Addr    uint64
	Len     uint32
	Options uint32
}

// Errors returned by Transmit.
var (
	ErrNoTxRing    = errors.New("socket has no tx ring")
	ErrInvalidDesc = errors.New("tx descriptor outside the queue's frames or not held by the caller")
)

// Socket is one AF_XDP socket bound to a Queue: the queue's primary socket
// or a per-VM socket sharing the queue's UMEM and fill/completion rings.
// Like its queue it belongs to the queue's worker goroutine; only Stats and
// KernelStats may be called from elsewhere.
type Socket struct {
	q      *Queue
	fd     int
	rx     ring[Desc]
	tx     ring[Desc]
	closed bool

	rxFrames atomic.Uint64
	txFrames atomic.Uint64
	wakeups  atomic.Uint64
	txErrors atomic.Uint64
	// rxTooLong: multi-buffer packets dropped because they had more
	// descriptors than a Receive could take.
	rxTooLong atomic.Uint64
}

// setup creates, maps and binds a secondary socket on its queue.
func (s *Socket) setup(cfg SocketConfig) error {
	if err := s.createRings(cfg.RxSize, cfg.TxSize); err != nil {
		return err
	}
	off, err := getsockoptMmapOffsets(s.fd)
	if err != nil {
		return fmt.Errorf("get mmap offsets: %w", err)
	}
	if err := s.mapRings(off); err != nil {
		return err
	}
	// Same queue: only XDP_SHARED_UMEM; the kernel takes the pool (fill,
	// completion, mode, need_wakeup) from the primary socket.
	sa := &unix.SockaddrXDP{
		Flags:        unix.XDP_SHARED_UMEM,
		Ifindex:      uint32(s.q.ifindex),
		QueueID:      uint32(s.q.queueID),
		SharedUmemFD: uint32(s.q.primary.fd),
	}
	if err := unix.Bind(s.fd, sa); err != nil {
		return bindError(s.q.name, ModeAuto, err)
	}
	s.setTxBudget()
	return nil
}

// createRings sets the sizes of the socket's rx and tx rings (negative:
// none) before bind.
func (s *Socket) createRings(rxSize, txSize int) error {
	if rxSize >= 0 {
		n, err := ringSize(rxSize, "rx")
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_RX_RING, int(n)); err != nil {
			return fmt.Errorf("set rx ring size %d: %w", n, err)
		}
		s.rx.size = n
	}
	if txSize >= 0 {
		n, err := ringSize(txSize, "tx")
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_TX_RING, int(n)); err != nil {
			return fmt.Errorf("set tx ring size %d: %w", n, err)
		}
		s.tx.size = n
	}
	return nil
}

func (s *Socket) mapRings(off unix.XDPMmapOffsets) error {
	var err error
	if n := s.rx.size; n > 0 {
		if s.rx, err = mapRing[Desc](s.fd, unix.XDP_PGOFF_RX_RING, off.Rx, n); err != nil {
			return fmt.Errorf("rx ring: %w", err)
		}
	}
	if n := s.tx.size; n > 0 {
		if s.tx, err = mapRing[Desc](s.fd, unix.XDP_PGOFF_TX_RING, off.Tx, n); err != nil {
			return fmt.Errorf("tx ring: %w", err)
		}
	}
	return nil
}

// setTxBudget lets one copy-mode sendto send a whole tx ring instead of
// the kernel's default 32 frames (XDP_MAX_TX_SKB_BUDGET, Linux 6.17).
// Older kernels lack the option (ENOPROTOOPT); then a kick may need
// repeating, which Transmit and Kick do, and the first refusal is logged.
func (s *Socket) setTxBudget() {
	if s.tx.size < 32 || s.q.zeroCopy {
		return
	}
	if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_MAX_TX_SKB_BUDGET, int(s.tx.size)); err != nil {
		if !txBudgetRefused.Swap(true) {
			slog.Info("xsk: the kernel keeps its tx budget of 32 frames per sendto (no XDP_MAX_TX_SKB_BUDGET): larger batches take several", "want", s.tx.size, "err", err)
		}
	}
}

// txBudgetRefused: setTxBudget has logged the kernel's refusal.
var txBudgetRefused atomic.Bool

// FD is the socket's file descriptor, for XSKMAP registration and for
// polling together with other fds.
func (s *Socket) FD() int { return s.fd }

// Queue is the queue the socket is bound to.
func (s *Socket) Queue() *Queue { return s.q }

// HasRx and HasTx say which rings the socket has.
func (s *Socket) HasRx() bool { return s.rx.size > 0 }

// HasTx reports whether the socket has a tx ring.
func (s *Socket) HasTx() bool { return s.tx.size > 0 }

// Receive copies up to len(descs) received descriptors into descs, hands
// their rx ring slots back to the kernel and returns how many it copied.
// The frames are the caller's until it puts them back with Queue.FillDescs
// or Queue.FreeDescs. Frame data: Queue.Frame(desc).
//
// On a multi-buffer queue a frame may span several descriptors (PktContd
// on all but the last). Receive returns whole frames only; a frame with
// more descriptors than len(descs) is dropped and counted
// (SocketStats.RxTooLong), so pass room for the largest frame expected.
func (s *Socket) Receive(descs []Desc) int {
	if s.rx.size == 0 || len(descs) == 0 {
		return 0
	}
	idx, n := s.rx.peek(uint32(len(descs)))
	if n == 0 {
		return 0
	}
	if s.q.multiBuf {
		if n = s.wholePackets(idx, n, uint32(len(descs))); n == 0 {
			return 0
		}
	}
	for i := uint32(0); i < n; i++ {
		d := *s.rx.at(idx + i)
		s.q.pool.fromKernel(d.Addr)
		descs[i] = d
	}
	s.rx.release(n)
	s.rxFrames.Add(uint64(n))
	s.q.received.Add(uint64(n))
	return int(n)
}

// Transmit queues up to len(descs) frames on the tx ring and wakes the
// kernel if it asks (in copy mode it always does: one sendto per call).
// Frames must be held by the caller (from Alloc, Complete or Receive) and
// each must lie inside one frame; a frame already given to the kernel is
// refused, so one frame cannot be queued twice. It returns how many were
// queued: fewer than len(descs) when the ring is full (retry after Reap)
// or when a descriptor is invalid (ErrInvalidDesc; the ones before it are
// sent). Queued frames come back on the queue's completion ring.
//
// On a multi-buffer queue a packet may span up to MaxTxDescs descriptors,
// PktContd on all but its last. Transmit queues whole packets only: the
// count it returns always ends on a packet's last descriptor, and an
// invalid descriptor holds back its whole packet.
func (s *Socket) Transmit(descs []Desc) (int, error) {
	if s.tx.size == 0 {
		return 0, ErrNoTxRing
	}
	idx, n := s.tx.reserve(uint32(len(descs)))
	var err error
	if s.q.multiBuf {
		whole := txPacketEnd(descs, n)
		if n == uint32(len(descs)) && whole < n { // not for want of room: the caller's mistake
			err = fmt.Errorf("transmit on %s: the last packet's descriptor %d has PktContd: %w", s.q.name, n-1, ErrInvalidDesc)
		}
		s.tx.cachedProd -= n - whole
		n = whole
	}
	start, frags := uint32(0), 0 // the current packet's first descriptor and length
	for i := uint32(0); i < n; i++ {
		d := descs[i]
		frags++
		if !s.q.validTx(d) || !s.validOptions(d, frags) || !s.q.pool.toKernel(d.Addr) {
			s.q.rejected.Add(1)
			err = fmt.Errorf("transmit on %s: descriptor %d (addr %#x len %d options %#x): %w",
				s.q.name, i, d.Addr, d.Len, d.Options, ErrInvalidDesc)
			for j := start; j < i; j++ { // the packet's earlier descriptors stay the caller's
				s.q.pool.fromKernel(descs[j].Addr)
			}
			s.tx.cachedProd -= n - start
			n = start
			break
		}
		*s.tx.at(idx + i) = d
		if d.Options&PktContd == 0 {
			start, frags = i+1, 0
		}
	}
	if n > 0 {
		s.tx.submit()
		s.txFrames.Add(uint64(n))
		s.q.txSubmitted.Add(uint64(n))
	}
	if kerr := s.Kick(); kerr != nil && err == nil {
		err = kerr
	}
	return int(n), err
}

// validOptions checks a tx descriptor's options: PktContd only on a
// multi-buffer queue, and no packet longer than MaxTxDescs.
func (s *Socket) validOptions(d Desc, frags int) bool {
	switch d.Options {
	case 0:
		return true
	case PktContd:
		return s.q.multiBuf && frags < MaxTxDescs
	}
	return false
}

// validTx checks the shape of a descriptor the caller wants to send:
// inside the queue's frames and not crossing a frame end. (Transmit also
// checks that the caller holds the frame.)
func (q *Queue) validTx(d Desc) bool {
	end := d.Addr + uint64(d.Len)
	return d.Len > 0 && d.Addr >= q.lo && end <= q.hi && (end-1)&q.frameMask == d.Addr&q.frameMask
}

// maxKicks bounds the sendto calls of one Kick when the kernel sends less
// than the whole ring per call.
const maxKicks = 8

// Kick wakes the kernel to send queued tx frames, only if it asked (or
// always, without need_wakeup). Transient conditions (EAGAIN, EBUSY,
// ENOBUFS, ENETDOWN) are not errors: frames stay queued for the next kick.
func (s *Socket) Kick() error {
	if s.tx.size == 0 {
		return nil
	}
	for range maxKicks {
		if s.q.wakeups && !s.tx.needWakeup() {
			return nil
		}
		if s.tx.pending() == 0 {
			return nil
		}
		s.wakeups.Add(1)
		before := atomic.LoadUint32(s.tx.consumer)
		errno := sendtoNoWait(s.fd)
		switch errno {
		case 0:
			if s.q.zeroCopy {
				return nil
			}
			// Copy mode sends synchronously; loop only if frames remain.
		case unix.EAGAIN, unix.EBUSY:
			// Budget used up: go on while the kernel makes progress. A
			// busy device makes none; the next Transmit or Kick retries.
			if atomic.LoadUint32(s.tx.consumer) == before {
				return nil
			}
		case unix.ENOBUFS, unix.ENETDOWN:
			return nil
		default:
			s.txErrors.Add(1)
			return fmt.Errorf("wake tx of AF_XDP socket on %s: %w", s.q.name, errno)
		}
	}
	return nil
}

// The wakeups are raw syscalls: with MSG_DONTWAIT they never sleep, so
// telling the scheduler (entersyscall/exitsyscall) buys nothing and costs a
// P hand-off for the worker's locked thread on every batch.
func sendtoNoWait(fd int) unix.Errno {
	_, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	return errno
}

func recvfromNoWait(fd int) unix.Errno {
	_, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	return errno
}

// TxPending is how many queued tx frames the kernel has not yet taken.
func (s *Socket) TxPending() int {
	if s.tx.size == 0 {
		return 0
	}
	return int(s.tx.pending())
}

// TouchRx reads the lines a Receive reads first, the rx ring's producer
// index and next descriptor (both written by the kernel on another CPU),
// and returns the frames published and not yet received and a value of
// the descriptor for the caller's sink: a caller that will Receive soon
// calls it ahead, so these misses overlap its other work. It changes
// nothing.
func (s *Socket) TouchRx() (pending uint32, sink uint64) {
	if s.rx.size == 0 {
		return 0, 0
	}
	return atomic.LoadUint32(s.rx.producer) - s.rx.cachedCons, s.rx.at(s.rx.cachedCons).Addr
}

// RxPending is how many received frames wait in the socket's rx ring.
func (s *Socket) RxPending() int {
	if s.rx.size == 0 {
		return 0
	}
	return int(s.rx.pending())
}

// Close closes a secondary socket. Frames waiting in its rx ring go back
// to the queue's allocator first, and so do tx frames the kernel never
// took, so closing leaks nothing. The primary socket closes with its
// queue.
func (s *Socket) Close() error {
	if s == s.q.primary {
		return fmt.Errorf("close socket on %s: the primary socket closes with its queue", s.q.name)
	}
	if s.closed {
		return nil
	}
	for i, o := range s.q.sockets {
		if o == s {
			s.q.sockets = append(s.q.sockets[:i], s.q.sockets[i+1:]...)
			break
		}
	}
	s.q.rebuildPollFDs()
	return s.close()
}

func (s *Socket) close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if s.rx.size > 0 && s.rx.mem != nil {
		idx, n := s.rx.peek(s.rx.size)
		for i := uint32(0); i < n; i++ {
			s.q.pool.putFrom(s.rx.at(idx+i).Addr, frameKernel)
		}
		s.rx.release(n)
		s.q.pool.sync()
		s.q.received.Add(uint64(n))
	}
	// Close the socket before its rings are unmapped: once it is released
	// the kernel takes nothing more from the tx ring, so what is left
	// there is ours again (frames it took complete on the shared
	// completion ring as usual).
	var err error
	if s.fd >= 0 {
		err = unix.Close(s.fd)
		s.fd = -1
	}
	if s.tx.size > 0 && s.tx.mem != nil {
		prod := s.tx.cachedProd
		for i := atomic.LoadUint32(s.tx.consumer); i != prod; i++ {
			s.q.pool.putFrom(s.tx.at(i).Addr, frameKernel)
		}
		s.q.pool.sync()
	}
	return errors.Join(err, s.unmapAndClose())
}

func (s *Socket) unmapAndClose() error {
	err := errors.Join(s.rx.unmap(), s.tx.unmap())
	if s.fd >= 0 {
		err = errors.Join(err, unix.Close(s.fd))
		s.fd = -1
	}
	return err
}
