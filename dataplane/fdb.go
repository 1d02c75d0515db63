package dataplane

// fdbKey is what the XDP filter and the switch match on: a destination MAC
// in a VLAN (0 = untagged).
type fdbKey struct {
	mac  MAC
	vlan uint16
}

// fdb is one worker's forwarding table: which local VM owns a (MAC, VLAN),
// and which VMs belong to each VLAN for flooding. Every worker has its own
// copy, changed only by that worker between batches (no locks).
type fdb struct {
	byKey  map[fdbKey]*vmState
	byVLAN map[uint16][]*vmState
}

func newFDB() *fdb {
	return &fdb{byKey: make(map[fdbKey]*vmState), byVLAN: make(map[uint16][]*vmState)}
}

func (f *fdb) add(vm *vmState) {
	f.byKey[fdbKey{vm.mac, vm.vlan}] = vm
	f.byVLAN[vm.vlan] = append(f.byVLAN[vm.vlan], vm)
}

func (f *fdb) remove(vm *vmState) {
	delete(f.byKey, fdbKey{vm.mac, vm.vlan})
	members := f.byVLAN[vm.vlan]
	for i, m := range members {
		if m == vm {
			// Copy so a slice being iterated elsewhere in this batch is untouched.
			next := make([]*vmState, 0, len(members)-1)
			next = append(next, members[:i]...)
			f.byVLAN[vm.vlan] = append(next, members[i+1:]...)
			break
		}
	}
	if len(f.byVLAN[vm.vlan]) == 0 {
		delete(f.byVLAN, vm.vlan)
	}
}

func (f *fdb) lookup(mac MAC, vlan uint16) *vmState { return f.byKey[fdbKey{mac, vlan}] }

func (f *fdb) vlanMembers(vlan uint16) []*vmState { return f.byVLAN[vlan] }
