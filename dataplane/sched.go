package dataplane

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// workerSlice is the scheduler time slice a worker thread asks for. An
// idle worker sleeps; when frames arrive the kernel wakes it, but on a
// CPU it shares the woken worker waited out the running task's slice,
// and behind other runnable tasks tens of ms (24 ms measured), while the
// VM's socket ring (1024 frames, 15 ms at 0.07 Mpps) was the only buffer
// and overflowed: the RX zero-loss trials' losses. With a slice shorter
// than the running task's, EEVDF (Linux 6.12+) lets the woken worker
// preempt it. Its share of the CPU stays what it was; only its turns come
// sooner and are shorter. 100 µs is the shortest the kernel allows.
const workerSlice = 100 * time.Microsecond

// askShortSlice sets the calling thread's time slice to d, keeping its
// policy and nice value; a real-time or idle policy set by the operator
// is left alone. Kernels before 6.12 accept the call and ignore the slice.
func askShortSlice(d time.Duration) error {
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		return fmt.Errorf("sched_getattr: %w", err)
	}
	if attr.Policy != unix.SCHED_NORMAL && attr.Policy != unix.SCHED_BATCH {
		return nil
	}
	attr.Runtime = uint64(d.Nanoseconds())
	attr.Flags &= unix.SCHED_FLAG_RESET_ON_FORK
	if err := unix.SchedSetAttr(0, attr, 0); err != nil {
		return fmt.Errorf("sched_setattr slice %v: %w", d, err)
	}
	return nil
}
