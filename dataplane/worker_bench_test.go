package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/pktgen"
)

// BenchmarkWorkerRX measures one worker's cost per frame from the wire
// to Go guests, with 1 and 256 VMs on its queue: frames come from the
// live-frames generator (its thread pinned to CPU 0, where the veth runs
// the filter too), the worker is pinned to CPU 1. Each iteration sends
// 1<<16 frames at full speed, destinations rotating over the first "to"
// VMs (to=1: what 255 idle VMs cost the one with traffic; to=256: every
// frame for another VM), and waits until the worker has taken what
// reached the sockets.
//
// Metrics: worker-ns/frame is the worker's own busy cost (BusyRoundNS /
// BusyRoundFrames: timed rounds that moved frames), wall-ns/frame the
// elapsed time per frame moved, allocs/frame every allocation in the
// process (dataplane, guests, generator) per frame moved, delivered the
// share of sent frames the guests received, frames/round the frames
// moved per round that did work.
//
//	sudo taskset -c 0,1 go test -run '^$' -bench BenchmarkWorkerRX -benchtime 20x ./dataplane
func BenchmarkWorkerRX(b *testing.B) {
	for _, c := range []struct{ vms, to int }{{1, 1}, {256, 1}, {256, 256}} {
		b.Run(fmt.Sprintf("vms=%d/to=%d", c.vms, c.to), func(b *testing.B) { benchWorkerRX(b, c.vms, c.to) })
	}
}

const benchFramesPerOp = 1 << 16

// benchGuestRing is the Go guests' ring size (a starved testpmd's
// receive ring is about as short).
const benchGuestRing = 256

func benchWorkerRX(b *testing.B, nvm, nto int) {
	host, wire := netnstest.New(b), netnstest.New(b)
	nic, peer := netnstest.NewVethPair(b, host, wire, netnstest.VethOptions{Queues: 1, MTU: 1500})
	var filter *bpf.Filter
	err := host.Do(func() (err error) {
		if filter, err = bpf.Load(bpf.Config{MaxVMs: nvm, MaxQueues: 2}); err != nil {
			return err
		}
		_, err = filter.Attach(nic.Index, bpf.Native)
		return err
	})
	if err != nil {
		b.Fatalf("filter: %v", err)
	}
	b.Cleanup(func() { filter.Close() })
	h := host.Handle()
	dp, err := New(Config{Ifindex: nic.Index, Queues: []int{0}, Filter: filter,
		BusyPoll: 20 * time.Microsecond, Netns: &h, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatalf("dataplane: %v", err)
	}
	b.Cleanup(func() { dp.Close() })

	dir := b.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	guests := make([]*frontend.Guest, nvm)
	dests := make([]pktgen.Dest, nvm)
	for i := range nvm {
		hw := net.HardwareAddr{0x02, 0xbe, 0, 0, byte(i >> 8), byte(i)}
		name := fmt.Sprintf("vm%d", i+1)
		sock := filepath.Join(dir, name+".sock")
		vm := VM{Name: name, Slot: uint32(i + 1), MAC: hw, Socket: sock, QueuePairs: 1}
		if err := dp.AddVM(ctx, vm); err != nil {
			b.Fatalf("add %s: %v", name, err)
		}
		if err := filter.SetFilter(hw, 0, vm.Slot); err != nil {
			b.Fatal(err)
		}
		g := runBenchGuest(b, ctx, cancel, name, sock, frontend.Config{MAC: hw, MrgRxbuf: true, EventIdx: true, QueueSize: benchGuestRing})
		guests[i], dests[i] = g, pktgen.Dest{MAC: hw}
	}
	w := dp.workers[0]
	waitFor(b, "guests' queues attached", func() bool { return int(w.ctr.virtqueues.Load()) == 2*nvm })
	tid := pinWorker(b, w, 1)

	tmpl, err := pktgen.NewTemplate(pktgen.FlowSpec{Dests: dests[:nto], Size: 64, Stream: 1})
	if err != nil {
		b.Fatal(err)
	}
	sendLive := liveSender(b, wire, peer.Index, tmpl, 0)
	send := func() {
		sendLive(benchFramesPerOp)
		settle(w)
	}
	rx := func() (n uint64) {
		for _, g := range guests {
			n += g.Stats().RxFrames
		}
		return n
	}
	// Warm up: rings, stashes, maps, guests awake, and every receive
	// buffer of the guests written once, so that the worker's first
	// touches of guest pages (a minor fault per 4 KiB page and guest, 9%
	// of the worker's samples at 256 VMs with one send) are not measured:
	// sends until each guest has received a ring's worth (at most 16).
	minRx := func() uint64 {
		m := ^uint64(0)
		for _, g := range guests[:nto] {
			m = min(m, g.Stats().RxFrames)
		}
		return m
	}
	warm := 0
	for ; warm == 0 || warm < 16 && minRx() < benchGuestRing; warm++ {
		send()
	}
	b.Logf("warm-up: %d sends, the least a guest received %d", warm, minRx())
	frames0, ns0, timed0, rx0 := w.ctr.frames.Load(), w.ctr.busyRoundNS.Load(), w.ctr.busyRoundFrames.Load(), rx()
	batches0 := w.ctr.batches.Load()
	cpu0, flt0 := threadCPU(b, tid), threadFaults(b, tid)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	sent := 0
	for b.Loop() {
		send()
		sent += benchFramesPerOp
	}
	elapsed := time.Since(start)
	cpu, flt := threadCPU(b, tid)-cpu0, threadFaults(b, tid)-flt0
	runtime.ReadMemStats(&after)
	frames := w.ctr.frames.Load() - frames0
	timed := w.ctr.busyRoundFrames.Load() - timed0
	if frames == 0 || timed == 0 {
		b.Fatalf("the worker moved %d frames (%d in timed rounds)", frames, timed)
	}
	b.ReportMetric(float64(w.ctr.busyRoundNS.Load()-ns0)/float64(timed), "worker-ns/frame")
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(frames), "wall-ns/frame")
	b.ReportMetric(float64(cpu)/float64(frames), "worker-cpu-ns/frame")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(frames), "allocs/frame")
	// Page faults of the worker's thread (first touches of guest pages
	// are what the warm-up is for).
	b.ReportMetric(float64(flt)/float64(frames), "worker-faults/frame")
	b.ReportMetric(float64(frames)/float64(sent), "taken")
	// Frames per round with work: at small batches the per-round costs
	// dominate the per-frame ones.
	b.ReportMetric(float64(frames)/float64(max(w.ctr.batches.Load()-batches0, 1)), "frames/round")
	b.ReportMetric(float64(rx()-rx0)/float64(sent), "delivered")
	// For profiles of the whole process (perf record): every frame the
	// worker moved since it started, warm-up included.
	b.Logf("worker frames since start: %d", w.ctr.frames.Load())
}

// runBenchGuest dials a Go guest on sock and runs it until the benchmark
// ends (cancel, then Close).
func runBenchGuest(b *testing.B, ctx context.Context, cancel context.CancelFunc, name, sock string, cfg frontend.Config) *frontend.Guest {
	b.Helper()
	g, err := frontend.Dial(sock, cfg)
	if err != nil {
		b.Fatalf("guest %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		g.Close()
		if err := <-done; err != nil && !errors.Is(err, frontend.ErrClosed) {
			b.Logf("guest %s: %v", name, err)
		}
	})
	return g
}

// liveSender opens a live-frames generator on the wire's ifindex and
// returns a function that sends n frames from a thread pinned to cpu: on
// veth the frames arrive on the rx queue of the sending CPU.
func liveSender(b *testing.B, wire *netnstest.NS, ifindex int, tmpl *pktgen.Template, cpu int) func(n int) {
	b.Helper()
	var gen *pktgen.LiveGenerator
	if err := wire.Do(func() (err error) {
		gen, err = pktgen.NewLiveGenerator(tmpl, pktgen.LiveOptions{Ifindex: ifindex, NoStamp: true})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { gen.Close() })
	return func(n int) {
		err := wire.Do(func() error {
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				return err
			}
			defer func() {
				var all unix.CPUSet
				for c := range runtime.NumCPU() {
					all.Set(c)
				}
				unix.SchedSetaffinity(0, &all)
			}()
			_, _, err := gen.Send(n)
			return err
		})
		if err != nil {
			b.Fatalf("send: %v", err)
		}
	}
}

// settle waits until the worker is asleep with its counters published
// and unchanged: the frames that reached the sockets are taken.
func settle(w *worker) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if w.asleep.Load() {
			f := w.ctr.frames.Load()
			time.Sleep(time.Millisecond)
			if w.asleep.Load() && w.ctr.frames.Load() == f {
				return
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// pinWorker moves the worker's locked thread to cpu, from the worker
// itself (the test hook runs on its thread), and returns the thread's id.
func pinWorker(b *testing.B, w *worker, cpu int) (tid int) {
	type pinned struct {
		tid int
		err error
	}
	done := make(chan pinned, 1)
	hook := func(uint32) {
		var set unix.CPUSet
		set.Set(cpu)
		select {
		case done <- pinned{unix.Gettid(), unix.SchedSetaffinity(0, &set)}:
		default:
		}
	}
	w.testHook.Store(&hook)
	defer w.testHook.Store(nil)
	select {
	case p := <-done:
		if p.err != nil {
			b.Fatalf("pin worker: %v", p.err)
		}
		return p.tid
	case <-time.After(10 * time.Second):
		b.Fatal("the worker never ran its hook")
	}
	return 0
}

// threadCPU is the time thread tid has run on a CPU, in ns (schedstat):
// unlike the worker's busy-round clock it does not count time the thread
// was preempted, so it holds up on a loaded machine. It includes the
// worker's idle spinning and polls.
func threadCPU(b *testing.B, tid int) uint64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
	if err != nil {
		b.Fatalf("worker thread's CPU time: %v", err)
	}
	var ns uint64
	if _, err := fmt.Sscan(string(raw), &ns); err != nil {
		b.Fatalf("parse %q: %v", raw, err)
	}
	return ns
}

// threadFaults is the minor page faults thread tid has taken
// (/proc/self/task/TID/stat, field 10).
func threadFaults(b *testing.B, tid int) uint64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", tid))
	if err != nil {
		b.Fatalf("worker thread's faults: %v", err)
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	if len(f) < 8 {
		b.Fatalf("parse %q", raw)
	}
	n, err := strconv.ParseUint(f[7], 10, 64)
	if err != nil {
		b.Fatalf("parse %q: %v", raw, err)
	}
	return n
}

func waitFor(b *testing.B, what string, ok func() bool) {
	deadline := time.Now().Add(60 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
