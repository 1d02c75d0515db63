package xsk

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMemlockError registers a UMEM without CAP_IPC_LOCK and over
// RLIMIT_MEMLOCK: the error must say what to do.
func TestMemlockError(t *testing.T) {
	tb := newTestbed(t, 1)
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &old); err != nil {
		t.Fatal(err)
	}
	var openErr error
	// Do runs on one locked thread: the capability is dropped from that
	// thread's effective set only (it stays permitted) and raised again
	// before the thread goes back to the runtime.
	err := tb.hostNS.Do(func() error {
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var caps [2]unix.CapUserData
		if err := unix.Capget(&hdr, &caps[0]); err != nil {
			return fmt.Errorf("capget: %w", err)
		}
		saved := caps
		caps[unix.CAP_IPC_LOCK/32].Effective &^= 1 << (unix.CAP_IPC_LOCK % 32)
		if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &unix.Rlimit{Cur: 64 << 10, Max: old.Max}); err != nil {
			return fmt.Errorf("lower RLIMIT_MEMLOCK: %w", err)
		}
		if err := unix.Capset(&hdr, &caps[0]); err != nil {
			return errors.Join(fmt.Errorf("drop CAP_IPC_LOCK: %w", err), unix.Setrlimit(unix.RLIMIT_MEMLOCK, &old))
		}
		q, err := NewQueue(tb.host.Index, 0, UMEMConfig{NumFrames: 256}, QueueConfig{FillSize: 64, RxSize: 64})
		if err == nil {
			q.Close()
		}
		openErr = err
		return errors.Join(unix.Capset(&hdr, &saved[0]), unix.Setrlimit(unix.RLIMIT_MEMLOCK, &old))
	})
	if err != nil {
		t.Fatal(err)
	}
	if openErr == nil {
		t.Fatal("512 KiB UMEM registered over a 64 KiB RLIMIT_MEMLOCK without CAP_IPC_LOCK")
	}
	t.Log(openErr)
	if !strings.Contains(openErr.Error(), "RLIMIT_MEMLOCK") || !strings.Contains(openErr.Error(), tb.host.Name) {
		t.Errorf("error does not explain the memlock limit on %s: %v", tb.host.Name, openErr)
	}
}
