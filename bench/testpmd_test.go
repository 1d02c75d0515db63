package bench

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
)

// testpmd is an interactive dpdk-testpmd driven through its stdin:
// forwarding starts on "start", so the suite decides when frames flow.
type testpmd struct {
	tb     testing.TB
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	mu     sync.Mutex
	out    bytes.Buffer
	prefix string
	done   chan struct{}
	once   sync.Once
}

func (p *testpmd) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *testpmd) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Pid is testpmd's own pid: `ip netns exec` and stdbuf exec it in place.
func (p *testpmd) Pid() int { return p.cmd.Process.Pid }

// startTestpmd runs testpmd with lcores (e.g. "0@1,1@1": the main and the
// forwarding lcore), a unique hugepage file prefix and the given vdevs,
// inside ns when it is not nil.
func startTestpmd(tb testing.TB, name string, ns *netnstest.NS, lcores string, vdevs []string, app ...string) (*testpmd, error) {
	// Hugepages are shared with whatever else runs on the machine: wait a
	// while for them rather than fail the point.
	for try := 0; ; try++ {
		p, err := startTestpmdOnce(tb, name, ns, lcores, vdevs, app...)
		if err == nil || try == 10 || !strings.Contains(err.Error(), "Cannot init memory") {
			return p, err
		}
		tb.Logf("testpmd %s: hugepages short, retrying in 3s", name)
		time.Sleep(3 * time.Second)
	}
}

func startTestpmdOnce(tb testing.TB, name string, ns *netnstest.NS, lcores string, vdevs []string, app ...string) (*testpmd, error) {
	bin := testenv.RequireCommand(tb, "dpdk-testpmd")
	stdbuf := testenv.RequireCommand(tb, "stdbuf")
	prefix := netnstest.UniqueName("vmqbench" + name)
	args := []string{"--lcores=" + lcores, "--no-pci", "--file-prefix=" + prefix, "-m", "256",
		"--single-file-segments", "--log-level=lib.eal:error"}
	for _, v := range vdevs {
		args = append(args, "--vdev="+v)
	}
	args = append(append(args, "--", "-i"), app...)
	// stdout is a pipe: unbuffer it, or command output arrives late.
	argv := append([]string{stdbuf, "-o0", "-e0", bin}, args...)
	if ns != nil {
		argv = append([]string{"ip", "netns", "exec", ns.Name}, argv...)
	}
	p := &testpmd{tb: tb, name: name, prefix: prefix, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("testpmd %s: %w", name, err)
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start testpmd %s: %w", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	tb.Cleanup(p.kill)
	if err := p.wait("testpmd> ", 60*time.Second); err != nil {
		p.kill()
		return nil, fmt.Errorf("testpmd %s (%s): %w\n%s", name, strings.Join(argv, " "), err, tail(p.output(), 2000))
	}
	return p, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// wait waits until the output so far contains marker.
func (p *testpmd) wait(marker string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if strings.Contains(p.output(), marker) {
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

// command sends one line and returns the output that follows it, once it
// contains marker and a newline after it.
func (p *testpmd) command(line, marker string) (string, error) {
	start := len(p.output())
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		return "", fmt.Errorf("testpmd %s %q: %w", p.name, line, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		out := p.output()[start:]
		if i := strings.Index(out, marker); i >= 0 && strings.Contains(out[i:], "\n") {
			return out, nil
		}
		select {
		case <-p.done:
			return "", fmt.Errorf("testpmd %s exited during %q:\n%s", p.name, line, tail(p.output(), 2000))
		case <-time.After(5 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("testpmd %s %q: no %q in output", p.name, line, marker)
}

var (
	rxPacketsRE = regexp.MustCompile(`RX-packets:\s+(\d+)`)
	txPacketsRE = regexp.MustCompile(`TX-packets:\s+(\d+)`)
)

// portPackets returns a port's RX-packets and TX-packets counters.
func (p *testpmd) portPackets(port int) (rx, tx uint64, err error) {
	out, err := p.command(fmt.Sprintf("show port stats %d", port), "Tx-bps:")
	if err != nil {
		return 0, 0, err
	}
	return parsePortStats(out)
}

// parsePortStats reads the first RX-packets and TX-packets of a
// "show port stats" output.
func parsePortStats(out string) (rx, tx uint64, err error) {
	m1, m2 := rxPacketsRE.FindStringSubmatch(out), txPacketsRE.FindStringSubmatch(out)
	if m1 == nil || m2 == nil {
		return 0, 0, fmt.Errorf("port stats: no RX-packets/TX-packets in %q", tail(out, 400))
	}
	if rx, err = strconv.ParseUint(m1[1], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("port stats: RX-packets: %w", err)
	}
	if tx, err = strconv.ParseUint(m2[1], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("port stats: TX-packets: %w", err)
	}
	return rx, tx, nil
}

// kill quits testpmd (kills it after 5s) and removes its hugepage files
// and runtime directory.
func (p *testpmd) kill() {
	p.once.Do(func() {
		select {
		case <-p.done:
		default:
			io.WriteString(p.stdin, "stop\nquit\n")
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				p.cmd.Process.Kill()
				<-p.done
			}
		}
		files, _ := filepath.Glob("/dev/hugepages/" + p.prefix + "*")
		for _, f := range files {
			os.Remove(f)
		}
		os.RemoveAll("/var/run/dpdk/" + p.prefix)
	})
}
