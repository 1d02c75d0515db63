package vhostuser

import (
	"log/slog"
	"testing"
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
