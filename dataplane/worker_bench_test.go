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
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/cpuset"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// BenchmarkWorkerRX measures one worker's cost per frame from the wire
// to Go guests, with 1 and 256 VMs on its queue, as ratios of the same
// run: the three cases (1 VM; 256 VMs, traffic to 1; 256 VMs, traffic to
// all) are set up once, then measured in turn, the order rotating, once
// per iteration, so each case gets b.N samples taken under the same load
// as the others'. Frames come from the live-frames generator (its thread
// pinned to CPU 0, where the veth runs the filter too); the workers are
// pinned to CPU 1, and every other thread of the process (the guests'
// goroutines, the generator, the runtime) is kept off CPU 1 (isolateCPU),
// so a worker's timed rounds are not preempted by the guests it serves.
// A sample sends benchSampleSends × 1<<16 frames at full speed, rotating
// destinations over the first "to" VMs, and waits until the worker has
// taken what reached the sockets.
//
// Metrics, per case, the median of the samples (every sample and the
// range are logged): busy-ns/frame is the worker's own busy cost
// (BusyRoundNS / BusyRoundFrames: timed rounds that moved frames, wall
// clock), trimmed-busy-ns/frame the same without the rounds that took
// roundOutlier × the median ns/frame or more (preempted: rounds.trimmed),
// cpu-ns/frame the worker thread's CPU time (schedstat, spinning
// included) per frame moved; ratio metrics are the 256-VM medians over
// the 1-VM median. Logged besides: the share of sent frames taken and
// delivered, frames per round, the worker's run-queue wait (ns/frame) and
// involuntary context switches (per 1k frames), its page faults per frame,
// allocs per frame of the whole process (guests and generator too), and,
// every sample in order, frames per socket visit (visits in rounds that
// moved frames: what a visit's fixed cost is spread over), frames per
// visit that took any, and the share of sent frames the kernel dropped at
// an empty fill ring.
//
// The full-speed cases compare different regimes: with 1 VM (and 256,
// traffic to 1) the one guest is slower than the wire, its socket ring
// is full and every visit takes a batch of 64, while with traffic to all
// the worker keeps up and a visit takes 1-2 frames. So the same three
// cases are also measured paced, at benchPacedRate frames/s in bursts of
// benchPacedBurst (the paced-* cases, in the same rotation): a load each
// of them takes without a backlog. Their metrics add frames per visit,
// frames per visit that took any and the offered rate (Mpps), and their
// ratios are to paced-1vm.
//
//	sudo taskset -c 0,1 go test -run '^$' -bench BenchmarkWorkerRX -benchtime 5x ./dataplane
//
// VMQ_BENCH_SHARED_CPU=1 leaves the other threads free to run on the
// workers' CPU, as before isolateCPU, to see what that costs;
// VMQ_BENCH_CASES=256toall (a comma-separated list) runs only those cases,
// for a profile of one worker thread (its id is printed on stderr).
func BenchmarkWorkerRX(b *testing.B) {
	if runtime.NumCPU() < 2 {
		testenv.Skip(b, "needs 2 CPUs")
	}
	const workerCPU = 1
	var mask unix.CPUSet // the process's, before the workers are pinned
	if err := unix.SchedGetaffinity(0, &mask); err != nil {
		b.Fatalf("affinity: %v", err)
	}
	// VMQ_BENCH_GUEST_PAGES: the Go guests' memory on 4 KiB pages ("4k",
	// the default), on 2 MiB huge pages ("2m"), or both ("ab": every case
	// on both, the 2 MiB ones named *-2m, in one rotation).
	var huge []bool
	switch pages := os.Getenv("VMQ_BENCH_GUEST_PAGES"); pages {
	case "", "4k":
		huge = []bool{false}
	case "2m":
		huge = []bool{true}
	case "ab":
		huge = []bool{false, true}
	default:
		b.Fatalf("VMQ_BENCH_GUEST_PAGES=%s: want 4k, 2m or ab", pages)
	}
	var cases []*rxCase
	var tids []int
	for _, h := range huge {
		suffix := ""
		if h && len(huge) > 1 {
			suffix = "-2m"
		}
		one, many := newRXBench(b, 1, h), newRXBench(b, 256, h)
		cases = append(cases,
			&rxCase{name: "1vm" + suffix, env: one, nto: 1},
			&rxCase{name: "256to1" + suffix, env: many, nto: 1},
			&rxCase{name: "256toall" + suffix, env: many, nto: 256})
		one.tid, many.tid = pinWorker(b, one.w, workerCPU), pinWorker(b, many.w, workerCPU)
		tids = append(tids, one.tid, many.tid)
	}
	if rate := benchRate(b, "VMQ_BENCH_PACED_RATE", benchPacedRate); rate > 0 {
		burst := int(benchRate(b, "VMQ_BENCH_PACED_BURST", benchPacedBurst))
		for _, c := range slices.Clone(cases) {
			cases = append(cases, &rxCase{name: "paced-" + c.name, env: c.env, nto: c.nto, rate: rate, burst: burst})
		}
	}
	shared := os.Getenv("VMQ_BENCH_SHARED_CPU") == "1"
	isolate := func() {}
	if !shared {
		isolate = isolateCPU(b, mask, workerCPU, tids...)
	}
	if only := os.Getenv("VMQ_BENCH_CASES"); only != "" { // for profiles: e.g. 256toall
		cases = slices.DeleteFunc(cases, func(c *rxCase) bool { return !slices.Contains(strings.Split(only, ","), c.name) })
		if len(cases) == 0 {
			b.Fatalf("VMQ_BENCH_CASES=%s: no such case", only)
		}
	}
	var warmed []string
	for _, c := range cases {
		c.send = c.env.sender(b, c.nto, c.rate, c.burst)
		warm := c.send
		if c.rate > 0 { // a paced send is slow: warm up at full speed
			warm = c.env.sender(b, c.nto, 0, 0)
		}
		warmed = append(warmed, c.warmUp(warm))
	}
	// One line for all: the testing package keeps 10 lines of a
	// benchmark's log, and each case has its own line below.
	b.Log("warm-up: " + strings.Join(warmed, "; "))
	fmt.Fprintf(os.Stderr, "worker threads (for perf record -t; 1 VM, 256 VMs, per page size): %v\n", tids)
	for r := 0; b.Loop(); r++ {
		for k := range cases {
			c := cases[(k+r)%len(cases)]
			isolate() // threads the runtime started since
			c.samples = append(c.samples, c.measure(b))
		}
	}
	for _, c := range cases {
		c.report(b)
		// The ratios are to the 1-VM case at the same offered rate.
		i := slices.IndexFunc(cases, func(o *rxCase) bool {
			return o.nto == 1 && len(o.env.guests) == 1 && o.rate == c.rate && o.env.huge == c.env.huge
		})
		if base := cases[max(i, 0)]; i >= 0 && base != c {
			b.ReportMetric(median(c.samples, rxSample.trim)/median(base.samples, rxSample.trim), c.name+"/"+base.name+"-trimmed-busy")
			b.ReportMetric(median(c.samples, rxSample.busy)/median(base.samples, rxSample.busy), c.name+"/"+base.name+"-busy")
			b.ReportMetric(median(c.samples, rxSample.cpu)/median(base.samples, rxSample.cpu), c.name+"/"+base.name+"-cpu")
		}
	}
	var allocs, frames uint64
	for _, c := range cases {
		for _, s := range c.samples {
			allocs, frames = allocs+s.allocs, frames+s.frames
		}
	}
	b.ReportMetric(float64(allocs)/float64(max(frames, 1)), "allocs/frame")
	b.Logf("worker CPU %d alone: %v; load average %s", workerCPU, !shared, loadAvg())
}

const benchFramesPerOp = 1 << 16

// benchSampleSends is how many sends of benchFramesPerOp one sample of
// BenchmarkWorkerRX takes.
const benchSampleSends = 2

// benchPacedRate is the offered rate (frames/s) of BenchmarkWorkerRX's
// paced cases: one that every case takes without a backlog or loss on a
// 2-CPU machine where the generator, the filter and the guests share CPU
// 0, so that the cases compare the worker's cost per frame at the same
// load. Traffic to all at full speed offers 0.3-0.8 Mpps there and the
// worker takes 0.2-0.7 of it; paced at 100-150k/s the 1-VM case loses
// 2-5% (at its full socket ring) and traffic to all up to 22% at the
// empty fill ring (bench/HISTORY.md).
// The generator falls 10-30% short of it (its sleeps between bursts
// overrun): the log has each sample's offered rate.
// VMQ_BENCH_PACED_RATE overrides it (0: no paced cases).
const benchPacedRate = 50_000

// benchPacedBurst is the frames per generator call of the paced cases
// (VMQ_BENCH_PACED_BURST overrides it): a call costs tens of µs of set-up
// on CPU 0 (with bursts of 8 the generator gets 30-55k/s of 100k/s). A
// burst to 1 VM reaches its socket before the worker wakes, so its
// visits take a burst each; with traffic to all a burst is spread over
// as many sockets.
const benchPacedBurst = 32

// benchPacedFrames is what one sample of a paced case sends, one send
// (1.3-1.6 s at benchPacedRate).
const benchPacedFrames = 1 << 16

// benchRate is the environment variable env as a non-negative number, or
// def.
func benchRate(b *testing.B, env string, def float64) float64 {
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 {
		b.Fatalf("%s=%q: want a non-negative number", env, v)
	}
	return f
}

// benchGuestRing is the Go guests' ring size (a starved testpmd's
// receive ring is about as short).
const benchGuestRing = 256

// rxBench is a worker on a one-queue veth with nvm Go guests.
type rxBench struct {
	huge   bool // the guests' memory on 2 MiB pages
	w      *worker
	tid    int // the worker's thread
	guests []*frontend.Guest
	dests  []pktgen.Dest
	wire   *netnstest.NS
	peer   int // the wire end's ifindex
}

func newRXBench(b *testing.B, nvm int, huge bool) *rxBench {
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
	e := &rxBench{huge: huge, w: dp.workers[0], guests: make([]*frontend.Guest, nvm), dests: make([]pktgen.Dest, nvm), wire: wire, peer: peer.Index}
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
		g := runBenchGuest(b, ctx, cancel, name, sock, frontend.Config{MAC: hw, MrgRxbuf: true, EventIdx: true, QueueSize: benchGuestRing, HugePages: huge})
		e.guests[i], e.dests[i] = g, pktgen.Dest{MAC: hw}
	}
	waitFor(b, "guests' queues attached", func() bool { return int(e.w.ctr.virtqueues.Load()) == 2*nvm })
	return e
}

// sender returns a function that sends benchFramesPerOp frames (at full
// speed, rate 0) or benchPacedFrames (at rate frames/s, in bursts of
// burst) to the first nto guests, waits until the worker has taken them,
// and returns the frames sent and how long the sending took.
func (e *rxBench) sender(b *testing.B, nto int, rate float64, burst int) func() (uint64, time.Duration) {
	tmpl, err := pktgen.NewTemplate(pktgen.FlowSpec{Dests: e.dests[:nto], Size: 64, Stream: 1})
	if err != nil {
		b.Fatal(err)
	}
	sendLive := livePacedSender(b, e.wire, e.peer, tmpl, 0)
	n := benchFramesPerOp
	if rate > 0 {
		n = benchPacedFrames
	}
	return func() (uint64, time.Duration) {
		from := e.w.ctr.frames.Load()
		start := time.Now()
		sendLive(n, rate, burst)
		took := time.Since(start)
		settleFrom(e.w, from)
		return uint64(n), took
	}
}

// rxCase is one case of BenchmarkWorkerRX and its samples.
type rxCase struct {
	name    string
	env     *rxBench
	nto     int
	rate    float64 // offered frames/s, 0 for full speed
	burst   int     // frames per generator call when paced
	send    func() (sent uint64, took time.Duration)
	samples []rxSample
}

// rxSample is what one sample of a case measured.
type rxSample struct {
	sent, frames, timed, busyNS, rounds, delivered uint64
	cpuNS, waitNS, nvcsw, faults, allocs           uint64
	sendNS                                         uint64 // the generator's time, settling not counted
	// Socket visits in rounds that moved frames, those that took frames,
	// and frames the kernel dropped at an empty fill ring.
	visits, took, fillEmpty uint64
	ringFull                uint64 // frames the kernel dropped at a full socket ring
	// The timed rounds less those slower than roundOutlier × the median
	// (rounds.trimmed).
	trimmedNS, trimmedFrames uint64
}

// rounds is a copy of a worker's timed rounds by ns per frame.
type rounds struct{ ns, frames [roundBuckets]uint64 }

func roundsOf(w *worker) (r rounds) {
	for k := range r.ns {
		r.ns[k], r.frames[k] = w.ctr.roundNS[k].Load(), w.ctr.roundFrames[k].Load()
	}
	return r
}

// roundOutlier: a round that took this many times the median ns per frame
// (of the rounds' frames) or more is left out of trimmed busy ns/frame. A
// round of 64 frames takes 10-30 µs; one the thread was preempted in
// takes a scheduler slice more (ms), which no round of the worker's own
// work comes near.
const roundOutlier = 8

// trimmed is the time and frames of the rounds below roundOutlier × the
// frame-weighted median ns per frame.
func (r rounds) trimmed() (ns, frames uint64) {
	var total, acc uint64
	for _, f := range r.frames {
		total += f
	}
	med := 0
	for k, f := range r.frames {
		if acc += f; 2*acc >= total {
			med = k
			break
		}
	}
	limit := roundOutlier * roundBucketFloor(med+1)
	for k := range r.ns {
		if roundBucketFloor(k) < limit {
			ns, frames = ns+r.ns[k], frames+r.frames[k]
		}
	}
	return ns, frames
}

func (s rxSample) busy() float64  { return float64(s.busyNS) / float64(s.timed) }
func (s rxSample) trim() float64  { return float64(s.trimmedNS) / float64(max(s.trimmedFrames, 1)) }
func (s rxSample) cut() float64   { return 1 - float64(s.trimmedFrames)/float64(s.timed) }
func (s rxSample) cpu() float64   { return float64(s.cpuNS) / float64(s.frames) }
func (s rxSample) wait() float64  { return float64(s.waitNS) / float64(s.frames) }
func (s rxSample) taken() float64 { return float64(s.frames) / float64(s.sent) }
func (s rxSample) deliv() float64 { return float64(s.delivered) / float64(s.sent) }
func (s rxSample) perRound() float64 {
	return float64(s.frames) / float64(max(s.rounds, 1))
}
func (s rxSample) perVisit() float64 {
	return float64(s.frames) / float64(max(s.visits, 1))
}
func (s rxSample) perTook() float64 {
	return float64(s.frames) / float64(max(s.took, 1))
}
func (s rxSample) fillDrops() float64  { return float64(s.fillEmpty) / float64(s.sent) }
func (s rxSample) ringDrops() float64  { return float64(s.ringFull) / float64(s.sent) }
func (s rxSample) offered() float64    { return 1e3 * float64(s.sent) / float64(max(s.sendNS, 1)) }
func (s rxSample) nvcswPer1k() float64 { return 1000 * float64(s.nvcsw) / float64(s.frames) }
func (s rxSample) faultsPer() float64  { return float64(s.faults) / float64(s.frames) }

// fillEmpty is the frames the kernel dropped for want of a fill ring
// entry on the queue (the counter is the queue's fill ring's: every
// socket of the queue reports the same).
func (e *rxBench) fillEmpty(b *testing.B) uint64 {
	st, err := e.w.flood.KernelStats()
	if err != nil {
		b.Fatal(err)
	}
	return st.FillRingEmpty
}

// ringFull is the frames the kernel dropped at the VMs' full socket rings.
func (e *rxBench) ringFull(b *testing.B) (n uint64) {
	for _, vm := range e.w.vmList { // set up before the benchmark's loop, not changed since
		st, err := vm.sock.KernelStats()
		if err != nil {
			b.Fatal(err)
		}
		n += st.RxRingFull
	}
	return n
}

// rx is the frames the case's receiving guests have had.
func (c *rxCase) rx() (n uint64) {
	for _, g := range c.env.guests[:c.nto] {
		n += g.Stats().RxFrames
	}
	return n
}

// warmUp sends (with send) until each receiving guest has had a ring's worth of
// frames (at most 16 sends), so rings, stashes, maps and the guests are
// awake and every receive buffer has been written once: the worker's
// first touches of guest pages (a minor fault per 4 KiB page and guest,
// 9% of the worker's samples at 256 VMs with one send) are not measured.
func (c *rxCase) warmUp(send func() (uint64, time.Duration)) (log string) {
	minRx := func() uint64 {
		m := ^uint64(0)
		for _, g := range c.env.guests[:c.nto] {
			m = min(m, g.Stats().RxFrames)
		}
		return m
	}
	warm := 0
	for ; warm == 0 || warm < 16 && minRx() < benchGuestRing; warm++ {
		send()
	}
	return fmt.Sprintf("%s %d sends, the least a guest received %d", c.name, warm, minRx())
}

// measure takes one sample of the case.
func (c *rxCase) measure(b *testing.B) rxSample {
	w, tid := c.env.w, c.env.tid
	ctr := &w.ctr
	frames0, ns0, timed0, rounds0, rx0 := ctr.frames.Load(), ctr.busyRoundNS.Load(), ctr.busyRoundFrames.Load(), ctr.batches.Load(), c.rx()
	st0, flt0, h0 := threadSched(b, tid), threadFaults(b, tid), roundsOf(w)
	v0, took0, fe0, rf0 := ctr.visits.Load(), ctr.visitsTook.Load(), c.env.fillEmpty(b), c.env.ringFull(b)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	// A round in timeEvery is timed: a sample of a few large rounds can
	// have none, and then takes more sends.
	sends, minSends := 0, benchSampleSends
	if c.rate > 0 {
		minSends = 1
	}
	var sent uint64
	var took time.Duration
	for ; sends < minSends || sends < 4*minSends && ctr.busyRoundFrames.Load() == timed0; sends++ {
		n, d := c.send()
		sent, took = sent+n, took+d
	}
	st, flt, h := threadSched(b, tid), threadFaults(b, tid), roundsOf(w)
	runtime.ReadMemStats(&after)
	s := rxSample{
		sent: sent, sendNS: uint64(took),
		frames: ctr.frames.Load() - frames0, timed: ctr.busyRoundFrames.Load() - timed0,
		busyNS: ctr.busyRoundNS.Load() - ns0, rounds: ctr.batches.Load() - rounds0,
		delivered: c.rx() - rx0,
		cpuNS:     st.cpuNS - st0.cpuNS, waitNS: st.waitNS - st0.waitNS, nvcsw: st.nvcsw - st0.nvcsw,
		faults: flt - flt0, allocs: after.Mallocs - before.Mallocs,
		visits: ctr.visits.Load() - v0, took: ctr.visitsTook.Load() - took0, fillEmpty: c.env.fillEmpty(b) - fe0,
		ringFull: c.env.ringFull(b) - rf0,
	}
	for k := range h.ns {
		h.ns[k] -= h0.ns[k]
		h.frames[k] -= h0.frames[k]
	}
	s.trimmedNS, s.trimmedFrames = h.trimmed()
	if s.frames == 0 || s.timed == 0 {
		b.Fatalf("%s: the worker moved %d frames (%d in timed rounds)", c.name, s.frames, s.timed)
	}
	return s
}

// report puts the case's medians in the benchmark's metrics and logs one
// line (the testing package keeps 10 lines of a benchmark's log): every
// sample of busy and CPU ns/frame, medians and ranges of the rest.
func (c *rxCase) report(b *testing.B) {
	b.ReportMetric(median(c.samples, rxSample.trim), c.name+"-trimmed-busy-ns/frame")
	b.ReportMetric(median(c.samples, rxSample.busy), c.name+"-busy-ns/frame")
	b.ReportMetric(median(c.samples, rxSample.cpu), c.name+"-cpu-ns/frame")
	b.ReportMetric(median(c.samples, rxSample.deliv), c.name+"-delivered")
	if c.rate > 0 { // the full-speed cases keep the metrics make bench has reported
		b.ReportMetric(median(c.samples, rxSample.perVisit), c.name+"-frames/visit")
		b.ReportMetric(median(c.samples, rxSample.perTook), c.name+"-frames/visit-took")
		b.ReportMetric(median(c.samples, rxSample.offered), c.name+"-offered-Mpps")
	}
	var line strings.Builder
	var frames uint64
	for _, s := range c.samples {
		frames += s.frames
	}
	fmt.Fprintf(&line, "%s: %d frames", c.name, frames)
	if c.rate > 0 {
		fmt.Fprintf(&line, " paced at %.0f/s in bursts of %d", c.rate, c.burst)
	}
	line.WriteString(";")
	for i, m := range []struct {
		name string
		f    func(rxSample) float64
	}{
		{"trimmed busy ns/frame", rxSample.trim}, {"busy ns/frame", rxSample.busy}, {"cpu ns/frame", rxSample.cpu},
		{"timed frames in rounds cut", rxSample.cut}, {"run-queue wait ns/frame", rxSample.wait}, {"involuntary switches/1k frames", rxSample.nvcswPer1k},
		{"taken", rxSample.taken}, {"delivered", rxSample.deliv}, {"frames/round", rxSample.perRound},
		{"worker faults/frame", rxSample.faultsPer},
		{"frames/visit", rxSample.perVisit}, {"frames/visit that took any", rxSample.perTook},
		{"dropped at an empty fill ring/sent", rxSample.fillDrops},
		{"dropped at a full socket ring/sent", rxSample.ringDrops}, {"offered Mpps", rxSample.offered},
	} {
		lo, hi := spread(c.samples, m.f)
		if i > 0 {
			line.WriteString(";")
		}
		if i >= 3 && i < 10 { // median (range)
			fmt.Fprintf(&line, " %s %.3g (%.3g-%.3g)", m.name, median(c.samples, m.f), lo, hi)
			continue
		}
		f := "%.0f" // ns per frame
		if i >= 10 {
			f = "%.3g" // frames per visit, drops per sent
		}
		fmt.Fprintf(&line, " %s median "+f+", range "+f+"-"+f+", in order", m.name, median(c.samples, m.f), lo, hi)
		for _, s := range c.samples {
			fmt.Fprintf(&line, " "+f, m.f(s))
		}
	}
	b.Log(line.String())
}

func median(samples []rxSample, f func(rxSample) float64) float64 {
	v := make([]float64, len(samples))
	for i, s := range samples {
		v[i] = f(s)
	}
	slices.Sort(v)
	if n := len(v); n%2 == 1 {
		return v[n/2]
	} else if n > 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return 0
}

func spread(samples []rxSample, f func(rxSample) float64) (lo, hi float64) {
	for i, s := range samples {
		if v := f(s); i == 0 || v < lo {
			lo = v
		}
		if v := f(s); i == 0 || v > hi {
			hi = v
		}
	}
	return lo, hi
}

// isolateCPU leaves cpu to the threads tids, of the process's mask orig
// (read before any thread was pinned), and returns a function that
// does it again (for threads started since): every other thread of the
// process may run on the other CPUs of the process's mask only, and the
// threads they start inherit that (the runtime starts threads for a
// locked goroutine from its template thread, one of the others). The
// test's end gives every thread the process's mask back.
func isolateCPU(b *testing.B, orig unix.CPUSet, cpu int, tids ...int) (again func()) {
	var all, rest []int
	for c := range len(orig) * 64 {
		if orig.IsSet(c) {
			all = append(all, c)
			if c != cpu {
				rest = append(rest, c)
			}
		}
	}
	if len(rest) == 0 {
		b.Fatalf("no CPU left besides %d", cpu)
	}
	skip := func(tid int) bool { return slices.Contains(tids, tid) }
	each := func(set []int) {
		if _, err := cpuset.Confine(set, skip); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() { each(all) })
	each(rest)
	return func() { each(rest) }
}

// loadAvg is /proc/loadavg's first three fields, for the log.
func loadAvg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(raw)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
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
	send := livePacedSender(b, wire, ifindex, tmpl, cpu)
	return func(n int) { send(n, 0, 0) }
}

// livePacedSender is liveSender whose function sends at rate frames/s
// (0: full speed) in bursts of burst frames, paced by pktgen.Run (the
// thread sleeps between bursts, on cpu).
func livePacedSender(b *testing.B, wire *netnstest.NS, ifindex int, tmpl *pktgen.Template, cpu int) func(n int, rate float64, burst int) {
	b.Helper()
	var gen *pktgen.LiveGenerator
	if err := wire.Do(func() (err error) {
		gen, err = pktgen.NewLiveGenerator(tmpl, pktgen.LiveOptions{Ifindex: ifindex, NoStamp: true})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { gen.Close() })
	return func(n int, rate float64, burst int) {
		err := wire.Do(func() error {
			// The thread goes back to the runtime after Do: RunOn gives it
			// its own mask back (isolateCPU may have set it).
			return cpuset.RunOn([]int{cpu}, func() error {
				if rate == 0 {
					_, _, err := gen.Send(n)
					return err
				}
				st, err := pktgen.Run(context.Background(), gen, pktgen.RunOptions{Count: uint64(n), Rate: rate, Burst: burst})
				if err == nil && st.Sent != uint64(n) {
					err = fmt.Errorf("paced run sent %d of %d frames", st.Sent, n)
				}
				return err
			})
		})
		if err != nil {
			b.Fatalf("send: %v", err)
		}
	}
}

// settle waits until the worker is asleep with its counters published
// and unchanged: the frames that reached the sockets are taken.
func settle(w *worker) { settleFrom(w, ^uint64(0)) }

// settleFrom is settle after a send that began with the worker's frame
// count at from: it also waits (up to a second) for the count to pass
// from, since on a loaded machine the worker can still be waiting for its
// CPU, asleep with nothing taken, a millisecond after the send.
func settleFrom(w *worker, from uint64) {
	start := time.Now()
	deadline := start.Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if w.asleep.Load() {
			f := w.ctr.frames.Load()
			time.Sleep(time.Millisecond)
			if w.asleep.Load() && w.ctr.frames.Load() == f && (f > from || from == ^uint64(0) || time.Since(start) > time.Second) {
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

// threadStat is a thread's scheduler statistics.
type threadStat struct {
	// cpuNS: time on a CPU (unlike the worker's busy-round clock it does
	// not count time the thread was preempted; it includes the worker's
	// idle spinning and polls). waitNS: time runnable but waiting for a
	// CPU. nvcsw: involuntary context switches (preemptions).
	cpuNS, waitNS, nvcsw uint64
}

// threadSched reads thread tid's schedstat and status.
func threadSched(b *testing.B, tid int) (st threadStat) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
	if err != nil {
		b.Fatalf("worker thread's CPU time: %v", err)
	}
	if _, err := fmt.Sscan(string(raw), &st.cpuNS, &st.waitNS); err != nil {
		b.Fatalf("parse %q: %v", raw, err)
	}
	raw, err = os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", tid))
	if err != nil {
		b.Fatalf("worker thread's status: %v", err)
	}
	for line := range strings.Lines(string(raw)) {
		if v, ok := strings.CutPrefix(line, "nonvoluntary_ctxt_switches:"); ok {
			if st.nvcsw, err = strconv.ParseUint(strings.TrimSpace(v), 10, 64); err != nil {
				b.Fatalf("parse %q: %v", line, err)
			}
		}
	}
	return st
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

func TestRoundBucket(t *testing.T) {
	prev := -1
	for ns := uint64(0); ns < 1<<20; ns++ {
		k := roundBucket(ns)
		if k != prev && k != prev+1 {
			t.Fatalf("bucket of %d is %d after %d", ns, k, prev)
		}
		if k != prev && roundBucketFloor(k) != ns {
			t.Fatalf("bucket %d starts at %d, floor says %d", k, ns, roundBucketFloor(k))
		}
		prev = k
	}
	if k := roundBucket(^uint64(0)); k != roundBuckets-1 {
		t.Fatalf("the largest bucket is %d", k)
	}
}
