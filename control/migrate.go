package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
)

// Live migration, as a VM manager (libvirt, KubeVirt) drives it:
//
//  1. migrate-prepare VM --socket PATH [--mode client]: vmqd opens a
//     standby vhost-user port of the VM (same slot, MAC, VLAN, limits)
//     for the destination QEMU, which starts with -incoming on it.
//  2. The manager migrates (QEMU's "migrate"). The destination's rings
//     start when the guest resumes there: the VM's traffic moves to the
//     standby port, and QEMU's announce reaches vmq as SEND_RARP, which
//     vmq sends to the wire.
//  3. The source QEMU quits: its port closes and the standby port
//     becomes the VM's port (the VM's socket is PATH from then on).
//  4. If the migration fails, migrate-abort VM closes the standby port.

// Migrator is the dataplane's side of migrations; a Dataplane that is
// not one refuses them.
type Migrator interface {
	PrepareMigration(ctx context.Context, name, socket string, client bool) error
	AbortMigration(ctx context.Context, name string) error
}

// MigrationRequest is the body of POST /v1/vms/{name}/migration: where
// the destination QEMU connects (server: vmqd listens on Socket) or
// listens (client: vmqd connects to Socket).
type MigrationRequest struct {
	Socket string `json:"socket"`
	Mode   string `json:"mode,omitempty"` // server (default) or client
}

// ErrNoMigrator: the dataplane cannot migrate VMs.
var ErrNoMigrator = errors.New("the dataplane does not support migration")

// PrepareMigration opens the standby port of VM name for a migration's
// destination.
func (c *Controller) PrepareMigration(ctx context.Context, name string, req MigrationRequest) error {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if !c.isStarted() {
		return ErrNotStarted
	}
	if _, ok := c.reg.Get(name); !ok {
		return fmt.Errorf("prepare migration of VM %q: %w", name, ErrNotFound)
	}
	if req.Mode == "" {
		req.Mode = ModeServer
	}
	if req.Mode != ModeServer && req.Mode != ModeClient {
		return fmt.Errorf("prepare migration of VM %q: mode %q: want %s or %s: %w", name, req.Mode, ModeServer, ModeClient, ErrInvalid)
	}
	if req.Socket == "" || !filepath.IsAbs(req.Socket) {
		return fmt.Errorf("prepare migration of VM %q: socket %q: want an absolute path: %w", name, req.Socket, ErrInvalid)
	}
	for _, o := range c.reg.List() {
		if o.Socket == req.Socket {
			return fmt.Errorf("prepare migration of VM %q: socket %s is VM %q's: %w", name, req.Socket, o.Name, ErrDuplicate)
		}
	}
	m, ok := c.dp.(Migrator)
	if !ok {
		return ErrNoMigrator
	}
	if err := m.PrepareMigration(ctx, name, req.Socket, req.Mode == ModeClient); err != nil {
		return fmt.Errorf("prepare migration: %w", err)
	}
	return nil
}

// AbortMigration closes the standby port of VM name.
func (c *Controller) AbortMigration(ctx context.Context, name string) error {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if !c.isStarted() {
		return ErrNotStarted
	}
	if _, ok := c.reg.Get(name); !ok {
		return fmt.Errorf("abort migration of VM %q: %w", name, ErrNotFound)
	}
	m, ok := c.dp.(Migrator)
	if !ok {
		return ErrNoMigrator
	}
	if err := m.AbortMigration(ctx, name); err != nil {
		return fmt.Errorf("abort migration: %w", err)
	}
	return nil
}

// MigrationDone records that VM name's migration completed: its socket
// is the standby port's from now on (and so in the state file, for a VM
// added over the API; a VM of the YAML file keeps its configured socket
// there, which its owner must update). The dataplane calls it.
func (c *Controller) MigrationDone(name, socket string, client bool) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	mode := ModeServer
	if client {
		mode = ModeClient
	}
	info, ok := c.reg.setSocket(name, socket, mode)
	if !ok {
		return
	}
	c.log.Info("migration complete", "vm", name, "socket", socket, "mode", mode)
	if info.Source == SourceAPI {
		if err := c.persistLocked(); err != nil {
			c.log.Error("migration complete: state not saved", "vm", name, "err", err)
		}
	}
}

// setSocket moves a VM to another socket; false if it is gone.
func (r *Registry) setSocket(name, socket, mode string) (VMInfo, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	info, ok := r.byName[name]
	if !ok {
		return VMInfo{}, false
	}
	if old := filepath.Clean(info.Socket); r.bySock[old] == name {
		delete(r.bySock, old)
	}
	info.Socket, info.Mode = socket, mode
	r.bySock[filepath.Clean(socket)] = name
	return *info, true
}

func (s *Server) prepareMigration(w http.ResponseWriter, r *http.Request) {
	var req MigrationRequest
	if !s.decodeBody(w, r, &req, "migration") {
		return
	}
	if err := s.ctl.PrepareMigration(r.Context(), r.PathValue("name"), req); err != nil {
		s.writeError(w, r, apiErrorFor(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) abortMigration(w http.ResponseWriter, r *http.Request) {
	if err := s.ctl.AbortMigration(r.Context(), r.PathValue("name")); err != nil {
		s.writeError(w, r, apiErrorFor(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// PrepareMigration asks vmqd for VM name's standby port.
func (c *Client) PrepareMigration(ctx context.Context, name string, req MigrationRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/vms/"+name+"/migration", req, nil)
}

// AbortMigration closes VM name's standby port.
func (c *Client) AbortMigration(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/vms/"+name+"/migration", nil, nil)
}
