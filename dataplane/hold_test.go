package dataplane

import (
	"context"
	"fmt"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/guest/frontend"
	tbed "github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// addStalledVM adds a VM whose guest, a 256-entry receive ring, stops at
// its first frame until release is called: it posts no buffer meanwhile.
func (tb *testbed) addStalledVM(name string, slot uint32, mac string, packed bool) (release func()) {
	tb.t.Helper()
	gate := make(chan struct{})
	cfg := tbed.GuestConfig(mac, 1, "")
	cfg.QueueSize = 256
	cfg.PackedRing = packed
	cfg.OnFrame = func(int, []byte) { <-gate }
	tb.addVMConfig(name, slot, 0, cfg)
	var released bool
	release = func() {
		if !released {
			released = true
			close(gate)
		}
	}
	// Registered after the guest's own cleanup, so it runs first.
	tb.t.Cleanup(release)
	return release
}

// A guest off its CPU with its ring full loses nothing: the frames it
// has no buffer for wait in its socket ring and arrive, in order, once
// it posts buffers again. Split and packed rings.
func TestHeldFramesReachStalledGuest(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(map[bool]string{false: "split", true: "packed"}[packed], func(t *testing.T) { testHeldFrames(t, packed) })
	}
}

func testHeldFrames(t *testing.T, packed bool) {
	tb := newTestbed(t, 1)
	release := tb.addStalledVM("slow", 1, mac1, packed)
	if got := tb.portStats("slow").Features&virtio.FRingPacked != 0; got != packed {
		t.Fatalf("packed ring negotiated: %v, want %v", got, packed)
	}
	g := tb.guests["slow"]
	// 256 fill the guest's ring, 500 wait (below the VM's cap of 1024).
	const ring, held = 256, 500
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 64, Stream: 1}, ring+held)
	testenv.Eventually(t, "the guest's ring full", func() (bool, string) {
		vs := tb.vmStats("slow")
		return vs.RxPackets == ring, fmt.Sprintf("%+v", vs)
	})
	if vs := tb.vmStats("slow"); len(vs.DropsByReason) != 0 {
		t.Fatalf("frames dropped with the guest's ring full: %v", vs.DropsByReason)
	}
	release()
	testenv.Eventually(t, "every frame delivered", func() (bool, string) {
		snap := tb.dp.Snapshot()
		return g.Stats().RxFrames >= ring+held, fmt.Sprintf("slow received %d; %+v; %+v; %+v; %+v", g.Stats().RxFrames, tb.vmStats("slow"), snap.Sockets, snap.Workers, tb.portStats("slow"))
	})
	waitRx(t, "slow", g, ring+held)
	vs := tb.vmStats("slow")
	if vs.RxPackets != ring+held || len(vs.DropsByReason) != 0 {
		t.Errorf("slow: rx %d drops %v; want %d, no drop", vs.RxPackets, vs.DropsByReason, ring+held)
	}
	if st := g.Stats().Streams; len(st) != 1 || st[0].Lost != 0 || st[0].Reordered != 0 || st[0].Duplicates != 0 {
		t.Errorf("slow stream: %+v", st)
	}
	for _, s := range tb.dp.Snapshot().Sockets {
		if s.RxRingFull != 0 || s.RxDropped != 0 {
			t.Errorf("socket %+v: kernel drops", s)
		}
	}
	tb.checkFrames()
}

// Guests that never post receive buffers, flooded from the wire, hold at
// most their dynamic cap of the queue's UMEM: at rest each holds at most
// half of the hold budget the other leaves (so the two together at most
// 2/3 of it, never the whole), the fill ring never runs empty, and a
// witness VM on the same worker gets every frame, exactly. Every frame
// sent to a hostile VM is delivered, held or counted dropped.
func TestHoldingGuestsCannotDrainUMEM(t *testing.T) {
	// A small UMEM, so the cap (a hold budget of 4096/2, about 682 a VM
	// for two holders) is what stops the hostile VMs, not their socket
	// rings (1024).
	tb := newTestbedCfg(t, 1, func(c *Config) { c.FramesPerQueue = 4096 })
	tb.addStalledVM("hostile1", 1, mac1, false)
	tb.addStalledVM("hostile2", 2, mac2, true)
	witness := tb.addVM("witness", 3, mac3, 0, 1, "")
	const flood, n, ring, budget = 3000, 2000, 256, 4096 / 2
	hostile := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}, {MAC: mustMAC(mac2)}}, Size: 64, Stream: 1}
	tb.send(hostile, flood)
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac3)}}, Size: 64, Stream: 2}, n)
	tb.send(hostile, flood)
	waitRx(t, "witness", witness, n)
	if vs := tb.vmStats("witness"); vs.RxPackets != n || len(vs.DropsByReason) != 0 {
		t.Errorf("witness: rx %d drops %v; want %d, no drop", vs.RxPackets, vs.DropsByReason, n)
	}
	if st := witness.Stats().Streams; len(st) != 1 || st[0].Lost != 0 || st[0].Reordered != 0 || st[0].Duplicates != 0 {
		t.Errorf("witness stream: %+v", st)
	}
	sockets := func() map[string]SocketStats {
		m := map[string]SocketStats{}
		for _, s := range tb.dp.Snapshot().Sockets {
			m[s.VM] = s
		}
		return m
	}
	// Sent 2×flood each: in the guest's ring, dropped by the worker (over
	// the cap) or by the kernel (socket ring full), or held.
	held := func(name string) (int, bool, string) {
		vs, s := tb.vmStats(name), sockets()[name]
		out := vs.RxPackets + vs.DropsByReason["virtqueue_full"] + s.RxRingFull + s.RxDropped
		ok := vs.RxPackets == ring && out <= 2*flood && len(vs.DropsByReason) <= 1
		return 2*flood - int(out), ok, fmt.Sprintf("%s: %+v socket %+v", name, vs, s)
	}
	var h1, h2 int
	testenv.Eventually(t, "the hostile VMs holding their dynamic caps", func() (bool, string) {
		var ok1, ok2 bool
		var s1, s2 string
		h1, ok1, s1 = held("hostile1")
		h2, ok2, s2 = held("hostile2")
		// At rest every holder has been visited with the other's final
		// count: h ≤ (budget − other)/2 for each (holdAlpha 1).
		return ok1 && ok2 && h1 > 0 && h2 > 0 && 2*h1+h2 <= budget && h1+2*h2 <= budget,
			fmt.Sprintf("held %d and %d of a budget of %d; %s; %s", h1, h2, budget, s1, s2)
	})
	t.Logf("held %d and %d (together %d, at most %d at rest; the budget is %d)", h1, h2, h1+h2, 2*budget/3, budget)
	for _, s := range sockets() {
		if s.FillRingEmpty != 0 {
			t.Errorf("socket %+v: the fill ring ran empty", s)
		}
	}
}

// One VM holding among 256 configured on the queue may hold far more than
// 1/256 of the hold budget (dynamic threshold): a stalled guest's 900
// frames over its ring all wait, none is dropped, and all arrive in order
// once it posts buffers. With a static per-VM cap it would hold
// 8192/2/256 = 16.
func TestOneHolderAmongManyVMs(t *testing.T) {
	tb := newTestbedOpts(t, tbed.Options{MaxVMs: 256}, nil)
	for i := range 254 {
		slot := uint32(3 + i)
		tb.addPort(VM{Name: fmt.Sprintf("idle%d", slot), Slot: slot, MAC: mustMAC(fmt.Sprintf("02:00:00:00:%02x:%02x", slot>>8, slot&0xff)),
			Socket: tb.Socket(fmt.Sprintf("idle%d", slot)), QueuePairs: 1})
	}
	release := tb.addStalledVM("slow", 1, mac1, false)
	witness := tb.addVM("witness", 2, mac2, 0, 1, "")
	if n := len(tb.dp.Snapshot().VMs); n != 256 {
		t.Fatalf("%d VMs configured, want 256", n)
	}
	g := tb.guests["slow"]
	const ring, held, n = 256, 900, 1000
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 64, Stream: 1}, ring+held)
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac2)}}, Size: 64, Stream: 2}, n)
	waitRx(t, "witness", witness, n)
	testenv.Eventually(t, "the guest's ring full", func() (bool, string) {
		vs := tb.vmStats("slow")
		return vs.RxPackets == ring, fmt.Sprintf("%+v", vs)
	})
	if vs := tb.vmStats("slow"); len(vs.DropsByReason) != 0 {
		t.Fatalf("frames dropped with %d held of 256 VMs' queue: %v", held, vs.DropsByReason)
	}
	release()
	waitRx(t, "slow", g, ring+held)
	if vs := tb.vmStats("slow"); vs.RxPackets != ring+held || len(vs.DropsByReason) != 0 {
		t.Errorf("slow: rx %d drops %v; want %d, no drop", vs.RxPackets, vs.DropsByReason, ring+held)
	}
	for name, g := range map[string]*frontend.Guest{"slow": g, "witness": witness} {
		if st := g.Stats().Streams; len(st) != 1 || st[0].Lost != 0 || st[0].Reordered != 0 || st[0].Duplicates != 0 {
			t.Errorf("%s stream: %+v", name, st)
		}
	}
	for _, s := range tb.dp.Snapshot().Sockets {
		if s.RxRingFull != 0 || s.RxDropped != 0 || s.FillRingEmpty != 0 {
			t.Errorf("socket %+v: kernel drops", s)
		}
	}
	tb.checkFrames()
}

// VM to VM: a guest's frames to a receiver whose ring is full are parked,
// not dropped, and arrive in order once it posts buffers.
func TestParkedFramesReachStalledGuest(t *testing.T) {
	tb := newTestbed(t, 1)
	release := tb.addStalledVM("slow", 1, mac1, false)
	sender := tb.addVM("sender", 2, mac2, 0, 1, "")
	const ring, parked = 256, 500
	if _, err := sender.Generate(context.Background(), frontend.Traffic{Dst: mustMAC(mac1), Count: ring + parked, Size: 64, Rate: 20000, Stream: 5}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "every frame in the guest's ring or parked", func() (bool, string) {
		vs := tb.vmStats("slow")
		return vs.RxPackets == ring && tb.vmStats("sender").TxPackets == ring+parked, fmt.Sprintf("slow %+v sender %+v", vs, tb.vmStats("sender"))
	})
	if vs := tb.vmStats("slow"); len(vs.DropsByReason) != 0 {
		t.Fatalf("frames dropped with the guest's ring full: %v", vs.DropsByReason)
	}
	release()
	g := tb.guests["slow"]
	waitRx(t, "slow", g, ring+parked)
	if vs := tb.vmStats("slow"); vs.RxPackets != ring+parked || len(vs.DropsByReason) != 0 {
		t.Errorf("slow: rx %d drops %v; want %d, no drop", vs.RxPackets, vs.DropsByReason, ring+parked)
	}
	if st := g.Stats().Streams; len(st) != 1 || st[0].Lost != 0 || st[0].Reordered != 0 || st[0].Duplicates != 0 {
		t.Errorf("slow stream: %+v", st)
	}
	tb.checkFrames()
}

// A receiver that never posts buffers, sent to by a guest that also sends
// to a witness VM: its parked frames stop at its cap (the only holder:
// half the hold budget), the sender's frames to the witness arrive
// exactly and in order, nothing waits behind the hostile receiver.
func TestParkingGuestCannotDrainUMEM(t *testing.T) {
	// A small UMEM: the only holder's cap, half the hold budget of
	// 4096/2, is 1024 (as large as its socket ring).
	tb := newTestbedCfg(t, 1, func(c *Config) { c.FramesPerQueue = 4096 })
	tb.addStalledVM("hostile", 1, mac1, false)
	sender := tb.addVM("sender", 2, mac2, 0, 1, "")
	witness := tb.addVM("witness", 3, mac3, 0, 1, "")
	const flood, n, ring, capacity = 4000, 2000, 256, 4096 / 2 / 2
	done := make(chan error, 1)
	go func() {
		_, err := sender.Generate(context.Background(), frontend.Traffic{Dst: mustMAC(mac1), Count: flood, Size: 64, Rate: 40000, Stream: 6})
		done <- err
	}()
	if _, err := sender.Generate(context.Background(), frontend.Traffic{Dst: mustMAC(mac3), Count: n, Size: 64, Rate: 20000, Stream: 7}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitRx(t, "witness", witness, n)
	if vs := tb.vmStats("witness"); vs.RxPackets != n || len(vs.DropsByReason) != 0 {
		t.Errorf("witness: rx %d drops %v; want %d, no drop", vs.RxPackets, vs.DropsByReason, n)
	}
	if st := witness.Stats().Streams; len(st) != 1 || st[0].Lost != 0 || st[0].Reordered != 0 || st[0].Duplicates != 0 {
		t.Errorf("witness stream: %+v", st)
	}
	testenv.Eventually(t, "hostile parking its cap", func() (bool, string) {
		vs := tb.vmStats("hostile")
		parked := flood - vs.RxPackets - vs.DropsByReason["virtqueue_full"]
		return tb.vmStats("sender").TxPackets == flood+n && vs.RxPackets == ring && parked == capacity && len(vs.DropsByReason) == 1,
			fmt.Sprintf("hostile %+v: %d parked, cap %d; sender %+v", vs, parked, capacity, tb.vmStats("sender"))
	})
	for _, s := range tb.dp.Snapshot().Sockets {
		if s.FillRingEmpty != 0 {
			t.Errorf("socket %+v: the fill ring ran empty", s)
		}
	}
}
