package main

import (
	"fmt"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/hostile"
	"github.com/vmq/vmq/internal/testenv"
)

// The hostile rings of ring_cases in the packed layout (VIRTIO_F_RING_PACKED),
// plus what only a packed ring can get wrong: a chain that runs on past
// the whole ring, a buffer id beyond the ring, event suppression areas
// outside guest memory, a misaligned ring. Each breaks the attacker's
// device with its reason; the victim on the same worker is exact.
func attackPackedRingCases(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	const num = 8
	hdr := uint32(virtio.NetHdrLen)
	table := func(d *hostile.Device, gpa uint64, ds ...hostile.PackedDesc) {
		hostile.WritePackedDescs(d.Mem, int(gpa-d.Mem.GPA), ds...)
	}
	post := func(ds ...hostile.PackedDesc) func(d *hostile.Device, r *hostile.Ring) error {
		return func(d *hostile.Device, r *hostile.Ring) error { r.PostPacked(ds...); return nil }
	}
	// postAt builds the chain with addresses carved at build time.
	postAt := func(mk func(d *hostile.Device) []hostile.PackedDesc) func(d *hostile.Device, r *hostile.Ring) error {
		return func(d *hostile.Device, r *hostile.Ring) error { r.PostPacked(mk(d)...); return nil }
	}
	buf := func(d *hostile.Device) uint64 { return allocGPA(t, d, 64) }
	cases := []ringCase{
		{name: "chain_beyond_ring", build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			p := buf(d)
			ds := make([]hostile.PackedDesc, num) // every one says NEXT: a chain that never ends
			for i := range ds {
				ds[i] = hostile.PackedDesc{Addr: p, Len: 64, Flags: virtio.DescFNext}
			}
			return ds
		}), want: "longer than the ring"},
		{name: "id_beyond_ring", build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			return []hostile.PackedDesc{{Addr: buf(d), Len: 64, ID: num + 100}}
		}), want: "beyond ring size"},
		{name: "id_beyond_ring_rx", rx: true, build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			return []hostile.PackedDesc{{Addr: allocGPA(t, d, 2048), Len: 2048, ID: 0xffff, Flags: virtio.DescFWrite}}
		}), want: "beyond ring size"},
		{name: "addr_out_of_range", build: post(hostile.PackedDesc{Addr: 0x1000, Len: 64}), want: "outside guest memory"},
		{name: "addr_past_end", build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			return []hostile.PackedDesc{{Addr: memEnd(d) - 20, Len: 64}}
		}), want: "outside guest memory"},
		{name: "length_overflows_region", build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			return []hostile.PackedDesc{{Addr: buf(d), Len: hdr, Flags: virtio.DescFNext}, {Addr: buf(d), Len: 0xfffffff0}}
		}), want: "outside guest memory"},
		{name: "tx_writable", build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			return []hostile.PackedDesc{{Addr: buf(d), Len: 64, Flags: virtio.DescFWrite}}
		}), want: "device-writable"},
		{name: "rx_readonly", rx: true, build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			return []hostile.PackedDesc{{Addr: allocGPA(t, d, 2048), Len: 2048}}
		}), want: "not device-writable"},
		{name: "rx_out_of_range", rx: true, build: post(hostile.PackedDesc{Addr: 0x10, Len: 2048, Flags: virtio.DescFWrite}), want: "outside guest memory"},
		{name: "nested_indirect", build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			tbl := allocGPA(t, d, 32)
			table(d, tbl, hostile.PackedDesc{Addr: tbl, Len: 32, Flags: virtio.DescFIndirect})
			return []hostile.PackedDesc{{Addr: tbl, Len: 32, Flags: virtio.DescFIndirect}}
		}), want: "nested"},
		{name: "indirect_bad_len", build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			return []hostile.PackedDesc{{Addr: allocGPA(t, d, 32), Len: 17, Flags: virtio.DescFIndirect}}
		}), want: "indirect table of 17 bytes"},
		{name: "indirect_too_big", build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			return []hostile.PackedDesc{{Addr: allocGPA(t, d, 32), Len: (virtio.MaxQueueSize + 1) * virtio.PackedDescSize, Flags: virtio.DescFIndirect}}
		}), want: "indirect table of"},
		{name: "indirect_out_of_range", build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			return []hostile.PackedDesc{{Addr: memEnd(d) - 16, Len: 64, Flags: virtio.DescFIndirect}}
		}), want: "indirect table"},
		{name: "indirect_with_next", build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			return []hostile.PackedDesc{{Addr: allocGPA(t, d, 32), Len: 32, Flags: virtio.DescFIndirect | virtio.DescFNext}, {Addr: buf(d), Len: 64}}
		}), want: "NEXT"},
		{name: "indirect_not_negotiated", feat: virtio.FVersion1, build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			return []hostile.PackedDesc{{Addr: allocGPA(t, d, 32), Len: 32, Flags: virtio.DescFIndirect}}
		}), want: "without INDIRECT_DESC"},
		{name: "indirect_entry_out_of_range", build: postAt(func(d *hostile.Device) []hostile.PackedDesc {
			tbl := allocGPA(t, d, 32)
			table(d, tbl, hostile.PackedDesc{Addr: buf(d), Len: hdr}, hostile.PackedDesc{Addr: memEnd(d) - 8, Len: 64})
			return []hostile.PackedDesc{{Addr: tbl, Len: 32, Flags: virtio.DescFIndirect}}
		}), want: "outside guest memory"},
		{name: "driver_area_outside_memory", layout: func(d *hostile.Device) {
			d.TX().AvailOff = int(d.Mem.Size) - 2
		}, want: "driver event suppression"},
		{name: "device_area_outside_memory", rx: true, layout: func(d *hostile.Device) {
			d.RX().UsedOff = int(d.Mem.Size)
		}, want: "device event suppression"},
		{name: "misaligned_ring", layout: func(d *hostile.Device) {
			d.TX().DescOff += 8
		}, want: "misaligned packed ring"},
	}
	runRingCases(t, h, a, num, true, cases)
}

// Packed rings of 32768 entries, the most work a guest can lay out: the
// RX ring is one chain of 32768 zero-length writable descriptors (every
// frame for the attacker walks it all and fits nowhere), and every TX
// slot is an indirect descriptor for the same table of 32768 zero-length
// entries (2^30 descriptor visits for the ring). The budget per round
// bounds what the worker spends on it: the victim stays exact.
func attackPackedHugeChains(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	const n = virtio.MaxQueueSize
	d := a.device(hostile.Config{QueueSize: n, NoBuffers: true, Packed: true})
	mustStart(t, h, d)
	if d.Features&virtio.FRingPacked == 0 {
		t.Fatalf("RING_PACKED not negotiated (features %#x)", d.Features)
	}
	chain := make([]hostile.PackedDesc, n)
	for i := range chain {
		chain[i] = hostile.PackedDesc{Addr: d.Mem.GPA, Flags: virtio.DescFWrite | virtio.DescFNext}
	}
	chain[n-1].Flags = virtio.DescFWrite
	d.RX().PostPacked(chain...)
	tbl := allocGPA(t, d, n*virtio.PackedDescSize)
	zero := make([]hostile.PackedDesc, n)
	for i := range zero {
		zero[i] = hostile.PackedDesc{Addr: d.Mem.GPA}
	}
	hostile.WritePackedDescs(d.Mem, int(tbl-d.Mem.GPA), zero...)
	tx := d.TX()
	for i := range n {
		tx.PostPacked(hostile.PackedDesc{Addr: tbl, Len: n * virtio.PackedDescSize, ID: uint16(i), Flags: virtio.DescFIndirect})
	}
	d.KickRing(0)
	d.KickRing(1)
	h.attackerFlow(t, 2000)
	waitPackedUsed(t, h, tx, 0, "vmqd walks the first 32768-entry table")
}

// waitPackedUsed waits until vmqd has marked slot i of packed ring r used.
func waitPackedUsed(t *testing.T, h *hostileBed, r *hostile.Ring, i int, what string) {
	t.Helper()
	testenv.Eventually(t, what, func() (bool, string) {
		if !h.proc.alive() {
			t.Fatalf("vmqd died: %v", h.proc.waitErr)
		}
		s, err := h.snapshot()
		if err != nil {
			return false, err.Error()
		}
		return r.PackedUsed(i), fmt.Sprintf("not used yet (attacker drops %v, port %+v)", vmOf(s, "attacker").DropsByReason, portOf(s, "attacker"))
	})
}
