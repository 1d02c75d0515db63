package main

import (
	"bytes"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/vmq/vmq/internal/testenv"
)

// TestLab runs README's first command, `vmqd lab`, for a few seconds and
// checks its summary: every frame from the wire reached its guest (vm3
// on VLAN 100), vm1's frames reached the wire, vm2's reached vm1, the
// real ping got its replies, nothing lost, no drop counted by vmqd.
func TestLab(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ping")
	guest := buildTool(t, "../vmq-guest", "vmq-guest")
	var out, errOut bytes.Buffer
	o := labOptions{duration: 3 * time.Second, rate: 2000, guestRate: 500, size: 128, burst: 32,
		guestBin: guest, metricsAddr: "127.0.0.1:9479", logLevel: "warn"}
	if err := runLab(o, &out, &errOut); err != nil {
		t.Fatalf("lab: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	s := out.String()
	t.Logf("lab output:\n%s", s)
	num := func(m []string, i int) uint64 {
		n, _ := strconv.ParseUint(m[i], 10, 64)
		return n
	}
	vmLine := regexp.MustCompile(`(?m)^(vm[123])\s+\S+\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+\s+\S+\s+(\S+)\s*$`)
	sent, recv := map[string]uint64{}, map[string]uint64{}
	for _, m := range vmLine.FindAllStringSubmatch(s, -1) {
		sent[m[1]], recv[m[1]] = num(m, 2), num(m, 3)
		if lost := num(m, 4); lost != 0 {
			t.Errorf("%s: %d frames lost", m[1], lost)
		}
		if m[5] != "0" {
			t.Errorf("%s: vmqd dropped %s during the traffic", m[1], m[5])
		}
	}
	if len(sent) != 3 {
		t.Fatalf("summary has %d VM lines, want 3", len(sent))
	}
	// vm1 and vm2 share one wire flow that alternates between them: the
	// split of its count may differ by one, its sum may not.
	if sent["vm1"]+sent["vm2"] == 0 || recv["vm1"]+recv["vm2"] != sent["vm1"]+sent["vm2"] {
		t.Errorf("vm1+vm2: sent %d, received %d", sent["vm1"]+sent["vm2"], recv["vm1"]+recv["vm2"])
	}
	if sent["vm3"] == 0 || recv["vm3"] != sent["vm3"] {
		t.Errorf("vm3 (VLAN 100): sent %d, received %d", sent["vm3"], recv["vm3"])
	}
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`vm1 → wire: sent (\d+), arrived at the wire (\d+)`),
		regexp.MustCompile(`vm2 → vm1 \(switched locally\): sent (\d+), received (\d+)`),
	} {
		m := re.FindStringSubmatch(s)
		if m == nil || num(m, 1) == 0 || num(m, 1) != num(m, 2) {
			t.Errorf("%s: %q", re, m)
		}
	}
	if !regexp.MustCompile(`ping wire → vm1 .*\b5 received`).MatchString(s) {
		t.Error("ping: not 5 replies")
	}
}
