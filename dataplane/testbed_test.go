package dataplane

import (
	"context"
	"testing"
	"time"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/guest/frontend"
	tbed "github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/pktgen"
)

// testbed is the shared test bed (internal/testbed: a NIC veth in a
// "host" namespace with the filter on it, its peer in a "wire"
// namespace, Go and Linux guests) with the dataplane on the NIC. This is
// the dataplane layer only: internal/testbed cannot import package
// dataplane (these tests are inside it), and these tests need its
// unexported state (ports, locks).
type testbed struct {
	*tbed.Bed
	t      testing.TB
	filter *bpf.Filter
	dp     *Dataplane
	guests map[string]*frontend.Guest
}

var (
	mustMAC        = tbed.MustMAC
	waitRx         = tbed.WaitRx
	streamReceived = tbed.StreamReceived
)

func newTestbed(t *testing.T, queues int) *testbed {
	t.Helper()
	return newTestbedOpts(t, tbed.Options{Queues: queues}, nil)
}

// newTestbedCfg is newTestbed with a hook to change the dataplane's
// config before it starts.
func newTestbedCfg(t *testing.T, queues int, change func(*Config)) *testbed {
	t.Helper()
	return newTestbedOpts(t, tbed.Options{Queues: queues}, change)
}

func newTestbedOpts(t testing.TB, opts tbed.Options, change func(*Config)) *testbed {
	t.Helper()
	tb := &testbed{Bed: tbed.New(t, opts), t: t, guests: make(map[string]*frontend.Guest)}
	tb.filter = tb.AttachFilter()
	h := tb.Host.Handle()
	cfg := Config{Ifindex: tb.NIC.Index, Queues: tb.QueueIDs(), Filter: tb.filter,
		BusyPoll: 20 * time.Microsecond, Netns: &h, MTU: tb.MTU}
	if change != nil {
		change(&cfg)
	}
	var err error
	tb.dp, err = New(cfg)
	if err != nil {
		t.Fatalf("dataplane: %v", err)
	}
	t.Cleanup(func() {
		if err := tb.dp.Close(); err != nil {
			t.Errorf("close dataplane: %v", err)
		}
	})
	return tb
}

// addPort adds a VM to the dataplane and steers its MAC and VLAN to its
// slot.
func (tb *testbed) addPort(vm VM) {
	t := tb.t
	t.Helper()
	if err := tb.dp.AddVM(context.Background(), vm); err != nil {
		t.Fatalf("add VM %s: %v", vm.Name, err)
	}
	if err := tb.filter.SetFilter(vm.MAC, vm.VLAN, vm.Slot); err != nil {
		t.Fatalf("set filter of %s: %v", vm.Name, err)
	}
}

// addVM adds a VM to the dataplane, steers its MAC to it and connects a
// Go guest, returning once the guest's queues run on the workers.
func (tb *testbed) addVM(name string, slot uint32, mac string, vlan uint16, pairs int, ip string) *frontend.Guest {
	tb.t.Helper()
	return tb.addVMConfig(name, slot, vlan, tbed.GuestConfig(mac, pairs, ip))
}

// addVMConfig is addVM with the guest's own config.
func (tb *testbed) addVMConfig(name string, slot uint32, vlan uint16, cfg frontend.Config) *frontend.Guest {
	t := tb.t
	t.Helper()
	sock := tb.Socket(name)
	pairs := max(cfg.QueuePairs, 1)
	tb.addPort(VM{Name: name, Slot: slot, MAC: cfg.MAC, VLAN: vlan, Socket: sock, QueuePairs: pairs})
	g := tbed.DialGuest(t, name, sock, cfg)
	tb.guests[name] = g
	tb.waitRunning(name, 2*pairs)
	return g
}

// waitRunning waits until the VM's port has n running virtqueues.
func (tb *testbed) waitRunning(name string, n int) {
	tb.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		tb.dp.mu.RLock()
		e := tb.dp.vms[name]
		tb.dp.mu.RUnlock()
		running := 0
		for _, r := range e.port.State().Running {
			if r {
				running++
			}
		}
		if running == n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	tb.t.Fatalf("VM %s: virtqueues not running after 10s: %+v", name, tb.vmPort(name))
}

func (tb *testbed) vmPort(name string) any {
	tb.dp.mu.RLock()
	defer tb.dp.mu.RUnlock()
	return tb.dp.vms[name].port.State()
}

// send sends count frames to each destination from the wire, paced so
// that the test can count exactly.
func (tb *testbed) send(spec pktgen.FlowSpec, count int) { tb.t.Helper(); tb.Send(spec, count) }

// vmStats returns the dataplane's counters of one VM.
func (tb *testbed) vmStats(name string) VMStats {
	for _, v := range tb.dp.Snapshot().VMs {
		if v.Name == name {
			return v
		}
	}
	tb.t.Fatalf("no VM %s in snapshot", name)
	return VMStats{}
}

// portStats returns the dataplane's counters of one VM's port.
func (tb *testbed) portStats(name string) PortStats {
	for _, p := range tb.dp.Snapshot().Ports {
		if p.VM == name {
			return p
		}
	}
	tb.t.Fatalf("no port of VM %s in snapshot", name)
	return PortStats{}
}
