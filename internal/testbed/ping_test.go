package testbed

import (
	"fmt"
	"testing"
)

// fatalTB records a Fatalf instead of ending the test.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper()                        {}
func (f *fatalTB) Fatalf(format string, a ...any) { f.msg = fmt.Sprintf(format, a...) }

func TestCheckPingSeqs(t *testing.T) {
	reply := func(seq int) string {
		return fmt.Sprintf("64 bytes from 10.99.0.22: icmp_seq=%d ttl=64 time=1.38 ms\n", seq)
	}
	head := "PING 10.99.0.22 (10.99.0.22) 56(84) bytes of data.\n"
	for _, c := range []struct {
		name string
		out  string
		ok   bool
	}{
		{"all five", head + reply(1) + reply(2) + reply(3) + reply(4) + reply(5), true},
		{"fifth late, a sixth sent", head + reply(1) + reply(2) + reply(3) + reply(4) + reply(5) + reply(6), true},
		{"third lost, a sixth sent", head + reply(1) + reply(2) + reply(4) + reply(5) + reply(6), false},
		{"four of five", head + reply(1) + reply(2) + reply(3) + reply(4), false},
	} {
		f := &fatalTB{TB: t}
		CheckPingSeqs(f, c.name, c.out, 5)
		if (f.msg == "") != c.ok {
			t.Errorf("%s: failure %q, want ok=%v", c.name, f.msg, c.ok)
		}
	}
}
