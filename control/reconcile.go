package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
)

// FilterKey is one entry's key in the XDP filter table: destination MAC
// and VLAN id (0 = untagged).
type FilterKey struct {
	MAC  [6]byte
	VLAN uint16
}

// NewFilterKey builds a key; mac must be 6 bytes.
func NewFilterKey(mac net.HardwareAddr, vlan uint16) (FilterKey, error) {
	if len(mac) != 6 {
		return FilterKey{}, fmt.Errorf("filter key: MAC %v is not 6 bytes", mac)
	}
	var k FilterKey
	copy(k.MAC[:], mac)
	k.VLAN = vlan
	return k, nil
}

// HardwareAddr returns the key's MAC.
func (k FilterKey) HardwareAddr() net.HardwareAddr { return net.HardwareAddr(k.MAC[:]) }

func (k FilterKey) String() string {
	return fmt.Sprintf("%s/vlan%d", k.HardwareAddr(), k.VLAN)
}

// FilterTable is the XDP program's (MAC, VLAN) → slot map, usually pinned
// in bpffs so it outlives vmqd. Package bpf implements it.
type FilterTable interface {
	// Filters returns every entry.
	Filters() (map[FilterKey]uint32, error)
	// SetFilter creates or atomically replaces an entry.
	SetFilter(mac net.HardwareAddr, vlan uint16, slot uint32) error
	// DeleteFilter removes an entry. Control only deletes entries it saw
	// or set; an adapter should still map "not found" to nil.
	DeleteFilter(mac net.HardwareAddr, vlan uint16) error
}

// ReconcilePlan is what to do with the pinned filter table on start.
type ReconcilePlan struct {
	// Slots is every configured VM's slot, by name.
	Slots map[string]uint32
	// Keep are entries already right: steering for them never stops.
	Keep map[FilterKey]uint32
	// Stale are entries of no configured VM: delete before any VM is
	// added, so a reused slot never receives another VM's frames.
	Stale []FilterKey
	// Moved are configured VMs whose entry points at a slot they cannot
	// keep (out of range, or another VM's): deleted first, set after the
	// VM is added.
	Moved []FilterKey
	// Add are entries to set once the VMs are in the dataplane: Moved
	// ones and missing ones.
	Add map[FilterKey]uint32
}

// PlanReconcile computes how to bring the pinned filter table in line with
// the configured VMs (validated). Slots of pinned entries are kept when
// valid and unique; other VMs get the lowest free slots in 1..maxVMs.
func PlanReconcile(vms []VMConfig, pinned map[FilterKey]uint32, maxVMs int) (*ReconcilePlan, error) {
	if len(vms) > maxVMs {
		return nil, fmt.Errorf("reconcile: %d VMs configured, only %d slots", len(vms), maxVMs)
	}
	p := &ReconcilePlan{
		Slots: map[string]uint32{},
		Keep:  map[FilterKey]uint32{},
		Add:   map[FilterKey]uint32{},
	}
	configured := map[FilterKey]bool{}
	used := map[uint32]bool{}
	// Pass 1: keep valid pinned slots, first VM in config order wins a
	// slot that two pinned entries share.
	for _, vm := range vms {
		k := vm.Key()
		configured[k] = true
		s, ok := pinned[k]
		if !ok {
			continue
		}
		if s >= 1 && s <= uint32(maxVMs) && !used[s] {
			used[s] = true
			p.Slots[vm.Name] = s
			p.Keep[k] = s
		} else {
			p.Moved = append(p.Moved, k)
		}
	}
	// Pass 2: the rest get the lowest free slots.
	next := uint32(1)
	for _, vm := range vms {
		if _, ok := p.Slots[vm.Name]; ok {
			continue
		}
		for used[next] {
			next++
		}
		used[next] = true
		p.Slots[vm.Name] = next
		p.Add[vm.Key()] = next
	}
	for k := range pinned {
		if !configured[k] {
			p.Stale = append(p.Stale, k)
		}
	}
	sortKeys(p.Stale)
	sortKeys(p.Moved)
	return p, nil
}

func sortKeys(ks []FilterKey) {
	sort.Slice(ks, func(i, j int) bool {
		a, b := ks[i], ks[j]
		if a.MAC != b.MAC {
			return string(a.MAC[:]) < string(b.MAC[:])
		}
		return a.VLAN < b.VLAN
	})
}

// deleteStale is phase 1 of applying a plan: before the dataplane gets
// any VM, drop entries that would steer into a slot about to be reused.
func (p *ReconcilePlan) deleteStale(ft FilterTable) error {
	var errs []error
	for _, k := range append(append([]FilterKey(nil), p.Stale...), p.Moved...) {
		if err := ft.DeleteFilter(k.HardwareAddr(), k.VLAN); err != nil {
			errs = append(errs, fmt.Errorf("delete filter %s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

// Reconcile is the standalone form of the start-up reconciliation for a
// table whose VMs are already in the dataplane (or need none, e.g. a
// tool): it deletes stale and moved entries and sets missing ones.
func Reconcile(ctx context.Context, ft FilterTable, vms []VMConfig, maxVMs int) (*ReconcilePlan, error) {
	pinned, err := ft.Filters()
	if err != nil {
		return nil, fmt.Errorf("reconcile: read filter table: %w", err)
	}
	p, err := PlanReconcile(vms, pinned, maxVMs)
	if err != nil {
		return nil, err
	}
	if err := p.deleteStale(ft); err != nil {
		return p, fmt.Errorf("reconcile: %w", err)
	}
	var errs []error
	for k, s := range p.Add {
		if err := ctx.Err(); err != nil {
			return p, err
		}
		if err := ft.SetFilter(k.HardwareAddr(), k.VLAN, s); err != nil {
			errs = append(errs, fmt.Errorf("set filter %s → slot %d: %w", k, s, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return p, fmt.Errorf("reconcile: %w", err)
	}
	return p, nil
}
