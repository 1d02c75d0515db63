package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmq/vmq/internal/testenv"
	tpmd "github.com/vmq/vmq/internal/testpmd"
	"github.com/vmq/vmq/pktgen"
)

// A source sends one trial's frames: as fast as it can for d when rate is
// 0, else count frames at rate frames/s. It returns what it sent, for how
// long, and the CPU time of a process it started for the trial (a
// long-lived source is measured through pid instead).
type source interface {
	pid() int
	run(size int, rate float64, count uint64, d time.Duration) (sent uint64, secs float64, cpu CPUTimes, err error)
	close()
}

// A receiver counts one trial's frames: start before the source runs,
// count once it has finished (after the path drained).
type receiver interface {
	pid() int
	start() error
	count() (uint64, error)
	close()
}

// proc is a process started for one trial, its output captured.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr testenv.SyncBuffer
	done           chan error
}

// startProc runs argv pinned to cpu with two Ps for a Go binary.
func startProc(cpu int, argv ...string) (*proc, error) {
	p := &proc{done: make(chan error, 1)}
	p.cmd = exec.Command("taskset", append([]string{"-c", strconv.Itoa(cpu)}, argv...)...)
	p.cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	return p, nil
}

// wait waits up to d for the process and returns its CPU time.
func (p *proc) wait(d time.Duration) (CPUTimes, error) {
	var err error
	select {
	case err = <-p.done:
	case <-time.After(d):
		p.cmd.Process.Kill()
		<-p.done
		return CPUTimes{}, fmt.Errorf("%s did not finish in %v; stderr %s", p.cmd.Path, d, tpmd.Tail(p.stderr.String(), 500))
	}
	u := p.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := CPUTimes{User: time.Duration(u.Utime.Nano()), System: time.Duration(u.Stime.Nano())}
	if err != nil {
		return cpu, fmt.Errorf("%s: %v; stderr %s", strings.Join(p.cmd.Args, " "), err, tpmd.Tail(p.stderr.String(), 500))
	}
	return cpu, nil
}

// ---- vmq-pktgen on the wire end ----

type pktgenSource struct {
	s   *suite
	cpu int
	dst net.HardwareAddr
}

func (g *pktgenSource) pid() int { return 0 }
func (g *pktgenSource) close()   {}

func (g *pktgenSource) run(size int, rate float64, count uint64, d time.Duration) (uint64, float64, CPUTimes, error) {
	args := []string{g.s.bin.pktgen, "--netns", g.s.wire.Name, "--dev", g.s.peer.Name, "--dst-mac", g.dst.String(),
		"--size", strconv.Itoa(size), "--stream", strconv.Itoa(int(g.s.next())), "--json"}
	if rate > 0 {
		args = append(args, "--rate", strconv.FormatFloat(rate, 'f', 0, 64), "--count", strconv.FormatUint(count, 10))
	} else {
		args = append(args, "--duration", d.String())
	}
	p, err := startProc(g.cpu, args...)
	if err != nil {
		return 0, 0, CPUTimes{}, err
	}
	cpu, err := p.wait(d + 30*time.Second)
	if err != nil {
		return 0, 0, cpu, err
	}
	var sum struct {
		Sent    uint64  `json:"sent"`
		Seconds float64 `json:"seconds"`
		Error   string  `json:"error"`
	}
	if err := json.Unmarshal([]byte(p.stdout.String()), &sum); err != nil || sum.Error != "" {
		return 0, 0, cpu, fmt.Errorf("vmq-pktgen summary %q: %v %s", p.stdout.String(), err, sum.Error)
	}
	// A generator that cannot keep its program in the XDP dispatcher
	// waits ~20 ms a call: it would measure itself.
	if i := strings.Index(p.stderr.String(), "warning:"); i >= 0 {
		return 0, 0, cpu, fmt.Errorf("vmq-pktgen not at full speed: %s", strings.SplitN(p.stderr.String()[i:], "\n", 2)[0])
	}
	return sum.Sent, sum.Seconds, cpu, nil
}

// ---- vmq-guest, sending ----

type goGuestSource struct {
	s        *suite
	cpu      int
	sock     string
	mac, dst net.HardwareAddr
}

func (g *goGuestSource) pid() int { return 0 }
func (g *goGuestSource) close()   {}

func (g *goGuestSource) run(size int, rate float64, count uint64, d time.Duration) (uint64, float64, CPUTimes, error) {
	args := []string{g.s.bin.guest, "--socket", g.sock, "--mac", g.mac.String(), "--queue-size", "1024",
		"--send-to", g.dst.String(), "--size", strconv.Itoa(size), "--stream", strconv.Itoa(int(g.s.next())),
		"--linger", "100ms", "--json", "--log-level", "info"}
	secs := d.Seconds()
	if rate > 0 {
		args = append(args, "--rate", strconv.FormatFloat(rate, 'f', 0, 64), "--count", strconv.FormatUint(count, 10))
		secs = 0 // from its log: it may not keep up
	} else {
		args = append(args, "--duration", d.String())
	}
	p, err := startProc(g.cpu, args...)
	if err != nil {
		return 0, 0, CPUTimes{}, err
	}
	cpu, err := p.wait(d + 60*time.Second)
	if err != nil {
		return 0, 0, cpu, err
	}
	var sum struct {
		TxFrames uint64 `json:"tx_frames"`
	}
	if err := json.Unmarshal([]byte(p.stdout.String()), &sum); err != nil {
		return 0, 0, cpu, fmt.Errorf("vmq-guest summary %q: %w", p.stdout.String(), err)
	}
	if secs == 0 {
		// "sending done frames=N elapsed=D" (since start: the connect,
		// a few ms, is in it).
		m := elapsedRE.FindStringSubmatch(p.stderr.String())
		if m == nil {
			return 0, 0, cpu, fmt.Errorf("vmq-guest: no \"sending done\" in its log: %s", tpmd.Tail(p.stderr.String(), 300))
		}
		el, err := time.ParseDuration(m[1])
		if err != nil {
			return 0, 0, cpu, fmt.Errorf("vmq-guest elapsed: %w", err)
		}
		secs = el.Seconds()
	}
	return sum.TxFrames, secs, cpu, nil
}

var elapsedRE = regexp.MustCompile(`msg="sending done".* elapsed=(\S+)`)

// ---- vmq-guest, receiving: a new process each trial (it reports once,
// at exit) ----

type goGuestReceiver struct {
	s    *suite
	cpu  int
	sock string
	mac  net.HardwareAddr
	p    *proc
}

func (r *goGuestReceiver) pid() int {
	if r.p == nil {
		return 0
	}
	return r.p.cmd.Process.Pid
}

func (r *goGuestReceiver) start() error {
	p, err := startProc(r.cpu, r.s.bin.guest, "--socket", r.sock, "--mac", r.mac.String(), "--queue-size", "1024",
		"--json", "--log-level", "info")
	if err != nil {
		return err
	}
	r.p = p
	// Up once the device is: its rings are then posted to the backend.
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(p.stderr.String(), "vhost-user device up"); {
		select {
		case <-p.done:
			r.p = nil
			return fmt.Errorf("vmq-guest exited: %s", tpmd.Tail(p.stderr.String(), 500))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.close()
			return fmt.Errorf("vmq-guest: no device after 20s: %s", tpmd.Tail(p.stderr.String(), 500))
		}
	}
	time.Sleep(200 * time.Millisecond)
	return nil
}

func (r *goGuestReceiver) count() (uint64, error) {
	if r.p == nil {
		return 0, errors.New("vmq-guest receiver not started")
	}
	time.Sleep(300 * time.Millisecond) // drain: it only reports at exit
	p := r.p
	r.p = nil
	p.cmd.Process.Signal(os.Interrupt)
	if _, err := p.wait(10 * time.Second); err != nil {
		return 0, err
	}
	var sum struct {
		RxFrames uint64 `json:"rx_frames"`
	}
	if err := json.Unmarshal([]byte(p.stdout.String()), &sum); err != nil {
		return 0, fmt.Errorf("vmq-guest summary %q: %w", p.stdout.String(), err)
	}
	return sum.RxFrames, nil
}

func (r *goGuestReceiver) close() {
	if r.p != nil {
		r.p.cmd.Process.Kill()
		<-r.p.done
		r.p = nil
	}
}

// ---- DPDK testpmd virtio_user guests ----

type testpmdGuest struct {
	p    *tpmd.Proc
	base uint64
}

// startTestpmdGuest runs testpmd on net_virtio_user at sock with the
// VM's MAC: rxonly (forwarding started at once), or txonly to dst.
func (s *suite) startTestpmdGuest(cpu int, sock string, mac net.HardwareAddr, mode string, dst net.HardwareAddr, packed bool) (*testpmdGuest, error) {
	vdev := fmt.Sprintf("net_virtio_user0,path=%s,queues=1,queue_size=1024,mrg_rxbuf=1,in_order=1,mac=%s", sock, mac)
	if packed {
		vdev += ",packed_vq=1"
	}
	app := []string{"--forward-mode=" + mode}
	if dst != nil {
		app = append(app, "--eth-peer=0,"+dst.String())
	}
	p, err := s.testpmd("g"+mode[:2], "", lcores(cpu, cpu), []string{vdev}, app...)
	if err != nil {
		return nil, err
	}
	g := &testpmdGuest{p: p}
	if mode == "rxonly" {
		if _, err := p.Command("start", tpmd.StartDone); err != nil {
			p.Stop()
			return nil, err
		}
	}
	return g, nil
}

func (g *testpmdGuest) pid() int { return g.p.Pid() }
func (g *testpmdGuest) close()   { g.p.Stop() }

func (g *testpmdGuest) start() (err error) {
	g.base, _, err = g.p.PortPackets(0)
	return err
}

func (g *testpmdGuest) count() (uint64, error) {
	var err error
	n := settle(func() uint64 {
		rx, _, e := g.p.PortPackets(0)
		if e != nil {
			err = e
		}
		return rx
	})
	return n - g.base, err
}

// run (txonly): as fast as it can for d; it takes no rate.
func (g *testpmdGuest) run(size int, rate float64, _ uint64, d time.Duration) (uint64, float64, CPUTimes, error) {
	if rate > 0 {
		return 0, 0, CPUTimes{}, errors.New("testpmd txonly cannot be paced")
	}
	// "set" prints nothing: read the setting back.
	out, err := g.p.Command(fmt.Sprintf("set txpkts %d\nshow config txpkts", size), "Split packet")
	if err != nil {
		return 0, 0, CPUTimes{}, err
	}
	if !strings.Contains(out, fmt.Sprintf("Segment sizes: %d\n", size)) {
		return 0, 0, CPUTimes{}, fmt.Errorf("testpmd txonly: set txpkts %d: %q", size, out)
	}
	if _, err := g.p.Command("start", tpmd.StartDone); err != nil {
		return 0, 0, CPUTimes{}, err
	}
	t0 := time.Now()
	time.Sleep(d)
	out, err = g.p.Command("stop", tpmd.StopDone)
	secs := time.Since(t0).Seconds()
	if err != nil {
		return 0, 0, CPUTimes{}, err
	}
	_, tx, err := tpmd.ParseAccumulated(out)
	return tx, secs, CPUTimes{}, err
}

// ---- the wire end's XDP_DROP counter ----

type sinkReceiver struct {
	sink *pktgen.Sink
	base uint64
}

func (s *suite) wireSink() (*sinkReceiver, error) {
	var sink *pktgen.Sink
	err := s.wire.Do(func() (err error) {
		sink, err = pktgen.AttachSink(s.peer.Index, pktgen.SinkOptions{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("wire sink: %w", err)
	}
	return &sinkReceiver{sink: sink}, nil
}

func (r *sinkReceiver) frames() uint64 {
	st, _ := r.sink.Stats()
	return st.Frames
}

func (r *sinkReceiver) pid() int     { return 0 }
func (r *sinkReceiver) close()       { r.sink.Close() }
func (r *sinkReceiver) start() error { r.base = r.frames(); return nil }
func (r *sinkReceiver) count() (uint64, error) {
	return settle(r.frames) - r.base, nil
}

// settle waits until count stops changing (the path drained) and returns it.
func settle(count func() uint64) uint64 {
	last := count()
	for range 30 {
		time.Sleep(100 * time.Millisecond)
		now := count()
		if now == last {
			return now
		}
		last = now
	}
	return last
}
