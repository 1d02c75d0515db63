package control

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestPlanReconcile(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir) // a=:01 b=:02 c=:03, all VLAN 0
	ka, kb, kc := cfg.VMs[0].Key(), cfg.VMs[1].Key(), cfg.VMs[2].Key()
	stale := key(t, "02:00:00:00:00:99", 7)

	t.Run("empty table", func(t *testing.T) {
		p, err := PlanReconcile(cfg.VMs, nil, 8)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]uint32{"a": 1, "b": 2, "c": 3}
		if !reflect.DeepEqual(p.Slots, want) || len(p.Keep) != 0 || len(p.Stale) != 0 || len(p.Add) != 3 {
			t.Errorf("plan = %+v", p)
		}
	})
	t.Run("keeps pinned slots, deletes stale, fills gaps", func(t *testing.T) {
		pinned := map[FilterKey]uint32{kb: 1, kc: 5, stale: 2}
		p, err := PlanReconcile(cfg.VMs, pinned, 8)
		if err != nil {
			t.Fatal(err)
		}
		// a is new: the lowest slot not kept. Slot 2 is the stale
		// entry's, free because the stale entry is deleted first.
		if want := map[string]uint32{"a": 2, "b": 1, "c": 5}; !reflect.DeepEqual(p.Slots, want) {
			t.Errorf("slots = %v, want %v", p.Slots, want)
		}
		if want := map[FilterKey]uint32{kb: 1, kc: 5}; !reflect.DeepEqual(p.Keep, want) {
			t.Errorf("keep = %v", p.Keep)
		}
		if !reflect.DeepEqual(p.Stale, []FilterKey{stale}) || len(p.Moved) != 0 {
			t.Errorf("stale = %v moved = %v", p.Stale, p.Moved)
		}
		if want := map[FilterKey]uint32{ka: 2}; !reflect.DeepEqual(p.Add, want) {
			t.Errorf("add = %v", p.Add)
		}
	})
	t.Run("invalid and shared slots move", func(t *testing.T) {
		// a and b share slot 3 (a wins, config order); c's slot 0 is the
		// flood slot and 200 is beyond maxVMs: both move.
		p, err := PlanReconcile(cfg.VMs, map[FilterKey]uint32{ka: 3, kb: 3, kc: 0}, 8)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]uint32{"a": 3, "b": 1, "c": 2}; !reflect.DeepEqual(p.Slots, want) {
			t.Errorf("slots = %v, want %v", p.Slots, want)
		}
		if len(p.Moved) != 2 || len(p.Keep) != 1 || p.Add[kb] != 1 || p.Add[kc] != 2 {
			t.Errorf("plan = %+v", p)
		}
		p, _ = PlanReconcile(cfg.VMs[:1], map[FilterKey]uint32{ka: 200}, 8)
		if p.Slots["a"] != 1 || len(p.Moved) != 1 {
			t.Errorf("out-of-range slot: %+v", p)
		}
	})
	t.Run("too many VMs", func(t *testing.T) {
		if _, err := PlanReconcile(cfg.VMs, nil, 2); err == nil {
			t.Error("3 VMs in 2 slots accepted")
		}
	})
}

func TestReconcileApplies(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	ka, kb, kc := cfg.VMs[0].Key(), cfg.VMs[1].Key(), cfg.VMs[2].Key()
	stale := key(t, "02:00:00:00:00:99", 0)
	ft := newFakeFT(map[FilterKey]uint32{ka: 4, stale: 1, kc: 0})
	if _, err := Reconcile(context.Background(), ft, cfg.VMs, 8); err != nil {
		t.Fatal(err)
	}
	want := map[FilterKey]uint32{ka: 4, kb: 1, kc: 2}
	if got := ft.snapshot(); !reflect.DeepEqual(got, want) {
		t.Errorf("table = %v, want %v", got, want)
	}
	// a's entry was right: never touched, so its steering never stopped.
	for _, op := range ft.ops {
		if strings.Contains(op, ka.String()) {
			t.Errorf("kept entry touched: %s", op)
		}
	}
	// Deletions come before any set (a reused slot must be clean first).
	seenSet := false
	for _, op := range ft.ops {
		if strings.HasPrefix(op, "set") {
			seenSet = true
		} else if seenSet {
			t.Errorf("delete after a set: %v", ft.ops)
		}
	}

	ft = newFakeFT(nil)
	ft.failRead = errBoom
	if _, err := Reconcile(context.Background(), ft, cfg.VMs, 8); !errors.Is(err, errBoom) {
		t.Errorf("read failure: %v", err)
	}
}

func TestStartReconcilesWithDataplane(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	ka, kb, kc := cfg.VMs[0].Key(), cfg.VMs[1].Key(), cfg.VMs[2].Key()
	stale := key(t, "02:00:00:00:00:99", 0)
	// stale points at slot 2, which VM c will get: it must be gone before
	// c joins the dataplane, or c would receive the stale MAC's frames.
	e := newEnv(t, cfg, map[FilterKey]uint32{kb: 1, ka: 3, stale: 2})
	if _, err := e.ctl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := (map[FilterKey]uint32{ka: 3, kb: 1, kc: 2}); !reflect.DeepEqual(e.ft.snapshot(), want) {
		t.Errorf("table = %v, want %v", e.ft.snapshot(), want)
	}
	if e.ft.ops[0] != "del "+stale.String() {
		t.Errorf("first filter op = %q, want the stale delete; ops %v", e.ft.ops[0], e.ft.ops)
	}
	if len(e.ft.ops) != 2 {
		t.Errorf("ops = %v, want only the stale delete and c's set", e.ft.ops)
	}
	for _, vm := range e.ctl.VMs() {
		if vm.State != StateRunning || vm.Source != SourceConfig {
			t.Errorf("%s: %s/%s", vm.Name, vm.State, vm.Source)
		}
	}
	if vm, _ := e.ctl.VM("a"); vm.Slot != 3 {
		t.Errorf("a got slot %d, want its pinned 3", vm.Slot)
	}
	if _, err := e.ctl.Start(context.Background()); err == nil {
		t.Error("second Start accepted")
	}
}

func TestStartVMFailureLeavesOthers(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	kb := cfg.VMs[1].Key()
	e := newEnv(t, cfg, map[FilterKey]uint32{kb: 2})
	e.dp.failAdd["b"] = errBoom
	_, err := e.ctl.Start(context.Background())
	if !errors.Is(err, errBoom) || !strings.Contains(err.Error(), `"b"`) {
		t.Fatalf("Start = %v, want b's failure", err)
	}
	if _, ok := e.ctl.VM("b"); ok {
		t.Error("failed VM b is registered")
	}
	// b's pinned entry steered to a slot nobody holds now: it must go.
	if _, ok := e.ft.snapshot()[kb]; ok {
		t.Error("failed VM's pinned filter left in place")
	}
	if len(e.ctl.VMs()) != 2 || len(e.ft.snapshot()) != 2 {
		t.Errorf("vms %v table %v", e.ctl.VMs(), e.ft.snapshot())
	}
}

func TestShutdown(t *testing.T) {
	for _, keep := range []bool{false, true} {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		cfg.KeepSteeringOnExit = keep
		e := newEnv(t, cfg, nil)
		if _, err := e.ctl.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := e.ctl.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		n := len(e.ft.snapshot())
		if keep && n != 3 || !keep && n != 0 {
			t.Errorf("keep=%v: %d filters left", keep, n)
		}
		// Shutdown leaves the dataplane to the daemon; clear it so the
		// fake's ordering check doesn't count these as removed.
		e.dp.vms = map[string]VMSpec{}
	}
}
