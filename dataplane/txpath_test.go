package dataplane

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/vmq/vmq/guest/frontend"
	tbed "github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// waitTxPath waits for the worker to report path (it checks the NIC once
// a second).
func waitTxPath(t *testing.T, tb *testbed, path string) {
	t.Helper()
	testenv.Eventually(t, "worker tx path "+path, func() (bool, string) {
		w := tb.dp.Snapshot().Workers[0]
		return w.TxPath == path, fmt.Sprintf("tx path %q", w.TxPath)
	})
}

// guestsToWire has three VMs (one on VLAN 100) send n frames each of
// several sizes to the wire at once, and checks that the wire got every
// frame exactly once, in each VM's order, with the guest's bytes (and the
// VM's tag), and that each VM's tx counter is exact. It returns how many
// frames were sent.
func guestsToWire(t *testing.T, tb *testbed, gs []*frontend.Guest, macs []string, vlans []uint16, n int) int {
	t.Helper()
	capture := tb.Capture()
	names := []string{"vm1", "vm2", "vm3"}
	var txBefore []uint64
	for _, name := range names {
		txBefore = append(txBefore, tb.vmStats(name).TxPackets)
	}
	sizes := []int{66, 300, 1514}
	var wg sync.WaitGroup
	errs := make(chan error, len(gs))
	for i, g := range gs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k, size := range sizes {
				// Bursts of 64 as fast as the ring takes them: rounds
				// carry frames of several VMs.
				sent, err := g.Generate(context.Background(), frontend.Traffic{Dst: mustMAC(macWire), Count: uint64(n), Size: size, Batch: 64, Rate: 50000, Stream: uint32(10*i + k)})
				if err != nil || sent != uint64(n) {
					errs <- fmt.Errorf("vm %d generate %d B: %d, %v", i, size, sent, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := n * len(sizes)
	for i, mac := range macs {
		src := mustMAC(mac)
		fromVM := func(f []byte) bool { return len(f) > 12 && bytes.Equal(f[6:12], src) }
		frames := capture.WaitFor(t, "frames of "+mac+" on the wire", fromVM, total)
		for k, size := range sizes {
			want, err := frontend.BuildUDP(frontend.UDPTemplate{Dst: mustMAC(macWire), Src: src, Size: size, SrcIP: guestSrcIP, DstIP: guestDstIP, SrcPort: 9, DstPort: 9})
			if err != nil {
				t.Fatal(err)
			}
			if vlans[i] != 0 {
				want = append(append(bytes.Clone(want[:12]), 0x81, 0, byte(vlans[i]>>8), byte(vlans[i])), want[12:]...)
			}
			hdr := len(want) - size + pktgen.EthHdrLen + pktgen.IPv4HdrLen + pktgen.UDPHdrLen
			for j, f := range frames[k*n : (k+1)*n] {
				p, ok := pktgen.ParseFrame(f)
				if !ok || p.Stream != uint32(10*i+k) || p.Seq != uint64(j) {
					t.Fatalf("%s %d B frame %d: payload %+v %v (out of order or lost)", mac, size, j, p, ok)
				}
				if len(f) != len(want) || !bytes.Equal(f[:hdr], want[:hdr]) {
					t.Fatalf("%s %d B frame %d differs from what the guest sent:\n% x\n% x", mac, size, j, f[:hdr], want[:hdr])
				}
			}
		}
	}
	for i, name := range names {
		if vs := tb.vmStats(name); vs.TxPackets-txBefore[i] != uint64(total) || len(vs.DropsByReason) != 0 {
			t.Errorf("%s: tx %d, drops %v; want %d, none", name, vs.TxPackets-txBefore[i], vs.DropsByReason, total)
		}
	}
	return total * len(gs)
}

func txPathBed(t *testing.T, opts tbed.Options, change func(*Config)) (*testbed, []*frontend.Guest, []string, []uint16) {
	tb := newTestbedOpts(t, opts, change)
	macs := []string{mac1, mac2, mac3}
	vlans := []uint16{0, 0, 100}
	gs := []*frontend.Guest{
		tb.addVM("vm1", 1, mac1, 0, 1, ""),
		tb.addVM("vm2", 2, mac2, 0, 1, ""),
		tb.addVM("vm3", 3, mac3, 100, 1, ""),
	}
	return tb, gs, macs, vlans
}

// TestTxPathXDP: with a NIC that takes XDP frames, every round's wire
// frames (threshold 1) leave through the XDP call, exactly.
func TestTxPathXDP(t *testing.T) {
	tb, gs, macs, vlans := txPathBed(t, tbed.Options{PeerXDP: true}, func(c *Config) { c.XDPTxMinBatch = 1 })
	waitTxPath(t, tb, "xdp")
	total := guestsToWire(t, tb, gs, macs, vlans, 400)
	w := tb.dp.Snapshot().Workers[0]
	if w.TxXDPFrames != uint64(total) || w.TxSocketFrames != 0 || w.XDPTxFallbacks != 0 || w.XDPTxDrops != 0 {
		t.Fatalf("worker: %d frames by XDP in %d calls, %d by socket, %d fallbacks, %d drops; want %d, 0, 0, 0",
			w.TxXDPFrames, w.XDPTxCalls, w.TxSocketFrames, w.XDPTxFallbacks, w.XDPTxDrops, total)
	}
	t.Logf("%d frames in %d XDP calls", w.TxXDPFrames, w.XDPTxCalls)
	// Every UMEM frame of those went back to the allocator.
	testenv.Eventually(t, "no UMEM frame lost", func() (bool, string) {
		w := tb.dp.Snapshot().Workers[0]
		return w.FreeFrames+w.InFlightFrames == w.TotalFrames, fmt.Sprintf("free %d + in flight %d of %d", w.FreeFrames, w.InFlightFrames, w.TotalFrames)
	})
}

// TestTxPathThreshold: rounds below the threshold take the sockets even
// where XDP could carry them.
func TestTxPathThreshold(t *testing.T) {
	tb, gs, macs, vlans := txPathBed(t, tbed.Options{PeerXDP: true}, func(c *Config) { c.XDPTxMinBatch = 1 << 20 })
	waitTxPath(t, tb, "xdp")
	total := guestsToWire(t, tb, gs, macs, vlans, 200)
	if w := tb.dp.Snapshot().Workers[0]; w.TxSocketFrames != uint64(total) || w.TxXDPFrames != 0 || w.XDPTxCalls != 0 {
		t.Fatalf("worker: %d by socket, %d by XDP in %d calls; want all %d by socket", w.TxSocketFrames, w.TxXDPFrames, w.XDPTxCalls, total)
	}
}

// TestTxPathFallback: a NIC that cannot take XDP frames (a veth whose
// peer has no XDP) gets everything through the sockets; when the peer
// gains XDP the worker moves to XDP at the next check, and back when it
// loses it, losing nothing sent after the switch.
func TestTxPathFallback(t *testing.T) {
	tb, gs, macs, vlans := txPathBed(t, tbed.Options{}, func(c *Config) { c.XDPTxMinBatch = 1 })
	w0 := tb.dp.Snapshot().Workers[0]
	if w0.TxPath != "socket" {
		t.Fatalf("tx path %q without XDP on the peer, want socket", w0.TxPath)
	}
	total := guestsToWire(t, tb, gs, macs, vlans, 100)
	if w := tb.dp.Snapshot().Workers[0]; w.TxSocketFrames != uint64(total) || w.TxXDPFrames != 0 {
		t.Fatalf("worker: %d by socket, %d by XDP; want all %d by socket", w.TxSocketFrames, w.TxXDPFrames, total)
	}
	detach := tb.PassXDPOnPeer()
	waitTxPath(t, tb, "xdp")
	detach()
	waitTxPath(t, tb, "socket")
	before := tb.dp.Snapshot().Workers[0]
	total = guestsToWire(t, tb, gs, macs, vlans, 100)
	if w := tb.dp.Snapshot().Workers[0]; w.TxSocketFrames-before.TxSocketFrames != uint64(total) {
		t.Fatalf("worker: %d by socket after the peer lost XDP, want %d", w.TxSocketFrames-before.TxSocketFrames, total)
	}
}

// TestTxPathPeerLosesXDP: the peer loses XDP between two checks (none
// for an hour here) while frames flow: the driver refuses the first
// call's frames, the tracepoints say which, and the worker sends them
// again through the sockets and moves to the sockets at once: every
// frame reaches the wire once, in order (before this, 8-64 of 300 were
// lost).
func TestTxPathPeerLosesXDP(t *testing.T) {
	tb, gs, macs, vlans := txPathBed(t, tbed.Options{PeerXDP: true}, func(c *Config) {
		c.XDPTxMinBatch, c.XDPCheckEvery = 1, time.Hour
	})
	if !tb.dp.xdptx.XmitWatched() {
		testenv.Skip(t, "no xdp tracepoints (tracefs): a driver's drops are not counted")
	}
	waitTxPath(t, tb, "xdp")
	tb.DetachPeerXDP()
	capture := tb.Capture()
	const m = 300
	if sent, err := gs[0].Generate(context.Background(), frontend.Traffic{Dst: mustMAC(macWire), Count: m, Size: 200, Batch: 64, Rate: 50000, Stream: 77}); err != nil || sent != m {
		t.Fatalf("generate: %d, %v", sent, err)
	}
	mine := func(f []byte) bool { return len(f) > 12 && bytes.Equal(f[6:12], mustMAC(mac1)) }
	frames := capture.WaitFor(t, "every frame on the wire", mine, m)
	for i, f := range frames {
		if p, ok := pktgen.ParseFrame(f); !ok || p.Seq != uint64(i) {
			t.Fatalf("frame %d on the wire: %+v %v (lost, doubled or reordered)", i, p, ok)
		}
	}
	w := tb.dp.Snapshot().Workers[0]
	if w.XDPTxResent == 0 || w.XDPTxDrops != 0 || w.XDPTxFallbacks == 0 || w.TxPath != "socket" {
		t.Fatalf("worker after the peer lost XDP: %d resent, %d lost, %d failed calls, path %s; want some, none, some, socket",
			w.XDPTxResent, w.XDPTxDrops, w.XDPTxFallbacks, w.TxPath)
	}
	if v := vmOfSnap(tb.dp.Snapshot(), "vm1"); v.XDPTxResent != w.XDPTxResent {
		t.Fatalf("vm1 counts %d frames resent, the worker %d", v.XDPTxResent, w.XDPTxResent)
	}
	t.Logf("peer lost XDP: %d of %d frames refused by the driver, sent again through the socket", w.XDPTxResent, m)
	total := guestsToWire(t, tb, gs, macs, vlans, 100)
	if w2 := tb.dp.Snapshot().Workers[0]; w2.TxSocketFrames-w.TxSocketFrames != uint64(total) || w2.XDPTxResent != w.XDPTxResent {
		t.Fatalf("after the fallback: %d by socket (want %d), %d more resent", w2.TxSocketFrames-w.TxSocketFrames, total, w2.XDPTxResent-w.XDPTxResent)
	}
}

// TestTxPathSocketConfig: tx path socket loads no XDP transmit.
func TestTxPathSocketConfig(t *testing.T) {
	tb := newTestbedCfg(t, 1, func(c *Config) { c.TxPath = TxPathSocket })
	tb.PassXDPOnPeer()
	if tb.dp.xdptx != nil || tb.dp.workers[0].xtx.q != nil {
		t.Fatal("XDP transmit set up with tx path socket")
	}
	if _, err := ParseTxPath("bogus"); err == nil {
		t.Fatal("ParseTxPath took bogus")
	}
}
