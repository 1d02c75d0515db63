package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane/ntuple"
	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/guest/frontend"
	tbed "github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/internal/testpmd"
	"github.com/vmq/vmq/pktgen"
)

// wireSteer stands in for the NIC's flow rules on veth: the test sends a
// dedicated VM's frames on the peer's tx queue N, so they arrive on rx
// queue N as a rule would place them. It records what vmq asked.
type wireSteer struct {
	mu    sync.Mutex
	rules map[uint32]ntuple.Rule
}

func newWireSteer() *wireSteer { return &wireSteer{rules: map[uint32]ntuple.Rule{}} }

func (s *wireSteer) Steer(r ntuple.Rule) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules[r.Location] = r
	return nil
}

func (s *wireSteer) Unsteer(r ntuple.Rule) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.rules, r.Location)
	return nil
}

func (s *wireSteer) Reconcile(keep map[uint32]bool) ([]uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var del []uint32
	for l := range s.rules {
		if !keep[l] {
			delete(s.rules, l)
			del = append(del, l)
		}
	}
	return del, nil
}

func (s *wireSteer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.rules)
}

// exactFrames checks every frame a guest receives against the frame the
// template sent (untagged, as the guest sees it).
type exactFrames struct {
	tmpl        map[uint32]*pktgen.Template
	good, bad   atomic.Uint64
	firstBadMsg atomic.Pointer[string]
}

func (x *exactFrames) onFrame(_ int, f []byte) {
	p, ok := pktgen.ParseFrame(f)
	var want []byte
	if ok {
		if t := x.tmpl[p.Stream]; t != nil {
			want = t.Frame(p.Seq, p.TimestampNS)
			if t.Tags() > 0 { // the guest sees it untagged
				want = append(want[:12:12], want[16:]...)
			}
		}
	}
	if want != nil && bytes.Equal(f, want) {
		x.good.Add(1)
		return
	}
	x.bad.Add(1)
	msg := fmt.Sprintf("frame of %d bytes (payload %+v ok=%v) differs from the one sent (%d bytes)", len(f), p, ok, len(want))
	x.firstBadMsg.CompareAndSwap(nil, &msg)
}

func mustTemplate(t *testing.T, spec pktgen.FlowSpec) *pktgen.Template {
	tmpl, err := pktgen.NewTemplate(spec)
	if err != nil {
		t.Fatal(err)
	}
	return tmpl
}

// dedicatedBed: a 2-queue veth, queue 0 shared (one worker), queue 1
// free for a dedicated VM, steered from the wire.
func dedicatedBed(t *testing.T, opts ...func(*Config)) (*testbed, *wireSteer) {
	if runtime.NumCPU() < 2 {
		testenv.Skip(t, "needs 2 CPUs to place frames on 2 veth queues")
	}
	steer := newWireSteer()
	tb := newTestbedCfg(t, 2, func(c *Config) {
		c.Queues = []int{0}
		c.Steer = steer
		for _, o := range opts {
			o(c)
		}
	})
	return tb, steer
}

func (tb *testbed) addDedicatedVM(name string, slot uint32, mac string, vlan uint16, cfg frontend.Config) *frontend.Guest {
	t := tb.t
	t.Helper()
	sock := tb.Socket(name)
	tb.addPort(VM{Name: name, Slot: slot, MAC: mustMAC(mac), VLAN: vlan, Socket: sock, QueuePairs: 1,
		Dedicated: DedicatedRequired, DedicatedQueue: 1})
	g := tbed.DialGuest(t, name, sock, cfg)
	tb.guests[name] = g
	tb.waitRunning(name, 2)
	return g
}

// TestDedicatedQueueDirect: frames on the dedicated queue land in the
// guest's buffers with no copy by the worker (its copied-bytes counter
// stays 0), exact in count and in every byte, at 64 and 1514 bytes,
// while a shared VM on the other queue gets its frames by copy as before;
// with the guest on split and on packed rings.
func TestDedicatedQueueDirect(t *testing.T) {
	for _, packed := range []bool{false, true} {
		name := map[bool]string{false: "split", true: "packed"}[packed]
		t.Run(name, func(t *testing.T) { testDedicatedQueueDirect(t, packed) })
	}
}

func testDedicatedQueueDirect(t *testing.T, packed bool) {
	tb, steer := dedicatedBed(t)
	dedSpec := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 64, Stream: 1}
	bigSpec := dedSpec
	bigSpec.Size, bigSpec.Stream = 1514, 2
	x := &exactFrames{tmpl: map[uint32]*pktgen.Template{1: mustTemplate(t, dedSpec), 2: mustTemplate(t, bigSpec)}}
	cfg := tbed.GuestConfig(mac1, 1, "")
	cfg.OnFrame = x.onFrame
	cfg.PackedRing = packed
	ded := tb.addDedicatedVM("ded", 1, mac1, 0, cfg)
	if got := ded.Features()&virtio.FRingPacked != 0; got != packed {
		t.Fatalf("features %#x: RING_PACKED %v, want %v", ded.Features(), got, packed)
	}
	sh := tb.addVM("sh", 2, mac2, 0, 1, "")
	if steer.count() != 1 {
		t.Fatalf("%d flow rules, want 1", steer.count())
	}

	const n = 3000
	tb.SendOnCPU(1, dedSpec, n) // queue 1: the dedicated queue
	tb.SendOnCPU(1, bigSpec, n)
	shSpec := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac2)}}, Size: 64, Stream: 3}
	tb.SendOnCPU(0, shSpec, n) // queue 0: shared

	waitRx(t, "ded", ded, 2*n)
	waitRx(t, "sh", sh, n)
	if b := x.bad.Load(); b != 0 {
		t.Fatalf("%d frames not byte-exact: %s", b, *x.firstBadMsg.Load())
	}
	if g := x.good.Load(); g != 2*n {
		t.Fatalf("%d byte-exact frames, want %d", g, 2*n)
	}
	vs := tb.vmStats("ded")
	d := vs.Dedicated
	if d == nil || d.State != "direct" || d.Queue != 1 {
		t.Fatalf("dedicated stats %+v", d)
	}
	if vs.RxCopiedBytes != 0 {
		t.Fatalf("worker copied %d bytes into the dedicated guest, want 0", vs.RxCopiedBytes)
	}
	wantBytes := uint64(n * (x.tmpl[1].FrameLen() + x.tmpl[2].FrameLen()))
	if d.Frames != 2*n || d.Bytes != wantBytes || vs.RxPackets != 2*n {
		t.Fatalf("direct frames %d bytes %d rx %d, want %d, %d", d.Frames, d.Bytes, vs.RxPackets, 2*n, wantBytes)
	}
	if d.Unmatched != 0 || d.Unsuitable != 0 || len(vs.DropsByReason) != 0 {
		t.Fatalf("dedicated VM: unmatched %d unsuitable %d drops %v", d.Unmatched, d.Unsuitable, vs.DropsByReason)
	}
	ss := tb.vmStats("sh")
	if ss.Dedicated != nil || ss.RxCopiedBytes != ss.RxBytes || ss.RxPackets != n {
		t.Fatalf("shared VM: copied %d rx %d dedicated %+v", ss.RxCopiedBytes, ss.RxPackets, ss.Dedicated)
	}
	t.Logf("dedicated: %+v", *d)

	if err := tb.dp.RemoveVM(context.Background(), "ded"); err != nil {
		t.Fatal(err)
	}
	if steer.count() != 0 {
		t.Fatalf("flow rule left after RemoveVM: %d", steer.count())
	}
}

// TestDedicatedDisconnectUnderTraffic: the guest goes away and a new one
// connects while frames keep arriving on the dedicated queue; the socket
// closes before the memory goes (posted buffers come back), the new guest
// gets frames in place again, and nothing is ever copied.
func TestDedicatedDisconnectUnderTraffic(t *testing.T) {
	tb, _ := dedicatedBed(t)
	sock := tb.Socket("ded")
	tb.addPort(VM{Name: "ded", Slot: 1, MAC: mustMAC(mac1), Socket: sock, QueuePairs: 1,
		Dedicated: DedicatedRequired, DedicatedQueue: 1})
	g1, err := frontend.Dial(sock, tbed.GuestConfig(mac1, 1, ""))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g1.Run(ctx) }()
	tb.waitRunning("ded", 2)

	spec := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 256, Stream: 5}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		tb.SendOnCPU(1, spec, 30000) // 3 s at the paced rate
	}()
	testenv.Eventually(t, "first guest receives", func() (bool, string) {
		n := g1.Stats().RxFrames
		return n > 2000, fmt.Sprintf("%d frames", n)
	})
	cancel()
	g1.Close()
	<-done
	testenv.Eventually(t, "buffers returned after the disconnect", func() (bool, string) {
		d := tb.vmStats("ded").Dedicated
		return d.Posted == 0 && d.State == "waiting for the guest", fmt.Sprintf("%+v", *d)
	})
	// The first guest stopped reading when its context ended, a moment
	// before the disconnect: frames the queue completed into its ring in
	// that moment are delivered but not counted by it. So it cannot have
	// received more than the queue delivered until now, and the second
	// guest must receive exactly what the queue delivers from here on.
	base := tb.vmStats("ded").Dedicated.Frames
	if n := g1.Stats().RxFrames; n > base {
		t.Fatalf("first guest received %d frames, the dedicated queue delivered %d", n, base)
	}
	g2 := tbed.DialGuest(t, "ded2", sock, tbed.GuestConfig(mac1, 1, ""))
	tb.waitRunning("ded", 2)
	testenv.Eventually(t, "second guest receives", func() (bool, string) {
		n := g2.Stats().RxFrames
		return n > 2000, fmt.Sprintf("%d frames", n)
	})
	<-sent
	// The second guest may still be taking the last frames the queue
	// completed for it: wait until the counts agree.
	var vs VMStats
	testenv.Eventually(t, "the second guest received every frame the queue delivered to it", func() (bool, string) {
		vs = tb.vmStats("ded")
		got, want := g2.Stats().RxFrames, vs.Dedicated.Frames-base
		return got == want, fmt.Sprintf("second guest received %d frames, the dedicated queue delivered %d since it came", got, want)
	})
	d := vs.Dedicated
	if vs.RxCopiedBytes != 0 || d.State != "direct" || d.Unmatched != 0 || d.Fallbacks != 0 {
		t.Fatalf("after reconnect: copied %d, %+v", vs.RxCopiedBytes, *d)
	}
	t.Logf("g1 %d + g2 %d frames of 30000 (the rest arrived with no guest); %+v", g1.Stats().RxFrames, g2.Stats().RxFrames, *d)
}

// TestDedicatedQueueVLAN: on an access VLAN the tagged frame lands with
// its tag in the header's last 4 bytes; moving the 12 MAC bytes strips it
// and the guest gets the untagged frame byte-exact, with no payload copy.
func TestDedicatedQueueVLAN(t *testing.T) {
	tb, _ := dedicatedBed(t)
	spec := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1), VLAN: 100}}, Size: 1514, Stream: 4}
	x := &exactFrames{tmpl: map[uint32]*pktgen.Template{4: mustTemplate(t, spec)}}
	cfg := tbed.GuestConfig(mac1, 1, "")
	cfg.OnFrame = x.onFrame
	g := tb.addDedicatedVM("ded", 1, mac1, 100, cfg)
	const n = 2000
	tb.SendOnCPU(1, spec, n)
	waitRx(t, "ded", g, n)
	if b := x.bad.Load(); b != 0 {
		t.Fatalf("%d frames not byte-exact: %s", b, *x.firstBadMsg.Load())
	}
	vs := tb.vmStats("ded")
	if vs.RxCopiedBytes != 0 || vs.Dedicated.Frames != n || vs.RxBytes != uint64(n*(x.tmpl[4].FrameLen()-4)) {
		t.Fatalf("copied %d rx bytes %d, %+v", vs.RxCopiedBytes, vs.RxBytes, *vs.Dedicated)
	}
}

// TestDedicatedNtupleRefusedOnVeth: with the NIC's own flow rules (the
// default Steerer) veth refuses; a preferred VM runs shared, counted and
// with the reason, a required one is not added.
func TestDedicatedNtupleRefusedOnVeth(t *testing.T) {
	tb := newTestbedCfg(t, 2, func(c *Config) { c.Queues = []int{0} })
	pref := VM{Name: "pref", Slot: 1, MAC: mustMAC(mac1), Socket: tb.Socket("pref"), QueuePairs: 1,
		Dedicated: DedicatedPreferred, DedicatedQueue: -1}
	tb.addPort(pref)
	d := tb.vmStats("pref").Dedicated
	if d == nil || d.State != "shared (fallback)" || d.Fallbacks != 1 || d.Steering != "none" ||
		!strings.Contains(d.Reason, "no ntuple flow steering") {
		t.Fatalf("preferred on veth: %+v", d)
	}
	req := VM{Name: "req", Slot: 2, MAC: mustMAC(mac2), Socket: tb.Socket("req"), QueuePairs: 1,
		Dedicated: DedicatedRequired, DedicatedQueue: -1}
	err := tb.dp.AddVM(context.Background(), req)
	if !errors.Is(err, ntuple.ErrNotSupported) || !errors.Is(err, ErrNoDedicatedQueue) {
		t.Fatalf("required on veth: %v", err)
	}
	// Queue 0 is shared: a VM cannot have it.
	req.Socket, req.DedicatedQueue = tb.Socket("req2"), 0
	if err := tb.dp.AddVM(context.Background(), req); err == nil || !strings.Contains(err.Error(), "queue 0 is a shared queue") {
		t.Fatalf("required on the shared queue: %v", err)
	}
}

// TestDedicatedDPDKGuest: a DPDK virtio_user guest (testpmd rxonly, its
// memory a hugepage file) on a dedicated queue: its hugepage region is
// the UMEM, every frame lands in an mbuf in place, exactly, 0 bytes
// copied; on split and on packed rings.
func TestDedicatedDPDKGuest(t *testing.T) {
	testenv.RequireCommand(t, "dpdk-testpmd")
	for _, packed := range []bool{false, true} {
		name := map[bool]string{false: "split", true: "packed"}[packed]
		t.Run(name, func(t *testing.T) { testDedicatedDPDKGuest(t, packed) })
	}
}

func testDedicatedDPDKGuest(t *testing.T, packed bool) {
	tb, _ := dedicatedBed(t)
	vdev := "net_virtio_user0,path=" + tb.Socket("dpdk") + ",queues=1,queue_size=1024,mrg_rxbuf=1,mac=" + mac1
	prefix := "vmqded"
	if packed {
		vdev += ",packed_vq=1"
		prefix = "vmqdedp"
	}
	sock := tb.Socket("dpdk")
	tb.addPort(VM{Name: "dpdk", Slot: 1, MAC: mustMAC(mac1), Socket: sock, QueuePairs: 1,
		Dedicated: DedicatedRequired, DedicatedQueue: 1})
	pmd, err := testpmd.Start(t, testpmd.Config{Name: "virtio_user", Prefix: prefix, Lcores: "0@0,1@1", Mem: 128,
		EAL:   []string{"--single-file-segments", "--log-level=lib.eal:error"},
		Vdevs: []string{vdev},
		App:   []string{"--forward-mode=rxonly", "--rxq=1", "--txq=1", "--nb-cores=1", "--rxd=1024", "--txd=1024"}})
	if err != nil {
		t.Fatal(err)
	}
	tb.waitRunning("dpdk", 2)
	if p := tb.portStats("dpdk").Features&virtio.FRingPacked != 0; p != packed {
		t.Fatalf("RING_PACKED negotiated %v, want %v", p, packed)
	}
	// testpmd posts its receive buffers once it has grown its memory
	// after the device started (a new SET_MEM_TABLE); on a machine busy
	// with other DPDK processes that took 11 s once.
	testenv.EventuallyWithin(t, 30*time.Second, "buffers posted", func() (bool, string) {
		d := tb.vmStats("dpdk").Dedicated
		return d.State == "direct" && d.Posted > 0, fmt.Sprintf("%+v", *d)
	})
	const n = 3000
	for i, size := range []int{64, 1514} {
		tb.SendOnCPU(1, pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: size, Stream: uint32(20 + i)}, n)
	}
	testenv.Eventually(t, "frames in place", func() (bool, string) {
		d := tb.vmStats("dpdk").Dedicated
		return d.Frames >= 2*n, fmt.Sprintf("%+v", *d)
	})
	vs := tb.vmStats("dpdk")
	pmd.Stop()
	rx, _, err := pmd.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if rx != 2*n || vs.Dedicated.Frames != 2*n || vs.RxCopiedBytes != 0 {
		t.Fatalf("testpmd received %d, in place %d, copied %d bytes; want %d, %d, 0", rx, vs.Dedicated.Frames, vs.RxCopiedBytes, 2*n, 2*n)
	}
	t.Logf("DPDK guest: %+v", *vs.Dedicated)
}

// TestDedicatedReconcileSteering: after a restart, rules in vmq's range
// that no VM owns go; the running VMs' rules stay.
func TestDedicatedReconcileSteering(t *testing.T) {
	tb, steer := dedicatedBed(t)
	stale := ntuple.Rule{MAC: mustMAC(mac2), Queue: 1, Location: ntuple.FirstLocation + 9}
	steer.Steer(stale) // left by a vmqd that died
	tb.addPort(VM{Name: "ded", Slot: 1, MAC: mustMAC(mac1), Socket: tb.Socket("ded"), QueuePairs: 1,
		Dedicated: DedicatedRequired, DedicatedQueue: -1})
	if err := tb.dp.ReconcileSteering(); err != nil {
		t.Fatal(err)
	}
	steer.mu.Lock()
	_, staleLeft := steer.rules[stale.Location]
	r, kept := steer.rules[ntuple.FirstLocation+1]
	steer.mu.Unlock()
	if staleLeft || !kept || r.Queue != 1 {
		t.Fatalf("after reconcile: stale left %v, VM's rule %+v kept %v", staleLeft, r, kept)
	}
}

// TestDedicatedFallbackCopy: a guest whose buffers cannot take a frame in
// place (1 KiB mergeable buffers) gets a copying socket on its dedicated
// queue: the frames still arrive there, exact, and are counted as copied.
func TestDedicatedFallbackCopy(t *testing.T) {
	tb, _ := dedicatedBed(t)
	spec := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 1514, Stream: 6}
	x := &exactFrames{tmpl: map[uint32]*pktgen.Template{6: mustTemplate(t, spec)}}
	cfg := tbed.GuestConfig(mac1, 1, "")
	cfg.RxBufSize, cfg.OnFrame = 1024, x.onFrame
	g := tb.addDedicatedVM("small", 1, mac1, 0, cfg)
	testenv.Eventually(t, "fallback", func() (bool, string) {
		d := tb.vmStats("small").Dedicated
		return d.State == "copy (fallback)", fmt.Sprintf("%+v", *d)
	})
	const n = 2000
	tb.SendOnCPU(1, spec, n)
	waitRx(t, "small", g, n)
	vs := tb.vmStats("small")
	if x.bad.Load() != 0 || vs.RxCopiedBytes != vs.RxBytes || vs.RxPackets != n || vs.Dedicated.Frames != 0 ||
		!strings.Contains(vs.Dedicated.Reason, "cannot take a 1518-byte frame in place") {
		t.Fatalf("bad %d copied %d rx %d/%d, %+v", x.bad.Load(), vs.RxCopiedBytes, vs.RxPackets, vs.RxBytes, *vs.Dedicated)
	}
}
