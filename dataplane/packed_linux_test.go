package dataplane

import (
	"strconv"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane/virtio"
	tbed "github.com/vmq/vmq/internal/testbed"
)

// TestLinuxGuestPacked: a Linux guest whose virtio-net device has packed
// virtqueues (QEMU packed=on) negotiates RING_PACKED with vmq and moves
// exact ping counts both ways, a flood ping (the guest's packed event
// suppression and ours on every frame), and again after its driver is
// reloaded (GET_VRING_BASE / SET_VRING_BASE with the packed wrap counters).
func TestLinuxGuestPacked(t *testing.T) {
	b := newLinuxBed(t, 1)
	const slot = 1
	spec := tbed.LinuxGuest{Name: "lgp", MAC: "52:54:00:00:99:12", IP: "10.99.0.12", Pairs: 1, CPUs: 1, Packed: true}
	g := b.addLinuxGuest(spec, slot)

	p := b.portStats(spec.Name)
	if p.Features&virtio.FRingPacked == 0 {
		t.Fatalf("features %#x: the guest did not negotiate RING_PACKED", p.Features)
	}
	checkFeatures(t, p, 1)
	t.Logf("features %#x (IN_ORDER %v)", p.Features, p.Features&virtio.FInOrder != 0)

	const n = 20
	out := b.PingFromWire(spec.IP, "-c", strconv.Itoa(n), "-i", "0.05", "-W", "5")
	tbed.CheckPing(t, "wire -> guest", out, n)
	out = b.PingFromWire(spec.IP, "-c", "10", "-i", "0.05", "-W", "5", "-s", "1472", "-M", "do")
	tbed.CheckPing(t, "wire -> guest, 1514-byte frames", out, 10)
	out = tbed.GuestExec(t, g, "ping -c 10 -A -W 5 "+wireIP)
	tbed.CheckPing(t, "guest -> wire", out, 10)
	const flood = 500
	start := time.Now()
	out = b.PingFromWire(spec.IP, "-f", "-c", strconv.Itoa(flood), "-W", "5")
	tbed.CheckPing(t, "wire -> guest, flood", out, flood)
	t.Logf("flood ping: %d echoes in %v: %s", flood, time.Since(start).Round(time.Millisecond), tbed.LastLines(out, 1))

	v := b.vmStats(spec.Name)
	if min := uint64(n + 10 + 10 + flood); v.RxPackets < min || v.TxPackets < min {
		t.Errorf("VM counters: rx %d tx %d, want at least %d each", v.RxPackets, v.TxPackets, min)
	}
	checkNoDrops(t, v)

	tbed.GuestExec(t, g, "rmmod virtio_net && insmod /lib/modules/virtio_net.ko && "+
		"i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; "+
		"ip addr add "+spec.IP+"/24 dev eth0 && ip link set eth0 up")
	out = b.PingFromWire(spec.IP, "-c", strconv.Itoa(n), "-i", "0.05", "-W", "5")
	tbed.CheckPing(t, "wire -> guest after driver reload", out, n)
	out = tbed.GuestExec(t, g, "ping -c 5 -A -W 5 "+wireIP)
	tbed.CheckPing(t, "guest -> wire after driver reload", out, 5)
	checkNoDrops(t, b.vmStats(spec.Name))
	p = b.portStats(spec.Name)
	checkFeatures(t, p, 1)
	if p.Features&virtio.FRingPacked == 0 {
		t.Fatalf("features %#x after reload: RING_PACKED gone", p.Features)
	}
}
