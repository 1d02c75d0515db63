package dataplane

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/hostile"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

const (
	guardCanary = 0xa5 // the file's pages outside the region
	bufCanary   = 0xcc // guest memory nobody may write
)

// guardedDevice is a hostile front-end whose one memory region is the
// memfd minus its first and last page: those are guard pages, the first
// mapped by vmq (it maps a page before a region) and part of the
// registered UMEM mapping, but not guest memory. Buffers sit at both ends of the region.
type guardedDevice struct {
	*hostile.Device
	size             int
	regStart, regEnd int // file offsets of the region
	ringLo, ringHi   int // file offsets of the rings (written by both sides)
	bufLen, nbufs    int
	bufOffs          []int
}

func newGuardedDevice(t *testing.T, sock string, packed bool) *guardedDevice {
	t.Helper()
	c, err := hostile.Dial(sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	const size, qsize = 1 << 20, 64
	features := uint64(hostile.DefaultFeatures)
	if packed {
		features |= virtio.FRingPacked
	}
	d := &guardedDevice{Device: &hostile.Device{C: c, Cfg: hostile.Config{Features: features, QueueSize: qsize, NoBuffers: true, Packed: packed}},
		size: size, regStart: 4096, regEnd: size - 4096, bufLen: 2048}
	t.Cleanup(d.Close)
	if d.Mem, err = hostile.NewMem(size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Mem.Close)
	if _, err := d.Mem.Alloc(4096, 4096); err != nil { // the first guard page
		t.Fatal(err)
	}
	d.ringLo = 4096
	newRing := hostile.NewRing
	if packed {
		newRing = hostile.NewPackedRing
	}
	for i := range d.Rings {
		if d.Rings[i], err = newRing(d.Mem, qsize); err != nil {
			t.Fatal(err)
		}
		if d.Kick[i], err = hostile.NewEventFD(true); err != nil {
			t.Fatal(err)
		}
		if d.Call[i], err = hostile.NewEventFD(true); err != nil {
			t.Fatal(err)
		}
	}
	d.ringHi, _ = d.Mem.Alloc(0, 4096)
	// Buffers: the first at the region's first byte, the last ending at
	// its last byte, the others in between.
	d.nbufs = 8
	d.bufOffs = append(d.bufOffs, d.regStart)
	for i := 1; i < d.nbufs-1; i++ {
		d.bufOffs = append(d.bufOffs, d.ringHi+i*4096)
	}
	d.bufOffs = append(d.bufOffs, d.regEnd-d.bufLen)
	d.paint()
	if err := d.Negotiate(); err != nil {
		t.Fatal(err)
	}
	d.memTable(t)
	for i := range d.Rings {
		if err := d.StartRing(i); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// memTable sends the one region: the memfd without its guard pages.
func (d *guardedDevice) memTable(t *testing.T) {
	t.Helper()
	reg := vhostuser.MemRegion{GuestPhysAddr: d.Mem.GPAOf(d.regStart), MemorySize: uint64(d.regEnd - d.regStart),
		UserspaceAddr: d.Mem.UVAOf(d.regStart), MmapOffset: uint64(d.regStart)}
	p := make([]byte, vhostuser.MemTableLen(1))
	vhostuser.EncodeMemTable(p, []vhostuser.MemRegion{reg})
	if _, err := d.C.Call(vhostuser.ReqSetMemTable, p, d.Mem.FD); err != nil {
		t.Fatal(err)
	}
}

// paint fills everything but the rings with canaries.
func (d *guardedDevice) paint() {
	b := d.Mem.Bytes()
	for i := range b {
		switch {
		case i < d.regStart || i >= d.regEnd:
			b[i] = guardCanary
		case i >= d.ringLo && i < d.ringHi:
		default:
			b[i] = bufCanary
		}
	}
}

// post posts buffers [from, to) as single device-writable descriptors
// (on a packed ring buffer i has id i).
func (d *guardedDevice) post(from, to int) {
	for i := from; i < to; i++ {
		if d.RX().Packed {
			d.RX().PostPacked(hostile.PackedDesc{Addr: d.Mem.GPAOf(d.bufOffs[i]), Len: uint32(d.bufLen), ID: uint16(i), Flags: virtio.DescFWrite})
			continue
		}
		d.RX().Post(hostile.Desc{Addr: d.Mem.GPAOf(d.bufOffs[i]), Len: uint32(d.bufLen), Flags: virtio.DescFWrite})
	}
	d.KickRing(0)
}

// check verifies that every byte outside the rings is its canary, except
// written[i] bytes at the start of buffer i (header + frame).
func (d *guardedDevice) check(t *testing.T, written map[int]int) {
	t.Helper()
	b := d.Mem.Bytes()
	bad := 0
	for i := range b {
		if i >= d.ringLo && i < d.ringHi {
			continue
		}
		want := byte(bufCanary)
		if i < d.regStart || i >= d.regEnd {
			want = guardCanary
		}
		skip := false
		for k, n := range written {
			if o := d.bufOffs[k]; i >= o && i < o+n {
				skip = true
			}
		}
		if !skip && b[i] != want {
			if bad < 5 {
				t.Errorf("byte at file offset %#x is %#x, want %#x (region %#x..%#x)", i, b[i], want, d.regStart, d.regEnd)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Fatalf("%d bytes written outside the guest's posted buffers", bad)
	}
}

// guardedDedicatedBed is the bed of the hostile dedicated-queue tests: a
// raw device "h" (guard pages around its memory) on dedicated queue 1, and
// a well-behaved witness VM on shared queue 0, served by the same worker.
// The witness gets an exact stream before the attack and another at the
// end (w.check), and must never drop a frame.
func guardedDedicatedBed(t *testing.T, opts ...func(*Config)) (*testbed, *guardedDevice, *witness) {
	return guardedDedicatedBedRings(t, false, opts...)
}

// guardedDedicatedBedRings is guardedDedicatedBed with the device on
// packed rings if packed.
func guardedDedicatedBedRings(t *testing.T, packed bool, opts ...func(*Config)) (*testbed, *guardedDevice, *witness) {
	tb, _ := dedicatedBed(t, opts...)
	sock := tb.Socket("h")
	tb.addPort(VM{Name: "h", Slot: 1, MAC: mustMAC(mac1), Socket: sock, QueuePairs: 1,
		Dedicated: DedicatedRequired, DedicatedQueue: 1})
	d := newGuardedDevice(t, sock, packed)
	tb.waitRunning("h", 2)
	w := &witness{tb: tb, g: tb.addVM("w", 2, mac2, 0, 1, "")}
	w.send()
	return tb, d, w
}

// witness is a well-behaved VM next to an attacker on the same worker.
type witness struct {
	tb   *testbed
	g    *frontend.Guest
	sent uint64
}

const witnessFrames = 500

// send puts witnessFrames paced frames on queue 0 for the witness and
// waits until every one of them arrived.
func (w *witness) send() {
	w.tb.t.Helper()
	// A stream of its own for each send: the generator numbers each from 0.
	spec := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac2)}}, Size: 64, Stream: 40 + uint32(w.sent/witnessFrames)}
	w.tb.SendOnCPU(0, spec, witnessFrames)
	w.sent += witnessFrames
	waitRx(w.tb.t, "witness", w.g, w.sent)
}

// check sends the witness's second stream after the attack: both arrive
// exactly, with no drop counted.
func (w *witness) check() {
	w.tb.t.Helper()
	if w.tb.t.Failed() {
		return
	}
	w.send()
	vs := w.tb.vmStats("w")
	if vs.RxPackets != w.sent || len(vs.DropsByReason) != 0 {
		w.tb.t.Errorf("witness: rx %d of %d, drops %v", vs.RxPackets, w.sent, vs.DropsByReason)
	}
	for _, st := range w.g.Stats().Streams {
		if st.Received != witnessFrames || st.Lost != 0 || st.Duplicates != 0 || st.Reordered != 0 {
			w.tb.t.Errorf("witness stream %+v", st)
		}
	}
}

// TestDedicatedGuardPages: buffers at both ends of a region with guard
// pages around it get their frames and nothing else changes; a reset with
// buffers still posted gives them back empty, and frames after it write
// nothing; a buffer that straddles the region's end is never posted to
// the kernel (the queue falls back to copying instead).
func TestDedicatedGuardPages(t *testing.T) {
	tb, d, w := guardedDedicatedBed(t)
	defer w.check()
	stats := func() *DedicatedStats { return tb.vmStats("h").Dedicated }

	spec := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 1514, Stream: 7}
	tmpl := mustTemplate(t, spec)
	d.post(0, d.nbufs)
	testenv.Eventually(t, "buffers posted", func() (bool, string) {
		s := stats()
		return s.Posted == int64(d.nbufs), fmt.Sprintf("%+v", *s)
	})
	tb.SendOnCPU(1, spec, d.nbufs)
	rx := d.RX()
	testenv.Eventually(t, "used entries", func() (bool, string) {
		return rx.UsedIdx() == uint16(d.nbufs), fmt.Sprintf("used idx %d", rx.UsedIdx())
	})
	written := map[int]int{}
	for i := range uint16(d.nbufs) {
		id, n := rx.UsedElem(i)
		if n != uint32(virtio.NetHdrLen+tmpl.FrameLen()) || int(id) >= d.nbufs {
			t.Fatalf("used %d: id %d len %d", i, id, n)
		}
		buf := d.Mem.Bytes()[d.bufOffs[id]:]
		hdr := buf[:virtio.NetHdrLen]
		if !bytes.Equal(hdr, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0}) {
			t.Fatalf("buffer %d header %x", id, hdr)
		}
		f := buf[virtio.NetHdrLen:n]
		p, ok := pktgen.ParseFrame(f)
		if !ok || !bytes.Equal(f, tmpl.Frame(p.Seq, p.TimestampNS)) {
			t.Fatalf("buffer %d: frame not byte-exact", id)
		}
		written[int(id)] = int(n)
	}
	d.check(t, written)
	if s := tb.vmStats("h"); s.RxCopiedBytes != 0 || s.Dedicated.Frames != uint64(d.nbufs) {
		t.Fatalf("copied %d, direct %+v", s.RxCopiedBytes, *s.Dedicated)
	}

	// Reset with buffers posted: they come back with length 0, and the
	// memory is not written again.
	d.paint()
	d.post(0, 4)
	testenv.Eventually(t, "buffers posted", func() (bool, string) {
		s := stats()
		return s.Posted == 4, fmt.Sprintf("%+v", *s)
	})
	// RESET_OWNER drops REPLY_ACK with everything else: no ack comes;
	// GET_FEATURES after it returns once it was handled.
	if err := d.C.WriteRaw(hostile.Message(vhostuser.ReqResetOwner, vhostuser.FlagVersion, nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.C.GetU64(vhostuser.ReqGetFeatures); err != nil {
		t.Fatal(err)
	}
	if s := stats(); s.Posted != 0 || s.Returned != 4 || s.State != "waiting for the guest" {
		t.Fatalf("after reset: %+v", *s)
	}
	for i := uint16(d.nbufs); i < uint16(d.nbufs+4); i++ {
		if _, n := rx.UsedElem(i); n != 0 {
			t.Fatalf("returned buffer %d: used length %d, want 0", i, n)
		}
	}
	before := bytes.Clone(d.Mem.Bytes())
	tb.SendOnCPU(1, spec, 200)
	time.Sleep(50 * time.Millisecond)
	if !bytes.Equal(before, d.Mem.Bytes()) {
		t.Fatal("guest memory changed after the reset")
	}
	d.check(t, nil)
	t.Logf("after reset: %+v", *stats())
}

// TestDedicatedStraddlingBuffer: a receive buffer that runs past the end
// of its region is never given to the kernel; with nothing else posted
// the queue falls back to copying, logged and counted.
func TestDedicatedStraddlingBuffer(t *testing.T) {
	tb, d, w := guardedDedicatedBed(t)
	defer w.check()
	// A first, good buffer opens the socket; then one that straddles.
	d.post(1, 2)
	testenv.Eventually(t, "buffer posted", func() (bool, string) {
		s := tb.vmStats("h").Dedicated
		return s.Posted == 1, fmt.Sprintf("%+v", *s)
	})
	spec := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 64, Stream: 8}
	tb.SendOnCPU(1, spec, 1)
	testenv.Eventually(t, "first frame", func() (bool, string) {
		return d.RX().UsedIdx() == 1, "waiting"
	})
	d.RX().Post(hostile.Desc{Addr: d.Mem.GPAOf(d.regEnd - 1000), Len: 2048, Flags: virtio.DescFWrite})
	d.KickRing(0)
	testenv.Eventually(t, "fallback", func() (bool, string) {
		s := tb.vmStats("h").Dedicated
		return s.State == "copy (fallback)" && s.Unsuitable > 0, fmt.Sprintf("%+v", *s)
	})
	d.check(t, map[int]int{1: virtio.NetHdrLen + 66})
	if err := tb.dp.RemoveVM(context.Background(), "h"); err != nil {
		t.Fatal(err)
	}
}

// TestDedicatedRepostedHead: a guest that makes a descriptor available
// again while the kernel still holds it (posted, not used) breaks its
// device; the buffer is in the fill ring once, and a frame fills it once.
func TestDedicatedRepostedHead(t *testing.T) {
	tb, d, w := guardedDedicatedBed(t)
	defer w.check()
	head := d.RX().Post(hostile.Desc{Addr: d.Mem.GPAOf(d.bufOffs[2]), Len: uint32(d.bufLen), Flags: virtio.DescFWrite})
	d.KickRing(0)
	testenv.Eventually(t, "buffer posted", func() (bool, string) {
		s := tb.vmStats("h").Dedicated
		return s.Posted == 1, fmt.Sprintf("%+v", *s)
	})
	d.RX().Push(head) // the same head again
	d.RX().Publish()
	d.KickRing(0)
	testenv.Eventually(t, "device broken", func() (bool, string) {
		p := tb.portStats("h")
		return p.Broken != "", fmt.Sprintf("port %+v", p)
	})
	if b := tb.portStats("h").Broken; !strings.Contains(b, "posted again") {
		t.Fatalf("broken for %q", b)
	}
	if s := tb.vmStats("h").Dedicated; s.Posted != 1 {
		t.Fatalf("posted %d, want the one buffer once", s.Posted)
	}
	tb.SendOnCPU(1, pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 64, Stream: 9}, 5)
	// At most one frame lands, in the one posted buffer, and nothing
	// else is written.
	time.Sleep(50 * time.Millisecond)
	d.check(t, map[int]int{2: virtio.NetHdrLen + 66})
}

// TestDedicatedMemTableChange: a new memory table while buffers are
// posted: the socket closes (the buffers come back empty) before the old
// mapping goes, and the ring restarts on the new one with a new socket
// whose frames land in place again.
func TestDedicatedMemTableChange(t *testing.T) {
	tb, d, w := guardedDedicatedBed(t)
	defer w.check()
	stats := func() *DedicatedStats { return tb.vmStats("h").Dedicated }
	d.post(0, 4)
	testenv.Eventually(t, "buffers posted", func() (bool, string) {
		s := stats()
		return s.Posted == 4, fmt.Sprintf("%+v", *s)
	})
	d.memTable(t) // the same memory, mapped anew
	if s := stats(); s.Returned != 4 || s.Posted != 0 {
		t.Fatalf("after SET_MEM_TABLE: %+v", *s)
	}
	rx := d.RX()
	if rx.UsedIdx() != 4 {
		t.Fatalf("used idx %d, want the 4 returned buffers", rx.UsedIdx())
	}
	tb.waitRunning("h", 2)
	d.paint()
	d.post(4, 8)
	testenv.Eventually(t, "buffers posted on the new table", func() (bool, string) {
		s := stats()
		return s.Posted == 4 && s.State == "direct", fmt.Sprintf("%+v", *s)
	})
	spec := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 64, Stream: 11}
	tb.SendOnCPU(1, spec, 4)
	testenv.Eventually(t, "frames in place", func() (bool, string) {
		return rx.UsedIdx() == 8, fmt.Sprintf("used idx %d", rx.UsedIdx())
	})
	written := map[int]int{}
	for i := uint16(4); i < 8; i++ {
		id, n := rx.UsedElem(i)
		// Post put buffers 4..7 in descriptor slots 4..7.
		if n != uint32(virtio.NetHdrLen+66) || id < 4 || id > 7 {
			t.Fatalf("used %d: id %d len %d", i, id, n)
		}
		written[int(id)] = int(n)
	}
	if len(written) != 4 {
		t.Fatalf("used ids %v", written)
	}
	d.check(t, written)
}

// TestDedicatedRestartLogFlood: a guest that restarts its receive ring
// in a loop opens its dedicated socket anew each time; vmq's log, shared
// by every tenant, gets one line of each kind per interval, not one per
// restart.
func TestDedicatedRestartLogFlood(t *testing.T) {
	var logs testenv.SyncBuffer
	tb, d, w := guardedDedicatedBed(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	defer w.check()
	stats := func() *DedicatedStats { return tb.vmStats("h").Dedicated }
	const restarts = 20
	for i := range restarts {
		d.post(i%d.nbufs, i%d.nbufs+1)
		testenv.Eventually(t, "buffer posted", func() (bool, string) {
			s := stats()
			return s.Posted == 1, fmt.Sprintf("restart %d: %+v", i, *s)
		})
		// SET_VRING_BASE and SET_VRING_KICK each restart the ring: the
		// posted buffer comes back empty, and a socket opens anew.
		if err := d.C.State(vhostuser.ReqSetVringBase, 0, uint32(d.RX().UsedIdx())); err != nil {
			t.Fatal(err)
		}
		if _, err := d.C.U64(vhostuser.ReqSetVringKick, 0, d.Kick[0].FD); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, "buffer returned", func() (bool, string) {
			s := stats()
			return s.Returned == uint64(i+1), fmt.Sprintf("restart %d: %+v", i, *s)
		})
	}
	if n := strings.Count(logs.String(), "frames land in guest memory"); n < 1 || n > 2 {
		t.Fatalf("%d log lines for %d restarts, want 1 or 2:\n%s", n, restarts, logs.String())
	}
}

// TestDedicatedPackedHostileIDs: on packed rings the guest names its
// buffers: a buffer id reused while the NIC owns that buffer, or one
// beyond the ring, breaks the guest's device; the buffer the kernel has is
// in its fill ring once, nothing outside the posted buffer is written, and
// the witness on the same worker loses nothing.
func TestDedicatedPackedHostileIDs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		id     uint16
		broken string
	}{
		{"id_reused", 2, "posted again"},
		{"id_beyond_ring", 64, "beyond ring size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, d, w := guardedDedicatedBedRings(t, true)
			defer w.check()
			if p := tb.portStats("h").Features&virtio.FRingPacked != 0; !p {
				t.Fatal("RING_PACKED not negotiated")
			}
			d.post(2, 3)
			testenv.Eventually(t, "buffer posted", func() (bool, string) {
				s := tb.vmStats("h").Dedicated
				return s.Posted == 1 && s.State == "direct", fmt.Sprintf("%+v", *s)
			})
			d.RX().PostPacked(hostile.PackedDesc{Addr: d.Mem.GPAOf(d.bufOffs[3]), Len: uint32(d.bufLen), ID: tc.id, Flags: virtio.DescFWrite})
			d.KickRing(0)
			testenv.Eventually(t, "device broken", func() (bool, string) {
				p := tb.portStats("h")
				return p.Broken != "", fmt.Sprintf("port %+v", p)
			})
			if b := tb.portStats("h").Broken; !strings.Contains(b, tc.broken) {
				t.Fatalf("broken for %q, want %q", b, tc.broken)
			}
			if s := tb.vmStats("h").Dedicated; s.Posted != 1 {
				t.Fatalf("posted %d, want the one buffer once", s.Posted)
			}
			tb.SendOnCPU(1, pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 64, Stream: 9}, 5)
			// At most one frame lands, in the one posted buffer.
			time.Sleep(50 * time.Millisecond)
			d.check(t, map[int]int{2: virtio.NetHdrLen + 66})
		})
	}
}
