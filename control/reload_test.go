package control

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func cloneConfig(c *Config) *Config {
	n := *c
	n.Queues = append([]int(nil), c.Queues...)
	n.VMs = append([]VMConfig(nil), c.VMs...)
	return &n
}

func TestDiffConfig(t *testing.T) {
	dir := t.TempDir()
	old := testConfig(t, dir)

	if p := DiffConfig(old, cloneConfig(old)); !p.Empty() {
		t.Errorf("same config: %+v", p)
	}

	next := cloneConfig(old)
	next.VMs = []VMConfig{old.VMs[2], old.VMs[0], testVM(dir, "d", 4)} // b removed, order shuffled, d added
	next.VMs[0].VLAN = 10                                              // c changed
	next.KeepSteeringOnExit = true
	p := DiffConfig(old, next)
	if !reflect.DeepEqual(p.Remove, []string{"b"}) {
		t.Errorf("remove = %v", p.Remove)
	}
	if len(p.Change) != 1 || p.Change[0].Name != "c" || p.Change[0].VLAN != 10 {
		t.Errorf("change = %+v", p.Change)
	}
	if len(p.Add) != 1 || p.Add[0].Name != "d" {
		t.Errorf("add = %+v", p.Add)
	}
	if len(p.Restart) != 0 || p.KeepSteeringOnExit == nil || !*p.KeepSteeringOnExit {
		t.Errorf("restart %v keep %v", p.Restart, p.KeepSteeringOnExit)
	}

	// Every VM field counts as a change.
	for _, mut := range []func(*VMConfig){
		func(v *VMConfig) { v.MAC = "02:00:00:00:01:01" },
		func(v *VMConfig) { v.Socket = dir + "/other.sock" },
		func(v *VMConfig) { v.Mode = ModeClient },
		func(v *VMConfig) { v.QueuePairs = 2 },
		func(v *VMConfig) { v.AllowSpoofing = true },
	} {
		n := cloneConfig(old)
		mut(&n.VMs[1])
		if p := DiffConfig(old, n); len(p.Change) != 1 || p.Change[0].Name != "b" || len(p.Add)+len(p.Remove) != 0 {
			t.Errorf("mutation not a change of b: %+v", p)
		}
	}

	n := cloneConfig(old)
	n.NIC, n.AttachMode, n.Queues, n.FrameSize = "eth9", AttachGeneric, []int{0, 1, 2}, 2048
	n.PinDir, n.API.Socket, n.API.Mode, n.API.TCP = "/sys/fs/bpf/x", dir+"/x.sock", 0o660, "127.0.0.1:1"
	n.Metrics.Address, n.Polling.BusyPoll = "", time.Millisecond
	n.Tx.Path = TxPathSocket
	p = DiffConfig(old, n)
	got := strings.Join(p.Restart, "\n")
	for _, f := range []string{"nic: veth0 → eth9", "attach_mode", "queues: [0 1] → [0 1 2]", "frame_size", "pin_dir", "api.socket", "api.mode: 0600 → 0660", `api.tcp: "" → 127.0.0.1:1`, `metrics.address: 127.0.0.1:9469 → ""`, "polling.busy_poll", "tx: {Path:auto XDPMinBatch:16} → {Path:socket XDPMinBatch:16}"} {
		if !strings.Contains(got, f) {
			t.Errorf("restart list lacks %q:\n%s", f, got)
		}
	}
	if len(p.Add)+len(p.Remove)+len(p.Change) != 0 {
		t.Errorf("NIC changes touched VMs: %+v", p)
	}
}

func TestReloadApplies(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	e := newEnv(t, cfg, nil)
	ctx := context.Background()
	if _, err := e.ctl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// An API VM survives reloads.
	if _, err := e.ctl.AddVM(ctx, testVM(dir, "api1", 0x10)); err != nil {
		t.Fatal(err)
	}
	slotC := mustVM(t, e.ctl, "c").Slot

	next := cloneConfig(cfg)
	// b removed; c takes b's MAC (a move: needs b gone first); d added;
	// a queue change is reported only.
	next.VMs = []VMConfig{cfg.VMs[0], cfg.VMs[2], testVM(dir, "d", 4)}
	next.VMs[1].MAC = cfg.VMs[1].MAC
	next.Queues = []int{0, 1, 2}
	p, err := e.ctl.Reload(ctx, next)
	if err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if len(p.Restart) != 1 || !strings.HasPrefix(p.Restart[0], "queues") {
		t.Errorf("restart = %v", p.Restart)
	}
	names := []string{}
	for _, vm := range e.ctl.VMs() {
		names = append(names, vm.Name)
	}
	if !reflect.DeepEqual(names, []string{"a", "api1", "c", "d"}) {
		t.Errorf("VMs after reload = %v", names)
	}
	if c := mustVM(t, e.ctl, "c"); c.MAC != cfg.VMs[1].MAC || c.Slot != slotC {
		t.Errorf("c = %+v, want b's MAC on its old slot %d", c, slotC)
	}
	if got := e.ctl.Status().RestartPending; len(got) != 1 {
		t.Errorf("status restart pending = %v", got)
	}
	if q := e.ctl.Config().Queues; len(q) != 2 {
		t.Errorf("running queues changed to %v without a restart", q)
	}
	// a was untouched.
	for _, c := range e.dp.calls[4:] {
		if strings.HasSuffix(c, " a") || strings.Contains(c, "add a ") {
			t.Errorf("reload touched a: %v", e.dp.calls)
		}
	}

	// A config VM removed over the API comes back on reload.
	if err := e.ctl.RemoveVM(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if p, err := e.ctl.Reload(ctx, next); err != nil || len(p.Add) != 1 || p.Add[0].Name != "d" {
		t.Errorf("reload after API removal: %+v, %v", p, err)
	}
}

func TestReloadRejectsAndChangesNothing(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	ctx := context.Background()
	cases := map[string]func(n *Config){
		"invalid":               func(n *Config) { n.VMs[0].VLAN = 9999 },
		"clashes with API name": func(n *Config) { n.VMs = append(n.VMs, testVM(dir, "api1", 0x20)) },
		"clashes with API MAC":  func(n *Config) { n.VMs = append(n.VMs, testVM(dir, "x", 0x10)) },
		"clashes with API sock": func(n *Config) { v := testVM(dir, "x", 0x20); v.Socket = dir + "/api1.sock"; n.VMs = append(n.VMs, v) },
		"more pairs than running queues": func(n *Config) {
			n.Queues = []int{0, 1, 2}
			n.VMs[0].QueuePairs = 3
		},
	}
	for name, mut := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, cfg, nil)
			if _, err := e.ctl.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := e.ctl.AddVM(ctx, testVM(dir, "api1", 0x10)); err != nil {
				t.Fatal(err)
			}
			next := cloneConfig(cfg)
			next.VMs = next.VMs[:2] // would remove c
			mut(next)
			before, calls := e.ft.snapshot(), len(e.dp.calls)
			if _, err := e.ctl.Reload(ctx, next); err == nil {
				t.Fatal("Reload accepted")
			}
			if !reflect.DeepEqual(e.ft.snapshot(), before) || len(e.dp.calls) != calls || len(e.ctl.VMs()) != 4 {
				t.Errorf("rejected reload changed state: calls %v", e.dp.calls[calls:])
			}
		})
	}
}

func TestReloadPartialFailureReported(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	e := newEnv(t, cfg, nil)
	ctx := context.Background()
	if _, err := e.ctl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	next := cloneConfig(cfg)
	next.VMs = append(next.VMs, testVM(dir, "d", 4), testVM(dir, "e", 5))
	e.dp.failAdd["d"] = errBoom
	p, err := e.ctl.Reload(ctx, next)
	if !errors.Is(err, errBoom) || len(p.Add) != 2 {
		t.Fatalf("Reload = %+v, %v", p, err)
	}
	if _, ok := e.ctl.VM("e"); !ok {
		t.Error("e not added after d failed")
	}
	if _, ok := e.ctl.VM("d"); ok {
		t.Error("failed d registered")
	}
}

func mustVM(t *testing.T, c *Controller, name string) VMInfo {
	t.Helper()
	vm, ok := c.VM(name)
	if !ok {
		t.Fatalf("no VM %q", name)
	}
	return vm
}
