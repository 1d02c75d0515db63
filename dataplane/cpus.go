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
// CPUs and makes sure each worker and each housekeeping CPU has a P:
// the runtime would otherwise lower GOMAXPROCS to the count of CPUs its
// sysmon thread may use (defaultGOMAXPROCS), and a busy worker would
// hold the last P. It returns what undoes it.
func (dp *Dataplane) placeHousekeeping() (undo func(), err error) {
	cfg := &dp.cfg
	if !cfg.placed() {
		return func() {}, nil
	}
	allowed, err := cpuset.Allowed()
	if err != nil {
		return nil, err
	}
	hk := cfg.HousekeepingCPUs
	if hk == nil {
		hk = allowed
	}
	procs := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(max(procs, len(dp.workers)+len(hk)))
	undo = func() {
		runtime.GOMAXPROCS(procs)
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
