package bench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A diagnostic of the switch's forwarding thread in full-speed trials
// (VMQ_BENCH_THREAD=1; with several vmqd workers, the busiest one). Busy
// ns/frame is wall time on both systems, preemption and the other threads
// on the CPU included; this is the one thread's own CPU time per frame
// from schedstat, its user share, and how long it waited for the CPU. VMQ_BENCH_PERF adds perf on that thread:
// "stat" counts syscalls, sendto, softirqs and NAPI polls per frame;
// "record:DIR" writes a cpu-clock profile to DIR (one file per trial).
type threadProbe struct {
	tid        int
	comm       string
	run, wait  time.Duration
	cpu        CPUTimes
	perf       *exec.Cmd
	perfOut    string
	perfRecord bool
	rest       time.Duration // the process's other threads' CPU time
	switches   [2]int64      // the thread's voluntary and involuntary context switches
}

// perfStatEvents are what VMQ_BENCH_PERF=stat counts on the thread.
var perfStatEvents = []string{"raw_syscalls:sys_enter", "syscalls:sys_enter_sendto", "irq:softirq_entry",
	"napi:napi_poll", "skb:consume_skb", "skb:kfree_skb"}

// taskSched reads a thread's schedstat: time on the CPU and time waiting
// for it.
func taskSched(pid, tid int) (run, wait time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/schedstat", pid, tid))
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, 0, fmt.Errorf("schedstat of %d/%d: %q", pid, tid, b)
	}
	r, err1 := strconv.ParseInt(f[0], 10, 64)
	w, err2 := strconv.ParseInt(f[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("schedstat of %d/%d: %w", pid, tid, err)
	}
	return time.Duration(r), time.Duration(w), nil
}

// busiestThread is pid's forwarding thread: DPDK's worker lcore
// (rte-worker-N), else the thread with the most CPU time so far (vmqd's
// worker, once the setup's first trial has run).
func busiestThread(pid int) (int, string, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, "", err
	}
	best, most := 0, time.Duration(-1)
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", pid, tid)); strings.HasPrefix(string(comm), "rte-worker") {
			return tid, strings.TrimSpace(string(comm)), nil
		}
		if run, _, err := taskSched(pid, tid); err == nil && run > most {
			best, most = tid, run
		}
	}
	if best == 0 {
		return 0, "", fmt.Errorf("no thread of pid %d", pid)
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", pid, best))
	return best, strings.TrimSpace(string(comm)), nil
}

// startProbe starts the diagnostic on pid's forwarding thread; nil when
// VMQ_BENCH_THREAD is unset.
func startProbe(pid int, name string) (*threadProbe, error) {
	if os.Getenv("VMQ_BENCH_THREAD") == "" {
		return nil, nil
	}
	tid, comm, err := busiestThread(pid)
	if err != nil {
		return nil, err
	}
	t := &threadProbe{tid: tid, comm: comm}
	if t.cpu, err = threadCPU(pid, tid); err != nil {
		return nil, err
	}
	switch mode := os.Getenv("VMQ_BENCH_PERF"); {
	case mode == "stat":
		t.perfOut = filepath.Join(os.TempDir(), fmt.Sprintf("vmqbench-perfstat-%d", tid))
		t.perf = exec.Command("taskset", "-c", "0", "perf", "stat", "-x", ",", "-o", t.perfOut,
			"-e", strings.Join(perfStatEvents, ","), "-t", strconv.Itoa(tid))
	case strings.HasPrefix(mode, "record:"):
		dir := strings.TrimPrefix(mode, "record:")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		t.perfOut, t.perfRecord = filepath.Join(dir, name+".data"), true
		t.perf = exec.Command("taskset", "-c", "0", "perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-g",
			"-o", t.perfOut, "-t", strconv.Itoa(tid))
	}
	if t.perf != nil {
		if err := t.perf.Start(); err != nil {
			return nil, fmt.Errorf("perf: %w", err)
		}
	}
	t.run, t.wait, err = taskSched(pid, tid)
	t.rest, t.switches = processRun(pid)-t.run, ctxSwitches(pid, tid)
	return t, err
}

// processRun is the CPU time of all of pid's threads (schedstat).
func processRun(pid int) time.Duration {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var sum time.Duration
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			if run, _, err := taskSched(pid, tid); err == nil {
				sum += run
			}
		}
	}
	return sum
}

// ctxSwitches reads a thread's voluntary and involuntary context switches.
func ctxSwitches(pid, tid int) (n [2]int64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		i := map[string]int{"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 1}
		if j, ok := i[k]; ok {
			n[j], _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return n
}

func threadCPU(pid, tid int) (CPUTimes, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
	if err != nil {
		return CPUTimes{}, err
	}
	return ParseStat(b)
}

// stop ends the probe's window: the thread's times and perf.
func (t *threadProbe) stop(pid int) error {
	run, wait, err := taskSched(pid, t.tid)
	cpu, err2 := threadCPU(pid, t.tid)
	sw := ctxSwitches(pid, t.tid)
	t.switches = [2]int64{sw[0] - t.switches[0], sw[1] - t.switches[1]}
	t.rest = processRun(pid) - run - t.rest
	t.run, t.wait, t.cpu = run-t.run, wait-t.wait, cpu.Sub(t.cpu)
	var err3 error
	if t.perf != nil {
		t.perf.Process.Signal(syscall.SIGINT)
		err3 = t.perf.Wait()
		if ee := (*exec.ExitError)(nil); errors.As(err3, &ee) {
			err3 = nil // perf exits non-zero on SIGINT
		}
	}
	return errors.Join(err, err2, err3)
}

// report is the probe's numbers per frame moved.
func (t *threadProbe) report(moved uint64) string {
	if moved == 0 {
		return "thread: no frames moved"
	}
	m := float64(moved)
	user := -1.0
	if tot := t.cpu.Total(); tot > 0 {
		user = 100 * float64(t.cpu.User) / float64(tot)
	}
	s := fmt.Sprintf("thread %d (%s): CPU %.0f ns/frame (schedstat), user %.0f%%, waited for the CPU %.0f ns/frame, %d frames, context switches %d voluntary %d involuntary, the process's other threads %.0f ns/frame",
		t.tid, t.comm, float64(t.run.Nanoseconds())/m, user, float64(t.wait.Nanoseconds())/m, moved, t.switches[0], t.switches[1], float64(t.rest.Nanoseconds())/m)
	if t.perf == nil {
		return s
	}
	if t.perfRecord {
		return s + "; perf record " + t.perfOut
	}
	b, err := os.ReadFile(t.perfOut)
	os.Remove(t.perfOut)
	if err != nil {
		return s + "; perf stat: " + err.Error()
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		if n, err := strconv.ParseFloat(f[0], 64); err == nil {
			s += fmt.Sprintf(", %s %.3f/frame", f[2], n/m)
		}
	}
	return s
}
