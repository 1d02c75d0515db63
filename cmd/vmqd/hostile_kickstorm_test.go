package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/vmq/vmq/internal/hostile"
	"github.com/vmq/vmq/internal/testenv"
)

// The guest writes a kick eventfd in a loop without posting anything:
// its transmit ring's for 1.5 s, then, with frames for it held by the
// worker (no receive buffer posted), its receive ring's for 1.5 s.
// Unmuted, every kick woke the worker it shares with the victim into an
// empty round and a busy-poll: the transmit storm kept it 55-70% busy
// (10% before), the receive storm 94% (9%). vmqd must mute a kick fd
// whose kicks keep bringing nothing (1 ms, doubling to 8 ms), and the
// guest's frames must go both ways once it behaves.
func attackKickStorm(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	d := a.device(hostile.Config{})
	mustStart(t, h, d)
	kickStorm(t, h, a, "transmit", func() { d.KickRing(1) }, true)
	h.attackerFlow(t, 2000)
	testenv.Eventually(t, "frames for the attacker held", func() (bool, string) {
		s, err := h.snapshot()
		if err != nil {
			return false, err.Error()
		}
		for _, so := range s.Sockets {
			if so.VM == a.name && so.RxRingFull > 0 {
				return true, ""
			}
		}
		return false, "its socket's ring not full yet"
	})
	kickStorm(t, h, a, "receive", func() { d.KickRing(0) }, false)
	rx := d.RX()
	rx.PostRX()
	d.KickRing(0)
	testenv.Eventually(t, "held frames delivered after the storm", func() (bool, string) {
		return rx.UsedIdx() > 0, "used.idx 0"
	})
	// Frames sent after the storm go out.
	tx := d.TX()
	from := tx.UsedIdx()
	tx.SendFrames(attackerFrames(t, h.b.Peer.MAC, 8))
	d.KickRing(1)
	testenv.Eventually(t, "the attacker's frames sent after the storm", func() (bool, string) {
		return tx.UsedIdx()-from >= 8, fmt.Sprintf("%d of 8 used", tx.UsedIdx()-from)
	})
}

// kickStorm runs kick for 1.5 s as fast as it goes and checks that vmqd
// muted it: a mute counted and, if vmqd reads these kicks (counted, in
// the port's kicks; a holder's receive kicks are never read), at most
// about one taken per millisecond.
func kickStorm(t *testing.T, h *hostileBed, a *attacker, what string, kick func(), counted bool) {
	t.Helper()
	s0, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	writes := 0
	for time.Since(start) < 1500*time.Millisecond {
		for range 100 {
			kick()
		}
		writes += 100
	}
	elapsed := time.Since(start)
	s1, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	w0, w1 := s0.Workers[0], s1.Workers[0]
	t.Logf("%s kick storm: %d writes in %v, %d mutes; the worker was busy %.1f%% meanwhile",
		what, writes, elapsed.Round(time.Millisecond), w1.KickMutes-w0.KickMutes, busyPercent(s0, s1, elapsed))
	if w1.KickMutes == w0.KickMutes {
		t.Errorf("the %s kick storm was never muted", what)
	}
	if !counted {
		return
	}
	// Before the first mute, spuriousKicksToMute; then one per unmute,
	// at most one a millisecond.
	if n, most := portOf(s1, a.name).Kicks-portOf(s0, a.name).Kicks, uint64(20+elapsed/time.Millisecond); n > most {
		t.Errorf("vmqd took %d of the attacker's %s kicks in %v, want at most %d", n, what, elapsed.Round(time.Millisecond), most)
	}
}
