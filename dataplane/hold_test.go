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
// most their cap of the queue's UMEM: the fill ring never runs empty, and
// a witness VM on the same worker gets every frame, exactly. Every frame
// sent to a hostile VM is delivered, held or counted dropped.
func TestHoldingGuestsCannotDrainUMEM(t *testing.T) {
	// A small UMEM, so the cap (4096/2/3 = 682 a VM) is what stops the
	// hostile VMs, not their socket rings (1024).
	tb := newTestbedCfg(t, 1, func(c *Config) { c.FramesPerQueue = 4096 })
	tb.addStalledVM("hostile1", 1, mac1, false)
	tb.addStalledVM("hostile2", 2, mac2, true)
	witness := tb.addVM("witness", 3, mac3, 0, 1, "")
	const flood, n, ring, capacity = 3000, 2000, 256, 4096 / 2 / 3
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
	for _, name := range []string{"hostile1", "hostile2"} {
		// Sent 2×flood each: in the guest's ring, dropped by the worker
		// (over the cap) or by the kernel (socket ring full), or held.
		var held uint64
		testenv.Eventually(t, name+" holding its cap", func() (bool, string) {
			vs, s := tb.vmStats(name), sockets()[name]
			out := vs.RxPackets + vs.DropsByReason["virtqueue_full"] + s.RxRingFull + s.RxDropped
			held = 2*flood - out
			return vs.RxPackets == ring && out <= 2*flood && held == capacity && len(vs.DropsByReason) <= 1,
				fmt.Sprintf("%s: %+v socket %+v: %d held, cap %d", name, vs, s, held, capacity)
		})
		t.Logf("%s: %d in its ring, %d held (cap %d), %+v", name, ring, held, capacity, tb.vmStats(name).DropsByReason)
	}
	for _, s := range sockets() {
		if s.FillRingEmpty != 0 {
			t.Errorf("socket %+v: the fill ring ran empty", s)
		}
	}
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
// to a witness VM: its parked frames stop at its cap, the sender's frames
// to the witness arrive exactly and in order, nothing waits behind the
// hostile receiver.
func TestParkingGuestCannotDrainUMEM(t *testing.T) {
	tb := newTestbedCfg(t, 1, func(c *Config) { c.FramesPerQueue = 4096 })
	tb.addStalledVM("hostile", 1, mac1, false)
	sender := tb.addVM("sender", 2, mac2, 0, 1, "")
	witness := tb.addVM("witness", 3, mac3, 0, 1, "")
	const flood, n, ring, capacity = 4000, 2000, 256, 4096 / 2 / 3
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
