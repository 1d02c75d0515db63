package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"

	"github.com/vmq/vmq/dataplane"
)

// fakeDP is a Dataplane that records calls and checks the ordering rules
// against the fake filter table: a filter may only point at a slot whose
// VM is in the dataplane, and a VM may only leave after its filter did.
type fakeDP struct {
	mu         sync.Mutex
	vms        map[string]VMSpec
	calls      []string
	failAdd    map[string]error
	failRemove map[string]error
	ft         *fakeFT
	violations []string
}

func newFakeDP() *fakeDP {
	return &fakeDP{vms: map[string]VMSpec{}, failAdd: map[string]error{}, failRemove: map[string]error{}}
}

func (d *fakeDP) AddVM(ctx context.Context, vm VMSpec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, fmt.Sprintf("add %s slot %d", vm.Name, vm.Slot))
	if err := d.failAdd[vm.Name]; err != nil {
		return err
	}
	for _, o := range d.vms {
		if o.Slot == vm.Slot {
			d.violations = append(d.violations, fmt.Sprintf("slot %d given to %s while %s holds it", vm.Slot, vm.Name, o.Name))
		}
	}
	if _, dup := d.vms[vm.Name]; dup {
		d.violations = append(d.violations, "AddVM twice for "+vm.Name)
	}
	d.vms[vm.Name] = vm
	return nil
}

func (d *fakeDP) RemoveVM(ctx context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, "remove "+name)
	if err := d.failRemove[name]; err != nil {
		return err
	}
	vm, ok := d.vms[name]
	if !ok {
		return fmt.Errorf("fake: no VM %q", name)
	}
	if d.ft != nil {
		for k, s := range d.ft.snapshot() {
			if s == vm.Slot {
				d.violations = append(d.violations, fmt.Sprintf("RemoveVM %s while filter %s still points at slot %d", name, k, s))
			}
		}
	}
	delete(d.vms, name)
	return nil
}

func (d *fakeDP) SetLimits(name string, l dataplane.Limits) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, fmt.Sprintf("limits %s %d/%d/%d/%d", name, l.RxPPS, l.RxBPS, l.TxPPS, l.TxBPS))
	vm, ok := d.vms[name]
	if !ok {
		return fmt.Errorf("fake: no VM %q", name)
	}
	vm.Limits = Limits{RxPPS: l.RxPPS, RxBPS: l.RxBPS, TxPPS: l.TxPPS, TxBPS: l.TxBPS}
	d.vms[name] = vm
	return nil
}

func (d *fakeDP) hasSlot(slot uint32) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, vm := range d.vms {
		if vm.Slot == slot {
			return true
		}
	}
	return false
}

func (d *fakeDP) Snapshot() dataplane.Snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := dataplane.Snapshot{
		NIC:     dataplane.NICStatus{Name: "veth0", Index: 7, Driver: "veth", MTU: 1500, Queues: []int{0, 1}, Channels: 2, AttachMode: "native", Attached: true, FrameSize: 4096},
		Filter:  dataplane.FilterStats{Redirected: 100, Passed: 5, Flooded: 2},
		Workers: []dataplane.WorkerStats{{Queue: 0, Batches: 10, VirtQueues: 2, XDPSockets: 2, FreeFrames: 1000, TotalFrames: 2048}, {Queue: 1, Batches: 3, XDPSockets: 1, FreeFrames: 2048, TotalFrames: 2048}},
	}
	for _, name := range sortedNames(d.vms) {
		vm := d.vms[name]
		s.VMs = append(s.VMs, dataplane.VMStats{Name: vm.Name, Slot: vm.Slot, MAC: vm.MAC, VLAN: uint16(vm.VLAN),
			RxPackets: uint64(vm.Slot) * 10, RxBytes: uint64(vm.Slot) * 1000, TxPackets: uint64(vm.Slot), TxBytes: uint64(vm.Slot) * 100,
			DropsByReason: map[string]uint64{"virtqueue_full": 1}, Limits: vm.Limits.Dataplane()})
		s.Ports = append(s.Ports, dataplane.PortStats{VM: vm.Name, Path: vm.Socket, Mode: vm.Mode, Connected: true, QueuePairs: vm.QueuePairs})
		s.Sockets = append(s.Sockets, dataplane.SocketStats{VM: vm.Name, Queue: 0})
	}
	return s
}

func sortedNames(m map[string]VMSpec) []string {
	var out []string
	for n := range m {
		out = append(out, n)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// fakeFT is an in-memory filter table with failure injection.
type fakeFT struct {
	mu         sync.Mutex
	m          map[FilterKey]uint32
	ops        []string
	failSet    error
	failDel    error
	failRead   error
	dp         *fakeDP // when set, SetFilter checks the slot is live
	violations []string
}

func newFakeFT(entries map[FilterKey]uint32) *fakeFT {
	ft := &fakeFT{m: map[FilterKey]uint32{}}
	for k, v := range entries {
		ft.m[k] = v
	}
	return ft
}

func (f *fakeFT) Filters() (map[FilterKey]uint32, error) {
	if f.failRead != nil {
		return nil, f.failRead
	}
	return f.snapshot(), nil
}

func (f *fakeFT) snapshot() map[FilterKey]uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[FilterKey]uint32{}
	for k, v := range f.m {
		out[k] = v
	}
	return out
}

func (f *fakeFT) SetFilter(mac net.HardwareAddr, vlan uint16, slot uint32) error {
	k, err := NewFilterKey(mac, vlan)
	if err != nil {
		return err
	}
	if f.dp != nil && !f.dp.hasSlot(slot) {
		f.mu.Lock()
		f.violations = append(f.violations, fmt.Sprintf("SetFilter %s → slot %d with no VM in the dataplane there", k, slot))
		f.mu.Unlock()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("set %s %d", k, slot))
	if f.failSet != nil {
		return f.failSet
	}
	f.m[k] = slot
	return nil
}

func (f *fakeFT) DeleteFilter(mac net.HardwareAddr, vlan uint16) error {
	k, err := NewFilterKey(mac, vlan)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("del %s", k))
	if f.failDel != nil {
		return f.failDel
	}
	delete(f.m, k)
	return nil
}

func key(t testing.TB, mac string, vlan uint16) FilterKey {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	k, err := NewFilterKey(hw, vlan)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testConfig is a valid config with VMs a, b, c in dir.
func testConfig(t testing.TB, dir string) *Config {
	t.Helper()
	cfg := Default("veth0")
	cfg.Queues = []int{0, 1}
	cfg.API.Socket = dir + "/api.sock"
	for i, n := range []string{"a", "b", "c"} {
		cfg.VMs = append(cfg.VMs, testVM(dir, n, i+1))
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func testVM(dir, name string, n int) VMConfig {
	return VMConfig{Name: name, MAC: fmt.Sprintf("02:00:00:00:00:%02x", n), Socket: dir + "/" + name + ".sock", Mode: ModeServer, QueuePairs: 1}
}

type env struct {
	ctl *Controller
	dp  *fakeDP
	ft  *fakeFT
}

func newEnv(t testing.TB, cfg *Config, pinned map[FilterKey]uint32) *env {
	t.Helper()
	dp := newFakeDP()
	ft := newFakeFT(pinned)
	ft.dp, dp.ft = dp, ft
	ctl, err := NewController(cfg, dp, ft, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dp.mu.Lock()
		defer dp.mu.Unlock()
		for _, v := range append(dp.violations, ft.violations...) {
			t.Errorf("ordering violation: %s", v)
		}
	})
	return &env{ctl: ctl, dp: dp, ft: ft}
}

var errBoom = errors.New("boom")
