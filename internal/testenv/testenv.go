// Package testenv decides whether a test that needs the kernel can run here.
//
// Tests that need root, a kernel feature or an external tool call these
// helpers instead of t.Skip. On a developer machine a missing requirement
// skips the test with the reason; under CI (VMQ_REQUIRE_ALL=1, set by
// .ci/run) the same call fails the test, so nothing CI should prove is
// silently skipped.
package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RequireAllVar is the environment variable that turns skips into failures.
const RequireAllVar = "VMQ_REQUIRE_ALL"

// Strict reports whether skips are failures in this run.
func Strict() bool { return os.Getenv(RequireAllVar) == "1" }

// Skip skips the test with a reason, or fails it in strict mode.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Strict() {
		t.Fatalf("%s (%s=1 forbids skipping)", msg, RequireAllVar)
	}
	t.Skip(msg)
}

// RequireRoot skips (or fails, in strict mode) unless running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root (CAP_NET_ADMIN, CAP_BPF)")
	}
}

// RequireHugePages skips (or fails, in strict mode) unless n 2 MiB huge
// pages are free (HugePages_Free in /proc/meminfo; .ci/setup reserves
// them).
func RequireHugePages(t testing.TB, n int) {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		Skip(t, "huge pages: %v", err)
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "HugePages_Free:"); ok {
			if free, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && free >= n {
				return
			}
			Skip(t, "needs %d free 2 MiB huge pages, /proc/meminfo has %s (sysctl vm.nr_hugepages)", n, strings.TrimSpace(v))
			return
		}
	}
	Skip(t, "no HugePages_Free in /proc/meminfo")
}

// RequireCommand returns the path of an external program, or skips
// (fails, in strict mode) when it is not installed.
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		Skip(t, "needs %s: %v", name, err)
	}
	return path
}

// Eventually polls cond until it holds, failing the test after 10 s with
// what and the last explanation cond gave.
func Eventually(t testing.TB, what string, cond func() (ok bool, why string)) {
	t.Helper()
	EventuallyWithin(t, 10*time.Second, what, cond)
}

// EventuallyWithin is Eventually with its own deadline, for what takes
// longer than 10 s on a loaded machine for reasons outside vmq (a DPDK
// guest's start, a TCG guest's boot).
func EventuallyWithin(t testing.TB, d time.Duration, what string, cond func() (ok bool, why string)) {
	t.Helper()
	if ok, last := PollWithin(d, cond); !ok {
		t.Fatalf("%s: not reached in %v: %s", what, d, last)
	}
}

// Poll is Eventually for a caller that reports the failure itself (with
// more context): it says whether cond held within 10 s, and cond's last
// explanation.
func Poll(cond func() (ok bool, why string)) (bool, string) {
	return PollWithin(10*time.Second, cond)
}

// PollWithin is Poll with its own deadline.
func PollWithin(d time.Duration, cond func() (ok bool, why string)) (bool, string) {
	deadline := time.Now().Add(d)
	var last string
	for time.Now().Before(deadline) {
		var ok bool
		if ok, last = cond(); ok {
			return true, ""
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false, last
}

// SyncBuffer is a bytes.Buffer that a logger or a child process and the
// test can share: writes and reads take a lock.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
