package vhostuser

import (
	"fmt"
	"log/slog"
	"os"
	"testing"

	"github.com/vmq/vmq/internal/testenv"
	"golang.org/x/sys/unix"
)

// attachCall gives q (a test queue without a port) call fd fd and a
// notifier that is not running: the test runs n.callPending itself or
// starts it.
func attachCall(q *Queue, fd int) *notifier {
	n, err := newNotifier([]*Queue{q}, slog.New(slog.DiscardHandler))
	if err != nil {
		panic(err) // tests only: out of fds
	}
	q.nt, q.callFD = n, fd
	return n
}

// benchCallFD runs a notifier for q, as a port does.
func benchCallFD(b *testing.B, q *Queue, fd int) func() {
	n := attachCall(q, fd)
	n.start()
	return func() {
		if !n.stop() {
			b.Error("notifier did not stop")
		}
		n.close()
	}
}

// TestNotifierThreadBatch: the notifier runs on a thread of its own with
// policy SCHED_BATCH (so its wake-up does not preempt a worker on its
// CPU), still writes calls, and its thread ends with it.
func TestNotifierThreadBatch(t *testing.T) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	q := &Queue{callFD: fd}
	n := attachCall(q, fd)
	defer n.close()
	n.start()
	var tid int
	testenv.Eventually(t, "notifier thread running", func() (bool, string) {
		tid = int(n.tid.Load())
		return tid != 0, "no tid yet"
	})
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		t.Fatalf("sched_getattr of the notifier's thread %d: %v", tid, err)
	}
	if a.Policy != unix.SCHED_BATCH {
		t.Errorf("notifier thread policy %d, want SCHED_BATCH (%d)", a.Policy, unix.SCHED_BATCH)
	}
	for i := range 3 {
		q.requestCall()
		testenv.Eventually(t, "call written", func() (bool, string) {
			return q.calls.Load() == uint64(i+1), fmt.Sprintf("%d calls", q.calls.Load())
		})
	}
	if !n.stop() {
		t.Fatal("notifier did not stop")
	}
	// A locked goroutine's thread exits with it: nothing keeps the
	// batch policy for other goroutines.
	testenv.Eventually(t, "notifier thread gone", func() (bool, string) {
		_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
		return os.IsNotExist(err), fmt.Sprintf("stat: %v", err)
	})
}
