// Package testpmd runs dpdk-testpmd for tests and benchmarks of any
// package: DPDK guests (net_virtio_user) and backends (net_vhost,
// net_af_xdp) to interoperate with.
//
// A Proc runs in one of two ways:
//   - interactive (-i, driven through stdin): forwarding starts on
//     Command("start", ...), so the test decides when frames flow, and
//     counters are read with "show port stats";
//   - in the background (--stats-period=1 keeps it running without a
//     terminal): forwarding starts at once, Stop interrupts it and the
//     final counts are read from its "Accumulated forward statistics".
//
// Every Proc gets a unique hugepage --file-prefix; Stop (also run at test
// cleanup) ends it and removes its hugepage files and runtime directory,
// which matters because hugepages are shared with everything else on the
// machine.
package testpmd

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
)

// Prompt is what interactive testpmd prints once EAL and ports are up.
const Prompt = "testpmd> "

// Markers that end the output of common interactive commands.
const (
	StartDone = "packet forwarding" // "start"
	StopDone  = "Done."             // "stop"
	StatsDone = "Tx-bps:"           // "show port stats N"
)

// Config describes one testpmd.
type Config struct {
	// Name tells testpmds apart in errors and logs.
	Name string
	// NetNS, when set, runs testpmd in that named network namespace
	// (ip netns exec, which execs testpmd in place: Pid stays testpmd's).
	NetNS string
	// Prefix, when set, adds --file-prefix=<Prefix + random suffix>.
	// Without it the EAL arguments may carry their own --file-prefix.
	Prefix string
	// Lcores, when set, adds --lcores=<Lcores> (e.g. "0@0,1@1").
	Lcores string
	// Mem, when positive, adds -m <Mem> (MB).
	Mem int
	// Vdevs are added as --vdev=<v>.
	Vdevs []string
	// EAL are further EAL arguments (--single-file-segments, --no-huge, ...).
	EAL []string
	// App are the application arguments, after "--".
	App []string
	// Interactive runs testpmd with -i and a stdin for Command; otherwise
	// it runs in the background with --stats-period=1.
	Interactive bool
}

// Proc is one running testpmd. Its methods are safe for concurrent use.
type Proc struct {
	tb     testing.TB
	name   string
	argv   []string
	prefix string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	done   chan struct{}
	stop   sync.Once

	mu  sync.Mutex
	out bytes.Buffer
}

// Args returns testpmd's command line (without the program) for c.
func (c Config) Args() []string {
	var args []string
	if c.Lcores != "" {
		args = append(args, "--lcores="+c.Lcores)
	}
	args = append(args, "--no-pci")
	if c.Prefix != "" {
		args = append(args, "--file-prefix="+netnstest.UniqueName(c.Prefix))
	}
	if c.Mem > 0 {
		args = append(args, "-m", strconv.Itoa(c.Mem))
	}
	args = append(args, c.EAL...)
	for _, v := range c.Vdevs {
		args = append(args, "--vdev="+v)
	}
	args = append(args, "--")
	if c.Interactive {
		args = append(args, "-i")
	} else {
		// Without -i testpmd waits for Enter on stdin, which is /dev/null
		// here; a stats period makes it forward until interrupted instead.
		args = append(args, "--stats-period=1")
	}
	return append(args, c.App...)
}

// filePrefix returns the last --file-prefix among the EAL arguments.
func filePrefix(args []string) string {
	prefix := ""
	for _, a := range args {
		if a == "--" {
			break
		}
		if s, ok := strings.CutPrefix(a, "--file-prefix="); ok {
			prefix = s
		}
	}
	return prefix
}

// Start starts testpmd and returns without waiting for it to initialise
// (a virtio_user in server mode does not finish until its backend
// connects): use WaitPrompt when that matters. It skips the test (fails
// it under VMQ_REQUIRE_ALL=1) when dpdk-testpmd, or stdbuf for an
// interactive one, is missing. At cleanup the process is stopped, its
// files removed and, if the test failed, its output logged.
func Start(tb testing.TB, c Config) (*Proc, error) {
	tb.Helper()
	bin := testenv.RequireCommand(tb, "dpdk-testpmd")
	args := c.Args()
	argv := append([]string{bin}, args...)
	if c.Interactive {
		// stdout is a pipe: unbuffer it, or command output arrives late.
		stdbuf := testenv.RequireCommand(tb, "stdbuf")
		argv = append([]string{stdbuf, "-o0", "-e0"}, argv...)
	}
	if c.NetNS != "" {
		argv = append([]string{"ip", "netns", "exec", c.NetNS}, argv...)
	}
	p := &Proc{tb: tb, name: c.Name, argv: argv, prefix: filePrefix(args), done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = (*writer)(p), (*writer)(p)
	if c.Interactive {
		var err error
		if p.stdin, err = p.cmd.StdinPipe(); err != nil {
			return nil, fmt.Errorf("testpmd %s: %w", p.name, err)
		}
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start testpmd %s: %w", p.name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	tb.Cleanup(func() {
		p.Stop()
		if tb.Failed() {
			tb.Logf("testpmd %s (%s) output:\n%s", p.name, strings.Join(p.argv, " "), p.Output())
		}
	})
	return p, nil
}

// StartReady starts an interactive testpmd and waits up to wait for its
// prompt. Hugepages are shared with whatever else runs on the machine: when
// EAL cannot get memory it retries every 3s, 10 times, rather than fail.
// Each attempt has a fresh file prefix.
func StartReady(tb testing.TB, c Config, wait time.Duration) (*Proc, error) {
	tb.Helper()
	c.Interactive = true
	for try := 0; ; try++ {
		p, err := startReadyOnce(tb, c, wait)
		if err == nil || try == 10 || !strings.Contains(err.Error(), "Cannot init memory") {
			return p, err
		}
		tb.Logf("testpmd %s: hugepages short, retrying in 3s", c.Name)
		time.Sleep(3 * time.Second)
	}
}

func startReadyOnce(tb testing.TB, c Config, wait time.Duration) (*Proc, error) {
	p, err := Start(tb, c)
	if err != nil {
		return nil, err
	}
	if err := p.WaitFor(Prompt, wait); err != nil {
		p.Stop()
		return nil, fmt.Errorf("testpmd %s (%s): %w\n%s", p.name, strings.Join(p.argv, " "), err, Tail(p.Output(), 2000))
	}
	return p, nil
}

// writer collects testpmd's stdout and stderr.
type writer Proc

func (w *writer) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.Write(b)
}

// Output returns everything testpmd printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Name is Config.Name.
func (p *Proc) Name() string { return p.name }

// Pid is testpmd's own pid: ip netns exec and stdbuf exec it in place.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed once testpmd has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// WaitPrompt waits up to d for the first prompt.
func (p *Proc) WaitPrompt(d time.Duration) error { return p.WaitFor(Prompt, d) }

// WaitFor waits up to d until the output so far contains marker.
func (p *Proc) WaitFor(marker string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if strings.Contains(p.Output(), marker) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited before %q", marker)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("no %q after %v", marker, d)
}

// Command sends one line to an interactive testpmd and returns the output
// that follows it, once that contains marker and a newline after it
// (testpmd prints the prompt before a command's output, so the prompt is
// no marker). It gives up after 20s.
func (p *Proc) Command(line, marker string) (string, error) {
	if p.stdin == nil {
		return "", fmt.Errorf("testpmd %s %q: not interactive", p.name, line)
	}
	start := len(p.Output())
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		return "", fmt.Errorf("testpmd %s %q: %w", p.name, line, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		out := p.Output()[start:]
		if i := strings.Index(out, marker); i >= 0 && strings.Contains(out[i:], "\n") {
			return out, nil
		}
		select {
		case <-p.done:
			return "", fmt.Errorf("testpmd %s exited during %q:\n%s", p.name, line, Tail(p.Output(), 2000))
		case <-time.After(5 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("testpmd %s %q: no %q in output", p.name, line, marker)
}

// PortPackets returns a port's RX-packets and TX-packets counters
// ("show port stats <port>").
func (p *Proc) PortPackets(port int) (rx, tx uint64, err error) {
	out, err := p.Command(fmt.Sprintf("show port stats %d", port), StatsDone)
	if err != nil {
		return 0, 0, err
	}
	return ParsePortStats(out)
}

// PortStat returns one counter (e.g. "RX-bytes") of a port.
func (p *Proc) PortStat(port int, name string) (uint64, error) {
	out, err := p.Command(fmt.Sprintf("show port stats %d", port), StatsDone)
	if err != nil {
		return 0, err
	}
	v, err := Stat(out, name)
	if err != nil {
		return 0, fmt.Errorf("%w in:\n%s", err, out)
	}
	return v, nil
}

// Stop ends testpmd and removes its hugepage files and runtime directory.
// An interactive one gets "stop" and "quit", a background one SIGINT (it
// then prints its accumulated statistics); either is killed if it has
// not exited after 5s (10s in the background: printing statistics of a
// busy run takes longer). Stop is idempotent and safe to call from
// several goroutines; later calls return once the first has finished.
func (p *Proc) Stop() {
	p.stop.Do(func() {
		select {
		case <-p.done:
		default:
			grace := 10 * time.Second
			if p.stdin != nil {
				grace = 5 * time.Second
				_, _ = io.WriteString(p.stdin, "stop\nquit\n")
			} else {
				_ = p.cmd.Process.Signal(syscall.SIGINT)
			}
			select {
			case <-p.done:
			case <-time.After(grace):
				p.Kill()
			}
		}
		p.removeFiles()
	})
}

// Kill kills testpmd at once (a crash: no goodbye to its peers) and
// waits for it to exit. Its files stay until Stop.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *Proc) removeFiles() {
	if p.prefix == "" {
		return
	}
	files, _ := filepath.Glob("/dev/hugepages/" + p.prefix + "*")
	for _, f := range files {
		os.Remove(f)
	}
	os.RemoveAll("/var/run/dpdk/" + p.prefix)
}

// Tail returns the last n bytes of s, marked as cut when they are not all.
func Tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
