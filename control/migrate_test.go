package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
)

// migratingDP is the fake dataplane with standby ports.
type migratingDP struct {
	*fakeDP
	prepared map[string]string
}

func (d *migratingDP) PrepareMigration(ctx context.Context, name, socket string, client bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.prepared[name]; ok {
		return fmt.Errorf("already prepared")
	}
	d.prepared[name] = fmt.Sprintf("%s client=%v", socket, client)
	return nil
}

func (d *migratingDP) AbortMigration(ctx context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.prepared[name]; !ok {
		return errors.New("no migration prepared")
	}
	delete(d.prepared, name)
	return nil
}

func TestAPIMigration(t *testing.T) {
	dir := t.TempDir()
	dp := &migratingDP{fakeDP: newFakeDP(), prepared: map[string]string{}}
	ft := newFakeFT(nil)
	ft.dp, dp.ft = dp.fakeDP, ft
	ctl, err := NewController(testConfig(t, dir), dp, ft, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, _ := startAPI(t, &env{ctl: ctl, dp: dp.fakeDP, ft: ft})
	ctx := context.Background()
	vms, err := c.ListVMs(ctx)
	if err != nil || len(vms) < 2 {
		t.Fatalf("VMs %v %v", vms, err)
	}
	name := vms[0].Name
	dst := filepath.Join(dir, "dst.sock")

	status := func(err error) int {
		var ae *APIError
		if errors.As(err, &ae) {
			return ae.Status
		}
		return 0
	}
	for _, tc := range []struct {
		vm   string
		req  MigrationRequest
		want int
	}{
		{name, MigrationRequest{Socket: "rel.sock"}, http.StatusBadRequest},
		{name, MigrationRequest{Socket: dst, Mode: "bridge"}, http.StatusBadRequest},
		{name, MigrationRequest{Socket: vms[1].Socket}, http.StatusConflict},
		{"nosuch", MigrationRequest{Socket: dst}, http.StatusNotFound},
	} {
		if err := c.PrepareMigration(ctx, tc.vm, tc.req); status(err) != tc.want {
			t.Errorf("prepare %s %+v: %v, want status %d", tc.vm, tc.req, err, tc.want)
		}
	}
	if err := c.PrepareMigration(ctx, name, MigrationRequest{Socket: dst, Mode: ModeClient}); err != nil {
		t.Fatal(err)
	}
	if got := dp.prepared[name]; got != dst+" client=true" {
		t.Fatalf("dataplane saw %q", got)
	}
	if err := c.AbortMigration(ctx, name); err != nil {
		t.Fatal(err)
	}
	// A completed migration moves the VM to the destination's socket.
	ctl.MigrationDone(name, dst, true)
	if d, err := c.GetVM(ctx, name); err != nil || d.Socket != dst || d.Mode != ModeClient {
		t.Fatalf("after the migration: %+v %v", d.VMConfig, err)
	}
	if err := c.PrepareMigration(ctx, vms[1].Name, MigrationRequest{Socket: dst}); status(err) != http.StatusConflict {
		t.Fatalf("the migrated VM's socket for another VM: %v", err)
	}
	if err := c.AbortMigration(ctx, name); status(err) != http.StatusInternalServerError {
		t.Fatalf("second abort: %v", err)
	}

	// A dataplane without standby ports refuses.
	e, _ := startedEnv(t)
	c2, _ := startAPI(t, e)
	vms2, _ := c2.ListVMs(ctx)
	if err := c2.PrepareMigration(ctx, vms2[0].Name, MigrationRequest{Socket: dst}); err == nil {
		t.Fatal("prepared without a Migrator")
	}
}
