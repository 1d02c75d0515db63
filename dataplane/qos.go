package dataplane

import (
	"fmt"
	"time"
)

// Limits are a VM's QoS limits, in frames and bits per second, for RX
// (wire and other VMs → guest) and TX (guest → wire and other VMs); 0 is
// unlimited. Bits are Ethernet frame bits as vmq sees them: destination
// MAC to the end of the payload, without preamble, FCS or inter-frame
// gap; an RX frame as the guest gets it (untagged), a TX frame as the
// guest sent it (before vmq adds the access VLAN tag).
//
// Each worker enforces its share with token buckets of its own (no state
// shared between workers): an RX limit is split evenly across all
// workers, as the NIC spreads a VM's frames over every queue; a TX limit
// is split across the workers that own the VM's TX virtqueues (pair p is
// worker p mod workers), the only ones that pop its frames. A VM whose
// traffic is uneven over the queues therefore gets less than its limit.
// Frames over the limit are dropped and counted as rate_limited.
//
// FloodPPS is storm control: the broadcast and multicast frames per
// second the guest may send (each is copied to every VM of its VLAN and
// goes to the wire), shared over the workers like a TX limit; the rest
// are dropped whole and counted as storm_control. It is counted after
// the TX limit, and a frame it drops does not count as transmitted. Its
// bucket is refilled when a frame asks (one clock read a round at most),
// not every round: it is on for every VM by default (control), and
// most rounds have no such frame.
type Limits struct {
	RxPPS    uint64 `json:"rx_pps"`
	RxBPS    uint64 `json:"rx_bps"`
	TxPPS    uint64 `json:"tx_pps"`
	TxBPS    uint64 `json:"tx_bps"`
	FloodPPS uint64 `json:"flood_pps"`
}

// IsZero reports whether no limit is set.
func (l Limits) IsZero() bool { return l == Limits{} }

// bucketWindow is how much allowance a bucket stores: a worker kept off
// its CPU for up to this long loses none of its rate, and no more than
// this passes at once above the rate (2.5% of a 2 s window). 20 ms lost
// 6% of the rate on a loaded 2-core machine, where a worker sharing its
// core is off it for longer.
const bucketWindow = 50 * time.Millisecond

// tokenBucket is one worker's share of one limit. Only its worker touches
// it: refilled once per round from one clock read, charged per frame
// without any.
type tokenBucket struct {
	perNS  float64 // tokens per nanosecond; 0 = no limit
	burst  float64
	tokens float64
}

// set gives the bucket its share of perSecond; it starts empty, so a new
// limit does not let a burst through.
func (b *tokenBucket) set(perSecond uint64, share int) {
	if perSecond == 0 {
		*b = tokenBucket{}
		return
	}
	rate := float64(perSecond) / float64(max(share, 1))
	b.perNS = rate / 1e9
	b.burst = max(rate*bucketWindow.Seconds(), 1)
	b.tokens = min(b.tokens, b.burst)
}

func (b *tokenBucket) active() bool { return b.perNS > 0 }

func (b *tokenBucket) refill(dt time.Duration) {
	if b.perNS > 0 {
		b.tokens = min(b.tokens+b.perNS*float64(dt), b.burst)
	}
}

// ok reports whether a frame may pass: any positive balance lets one
// through, and charge may take the balance below zero (a large frame is
// paid back before the next one passes).
func (b *tokenBucket) ok() bool { return b.perNS == 0 || b.tokens > 0 }

func (b *tokenBucket) charge(n float64) {
	if b.perNS > 0 {
		b.tokens -= n
	}
}

// vmLimits are a VM's buckets on one worker.
type vmLimits struct {
	rxPkts, rxBits, txPkts, txBits, flood tokenBucket
}

// setLimits installs l on the worker's view of vm and keeps the count of
// limited VMs (the worker reads the clock only while it is not zero).
func (w *worker) setLimits(vm *vmState, l Limits) {
	was := vm.rxLimited || vm.txLimited
	rxShare := len(w.dp.workers)
	txShare := min(vm.pairs, len(w.dp.workers))
	vm.lim.rxPkts.set(l.RxPPS, rxShare)
	vm.lim.rxBits.set(l.RxBPS, rxShare)
	vm.lim.txPkts.set(l.TxPPS, txShare)
	vm.lim.txBits.set(l.TxBPS, txShare)
	wasFlood := vm.floodLimited
	vm.lim.flood.set(l.FloodPPS, txShare)
	if !wasFlood {
		// Unlike a rate limit, storm control starts with its burst: it
		// is on by default, and a VM's first broadcasts (ARP at boot, the
		// RARP right after a migration) must pass.
		vm.lim.flood.tokens = vm.lim.flood.burst
	}
	vm.floodAt = time.Now() // refilled from now on (admitFlood)
	vm.rxLimited = vm.lim.rxPkts.active() || vm.lim.rxBits.active()
	vm.txLimited = vm.lim.txPkts.active() || vm.lim.txBits.active()
	vm.floodLimited = vm.lim.flood.active()
	now := vm.rxLimited || vm.txLimited
	switch {
	case now && !was:
		if w.nlimited == 0 {
			w.lastRefill = time.Now()
		}
		w.nlimited++
	case was && !now:
		w.nlimited--
	}
}

// refillLimits tops up every limited VM's buckets: one clock read per
// round, and only on a worker that has a limited VM.
func (w *worker) refillLimits() {
	now := time.Now()
	dt := now.Sub(w.lastRefill)
	w.lastRefill = now
	if dt <= 0 {
		return
	}
	for _, vm := range w.vmList {
		if vm.rxLimited || vm.txLimited {
			vm.lim.rxPkts.refill(dt)
			vm.lim.rxBits.refill(dt)
			vm.lim.txPkts.refill(dt)
			vm.lim.txBits.refill(dt)
		}
	}
}

// admitFlood charges a broadcast or multicast frame from vm's guest to
// its storm control, refilling the bucket first; false: over the limit,
// counted.
func (w *worker) admitFlood(vm *vmState) bool {
	if w.clockRound != w.rr {
		w.clock, w.clockRound = time.Now(), w.rr
	}
	if dt := w.clock.Sub(vm.floodAt); dt > 0 {
		vm.lim.flood.refill(dt)
		vm.floodAt = w.clock
	}
	if !vm.lim.flood.ok() {
		vm.drop(DropStormControl)
		return false
	}
	vm.lim.flood.charge(1)
	return true
}

// admitRx charges an RX frame of n bytes; false: over the limit.
func (vm *vmState) admitRx(n int) bool {
	l := &vm.lim
	if !l.rxPkts.ok() || !l.rxBits.ok() {
		return false
	}
	l.rxPkts.charge(1)
	l.rxBits.charge(float64(8 * n))
	return true
}

// admitTx charges a TX frame of n bytes; false: over the limit.
func (vm *vmState) admitTx(n int) bool {
	l := &vm.lim
	if !l.txPkts.ok() || !l.txBits.ok() {
		return false
	}
	l.txPkts.charge(1)
	l.txBits.charge(float64(8 * n))
	return true
}

// SetLimits changes a running VM's QoS limits; every worker applies them
// between two rounds.
func (dp *Dataplane) SetLimits(name string, l Limits) error {
	// Held for the whole change, so a concurrent RemoveVM/AddVM of the
	// same name cannot interleave with it.
	dp.mu.Lock()
	defer dp.mu.Unlock()
	e, ok := dp.vms[name]
	if !ok {
		return fmt.Errorf("set limits of VM %q: not present", name)
	}
	for _, w := range dp.workers {
		if err := w.send(command{kind: cmdSetLimits, slot: e.vm.Slot, limits: l}); err != nil {
			return fmt.Errorf("set limits of VM %q on queue %d: %w", name, w.queueID, err)
		}
	}
	e.vm.Limits = l
	return nil
}
