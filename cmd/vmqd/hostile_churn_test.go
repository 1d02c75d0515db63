package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/internal/hostile"
	"github.com/vmq/vmq/internal/testenv"
)

// The guest stops and starts both its rings (SET_VRING_ENABLE 0, then 1)
// as fast as vmqd answers, for 2 s. Every start and stop is a command
// its worker, shared with the victim, applies between rounds: unpaced,
// about 3200 starts a second took 36% of that worker. vmqd must pace the
// starts (vhostuser.DefaultRingStarts: the burst, then 64 a second),
// counting those that waited, and the device must still work after.
func attackRingChurn(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	d := a.device(hostile.Config{})
	first := time.Now() // no ring of this port started before
	mustStart(t, h, d)
	h.attackerFlow(t, 2000)
	s0, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	toggles := 0
	for time.Since(start) < 2*time.Second {
		for _, en := range []uint32{0, 1} {
			for ring := uint32(0); ring < 2; ring++ {
				if err := d.C.State(vhostuser.ReqSetVringEnable, ring, en); err != nil {
					t.Fatalf("SET_VRING_ENABLE %d %d: %v", ring, en, err)
				}
			}
		}
		toggles++
	}
	elapsed := time.Since(first)
	s1, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	p := portOf(s1, a.name)
	t.Logf("%d stop/start toggles of both rings in %v: %d ring starts, %d paced; the worker was busy %.1f%% meanwhile",
		toggles, time.Since(start).Round(time.Millisecond), p.RingStarts, p.RingStartsPaced, busyPercent(s0, s1, time.Since(start)))
	lim := vhostuser.DefaultRingStarts
	if most := uint64(float64(lim.Burst) + lim.PerSecond*elapsed.Seconds() + 1); p.RingStarts > most {
		t.Errorf("%d ring starts in %v: the limit allows at most %d", p.RingStarts, elapsed.Round(time.Millisecond), most)
	}
	if p.RingStartsPaced == 0 {
		t.Errorf("no ring start was paced in %d toggles", toggles)
	}
	// The guest's device works on: paced, not broken.
	rx := d.RX()
	from := rx.UsedIdx()
	testenv.Eventually(t, "frames delivered to the attacker after the churn", func() (bool, string) {
		rx.PostRX()
		d.KickRing(0)
		s, err := h.snapshot()
		if err == nil && portOf(s, a.name).Broken != "" {
			t.Fatalf("device broken: %s", portOf(s, a.name).Broken)
		}
		return rx.UsedIdx()-from >= 16, fmt.Sprintf("%d frames", rx.UsedIdx()-from)
	})
}

// The guest sends GET_FEATURES as fast as vmqd answers for 1.5 s, then
// connects and hangs up as fast as it can for 0.5 s. Unpaced, 11000
// messages a second took 52% of a CPU from vmqd (the port's goroutine
// runs on the cores of the workers, one of them shared with the victim)
// and tripled that worker's busy time. vmqd must pace them
// (vhostuser.DefaultMessages: the burst, then 1000 a second, reconnects
// included), counting what waited, and still answer.
func attackMessageStorm(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	d := a.device(hostile.Config{})
	first := time.Now() // the port's first message is after this
	mustStart(t, h, d)
	s0, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	start, msgs := time.Now(), 0
	for time.Since(start) < 1500*time.Millisecond {
		if _, err := d.C.GetU64(vhostuser.ReqGetFeatures); err != nil {
			t.Fatalf("GET_FEATURES %d: %v", msgs, err)
		}
		msgs++
	}
	d.Close()
	conns, connStart := 0, time.Now()
	for time.Since(connStart) < 500*time.Millisecond {
		a.conn().Close()
		conns++
	}
	elapsed := time.Since(first)
	s1, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	p := portOf(s1, a.name)
	t.Logf("%d GET_FEATURES in 1.5 s, %d connections in 0.5 s: %d paced; the worker was busy %.1f%% meanwhile",
		msgs, conns, p.MessagesPaced, busyPercent(s0, s1, time.Since(start)))
	lim := vhostuser.DefaultMessages
	// Every answered GET_FEATURES took a token (and the handshake more).
	if most := int(float64(lim.Burst) + lim.PerSecond*elapsed.Seconds() + 1); msgs > most {
		t.Errorf("%d GET_FEATURES answered in %v: the limit allows at most %d", msgs, elapsed.Round(time.Millisecond), most)
	}
	if p.MessagesPaced == 0 {
		t.Errorf("no message paced in %d", msgs)
	}
}

// busyPercent is worker 0's busy time between two snapshots d apart, in
// percent of d (what a storm costs the worker the victim shares).
func busyPercent(s0, s1 *dataplane.Snapshot, d time.Duration) float64 {
	return 100 * float64(s1.Workers[0].BusyNS-s0.Workers[0].BusyNS) / float64(d.Nanoseconds())
}
