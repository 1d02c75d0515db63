package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/internal/testenv"
)

// The destinations of the storms: broadcast, and mDNS's multicast group.
const broadcastMAC, multicastMAC = "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb"

// bystanderMAC is the MAC of the i-th bystander VM of a storm.
func bystanderMAC(i int) string { return fmt.Sprintf("02:00:00:00:03:%02x", 0x10+i) }

// The guest floods multicast frames at full speed on the victim's own
// VLAN, with three more VMs there: every frame is copied to the victim
// and the three. Unlimited, a guest on the VLAN drowns in the copies and
// loses its own frames (its ring full: 128-417 of 3000 in
// TestBroadcastStormSenderPays). The default storm control
// (control.DefaultFloodPPS) must hold the attacker to it, count the rest
// as storm_control, and keep the victim exact.
func attackMulticastStorm(t *testing.T, h *hostileBed, a *attacker, tr *traffic) {
	for i := range 3 {
		h.addBystander(t, fmt.Sprintf("bystander%d", i), bystanderMAC(i))
	}
	before, during := stormBusy(t, h, func() {
		floodTo(t, a.guest(), mustMAC(multicastMAC))
		// The bucket's burst is vmqd's business, the rate the contract.
		<-time.After(300 * time.Millisecond)
	}, func() {
		rate := attackerWireRate(t, tr, time.Second)
		t.Logf("the attacker's multicast on the wire: %.0f frames/s", rate)
		if rate > control.DefaultFloodPPS*1.05 {
			t.Errorf("storm control %d frames/s: the attacker got %.0f frames/s through", control.DefaultFloodPPS, rate)
		}
	})
	s, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	drops := vmOf(s, a.name).DropsByReason["storm_control"]
	t.Logf("%d dropped as storm_control, %d copies to bystander0; the worker was busy %.1f%% before the storm, %.1f%% during it; %s",
		drops, vmOf(s, "bystander0").FloodCopies, before, during, victimLatency(h, tr))
	if drops == 0 {
		t.Errorf("nothing dropped as storm_control: not a storm (drops %v)", vmOf(s, a.name).DropsByReason)
	}
	if vmOf(s, "bystander0").FloodCopies == 0 {
		t.Errorf("bystander0 got no copy of the storm")
	}
}

// The guest floods broadcasts at full speed, without storm control
// (flood_pps 0), on VLAN 10 of 15 more VMs (three with a guest, twelve
// whose guests are away), on the victim's worker; the victim is on
// another VLAN. Each copy must cost the sender a unit of its quantum:
// the copies the worker makes per round stay within one quantum
// (dataplane.FairQuantum). When only the receivers paid for them, a
// round could make 64 frames × 15 copies, the sender paying its pops.
func attackBroadcastStorm(t *testing.T, h *hostileBed, a *attacker, tr *traffic) {
	by := addStormVLAN(t, h)
	var copies, rounds uint64
	before, during := stormBusy(t, h, func() {
		floodTo(t, a.guest(), mustMAC(broadcastMAC))
		waitStorm(t, h, by[0], 20000)
	}, func() {
		_, _, copies, rounds = stormWindow(t, h, by, 0)
	})
	t.Logf("%d copies in %d rounds with work (%.0f a round); the worker was busy %.1f%% before the storm, %.1f%% during it; %s",
		copies, rounds, float64(copies)/float64(max(rounds, 1)), before, during, victimLatency(h, tr))
	checkCopiesPerRound(t, copies, rounds)
}

// waitStorm waits until the bystander by has counted n copies of the storm.
func waitStorm(t *testing.T, h *hostileBed, by string, n uint64) {
	t.Helper()
	testenv.Eventually(t, "the storm reaches the bystanders", func() (bool, string) {
		s, err := h.snapshot()
		if err != nil {
			return false, err.Error()
		}
		c := vmOf(s, by).FloodCopies
		return c >= n, fmt.Sprintf("%d copies to %s", c, by)
	})
}

// stormWindow measures a storm for a second: the copies made to the
// bystanders by, and the rounds with work of the worker that serves the
// sender's transmit queue; with the snapshots that open and close it.
func stormWindow(t *testing.T, h *hostileBed, by []string, worker int) (s0, s1 *dataplane.Snapshot, copies, rounds uint64) {
	t.Helper()
	s0, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	<-time.After(time.Second) // a measurement window, not synchronisation
	s1, err = h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range by {
		copies += vmOf(s1, name).FloodCopies - vmOf(s0, name).FloodCopies
	}
	return s0, s1, copies, s1.Workers[worker].Batches - s0.Workers[worker].Batches
}

// checkCopiesPerRound: a storm, whose copies stay within the sender's
// quantum (dataplane.FairQuantum) a round of its worker. The sender
// carries at most one quantum from a round to the next, and the round
// counter is published every few rounds: a quantum's slack.
func checkCopiesPerRound(t *testing.T, copies, rounds uint64) {
	t.Helper()
	if copies < 10000 || rounds < 100 {
		t.Fatalf("%d copies in %d rounds: not a storm", copies, rounds)
	}
	if most := dataplane.FairQuantum * (rounds + 1); copies > most {
		t.Errorf("%d copies in %d rounds: more than the sender's quantum (%d) a round", copies, rounds, dataplane.FairQuantum)
	}
}

// stormVLAN is the VLAN of the broadcast storms' bystanders.
const stormVLAN = "10"

// addStormVLAN adds the 15 bystanders of a broadcast storm on stormVLAN,
// one queue pair each: three with a guest, twelve whose guests are away
// (each copy to them is dropped as guest_not_ready where it is pushed).
// It returns their names; the first three have the guests.
func addStormVLAN(t *testing.T, h *hostileBed) []string {
	t.Helper()
	by := make([]string, 15)
	for i := range by {
		by[i] = fmt.Sprintf("bystander%d", i)
		if i < 3 {
			h.addBystander(t, by[i], bystanderMAC(i), "--vlan", stormVLAN)
		} else {
			h.vmAdd(t, by[i], bystanderMAC(i), h.sock(fmt.Sprintf("%s-%d", by[i], h.seq)), "--vlan", stormVLAN)
		}
	}
	return by
}

// stormBusy measures worker 0's busy share for 300 ms, runs start (the
// storm), then measure, and returns the share before start and the share
// during measure.
func stormBusy(t *testing.T, h *hostileBed, start, measure func()) (before, during float64) {
	t.Helper()
	s0, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	<-time.After(300 * time.Millisecond) // a measurement window, not synchronisation
	s1, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	before = busyPercent(s0, s1, time.Since(t0))
	start()
	s2, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	t2 := time.Now()
	measure()
	s3, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	return before, busyPercent(s2, s3, time.Since(t2))
}

// victimLatency reports the latency of the victim's frames from the wire
// so far (its stream's p50, p99 and maximum).
func victimLatency(h *hostileBed, tr *traffic) string {
	for _, s := range h.victim.Stats().Streams {
		if s.Stream == tr.rxStream {
			return fmt.Sprintf("wire→victim latency p50 %v, p99 %v, max %v", s.LatencyP50, s.LatencyP99, s.LatencyMax)
		}
	}
	return "no victim stream"
}

// The cross-worker attacks, on a bed of two NIC queues (two workers). The
// attacker has two queue pairs and floods on pair 1 only, so worker 1
// serves its transmit queue; the bystanders of stormVLAN and the victim
// (the witness), one pair each, are served by worker 0. Every copy of the
// storm crosses worker 1's mailbox to worker 0, and so do the victim's
// wire frames (sent on NIC queue 1, hostilebed_test.go): the victim is on
// the untagged VLAN, not the storm's, so that what is judged is the
// workers and the mailbox between them, not a ring every VM of a VLAN
// must share with the storm (which storm control is for).
var crossWorkerAttacks = []hostileAttack{
	{name: "cross_worker_broadcast_storm", run: attackCrossWorkerStorm, pairs: 2, addArgs: []string{"--vlan", stormVLAN, "--flood-pps", "0"}},
	{name: "cross_worker_storm_control", run: attackCrossWorkerStormControl, pairs: 2, addArgs: []string{"--vlan", stormVLAN}},
}

// Without storm control the attacker floods broadcasts on worker 1. The
// copies it makes a round there stay within its quantum (the sender pays
// a unit a copy, mailbox copies included: dataplane.FairQuantum a
// round); worker 0 goes on serving the victim exactly while copies fill
// its mailbox, and every copy the mailbox refused is counted, on the
// bystander it was for and on worker 0, never on the victim.
func attackCrossWorkerStorm(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	by := addStormVLAN(t, h)
	base := mailboxDrops(t, h)
	stop := floodTo(t, a.guest(), nil, mustMAC(broadcastMAC))
	waitStorm(t, h, by[0], 20000)
	s0, s1, copies, rounds := stormWindow(t, h, by, 1)
	t.Logf("worker 1: %d copies in %d rounds with work (%.0f a round); worker 0: %d rounds, %d mailbox drops, %d watchdog stalls",
		copies, rounds, float64(copies)/float64(max(rounds, 1)), s1.Workers[0].Batches-s0.Workers[0].Batches,
		s1.Workers[0].MailboxDrops-s0.Workers[0].MailboxDrops, s1.Workers[0].Stalls-s0.Workers[0].Stalls)
	checkCopiesPerRound(t, copies, rounds)
	stop()
	checkMailboxAccounting(t, h, by, base)
}

// With the default storm control the attacker, flooding on worker 1, is
// held to that worker's share of control.DefaultFloodPPS (the limit is
// split over the workers of its transmit queues, two here), the rest
// dropped as storm_control; the victim on worker 0 stays exact.
func attackCrossWorkerStormControl(t *testing.T, h *hostileBed, a *attacker, tr *traffic) {
	by := addStormVLAN(t, h)
	base := mailboxDrops(t, h)
	stop := floodTo(t, a.guest(), nil, mustMAC(broadcastMAC))
	waitStorm(t, h, by[0], 2000)
	// The bucket's burst is vmqd's business, the rate the contract.
	<-time.After(300 * time.Millisecond)
	share := float64(control.DefaultFloodPPS) / float64(a.pairs)
	rate := attackerWireRate(t, tr, time.Second)
	s, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	drops := vmOf(s, a.name).DropsByReason["storm_control"]
	t.Logf("the attacker's broadcasts on the wire: %.0f frames/s (its share on worker 1: %.0f); %d dropped as storm_control",
		rate, share, drops)
	if rate > share*1.05 {
		t.Errorf("storm control %d frames/s over %d workers: the attacker got %.0f frames/s through on one", control.DefaultFloodPPS, a.pairs, rate)
	}
	if drops == 0 {
		t.Errorf("nothing dropped as storm_control: not a storm (drops %v)", vmOf(s, a.name).DropsByReason)
	}
	stop()
	checkMailboxAccounting(t, h, by, base)
}

// checkMailboxAccounting waits for the copies in flight to settle once
// the storm has stopped, then checks that every copy to a guestless
// bystander was either refused by the mailbox or dropped by worker 0 for
// want of a guest, that the mailbox refusals the VMs count are the ones
// the workers counted since base (the attack's VMs are new, the workers
// not), and that none is the victim's.
func checkMailboxAccounting(t *testing.T, h *hostileBed, by []string, base uint64) {
	t.Helper()
	// The attacker's ring still holds frames when its flood stops, and a
	// snapshot reads the workers' counters before the VMs': the two
	// totals agree once the last copies are counted, so both are waited
	// for (a copy counted on one side only never lets them agree).
	var s *dataplane.Snapshot
	var workerDrops uint64
	testenv.Eventually(t, "every copy to a guestless bystander and every mailbox refusal accounted for", func() (bool, string) {
		var err error
		if s, err = h.snapshot(); err != nil {
			return false, err.Error()
		}
		for _, name := range by[3:] {
			v := vmOf(s, name)
			if got := v.DropsByReason["guest_not_ready"] + v.DropsByReason["mailbox_full"]; got != v.FloodCopies {
				return false, fmt.Sprintf("%s: %d copies, %d dropped (%v)", name, v.FloodCopies, got, v.DropsByReason)
			}
		}
		var vmDrops uint64
		for _, v := range s.VMs {
			vmDrops += v.DropsByReason["mailbox_full"]
		}
		if workerDrops = sumMailboxDrops(s) - base; vmDrops != workerDrops {
			return false, fmt.Sprintf("the VMs count %d frames refused by a mailbox, the workers %d", vmDrops, workerDrops)
		}
		return true, ""
	})
	t.Logf("copies refused by worker 0's mailbox: %d", workerDrops)
	if d := vmOf(s, "victim").DropsByReason; d["mailbox_full"] != 0 {
		t.Errorf("victim frames refused by a mailbox: %v", d)
	}
}

// mailboxDrops is what every worker's mailboxes refused so far.
func mailboxDrops(t *testing.T, h *hostileBed) uint64 {
	t.Helper()
	s, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	return sumMailboxDrops(s)
}

func sumMailboxDrops(s *dataplane.Snapshot) uint64 {
	var n uint64
	for _, w := range s.Workers {
		n += w.MailboxDrops
	}
	return n
}
