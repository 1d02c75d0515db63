package testpmd

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmq/vmq/internal/testenv"
)

// nullConfig is a testpmd sending on a net_null port: no peer needed.
func nullConfig(interactive bool) Config {
	c := Config{Name: "null", Prefix: "vmqtp", Lcores: "0@0,1@0", Vdevs: []string{"net_null0"},
		App: []string{"--forward-mode=txonly", "--nb-cores=1", "--total-num-mbufs=2048"}, Interactive: interactive}
	if interactive {
		c.Mem = 64
		c.EAL = []string{"--single-file-segments", "--log-level=lib.eal:error"}
	} else {
		c.Mem = 256
		c.EAL = []string{"--no-huge"}
	}
	return c
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func hugeFiles(t *testing.T, prefix string) []string {
	t.Helper()
	files, err := filepath.Glob("/dev/hugepages/" + prefix + "*")
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestInteractive(t *testing.T) {
	testenv.RequireRoot(t)
	p, err := StartReady(t, nullConfig(true), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(hugeFiles(t, p.prefix)) == 0 || !exists("/var/run/dpdk/"+p.prefix) {
		t.Fatalf("no hugepage files or runtime dir for prefix %q", p.prefix)
	}
	if _, err := p.Command("start", StartDone); err != nil {
		t.Fatal(err)
	}
	var tx uint64
	for deadline := time.Now().Add(10 * time.Second); tx == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, tx, err = p.PortPackets(0); err != nil { // net_null's rx counter runs too: not checked
			t.Fatal(err)
		}
	}
	if tx == 0 {
		t.Fatal("testpmd txonly sent nothing")
	}
	if bytes, err := p.PortStat(0, "TX-bytes"); err != nil {
		t.Fatal(err)
	} else if _, err := p.PortStat(0, "No-such-counter"); err == nil {
		t.Fatal("unknown counter read")
	} else {
		t.Logf("tx %d frames, %d bytes so far", tx, bytes)
	}
	out, err := p.Command("stop", StopDone)
	if err != nil {
		t.Fatal(err)
	}
	sent, err := Stat(out, "TX-packets")
	if err != nil || sent < tx {
		t.Fatalf("stop: TX-packets %d (%v), fewer than the %d seen before", sent, err, tx)
	}
	if _, acc, err := p.Stats(); err != nil || acc != sent {
		t.Fatalf("accumulated tx %d (%v), stop said %d", acc, err, sent)
	}
	p.Stop()
	select {
	case <-p.Done():
	default:
		t.Fatal("still running after Stop")
	}
	if f := hugeFiles(t, p.prefix); len(f) != 0 || exists("/var/run/dpdk/"+p.prefix) {
		t.Fatalf("left behind: %v, runtime dir %v", f, exists("/var/run/dpdk/"+p.prefix))
	}
	if _, err := p.Command("start", StartDone); err == nil {
		t.Fatal("command accepted after quit")
	}
	p.Stop() // idempotent
}

func TestBackground(t *testing.T) {
	testenv.RequireRoot(t)
	p, err := Start(t, nullConfig(false))
	if err != nil {
		t.Fatal(err)
	}
	// Periodic statistics mean it forwards rather than exit on stdin's EOF.
	if err := p.WaitFor("NIC statistics", 30*time.Second); err != nil {
		t.Fatalf("%v:\n%s", err, p.Output())
	}
	if _, err := p.Command("stop", StopDone); err == nil {
		t.Fatal("command accepted in the background")
	}
	if _, _, err := p.Stats(); err == nil {
		t.Fatal("accumulated statistics before Stop")
	}
	p.Stop()
	rx, tx, err := p.Stats()
	if err != nil || rx != 0 || tx == 0 {
		t.Fatalf("after SIGINT: rx %d tx %d %v", rx, tx, err)
	}
	if exists("/var/run/dpdk/" + p.prefix) {
		t.Fatal("runtime dir left behind")
	}
}

func TestKill(t *testing.T) {
	testenv.RequireRoot(t)
	p, err := StartReady(t, nullConfig(true), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	p.Kill()
	select {
	case <-p.Done():
	default:
		t.Fatal("Kill returned before testpmd exited")
	}
	// A crash leaves its files; Stop (also at cleanup) removes them.
	if !exists("/var/run/dpdk/" + p.prefix) {
		t.Fatal("no runtime dir after a crash")
	}
	p.Stop()
	if f := hugeFiles(t, p.prefix); len(f) != 0 || exists("/var/run/dpdk/"+p.prefix) {
		t.Fatalf("left behind after Stop: %v", f)
	}
}
