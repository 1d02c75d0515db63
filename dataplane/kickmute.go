package dataplane

import (
	"time"

	"golang.org/x/sys/unix"
)

// A guest can write a kick eventfd in a loop. Each write wakes the worker
// it shares with other VMs from its sleep into a round with nothing to
// do, and the busy-poll after it: 880k transmit kicks a second kept a
// worker 70% busy (10% before the storm), and receive kicks from a guest
// whose frames the worker holds (hold.go) 94% (9%). A guest that follows
// virtio kicks after it posts buffers, so a kick taken while the previous
// one still brought no work is spurious. After spuriousKicksToMute of
// them in a row the kick fd leaves the sleep's set for kickMuteMin,
// doubled (to kickMuteMax) each time the guest goes on; a kick that
// brings work ends it. A muted transmit queue is served as before while
// the worker is busy (polled while hot, the idle sweep while idle), and a
// muted holder is visited by every busy round's hold pass; a sleeping
// worker looks at either again when its mute ends, so a guest that
// stormed waits at most kickMuteMax.
const (
	spuriousKicksToMute = 8
	kickMuteMin         = time.Millisecond
	kickMuteMax         = 8 * time.Millisecond
)

// spuriousKicks is one kick fd's record of kicks that brought no work.
type spuriousKicks struct {
	pending bool // a kick was taken and no work came of it yet
	strikes int  // kicks taken in a row with no work between them
	mute    time.Duration
	muted   bool
	until   time.Time
}

// taken records a kick; it reports whether the fd must be muted now
// (then it is marked muted until the end of its mute).
func (s *spuriousKicks) taken() bool {
	if s.pending {
		s.strikes++
	}
	s.pending = true
	if s.strikes < spuriousKicksToMute || s.muted {
		return false
	}
	s.mute = min(max(2*s.mute, kickMuteMin), kickMuteMax)
	s.until, s.muted = time.Now().Add(s.mute), true
	return true
}

// worked records work that came of the kicks: they were not spurious.
func (s *spuriousKicks) worked() { s.pending, s.strikes, s.mute = false, 0, 0 }

// expired reports whether the mute has ended at now, and else how long
// it lasts; once ended, the next spurious kick mutes the fd again, longer.
func (s *spuriousKicks) expired(now time.Time) (bool, time.Duration) {
	if wait := s.until.Sub(now); wait > 0 {
		return false, wait
	}
	s.muted, s.strikes = false, spuriousKicksToMute-1
	return true, 0
}

// kickTaken records a transmit kick acknowledged for vq, and takes vq's
// kick fd out of the kick set if its kicks keep finding no frames.
func (w *worker) kickTaken(vq *virtq) {
	if vq.kickFD >= 0 && vq.kicks.taken() {
		epollDelFrom(w.kickEp, vq.kickFD)
		w.kickMuted = append(w.kickMuted, vq)
		add(&w.ctr.kickMutes, 1)
	}
}

// holdKickTaken records a receive kick that woke the worker for a holder
// (its kick fd is in the sleep's set, hold.go), and takes the fd out if
// the holder's kicks keep bringing no buffer its frames went into.
func (w *worker) holdKickTaken(vm *vmState) {
	delivered := vm.ctr.rxPackets.Load() + vm.rxPkts
	if delivered != vm.holdKickRx {
		vm.holdKicks.worked()
		vm.holdKickRx = delivered
	}
	if vm.holdKick > 0 && vm.holdKicks.taken() {
		w.epollDel(vm.holdKick - 1)
		w.holdMuted = append(w.holdMuted, vm)
		add(&w.ctr.kickMutes, 1)
	}
}

// unmuteKicks puts back the kick fds whose mute has ended and returns
// how long the sleep may last before the next one ends (idlePollTimeout
// if none is muted).
func (w *worker) unmuteKicks() time.Duration {
	next := idlePollTimeout
	if len(w.kickMuted) == 0 && len(w.holdMuted) == 0 {
		return next
	}
	now := time.Now()
	keep := w.kickMuted[:0]
	for _, vq := range w.kickMuted {
		if done, wait := vq.kicks.expired(now); !done {
			next = min(next, wait)
			keep = append(keep, vq)
		} else if vq.kickFD >= 0 {
			w.epollAddTo(w.kickEp, vq.kickFD, epKick, int32(vq.kickFD))
		}
	}
	clear(w.kickMuted[len(keep):])
	w.kickMuted = keep
	keepVM := w.holdMuted[:0]
	for _, vm := range w.holdMuted {
		if done, wait := vm.holdKicks.expired(now); !done {
			next = min(next, wait)
			keepVM = append(keepVM, vm)
		} else if vm.holdKick > 0 {
			// Edge-triggered and never read: a guest that kicked while
			// muted is reported at once.
			w.epollCtl(unix.EPOLL_CTL_ADD, vm.holdKick-1, holdKickEvents, vm.slot)
		}
	}
	clear(w.holdMuted[len(keepVM):])
	w.holdMuted = keepVM
	return next
}

// forgetMuted removes a transmit queue leaving the worker from the muted list.
func (w *worker) forgetMuted(vq *virtq) {
	if vq.kicks.muted {
		vq.kicks.muted = false
		w.kickMuted = removeVirtq(w.kickMuted, vq)
	}
}

// forgetHoldMuted removes a VM that stops holding from the muted list.
func (w *worker) forgetHoldMuted(vm *vmState) {
	if vm.holdKicks.muted {
		vm.holdKicks = spuriousKicks{}
		w.holdMuted = removeVM(w.holdMuted, vm)
	}
}

// sleepTimeout is unmuteKicks' bound in epoll_wait's milliseconds,
// rounded up.
func sleepTimeout(d time.Duration) int {
	return int((d + time.Millisecond - 1) / time.Millisecond)
}
