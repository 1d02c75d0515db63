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
		testenv.Eventually(t, "the storm reaches the bystanders", func() (bool, string) {
			s, err := h.snapshot()
			if err != nil {
				return false, err.Error()
			}
			c := vmOf(s, by[0]).FloodCopies
			return c > 20000, fmt.Sprintf("%d copies to %s", c, by[0])
		})
	}, func() {
		s0, err := h.snapshot()
		if err != nil {
			t.Fatal(err)
		}
		<-time.After(time.Second) // a measurement window, not synchronisation
		s1, err := h.snapshot()
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range by {
			copies += vmOf(s1, name).FloodCopies - vmOf(s0, name).FloodCopies
		}
		rounds = s1.Workers[0].Batches - s0.Workers[0].Batches
	})
	t.Logf("%d copies in %d rounds with work (%.0f a round); the worker was busy %.1f%% before the storm, %.1f%% during it; %s",
		copies, rounds, float64(copies)/float64(max(rounds, 1)), before, during, victimLatency(h, tr))
	if copies < 10000 || rounds < 100 {
		t.Fatalf("%d copies in %d rounds: not a storm", copies, rounds)
	}
	// The sender carries at most one quantum from a round to the next,
	// and the round counter is published every few rounds: a quantum's
	// slack.
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
