package xsk

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/internal/xdplive"
)

// xdpTxBed is a veth pair with an XDPTx on the host end (the NIC) and, on
// the wire end, an AF_XDP socket that receives every frame byte for byte
// (its XDP program also makes the host end take XDP frames).
type xdpTxBed struct {
	*testbed
	x    *XDPTx
	wq   *Queue // the receiving queue on the wire end
	recv []Desc
}

func newXDPTxBed(t *testing.T) *xdpTxBed {
	t.Helper()
	tb := newTestbed(t, 1)
	prog, xsks := minimalRedirect(t)
	attachXDP(t, tb.wireNS, prog, tb.wire.Index)
	rev := &testbed{hostNS: tb.wireNS, wireNS: tb.hostNS, host: tb.wire, wire: tb.host}
	wq := openQueue(t, rev, newUMEM(t, UMEMConfig{NumFrames: 4096}), 0, QueueConfig{FillSize: 2048, CompSize: 64, RxSize: 2048, TxSize: -1})
	wq.Refill(0)
	if err := xsks.Put(uint32(0), uint32(wq.Primary().FD())); err != nil {
		t.Fatal(err)
	}
	x := newXDPTx(t, tb)
	return &xdpTxBed{testbed: tb, x: x, wq: wq, recv: make([]Desc, 256)}
}

func newXDPTx(t testing.TB, tb *testbed) *XDPTx {
	t.Helper()
	x, err := NewXDPTx(tb.host.Index, 1)
	if err != nil {
		testenv.Skip(t, "XDP transmit: %v", err)
	}
	t.Cleanup(func() { x.Close() })
	if !x.Keeper() {
		t.Fatal("no dispatcher keeper (as root)")
	}
	return x
}

// inHost runs fn on a locked thread in the host end's namespace with the
// queue's transmit state.
func (b *xdpTxBed) inHost(t *testing.T, fn func(tq *XDPTxQueue) error) {
	t.Helper()
	err := b.hostNS.Do(func() error {
		tq, err := b.x.Queue(0)
		if err != nil {
			return err
		}
		return fn(tq)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// receive collects want test frames from the wire end (copies), or fails;
// the host end's own frames (IPv6 neighbour discovery) are left out.
func (b *xdpTxBed) receive(t *testing.T, want int) [][]byte {
	t.Helper()
	var got [][]byte
	testenv.Eventually(t, "frames at the wire end", func() (bool, string) {
		n := b.wq.Primary().Receive(b.recv)
		for _, d := range b.recv[:n] {
			if f := b.wq.Frame(d); bytes.Equal(f[6:11], vmMAC(0)[:5]) {
				got = append(got, bytes.Clone(f))
			}
		}
		b.wq.FreeDescs(b.recv[:n])
		b.wq.Refill(0)
		return len(got) >= want, fmt.Sprintf("%d of %d", len(got), want)
	})
	return got
}

// xdpTxFrames are frames of every length 60..1514 the test uses, from
// several source MACs (VMs), some VLAN-tagged, each with its index in it.
func xdpTxFrames(tb *testbed, n int) [][]byte {
	sizes := []int{60, 61, 64, 65, 127, 128, 256, 511, 1000, 1499, 1514}
	out := make([][]byte, n)
	for i := range out {
		size := sizes[i%len(sizes)]
		f := buildFrame(make([]byte, 2048), tb.wire.MAC, vmMAC(i%5), uint16(i), 9, payload{Stream: 7, Seq: uint64(i)}, size)[:size]
		if i%3 == 0 { // a VM with a VLAN: the tag in the frame
			tagged := append(bytes.Clone(f[:12]), 0x81, 0x00, 0, byte(10+i%5))
			f = append(tagged, f[12:]...)
		}
		for j := 60; j < len(f); j++ {
			f[j] = byte(i*7 + j)
		}
		out[i] = f
	}
	return out
}

// TestXDPTxDelivery: frames of 60..1518 bytes, tagged and untagged, of
// several VMs, in one call and in small ones, reach the wire end exactly:
// all of them, in order, byte for byte.
func TestXDPTxDelivery(t *testing.T) {
	b := newXDPTxBed(t)
	frames := xdpTxFrames(b.testbed, XDPTxMaxBatch+40)
	var stats XDPTxStats
	b.inHost(t, func(tq *XDPTxQueue) error {
		for start := 0; start < len(frames); {
			batch := min(XDPTxMaxBatch, len(frames)-start)
			if start > 0 {
				batch = min(7, len(frames)-start) // small calls too
			}
			for _, f := range frames[start : start+batch] {
				if !tq.Add(f) {
					return fmt.Errorf("Add refused a %d-byte frame", len(f))
				}
			}
			if tq.Len() != batch {
				return fmt.Errorf("Len %d, want %d", tq.Len(), batch)
			}
			done, err := tq.Flush()
			if err != nil || done != batch {
				return fmt.Errorf("Flush: %d of %d, %v", done, batch, err)
			}
			start += batch
		}
		stats = tq.Stats()
		return nil
	})
	if stats != (XDPTxStats{Sent: uint64(len(frames)), XmitSent: uint64(len(frames))}) {
		t.Fatalf("stats %+v, want %d sent and no drops", stats, len(frames))
	}
	got := b.receive(t, len(frames))
	if len(got) != len(frames) {
		t.Fatalf("%d frames at the wire end, want %d", len(got), len(frames))
	}
	for i := range frames {
		if !bytes.Equal(got[i], frames[i]) {
			t.Fatalf("frame %d (%d bytes): got %d bytes %x..., want %x...", i, len(frames[i]), len(got[i]), got[i][:min(32, len(got[i]))], frames[i][:32])
		}
	}
}

// TestXDPTxMalformed: a staged length out of range and runs past the
// staged count are dropped and counted; the frames around them go out.
func TestXDPTxMalformed(t *testing.T) {
	b := newXDPTxBed(t)
	frames := xdpTxFrames(b.testbed, 4)
	var stats XDPTxStats
	var refused []int
	b.inHost(t, func(tq *XDPTxQueue) error {
		for _, n := range []int{0, 13, XDPTxMaxFrame + 1} {
			if tq.Add(make([]byte, n)) {
				refused = append(refused, n)
			}
		}
		for _, f := range frames {
			tq.Add(f)
		}
		// As if the map were corrupted: lengths the program must refuse.
		tq.st.Len[1] = 3
		tq.st.Len[2] = XDPTxMaxFrame + 100
		if done, err := tq.Flush(); err != nil || done != 4 {
			return fmt.Errorf("Flush: %d, %v", done, err)
		}
		// Runs past the staged count (Flush never asks for them).
		tq.st.N, tq.st.Next = 1, 1
		tq.attr.Repeat = 5
		if errno := xdplive.Run(&tq.attr); errno != 0 {
			return errno
		}
		stats = tq.Stats()
		return nil
	})
	if len(refused) > 0 {
		t.Fatalf("Add took frames of %v bytes", refused)
	}
	want := XDPTxStats{Sent: 2, BadLen: 2, Overrun: 5, XmitSent: 2}
	if stats != want {
		t.Fatalf("stats %+v, want %+v", stats, want)
	}
	got := b.receive(t, 2)
	if len(got) != 2 || !bytes.Equal(got[0], frames[0]) || !bytes.Equal(got[1], frames[3]) {
		t.Fatalf("wire end got %d frames, want frames 0 and 3", len(got))
	}
	// Nothing else arrives.
	if got := b.receive(t, 0); len(got) != 0 {
		t.Fatalf("%d more frames at the wire end", len(got))
	}
}

// TestXDPTxDriverDrops: a veth whose peer has no XDP refuses XDP frames
// in ndo_xdp_xmit; BPF_PROG_RUN still succeeds, and Flush says so through
// the tracepoint's count, and Dropped names every frame, in order.
func TestXDPTxDriverDrops(t *testing.T) {
	tb := newTestbed(t, 1)
	x := newXDPTx(t, tb)
	if !x.XmitWatched() {
		testenv.Skip(t, "no tracepoint xdp:xdp_devmap_xmit (tracefs)")
	}
	frames := xdpTxFrames(tb, 40)
	var stats XDPTxStats
	var done int
	var err error
	var dropped []uint16
	var complete bool
	if e := tb.hostNS.Do(func() error {
		tq, e := x.Queue(0)
		if e != nil {
			return e
		}
		for _, f := range frames {
			tq.Add(f)
		}
		done, err = tq.Flush()
		stats = tq.Stats()
		d, c := tq.Dropped()
		dropped, complete = slices.Clone(d), c
		return nil
	}); e != nil {
		t.Fatal(e)
	}
	if !errors.Is(err, ErrXmitDrops) || errors.Is(err, ErrXmitFull) || done != len(frames) {
		t.Fatalf("Flush: %d, %v; want %d, ErrXmitDrops (not a full ring: the driver refuses)", done, err, len(frames))
	}
	if stats.Sent != uint64(len(frames)) || stats.XmitDrops != uint64(len(frames)) || stats.XmitSent != 0 || stats.XmitErrs == 0 {
		t.Fatalf("stats %+v: want %d sent by the program, all dropped by the driver", stats, len(frames))
	}
	if !complete || len(dropped) != len(frames) {
		t.Fatalf("Dropped: %d frames (complete %v), want all %d", len(dropped), complete, len(frames))
	}
	for i, d := range dropped {
		if int(d) != i {
			t.Fatalf("Dropped[%d] = %d: not the staged order", i, d)
		}
	}
}

// TestXDPTxNdoXmit: a veth takes XDP frames only while its peer has XDP;
// NdoXmit reports both states.
func TestXDPTxNdoXmit(t *testing.T) {
	tb := newTestbed(t, 1)
	check := func(want bool) {
		t.Helper()
		var got bool
		err := tb.hostNS.Do(func() error {
			var err error
			got, err = NdoXmit(tb.host.Index)
			return err
		})
		if err != nil {
			testenv.Skip(t, "xdp-features: %v", err)
		}
		if got != want {
			t.Fatalf("NdoXmit = %v, want %v", got, want)
		}
	}
	check(false)
	prog, _ := countingDrop(t)
	l := attachXDP(t, tb.wireNS, prog, tb.wire.Index)
	check(true)
	l.Close()
	check(false)
}

// TestXDPTxWrongNamespace: a queue's thread must be in the interface's
// namespace (the kernel resolves the index in the caller's): a thread in a
// namespace with only a loopback is refused.
func TestXDPTxWrongNamespace(t *testing.T) {
	tb := newTestbed(t, 1)
	x := newXDPTx(t, tb)
	err := netnstest.New(t).Do(func() error {
		_, err := x.Queue(0)
		return err
	})
	if err == nil {
		t.Fatal("Queue accepted a thread outside the interface's namespace")
	}
}

// TestXDPTxNoAllocation: staging and flushing allocate nothing.
func TestXDPTxNoAllocation(t *testing.T) {
	b := newXDPTxBed(t)
	frame := xdpTxFrames(b.testbed, 1)[0]
	var allocs float64
	b.inHost(t, func(tq *XDPTxQueue) error {
		var err error
		allocs = testing.AllocsPerRun(50, func() {
			for range 32 {
				tq.Add(frame)
			}
			if _, e := tq.Flush(); e != nil {
				err = e
			}
		})
		return err
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per flush of 32 frames", allocs)
	}
}

// TestXDPTxDroppedTail: with the receiver's NAPI threaded, two calls of
// 256 frames back to back overrun the veth's 256-entry ring, and the
// driver drops the tails of bulks (kernel/bpf/devmap.c bq_xmit_all).
// Dropped must name exactly the frames that did not arrive: the wire end
// gets the others, in order, byte for byte. Rounds repeat until one has
// drops (on a loaded machine the ring may keep up for a while).
func TestXDPTxDroppedTail(t *testing.T) {
	b := newXDPTxBed(t)
	if !b.x.XmitWatched() {
		testenv.Skip(t, "no xdp tracepoints (tracefs)")
	}
	threaded := "/sys/class/net/" + b.wire.Name + "/threaded"
	b.wireNS.Run(t, "sh", "-c", "echo 1 > "+threaded)
	frames := xdpTxFrames(b.testbed, 2*XDPTxMaxBatch)
	var lost []int
	withDrops := 0
	for round := 0; round < 40 && withDrops < 3; round++ {
		lost = lost[:0]
		b.inHost(t, func(tq *XDPTxQueue) error {
			for call := 0; call < 2; call++ {
				for _, f := range frames[call*XDPTxMaxBatch : (call+1)*XDPTxMaxBatch] {
					tq.Add(f)
				}
				done, err := tq.Flush()
				if err != nil && !errors.Is(err, ErrXmitDrops) || done != XDPTxMaxBatch {
					return fmt.Errorf("Flush: %d, %v", done, err)
				}
				d, complete := tq.Dropped()
				if len(d) > 0 && !errors.Is(err, ErrXmitFull) {
					return fmt.Errorf("call %d: %d dropped, err %v: want ErrXmitFull (a full ring)", call, len(d), err)
				}
				if !complete {
					return fmt.Errorf("call %d: drops Dropped cannot name (stats %+v)", call, tq.Stats())
				}
				for _, i := range d {
					lost = append(lost, call*XDPTxMaxBatch+int(i))
				}
			}
			return nil
		})
		want := make([][]byte, 0, len(frames))
		for i, f := range frames {
			if !slices.Contains(lost, i) {
				want = append(want, f)
			}
		}
		got := b.receive(t, len(want))
		if len(got) != len(want) {
			t.Fatalf("round %d: %d frames at the wire end, want %d (%d named dropped)", round, len(got), len(want), len(lost))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("round %d: frame %d at the wire end is not the %dth not named dropped (%d named: %v)", round, i, i, len(lost), lost)
			}
		}
		if len(lost) > 0 {
			withDrops++
			t.Logf("round %d: %d of %d dropped by the driver, named (first %d, last %d); the rest arrived", round, len(lost), len(frames), lost[0], lost[len(lost)-1])
		}
	}
	if withDrops == 0 {
		t.Log("no round had drops: the receiver kept up (nothing to name)")
	}
}
