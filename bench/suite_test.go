package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// CPU placement: the traffic source (generator, or the sending guest) on
// srcCPU, the system under test on sutCPU.
const (
	srcCPU = 0
	sutCPU = 1
)

// suite is one run: one veth pair (NIC in "host", its peer in "wire"), one
// generator binary, every system measured in turn on them.
type suite struct {
	b          *testing.B
	host, wire *netnstest.NS
	nic, peer  netnstest.Link
	pktgenBin  string
	dir        string
	warm, win  time.Duration
	ring       int
	stream     uint32
	report     Report
	runs       map[string][]Point // rounds by system/shape
	order      []string
	// split (VMQ_BENCH_LAYOUT=split) puts the receiving guest on the
	// source CPU, so the SUT CPU runs only the switch: vmq's worker, or
	// DPDK's forwarding testpmd. The default shares the SUT CPU between
	// the switch and the guest.
	split bool
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envInts(name string, def []int) []int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// BenchmarkSuite runs the whole comparison once (it ignores b.N: one run
// takes minutes) and writes results/bench-<date>/ at the module root.
//
//	go test -run '^$' -bench Suite -benchtime 1x -timeout 20m ./bench
//
// Knobs: VMQ_BENCH_WINDOW (default 3s measured per point, after
// VMQ_BENCH_WARMUP, default 1s), VMQ_BENCH_SIZES (default 64,512,1514),
// VMQ_BENCH_VMS (default 1,8,64,256), VMQ_BENCH_SKIP (comma list of
// ceiling,vmq,dpdk,tx,scale), VMQ_BENCH_ROUNDS (default 3: the median
// is reported; the VM scaling runs once), VMQ_BENCH_OUT (results directory).
func BenchmarkSuite(b *testing.B) {
	testenv.RequireRoot(b)
	if OnlineCPUs() < 2 {
		testenv.Skip(b, "needs 2 CPUs (generator and system under test apart)")
	}
	testenv.RequireCommand(b, "taskset")
	s := &suite{b: b, dir: b.TempDir(), ring: 1024, runs: map[string][]Point{},
		warm: envDuration("VMQ_BENCH_WARMUP", time.Second), win: envDuration("VMQ_BENCH_WINDOW", 3*time.Second)}
	skip := map[string]bool{}
	for _, k := range strings.Split(os.Getenv("VMQ_BENCH_SKIP"), ",") {
		skip[strings.TrimSpace(k)] = true
	}
	s.split = os.Getenv("VMQ_BENCH_LAYOUT") == "split"
	sizes := envInts("VMQ_BENCH_SIZES", []int{64, 512, 1514})
	vmCounts := envInts("VMQ_BENCH_VMS", []int{1, 8, 64, 256})
	start := time.Now()
	s.report = Report{Started: start, CPUs: OnlineCPUs(), Kernel: kernelRelease(),
		Shape: fmt.Sprintf("Traffic source on CPU %d (vmq-pktgen XDP live frames; for TX the sending guest), "+
			"system under test on CPU %d (rx: vmq's whole process, i.e. worker + Go guest, vs both testpmds; "+
			"tx: vmq's process minus the sending guest's thread vs the forwarding testpmd). "+
			"One NIC queue, vhost-user rings of %d. Delivered Mpps over a %v window after %v warm-up; "+
			"frame sizes below 66 are raised to 66 (the 24-byte pktgen payload).", srcCPU, sutCPU, s.ring, s.win, s.warm)}
	if s.split {
		s.report.Shape += fmt.Sprintf(" Layout split: in rx the receiving guest (vmq's Go guest thread, DPDK's virtio_user testpmd) "+
			"runs on CPU %d with the generator, and only the switch is measured on CPU %d.", srcCPU, sutCPU)
	}
	s.report.Host, _ = os.Hostname()
	s.report.LoadAvg[0] = loadavg()

	s.buildPktgen()
	s.host, s.wire = netnstest.New(b), netnstest.New(b)
	for _, ns := range []*netnstest.NS{s.host, s.wire} {
		ns.Run(b, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	s.nic, s.peer = netnstest.NewVethPair(b, s.host, s.wire, netnstest.VethOptions{Queues: 1, MTU: 1500})

	// Two Ps even when this process is pinned to one CPU: the worker and
	// the guest are separate threads the kernel schedules, not goroutines
	// taking turns on one P.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		b.Fatal(err)
	}
	defer PinProcess(all)

	have := func(k string) bool { return !skip[k] }
	rounds := envInts("VMQ_BENCH_ROUNDS", []int{3})[0]
	for r := 0; r < rounds; r++ {
		// Systems alternate within a round, so drift in the machine's
		// load hits them alike.
		for _, size := range sizes {
			size := max(size, frontend.MinUDPFrame)
			if have("ceiling") {
				s.add(s.ceilingRX(size))
			}
			if have("vmq") {
				s.add(s.vmqRX(size, 1))
			}
			if have("dpdk") {
				s.add(s.dpdkRX(size))
			}
		}
		if have("tx") {
			for _, size := range sizes {
				size := max(size, frontend.MinUDPFrame)
				if have("vmq") {
					s.add(s.vmqTX(size))
				}
				if have("dpdk") {
					s.add(s.dpdkTX(size))
				}
			}
		}
	}
	if have("scale") && have("vmq") {
		size := max(sizes[0], frontend.MinUDPFrame)
		for _, n := range vmCounts {
			if n != 1 {
				s.add(s.vmqRX(size, n))
			}
		}
	}
	for _, k := range s.order {
		s.report.Points = append(s.report.Points, Median(s.runs[k]))
	}
	s.report.LoadAvg[1] = loadavg()
	s.report.Duration = time.Since(start).Round(time.Second).String()
	s.report.ComputeRatios()
	md := s.report.Markdown()
	fmt.Println(md)
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
	fmt.Printf("results written to %s\n", out)
	for _, ra := range s.report.Ratios {
		if ra.Key == fmt.Sprintf("%s/%d/1", RX, max(sizes[0], frontend.MinUDPFrame)) {
			b.ReportMetric(ra.VMQOverDPDK, "vmq/dpdk")
			b.ReportMetric(ra.VMQOverCeil, "vmq/ceiling")
		}
	}
}

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

func (s *suite) add(p Point) {
	if p.Err != "" {
		s.b.Logf("%s %s %d bytes %d VMs: %s", p.Dir, p.System, p.Size, p.VMs, p.Err)
	} else {
		s.b.Logf("%s %s %d bytes %d VMs: offered %.3f delivered %.3f Mpps, loss %.2f%%, CPU %.3f s/Mpkt, p50 %v p99 %v",
			p.Dir, p.System, p.Size, p.VMs, p.OfferedMpps, p.DeliveredMpps, p.LossPct, p.CPUPerMpkt, p.P50, p.P99)
	}
	k := p.System + "/" + p.Key()
	if _, ok := s.runs[k]; !ok {
		s.order = append(s.order, k)
	}
	s.runs[k] = append(s.runs[k], p)
}

func (s *suite) buildPktgen() {
	s.pktgenBin = filepath.Join(s.dir, "vmq-pktgen")
	cmd := exec.Command("go", "build", "-o", s.pktgenBin, "github.com/vmq/vmq/cmd/vmq-pktgen")
	if out, err := cmd.CombinedOutput(); err != nil {
		s.b.Fatalf("build vmq-pktgen: %v\n%s", err, out)
	}
}

func (s *suite) nextStream() uint32 {
	s.stream += 1000
	return s.stream
}

// generator is one vmq-pktgen run in the wire namespace, pinned to srcCPU.
type generator struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan error
}

type genSummary struct {
	Sent    uint64  `json:"sent"`
	Seconds float64 `json:"seconds"`
	PPS     float64 `json:"pps"`
	Error   string  `json:"error"`
}

// startGen sends frames of size to macs (rotating) for d, or count frames
// at rate when count > 0.
func (s *suite) startGen(macs []net.HardwareAddr, size int, stream uint32, d time.Duration, count uint64, rate float64) (*generator, error) {
	dsts := make([]string, len(macs))
	for i, m := range macs {
		dsts[i] = m.String()
	}
	args := []string{"-c", strconv.Itoa(srcCPU), s.pktgenBin, "--netns", s.wire.Name, "--dev", s.peer.Name,
		"--dst-mac", strings.Join(dsts, ","), "--size", strconv.Itoa(size), "--stream", strconv.FormatUint(uint64(stream), 10),
		"--json"}
	if count > 0 {
		args = append(args, "--count", strconv.FormatUint(count, 10), "--rate", strconv.FormatFloat(rate, 'f', 0, 64))
	} else {
		args = append(args, "--duration", d.String())
	}
	g := &generator{done: make(chan error, 1)}
	g.cmd = exec.Command("taskset", args...)
	g.cmd.Stdout, g.cmd.Stderr = &g.stdout, &g.stderr
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start generator: %w", err)
	}
	go func() { g.done <- g.cmd.Wait() }()
	return g, nil
}

// wait returns the generator's summary.
func (g *generator) wait() (genSummary, error) {
	var err error
	select {
	case err = <-g.done:
	case <-time.After(30 * time.Second):
		g.cmd.Process.Kill()
		<-g.done
		return genSummary{}, errors.New("generator did not finish")
	}
	var sum genSummary
	if jerr := json.Unmarshal(g.stdout.Bytes(), &sum); jerr != nil {
		return sum, fmt.Errorf("generator: %v, summary %q: %w; stderr %s", err, g.stdout.String(), jerr, g.stderr.String())
	}
	if err != nil || sum.Error != "" {
		return sum, fmt.Errorf("generator: %v %s; stderr %s", err, sum.Error, g.stderr.String())
	}
	// A generator that cannot hold its program in the XDP dispatcher
	// waits ~20 ms per call: it would measure itself, not the ceiling.
	if i := strings.Index(g.stderr.String(), "warning:"); i >= 0 {
		return sum, fmt.Errorf("generator not at full speed: %s", strings.SplitN(g.stderr.String()[i:], "\n", 2)[0])
	}
	return sum, nil
}

// sample is the receiver's count, the source's count and the system under
// test's CPU time at one instant.
type sample struct {
	at      time.Time
	recv    uint64
	sent    uint64
	cpu     CPUTimes
	srcCPU  CPUTimes
	sutBusy time.Duration // the SUT CPU's busy time, all processes
	srcBusy time.Duration // the source CPU's
	err     error
}

// window measures between warm-up and warm-up+window of a running source:
// it fills p's rates and CPU per Mpkt from two samples.
// prepare, if not nil, runs after the warm-up, before the first sample.
func (s *suite) window(p *Point, prepare func() error, read func() sample) error {
	time.Sleep(s.warm)
	if prepare != nil {
		if err := prepare(); err != nil {
			return err
		}
	}
	a := busy(read())
	time.Sleep(s.win)
	z := busy(read())
	if err := errors.Join(a.err, z.err); err != nil {
		return err
	}
	dt := z.at.Sub(a.at)
	p.Window = dt
	recv := float64(z.recv - a.recv)
	p.DeliveredMpps = recv / dt.Seconds() / 1e6
	if z.sent > a.sent {
		p.OfferedMpps = float64(z.sent-a.sent) / dt.Seconds() / 1e6
	}
	p.CPUSeconds = z.cpu.Sub(a.cpu).Total().Seconds() - z.srcCPU.Sub(a.srcCPU).Total().Seconds()
	if os.Getenv("VMQ_BENCH_DEBUG") == "1" {
		fmt.Fprintf(os.Stderr, "window %v: cpu %+v src %+v\n", dt, z.cpu.Sub(a.cpu), z.srcCPU.Sub(a.srcCPU))
	}
	p.OthersCPU = max(0, (z.sutBusy-a.sutBusy).Seconds()-p.CPUSeconds) / dt.Seconds()
	p.SrcCPUBusy = (z.srcBusy - a.srcBusy).Seconds() / dt.Seconds()
	p.CPUPerMpkt = -1
	if recv > 0 {
		p.CPUPerMpkt = p.CPUSeconds / (recv / 1e6)
	}
	return nil
}

// busy adds the CPUs' busy times to a sample.
func busy(s sample) sample {
	var e1, e2 error
	s.sutBusy, e1 = CPUBusy(sutCPU)
	s.srcBusy, e2 = CPUBusy(srcCPU)
	s.err = errors.Join(s.err, e1, e2)
	return s
}

// settle waits until count stops changing (the path drained) and returns it.
func settle(count func() uint64) uint64 {
	last := count()
	for i := 0; i < 30; i++ {
		time.Sleep(100 * time.Millisecond)
		now := count()
		if now == last {
			return now
		}
		last = now
	}
	return last
}

func lossPct(recv, sent uint64) float64 {
	if sent == 0 {
		return 0
	}
	return 100 * (1 - float64(recv)/float64(sent))
}

func vmMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{2, 0x42, 0, 0, byte((i + 1) >> 8), byte(i + 1)}
}

// runRX runs the generator at full speed at macs for one measurement and
// fills p from the receiver's count and the system under test's CPU.
func (s *suite) runRX(p *Point, macs []net.HardwareAddr, recv func() uint64, cpu func() (CPUTimes, error), prepare func() error) error {
	base := recv()
	g, err := s.startGen(macs, p.Size, s.nextStream(), s.warm+s.win+s.win/4, 0, 0)
	if err != nil {
		return err
	}
	werr := s.window(p, prepare, func() sample {
		c, err := cpu()
		return sample{at: time.Now(), recv: recv(), cpu: c, err: err}
	})
	sum, gerr := g.wait()
	if err := errors.Join(werr, gerr); err != nil {
		return err
	}
	total := settle(recv) - base
	p.OfferedMpps = sum.PPS / 1e6
	p.LossPct = lossPct(total, sum.Sent)
	return nil
}

// ceilingRX: the generator into an XDP_DROP sink on the NIC.
func (s *suite) ceilingRX(size int) Point {
	p := Point{Dir: RX, System: Ceiling, Size: size, VMs: 1, P50: -1, P99: -1, Note: "XDP_DROP on the NIC veth"}
	var sink *pktgen.Sink
	err := s.host.Do(func() (err error) {
		sink, err = pktgen.AttachSink(s.nic.Index, pktgen.SinkOptions{})
		return err
	})
	if err != nil {
		p.Err = err.Error()
		return p
	}
	defer sink.Close()
	recv := func() uint64 {
		st, _ := sink.Stats()
		return st.Frames
	}
	// The sink runs on the generator's CPU (veth runs the receiver's XDP
	// in the sender's context): nothing else to account.
	if err := s.runRX(&p, []net.HardwareAddr{vmMAC(0)}, recv, func() (CPUTimes, error) { return CPUTimes{}, nil }, nil); err != nil {
		p.Err = err.Error()
	}
	p.CPUPerMpkt = -1
	return p
}
