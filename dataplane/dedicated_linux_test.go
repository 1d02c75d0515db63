package dataplane

import (
	"fmt"
	"runtime"
	"strconv"
	"testing"

	tbed "github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
)

// TestDedicatedLinuxGuest: a Linux guest (virtio-net under QEMU,
// mergeable buffers, EVENT_IDX) on a dedicated queue. The wire sends on
// its tx queue 1 (XPS: CPU 1 -> queue 1, and ping runs on CPU 1), with a
// static neighbour entry: on a real NIC the flow rule matches only the
// VM's MAC and broadcasts spread over the shared queues, but on veth
// every frame from CPU 1 lands on queue 1, where no flood socket is.
func TestDedicatedLinuxGuest(t *testing.T) {
	if runtime.NumCPU() < 2 {
		testenv.Skip(t, "needs 2 CPUs to place frames on 2 veth queues")
	}
	tb := newTestbedOpts(t, tbed.Options{Queues: 2, WireAddr: wireIP + "/24"}, func(c *Config) {
		c.Queues = []int{0}
		c.Steer = newWireSteer()
	})
	spec := tbed.LinuxGuest{Name: "lg", MAC: "52:54:00:00:99:05", IP: "10.99.0.5", Pairs: 1, CPUs: 1}
	initrd := tb.LinuxInitrd(spec)
	tb.addPort(VM{Name: spec.Name, Slot: 1, MAC: mustMAC(spec.MAC), Socket: tb.Socket(spec.Name), QueuePairs: 1,
		Dedicated: DedicatedRequired, DedicatedQueue: 1})
	g := tb.bootLinux(spec, initrd, false)
	_ = g
	peer := tb.Peer.Name
	tb.Wire.Run(t, "sh", "-c", fmt.Sprintf("echo 1 > /sys/class/net/%[1]s/queues/tx-0/xps_cpus && echo 2 > /sys/class/net/%[1]s/queues/tx-1/xps_cpus", peer))
	tb.Wire.Run(t, "ip", "neigh", "replace", spec.IP, "lladdr", spec.MAC, "dev", peer)

	testenv.Eventually(t, "dedicated queue direct", func() (bool, string) {
		d := tb.vmStats(spec.Name).Dedicated
		return d.State == "direct" && d.Posted > 0, fmt.Sprintf("%+v", *d)
	})
	const n = 50
	out := tb.PingFromWire(spec.IP, "-cpu", "1", "-c", strconv.Itoa(n), "-i", "0.05", "-w", "10")
	vs0 := tb.vmStats(spec.Name)
	t.Logf("after ping: copied %d, drops %v, %+v", vs0.RxCopiedBytes, vs0.DropsByReason, *vs0.Dedicated)
	tbed.CheckPingSeqs(t, "wire -> guest on the dedicated queue", out, n)
	out = tb.PingFromWire(spec.IP, "-cpu", "1", "-c", "20", "-i", "0.05", "-w", "10", "-s", "1472", "-M", "do")
	tbed.CheckPingSeqs(t, "wire -> guest, 1514-byte frames", out, 20)
	vs := tb.vmStats(spec.Name)
	d := vs.Dedicated
	t.Logf("Linux guest: copied %d bytes, %+v", vs.RxCopiedBytes, *d)
	if d.State != "direct" || d.Frames < n+20 {
		t.Fatalf("dedicated queue: %+v, want direct with at least %d frames in place", *d, n+20)
	}
}
