package dataplane

import (
	"slices"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/vhostuser"
)

// Holding frames for a guest whose receive ring is full, the way a NIC's
// VM queue does: the worker takes from a VM's socket only the frames the
// guest has buffers for, and the rest wait in the VM's own AF_XDP rx ring
// until the guest posts buffers. A guest briefly off its CPU then loses
// nothing while its socket ring has room; when that ring overflows the
// kernel drops at that VM's socket (its rx_ring_full), where a NIC drops.
//
// Frames waiting in a socket ring are frames of the queue's shared UMEM,
// out of the fill ring's reach. So that a guest that never posts buffers
// cannot starve the others, what a VM may hold is capped (holdCap): the
// VMs of a queue hold less than half its UMEM between them (the hold
// budget), the other half is for the fill ring (2048), the flood socket
// and guest TX. The cap is a dynamic threshold, as in switch ASICs'
// shared buffers (Choudhury and Hahne): a VM may hold up to holdAlpha
// times the budget the others leave unheld, counting its own frames as
// held (so at most budget-others / (1+1/holdAlpha)). One VM holding
// alone gets half the budget, however many VMs the queue has; n VMs
// holding at once converge to budget/(n+1) each, and every visit leaves
// the held total below the budget. Frames over the cap are taken and
// dropped (virtqueue_full), oldest first, as they were before holding.
//
// A holding VM is visited every round (one look at its avail index and
// socket ring). When the worker sleeps, its socket is edge-triggered in
// the sleep's set (its held frames would keep a level-triggered set
// ready; a new frame still wakes the worker, which keeps the VM to its
// cap) and its receive queue's kick fd is in the set, notifications
// enabled: the guest posting buffers wakes the worker.
//
// Frames delivered locally (VM to VM, flooded, from another worker's
// mailbox) to a guest with no buffer are parked the same way: copied into
// a UMEM frame of the queue and queued on the VM (in order, new frames
// behind parked ones), pushed when the guest posts buffers. The sender is
// never stalled, so a receiver that never drains delays none of its
// frames to others; the parked frames count against the VM's cap with
// those held in its socket ring.
//
// Not held: multi-buffer (jumbo) queues, whose frames are several
// descriptors, VMs with a dedicated queue, and workers that serve one
// (they sleep in poll(2), not in the epoll set).

// holdShare is the part of a queue's UMEM its VMs may hold between them
// (the hold budget).
const holdShare = 2

// holdAlpha is the dynamic threshold's factor: a VM may hold up to
// holdAlpha × (budget - everything held, its own frames included).
const holdAlpha = 1

// holdCap is how many frames vm may hold, in its socket ring and parked
// together: holdAlpha × (budget − held) with its own frames in held,
// solved for its own, and at most its socket ring. What the others hold
// is as of their last visit (every holder is visited every round).
func (w *worker) holdCap(vm *vmState) int {
	others := w.heldSock + w.nparked - vm.heldSock - len(vm.parked)
	free := w.dp.cfg.FramesPerQueue/holdShare - others
	if free <= 0 {
		return 0
	}
	return min(w.vmRing(), holdAlpha*free/(holdAlpha+1))
}

// setHeld records how many of vm's frames wait in its socket ring after
// this visit, for the others' caps.
func (w *worker) setHeld(vm *vmState, n int) {
	w.heldSock += n - vm.heldSock
	vm.heldSock = n
}

// holdable reports whether vm's frames may wait in its socket ring.
func (w *worker) holdable(vm *vmState) bool {
	return w.jumbo == nil && len(w.directs) == 0 && vm.ded == nil && len(vm.rxqs) > 0
}

// rxTake is how many of vm's frames receiveVM takes from its socket now,
// at most want: all of them while the guest has room, else those it has
// buffers for and those over the VM's cap (dropped); the others wait.
func (w *worker) rxTake(vm *vmState, want int) int {
	if !w.holdable(vm) {
		w.unhold(vm)
		return want
	}
	if want <= 0 {
		return 0 // no credit left this round: its frames stay held, counted
	}
	// The socket ring first: when it is empty (62-76% of the visits with
	// traffic to all of 256 VMs in BenchmarkWorkerRX) the guest's avail
	// index, a line the guest writes on another CPU, is not read.
	pending := vm.sock.RxPending()
	if pending == 0 {
		w.unhold(vm)
		return 0
	}
	room := rxRoom(vm.rxqs[0].q, want)
	if room >= want || pending <= room {
		w.unhold(vm)
		return want
	}
	w.hold(vm)
	over := max(pending-room-(w.holdCap(vm)-len(vm.parked)), 0)
	take := min(want, room+over)
	w.setHeld(vm, pending-take)
	return take
}

// park queues a frame for vm's full guest ring and reports whether it
// took it (parked, or dropped over the cap); false: push it now.
func (w *worker) park(vm *vmState, frame []byte) bool {
	if !w.holdable(vm) {
		return false
	}
	if len(vm.parked) == 0 && rxRoom(vm.rxqs[0].q, 1) > 0 {
		return false
	}
	if len(vm.parked) >= w.holdCap(vm)-vm.sock.RxPending() || w.q.Alloc(w.addrs[:1]) == 0 {
		vm.drop(DropVirtqueueFull)
		return true
	}
	a := w.addrs[0]
	buf := w.q.Buffer(a)
	if len(buf) < len(frame) {
		w.q.Free(w.addrs[:1])
		return false
	}
	if vm.parked == nil {
		vm.parked = make([]parkedFrame, 0, w.vmRing()) // once per VM
	}
	vm.parked = append(vm.parked, parkedFrame{addr: a, n: copy(buf, frame)})
	w.nparked++
	w.hold(vm)
	return true
}

// parkedFrame is a frame parked for a VM: a UMEM frame and its length.
type parkedFrame struct {
	addr uint64
	n    int
}

// pushParked pushes vm's parked frames the guest has buffers for, in
// order, and returns how many it moved.
func (w *worker) pushParked(vm *vmState) int {
	if len(vm.rxqs) == 0 {
		w.freeParked(vm)
		return 0
	}
	vq := vm.rxqs[0]
	// Like receiveVM: no more than the VM's credit can serve this round.
	n := rxRoom(vq.q, min(len(vm.parked), batchSize, vm.credit/2))
	for _, p := range vm.parked[:n] {
		w.push(vq, w.q.Buffer(p.addr)[:p.n])
	}
	w.unpark(vm, n)
	return n
}

// unpark gives the first n of vm's parked frames back to the allocator.
func (w *worker) unpark(vm *vmState, n int) {
	for _, p := range vm.parked[:n] {
		w.addrs[0] = p.addr
		w.q.Free(w.addrs[:1])
	}
	m := copy(vm.parked, vm.parked[n:])
	vm.parked = vm.parked[:m]
	w.nparked -= n
}

// freeParked drops every frame parked for vm (its queue or the VM went).
func (w *worker) freeParked(vm *vmState) {
	for range vm.parked {
		vm.drop(DropGuestNotReady)
	}
	w.unpark(vm, len(vm.parked))
}

// rxRoom is q.RxRoom under a fault guard: a fault breaks the device and
// reports max, so the frames are taken and dropped as broken.
func rxRoom(q *vhostuser.Queue, max int) (n int) {
	n = max
	defer q.RecoverFault()
	return q.RxRoom(max)
}

func (w *worker) hold(vm *vmState) {
	if !vm.holding {
		vm.holding = true
		w.holders = append(w.holders, vm)
	}
}

// unhold forgets vm as a holder unless it has parked frames (its frames
// left in the socket ring, if any, are taken the next time it is visited).
func (w *worker) unhold(vm *vmState) {
	w.setHeld(vm, 0)
	if !vm.holding || len(vm.parked) > 0 {
		return
	}
	vm.holding = false
	for i, h := range w.holders {
		if h == vm {
			last := len(w.holders) - 1
			w.holders[i] = w.holders[last]
			w.holders[last] = nil
			w.holders = w.holders[:last]
			return
		}
	}
}

// visitHolders pushes the parked frames the guests have room for and
// makes this round visit every holding VM's socket: whether the guest
// posted buffers, or the cap shrank, is one look at its rings. It returns
// the frames it pushed.
func (w *worker) visitHolders() int {
	n := 0
	for i := 0; i < len(w.holders); i++ {
		vm := w.holders[i]
		if len(vm.parked) > 0 {
			n += w.pushParked(vm)
		}
		w.markReady(vm.slot)
	}
	return n
}

// dropHold forgets vm's hold entirely: its parked frames are dropped and
// its kick fd leaves the sleep's set (the VM or its receive queue is
// going, and the fd with it).
func (w *worker) dropHold(vm *vmState) {
	w.freeParked(vm)
	w.unhold(vm)
	if vm.inHoldSet {
		w.leaveHoldSet(vm)
		if i := slices.Index(w.holdSet, vm); i >= 0 {
			w.holdSet = slices.Delete(w.holdSet, i, i+1)
		}
	}
}

// holdSleep prepares the sleep's set for the holding VMs: their sockets
// edge-triggered and their receive queues' kick fds in (edge-triggered:
// the counter is never read), notifications enabled. The set changes
// only for VMs that started or stopped holding since the last sleep, so
// a guest that stays starved costs no syscall per sleep. It reports false
// when a guest posted buffers meanwhile: then the worker must not sleep.
func (w *worker) holdSleep() bool {
	if len(w.holdSet) > 0 {
		keep := w.holdSet[:0]
		for _, vm := range w.holdSet {
			if vm.holding {
				keep = append(keep, vm)
			} else {
				w.leaveHoldSet(vm) // level-triggered again: its frames wake the sleep
			}
		}
		clear(w.holdSet[len(keep):])
		w.holdSet = keep
	}
	for _, vm := range w.holders {
		q := vm.rxqs[0].q
		if enableNotify(q) {
			w.markReady(vm.slot)
			return false
		}
		if vm.inHoldSet {
			continue
		}
		// Without a kick fd of its own (none, or one the guest also gave
		// another queue) the guest's buffers are seen within idlePollTimeout.
		sockEvents := uint32(unix.EPOLLIN | unix.EPOLLET)
		if fd := q.KickFD(); fd >= 0 && w.epollCtl(unix.EPOLL_CTL_ADD, fd, holdKickEvents, vm.slot) == nil {
			vm.holdKick = fd + 1
			// The guest's kick wakes the worker when it has room; the
			// frames arriving meanwhile only wait in the socket's ring,
			// and a wake-up for each would cost the CPU that delivers
			// them, often the stalled guest's own.
			sockEvents = 0
		}
		w.epollCtl(unix.EPOLL_CTL_MOD, vm.sock.FD(), sockEvents, vm.slot)
		vm.inHoldSet = true
		w.holdSet = append(w.holdSet, vm)
	}
	return true
}

// leaveHoldSet restores vm's place in the sleep's set: its socket
// level-triggered, its kick fd out.
func (w *worker) leaveHoldSet(vm *vmState) {
	w.forgetHoldMuted(vm)
	if vm.holdKick > 0 {
		w.epollDel(vm.holdKick - 1)
		vm.holdKick = 0
	}
	w.epollCtl(unix.EPOLL_CTL_MOD, vm.sock.FD(), unix.EPOLLIN, vm.slot)
	vm.inHoldSet = false
}

// holdKickEvents: a holder's receive kick fd is edge-triggered (its
// counter is never read).
const holdKickEvents = unix.EPOLLIN | unix.EPOLLET

// epollCtl registers or changes fd in the sleep's set as vm slot's
// (a socket or a receive queue's kick fd: either has the slot visited).
func (w *worker) epollCtl(op, fd int, events uint32, slot uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(slot), Pad: epSocket}
	return unix.EpollCtl(w.epfd, op, fd, &ev)
}
