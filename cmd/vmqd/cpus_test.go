package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmq/vmq/bench"
	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/cpuset"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// vmqdThread is a thread of vmqd: its name, allowed CPUs and CPU time.
type vmqdThread struct {
	cpuset.Thread
	cpu time.Duration
}

func vmqdThreads(pid int) ([]vmqdThread, error) {
	th, err := cpuset.Threads(pid)
	if err != nil {
		return nil, err
	}
	out := make([]vmqdThread, 0, len(th))
	for _, x := range th {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", pid, x.TID))
		if os.IsNotExist(err) {
			continue // the thread is gone
		}
		if err != nil {
			return nil, err
		}
		t, err := bench.ParseStat(stat)
		if err != nil {
			return nil, fmt.Errorf("thread %d: %w", x.TID, err)
		}
		out = append(out, vmqdThread{x, t.Total()})
	}
	return out, nil
}

// worker_cpus and housekeeping_cpus in the real binary: with the worker
// on CPU 1 and housekeeping on CPU 0, under traffic (wire → VM a, VM b →
// VM a, exact counts), exactly one thread of vmqd may run on CPU 1, only
// there, and it is the one doing the work; every other thread, including
// those the runtime starts under load, may run on CPU 0 only.
func TestVmqdCPUPlacement(t *testing.T) {
	allowed, err := cpuset.Allowed()
	if err != nil || !slices.Contains(allowed, 0) || !slices.Contains(allowed, 1) {
		testenv.Skip(t, "needs CPUs 0 and 1 (allowed: %v %v)", allowed, err)
	}
	b := newBed(t)
	vmqd := buildTool(t, ".", "vmqd")
	macA, macB := "02:00:00:00:03:01", "02:00:00:00:03:02"
	cmd, log, exited := b.startVmqd(vmqd, fmt.Sprintf("nic: %s\nqueues: 1\nworker_cpus: 1\nhousekeeping_cpus: 0\npin_dir: %s\napi: {socket: %s}\nmetrics: {address: \"\"}\nvms:\n"+
		"  - {name: a, mac: %q, socket: %s}\n  - {name: b, mac: %q, socket: %s}\n",
		b.cfg.NIC, b.cfg.PinDir, b.cfg.API.Socket, macA, b.Socket("a"), macB, b.Socket("b")), "info")
	pid := cmd.Process.Pid

	testenv.Eventually(t, "vmqd's ports listening", func() (bool, string) {
		select {
		case <-exited:
			t.Fatalf("vmqd exited:\n%s", log)
		default:
		}
		for _, vm := range []string{"a", "b"} {
			if _, err := os.Stat(b.Socket(vm)); err != nil {
				return false, err.Error()
			}
		}
		return true, ""
	})
	ga, gb := b.guest("a", macA, "", false), b.guest("b", macB, "", false)
	for _, g := range []*frontend.Guest{ga, gb} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := g.WaitConnected(ctx)
		cancel()
		if err != nil {
			t.Fatalf("guest did not connect: %v\n%s", err, log)
		}
	}

	// check reads every thread and returns the one on the worker CPU.
	check := func(when string) vmqdThread {
		t.Helper()
		th, err := vmqdThreads(pid)
		if err != nil {
			t.Fatalf("%s: %v\n%s", when, err, log)
		}
		var workers []vmqdThread
		for _, x := range th {
			switch {
			case slices.Equal(x.CPUs, []int{1}):
				workers = append(workers, x)
			case !slices.Equal(x.CPUs, []int{0}):
				t.Fatalf("%s: thread %d (%s) may run on CPUs %s, want 0 (housekeeping) or 1 (the worker)", when, x.TID, x.Name, cpuset.Format(x.CPUs))
			}
		}
		if len(workers) != 1 {
			t.Fatalf("%s: %d threads on CPU 1 (%v), want the one worker; %d threads", when, len(workers), workers, len(th))
		}
		return workers[0]
	}
	before := check("after start")
	// vmqctl status says where the threads are, as the kernel has them.
	st, err := control.NewClient(b.cfg.API.Socket).Status(context.Background())
	if err != nil {
		t.Fatalf("status: %v\n%s", err, log)
	}
	if len(st.Workers) != 1 || st.Workers[0].CPUs != "1" || st.HousekeepingCPUs != "0" {
		t.Errorf("status: worker CPUs %v, housekeeping CPUs %q; want [1] and 0", workerCPUs(st), st.HousekeepingCPUs)
	}

	const nWire, nVM = 20000, 20000 // 2 s each at the paced 10k/s
	done := make(chan error, 1)
	go func() {
		_, err := gb.Generate(context.Background(), frontend.Traffic{Dst: mustMAC(macA), Count: nVM, Rate: 10000, Stream: 2})
		done <- err
	}()
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		b.Send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(macA)}}, Size: 64, Stream: 1}, nWire)
	}()
	var seen []int
	for running := true; running; {
		select {
		case <-sent:
			running = false
		case <-time.After(100 * time.Millisecond):
		}
		w := check("under traffic")
		if w.TID != before.TID {
			t.Fatalf("the worker thread changed from %d to %d", before.TID, w.TID)
		}
		th, _ := vmqdThreads(pid)
		for _, x := range th {
			if !slices.Contains(seen, x.TID) {
				seen = append(seen, x.TID)
			}
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("guest b sending: %v", err)
	}
	waitStream(t, "a from the wire", ga, 1, nWire)
	waitStream(t, "a from b", ga, 2, nVM)
	after := check("after traffic")
	// The thread on CPU 1 is the worker: it did the work.
	if d := after.cpu - before.cpu; d < 100*time.Millisecond {
		t.Errorf("the thread on CPU 1 (%d) took %v of CPU for %d frames: not the worker?", after.TID, d, nWire+nVM)
	}
	if !strings.Contains(log.String(), "CPU placement") {
		t.Errorf("no CPU placement line in vmqd's log:\n%s", log)
	}
	t.Logf("%d threads seen, worker thread %d took %v of CPU", len(seen), after.TID, after.cpu-before.cpu)
}

func workerCPUs(st control.Status) (out []string) {
	for _, w := range st.Workers {
		out = append(out, w.CPUs)
	}
	return out
}
