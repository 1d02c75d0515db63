package dataplane

import (
	"testing"

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

	b.checkPings(t, g, spec)

	b.reloadDriver(t, g, spec)
	p = b.portStats(spec.Name)
	checkFeatures(t, p, 1)
	if p.Features&virtio.FRingPacked == 0 {
		t.Fatalf("features %#x after reload: RING_PACKED gone", p.Features)
	}
}
