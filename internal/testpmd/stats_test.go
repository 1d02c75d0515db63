package testpmd

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// The testdata files are output of DPDK 22.11's testpmd on net_null:
// txonly in the background (stats period, then SIGINT) and interactive
// (start, show port stats 0, stop, quit).
func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParsePortStats(t *testing.T) {
	out := readTestdata(t, "interactive-txonly.txt")
	show := out[strings.Index(out, "show port stats 0"):strings.Index(out, "testpmd> stop")]
	rx, tx, err := ParsePortStats(show)
	if err != nil || rx != 295424 || tx != 15847072 {
		t.Fatalf("got %d %d %v", rx, tx, err)
	}
	// The first of each counter, even when forward statistics follow.
	if rx, tx, err := ParsePortStats(out); err != nil || rx != 295424 || tx != 15847072 {
		t.Fatalf("whole output: got %d %d %v", rx, tx, err)
	}
	for _, bad := range []string{
		"",
		"RX-packets: 1",
		"TX-packets: 1",
		"RX-packets: 99999999999999999999999 TX-packets: 1",
		"RX-packets: 1 TX-packets: 18446744073709551616",
		"RX-packets: -1 TX-packets: 1",
	} {
		if _, _, err := ParsePortStats(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestStat(t *testing.T) {
	out := readTestdata(t, "interactive-txonly.txt")
	stop := out[strings.Index(out, "testpmd> stop"):]
	for _, c := range []struct {
		out, name string
		want      uint64
	}{
		{out, "RX-bytes", 0},
		{out, "TX-packets", 37904960}, // the last: accumulated, after stop
		{stop, "TX-total", 37904960},
		{out, "RX-nombuf", 0},
		{"a.b: 7 axb: 9", "a.b", 7}, // the name is literal, not a pattern
		{"TX-packets: 1\nTX-packets:\t18446744073709551615", "TX-packets", 18446744073709551615},
	} {
		if got, err := Stat(c.out, c.name); err != nil || got != c.want {
			t.Errorf("Stat(%s) = %d, %v; want %d", c.name, got, err, c.want)
		}
	}
	for _, c := range [][2]string{
		{out, "RX-unknown"},
		{"TX-packets: 18446744073709551616", "TX-packets"},
		{"TX-packets:", "TX-packets"},
	} {
		if v, err := Stat(c[0], c[1]); err == nil {
			t.Errorf("Stat(%q, %s) = %d, want an error", c[0], c[1], v)
		}
	}
}

func TestParseAccumulated(t *testing.T) {
	// The background output also has periodic NIC statistics with other
	// RX-packets/TX-packets: only the accumulated block counts.
	out := readTestdata(t, "background-txonly.txt")
	if n := strings.Count(out, "NIC statistics"); n == 0 {
		t.Fatal("testdata lacks the periodic statistics it is meant to test against")
	}
	rx, tx, err := ParseAccumulated(out)
	if err != nil || rx != 0 || tx != 149332512 {
		t.Fatalf("got %d %d %v", rx, tx, err)
	}
	ia := readTestdata(t, "interactive-txonly.txt")
	if rx, tx, err := ParseAccumulated(ia); err != nil || rx != 0 || tx != 37904960 {
		t.Fatalf("interactive: got %d %d %v", rx, tx, err)
	}
	two := "Accumulated forward statistics\n RX-packets: 5 x\n TX-packets: 6\n" +
		"Accumulated forward statistics\n RX-packets: 7 x\n TX-packets: 8\n"
	if rx, tx, err := ParseAccumulated(two); err != nil || rx != 5 || tx != 6 {
		t.Fatalf("two blocks: got %d %d %v, want the first", rx, tx, err)
	}
	for _, bad := range []string{
		"",
		out[:strings.Index(out, "Accumulated")], // killed before it printed them
		"Accumulated forward statistics\n RX-packets: 1\n",
		"RX-packets: 1 TX-packets: 2 Accumulated forward statistics",
		"Accumulated forward statistics RX-packets: 99999999999999999999 TX-packets: 1",
	} {
		if _, _, err := ParseAccumulated(bad); err == nil {
			t.Errorf("%q accepted", Tail(bad, 80))
		}
	}
}

func TestArgs(t *testing.T) {
	c := Config{Prefix: "vmqx", Lcores: "0@0,1@1", Mem: 128, Vdevs: []string{"net_null0", "net_null1"},
		EAL: []string{"--single-file-segments"}, App: []string{"--forward-mode=io"}, Interactive: true}
	args := c.Args()
	prefix := filePrefix(args)
	if !strings.HasPrefix(prefix, "vmqx") || len(prefix) != 15 {
		t.Fatalf("file prefix %q", prefix)
	}
	want := []string{"--lcores=0@0,1@1", "--no-pci", "--file-prefix=" + prefix, "-m", "128", "--single-file-segments",
		"--vdev=net_null0", "--vdev=net_null1", "--", "-i", "--forward-mode=io"}
	if !slices.Equal(args, want) {
		t.Fatalf("args %q\nwant %q", args, want)
	}
	if p2 := filePrefix(c.Args()); p2 == prefix {
		t.Fatalf("two testpmds share file prefix %q", p2)
	}

	// In the background: a stats period keeps it running; a prefix given
	// among the EAL arguments is the one cleaned up.
	c = Config{EAL: []string{"--no-huge", "--file-prefix=mine"}, App: []string{"--file-prefix=notEAL"}}
	args = c.Args()
	want = []string{"--no-pci", "--no-huge", "--file-prefix=mine", "--", "--stats-period=1", "--file-prefix=notEAL"}
	if !slices.Equal(args, want) || filePrefix(args) != "mine" {
		t.Fatalf("args %q prefix %q", args, filePrefix(args))
	}
	if p := filePrefix([]string{"--no-pci"}); p != "" {
		t.Fatalf("prefix %q without one", p)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("RX-packets: 1 TX-packets: 2")
	f.Add("Accumulated forward statistics\n RX-packets: 5\n TX-packets: 6\n")
	f.Fuzz(func(t *testing.T, out string) {
		rx, tx, err := ParsePortStats(out)
		if err == nil && (!strings.Contains(out, "RX-packets:") || !strings.Contains(out, "TX-packets:")) {
			t.Fatalf("parsed %d %d from %q", rx, tx, out)
		}
		if err == nil && strings.Count(out, "RX-packets:") == 1 {
			if v, err := Stat(out, "RX-packets"); err != nil || v != rx {
				t.Fatalf("Stat %d %v, ParsePortStats %d from %q", v, err, rx, out)
			}
		}
		if _, _, err := ParseAccumulated(out); err == nil && !strings.Contains(out, "Accumulated forward statistics") {
			t.Fatalf("accumulated statistics from %q", out)
		}
	})
}

// DPDK 22.11 io forwarding between two net_null ports with
// --record-core-cycles: start, stop, quit.
func TestParseCoreCycles(t *testing.T) {
	c, err := ParseCoreCycles(readTestdata(t, "interactive-io-cycles.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if c.PerPacket != 48.60 || c.Cycles != 1556538392 || c.Packets != 32029440 || c.MHz != 2450 {
		t.Fatalf("got %+v", c)
	}
	if ns := c.NSPerPacket(); ns < 19.83 || ns > 19.84 { // 48.597 cycles at 2.45 GHz
		t.Fatalf("ns per packet %v", ns)
	}
	// Later releases say "busy cycles"; the last line is the one of the last stop.
	two := "CPU cycles/packet=10.00 (busy cycles=100 / total rxonly packets=10) at 1000 MHz Clock\n" +
		"CPU cycles/packet=30.00 (busy cycles=300 / total rxonly packets=10) at 3000 MHz Clock\n"
	if c, err := ParseCoreCycles(two); err != nil || c.Cycles != 300 || c.NSPerPacket() != 10 {
		t.Fatalf("busy cycles: %+v %v", c, err)
	}
	for _, bad := range []string{"", "CPU cycles/packet=1.0 (total cycles=x / total io packets=1) at 1 MHz Clock",
		"CPU cycles/packet=1.0 (total cycles=1 / total io packets=99999999999999999999) at 1 MHz Clock"} {
		if _, err := ParseCoreCycles(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if (CoreCycles{}).NSPerPacket() != 0 {
		t.Error("zero CoreCycles: want 0 ns")
	}
}
