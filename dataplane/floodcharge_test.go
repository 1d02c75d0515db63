package dataplane

import (
	"slices"
	"testing"
	"time"
)

// floodWorker is a worker with n VMs on VLAN 10 and no guest rings: enough
// for forward and the fair-share bookkeeping, no kernel needed.
func floodWorker(n int) (*worker, []*vmState) {
	w := &worker{dp: &Dataplane{}, fdb: newFDB()}
	w.dp.workers = []*worker{w}
	vms := make([]*vmState, n)
	for i := range vms {
		vms[i] = &vmState{slot: uint32(i + 1), mac: MAC{2, 0, 0, 0, 0, byte(i + 1)}, vlan: 10, pairs: 1, ctr: &vmCounters{}}
		w.fdb.add(vms[i])
	}
	return w, vms
}

// frameTo is a 64-byte untagged frame from src to dst.
func frameTo(dst, src MAC) []byte {
	f := make([]byte, 64)
	copy(f, dst[:])
	copy(f[6:], src[:])
	f[12], f[13] = 0x08, 0x00
	return f
}

// A broadcast from one of n VMs makes n-1 copies, here or into another
// worker's mailbox, and forward charges them to the sender (floodCharge),
// not only to the receivers; a unicast frame charges nothing.
func TestFloodChargedToSender(t *testing.T) {
	const n = 6
	w, vms := floodWorker(n)
	sender := vms[0]
	if !w.forward(sender, frameTo(broadcastMAC, sender.mac)) {
		t.Fatal("a broadcast must go to the wire too")
	}
	multicast := MAC{0x01, 0x00, 0x5e, 0, 0, 1}
	w.forward(sender, frameTo(multicast, sender.mac))
	if w.floodCharge != 2*(n-1) {
		t.Errorf("floodCharge %d after a broadcast and a multicast to %d VMs, want %d", w.floodCharge, n-1, 2*(n-1))
	}
	for _, vm := range vms[1:] {
		if c := vm.ctr.floodCopies.Load(); c != 2 {
			t.Errorf("VM %d: %d flood copies, want 2", vm.slot, c)
		}
	}
	// Copies into another worker's mailbox cost the sender the same.
	w.floodCharge = 0
	w.dp.workers = []*worker{{}, w}
	w.index = 1
	w.outbox = []*mailbox{newMailbox(16, 128), nil}
	w.sentTo = make([]bool, 2)
	w.forward(sender, frameTo(broadcastMAC, sender.mac))
	if w.floodCharge != n-1 || w.outbox[0].prodTail != n-1 {
		t.Errorf("through a mailbox: floodCharge %d, %d frames put; want %d each", w.floodCharge, w.outbox[0].prodTail, n-1)
	}
	w.floodCharge = 0
	w.forward(sender, frameTo(vms[1].mac, sender.mac))            // a local VM
	w.forward(sender, frameTo(MAC{2, 9, 9, 9, 9, 9}, sender.mac)) // the wire
	if w.floodCharge != 0 {
		t.Errorf("unicast frames charged %d", w.floodCharge)
	}
}

// The copies are paid from the credit left after the pops; what it cannot
// pay is debt, which the next grants take first: over rounds a flooding
// VM gets one quantum of work per round, copies included.
func TestFloodDebt(t *testing.T) {
	vm := &vmState{busy: true, touched: true}
	if left := vm.payFlood(100, 30); left != 70 || vm.floodDebt != 0 {
		t.Fatalf("100 left, 30 copies: left %d debt %d; want 70, 0", left, vm.floodDebt)
	}
	// One frame to a VLAN of 1500 VMs costs more than two quanta.
	if left := vm.payFlood(10, 1499); left != 0 || vm.floodDebt != 1489 {
		t.Fatalf("10 left, 1499 copies: left %d debt %d; want 0, 1489", left, vm.floodDebt)
	}
	w := &worker{touched: []*vmState{vm}}
	vm.credit = 0
	var got []int
	for range 4 {
		vm.busy = true
		w.grantCredit()
		if vm.floodDebt > 0 && !vm.touched {
			t.Fatal("a VM in debt left the grant's list")
		}
		got = append(got, vm.credit)
		vm.credit = 0 // spent
	}
	// 1489 = 512 + 512 + 465: nothing for two rounds, 47 in the third.
	if want := []int{0, 0, fairQuantum*3 - 1489, fairQuantum}; !slices.Equal(got, want) || vm.floodDebt != 0 {
		t.Errorf("credits over 4 rounds %v (debt left %d), want %v and none", got, vm.floodDebt, want)
	}
}

// Storm control: broadcast and multicast frames from the guest beyond
// flood_pps are dropped whole (no copy, not to the wire, not counted as
// sent) as storm_control; unicast frames are not counted against it.
func TestStormControl(t *testing.T) {
	w, vms := floodWorker(3)
	sender := vms[0]
	w.setLimits(sender, Limits{FloodPPS: 1000})
	if w.nlimited != 0 {
		t.Error("storm control alone made the worker refill buckets every round")
	}
	// The round's clock, as admitFlood reads it once a round.
	w.rr, w.clockRound, w.clock = 1, 1, sender.floodAt
	bcast := frameTo(broadcastMAC, sender.mac)
	// It starts with its burst (50 ms at 1000/s), then holds the rate.
	burst := 0
	for w.forward(sender, bcast) {
		burst++
	}
	if burst != 50 {
		t.Errorf("%d broadcasts passed a new limit of 1000/s before the first drop, want its burst of 50", burst)
	}
	w.clock = w.clock.Add(10 * time.Millisecond) // 10 frames' worth
	passed := 0
	for range 20 {
		if w.forward(sender, bcast) {
			passed++
		}
	}
	if passed != 10 {
		t.Errorf("%d of 20 broadcasts passed with 10 tokens, want 10", passed)
	}
	if d := sender.ctr.drops[DropStormControl].Load(); d != 11 {
		t.Errorf("%d storm_control drops, want 11", d)
	}
	if c := vms[1].ctr.floodCopies.Load(); c != 60 {
		t.Errorf("receiver got %d copies, want 60", c)
	}
	if sender.txPkts != 60 {
		t.Errorf("%d frames counted as sent, want 60", sender.txPkts)
	}
	if !w.forward(sender, frameTo(MAC{2, 9, 9, 9, 9, 9}, sender.mac)) {
		t.Error("unicast frame dropped by storm control")
	}
	w.setLimits(sender, Limits{})
	if !w.forward(sender, bcast) || sender.floodLimited {
		t.Error("limit cleared: broadcasts must pass and the worker count no limited VM")
	}
}

// A guest's broadcasts into another worker's mailbox take at most its
// share of it (mailbox.go): the frames of the other VMs for that worker,
// their own wire frames and their unicast, still cross. The copies the
// mailbox refuses are counted on the VMs they were for (mailbox_full) and
// on the mailbox, and still cost the sender its unit each.
func TestFloodMailboxShare(t *testing.T) {
	const n = 6
	w, vms := floodWorker(n)
	sender, witness := vms[0], vms[n-1]
	w.dp.workers = []*worker{{}, w}
	w.index = 1
	mb := newMailbox(16, 128)
	w.outbox = []*mailbox{mb, nil}
	w.sentTo = make([]bool, 2)
	bcast := frameTo(broadcastMAC, sender.mac)
	for range 4 { // 20 copies for 16 slots
		w.forward(sender, bcast)
	}
	if got := sender.mail.held[0]; got != 8 {
		t.Fatalf("the sender's copies hold %d slots of 16, want half", got)
	}
	if w.floodCharge != 4*(n-1) {
		t.Errorf("floodCharge %d, want every copy, refused or not: %d", w.floodCharge, 4*(n-1))
	}
	var refused uint64
	for _, vm := range vms[1:] {
		refused += vm.ctr.drops[DropMailboxFull].Load()
	}
	if refused != 12 || mb.dropped.Load() != 12 {
		t.Errorf("%d copies counted as mailbox_full on the receivers, %d by the mailbox; want 12 each", refused, mb.dropped.Load())
	}
	// The witness's own wire frames, received here for its queue on the
	// other worker, and a unicast frame to it from another VM.
	w.deliver(&witness.mail, witness, frameTo(witness.mac, MAC{2, 9, 9, 9, 9, 9}))
	w.forward(vms[1], frameTo(witness.mac, vms[1].mac))
	if d := witness.ctr.drops[DropMailboxFull].Load(); d != 3 || mb.prodTail != 10 {
		t.Errorf("witness: %d frames refused (want only its 3 storm copies), %d frames in the mailbox (want 10)", d, mb.prodTail)
	}
}
