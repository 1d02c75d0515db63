package main

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/hostile"
	"github.com/vmq/vmq/internal/testenv"
)

// Mergeable receive buffers of one byte each (4096 of them): a frame
// needs a buffer per byte of header and frame, num_buffers itself lands
// in two different buffers, and each frame costs its worker a descriptor
// walk per byte (paid from the attacker's budget). vmqd must write the
// true count and a byte-exact frame, break nothing, and keep the victim
// exact.
func attackTinyRxBuffers(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	const n = 4096
	d := a.device(hostile.Config{QueueSize: n, NoBuffers: true})
	mustStart(t, h, d)
	if d.Features&virtio.NetFMrgRxbuf == 0 {
		t.Fatalf("MRG_RXBUF not negotiated (features %#x)", d.Features)
	}
	base := allocGPA(t, d, n)
	rx := d.RX()
	rx.PostOneByteRX(base)
	d.KickRing(0)
	h.attackerFlow(t, 2000)
	const hdr = virtio.NetHdrLen
	testenv.Eventually(t, "a frame in one-byte buffers", func() (bool, string) {
		if !h.proc.alive() {
			t.Fatalf("vmqd died: %v", h.proc.waitErr)
		}
		return rx.UsedIdx() > hdr, fmt.Sprintf("used.idx %d", rx.UsedIdx())
	})
	// The first frame, reassembled from its buffers in used order.
	var got []byte
	for i := uint16(0); i < hdr; i++ {
		id, l := rx.UsedElem(i)
		if l != 1 || id >= n {
			t.Fatalf("used entry %d: id %d length %d, want a one-byte buffer", i, id, l)
		}
		got = append(got, d.Mem.At(base+uint64(id), 1)...)
	}
	nb := uint16(got[10]) | uint16(got[11])<<8
	testenv.Eventually(t, "the whole first frame used", func() (bool, string) {
		return rx.UsedIdx() >= nb, fmt.Sprintf("used.idx %d of num_buffers %d", rx.UsedIdx(), nb)
	})
	for i := uint16(hdr); i < nb; i++ {
		id, l := rx.UsedElem(i)
		if l != 1 || id >= n {
			t.Fatalf("used entry %d: id %d length %d, want a one-byte buffer", i, id, l)
		}
		got = append(got, d.Mem.At(base+uint64(id), 1)...)
	}
	frame := got[hdr:]
	if int(nb) < hdr+60 || !bytes.Equal(frame[:6], mustMAC(attackerMAC)) {
		t.Fatalf("num_buffers %d, frame %x: not the attacker's frame in one-byte buffers", nb, frame)
	}
	t.Logf("a %d-byte frame in %d one-byte buffers; %d buffers used so far", len(frame), nb, rx.UsedIdx())
	s, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if p := portOf(s, a.name); p.Broken != "" {
		t.Fatalf("device broken: %s", p.Broken)
	}
}

// Transmit chains of one-byte descriptors: 64 chains of 32768 (32 KiB
// each, the most an indirect table holds; more than any round's budget
// can walk) and then a good frame of one-byte descriptors. The long ones
// are dropped and given back, never walked twice in one round; the good
// one reaches the wire; the device stays up.
func attackOneByteTxChains(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	const long, n = 64, virtio.MaxQueueSize
	d := a.device(hostile.Config{QueueSize: 256, NoBuffers: true})
	mustStart(t, h, d)
	f := append(make([]byte, virtio.NetHdrLen), attackerFrames(t, h.b.Peer.MAC, 1)[0]...)
	fb := allocGPA(t, d, len(f))
	copy(d.Mem.At(fb, len(f)), f)
	table := func(entries int) uint64 {
		ds := make([]hostile.Desc, entries)
		for i := range ds {
			ds[i] = hostile.Desc{Addr: fb + uint64(i%len(f)), Len: 1}
			if i < entries-1 {
				ds[i].Flags, ds[i].Next = virtio.DescFNext, uint16(i+1)
			}
		}
		gpa := allocGPA(t, d, entries*virtio.DescSize)
		hostile.WriteDescs(d.Mem, int(gpa-d.Mem.GPA), ds...)
		return gpa
	}
	big, good := table(n), table(len(f))
	tx := d.TX()
	for range long {
		tx.Post(hostile.Desc{Addr: big, Len: n * virtio.DescSize, Flags: virtio.DescFIndirect})
	}
	tx.Post(hostile.Desc{Addr: good, Len: uint32(len(f) * virtio.DescSize), Flags: virtio.DescFIndirect})
	d.KickRing(1)
	testenv.Eventually(t, "every chain given back", func() (bool, string) {
		if !h.proc.alive() {
			t.Fatalf("vmqd died: %v", h.proc.waitErr)
		}
		return tx.UsedIdx() == long+1, fmt.Sprintf("used.idx %d of %d", tx.UsedIdx(), long+1)
	})
	testenv.Eventually(t, "the good frame sent", func() (bool, string) {
		s, err := h.snapshot()
		if err != nil {
			return false, err.Error()
		}
		v := vmOf(s, a.name)
		if p := portOf(s, a.name); p.Broken != "" {
			t.Fatalf("device broken: %s", p.Broken)
		}
		return v.TxPackets == 1, fmt.Sprintf("tx %d, drops %v", v.TxPackets, v.DropsByReason)
	})
}
