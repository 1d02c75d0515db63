package dataplane

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmq/vmq/guest/qemu"
	tbed "github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
)

// The life of a guest on a vmq port: each test boots a Linux guest, does
// one thing to it, its QEMU or vmq, and then requires the wire to reach
// the guest again within reachBound, every UMEM frame accounted for and
// nothing left behind (fds, goroutines, guest memory mappings).

// reachBound is how soon after the event the wire must reach the guest
// again (testenv.Poll's bound): a guest reboot under TCG included.
const reachBound = "10s"

// life is one guest on the bed: vmq serves the VM's socket (client:
// vmq connects to QEMU's), QEMU has a monitor and, when it connects to
// vmq, reconnect=1.
type life struct {
	t      *testing.T
	tb     *testbed
	spec   guestSpec
	hw     net.HardwareAddr
	client bool
	initrd string
	sock   string
	mon    string
	g      *qemu.Guest
	m      *monitor
}

func newLife(t *testing.T, client bool) *life {
	tb := newLinuxBed(t, 1)
	l := &life{t: t, tb: tb, client: client,
		spec: guestSpec{name: "life", slot: 1, mac: "52:54:00:00:99:22", ip: "10.99.0.22", pairs: 1, cpus: 1}}
	l.hw, _ = net.ParseMAC(l.spec.mac)
	l.initrd = tb.initrdWith(l.spec)
	l.sock = filepath.Join(tb.Dir, "life.sock")
	base := leakBaseline(t)
	t.Cleanup(func() { checkLeaks(t, base) })
	l.addVM()
	t.Cleanup(func() { tb.dp.RemoveVM(context.Background(), l.spec.name) })
	l.boot()
	l.reach("first boot")
	return l
}

func (l *life) addVM() {
	vm := VM{Name: l.spec.name, Slot: l.spec.slot, MAC: l.hw, Socket: l.sock, Client: l.client, QueuePairs: 1}
	if err := l.tb.dp.AddVM(context.Background(), vm); err != nil {
		l.t.Fatal(err)
	}
	if err := l.tb.filter.SetFilter(l.hw, 0, l.spec.slot); err != nil {
		l.t.Fatal(err)
	}
}

// boot starts QEMU and waits for the guest's eth0.
func (l *life) boot() {
	l.mon = filepath.Join(l.tb.Dir, fmt.Sprintf("life-%d.mon", time.Now().UnixNano()))
	l.g = l.tb.startQEMUConfig(l.spec, l.initrd, qemu.Config{Socket: l.sock, Server: l.client, Reconnect: 1, Reboot: true}, l.mon, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := l.g.WaitBoot(ctx); err != nil {
		l.t.Fatal(err)
	}
	l.m = dialMonitor(l.t, l.mon)
}

// reach requires the wire to ping the guest within reachBound and
// reports how long it took; then the UMEM is checked.
func (l *life) reach(after string) {
	l.t.Helper()
	start := time.Now()
	if ok, why := testenv.Poll(func() (bool, string) {
		out, err := l.tb.Wire.Command("ping", "-c", "1", "-W", "1", l.spec.ip).CombinedOutput()
		return err == nil, string(out)
	}); !ok {
		l.t.Fatalf("after %s: the wire does not reach the guest within %s: %s\nport %+v", after, reachBound, why, l.tb.portStats(l.spec.name))
	}
	l.t.Logf("after %s: the wire reaches the guest in %v", after, time.Since(start).Round(time.Millisecond))
	// -w, not -W: once replies come, ping waits only two round trips for
	// the last one, and a TCG guest on a loaded host answers later than
	// that now and then (4 of 5 "received", the fifth on its way).
	tbed.CheckPingSeqs(l.t, "wire -> guest after "+after, l.tb.PingFromWire(l.spec.ip, "-c", "5", "-i", "0.05", "-w", "5"), 5)
	checkUMEM(l.t, l.tb)
}

func (l *life) waitPort(connected bool) {
	l.t.Helper()
	testenv.Eventually(l.t, fmt.Sprintf("port connected=%v", connected), func() (bool, string) {
		p, ok := portOf(l.tb.dp.Snapshot(), l.spec.name, false)
		return ok && p.Connected == connected, fmt.Sprintf("%+v", p)
	})
}

func modes(t *testing.T, f func(t *testing.T, client bool)) {
	for _, mode := range []string{"server", "client"} {
		t.Run(mode, func(t *testing.T) { f(t, mode == "client") })
	}
}

// TestLinuxGuestReboot resets the guest (system_reset: the driver goes,
// the device is reset to status 0, the new kernel's driver sets it up
// again on the same connection).
func TestLinuxGuestReboot(t *testing.T) {
	l := newLife(t, false)
	off := len(l.g.Console())
	l.m.do(t, "system_reset")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := l.g.WaitFor(ctx, off, qemu.Marker); err != nil {
		t.Fatalf("reboot: %v", err)
	}
	l.waitPort(true)
	l.reach("a guest reboot")
}

// TestLinuxGuestQEMUKilled kills QEMU with SIGKILL and starts it again on
// the same socket.
func TestLinuxGuestQEMUKilled(t *testing.T) {
	modes(t, func(t *testing.T, client bool) {
		l := newLife(t, client)
		l.g.Close() // SIGKILL
		l.waitPort(false)
		os.Remove(l.mon)
		l.boot()
		l.waitPort(true)
		l.reach("QEMU killed and restarted")
	})
}

// TestLinuxGuestVmqdRestart closes the whole dataplane under a running
// guest and starts a new one (vmqd's restart; the filter's map entries
// stay, as pinned maps do): vmq as client reconnects, QEMU as client
// reconnects with reconnect=1.
func TestLinuxGuestVmqdRestart(t *testing.T) {
	modes(t, func(t *testing.T, client bool) {
		l := newLife(t, client)
		if err := l.tb.dp.Close(); err != nil {
			t.Fatal(err)
		}
		h := l.tb.Host.Handle()
		dp, err := New(Config{Ifindex: l.tb.NIC.Index, Queues: []int{0}, Filter: l.tb.filter,
			BusyPoll: 20 * time.Microsecond, Netns: &h})
		if err != nil {
			t.Fatal(err)
		}
		l.tb.dp = dp
		l.addVM()
		l.waitPort(true)
		l.reach("vmqd restarted")
	})
}

// TestLinuxGuestReAdd removes the VM from vmq and adds it again while its
// guest runs.
func TestLinuxGuestReAdd(t *testing.T) {
	modes(t, func(t *testing.T, client bool) {
		l := newLife(t, client)
		if err := l.tb.filter.DeleteFilter(l.hw, 0); err != nil {
			t.Fatal(err)
		}
		if err := l.tb.dp.RemoveVM(context.Background(), l.spec.name); err != nil {
			t.Fatal(err)
		}
		l.addVM()
		l.waitPort(true)
		l.reach("the VM removed and added again")
	})
}
