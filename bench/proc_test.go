package bench

import (
	"strings"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses: fields count from the last ')'.
	line := "1234 (a) b (c)) R 1 1234 1234 0 -1 4194304 100 0 0 0 250 37 0 0 20 0 3 0 12345 1000 100 18446744073709551615\n"
	c, err := ParseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if c.User != 2500*time.Millisecond || c.System != 370*time.Millisecond {
		t.Fatalf("got %+v, want user 2.5s system 370ms", c)
	}
	if c.Total() != 2870*time.Millisecond {
		t.Fatalf("total %v", c.Total())
	}
	for name, bad := range map[string]string{
		"no paren":     "1234 a R 1 2 3",
		"short":        "1 (x) R 1 2 3 4 5",
		"not a number": "1 (x) R 1 1 1 0 -1 0 0 0 0 0 xx 37",
		"negative":     "1 (x) R 1 1 1 0 -1 0 0 0 0 0 -5 37",
		"huge":         "1 (x) R 1 1 1 0 -1 0 0 0 0 0 9223372036854775807 37",
	} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("%s: %q parsed", name, bad)
		}
	}
}

var sink int

func TestProcessCPUAdvances(t *testing.T) {
	a, err := SelfCPU()
	if err != nil {
		t.Fatal(err)
	}
	p0, err := ProcessCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	// Spin until getrusage has seen 60ms of CPU (wall time would make this
	// fail on a loaded machine): /proc, with 10ms ticks, must follow.
	for d := time.Duration(0); d < 60*time.Millisecond; {
		for range 1 << 20 {
			sink++
		}
		b, err := SelfCPU()
		if err != nil {
			t.Fatal(err)
		}
		d = b.Sub(a).Total()
	}
	p1, err := ProcessCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	if d := p1.Sub(p0).Total(); d < 30*time.Millisecond {
		t.Errorf("/proc/self/stat advanced %v while getrusage saw 60ms", d)
	}
	if _, err := ProcessCPU(-1); err == nil {
		t.Error("pid -1 has a CPU time")
	}
}

func TestParseCPUBusy(t *testing.T) {
	stat := "cpu  10 0 10 100 5 0 0 0 0 0\ncpu0 3 1 4 50 2 1 1 2 7 0\ncpu1 7 0 6 50 3 0 0 0 0 0\nintr 1\n"
	d, err := parseCPUBusy([]byte(stat), 0)
	if err != nil {
		t.Fatal(err)
	}
	// user+nice+system+irq+softirq+steal = 3+1+4+1+1+2 = 12 ticks; guest (7) is inside user.
	if d != 120*time.Millisecond {
		t.Fatalf("cpu0 busy %v, want 120ms", d)
	}
	if _, err := parseCPUBusy([]byte(stat), 2); err == nil {
		t.Error("cpu2 found")
	}
	if _, err := parseCPUBusy([]byte("cpu0 1 x 1 1 1\n"), 0); err == nil {
		t.Error("bad number accepted")
	}
	if _, err := CPUBusy(0); err != nil {
		t.Errorf("this machine's cpu0: %v", err)
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1 (x) R 1 1 1 0 -1 0 0 0 0 0 250 37 0 0"))
	f.Add([]byte("1 ((()) R"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseStat(b)
		if err != nil {
			return
		}
		if c.User < 0 || c.System < 0 {
			t.Fatalf("negative CPU time %+v from %q", c, b)
		}
		if !strings.Contains(string(b), ")") {
			t.Fatalf("parsed %q without a command name", b)
		}
	})
}
