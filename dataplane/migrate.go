package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/xsk"
)

// Live migration. For the length of a migration a VM has two vhost-user
// ports: its own (the source QEMU's) and a standby port (the destination
// QEMU's) with the same slot, MAC, VLAN and limits. Both ports' queues
// attach to the same VM on the workers; a worker delivers to the receive
// queue that started last, so traffic moves to the destination when its
// rings start (QEMU starts them when the guest resumes there). When the
// source's front-end disconnects after that, its port is closed and the
// standby port becomes the VM's port. AbortMigration closes a standby
// port that never took over.

// ErrNoMigration: the VM has no standby port.
var ErrNoMigration = errors.New("no migration prepared")

// migration is a VM's standby port.
type migration struct {
	port   *vhostuser.Port
	h      *portHandler
	socket string
	client bool
}

// PrepareMigration opens a standby vhost-user port for VM name on socket:
// vmq listens there, or with client set connects to the destination
// QEMU's socket. The standby port takes over the VM's traffic when the
// destination starts its rings.
func (dp *Dataplane) PrepareMigration(ctx context.Context, name, socket string, client bool) error {
	dp.mu.Lock()
	e, ok := dp.vms[name]
	if !ok {
		dp.mu.Unlock()
		return fmt.Errorf("prepare migration of VM %q: not present", name)
	}
	retired := e.retired
	dp.mu.Unlock()
	// The port of the previous migration's source may still be closing
	// (its socket file goes with it): wait, so a migration back to that
	// socket does not find it in use.
	if retired != nil {
		select {
		case <-retired:
		case <-ctx.Done():
			return fmt.Errorf("prepare migration of VM %q: previous port still closing: %w", name, ctx.Err())
		}
	}
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if e, ok = dp.vms[name]; !ok {
		return fmt.Errorf("prepare migration of VM %q: not present", name)
	}
	if e.mig != nil {
		return fmt.Errorf("prepare migration of VM %q: already prepared on %s", name, e.mig.socket)
	}
	if socket == e.vm.Socket {
		return fmt.Errorf("prepare migration of VM %q: socket %s is the VM's own", name, socket)
	}
	for n, o := range dp.vms {
		if o.vm.Socket == socket || (o.mig != nil && o.mig.socket == socket) {
			return fmt.Errorf("prepare migration of VM %q: socket %s is VM %q's", name, socket, n)
		}
	}
	h := &portHandler{dp: dp, slot: e.vm.Slot, name: name, standby: true}
	cfg := dp.portConfig(e.vm, h)
	var p *vhostuser.Port
	var err error
	if client {
		p, err = vhostuser.Dial(socket, cfg)
	} else {
		p, err = vhostuser.Listen(socket, cfg)
	}
	if err != nil {
		return fmt.Errorf("prepare migration of VM %q: %w", name, err)
	}
	e.mig = &migration{port: p, h: h, socket: socket, client: client}
	dp.log.Info("migration prepared: standby port open", "vm", name, "socket", socket, "client", client)
	return nil
}

// AbortMigration closes VM name's standby port (a migration that failed
// or was cancelled); its queues come back from the workers first.
func (dp *Dataplane) AbortMigration(ctx context.Context, name string) error {
	dp.mu.Lock()
	e, ok := dp.vms[name]
	var m *migration
	if ok {
		m, e.mig = e.mig, nil
	}
	dp.mu.Unlock()
	if !ok {
		return fmt.Errorf("abort migration of VM %q: not present", name)
	}
	if m == nil {
		return fmt.Errorf("abort migration of VM %q: %w", name, ErrNoMigration)
	}
	if err := m.port.Close(); err != nil {
		return fmt.Errorf("abort migration of VM %q: close standby port: %w", name, err)
	}
	dp.log.Info("migration aborted: standby port closed", "vm", name, "socket", m.socket)
	return nil
}

// Disconnected completes a migration: the source's front-end left after
// the destination started its rings, so the standby port becomes the
// VM's port and the source's is closed. It runs on the leaving port's
// goroutine, which Close waits for: the close happens on another one.
func (h *portHandler) Disconnected(p *vhostuser.Port) {
	dp := h.dp
	dp.mu.Lock()
	e, ok := dp.vms[h.name]
	if !ok || e.port != p || e.mig == nil || !e.mig.h.started.Load() {
		dp.mu.Unlock()
		return
	}
	old, m := e.port, e.mig
	e.port, e.mig = m.port, nil
	e.vm.Socket, e.vm.Client = m.socket, m.client
	done := make(chan struct{})
	e.retired = done
	dp.mu.Unlock()
	dp.log.Info("migration complete: the standby port is the VM's port", "vm", h.name, "socket", m.socket, "source", old.Path())
	go func() {
		defer close(done)
		if err := old.Close(); err != nil {
			dp.log.Warn("close the migration source's port", "vm", h.name, "err", err)
		}
	}()
	// Not on the retiring goroutine: the callee may wait for an operation
	// that waits for the old port to close.
	if f := dp.cfg.Migrated; f != nil {
		go f(h.name, m.socket, m.client)
	}
}

// Announce sends a RARP for the VM's MAC on its VLAN to the wire (and its
// VLAN's local VMs), as QEMU's announce does, so the network learns
// where the VM now is. The frame leaves through the VM's own socket on
// the first worker, which builds and sends it between batches.
func (h *portHandler) Announce(p *vhostuser.Port, mac net.HardwareAddr) error {
	h.dp.mu.RLock()
	e, ok := h.dp.vms[h.name]
	var own net.HardwareAddr
	var spoof bool
	if ok {
		own, spoof = e.vm.MAC, e.vm.AllowSpoofing
	}
	h.dp.mu.RUnlock()
	if !ok {
		return fmt.Errorf("VM %q: not present", h.name)
	}
	// Announcing another MAC would steer the network's traffic for it here.
	if !spoof && !bytes.Equal(mac, own) {
		return fmt.Errorf("VM %q: announce for MAC %v, the VM's is %v", h.name, mac, own)
	}
	if err := h.dp.workers[0].send(command{kind: cmdAnnounce, slot: h.slot}); err != nil {
		return fmt.Errorf("VM %q: %w", h.name, err)
	}
	return nil
}

// rarpLen is QEMU's announce frame: an Ethernet RARP, padded to 60 bytes.
const rarpLen = 60

// buildRARP writes a RARP "reverse request" for mac into f[:rarpLen]
// (QEMU's announce_self_create).
func buildRARP(f []byte, mac MAC) {
	f = f[:rarpLen]
	clear(f)
	copy(f[0:6], broadcastMAC[:])
	copy(f[6:12], mac[:])
	f[12], f[13] = 0x80, 0x35 // ETH_P_RARP
	f[15] = 1                 // hardware: Ethernet
	f[16] = 0x08              // protocol: IPv4
	f[18], f[19] = 6, 4       // address lengths
	f[21] = 3                 // reverse request
	copy(f[22:28], mac[:])    // sender hardware address; sender IP 0
	copy(f[32:38], mac[:])    // target hardware address; target IP 0
}

var broadcastMAC = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// announce builds the VM's RARP in a UMEM frame and sends it like a frame
// from the guest: to the VLAN's local VMs and, tagged, to the wire.
func (w *worker) announce(slot uint32) error {
	vm, ok := w.vms[slot]
	if !ok {
		return fmt.Errorf("queue %d: no VM in slot %d to announce", w.queueID, slot)
	}
	addr, ok := w.takeFrame()
	if !ok {
		return fmt.Errorf("announce VM %q: no free UMEM frame", vm.name)
	}
	buf := w.q.Buffer(addr)
	frame := buf[vlanTagLen : vlanTagLen+rarpLen]
	buildRARP(frame, vm.mac)
	if !w.forward(vm, frame) {
		w.returnFrame(addr)
		return nil
	}
	d := xsk.Desc{Addr: addr + vlanTagLen, Len: rarpLen}
	if vm.vlan != 0 {
		insertTag(buf, vlanTagLen, rarpLen, vm.vlan)
		d = xsk.Desc{Addr: addr, Len: rarpLen + vlanTagLen}
	}
	w.txDescs[0] = d
	if sent, err := vm.tx.Transmit(w.txDescs[:1]); sent == 0 {
		w.returnFrame(addr)
		if err == nil {
			err = errors.New("tx ring full")
		}
		return fmt.Errorf("announce VM %q: transmit: %w", vm.name, err)
	}
	w.kickLater(vm) // the round kicks it again
	w.flushAll()    // local copies: publish their used rings now
	return nil
}
