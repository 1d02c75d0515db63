package dataplane

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/guest/frontend"
	tbed "github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// addPackedVM is addVM with a Go guest on packed rings (IN_ORDER too).
func (tb *testbed) addPackedVM(name string, slot uint32, mac string) *frontend.Guest {
	t := tb.t
	t.Helper()
	sock := tb.Socket(name)
	tb.addPort(VM{Name: name, Slot: slot, MAC: mustMAC(mac), Socket: sock, QueuePairs: 1})
	cfg := tbed.GuestConfig(mac, 1, "")
	cfg.PackedRing, cfg.InOrder = true, true
	g := tbed.DialGuest(t, name, sock, cfg)
	tb.guests[name] = g
	tb.waitRunning(name, 2)
	if f := g.Features(); f&virtio.FRingPacked == 0 || f&virtio.FInOrder == 0 {
		t.Fatalf("%s: features %#x lack RING_PACKED or IN_ORDER", name, f)
	}
	return g
}

// Guests on packed rings (vmq-guest's frontend) through vmq's workers:
// exact counts from the wire, between a packed and a split guest both
// ways, and to the wire.
func TestPackedGuests(t *testing.T) {
	tb := newTestbed(t, 1)
	gp := tb.addPackedVM("vmp", 1, mac1)
	gs := tb.addVM("vms", 2, mac2, 0, 1, "")
	capture := tb.Capture()
	ctx := context.Background()

	const n = 3000
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 1000, Stream: 10}, n)
	waitRx(t, "vmp (from the wire)", gp, n)

	if sent, err := gp.Generate(ctx, frontend.Traffic{Dst: mustMAC(mac2), Count: n, Rate: 5000, Stream: 1}); err != nil || sent != n {
		t.Fatalf("packed -> split: sent %d, %v", sent, err)
	}
	waitRx(t, "vms (from the packed guest)", gs, n)
	if sent, err := gs.Generate(ctx, frontend.Traffic{Dst: mustMAC(mac1), Count: n, Rate: 5000, Stream: 2}); err != nil || sent != n {
		t.Fatalf("split -> packed: sent %d, %v", sent, err)
	}
	waitRx(t, "vmp (from the split guest)", gp, 2*n)
	for _, st := range gp.Stats().Streams {
		if st.Received != n || st.Lost != 0 || st.Reordered != 0 || st.Duplicates != 0 {
			t.Errorf("packed guest stream %+v", st)
		}
	}

	if sent, err := gp.Generate(ctx, frontend.Traffic{Dst: mustMAC(macWire), Count: 500, Size: 300, Rate: 20000, Stream: 3}); err != nil || sent != 500 {
		t.Fatalf("packed -> wire: sent %d, %v", sent, err)
	}
	src := mustMAC(mac1)
	fromPacked := func(f []byte) bool { return len(f) == 300 && bytes.Equal(f[6:12], src) }
	testenv.Eventually(t, "frames on the wire", func() (bool, string) {
		c := len(capture.Matching(fromPacked))
		return c >= 500, "captured " + itoa(c)
	})
	time.Sleep(50 * time.Millisecond) // nothing more may come
	if c := len(capture.Matching(fromPacked)); c != 500 {
		t.Errorf("captured %d frames of the packed guest, want 500", c)
	}
	vs := tb.vmStats("vmp")
	if vs.RxPackets != 2*n || vs.TxPackets != n+500 || len(vs.DropsByReason) != 0 {
		t.Errorf("vmp counters: rx %d tx %d drops %v", vs.RxPackets, vs.TxPackets, vs.DropsByReason)
	}
}

// TestJumboPackedGuest: a Go guest (vmq-guest's library) on packed rings
// at MTU 9000 answers 9000-byte pings from the wire, receives 9014-byte
// frames (three 4 KiB mergeable buffers each), sends them to the wire and
// to a split-ring guest, exact in count.
func TestJumboPackedGuest(t *testing.T) {
	tb := newJumboBed(t, 1)
	const ip1 = "10.99.0.21"
	sock := tb.Socket("vmp")
	tb.addPort(VM{Name: "vmp", Slot: 1, MAC: mustMAC(mac1), Socket: sock, QueuePairs: 1, MTU: jumboMTU})
	cfg := tbed.GuestConfig(mac1, 1, ip1)
	cfg.MTU, cfg.RxBufSize = jumboMTU, 4096
	cfg.PackedRing, cfg.InOrder = true, true
	gp := tbed.DialGuest(t, "vmp", sock, cfg)
	tb.guests["vmp"] = gp
	tb.waitRunning("vmp", 2)
	if f := gp.Features(); f&virtio.FRingPacked == 0 {
		t.Fatalf("features %#x without RING_PACKED", f)
	}
	gs := tb.addJumboVM("vms", 2, mac2, 0, "")

	out := tb.PingFromWire(ip1, "-c", "10", "-i", "0.05", "-W", "5", "-s", "8972", "-M", "do")
	tbed.CheckPing(t, "wire -> packed guest, 9000-byte packets", out, 10)
	const n = 200
	tb.sendJumbo(mac1, 0, 9014, n, 10)
	tbed.WaitStream(t, "vmp", gp, 10, n)

	capture := tb.Capture()
	ctx := context.Background()
	if sent, err := gp.Generate(ctx, frontend.Traffic{Dst: mustMAC(macWire), Count: n, Size: 9014, Rate: 5000, Stream: 30}); err != nil || sent != n {
		t.Fatalf("generate: sent %d, %v", sent, err)
	}
	src := mustMAC(mac1)
	fromPacked := func(f []byte) bool { return len(f) == 9014 && bytes.Equal(f[6:12], src) }
	testenv.Eventually(t, "jumbo frames on the wire", func() (bool, string) {
		c := len(capture.Matching(fromPacked))
		return c >= n, "captured " + itoa(c)
	})
	if _, err := gp.Generate(ctx, frontend.Traffic{Dst: mustMAC(mac2), Count: n, Size: 9014, Rate: 5000, Stream: 40}); err != nil {
		t.Fatal(err)
	}
	tbed.WaitStream(t, "vms (from the packed guest)", gs, 40, n)
	if _, err := gs.Generate(ctx, frontend.Traffic{Dst: mustMAC(mac1), Count: n, Size: 9014, Rate: 5000, Stream: 41}); err != nil {
		t.Fatal(err)
	}
	tbed.WaitStream(t, "vmp (from the split guest)", gp, 41, n)
	checkNoDrops(t, tb.vmStats("vmp"))
	checkFramesBack(t, tb)
}
