package cpuset

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// startAllowed is the process's CPU mask when it started, read before
// anything here changed a thread's mask (package init runs on the main
// thread before main).
var startAllowed, startErr = threadMask(0)

// Allowed is the CPUs the process could run on when it started.
func Allowed() ([]int, error) { return slices.Clone(startAllowed), startErr }

// ThreadCPUs is the CPUs thread tid (0: the calling thread) may run on,
// as the kernel has them now.
func ThreadCPUs(tid int) ([]int, error) { return threadMask(tid) }

func threadMask(tid int) ([]int, error) {
	var s unix.CPUSet
	if err := unix.SchedGetaffinity(tid, &s); err != nil {
		return nil, fmt.Errorf("CPU affinity of thread %d: %w", tid, err)
	}
	var out []int
	for c := 0; c < len(s)*64 && len(out) < s.Count(); c++ {
		if s.IsSet(c) {
			out = append(out, c)
		}
	}
	return out, nil
}

func toSet(cpus []int) unix.CPUSet {
	var s unix.CPUSet
	for _, c := range cpus {
		s.Set(c)
	}
	return s
}

// PinSelf confines the calling thread to cpus; the caller must have
// locked its goroutine to the thread (runtime.LockOSThread).
func PinSelf(cpus []int) error {
	s := toSet(cpus)
	if err := unix.SchedSetaffinity(0, &s); err != nil {
		return fmt.Errorf("pin thread %d to CPUs %s: %w", unix.Gettid(), Format(cpus), err)
	}
	return nil
}

// Confine sets every thread of the process but those skip names to cpus,
// and returns how many it changed. It goes over /proc/self/task until a
// pass changes nothing, so a thread started meanwhile by a thread not yet
// confined (and so with the old mask) is caught too. Threads the
// confined ones start later inherit cpus.
func Confine(cpus []int, skip func(tid int) bool) (changed int, err error) {
	want := toSet(cpus)
	for pass := 0; pass < 16; pass++ {
		tids, err := Tasks(0)
		if err != nil {
			return changed, err
		}
		n := 0
		for _, tid := range tids {
			if skip != nil && skip(tid) {
				continue
			}
			var have unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &have); err != nil {
				if errors.Is(err, unix.ESRCH) { // the thread is gone
					continue
				}
				return changed, fmt.Errorf("CPU affinity of thread %d: %w", tid, err)
			}
			if have == want {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &want); err != nil && !errors.Is(err, unix.ESRCH) {
				return changed, fmt.Errorf("confine thread %d to CPUs %s: %w", tid, Format(cpus), err)
			}
			n++
		}
		changed += n
		if n == 0 {
			return changed, nil
		}
	}
	return changed, fmt.Errorf("confine threads to CPUs %s: threads kept appearing with another mask", Format(cpus))
}

// taskDir is /proc/PID/task (0: this process's).
func taskDir(pid int) string {
	if pid == 0 {
		return "/proc/self/task"
	}
	return filepath.Join("/proc", strconv.Itoa(pid), "task")
}

// Tasks lists the thread ids of process pid (0: this process).
func Tasks(pid int) ([]int, error) {
	ents, err := os.ReadDir(taskDir(pid))
	if err != nil {
		return nil, fmt.Errorf("list threads: %w", err)
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// Threads reads every thread of process pid (0: this process): its name
// and allowed CPUs from /proc, the kernel's own account, for checking
// placement.
func Threads(pid int) ([]Thread, error) {
	tids, err := Tasks(pid)
	if err != nil {
		return nil, err
	}
	var out []Thread
	for _, tid := range tids {
		b, err := os.ReadFile(filepath.Join(taskDir(pid), strconv.Itoa(tid), "status"))
		if errors.Is(err, os.ErrNotExist) {
			continue // gone
		}
		if err != nil {
			return nil, fmt.Errorf("thread %d: %w", tid, err)
		}
		name, cpus, err := ParseStatus(b)
		if err != nil {
			return nil, fmt.Errorf("thread %d: %w", tid, err)
		}
		out = append(out, Thread{TID: tid, Name: name, CPUs: cpus})
	}
	return out, nil
}

// Online is the CPUs the kernel has online (/sys/devices/system/cpu/online).
func Online() ([]int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return nil, fmt.Errorf("online CPUs: %w", err)
	}
	return Parse(string(b))
}

// RunOn runs fn with the calling thread confined to cpus, then gives the
// thread its own mask back (not every CPU: the thread may have been
// placed). The caller must have locked its goroutine to the thread.
func RunOn(cpus []int, fn func() error) error {
	var prev unix.CPUSet
	if err := unix.SchedGetaffinity(0, &prev); err != nil {
		return fmt.Errorf("CPU affinity: %w", err)
	}
	if err := PinSelf(cpus); err != nil {
		return err
	}
	defer unix.SchedSetaffinity(0, &prev)
	return fn()
}
