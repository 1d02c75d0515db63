package dataplane

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// The worker thread's slice is what it asked for, its policy and nice
// value unchanged (kernel 6.12+ reports the slice as sched_runtime).
func TestAskShortSlice(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		before, err := unix.SchedGetAttr(0, 0)
		if err != nil {
			t.Error(err)
			return
		}
		if err := askShortSlice(workerSlice); err != nil {
			t.Error(err)
			return
		}
		after, err := unix.SchedGetAttr(0, 0)
		if err != nil {
			t.Error(err)
			return
		}
		if after.Runtime != uint64(workerSlice.Nanoseconds()) || after.Policy != before.Policy || after.Nice != before.Nice {
			t.Errorf("after: %+v, before: %+v", after, before)
		}
	}()
	<-done
}
