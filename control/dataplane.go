package control

import (
	"context"

	"github.com/vmq/vmq/dataplane"
)

// Dataplane is what the control plane needs from the forwarding engine.
//
// Contract (control owns slots and the filter table, the dataplane owns
// everything under a slot):
//   - AddVM: when it returns nil the VM's AF_XDP sockets are in the XSKMAP
//     at vm.Slot*MaxQueues+queue for every served queue and its vhost-user
//     port is listening (server) or connecting (client). Only then does
//     control point the VM's (MAC, VLAN) filter at the slot. On error the
//     dataplane must have undone its part.
//   - RemoveVM: called after control deleted the VM's filter entry, so no
//     new frame is steered to the slot; the dataplane clears the slot's
//     XSKMAP entries and closes the sockets and port. The slot may be
//     given to another VM as soon as RemoveVM returns nil.
//   - SetLimits changes a running VM's QoS limits live (no reconnect).
//   - Snapshot may be called at any time, concurrently with the others.
//
// Control serializes AddVM/RemoveVM calls (never two at once) and never
// calls them for a VM other than the one changing.
type Dataplane interface {
	AddVM(ctx context.Context, vm VMSpec) error
	RemoveVM(ctx context.Context, name string) error
	SetLimits(name string, l dataplane.Limits) error
	Snapshot() dataplane.Snapshot
}

// VMSpec is a validated VM with its slot (1..MaxVMs; 0 is the flood slot).
type VMSpec struct {
	VMConfig
	Slot uint32 `json:"slot"`
}
