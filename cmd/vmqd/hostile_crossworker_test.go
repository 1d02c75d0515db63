package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/internal/testenv"
)

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
	s0, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	<-time.After(time.Second) // a measurement window, not synchronisation
	s1, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var copies uint64
	for _, name := range by {
		copies += vmOf(s1, name).FloodCopies - vmOf(s0, name).FloodCopies
	}
	rounds := s1.Workers[1].Batches - s0.Workers[1].Batches
	t.Logf("worker 1: %d copies in %d rounds with work (%.0f a round); worker 0: %d rounds, busy %.0f%%, %d mailbox drops",
		copies, rounds, float64(copies)/float64(max(rounds, 1)), s1.Workers[0].Batches-s0.Workers[0].Batches,
		busyPercent(s0, s1, time.Second), s1.Workers[0].MailboxDrops-s0.Workers[0].MailboxDrops)
	if copies < 10000 || rounds < 100 {
		t.Fatalf("%d copies in %d rounds: not a storm", copies, rounds)
	}
	// A quantum's slack: the sender carries at most one from a round to
	// the next, and the round counter is published every few rounds.
	if most := dataplane.FairQuantum * (rounds + 1); copies > most {
		t.Errorf("%d copies in %d rounds of worker 1: more than the sender's quantum (%d) a round", copies, rounds, dataplane.FairQuantum)
	}
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

// checkMailboxAccounting waits for the copies in flight to settle once
// the storm has stopped, then checks that every copy to a guestless
// bystander was either refused by the mailbox or dropped by worker 0 for
// want of a guest, that the mailbox refusals the VMs count are the ones
// the workers counted since base (the attack's VMs are new, the workers
// not), and that none is the victim's.
func checkMailboxAccounting(t *testing.T, h *hostileBed, by []string, base uint64) {
	t.Helper()
	var s *dataplane.Snapshot
	testenv.Eventually(t, "every copy to a guestless bystander accounted for", func() (bool, string) {
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
		return true, ""
	})
	var vmDrops uint64
	for _, v := range s.VMs {
		vmDrops += v.DropsByReason["mailbox_full"]
	}
	workerDrops := sumMailboxDrops(s) - base
	t.Logf("copies refused by worker 0's mailbox: %d", workerDrops)
	if vmDrops != workerDrops {
		t.Errorf("the VMs count %d frames refused by a mailbox, the workers %d", vmDrops, workerDrops)
	}
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
