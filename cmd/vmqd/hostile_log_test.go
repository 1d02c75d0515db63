package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/internal/hostile"
	"github.com/vmq/vmq/internal/testenv"
)

// fdCount is how many fds vmqd holds open.
func fdCount(t *testing.T, h *hostileBed) int {
	t.Helper()
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", h.proc.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// memfdMaps is how many mappings of the attacker's memfds (guest memory,
// logs) vmqd holds.
func memfdMaps(t *testing.T, h *hostileBed) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", h.proc.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "memfd:vmq-hostile")
}

// held is what vmqd holds that an attacker could make it leak.
type held struct{ fds, goroutines int }

// heldBy counts vmqd's open fds and goroutines (go_goroutines on its
// /metrics, fetched without keep-alive so the request leaves nothing).
func heldBy(t *testing.T, h *hostileBed) held {
	t.Helper()
	hc := http.Client{Timeout: answerWithin, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get("http://" + h.proc.metrics + "/metrics")
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	g := -1
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "go_goroutines "); ok {
			g, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if g < 0 {
		t.Fatal("no go_goroutines on /metrics")
	}
	return held{fds: fdCount(t, h), goroutines: g}
}

// expectReleased closes d and waits until vmqd holds no more fds and
// goroutines than before (counted before the attacker's connection) and
// no mapping of any attacker's memory.
func expectReleased(t *testing.T, h *hostileBed, d *hostile.Device, before held) {
	t.Helper()
	d.Close()
	testenv.Eventually(t, "vmqd lets go of the attacker's fds, goroutines and memory", func() (bool, string) {
		now, m := heldBy(t, h), memfdMaps(t, h)
		return now.fds <= before.fds && now.goroutines <= before.goroutines && m == 0,
			fmt.Sprintf("%+v held (%+v before the attack), %d mappings of attacker memfds", now, before, m)
	})
}

// logDevice negotiates LOG_ALL and LOG_SHMFD (the features of a guest
// being migrated) on a new attacker connection.
func logDevice(t *testing.T, h *hostileBed, a *attacker, cfg hostile.Config) *hostile.Device {
	t.Helper()
	cfg.Features = hostile.DefaultFeatures | vhostuser.FeatureLogAll
	cfg.Protocol = vhostuser.ProtocolFLogShmfd
	d := a.device(cfg)
	if err := d.Negotiate(); err != nil {
		t.Fatal(err)
	}
	if d.Features&vhostuser.FeatureLogAll == 0 || d.Protocol&vhostuser.ProtocolFLogShmfd == 0 {
		t.Fatalf("LOG_ALL/LOG_SHMFD not negotiated: features %#x, protocol %#x", d.Features, d.Protocol)
	}
	return d
}

// A memory region and a dirty log each placed 64 TiB into a sparse
// memfd (mmap_offset, the log offset): the guest pays nothing, and vmqd
// must not pay 64 TiB of address space for a few MiB of window, which
// max_guest_memory (it counts region sizes) does not see.
func attackSparseOffsets(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	const far = 64 << 40
	d := logDevice(t, h, a, hostile.Config{})
	region, err := hostile.NewSparse(far + 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(region.Close)
	region.GPA, region.UVA, region.Offset, region.Size = 1<<40, 0x1000_0000_0000, far, 2<<20
	log, err := hostile.NewSparse(far + 8192)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(log.Close)
	for _, step := range []struct {
		what string
		do   func() error
	}{
		{"memory region at mmap_offset 64 TiB", func() error { return d.C.MemTable(d.Mem, region) }},
		{"dirty log at offset 64 TiB", func() error { return d.LogBase(log.FD, 8192, far) }},
	} {
		before := vmSize(t, h)
		err := step.do()
		if grew := vmSize(t, h) - before; grew > 1<<30 {
			t.Errorf("%s: vmqd's address space grew by %d GiB", step.what, grew>>30)
		}
		t.Logf("%s: %v", step.what, err) // accepted (a small window) or refused: both safe
		if !h.proc.alive() {
			t.Fatalf("vmqd died: %v", h.proc.waitErr)
		}
	}
}

// Guest memory, then a dirty log, in a file on a disk filesystem: a page
// fault there can wait on another process (FUSE) or a server (NFS), on a
// worker other VMs share. vmqd refuses both (NACK, then a hang-up: the
// log has a reply of its own) and takes the next front-end.
func attackMemoryNotShared(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	before := heldBy(t, h)
	d := logDevice(t, h, a, hostile.Config{})
	disk, err := hostile.NewDiskMem(h.b.Dir, 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(disk.Close)
	disk.GPA, disk.UVA = 1<<40, 0x1000_0000_0000
	if err := d.C.MemTable(disk); !errors.Is(err, hostile.ErrNack) {
		t.Errorf("memory on disk: %v, want refused", err)
	}
	if err := d.LogBase(disk.FD, 4096, 0); err == nil {
		t.Errorf("dirty log on disk accepted")
	}
	expectReleased(t, h, d, before)
	mustStart(t, h, a.device(hostile.Config{}))
}

// A guest being migrated, hostile with its dirty log: a log far smaller
// than its memory (pages past its end must not be written), LOG_ALL
// switched off and on under traffic, SET_LOG_BASE sent again and again
// (each old mapping and fd must go), and finally the log's memfd
// truncated under traffic: the worker's next mark is a SIGBUS that must
// break this device only. vmqd ends with no more fds than it began with.
func attackDirtyLog(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	before := heldBy(t, h)
	d := logDevice(t, h, a, hostile.Config{})
	d.Mem.GPA = 0x10000 // low: the one-page log covers the buffers
	if err := d.SendMemTable(); err != nil {
		t.Fatal(err)
	}
	for i := range d.Rings {
		if err := d.StartRing(i); err != nil {
			t.Fatal(err)
		}
	}
	// One page of log: 128 MiB of guest physical addresses, ending
	// exactly at the end of its file and of vmqd's mapping.
	newLog := func() *hostile.Mem {
		m, err := hostile.NewMem(4096)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		if err := d.LogBase(m.FD, 4096, 0); err != nil {
			t.Fatalf("SET_LOG_BASE: %v", err)
		}
		return m
	}
	log := newLog()
	h.attackerFlow(t, 2000)
	rx := d.RX()
	delivered := func(what string) {
		t.Helper()
		from := rx.UsedIdx()
		rx.PostRX()
		d.KickRing(0)
		testenv.Eventually(t, what, func() (bool, string) {
			if !h.proc.alive() {
				t.Fatalf("vmqd died: %v\n%s", h.proc.waitErr, h.logTail())
			}
			if s, err := h.snapshot(); err == nil && portOf(s, a.name).Broken != "" {
				t.Fatalf("%s: device broken: %s", what, portOf(s, a.name).Broken)
			}
			return rx.UsedIdx()-from >= 16, fmt.Sprintf("%d frames delivered", rx.UsedIdx()-from)
		})
	}
	delivered("frames delivered with the log on")
	if !nonZero(log.Bytes()) {
		t.Errorf("no page marked in the dirty log after %d frames", rx.UsedIdx())
	}
	for i := range 20 {
		f := d.Features
		if i%2 == 0 {
			f &^= vhostuser.FeatureLogAll
		}
		if _, err := d.C.U64(vhostuser.ReqSetFeatures, f); err != nil {
			t.Fatalf("toggling LOG_ALL: %v", err)
		}
	}
	delivered("frames delivered after LOG_ALL toggled 20 times")
	fds1, maps1 := fdCount(t, h), memfdMaps(t, h)
	if maps1 == 0 {
		t.Fatal("no mapping of the attacker's memfds found in vmqd's maps")
	}
	for range 100 {
		log.Close()
		log = newLog()
	}
	if n := fdCount(t, h); n > fds1 {
		t.Errorf("100 SET_LOG_BASE left %d more fds open in vmqd", n-fds1)
	}
	if n := memfdMaps(t, h); n > maps1 {
		t.Errorf("100 SET_LOG_BASE left %d more mappings of the attacker's memfds in vmqd (%d before)", n-maps1, maps1)
	}
	delivered("frames delivered after 100 logs")
	if err := log.Truncate(0); err != nil {
		t.Fatal(err)
	}
	rx.PostRX()
	d.KickRing(0)
	t.Logf("log truncated: %s", a.waitBroken("memory fault"))
	expectReleased(t, h, d, before)
}

func nonZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return true
		}
	}
	return false
}

// logLinesSince counts the lines of vmqd's log after byte off that
// name the attacker and contain msg.
func logLinesSince(t *testing.T, h *hostileBed, off int64, msg string) int {
	t.Helper()
	b, err := os.ReadFile(h.log)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b[min(off, int64(len(b))):]), "\n") {
		if strings.Contains(l, msg) && strings.Contains(l, `"attacker"`) {
			n++
		}
	}
	return n
}

// logSize is the length of vmqd's log now.
func logSize(t *testing.T, h *hostileBed) int64 {
	t.Helper()
	st, err := os.Stat(h.log)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// Requests a guest may repeat at will, each of which vmqd logs: a new
// dirty log (SET_LOG_BASE) and a ring started at a base its used.idx
// disagrees with (SET_VRING_BASE 0 after frames were delivered, then
// SET_VRING_KICK), 100 times each. vmqd's log is shared by every tenant:
// each kind gets a line or two, not a hundred.
func attackLogFlood(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	d := logDevice(t, h, a, hostile.Config{})
	if err := d.SendMemTable(); err != nil {
		t.Fatal(err)
	}
	for i := range d.Rings {
		if err := d.StartRing(i); err != nil {
			t.Fatal(err)
		}
	}
	h.attackerFlow(t, 2000)
	rx := d.RX()
	rx.PostRX()
	d.KickRing(0)
	waitUsed(t, h, rx, "frames delivered to the attacker")
	off := logSize(t, h)
	logFD, err := hostile.NewMem(4096)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(logFD.Close)
	for range 100 {
		if err := d.LogBase(logFD.FD, 4096, 0); err != nil {
			t.Fatalf("SET_LOG_BASE: %v", err)
		}
		if err := d.C.State(vhostuser.ReqSetVringBase, 0, 0); err != nil {
			t.Fatalf("SET_VRING_BASE: %v", err)
		}
		if _, err := d.C.U64(vhostuser.ReqSetVringKick, 0, d.Kick[0].FD); err != nil {
			t.Fatalf("SET_VRING_KICK: %v", err)
		}
	}
	for _, msg := range []string{"vhost-user dirty log", "used.idx differs from the base"} {
		if n := logLinesSince(t, h, off, msg); n < 1 || n > 2 {
			t.Errorf("%d log lines %q for 100 requests, want 1 or 2", n, msg)
		} else {
			t.Logf("%d log lines %q for 100 requests", n, msg)
		}
	}
}
