package bpf

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"
)

// FuzzFilter runs random frames through the kernel program, with a random
// filter on the frame's own destination (random VLAN and raw slot, so bad
// slots too), random sockets and a random rx queue, and holds the verdict
// and every counter to the Go model.
func FuzzFilter(f *testing.F) {
	f.Add(frame(macA, nil, 64), uint8(0), uint16(0), uint8(1), uint16(1<<idx(1, 0)), uint8(0))
	f.Add(frame(macA, [][2]uint16{q(100)}, 64), uint8(2), uint16(100), uint8(2), uint16(1<<idx(2, 2)), uint8(0))
	f.Add(frame(macB, [][2]uint16{ad(7), q(8)}, 80), uint8(1), uint16(7), uint8(3), uint16(0xffff), uint8(1))
	f.Add(frame(bcast, nil, 60), uint8(3), uint16(0), uint8(0), uint16(1<<3), uint8(0))
	f.Add(frame(macC, [][2]uint16{q(5)}, 17), uint8(0), uint16(5), uint8(1), uint16(0xffff), uint8(3))
	f.Add(frame(macA, nil, 64), uint8(4), uint16(0), uint8(1), uint16(0xffff), uint8(2))
	f.Add(frame(macA, nil, 64), uint8(0), uint16(0), uint8(9), uint16(0xffff), uint8(2))

	r := newRig(f, Config{MaxVMs: testMaxVMs, MaxQueues: testMaxQueues}, testMaxQueues+1)
	f.Fuzz(func(t *testing.T, fr []byte, queue uint8, vlan uint16, slot uint8, sockets uint16, actions uint8) {
		if len(fr) > 3000 { // test-run input is one page
			fr = fr[:3000]
		}
		m := &Model{
			MaxVMs: testMaxVMs, MaxQueues: testMaxQueues,
			Malformed: Action(actions & 1), NoSocket: Action(actions >> 1 & 1),
			Filters: map[Key]uint32{{MAC: [6]byte(macA)}: 1},
			Sockets: map[uint32]bool{},
		}
		if len(fr) >= 6 {
			m.Filters[Key{MAC: [6]byte(fr[:6]), VLAN: vlan}] = uint32(slot)
		}
		for i := range uint32(16) {
			if sockets&(1<<i) != 0 {
				m.Sockets[i] = true
			}
		}
		if err := r.f.SetActions(m.Malformed, m.NoSocket); err != nil {
			t.Fatal(err)
		}
		// Replace the filter table, raw: the program must survive keys
		// and slots the API would refuse.
		var k filterFilterKey
		var keys []filterFilterKey
		it := r.f.objs.Filters.Iterate()
		var v uint32
		for it.Next(&k, &v) {
			keys = append(keys, k)
		}
		for _, k := range keys {
			if err := r.f.objs.Filters.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatal(err)
			}
		}
		for key, s := range m.Filters {
			if err := r.f.objs.Filters.Put(key.raw(), s); err != nil {
				t.Fatal(err)
			}
		}
		q := uint32(queue) % (testMaxQueues + 1)
		runCase(t, r, m, tcase{frame: fr, queue: q, sockets: m.Sockets, want: m.Classify(fr, q)})
	})
}
