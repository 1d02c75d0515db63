// Package kpktgen holds the tests of the kernel pktgen scripts; the
// kernel here has no pktgen, so they check syntax and the --dry-run writes.
package kpktgen

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/vmq/vmq/internal/testenv"
)

const script = "./pktgen-vms.sh"

func TestSyntax(t *testing.T) {
	testenv.RequireCommand(t, "bash")
	if out, err := exec.Command("bash", "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
}

func TestShellcheck(t *testing.T) {
	sc := testenv.RequireCommand(t, "shellcheck")
	if out, err := exec.Command(sc, script).CombinedOutput(); err != nil {
		t.Fatalf("shellcheck: %v\n%s", err, out)
	}
}

var writeRE = regexp.MustCompile(`^echo "([^"]*)" > /proc/net/pktgen/(\S+)$`)

// dryRun returns the writes as file -> commands, in order.
func dryRun(t *testing.T, args ...string) (map[string][]string, []string) {
	t.Helper()
	out, err := exec.Command("bash", append([]string{script, "--dry-run"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	writes := map[string][]string{}
	var order []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		m := writeRE.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("unexpected output line %q", line)
		}
		writes[m[2]] = append(writes[m[2]], m[1])
		order = append(order, m[2]+": "+m[1])
	}
	return writes, order
}

func TestDryRun(t *testing.T) {
	testenv.RequireCommand(t, "bash")
	macs := []string{"02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"}
	w, order := dryRun(t, "-i", "eth7", "-m", strings.Join(macs, ","), "-d", "10.9.8.7", "-s", "128",
		"-t", "2", "-f", "1", "-b", "16", "-n", "1000", "-v", "100", "-q", "200", "-p", "1000-1999")
	if order[0] != "pgctrl: reset" || order[len(order)-1] != "pgctrl: start" {
		t.Fatalf("first/last writes %q, %q", order[0], order[len(order)-1])
	}
	if _, ok := w["kpktgend_0"]; ok {
		t.Fatal("thread 0 used despite -f 1")
	}
	for th := 0; th < 2; th++ {
		thread := fmt.Sprintf("kpktgend_%d", 1+th)
		want := []string{"rem_device_all"}
		for k := range macs {
			want = append(want, fmt.Sprintf("add_device eth7@%d", th*len(macs)+k))
		}
		if got := w[thread]; strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("%s writes %q, want %q", thread, got, want)
		}
		for k, mac := range macs {
			dev := fmt.Sprintf("eth7@%d", th*len(macs)+k)
			got := strings.Join(w[dev], "|")
			for _, c := range []string{"count 1000", "pkt_size 128", "burst 16", "dst 10.9.8.7", "dst_mac " + mac,
				"vlan_id 100", "svlan_id 200", "udp_src_min 1000", "udp_src_max 1999", "flag UDPSRC_RND",
				"flag QUEUE_MAP_CPU", "clone_skb 0"} {
				if !strings.Contains("|"+got+"|", "|"+c+"|") {
					t.Errorf("%s: no %q in %q", dev, c, got)
				}
			}
		}
	}
	if len(w) != 1+2+6 {
		t.Fatalf("wrote to %d files: %v", len(w), w)
	}
	// Defaults: untagged, fixed port, one thread.
	w, _ = dryRun(t, "-i", "eth0", "-m", macs[0])
	got := strings.Join(w["eth0@0"], "|")
	if strings.Contains(got, "vlan") || strings.Contains(got, "UDPSRC_RND") || !strings.Contains(got, "pkt_size 60") || len(w) != 3 {
		t.Fatalf("defaults: %v", w)
	}
}

func TestBadArguments(t *testing.T) {
	testenv.RequireCommand(t, "bash")
	for _, args := range [][]string{
		{}, {"-i", "eth0"}, {"-m", "02:00:00:00:00:0a"},
		{"-i", "eth0", "-m", "zz"},
		{"-i", "eth0", "-m", "02:00:00:00:00:0a", "-v", "4095"},
		{"-i", "eth0", "-m", "02:00:00:00:00:0a", "-q", "5"},
		{"-i", "eth0", "-m", "02:00:00:00:00:0a", "-s", "20"},
		{"-i", "eth0", "-m", "02:00:00:00:00:0a", "-t", "x"},
		{"-i", "eth0", "-m", "02:00:00:00:00:0a", "-p", "9-1"},
		{"-i", "eth0", "-m", "02:00:00:00:00:0a", "-d", "not-an-ip"},
		{"-i", "eth0;rm", "-m", "02:00:00:00:00:0a"},
		{"-i", "eth0", "-m", "02:00:00:00:00:0a", "stray"},
	} {
		cmd := exec.Command("bash", append([]string{script, "--dry-run"}, args...)...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("%q: %v, want exit 2\n%s", args, err, out)
		}
		if strings.Contains(string(out), "/proc/net/pktgen") {
			t.Errorf("%q: wrote something before failing:\n%s", args, out)
		}
	}
}
