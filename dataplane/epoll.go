package dataplane

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// The idle worker sleeps in epoll_wait on a set it keeps registered: its
// wake eventfd, the flood socket, every VM socket and every guest kick
// fd it owns. poll(2) over all of them on every sleep cost O(VMs) (with
// 256 VMs, 37–44% of the worker's CPU: fdget, sock_poll, and xsk_poll,
// which even runs the copy-mode transmit of every socket); epoll_wait is
// O(ready). Level-triggered, like poll: a socket with frames left stays
// ready.

// Guest transmit queues' kick fds are in a set of their own (kickEp),
// which is in the sleep's set: a sleeping worker wakes for a kick as
// before, and a busy one asks it for kicks every txIdleStride rounds,
// one epoll_wait for every guest (txsched.go), without the VM sockets'
// readiness the sleep's set reports.

// Kinds of registered fds, in the event's Pad (the Fd field holds the
// slot for a socket, the fd for a kick).
const (
	epWake int32 = iota
	epFlood
	epSocket
	epKick
	epKicks // the kick set (kickEp)
)

// maxEvents bounds the events one epoll_wait returns; more stay ready
// for the next one (level-triggered).
const maxEvents = 64

func (w *worker) openEpoll() error {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("worker for queue %d: epoll: %w", w.queueID, err)
	}
	w.epfd = fd
	if err := w.epollAdd(w.wakeFD, epWake, 0); err != nil {
		return err
	}
	if err := w.epollAdd(w.flood.FD(), epFlood, 0); err != nil {
		return err
	}
	if w.kickEp, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return fmt.Errorf("worker for queue %d: epoll for kicks: %w", w.queueID, err)
	}
	return w.epollAdd(w.kickEp, epKicks, 0)
}

func (w *worker) epollAdd(fd int, kind, val int32) error {
	return w.epollAddTo(w.epfd, fd, kind, val)
}

func (w *worker) epollAddTo(ep, fd int, kind, val int32) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: val, Pad: kind}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("worker for queue %d: register fd %d for its sleep: %w", w.queueID, fd, err)
	}
	return nil
}

// epollDel unregisters fd. A kick eventfd must be removed before it is
// closed: the guest holds the same file, so closing our fd alone would
// leave it in the set.
func (w *worker) epollDel(fd int) { epollDelFrom(w.epfd, fd) }

func epollDelFrom(ep, fd int) {
	if fd >= 0 && ep >= 0 {
		unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, fd, nil)
	}
}

// addKick registers the kick fd of a guest transmit queue being attached.
func (w *worker) addKick(vq *virtq) error {
	vq.kickFD = vq.q.KickFD()
	if vq.kickFD < 0 {
		return nil
	}
	if err := w.epollAddTo(w.kickEp, vq.kickFD, epKick, int32(vq.kickFD)); err != nil {
		vq.kickFD = -1
		return err
	}
	w.kickOwner[int32(vq.kickFD)] = vq
	return nil
}

// dropKick unregisters the kick fd of a transmit queue leaving the worker.
func (w *worker) dropKick(vq *virtq) {
	w.forgetMuted(vq)
	epollDelFrom(w.kickEp, vq.kickFD)
	delete(w.kickOwner, int32(vq.kickFD))
	vq.kickFD = -1
}

// takeKicks acknowledges the guests' kicks waiting in the kick set and
// makes their queues hot; it never blocks.
func (w *worker) takeKicks() {
	n, err := unix.EpollWait(w.kickEp, w.kickEvents[:], 0)
	if err != nil {
		return
	}
	for _, ev := range w.kickEvents[:n] {
		if vq := w.kickOwner[ev.Fd]; vq != nil {
			vq.q.AckKick()
			w.kickTaken(vq)
			w.kicked(vq)
		}
	}
}

// waitEvents sleeps until a registered fd is ready or idlePollTimeout
// passes, and hands what woke it to the next round: the wake eventfd is
// drained, sockets are visited (whatever became of their marks), kicked
// queues are acknowledged and made hot.
func (w *worker) waitEvents() {
	n, err := unix.EpollWait(w.epfd, w.events[:], sleepTimeout(w.unmuteKicks()))
	if err != nil {
		return // EINTR (the runtime's preemption signal): the run loop comes back
	}
	for _, ev := range w.events[:n] {
		switch ev.Pad {
		case epWake:
			var buf [8]byte
			unix.Read(w.wakeFD, buf[:])
			add(&w.ctr.wakeups, 1)
		case epSocket:
			w.markReady(uint32(ev.Fd))
			if vm := w.bySlot[ev.Fd]; vm != nil && vm.holdKick > 0 {
				w.holdKickTaken(vm) // its socket is out of the set: the kick woke us
			}
		case epKicks:
			w.takeKicks()
		}
	}
}
