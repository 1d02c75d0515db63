package vhostuser

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// notifier writes the call eventfds of one port's queues for their
// workers. A guest shares the open file description of its call eventfd
// and can clear O_NONBLOCK on it; a write of 1 then blocks while the
// counter is at 0xfffffffffffffffe, and Linux has no per-call
// non-blocking write for an eventfd. So a worker never writes: Flush sets
// the queue's callPending and wakes this goroutine, which may block in
// write(2) — stalling only this guest's notifications.
//
// The control goroutine owns the run state (start, stop) and changes a
// queue's callFD only while the notifier is stopped; while it runs, the
// notifier reads callFD and nobody writes it.
type notifier struct {
	wake   chan struct{} // capacity 1: a pending wake-up, coalesced
	queues []*Queue
	log    *slog.Logger

	// Control goroutine only.
	quit, done chan struct{} // nil while stopped
	drainBuf   [8]byte

	writing atomic.Int64 // the fd the notifier is writing now, -1 when none
	buf     [8]byte      // the notifier goroutine's write buffer
}

// notifiersRunning counts notifier goroutines, so tests can see that none
// outlives its device.
var notifiersRunning atomic.Int64

// Stop waits notifyGrace for a notifier to finish a write, then drains
// its eventfd, at most notifyDrains times.
const (
	notifyGrace  = 10 * time.Millisecond
	notifyDrains = 200
)

func newNotifier(qs []*Queue, log *slog.Logger) *notifier {
	n := &notifier{wake: make(chan struct{}, 1), queues: qs, log: log}
	n.writing.Store(-1)
	binary.NativeEndian.PutUint64(n.buf[:], 1)
	return n
}

// signal wakes the notifier without blocking; a wake-up already pending
// covers this one too.
func (n *notifier) signal() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// start runs the notifier goroutine unless it runs already.
func (n *notifier) start() {
	if n.done != nil {
		return
	}
	n.quit, n.done = make(chan struct{}), make(chan struct{})
	notifiersRunning.Add(1)
	go n.run(n.quit, n.done)
}

func (n *notifier) run(quit, done chan struct{}) {
	defer close(done)
	defer notifiersRunning.Add(-1)
	for {
		// Calls requested while stopped (or before this wake-up) first.
		if !n.callPending(quit) {
			return
		}
		select {
		case <-n.wake:
		case <-quit:
			return
		}
	}
}

// callPending writes the call eventfd of every queue with a call
// pending. It returns false once quit is closed: then no fd may be used
// (the control goroutine is about to close them).
func (n *notifier) callPending(quit chan struct{}) bool {
	for _, q := range n.queues {
		select {
		case <-quit:
			return false
		default:
		}
		if !q.callPending.Load() {
			continue
		}
		// writing is set before the call is taken: deliver sees the call
		// pending or being written until the write is done.
		fd := q.callFD
		n.writing.Store(int64(fd))
		if !q.callPending.Swap(false) || fd < 0 {
			n.writing.Store(-1)
			continue
		}
		_, err := unix.Write(fd, n.buf[:])
		n.writing.Store(-1)
		switch {
		case err == nil:
			q.calls.Add(1)
		case errors.Is(err, unix.EAGAIN):
			// Counter saturated with O_NONBLOCK set: the guest has
			// interrupts enough pending.
		default:
			n.log.Debug("vhost-user call eventfd write failed", "queue", q.index, "err", err)
		}
	}
	return true
}

// stop ends the notifier goroutine and returns once it has exited, so
// the caller may close call fds. A notifier blocked in write (the guest
// cleared O_NONBLOCK and saturated the counter) is released by draining
// the counter with a read that never blocks, repeatedly, since the guest
// may refill it. false: it did not exit within the bound (the caller must
// then leave the call fds open: the notifier may still write one).
func (n *notifier) stop() bool {
	if n.done == nil {
		return true
	}
	quit, done := n.quit, n.done
	n.quit, n.done = nil, nil
	close(quit)
	t := time.NewTimer(notifyGrace)
	defer t.Stop()
	for i := 0; i < notifyDrains; i++ {
		select {
		case <-done:
			return true
		case <-t.C:
		}
		// A write with O_NONBLOCK set ends by itself; only a blocking one
		// needs the counter drained (that loses the guest nothing it did
		// not ask for).
		if fd := int(n.writing.Load()); fd >= 0 {
			if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil && fl&unix.O_NONBLOCK == 0 {
				readNoWait(fd, &n.drainBuf)
			}
		}
		t.Reset(notifyGrace)
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// deliver waits, at most bound, until the call q's worker last asked for
// has been written to the front-end. GET_VRING_BASE replies only then:
// QEMU reads its call eventfd one last time when it stops the device (at
// a migration's switch-over) and not after, so a call written later is
// lost, and a guest whose receive ring was full at that moment never
// hears of the frames in it (the destination has no buffer to push into,
// so it never calls either). false: the call is still pending (a guest
// that made its eventfd write block).
func (n *notifier) deliver(q *Queue, bound time.Duration) bool {
	if n.done == nil {
		return !q.callPending.Load() // stopped: nobody writes it now
	}
	n.signal()
	deadline := time.Now().Add(bound)
	for q.callPending.Load() || (q.callFD >= 0 && n.writing.Load() == int64(q.callFD)) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Microsecond)
	}
	return true
}
