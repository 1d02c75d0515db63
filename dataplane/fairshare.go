package dataplane

// Fair share: every VM on a worker gets a quantum of work units per round
// (deficit round robin), shared by everything the worker does for it: a
// frame taken from its socket or popped from its TX ring costs 1, and
// every descriptor its rings make Push or Pop walk costs 1 (the vhostuser
// queue budget, SetBudget/Budget), and every copy of a broadcast or
// multicast frame it sends costs it 1 more (worker.floodCharge): the
// sender pays for the replication, each receiver only for its own ring,
// so a VLAN of N VMs does not multiply a flooding guest's share by N-1.
// A VM whose rings are expensive (tiny chains, huge indirect tables) or
// that floods gets its quantum and no more; the others keep theirs. RX
// frames that find no credit are dropped as budget (frames not yet taken
// from the socket wait there); TX chains wait in the guest's ring for the
// next round.

// fairQuantum is a VM's work per round: a full RX batch (64 frames, 2
// units each) plus a full TX batch (64 frames of 1–2 descriptors) and some
// local and flooded frames fit, so an ordinary VM never notices it.
const fairQuantum = 512

// FairQuantum is a VM's work units per worker round (fairQuantum), for
// tests and reports that check the bound from outside.
const FairQuantum = fairQuantum

// payFlood charges the copies of the VM's flooded frames to the credit
// left after its pops and returns what is left then; what the credit
// cannot pay (the last frame's copies may go beyond it) becomes debt.
func (vm *vmState) payFlood(left, copies int) int {
	left = max(left, 0) - copies
	if left < 0 {
		vm.floodDebt -= left
		return 0
	}
	return left
}

// grantCredit starts a round: each VM gets a quantum on top of what it
// carries, carrying at most one quantum, and nothing when it had no work
// in the last round (idle VMs do not bank credit for a burst).
//
// Only VMs touched since the last grant, or still carrying credit from
// it, are visited: any other VM has exactly one quantum and is not busy,
// which the grant leaves as it is, so a round costs nothing per idle VM.
func (w *worker) grantCredit() {
	keep := w.touched[:0]
	for _, vm := range w.touched {
		if !vm.busy {
			vm.credit = 0
		}
		vm.credit = min(vm.credit, fairQuantum) + fairQuantum
		if vm.floodDebt > 0 {
			pay := min(vm.floodDebt, vm.credit)
			vm.credit -= pay
			vm.floodDebt -= pay
		}
		vm.busy = false
		if vm.credit != fairQuantum {
			keep = append(keep, vm) // carries credit: the next grant changes it
		} else {
			vm.touched = false
		}
	}
	clear(w.touched[len(keep):])
	w.touched = keep
}
