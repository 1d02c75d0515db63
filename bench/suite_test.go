package bench

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
)

// suite is one run: one veth pair (NIC in "host", its peer in "wire"),
// the binaries, and the report being filled.
type suite struct {
	b          *testing.B
	bed        *testbed.Bed         // the veth in use
	beds       map[int]*testbed.Bed // by queue count, made when first needed
	host, wire *netnstest.NS
	nic, peer  netnstest.Link
	dir        string
	bin        struct{ vmqd, vmqdB, pktgen, guest string }
	stream     uint32
	dur        time.Duration // a full-speed trial
	zlWindow   time.Duration // a zero-loss trial
	zlPrec     float64
	zlRepeat   int // searches per system and case
	report     Report
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v > 0 {
		return v
	}
	return def
}

func envList(name string, def string) []string {
	v := os.Getenv(name)
	if v == "" {
		v = def
	}
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// frameSizes parses sizes, raising each to the 66 bytes that hold
// vmq-pktgen's 24-byte stamp (so "64" runs as 66 on every side).
func frameSizes(list []string) ([]int, error) {
	var out []int
	for _, f := range list {
		n, err := strconv.Atoi(f)
		if err != nil || n < 60 || n > 1514 {
			return nil, fmt.Errorf("frame size %q: want 60..1514", f)
		}
		out = append(out, max(n, frontend.MinUDPFrame))
	}
	return out, nil
}

// BenchmarkSuite runs the whole comparison once (it ignores b.N: a run
// takes about a quarter of an hour) and writes results/bench-<date>/ at
// the module root: results.md, results.json and readme.md (the README's
// table). Every measurement that fails fails the benchmark.
//
//	go test -run '^$' -bench '^BenchmarkSuite$' -benchtime 1x -timeout 40m ./bench
//
// Knobs: VMQ_BENCH_DIRS (rx,tx,vm2vm,dedicated: "dedicated" is RX on a
// NIC queue of the VM's own, vmq shared and dedicated against DPDK, on a
// 2-queue veth), VMQ_BENCH_SIZES (64,512,1514), VMQ_BENCH_DEDICATED_SIZES
// (64,1514: the dedicated part's sizes),
// VMQ_BENCH_DURATION (3s, one full-speed trial), VMQ_BENCH_ZL_SIZES (64:
// the sizes that get a zero-loss search; "none" for none),
// VMQ_BENCH_ZL_REPEAT (3: searches per system, the two systems'
// interleaved; the table has their median and range),
// VMQ_BENCH_ZL_WINDOW (10s, one zero-loss trial), VMQ_BENCH_ZL_PRECISION
// (0.05: the search stops when its bounds are closer than this share of
// where it started), VMQ_BENCH_VMQD and VMQ_BENCH_VMQD_B (a vmqd binary to
// measure instead of this tree's; a second one, searched as system vmq-b
// in the zero-loss searches and as a third system in the full-speed rows
// of queue 0), VMQ_BENCH_OUT (results directory), VMQ_BENCH_THREAD and
// VMQ_BENCH_PERF (the forwarding thread's own numbers: fwdthread.go),
// VMQ_BENCH_SPLIT (none: the directions, e.g. "tx", whose switch-alone
// cases also run split, Placement.Split; VMQ_BENCH_SPLIT_FIRST=1 runs
// each split twin first).
func BenchmarkSuite(b *testing.B) {
	testenv.RequireRoot(b)
	if OnlineCPUs() < 2 {
		b.Fatal("the suite needs 2 CPUs")
	}
	for _, c := range []string{"taskset", "dpdk-testpmd", "stdbuf", "ethtool"} {
		if _, err := exec.LookPath(c); err != nil {
			b.Fatalf("the suite needs %s: %v", c, err)
		}
	}
	dirs := envList("VMQ_BENCH_DIRS", "rx,tx,vm2vm,dedicated")
	for _, d := range dirs {
		if d != RX && d != TX && d != VM2VM && d != Dedicated {
			b.Fatalf("VMQ_BENCH_DIRS: unknown direction %q", d)
		}
	}
	sizes, err := frameSizes(envList("VMQ_BENCH_SIZES", "64,512,1514"))
	if err != nil {
		b.Fatal(err)
	}
	dedSizes, err := frameSizes(envList("VMQ_BENCH_DEDICATED_SIZES", "64,1514"))
	if err != nil {
		b.Fatal(err)
	}
	var zlSizes []int
	if zl := envList("VMQ_BENCH_ZL_SIZES", "64"); !slices.Equal(zl, []string{"none"}) {
		if zlSizes, err = frameSizes(zl); err != nil {
			b.Fatal(err)
		}
	}
	s := &suite{b: b, dir: b.TempDir(), dur: envDuration("VMQ_BENCH_DURATION", 3*time.Second),
		zlWindow: envDuration("VMQ_BENCH_ZL_WINDOW", 10*time.Second), zlPrec: envFloat("VMQ_BENCH_ZL_PRECISION", 0.05),
		zlRepeat: int(envFloat("VMQ_BENCH_ZL_REPEAT", 3))}
	start := time.Now()
	cmd := os.Getenv("VMQ_BENCH_COMMAND") // make bench says so
	if cmd == "" {
		cmd = "go test -run '^$' -bench '^BenchmarkSuite$' -benchtime 1x -timeout 40m ./bench"
	}
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "VMQ_BENCH_") && !strings.HasPrefix(e, "VMQ_BENCH_COMMAND=") && !strings.HasPrefix(e, "VMQ_BENCH_OUT=") {
			cmd = e + " " + cmd
		}
	}
	s.report = Report{Command: cmd, Started: start, CPUs: OnlineCPUs(), Kernel: kernelRelease(),
		Settings: fmt.Sprintf("Directions %s; frames %v B (64 runs as 66: vmq-pktgen's stamp); full-speed trials of %v; "+
			"zero-loss searches at %v B, %d per system interleaved with the other system's, %v per trial, precision %.0f%% of the start rate. One NIC queue (veth, AF_XDP copy mode), "+
			"vhost-user rings of 1024, vmqd's default settings, testpmd io forwarding with 1024-entry rings.",
			strings.Join(dirs, ", "), sizes, s.dur, zlSizes, s.zlRepeat, s.zlWindow, 100*s.zlPrec)}
	if slices.Contains(dirs, Dedicated) {
		s.report.Settings += fmt.Sprintf(" The dedicated part (frames %v B): a 2-queue veth, the VM's frames on queue %d "+
			"(the generator on CPU %d), vmqd with the VM's queue shared (its one queue) or dedicated, DPDK's net_af_xdp on that queue.",
			dedSizes, DedicatedQueue, DedicatedQueue)
	}
	s.report.Host, _ = os.Hostname()
	s.report.LoadAvg[0] = loadavg()

	s.build()
	if s.bin.vmqdB != "" {
		s.report.Settings += fmt.Sprintf(" The zero-loss searches also search vmq-b: vmqd %s (VMQ_BENCH_VMQD_B), against vmq: vmqd %s.", s.bin.vmqdB, s.bin.vmqd)
	}

	// VMQ_BENCH_ONLY, a regular expression, runs only the cases whose keys
	// match (e.g. "0/1/(0|wire) .*testpmd": split and packed rings).
	only, err := regexp.Compile(os.Getenv("VMQ_BENCH_ONLY"))
	if err != nil {
		b.Fatalf("VMQ_BENCH_ONLY: %v", err)
	}
	// VMQ_BENCH_SPLIT: the directions whose switch-alone cases also run
	// split (control on the source's CPU), each right after its twin
	// (VMQ_BENCH_SPLIT_FIRST=1: right before, for A/B runs in both orders).
	split := envList("VMQ_BENCH_SPLIT", "none")
	if slices.Equal(split, []string{"none"}) {
		split = nil
	}
	for _, d := range split {
		if d != RX && d != TX && d != VM2VM {
			b.Fatalf("VMQ_BENCH_SPLIT: unknown direction %q", d)
		}
	}
	if len(split) > 0 {
		s.report.Settings += fmt.Sprintf(" Split rows (%s, CPUs written src/switch+control/dst): the switch's forwarding on its CPU, its control part on the source's CPU, both systems alike "+
			"(vmqd's worker_cpus and housekeeping_cpus; DPDK's forwarding and main lcores).", strings.Join(split, ", "))
	}
	for i, c := range WithSplit(Plan(dirs), split, os.Getenv("VMQ_BENCH_SPLIT_FIRST") == "1") {
		if !only.MatchString(c.Key()) {
			continue
		}
		// Alternate which system goes first, so drift in the machine's
		// load hits both alike.
		systems := c.Systems()
		if s.bin.vmqdB != "" && c.Queue == 0 {
			// An A/B of two vmqd builds in the same drift of the load.
			systems = []string{VMQ, DPDK, VMQB}
		}
		if i%2 == 1 {
			slices.Reverse(systems)
		}
		sz := sizes
		if c.Queue != 0 {
			sz = dedSizes
		}
		for _, sys := range systems {
			s.runCase(c, sys, sz)
		}
	}
	for _, dir := range dirs {
		if dir == Dedicated {
			continue // no zero-loss search
		}
		for _, size := range zlSizes {
			s.searches(ZeroLossCase(dir), size)
		}
	}

	s.report.LoadAvg[1] = loadavg()
	s.report.Duration = time.Since(start).Round(time.Second).String()
	out := os.Getenv("VMQ_BENCH_OUT")
	if out == "" {
		root, err := filepath.Abs("..")
		if err != nil {
			b.Fatal(err)
		}
		out = filepath.Join(root, "results", "bench-"+start.Format("2006-01-02-150405"))
	}
	if err := s.report.Write(out); err != nil {
		b.Fatal(err)
	}
	fmt.Println(s.report.Readme())
	fmt.Printf("results written to %s\n", out)
	for _, f := range s.report.Failed() {
		b.Errorf("measurement failed: %s", f)
	}
}

func (s *suite) build() {
	for _, t := range []struct {
		dst *string
		pkg string
	}{{&s.bin.vmqd, "vmqd"}, {&s.bin.pktgen, "vmq-pktgen"}, {&s.bin.guest, "vmq-guest"}} {
		*t.dst = filepath.Join(s.dir, t.pkg)
		// VMQ_BENCH_VMQD: a vmqd binary to measure instead of this tree's
		// (before/after comparisons in one run of the machine's load).
		// VMQ_BENCH_VMQD_B: a second vmqd binary, searched as system
		// vmq-b in the zero-loss searches, interleaved with the others.
		if t.pkg == "vmqd" {
			s.bin.vmqdB = os.Getenv("VMQ_BENCH_VMQD_B")
		}
		if bin := os.Getenv("VMQ_BENCH_VMQD"); bin != "" && t.pkg == "vmqd" {
			*t.dst = bin
			continue
		}
		if out, err := exec.Command("go", "build", "-o", *t.dst, "github.com/vmq/vmq/cmd/"+t.pkg).CombinedOutput(); err != nil {
			s.b.Fatalf("build %s: %v\n%s", t.pkg, err, out)
		}
	}
}

// useBed makes the suite's veth one with queues queues (the main cases:
// 1; the dedicated part: DedicatedQueue+1), each made once.
func (s *suite) useBed(queues int) {
	if s.beds == nil {
		s.beds = map[int]*testbed.Bed{}
	}
	bed, ok := s.beds[queues]
	if !ok {
		bed = testbed.New(s.b, testbed.Options{Queues: queues})
		s.beds[queues] = bed
	}
	s.bed = bed
	s.host, s.wire, s.nic, s.peer = bed.Host, bed.Wire, bed.NIC, bed.Peer
}

func (s *suite) next() uint32 {
	s.stream += 1000
	return s.stream
}

func vmMAC(i int) net.HardwareAddr { return net.HardwareAddr{2, 0x42, 0, 0, 0, byte(i + 1)} }

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// rig is one system set up for one case: the switch, the source, the
// receiver.
type rig struct {
	sw  switchUT
	src source
	rcv receiver
}

func (r *rig) close() {
	for _, c := range []func(){func() {
		if r.src != nil {
			r.src.close()
		}
	}, func() {
		if r.rcv != nil {
			r.rcv.close()
		}
	}, func() {
		if r.sw != nil {
			r.sw.close()
		}
	}} {
		c()
	}
}

// setup starts system sys for case c: the switch on its CPU, then the
// receiver, then the source; and proves the path with one short trial.
func (s *suite) setup(c Case, sys string) (*rig, error) {
	s.useBed(c.Queue + 1)
	r := &rig{}
	var err error
	switch sys {
	case VMQ, VMQDedicated, VMQB:
		bin := s.bin.vmqd
		if sys == VMQB {
			bin = s.bin.vmqdB
		}
		r.sw, err = s.startVMQ(bin, c.Dir, c.Placement, c.Queue, sys == VMQDedicated)
	case DPDK:
		r.sw, err = s.startDPDK(c.Dir, c.Placement, c.Queue)
	default:
		err = fmt.Errorf("unknown system %q", sys)
	}
	if err != nil {
		return nil, err
	}
	pl := c.Placement
	rxVM, dst := 0, vmMAC(0)
	switch c.Dir {
	case TX:
		dst = s.peer.MAC
	case VM2VM:
		rxVM, dst = 1, vmMAC(1)
	}
	// A failed start leaves r.rcv and r.src nil, not a nil pointer in the
	// interface, which r.close would call.
	switch c.Receiver {
	case TestpmdRx, TestpmdRxPacked:
		var g *testpmdGuest
		if g, err = s.startTestpmdGuest(pl.Dst, r.sw.socket(rxVM), vmMAC(rxVM), "rxonly", nil, c.Receiver == TestpmdRxPacked); err == nil {
			r.rcv = g
		}
	case GoGuest:
		r.rcv = &goGuestReceiver{s: s, cpu: pl.Dst, sock: r.sw.socket(rxVM), mac: vmMAC(rxVM)}
	case WireSink:
		var k *sinkReceiver
		if k, err = s.wireSink(); err == nil {
			r.rcv = k
		}
	}
	if err == nil {
		switch c.Source {
		case Pktgen:
			r.src = &pktgenSource{s: s, cpu: pl.Src, dst: dst}
		case GoGuest:
			r.src = &goGuestSource{s: s, cpu: pl.Src, sock: r.sw.socket(0), mac: vmMAC(0), dst: dst}
		case TestpmdTx, TestpmdTxPacked:
			var g *testpmdGuest
			if g, err = s.startTestpmdGuest(pl.Src, r.sw.socket(0), vmMAC(0), "txonly", dst, c.Source == TestpmdTxPacked); err == nil {
				r.src = g
			}
		}
	}
	if err != nil {
		r.close()
		return nil, err
	}
	// A short trial: the guests are connected and frames get through.
	if p := s.measure(c, sys, r, frontend.MinUDPFrame, 0, 0, time.Second); p.Err != "" {
		r.close()
		return nil, fmt.Errorf("first trial: %s", p.Err)
	}
	return r, nil
}

// runCase measures case c on system sys at every size, full speed.
func (s *suite) runCase(c Case, sys string, sizes []int) {
	r, err := s.setup(c, sys)
	for _, size := range sizes {
		var p Point
		if err != nil {
			p = Point{Case: c, Size: size, System: sys, Err: err.Error(), LoadAvg: loadavg()}
		} else {
			p = s.measure(c, sys, r, size, 0, 0, s.dur)
			if p.Err == "" && p.Received == 0 {
				p.Err = "nothing received"
			}
		}
		s.log(p)
		s.report.Points = append(s.report.Points, p)
	}
	if r != nil {
		r.close()
	}
}

// log reports a point now (b.Logf only prints when the run ends).
func (s *suite) log(p Point) {
	if p.Err != "" {
		fmt.Fprintf(os.Stderr, "%s %d B %s: %s\n", p.Key(), p.Size, p.System, p.Err)
		return
	}
	fmt.Fprintf(os.Stderr, "%s %d B %s: offered %.3f delivered %.3f Mpps, loss %.2f%%, busy %.0f ns/frame (%s), CPU %.0f ns/frame, copied %s B/frame, switch CPU %.2f, others %.2f/%.2f; %s\n",
		p.Key(), p.Size, p.System, p.OfferedMpps, p.DeliveredMpps, p.LossPct, p.BusyNSPerFrame, p.BusyHow, p.CPUNSPerFrame, ns(p.CopiedPerFrame), p.SUTCPU, p.OthersCPU[0], p.OthersCPU[1], p.Note)
}

// searches runs the zero-loss searches of case c at size: s.zlRepeat
// rounds, each one search per system, the systems' order alternating
// (vmq, DPDK, DPDK, vmq, ...), so that the machine's drift over the
// rounds hits both alike. Every search of both systems starts at one
// rate, 1.1× the higher of the two systems' delivered rates at overload
// in this run, and so tries rates of one grid.
func (s *suite) searches(c Case, size int) {
	zs := map[string]*ZeroLossPoint{}
	top := 0.0
	for _, sys := range []string{VMQ, DPDK} {
		zs[sys] = &ZeroLossPoint{Case: c, Size: size, System: sys, LoadAvg: loadavg()}
		if over, ok := s.report.point(c, size, sys); ok && over.Err == "" {
			top = max(top, 1.1*over.DeliveredMpps)
		}
	}
	systems := []string{VMQ, DPDK}
	if s.bin.vmqdB != "" {
		systems = []string{VMQ, VMQB, DPDK}
		zs[VMQB] = &ZeroLossPoint{Case: c, Size: size, System: VMQB, LoadAvg: loadavg()}
	}
	for round := 0; round < s.zlRepeat && top > 0; round++ {
		for _, sys := range SearchOrder(round, systems...) {
			z := zs[sys]
			if z.Err != "" {
				continue // a failed search fails the run; the other system goes on
			}
			z.TopMpps = top
			sr, err := s.search(c, sys, size, top)
			z.Add(sr)
			fmt.Fprintf(os.Stderr, "zero-loss %s %d B %s, search %d: %.3f Mpps (at top %v) %v %v\n", c.Key(), size, sys, round+1, sr.ZeroLossMpps, sr.AtTop, sr.Trials, err)
			if err != nil {
				z.Err = fmt.Sprintf("search %d: %v", round+1, err)
			}
		}
	}
	for _, sys := range systems {
		z := zs[sys]
		if top <= 0 {
			z.Err = "no overload measurement of this case and size in this run to start from"
		}
		fmt.Fprintf(os.Stderr, "zero-loss %s %d B %s: median %.3f Mpps, range %.3f–%.3f, %d searches %s\n", c.Key(), size, sys, z.MedianMpps, z.MinMpps, z.MaxMpps, len(z.Searches), z.Err)
		s.report.ZeroLoss = append(s.report.ZeroLoss, *z)
	}
}

// search runs one zero-loss search of case c on sys at size from top
// Mpps, on a rig of its own.
func (s *suite) search(c Case, sys string, size int, top float64) (Search, error) {
	r, err := s.setup(c, sys)
	if err != nil {
		return Search{}, err
	}
	defer r.close()
	return ZeroLoss(top, s.zlPrec, func(rate float64) (Trial, error) {
		pps := rate * 1e6
		count := uint64(pps * s.zlWindow.Seconds())
		t0 := time.Now()
		p := s.measure(c, sys, r, size, pps, count, s.zlWindow)
		fmt.Fprintf(os.Stderr, "zero-loss trial %s %d B %s %s..%s: %.4f Mpps, sent %d, lost %d, others' CPU %.2f/%.2f; %s %s\n", c.Key(), size, sys,
			t0.UTC().Format("15:04:05.000"), time.Now().UTC().Format("15:04:05.000"), rate, p.Sent, p.Sent-min(p.Sent, p.Received),
			p.OthersCPU[0], p.OthersCPU[1], p.Note, p.Err)
		if p.Err != "" {
			return Trial{}, errors.New(p.Err)
		}
		return Trial{Sent: p.Sent, Received: p.Received, Seconds: p.Seconds, Note: p.Note, OthersCPU: p.OthersCPU}, nil
	})
}

// cpuSample is the CPU state at one instant.
type cpuSample struct {
	at       time.Time
	busy     [2]time.Duration // each CPU's busy time, every process
	sut      CPUTimes
	src, rcv CPUTimes
	err      error
}

func (s *suite) sample(r *rig) cpuSample {
	cs := cpuSample{at: time.Now()}
	var errs []error
	for i := range cs.busy {
		var err error
		cs.busy[i], err = CPUBusy(i)
		errs = append(errs, err)
	}
	var err error
	cs.sut, err = ProcessCPU(r.sw.pid())
	errs = append(errs, err)
	if pid := r.src.pid(); pid != 0 {
		cs.src, err = ProcessCPU(pid)
		errs = append(errs, err)
	}
	if pid := r.rcv.pid(); pid != 0 {
		cs.rcv, err = ProcessCPU(pid)
		errs = append(errs, err)
	}
	cs.err = errors.Join(errs...)
	return cs
}

// measure runs one trial: the source sends (count frames at rate, or at
// full speed for d when rate is 0), the receiver counts after the path
// drained, the switch reports its busy time per frame, /proc the CPU.
func (s *suite) measure(c Case, sys string, r *rig, size int, rate float64, count uint64, d time.Duration) Point {
	p := Point{Case: c, Size: size, System: sys, BusyNSPerFrame: -1, BusyNSPerDelivered: -1, CPUNSPerFrame: -1, CopiedPerFrame: -1, LoadAvg: loadavg()}
	if err := r.rcv.start(); err != nil {
		p.Err = err.Error()
		return p
	}
	if err := r.sw.begin(); err != nil {
		r.rcv.count()
		p.Err = err.Error()
		return p
	}
	veth0 := s.vethDrops()
	var probe *threadProbe
	if rate == 0 && d == s.dur {
		var err error
		if probe, err = startProbe(r.sw.pid(), fmt.Sprintf("%s-%d-%s-%d", strings.NewReplacer(" ", "_", "/", "-", "→", "-").Replace(c.Key()), size, sys, time.Now().Unix())); err != nil {
			fmt.Fprintf(os.Stderr, "thread probe: %v\n", err)
		}
	}
	a := s.sample(r)
	sent, secs, srcCPU, serr := r.src.run(size, rate, count, d)
	z := s.sample(r)
	if probe != nil {
		if err := probe.stop(r.sw.pid()); err != nil {
			fmt.Fprintf(os.Stderr, "thread probe: %v\n", err)
		}
	}
	recv, rerr := r.rcv.count()
	cost, berr := r.sw.end()
	drops := cost.drops
	veth1 := s.vethDrops()
	var wire []string
	for i, end := range []string{"nic ", "peer "} {
		wire = append(wire, counterDeltas(end, veth0[i], veth1[i])...)
	}
	if len(wire) > 0 {
		drops += "; veth: " + strings.Join(wire, ", ")
	}
	if err := errors.Join(serr, rerr, berr, a.err, z.err); err != nil {
		p.Err = err.Error()
		return p
	}
	p.Seconds, p.Sent, p.Received = secs, sent, recv
	if secs > 0 {
		p.OfferedMpps, p.DeliveredMpps = float64(sent)/secs/1e6, float64(recv)/secs/1e6
	}
	if sent > 0 {
		p.LossPct = 100 * (1 - float64(min(recv, sent))/float64(sent))
	}
	if probe != nil {
		drops += "; " + probe.report(cost.moved)
	}
	p.BusyNSPerFrame, p.BusyHow, p.Note, p.CopiedPerFrame = cost.busyNS, cost.how, drops, cost.copied
	p.BusyNSPerDelivered = busyPerDelivered(cost.busyNS, cost.moved, recv)
	dt := z.at.Sub(a.at).Seconds()
	sut := z.sut.Sub(a.sut).Total()
	src := z.src.Sub(a.src).Total() + srcCPU.Total()
	rcv := z.rcv.Sub(a.rcv).Total()
	p.SUTCPU, p.SourceCPU, p.ReceiverCPU = sut.Seconds()/dt, src.Seconds()/dt, rcv.Seconds()/dt
	if recv > 0 {
		p.CPUNSPerFrame = float64(sut.Nanoseconds()) / float64(recv)
	}
	for cpu := range p.OthersCPU {
		ours := time.Duration(0)
		pl := c.Placement
		if pl.SUT == cpu { // split too: its control part's time is a few %
			ours += sut
		}
		if pl.Src == cpu {
			ours += src
		}
		if pl.Dst == cpu {
			ours += rcv
		}
		p.OthersCPU[cpu] = max(0, (z.busy[cpu]-a.busy[cpu]-ours).Seconds()/dt)
	}
	return p
}

// vethDrops reads both veth ends' drop and error counters (ethtool -S):
// frames lost there never reached a switch. Nil maps if ethtool fails.
func (s *suite) vethDrops() [2]map[string]uint64 {
	var out [2]map[string]uint64
	for i, end := range []struct {
		ns  *netnstest.NS
		dev string
	}{{s.host, s.nic.Name}, {s.wire, s.peer.Name}} {
		b, err := exec.Command("ip", "netns", "exec", end.ns.Name, "ethtool", "-S", end.dev).Output()
		if err == nil {
			out[i] = parseEthtoolDrops(string(b))
		}
	}
	return out
}
