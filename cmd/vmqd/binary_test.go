package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// buildTool builds the command in package directory pkg as name.
func buildTool(t *testing.T, pkg, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// logReader reads a log file for failure messages.
type logReader string

func (l logReader) String() string {
	b, _ := os.ReadFile(string(l))
	return string(b)
}

// startVmqd writes cfg to the bed's vmqd.yaml and runs the vmqd binary on
// it in the bed's host namespace, logging at level into the bed's
// vmqd.log; the test's end kills it. exited is closed when it exits.
func (b *bed) startVmqd(vmqd, cfg, level string) (cmd *exec.Cmd, log logReader, exited <-chan struct{}) {
	t := b.t
	t.Helper()
	cfgPath := filepath.Join(b.Dir, "vmqd.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(b.Dir, "vmqd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logFile.Close() })
	cmd = exec.Command(vmqd, "--config", cfgPath, "--netns", b.Host.Name, "--log-level", level)
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	return cmd, logReader(logPath), done
}

// writeConfig writes the bed's config as YAML, with the VMs given.
func (b *bed) writeConfig(path string, vms ...string) {
	b.t.Helper()
	var sb strings.Builder
	fmt.Fprintf(&sb, "nic: %s\npin_dir: %s\napi: {socket: %s}\nmetrics: {address: \"\"}\nvms:\n", b.cfg.NIC, b.cfg.PinDir, b.cfg.API.Socket)
	for i, name := range vms {
		fmt.Fprintf(&sb, "  - {name: %s, mac: \"02:00:00:00:02:%02x\", socket: %s}\n", name, i+1, b.Socket(name))
	}
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// The real binary: vmqd --netns runs on a NIC in another namespace, SIGHUP
// reloads its config file, SIGTERM stops it cleanly (exit 0) and takes the
// XDP program off the NIC.
func TestVmqdBinarySignals(t *testing.T) {
	b := newBed(t)
	vmqd, vmqctl := buildTool(t, ".", "vmqd"), buildTool(t, "../vmqctl", "vmqctl")
	cfgPath := filepath.Join(b.Dir, "vmqd.yaml")
	b.writeConfig(cfgPath, "a")

	cmd := exec.Command(vmqd, "--config", cfgPath, "--netns", b.Host.Name, "--log-level", "warn")
	logPath := filepath.Join(b.Dir, "vmqd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stderr = logFile
	stderr := logReader(logPath)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	ctl := func(args ...string) (string, error) {
		out, err := exec.Command(vmqctl, append([]string{"--socket", b.cfg.API.Socket}, args...)...).CombinedOutput()
		return string(out), err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if out, err := ctl("vm", "list"); err == nil && strings.Contains(out, "a") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vmqd did not come up:\n%s", stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out := b.Host.Run(t, "ip", "link", "show", b.NIC.Name); !strings.Contains(out, "xdp") {
		t.Fatalf("no XDP program on %s:\n%s", b.NIC.Name, out)
	}

	b.writeConfig(cfgPath, "a", "b")
	cmd.Process.Signal(syscall.SIGHUP)
	for deadline = time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, _ := ctl("vm", "list", "-o", "json")
		if strings.Contains(out, `"name": "b"`) || strings.Contains(out, `"name":"b"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SIGHUP did not add VM b: %s\n%s", out, stderr.String())
		}
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("vmqd exited with %v after SIGTERM:\n%s", waitErr, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("vmqd still running 15s after SIGTERM:\n%s", stderr.String())
	}
	if out := b.Host.Run(t, "ip", "link", "show", b.NIC.Name); strings.Contains(out, "xdp") {
		t.Fatalf("XDP program left on the NIC after a plain stop:\n%s", out)
	}
	if _, err := os.Stat(b.cfg.API.Socket); !os.IsNotExist(err) {
		t.Errorf("API socket left behind: %v", err)
	}
}

// vmqctl adds and removes a VM while another receives: the other's count
// stays exact, and a bad request changes nothing.
func TestVmqctlAddRemoveUnderTraffic(t *testing.T) {
	b := newBed(t, vm1)
	d := b.start()
	g1 := b.guest("vm1", vm1.MAC, "", false)
	waitPorts(t, d, 1)
	vmqctl := buildTool(t, "../vmqctl", "vmqctl")
	ctl := func(args ...string) (string, error) {
		out, err := exec.Command(vmqctl, append([]string{"--socket", b.cfg.API.Socket}, args...)...).CombinedOutput()
		return string(out), err
	}

	const n = 5000
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(vm1.MAC)}}, Size: 64, Stream: 1}, n)
	}()
	sock2 := b.Socket("vm2")
	if out, err := ctl("vm", "add", "vm2", "--mac", "02:00:00:00:01:02", "--socket", sock2); err != nil {
		t.Fatalf("vmqctl vm add: %v\n%s", err, out)
	}
	out, err := ctl("vm", "add", "vm3", "--mac", "02:00:zz:00:01:03", "--socket", b.Socket("vm3"))
	if err == nil || !strings.Contains(out, "mac") {
		t.Fatalf("vmqctl vm add with a bad MAC: %v\n%s", err, out)
	}
	g2 := b.guest("vm2", "02:00:00:00:01:02", "", false)
	waitPorts(t, d, 2)
	b.Send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC("02:00:00:00:01:02")}}, Size: 64, Stream: 2}, 300)
	waitStream(t, "vm2", g2, 2, 300)
	if out, err := ctl("vm", "rm", "vm2"); err != nil {
		t.Fatalf("vmqctl vm rm: %v\n%s", err, out)
	}
	<-done
	waitStream(t, "vm1", g1, 1, n)
	if names := vmNames(d); names != "vm1" {
		t.Fatalf("VMs after add, bad add and rm: %s", names)
	}
	if _, err := (control.NewClient(b.cfg.API.Socket)).GetVM(context.Background(), "vm2"); err == nil {
		t.Fatal("vm2 still known to the API")
	}
}

// With --log-format json every line vmqd writes is JSON, the lines of
// packages that log through slog's default included (the metrics
// listener's, which went out in the log package's plain format).
func TestVmqdLogOneFormat(t *testing.T) {
	b := newBed(t)
	vmqd := buildTool(t, ".", "vmqd")
	cfgPath := filepath.Join(b.Dir, "vmqd.yaml")
	b.writeConfig(cfgPath, "a")
	logPath := filepath.Join(b.Dir, "vmqd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(vmqd, "--config", cfgPath, "--netns", b.Host.Name,
		"--metrics-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "info")
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	serving := func() (bool, string) {
		lines := strings.Split(strings.TrimSpace(logReader(logPath).String()), "\n")
		for _, l := range lines {
			if l == "" { // nothing written yet
				continue
			}
			var rec struct {
				Msg string `json:"msg"`
			}
			if err := json.Unmarshal([]byte(l), &rec); err != nil {
				t.Fatalf("a line that is not JSON (%v): %q", err, l)
			}
			if rec.Msg == "metrics: serving" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("no \"metrics: serving\" line yet in %d lines", len(lines))
	}
	testenv.Eventually(t, "the metrics listener's line, as JSON", serving)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("vmqd did not stop on SIGTERM:\n%s", logReader(logPath))
	}
	serving() // the stop's lines too
}
