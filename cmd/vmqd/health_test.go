package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/metrics"
)

// probe GETs one of vmqd's probe endpoints.
func probe(t *testing.T, addr, path string) (int, metrics.HealthReport) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	var rep metrics.HealthReport
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return resp.StatusCode, rep
}

// failed names a report's failing checks.
func failed(rep metrics.HealthReport) string {
	var f []string
	for _, c := range rep.Checks {
		if !c.OK {
			f = append(f, c.Name+": "+c.Detail)
		}
	}
	return strings.Join(f, "; ")
}

// Both probes pass on a running vmqd (and vmqctl health says so); with
// the XDP filter taken off the NIC /readyz fails naming the filter while
// /healthz stays green; with the API down /readyz names the API.
func TestHealthEndpointsOnRunningVmqd(t *testing.T) {
	b := newBed(t, vm1)
	d := b.start()
	for _, p := range []string{metrics.HealthzPath, metrics.ReadyzPath} {
		testenv.Eventually(t, p+" green", func() (bool, string) {
			code, rep := probe(t, d.metricsAddr, p)
			return code == http.StatusOK && rep.OK, fmt.Sprintf("HTTP %d: %s", code, failed(rep))
		})
	}
	vmqctl := buildTool(t, "../vmqctl", "vmqctl")
	if out, err := exec.Command(vmqctl, "health", "--addr", d.metricsAddr).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "filter_attached") || !strings.Contains(string(out), "api_serving") {
		t.Fatalf("vmqctl health on a healthy vmqd: %v\n%s", err, out)
	}

	if err := b.Host.Do(d.filter.Detach); err != nil {
		t.Fatal(err)
	}
	code, rep := probe(t, d.metricsAddr, metrics.ReadyzPath)
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(failed(rep), "filter_attached:") {
		t.Fatalf("/readyz with the filter detached: HTTP %d, failing %q", code, failed(rep))
	}
	if code, rep := probe(t, d.metricsAddr, metrics.HealthzPath); code != http.StatusOK {
		t.Fatalf("/healthz with the filter detached: HTTP %d: %s", code, failed(rep))
	}
	out, err := exec.Command(vmqctl, "health", "--addr", d.metricsAddr).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "FAIL") {
		t.Fatalf("vmqctl health with the filter detached: %v\n%s", err, out)
	}

	// The filter back (the kernel's program is ours again), the API gone.
	if err := b.Host.Do(func() error {
		_, err := d.filter.Attach(b.NIC.Index, attachMode(b.cfg.AttachMode))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	d.api.Shutdown(t.Context())
	code, rep = probe(t, d.metricsAddr, metrics.ReadyzPath)
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(failed(rep), "api_serving:") {
		t.Fatalf("/readyz with the API down: HTTP %d, failing %q", code, failed(rep))
	}
}

// A worker that stops mid-round turns /healthz (and /readyz) red, and
// green again when it runs. The real vmqd binary's worker thread is
// frozen with ptrace while awake (busy-polling), which is what a stuck
// round looks like to the watchdog.
func TestHealthzRedWhileWorkerStalled(t *testing.T) {
	b := newBed(t, vm1)
	vmqd := buildTool(t, ".", "vmqd")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	// busy_poll 1s: the idle worker spins (awake) most of the time.
	cmd, log, _ := b.startVmqd(vmqd, fmt.Sprintf("nic: %s\npin_dir: %s\napi: {socket: %s}\nmetrics: {address: %q}\npolling: {busy_poll: 1s}\n",
		b.cfg.NIC, b.cfg.PinDir, b.cfg.API.Socket, addr), "warn")
	ready := func() (bool, string) {
		resp, err := http.Get("http://" + addr + metrics.ReadyzPath)
		if err != nil {
			return false, err.Error() + "\n" + log.String()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	}
	testenv.Eventually(t, "vmqd ready", ready)

	// The worker is the thread that burns the CPU.
	var tid int
	testenv.Eventually(t, "worker thread found", func() (bool, string) {
		var best uint64
		tid, best = busiestThread(t, cmd.Process.Pid)
		return best >= 30, fmt.Sprintf("busiest thread %d has %d ticks", tid, best)
	})

	runtime.LockOSThread() // ptrace requests come from the attaching thread
	defer runtime.UnlockOSThread()
	attached := false
	detach := func() {
		if attached {
			if err := unix.PtraceDetach(tid); err != nil {
				t.Errorf("detach worker thread %d: %v", tid, err)
			}
			attached = false
		}
	}
	defer detach()
	// Stop the worker while it is awake: stopped in poll(2) it is asleep,
	// which the watchdog rightly does not call a stall.
	testenv.Eventually(t, "worker stopped while awake", func() (bool, string) {
		if err := unix.PtraceSeize(tid); err != nil {
			return false, fmt.Sprintf("seize %d: %v", tid, err)
		}
		attached = true
		if err := unix.PtraceInterrupt(tid); err != nil {
			detach()
			return false, fmt.Sprintf("interrupt: %v", err)
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(tid, &ws, unix.WALL, nil); err != nil {
			detach()
			return false, fmt.Sprintf("wait: %v", err)
		}
		var regs unix.PtraceRegs
		if err := unix.PtraceGetRegs(tid, &regs); err != nil {
			detach()
			return false, fmt.Sprintf("regs: %v", err)
		}
		if sc := int64(regs.Orig_rax); sc == unix.SYS_POLL || sc == unix.SYS_PPOLL {
			detach()
			return false, "stopped asleep in poll"
		}
		return true, ""
	})
	testenv.Eventually(t, "/healthz red", func() (bool, string) {
		code, rep := probe(t, addr, metrics.HealthzPath)
		return code == http.StatusServiceUnavailable && strings.HasPrefix(failed(rep), "workers_not_stalled:"),
			fmt.Sprintf("HTTP %d: %s", code, failed(rep))
	})
	if code, rep := probe(t, addr, metrics.ReadyzPath); code != http.StatusServiceUnavailable || !strings.Contains(failed(rep), "workers_not_stalled") {
		t.Fatalf("/readyz with a stalled worker: HTTP %d: %s", code, failed(rep))
	}
	detach()
	testenv.Eventually(t, "/healthz green after the worker runs", func() (bool, string) {
		code, rep := probe(t, addr, metrics.HealthzPath)
		return code == http.StatusOK, fmt.Sprintf("HTTP %d: %s", code, failed(rep))
	})
	if log := log.String(); !strings.Contains(log, "worker stalled") {
		t.Errorf("the watchdog did not log the stall:\n%s", log)
	}
}

// busiestThread is the task of pid with the most CPU time, and its ticks.
func busiestThread(t *testing.T, pid int) (int, uint64) {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	best, bestTicks := 0, uint64(0)
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			continue
		}
		// Fields after the parenthesised name: utime and stime are the
		// 12th and 13th of them.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		utime, _ := strconv.ParseUint(f[11], 10, 64)
		stime, _ := strconv.ParseUint(f[12], 10, 64)
		if utime+stime > bestTicks {
			best, _ = strconv.Atoi(task.Name())
			bestTicks = utime + stime
		}
	}
	return best, bestTicks
}
