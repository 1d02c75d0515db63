package dataplane

// CPU placement (Config.WorkerCPUs, Config.HousekeepingCPUs), as DPDK
// keeps its main lcore off the forwarding lcores: a worker busy-polls its
// CPU, and the Go runtime's own threads (sysmon, the threads a
// preemption hands the P to, timers) on that CPU make it wait (#12).
//
// New confines every thread of the process to the housekeeping CPUs
// before a worker starts; each worker then moves its own locked thread
// to its CPU. Threads started later inherit the mask of the thread that
// starts them: the runtime never clones a locked thread (newm hands the
// job to its template thread when the caller is locked,
// runtime/proc.go), so no new thread starts from a worker's mask.

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/vmq/vmq/internal/cpuset"
)

// placed reports whether the config places threads at all.
func (c *Config) placed() bool { return c.WorkerCPUs != nil || c.HousekeepingCPUs != nil }

// workerCPUs is the CPUs worker i runs on: its own, or, when only the
// housekeeping threads are placed, the process's (nil: left alone).
func (c *Config) workerCPUs(i int) ([]int, error) {
	if n := len(c.WorkerCPUs); n > 0 {
		return []int{c.WorkerCPUs[i%n]}, nil
	}
	if c.HousekeepingCPUs != nil {
		return cpuset.Allowed()
	}
	return nil, nil
}

// placeHousekeeping confines the process's threads to the housekeeping
// CPUs and gives every worker a P of its own; unplaced, it leaves at
// least one P beyond the workers' (workerPs). It returns what undoes it.
func (dp *Dataplane) placeHousekeeping() (undo func(), err error) {
	cfg := &dp.cfg
	if !cfg.placed() {
		release := reserveWorkerPs(func(procs int) int { return max(0, len(dp.workers)+1-procs) })
		dp.log.Info("CPU placement: none (worker_cpus, housekeeping_cpus unset)",
			"workers", len(dp.workers), "gomaxprocs", runtime.GOMAXPROCS(0))
		return release, nil
	}
	allowed, err := cpuset.Allowed()
	if err != nil {
		return nil, err
	}
	hk := cfg.HousekeepingCPUs
	if hk == nil {
		hk = allowed
	}
	// A P per worker and per housekeeping CPU. Set even when GOMAXPROCS
	// is already that high: the runtime would otherwise lower it to the
	// count of CPUs its sysmon thread may use (defaultGOMAXPROCS), once
	// sysmon is confined to the housekeeping CPUs.
	release := reserveWorkerPs(func(procs int) int { return max(0, len(dp.workers)+len(hk)-procs) })
	undo = func() {
		release()
		// Every thread, stopped workers' too: one that ran on the main
		// thread stays (wedged) after its goroutine ends.
		if _, err := cpuset.Confine(allowed, nil); err != nil {
			dp.log.Warn("give the threads their CPUs back", "err", err)
		}
	}
	n, err := cpuset.Confine(hk, nil)
	if err != nil {
		undo()
		return nil, fmt.Errorf("housekeeping CPUs: %w", err)
	}
	dp.log.Info("CPU placement", "housekeeping_cpus", cpuset.Format(hk), "worker_cpus", cfg.WorkerCPUs,
		"threads_moved", n, "gomaxprocs", runtime.GOMAXPROCS(0))
	return undo, nil
}

// workerPs are the Ps added to GOMAXPROCS for running workers, by every
// dataplane of the process. A worker under load busy-polls on its locked
// thread and never gives its P back. Were there no more Ps than workers
// (GOMAXPROCS 1 under a one-CPU mask or cgroup limit, or as many queues
// as CPUs), saturated workers would hold every P, and the goroutines
// that write guests' calls, read vhost-user messages and serve the API
// and metrics would wait for sysmon to preempt a worker: 20 ms per call
// at p50 (BenchmarkCallLatency). So an unplaced dataplane makes sure one
// P is left beyond its workers; the kernel, not the Go scheduler, then
// shares the CPUs between the workers and the rest. It adds no more than
// that: a P per worker on top of the CPU count gave vmqd's other threads
// (notifiers, GC) the CPUs as readily as the workers, and under a
// broadcast storm on a loaded 2-CPU machine the workers then fell behind
// (TestHostile cross_worker_storm_control lost witness frames at a full
// mailbox in 2 of 27 loaded runs).
var workerPs struct {
	sync.Mutex
	base  int // GOMAXPROCS before the first reservation
	extra int // Ps added, summed over reservations
	users int
}

// reserveWorkerPs adds extra(base) Ps, base being GOMAXPROCS without
// any, and returns what gives them back (once; the last one restores
// base).
func reserveWorkerPs(extra func(base int) int) (release func()) {
	workerPs.Lock()
	defer workerPs.Unlock()
	if workerPs.users == 0 {
		workerPs.base = runtime.GOMAXPROCS(0)
	}
	n := extra(workerPs.base)
	workerPs.users++
	workerPs.extra += n
	runtime.GOMAXPROCS(workerPs.base + workerPs.extra)
	return sync.OnceFunc(func() {
		workerPs.Lock()
		defer workerPs.Unlock()
		workerPs.users--
		workerPs.extra -= n
		runtime.GOMAXPROCS(workerPs.base + workerPs.extra)
	})
}

// WorkerThreads are the running workers' thread ids (0: not started), by
// worker (queue) index.
func (dp *Dataplane) WorkerThreads() []int {
	out := make([]int, len(dp.workers))
	for i, w := range dp.workers {
		out[i] = int(w.tid.Load())
	}
	return out
}

// placeSelf moves the worker's locked thread to its CPU.
func (w *worker) placeSelf() error {
	cpus, err := w.dp.cfg.workerCPUs(w.index)
	if err != nil || cpus == nil {
		return err
	}
	if err := cpuset.PinSelf(cpus); err != nil {
		return fmt.Errorf("worker for queue %d: %w", w.queueID, err)
	}
	return nil
}

// cpus is where the worker's thread may run now ("" before it starts or
// after it ends), for status: the kernel's answer, not the config's.
func (w *worker) cpus() string {
	select {
	case <-w.stopped: // its thread is gone; the id may be another's now
		return ""
	default:
	}
	tid := int(w.tid.Load())
	if tid == 0 {
		return ""
	}
	cpus, err := cpuset.ThreadCPUs(tid)
	if err != nil {
		return ""
	}
	return cpuset.Format(cpus)
}
