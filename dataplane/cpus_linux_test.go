package dataplane

import (
	"fmt"
	"runtime"
	"slices"
	"testing"

	"github.com/vmq/vmq/internal/cpuset"
	tbed "github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// Two workers sharing CPU 1 (worker_cpus wraps around), every other thread
// of the process on CPU 0 while the dataplane runs, exact delivery on
// both queues, GOMAXPROCS raised to a P per worker and housekeeping CPU;
// Close gives every thread the process's CPUs and GOMAXPROCS back.
func TestCPUPlacementInProcess(t *testing.T) {
	allowed, err := cpuset.Allowed()
	if err != nil || !slices.Contains(allowed, 0) || !slices.Contains(allowed, 1) {
		testenv.Skip(t, "needs CPUs 0 and 1 (allowed: %v %v)", allowed, err)
	}
	procs := runtime.GOMAXPROCS(0)
	tb := newTestbedCfg(t, 2, func(c *Config) { c.WorkerCPUs, c.HousekeepingCPUs = []int{1}, []int{0} })
	g := tb.addVM("vm1", 1, mac1, 0, 2, "")
	if got := runtime.GOMAXPROCS(0); got < 3 {
		t.Errorf("GOMAXPROCS %d with 2 workers and 1 housekeeping CPU", got)
	}
	masks := func(when string, want func(tid int) []int) {
		t.Helper()
		th, err := cpuset.Threads(0)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range th {
			if w := want(x.TID); !slices.Equal(x.CPUs, w) {
				t.Errorf("%s: thread %d (%s) on CPUs %s, want %s", when, x.TID, x.Name, cpuset.Format(x.CPUs), cpuset.Format(w))
			}
		}
	}
	workers := tb.dp.WorkerThreads()
	placed := func(tid int) []int {
		if slices.Contains(workers, tid) {
			return []int{1}
		}
		return []int{0}
	}
	masks("running", placed)
	const n = 2000
	for q := range 2 { // on veth a frame sent from CPU q lands on queue q
		tb.SendOnCPU(q, pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 64, Stream: uint32(10 + q)}, n)
	}
	for q := range 2 {
		tbed.WaitStream(t, "vm1", g, uint32(10+q), n)
	}
	masks("after traffic", placed)
	for i, w := range tb.dp.Snapshot().Workers {
		if w.Frames == 0 {
			t.Errorf("worker %d received nothing: not both queues", i)
		}
	}
	if err := tb.dp.Close(); err != nil {
		t.Fatal(err)
	}
	masks("closed", func(int) []int { return allowed })
	if got := runtime.GOMAXPROCS(0); got != procs {
		t.Errorf("GOMAXPROCS %d after Close, was %d", got, procs)
	}
}

// Unplaced, a P is left beyond the workers': a worker under load never
// gives its P back, and the rest (calls, vhost-user messages, the API)
// must not wait for sysmon to preempt one. Close gives the Ps back.
func TestWorkerPsUnplaced(t *testing.T) {
	for _, c := range []struct{ procs, queues, want int }{
		{procs: 1, queues: 1, want: 2}, // taskset -c 0, a one-CPU container
		{procs: 2, queues: 2, want: 3}, // as many queues as CPUs
		{procs: 2, queues: 1, want: 2}, // a P for the rest already
	} {
		t.Run(fmt.Sprintf("gomaxprocs=%d/workers=%d", c.procs, c.queues), func(t *testing.T) {
			old := runtime.GOMAXPROCS(c.procs)
			t.Cleanup(func() { runtime.GOMAXPROCS(old) })
			tb := newTestbedCfg(t, c.queues, nil)
			g := tb.addVM("vm1", 1, mac1, 0, c.queues, "")
			if got := runtime.GOMAXPROCS(0); got != c.want {
				t.Errorf("GOMAXPROCS %d, want %d", got, c.want)
			}
			const n = 500
			tb.SendOnCPU(0, pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 64, Stream: 7}, n)
			tbed.WaitStream(t, "vm1", g, 7, n)
			if err := tb.dp.Close(); err != nil {
				t.Fatal(err)
			}
			if got := runtime.GOMAXPROCS(0); got != c.procs {
				t.Errorf("GOMAXPROCS %d after Close, was %d", got, c.procs)
			}
		})
	}
}
