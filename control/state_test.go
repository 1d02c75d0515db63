package control

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// VMs added over the API are written to the state file on every change
// and come back, with their slot and pinned filter, in the next
// controller over the same pins; config VMs are never persisted.
func TestAPIVMsPersistAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.StateFile = filepath.Join(dir, "state", "ports.json")
	e := newEnv(t, cfg, nil)
	ctx := context.Background()
	if _, err := e.ctl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for i, n := range []string{"p1", "p2"} {
		vm := testVM(dir, n, 0x10+i)
		vm.VLAN = 7
		if _, err := e.ctl.AddVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.ctl.SetLimits(ctx, "p2", LimitsPatch{TxPPS: ptr(uint64(1000))}); err != nil {
		t.Fatal(err)
	}
	if err := e.ctl.RemoveVM(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	saved, err := LoadState(cfg.StateFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(saved) != 1 || saved[0].Name != "p2" || saved[0].VLAN != 7 || saved[0].Limits.TxPPS != 1000 {
		t.Fatalf("state file holds %+v, want only p2 on VLAN 7 with tx_pps 1000", saved)
	}
	p2, _ := e.ctl.VM("p2")
	// No temporary file is left next to the state.
	ents, _ := os.ReadDir(filepath.Dir(cfg.StateFile))
	if len(ents) != 1 {
		t.Fatalf("state directory holds %d entries, want only ports.json", len(ents))
	}

	// A new controller over the pins the first one left.
	e2 := newEnv(t, cfg, e.ft.snapshot())
	if _, err := e2.ctl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	got, ok := e2.ctl.VM("p2")
	if !ok || got.Source != SourceAPI || got.Slot != p2.Slot || got.Limits.TxPPS != 1000 || got.State != StateRunning {
		t.Fatalf("after restart p2 = %+v (found %v), want slot %d from the API with its limits", got, ok, p2.Slot)
	}
	if _, ok := e2.ctl.VM("p1"); ok {
		t.Fatal("removed VM p1 came back")
	}
	if len(e2.ctl.VMs()) != 4 {
		t.Fatalf("%d VMs after restart, want a, b, c and p2", len(e2.ctl.VMs()))
	}
}

// A persisted VM that now clashes with the config (the config wins) or is
// invalid is left out and reported; the rest start. A corrupt file is
// moved aside, never overwritten.
func TestStateRestoreConflictsAndCorruption(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.StateFile = filepath.Join(dir, "ports.json")
	clash := testVM(dir, "x", 1) // a's MAC on VLAN 0
	ok := testVM(dir, "y", 0x20)
	if err := SaveState(cfg.StateFile, []VMConfig{clash, ok}); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, cfg, nil)
	_, err := e.ctl.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), `restore API VM "x"`) || !strings.Contains(err.Error(), "state_file.vms[0].mac") {
		t.Fatalf("start: %v, want x reported as clashing", err)
	}
	if _, found := e.ctl.VM("y"); !found {
		t.Fatal("valid persisted VM y not restored")
	}
	if info, _ := e.ctl.VM("a"); info.Source != SourceConfig {
		t.Fatalf("config VM a replaced: %+v", info)
	}

	if err := os.WriteFile(cfg.StateFile, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	e2 := newEnv(t, cfg, nil)
	if _, err := e2.ctl.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "restore API VMs") {
		t.Fatalf("start on a corrupt state file: %v", err)
	}
	if b, err := os.ReadFile(cfg.StateFile + ".broken"); err != nil || string(b) != "{not json" {
		t.Fatalf("corrupt state file not kept aside: %q, %v", b, err)
	}
}

// api.allowed_vlans limits API VMs (a 400 naming vm.vlan), not config
// ones; a duplicate MAC is a 409 naming vm.mac, a duplicate name vm.name.
func TestAPIAllowedVLANsAndDuplicateFields(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.API.AllowedVLANs = []int{0, 100}
	e := newEnv(t, cfg, nil)
	if _, err := e.ctl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, _ := startAPI(t, e)
	ctx := context.Background()
	vm := testVM(dir, "v", 0x30)
	vm.VLAN = 200
	_, err := c.AddVM(ctx, vm)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || len(ae.Fields) != 1 || ae.Fields[0].Field != "vm.vlan" ||
		!strings.Contains(ae.Message, "VLAN 200 is not allowed") {
		t.Fatalf("add on VLAN 200: %#v", err)
	}
	vm.VLAN = 100
	if _, err := c.AddVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		vm    VMConfig
		field string
	}{
		{VMConfig{Name: "w", MAC: "02:00:00:00:00:01", Socket: dir + "/w.sock"}, "vm.mac"},
		{VMConfig{Name: "v", MAC: "02:00:00:00:00:99", Socket: dir + "/w.sock"}, "vm.name"},
		{VMConfig{Name: "w", MAC: "02:00:00:00:00:99", Socket: dir + "/v.sock"}, "vm.socket"},
	} {
		_, err := c.AddVM(ctx, tc.vm)
		if !errors.As(err, &ae) || ae.Status != http.StatusConflict || len(ae.Fields) != 1 || ae.Fields[0].Field != tc.field {
			t.Errorf("add %+v: %#v, want 409 naming %s", tc.vm, err, tc.field)
		}
	}
}

func ptr[T any](v T) *T { return &v }
