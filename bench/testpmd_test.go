package bench

import (
	"testing"
	"time"

	"github.com/vmq/vmq/internal/netnstest"
	tpmd "github.com/vmq/vmq/internal/testpmd"
)

// testpmd is an interactive dpdk-testpmd driven through its stdin:
// forwarding starts on "start", so the suite decides when frames flow.
type testpmd struct {
	*tpmd.Proc
	name string
}

// startTestpmd runs testpmd with lcores (e.g. "0@1,1@1": the main and the
// forwarding lcore), a unique hugepage file prefix and the given vdevs,
// inside ns when it is not nil, and waits for its prompt. Hugepages are
// shared with whatever else runs on the machine: it waits a while for
// them rather than fail the point.
func startTestpmd(tb testing.TB, name string, ns *netnstest.NS, lcores string, vdevs []string, app ...string) (*testpmd, error) {
	c := tpmd.Config{Name: name, Prefix: "vmqbench" + name, Lcores: lcores, Mem: 256, Vdevs: vdevs,
		EAL: []string{"--single-file-segments", "--log-level=lib.eal:error"}, App: app, Interactive: true}
	if ns != nil {
		c.NetNS = ns.Name
	}
	p, err := tpmd.StartReady(tb, c, 60*time.Second)
	if err != nil {
		return nil, err
	}
	return &testpmd{Proc: p, name: name}, nil
}

func (p *testpmd) output() string { return p.Output() }

// command sends one line and returns the output that follows it, once it
// contains marker and a newline after it.
func (p *testpmd) command(line, marker string) (string, error) { return p.Command(line, marker) }

// portPackets returns a port's RX-packets and TX-packets counters.
func (p *testpmd) portPackets(port int) (rx, tx uint64, err error) { return p.PortPackets(port) }

// kill quits testpmd (kills it after 5s) and removes its hugepage files
// and runtime directory.
func (p *testpmd) kill() { p.Stop() }

// parsePortStats reads the first RX-packets and TX-packets of a
// "show port stats" output.
func parsePortStats(out string) (rx, tx uint64, err error) { return tpmd.ParsePortStats(out) }

func tail(s string, n int) string { return tpmd.Tail(s, n) }
