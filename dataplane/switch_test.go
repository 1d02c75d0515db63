package dataplane

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/vmq/vmq/guest/frontend"
	tbed "github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

const (
	mac1 = "02:00:00:00:00:01"
	mac2 = "02:00:00:00:00:02"
	mac3 = "02:00:00:00:00:03"
	// A MAC no VM has: frames to it go to the host stack of the NIC.
	macUnknown = "02:00:00:00:00:99"
	// The wire side's own address, as a destination for guest frames.
	macWire = "02:00:00:00:00:ee"
)

// The addresses frontend.Generate uses when given none.
var (
	guestSrcIP = netip.MustParseAddr("198.18.0.1")
	guestDstIP = netip.MustParseAddr("198.18.0.2")
)

// Frames from the wire reach exactly the VM their (MAC, VLAN) names; the
// same MAC on another VLAN and unknown MACs go to the host stack.
func TestWireToGuestsExact(t *testing.T) {
	tb := newTestbed(t, 1)
	g1 := tb.addVM("vm1", 1, mac1, 0, 1, "")
	g2 := tb.addVM("vm2", 2, mac2, 0, 1, "")
	g3 := tb.addVM("vm3", 3, mac3, 100, 1, "")

	const n = 3000
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}, {MAC: mustMAC(mac2)}}, Size: 64, Stream: 10}, n)
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac3), VLAN: 100}}, Size: 512, Stream: 20}, n)
	// Not steered: an unknown MAC, and vm1's MAC on a VLAN it is not on.
	before := tb.dp.Snapshot().Filter.Passed
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(macUnknown)}}, Size: 64, Stream: 30}, 500)
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1), VLAN: 7}}, Size: 64, Stream: 31}, 500)

	waitRx(t, "vm1", g1, n)
	waitRx(t, "vm2", g2, n)
	waitRx(t, "vm3", g3, n)
	for name, g := range map[string]*frontend.Guest{"vm1": g1, "vm2": g2, "vm3": g3} {
		st := g.Stats()
		if len(st.Streams) != 1 || st.Streams[0].Received != n || st.Streams[0].Lost != 0 || st.Streams[0].Duplicates != 0 {
			t.Errorf("%s streams: %+v", name, st.Streams)
		}
		vs := tb.vmStats(name)
		if vs.RxPackets != n || vs.FilterPackets != n || len(vs.DropsByReason) != 0 {
			t.Errorf("%s dataplane counters: rx %d filter %d drops %v", name, vs.RxPackets, vs.FilterPackets, vs.DropsByReason)
		}
	}
	if st := g3.Stats(); st.RxBytes != n*(512-4) {
		t.Errorf("vm3 received %d bytes, want %d (tag stripped)", st.RxBytes, n*(512-4))
	}
	if w := tb.dp.Snapshot().Workers[0]; w.VirtQueues != 6 || w.XDPSockets != 7 || w.FreeFrames == 0 {
		t.Errorf("worker: %d virtqueues, %d sockets, %d free frames; want 6, 7 (3 VMs' receive and transmit + flood), some", w.VirtQueues, w.XDPSockets, w.FreeFrames)
	}
	if got := tb.dp.Snapshot().Filter.Passed - before; got != 1000 {
		t.Errorf("host stack got %d frames, want 1000", got)
	}
}

// A guest's frames to a MAC outside reach the wire byte for byte, tagged
// with the VM's access VLAN when it has one.
func TestGuestToWireByteExact(t *testing.T) {
	tb := newTestbed(t, 1)
	g1 := tb.addVM("vm1", 1, mac1, 0, 1, "")
	g3 := tb.addVM("vm3", 3, mac3, 100, 1, "")
	capture := tb.Capture()

	const n = 200
	ctx := context.Background()
	for _, g := range []*frontend.Guest{g1, g3} {
		sent, err := g.Generate(ctx, frontend.Traffic{Dst: mustMAC(macWire), Count: n, Size: 300, Rate: 20000})
		if err != nil || sent != n {
			t.Fatalf("generate: sent %d, %v", sent, err)
		}
	}
	fromVM := func(mac string) func([]byte) bool {
		src := mustMAC(mac)
		return func(f []byte) bool { return len(f) > 12 && bytes.Equal(f[6:12], src) }
	}
	testenv.Eventually(t, "frames on the wire", func() (bool, string) {
		a, b := len(capture.Matching(fromVM(mac1))), len(capture.Matching(fromVM(mac3)))
		return a >= n && b >= n, "captured " + itoa(a) + " and " + itoa(b)
	})
	time.Sleep(50 * time.Millisecond)
	untagged := capture.Matching(fromVM(mac1))
	tagged := capture.Matching(fromVM(mac3))
	if len(untagged) != n || len(tagged) != n {
		t.Fatalf("captured %d frames of vm1 and %d of vm3, want %d each", len(untagged), len(tagged), n)
	}
	// Rebuild what each guest sent: frame i carries seq i of stream 0.
	want1, _ := frontend.BuildUDP(frontend.UDPTemplate{Dst: mustMAC(macWire), Src: mustMAC(mac1), Size: 300, SrcIP: guestSrcIP, DstIP: guestDstIP, SrcPort: 9, DstPort: 9})
	for i, f := range untagged {
		p, ok := pktgen.ParseFrame(f)
		if !ok || p.Seq != uint64(i) {
			t.Fatalf("vm1 frame %d: payload %+v %v", i, p, ok)
		}
		if len(f) != 300 || !bytes.Equal(f[:pktgen.EthHdrLen+pktgen.IPv4HdrLen+pktgen.UDPHdrLen], want1[:42]) {
			t.Fatalf("vm1 frame %d differs from what the guest sent:\n% x\n% x", i, f[:42], want1[:42])
		}
	}
	for i, f := range tagged {
		if len(f) != 304 || f[12] != 0x81 || f[13] != 0x00 || (uint16(f[14])<<8|uint16(f[15]))&0xfff != 100 {
			t.Fatalf("vm3 frame %d not tagged with VLAN 100: % x", i, f[:18])
		}
		if p, ok := pktgen.ParseFrame(f); !ok || p.Seq != uint64(i) {
			t.Fatalf("vm3 frame %d: payload %+v %v", i, p, ok)
		}
	}
	if vs := tb.vmStats("vm1"); vs.TxPackets != n {
		t.Errorf("vm1 tx counter %d, want %d", vs.TxPackets, n)
	}
}

// Guest to guest stays off the wire; broadcast reaches every VM of the
// VLAN but the sender and no other; a spoofed source MAC is dropped.
func TestSwitchingBetweenGuests(t *testing.T) {
	tb := newTestbed(t, 1)
	g1 := tb.addVM("vm1", 1, mac1, 0, 1, "")
	g2 := tb.addVM("vm2", 2, mac2, 0, 1, "")
	g3 := tb.addVM("vm3", 3, mac3, 100, 1, "")
	g4 := tb.addVM("vm4", 4, "02:00:00:00:00:04", 100, 1, "")
	capture := tb.Capture()
	ctx := context.Background()

	const n = 500
	if _, err := g1.Generate(ctx, frontend.Traffic{Dst: mustMAC(mac2), Count: n, Rate: 20000, Stream: 1}); err != nil {
		t.Fatal(err)
	}
	waitRx(t, "vm2 (unicast from vm1)", g2, n)

	// Broadcast from a guest on VLAN 100: vm4 gets it, vm1 and vm2 don't, the wire does (tagged).
	bcast := mustMAC("ff:ff:ff:ff:ff:ff")
	if _, err := g3.Generate(ctx, frontend.Traffic{Dst: bcast, Count: 100, Rate: 20000, Stream: 2}); err != nil {
		t.Fatal(err)
	}
	waitRx(t, "vm4 (broadcast from vm3)", g4, 100)

	// Broadcast from the wire, untagged: vm1 and vm2 only.
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: bcast}}, Size: 64, Stream: 3}, 300)
	waitRx(t, "vm1 (broadcast from wire)", g1, 300)
	waitRx(t, "vm2 (unicast + broadcast)", g2, n+300)
	// Tagged 100 from the wire: vm3 and vm4.
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: bcast, VLAN: 100}}, Size: 64, Stream: 4}, 300)
	waitRx(t, "vm3 (tagged broadcast)", g3, 300)
	waitRx(t, "vm4 (both broadcasts)", g4, 400)

	// Spoofing: vm2 sends with vm1's source MAC; nothing arrives anywhere.
	spoof, err := frontend.BuildUDP(frontend.UDPTemplate{Dst: mustMAC(mac1), Src: mustMAC(mac1), Size: 66, SrcIP: guestSrcIP, DstIP: guestDstIP, SrcPort: 9, DstPort: 9})
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		for g2.Send(spoof) != nil {
			time.Sleep(time.Millisecond)
		}
	}
	testenv.Eventually(t, "spoofed drops", func() (bool, string) {
		vs := tb.vmStats("vm2")
		d := vs.DropsByReason["spoofed"]
		return d == 50, fmt.Sprintf("spoofed drops %d; vm2 %+v; guest %+v", d, vs, g2.Stats())
	})
	time.Sleep(50 * time.Millisecond)
	if got := g1.Stats().RxFrames; got != 300 {
		t.Errorf("vm1 received %d frames, want 300 (spoofed frames must not arrive)", got)
	}
	// The wire saw vm3's 100 broadcasts and none of the VM-to-VM unicast.
	wire := capture.Matching(func(f []byte) bool { return bytes.Equal(f[6:12], mustMAC(mac3)) || bytes.Equal(f[0:6], mustMAC(mac2)) })
	if len(wire) != 100 {
		t.Errorf("wire saw %d frames from vm3 or to vm2, want the 100 broadcasts", len(wire))
	}
	if vs := tb.vmStats("vm4"); vs.FloodCopies != 400 {
		t.Errorf("vm4 flood copies %d, want 400", vs.FloodCopies)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// The whole path allocates nothing per frame: wire → worker → guest and
// guest → worker → wire, counted over every goroutine of the process
// (dataplane, vhost-user backend, Go guest, generator).
func TestNoAllocationPerFrame(t *testing.T) {
	t.Run("socket", func(t *testing.T) { testNoAllocationPerFrame(t, false) })
	// Guest → wire through the XDP transmit (txpath.go) instead.
	t.Run("xdp", func(t *testing.T) { testNoAllocationPerFrame(t, true) })
}

func testNoAllocationPerFrame(t *testing.T, xdp bool) {
	tb := newTestbedOpts(t, tbed.Options{Queues: 1, PeerXDP: xdp}, func(c *Config) { c.XDPTxMinBatch = 1 })
	if xdp {
		waitTxPath(t, tb, "xdp")
	}
	g1 := tb.addVM("vm1", 1, mac1, 0, 1, "")
	g2 := tb.addVM("vm2", 2, mac2, 0, 1, "")
	spec := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 64, Stream: 1}
	tb.send(spec, 1000) // warm up: rings, stashes, maps
	waitRx(t, "vm1", g1, 1000)

	const n = 20000
	// The generator is loaded before counting: loading a BPF program
	// allocates, sending does not.
	tmpl, err := pktgen.NewTemplate(spec)
	if err != nil {
		t.Fatal(err)
	}
	var gen *pktgen.LiveGenerator
	if err := tb.Wire.Do(func() (err error) {
		gen, err = pktgen.NewLiveGenerator(tmpl, pktgen.LiveOptions{Ifindex: tb.Peer.Index})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer gen.Close()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := tb.Wire.Do(func() error { return tbed.SendPaced(gen, n) }); err != nil {
		t.Fatal(err)
	}
	sent, err := g2.Generate(context.Background(), frontend.Traffic{Dst: mustMAC(macWire), Count: n, Rate: 50000, Batch: 64})
	for g1.Stats().RxFrames < 1000+n {
		time.Sleep(10 * time.Millisecond)
	}
	runtime.ReadMemStats(&after)
	if err != nil || sent != n {
		t.Fatalf("generate: %d, %v", sent, err)
	}
	perFrame := float64(after.Mallocs-before.Mallocs) / (2 * n)
	t.Logf("%d allocations for %d frames: %.4f per frame", after.Mallocs-before.Mallocs, 2*n, perFrame)
	if perFrame > 0.03 { // what remains is per call of the generators, not per frame
		t.Fatalf("%.3f allocations per frame", perFrame)
	}
	if w := tb.dp.Snapshot().Workers[0]; xdp && w.TxXDPFrames < n/2 {
		t.Fatalf("only %d of %d frames to the wire went through XDP", w.TxXDPFrames, n)
	}
}
