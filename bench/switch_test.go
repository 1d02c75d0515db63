package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	tpmd "github.com/vmq/vmq/internal/testpmd"
)

// A switch under test: vmqd, or DPDK's forwarding testpmd. It serves
// vhost-user sockets (listening) for the VMs of a case; begin and end
// bracket one trial and end returns what the trial cost the switch.
type switchUT interface {
	pid() int
	socket(vm int) string
	begin() error
	end() (trialCost, error)
	close()
}

// trialCost is what a switch reports of one trial.
type trialCost struct {
	busyNS float64 // the forwarding core's busy time per frame moved
	moved  uint64  // the frames busyNS counts, over the whole trial
	how    string  // how busyNS was measured
	drops  string  // where the switch lost frames
	copied float64 // frame bytes copied into guests per frame delivered (vmq); -1 unknown
}

// vms is how many VMs a direction needs.
func vms(dir string) int {
	if dir == VM2VM {
		return 2
	}
	return 1
}

// ---- vmq: the vmqd binary ----

type vmqSwitch struct {
	// dedicated: the VMs are on a dedicated queue, and every trial checks
	// that it writes into guest memory (no fallback to copying).
	dedicated bool
	cmd       *exec.Cmd
	done      chan struct{}
	log       *os.File
	api       string
	socks     []string
	http      *http.Client
	before    vmqStats
}

// startVMQ runs vmqd (the binary bin) on the switch's CPU serving the NIC's queue: as its one shared
// queue, or, with dedicated, as the VMs' dedicated queue (the wire steers
// their frames there: dedicated_steering external; queue 0 stays the
// shared one). A split placement puts its worker on the switch's CPU and
// its other threads on the control CPU (worker_cpus, housekeeping_cpus).
func (s *suite) startVMQ(bin, dir string, pl Placement, queue int, dedicated bool) (switchUT, error) {
	if dedicated && (queue == 0 || vms(dir) != 1) {
		return nil, fmt.Errorf("a dedicated queue needs one VM and a queue other than 0, not %d VMs on queue %d", vms(dir), queue)
	}
	d := filepath.Join(s.dir, fmt.Sprintf("vmq%d", s.next()))
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	pins := s.bed.PinDir()
	v := &vmqSwitch{dedicated: dedicated, api: filepath.Join(d, "api.sock"), done: make(chan struct{})}
	// vmqd's defaults otherwise (busy_poll 50µs): what a user runs.
	var cfg strings.Builder
	shared, vmKeys := queue, ""
	if dedicated {
		shared, vmKeys = 0, fmt.Sprintf(", queue: dedicated, queue_id: %d, dedicated: required", queue)
		cfg.WriteString("dedicated_steering: external\n")
	}
	// VMQ_BENCH_VMQD_CONFIG: top-level YAML lines added to vmqd's config
	// (experiments, e.g. "polling: {busy_poll: 1s}"); make bench leaves it unset.
	if extra := os.Getenv("VMQ_BENCH_VMQD_CONFIG"); extra != "" {
		cfg.WriteString(extra + "\n")
	}
	cpus := strconv.Itoa(pl.SUT)
	if pl.Split {
		cpus += "," + strconv.Itoa(pl.Ctl())
		fmt.Fprintf(&cfg, "worker_cpus: [%d]\nhousekeeping_cpus: [%d]\n", pl.SUT, pl.Ctl())
	}
	fmt.Fprintf(&cfg, "nic: %s\nqueues: [%d]\npin_dir: %s\napi: {socket: %s}\nmetrics: {address: \"\"}\nvms:\n", s.nic.Name, shared, pins, v.api)
	for i := range vms(dir) {
		sock := filepath.Join(d, fmt.Sprintf("vm%d.sock", i))
		v.socks = append(v.socks, sock)
		fmt.Fprintf(&cfg, "  - {name: vm%d, mac: %q, socket: %s, mode: server%s}\n", i, vmMAC(i), sock, vmKeys)
	}
	cfgPath := filepath.Join(d, "vmqd.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		return nil, err
	}
	var err error
	if v.log, err = os.Create(filepath.Join(d, "vmqd.log")); err != nil {
		return nil, err
	}
	v.cmd = exec.Command("taskset", "-c", cpus, bin, "--config", cfgPath, "--netns", s.host.Name, "--log-level", "warn")
	// No GOMAXPROCS: vmqd gives its worker a P of its own on top of the
	// CPUs it may use (dataplane.reserveWorkerPs), so on one CPU or split
	// it runs with two Ps, the locked worker thread and the rest threads
	// the kernel schedules, as a user's vmqd does.
	v.cmd.Stdout, v.cmd.Stderr = v.log, v.log
	if err := v.cmd.Start(); err != nil {
		v.log.Close()
		return nil, fmt.Errorf("start vmqd: %w", err)
	}
	go func() { v.cmd.Wait(); close(v.done) }()
	v.http = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", v.api)
		}}}
	for try := 0; ; try++ {
		if _, err := v.stats(); err == nil {
			break
		} else if try == 100 {
			v.close()
			return nil, fmt.Errorf("vmqd API did not answer in 10s: %v; log: %s", err, tpmd.Tail(v.logText(), 1000))
		}
		select {
		case <-v.done:
			return nil, fmt.Errorf("vmqd exited: %s", tpmd.Tail(v.logText(), 1000))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return v, nil
}

func (v *vmqSwitch) logText() string {
	b, _ := os.ReadFile(v.log.Name())
	return string(b)
}

func (v *vmqSwitch) pid() int             { return v.cmd.Process.Pid }
func (v *vmqSwitch) socket(vm int) string { return v.socks[vm] }

func (v *vmqSwitch) close() {
	v.cmd.Process.Signal(os.Interrupt)
	select {
	case <-v.done:
	case <-time.After(10 * time.Second):
		v.cmd.Process.Kill()
		<-v.done
	}
	v.log.Close()
}

func (v *vmqSwitch) stats() (vmqStats, error) {
	var st vmqStats
	resp, err := v.http.Get("http://vmqd/v1/stats")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /v1/stats: %s", resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return st, fmt.Errorf("GET /v1/stats: %w", err)
	}
	return parseVMQStats(b)
}

// begin reads the counters; on a dedicated queue it first waits (up to
// 20 s: registering the guest's memory pins it) until the queue writes
// into guest memory with buffers posted.
func (v *vmqSwitch) begin() (err error) {
	for deadline := time.Now().Add(20 * time.Second); ; {
		if v.before, err = v.stats(); err != nil || !v.dedicated {
			return err
		}
		if err = vmqDirect(v.before, true); err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (v *vmqSwitch) end() (trialCost, error) {
	after, err := v.stats()
	if err != nil {
		return trialCost{}, err
	}
	if v.dedicated {
		if err := vmqDirect(after, false); err != nil {
			return trialCost{}, err
		}
	}
	ns, how := vmqBusyPerFrame(v.before, after)
	return trialCost{busyNS: ns, moved: vmqMoved(v.before, after), how: how, drops: vmqDrops(v.before, after),
		copied: vmqCopied(v.before, after)}, nil
}

// ---- DPDK: testpmd io forwarding ----

type dpdkSwitch struct {
	fwd   *tpmd.Proc
	socks []string
	mhz   *uint64
}

// startDPDK runs testpmd forwarding (io) between net_af_xdp on the NIC's
// queue and net_vhost for RX and TX, or between two net_vhost ports for
// VM→VM: the forwarding lcore on the switch's CPU, the main lcore (it
// waits on stdin) there too or, split, on the control CPU.
func (s *suite) startDPDK(dir string, pl Placement, queue int) (switchUT, error) {
	d := &dpdkSwitch{mhz: &s.report.TSCMHz}
	var vdevs []string
	if dir != VM2VM {
		vdevs = append(vdevs, fmt.Sprintf("net_af_xdp0,iface=%s,start_queue=%d,queue_count=1", s.nic.Name, queue))
	}
	for i := range vms(dir) {
		sock := filepath.Join(s.dir, fmt.Sprintf("dpdk%d-%d.sock", s.next(), i))
		d.socks = append(d.socks, sock)
		vdevs = append(vdevs, fmt.Sprintf("net_vhost%d,iface=%s,queues=1", i, sock))
	}
	p, err := s.testpmd("fwd", s.host.Name, lcores(pl.Ctl(), pl.SUT), vdevs, "--forward-mode=io", "--record-core-cycles")
	if err != nil {
		return nil, err
	}
	d.fwd = p
	return d, nil
}

func (d *dpdkSwitch) pid() int             { return d.fwd.Pid() }
func (d *dpdkSwitch) socket(vm int) string { return d.socks[vm] }
func (d *dpdkSwitch) close()               { d.fwd.Stop() }

// begin starts forwarding, which also zeroes testpmd's forward
// statistics and core cycles.
func (d *dpdkSwitch) begin() error {
	_, err := d.fwd.Command("start", tpmd.StartDone)
	return err
}

func (d *dpdkSwitch) end() (trialCost, error) {
	out, err := d.fwd.Command("stop", tpmd.StopDone)
	if err != nil {
		return trialCost{}, err
	}
	c, err := tpmd.ParseCoreCycles(out)
	if err != nil {
		return trialCost{}, err
	}
	*d.mhz = c.MHz
	// The last counters printed are the accumulated ones: RX-dropped is
	// what the ports missed (af_xdp: the kernel socket's drops), TX-dropped
	// what found the other side's ring full.
	rxd, err1 := tpmd.Stat(out, "RX-dropped")
	txd, err2 := tpmd.Stat(out, "TX-dropped")
	drops := fmt.Sprintf("forwarder RX-dropped %d, TX-dropped %d", rxd, txd)
	if err1 != nil || err2 != nil {
		drops = "forwarder drops not printed"
	}
	return trialCost{busyNS: c.NSPerPacket(), moved: c.Packets, how: fmt.Sprintf("--record-core-cycles %.1f cycles at %d MHz", c.PerPacket, c.MHz),
		drops: drops, copied: -1}, nil
}

// lcores is testpmd's --lcores: the main lcore on main, the forwarding
// lcore on fwd.
func lcores(main, fwd int) string { return fmt.Sprintf("0@%d,1@%d", main, fwd) }

// testpmd starts an interactive testpmd with its lcores placed (lcores)
// and 1024-entry rings.
func (s *suite) testpmd(name, netns, lcores string, vdevs []string, app ...string) (*tpmd.Proc, error) {
	c := tpmd.Config{Name: name, NetNS: netns, Prefix: "vmqbench" + name, Lcores: lcores, Mem: 256,
		Vdevs: vdevs, EAL: []string{"--single-file-segments", "--log-level=lib.eal:error"},
		App: append([]string{"--nb-cores=1", "--rxd=1024", "--txd=1024"}, app...)}
	p, err := tpmd.StartReady(s.b, c, 60*time.Second)
	if err != nil {
		return nil, err
	}
	return p, nil
}
