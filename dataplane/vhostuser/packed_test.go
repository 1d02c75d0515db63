package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
)

// packedGuest is a driver-side packed ring on a Go byte slice, as
// testGuest is for the split ring.
type packedGuest struct {
	t                         testing.TB
	mem                       []byte
	base                      uint64
	num                       int
	descOff, drvOff, devOff   int
	bufOff                    int
	availPos, usedPos         int // slot
	availWrap, usedWrap       bool
	nextID                    uint16
	chainLen                  map[uint16]int // ring descriptors of each buffer in flight
	features                  uint64
	q                         *Queue
	mt                        *memTable
	descAddr, drvAddr, devAdr uint64
}

const packedTestFeatures = testFeatures | virtio.FRingPacked

func newPackedGuest(t testing.TB, num int, features uint64, rx bool) *packedGuest {
	t.Helper()
	return newPackedGuestMem(t, make([]byte, 1<<20), num, features, rx)
}

func layoutPacked(t testing.TB, mem []byte, base uint64, num int) *packedGuest {
	g := &packedGuest{t: t, mem: mem, base: base, num: num, availWrap: true, usedWrap: true, chainLen: map[uint16]int{}}
	g.drvOff = virtio.PackedDescTableSize(num)
	g.devOff = g.drvOff + virtio.PackedEventSize
	g.bufOff = (g.devOff + virtio.PackedEventSize + 63) &^ 63
	g.descAddr, g.drvAddr, g.devAdr = base, base+uint64(g.drvOff), base+uint64(g.devOff)
	return g
}

func newPackedGuestMem(t testing.TB, mem []byte, num int, features uint64, rx bool) *packedGuest {
	t.Helper()
	g := layoutPacked(t, mem, testBase, num)
	g.features = features | virtio.FRingPacked
	g.mt = &memTable{regions: []memRegion{{gpa: g.base, size: uint64(len(g.mem)), uva: g.base, data: g.mem}}}
	idx := 1
	if rx {
		idx = 0
	}
	g.q = &Queue{index: idx, kickFD: -1, callFD: -1}
	if err := g.q.ringLayout(g.mt, g.features, uint32(num), g.descAddr, g.drvAddr, g.devAdr); err != nil {
		t.Fatalf("ring layout: %v", err)
	}
	if err := g.q.start(virtio.EventWrapBit); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *packedGuest) alloc(n int) uint64 {
	a := g.base + uint64(g.bufOff)
	g.bufOff += (n + 15) &^ 15
	if g.bufOff > len(g.mem) {
		g.t.Fatal("test guest out of memory")
	}
	return a
}

func (g *packedGuest) at(addr uint64, n int) []byte { return g.mem[addr-g.base:][:n] }

func writePackedDesc(b []byte, addr uint64, l uint32, id, flags uint16) {
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], l)
	binary.LittleEndian.PutUint16(b[12:], id)
	binary.LittleEndian.PutUint16(b[14:], flags)
}

func (g *packedGuest) availFlags() uint16 {
	if g.availWrap {
		return virtio.DescFAvail
	}
	return virtio.DescFUsed
}

// post makes a chain available in consecutive ring slots (NEXT on all but
// the last unless rawFlags), the head's flags written last; it returns
// the buffer id.
func (g *packedGuest) post(ds ...tdesc) uint16 {
	return g.postFlags(false, ds...)
}

func (g *packedGuest) postFlags(rawFlags bool, ds ...tdesc) uint16 {
	id := g.nextID
	g.nextID = (g.nextID + 1) % uint16(g.num)
	g.chainLen[id] = len(ds)
	head := g.availPos
	var headFlags uint16
	for i, d := range ds {
		f := d.flags
		if !rawFlags && i < len(ds)-1 {
			f |= virtio.DescFNext
		}
		f |= g.availFlags()
		slot := g.mem[g.descOff+16*g.availPos:]
		if i == 0 {
			headFlags = f
			f = 0
			if !g.availWrap { // must not look available before the end
				f = virtio.DescFAvail
			}
		}
		writePackedDesc(slot, d.addr, d.len, id, f)
		if g.availPos++; g.availPos == g.num {
			g.availPos, g.availWrap = 0, !g.availWrap
		}
	}
	binary.LittleEndian.PutUint16(g.mem[g.descOff+16*head+14:], headFlags)
	return id
}

// used returns the next used descriptor, if the device wrote one.
func (g *packedGuest) used() (id uint16, l uint32, ok bool) {
	b := g.mem[g.descOff+16*g.usedPos:]
	f := binary.LittleEndian.Uint16(b[14:])
	if (f&virtio.DescFAvail != 0) != g.usedWrap || (f&virtio.DescFUsed != 0) != g.usedWrap {
		return 0, 0, false
	}
	id, l = binary.LittleEndian.Uint16(b[12:]), binary.LittleEndian.Uint32(b[8:])
	n, known := g.chainLen[id]
	if !known {
		g.t.Fatalf("used id %d not in flight", id)
	}
	delete(g.chainLen, id)
	if g.usedPos += n; g.usedPos >= g.num {
		g.usedPos, g.usedWrap = g.usedPos-g.num, !g.usedWrap
	}
	return id, l, true
}

// usedAll collects every used descriptor written so far.
func (g *packedGuest) usedAll() (ids []uint16, lens []uint32) {
	for {
		id, l, ok := g.used()
		if !ok {
			return ids, lens
		}
		ids, lens = append(ids, id), append(lens, l)
	}
}

func (g *packedGuest) sendFrame(frame []byte, split int) uint16 {
	ds := []tdesc{{addr: g.alloc(virtio.NetHdrLen), len: virtio.NetHdrLen}}
	for len(frame) > 0 {
		n := min(split, len(frame))
		a := g.alloc(n)
		copy(g.at(a, n), frame[:n])
		ds = append(ds, tdesc{addr: a, len: uint32(n)})
		frame = frame[n:]
	}
	return g.post(ds...)
}

func (g *packedGuest) postRX(n int) uint64 {
	a := g.alloc(n)
	g.post(tdesc{addr: a, len: uint32(n), flags: virtio.DescFWrite})
	return a
}

// indirect writes a packed indirect table and returns its descriptor.
func (g *packedGuest) indirect(ds ...tdesc) tdesc {
	tbl := g.alloc(16 * len(ds))
	for i, d := range ds {
		writePackedDesc(g.at(tbl+uint64(16*i), 16), d.addr, d.len, 0, d.flags)
	}
	return tdesc{addr: tbl, len: uint32(16 * len(ds)), flags: virtio.DescFIndirect}
}

func (g *packedGuest) setDriverEvent(offWrap, flags uint16) {
	binary.LittleEndian.PutUint16(g.mem[g.drvOff:], offWrap)
	binary.LittleEndian.PutUint16(g.mem[g.drvOff+2:], flags)
}

func (g *packedGuest) deviceEvent() (offWrap, flags uint16) {
	return binary.LittleEndian.Uint16(g.mem[g.devOff:]), binary.LittleEndian.Uint16(g.mem[g.devOff+2:])
}

func TestPackedPopFrames(t *testing.T) {
	g := newPackedGuest(t, 8, packedTestFeatures, false)
	f1, f2, f3 := frameOf(60, 1), frameOf(1514, 2), frameOf(200, 3)
	id1 := g.sendFrame(f1, 1000)
	id2 := g.sendFrame(f2, 500) // header + 4 pieces: 5 ring descriptors
	h, d := g.alloc(virtio.NetHdrLen), g.alloc(len(f3))
	copy(g.at(d, len(f3)), f3)
	// NEXT inside a packed indirect table means nothing; set it anyway.
	id3 := g.post(g.indirect(tdesc{addr: h, len: virtio.NetHdrLen, flags: virtio.DescFNext}, tdesc{addr: d, len: uint32(len(f3))}))
	dst := make([]byte, 2048)
	for i, want := range [][]byte{f1, f2, f3} {
		n, err := g.q.Pop(dst)
		if err != nil {
			t.Fatalf("pop %d: %v", i, err)
		}
		if !bytes.Equal(dst[:n], want) {
			t.Fatalf("pop %d: got %d bytes, want %d", i, n, len(want))
		}
	}
	if _, err := g.q.Pop(dst); !errors.Is(err, ErrEmpty) {
		t.Fatalf("pop on empty ring: %v, want ErrEmpty", err)
	}
	if _, _, ok := g.used(); ok {
		t.Fatal("used descriptor visible before Flush")
	}
	g.q.Flush()
	ids, lens := g.usedAll()
	if len(ids) != 3 || ids[0] != id1 || ids[1] != id2 || ids[2] != id3 {
		t.Fatalf("used ids %v, want [%d %d %d]", ids, id1, id2, id3)
	}
	for i, l := range lens {
		if l != 0 {
			t.Errorf("used len[%d] = %d, want 0 for TX", i, l)
		}
	}
	if st := g.q.Stats(); st.Frames != 3 || st.Bytes != uint64(len(f1)+len(f2)+len(f3)) {
		t.Fatalf("stats %+v", st)
	}
	// 2+5+1 descriptors: the ring wrapped; the base says slot 0, wrap 0.
	if b := g.q.vringBase(); b != 0 {
		t.Fatalf("vring base %#x after 8 descriptors, want 0 (slot 0, wrap 0)", b)
	}
}

// Frames of varying chain lengths through a small ring, over many wraps,
// with TX drops in between: every used id comes back once, in order.
func TestPackedWrapAround(t *testing.T) {
	g := newPackedGuest(t, 8, packedTestFeatures, false)
	dst := make([]byte, 1600)
	var posted, got []uint16
	for round := 0; round < 200; round++ {
		split := []int{1000, 30, 20}[round%3] // 2, 3 or 4 descriptors
		f := frameOf(60, byte(round))
		if len(g.chainLen)+4 > 8 || g.free() < 4 {
			g.q.Flush()
			ids, _ := g.usedAll()
			got = append(got, ids...)
		}
		posted = append(posted, g.sendFrame(f, split))
		n, err := g.q.Pop(dst)
		if err != nil || !bytes.Equal(dst[:n], f) {
			t.Fatalf("round %d: pop %d bytes, %v", round, n, err)
		}
	}
	g.q.Flush()
	ids, _ := g.usedAll()
	got = append(got, ids...)
	if len(got) != len(posted) {
		t.Fatalf("%d used, %d posted", len(got), len(posted))
	}
	for i := range got {
		if got[i] != posted[i] {
			t.Fatalf("used[%d] = %d, want %d", i, got[i], posted[i])
		}
	}
}

// free is the number of ring slots the driver may still fill.
func (g *packedGuest) free() int {
	n := 0
	for _, l := range g.chainLen {
		n += l
	}
	return g.num - n
}

func TestPackedPushMergeable(t *testing.T) {
	g := newPackedGuest(t, 8, packedTestFeatures|virtio.NetFMrgRxbuf, true)
	a1, a2, a3 := g.postRX(1024), g.postRX(1024), g.postRX(1024)
	f := frameOf(2500, 7)
	if err := g.q.Push(f); err != nil {
		t.Fatal(err)
	}
	g.q.Flush()
	_, lens := g.usedAll()
	want := []uint32{1024, 1024, uint32(2500 + 12 - 2048)}
	if len(lens) != 3 || lens[0] != want[0] || lens[1] != want[1] || lens[2] != want[2] {
		t.Fatalf("used lens %v, want %v", lens, want)
	}
	if nb := binary.LittleEndian.Uint16(g.at(a1+10, 2)); nb != 3 {
		t.Fatalf("num_buffers %d, want 3", nb)
	}
	got := append(append(append([]byte{}, g.at(a1, 1024)...), g.at(a2, 1024)...), g.at(a3, int(want[2]))...)
	if !bytes.Equal(got[12:], f) {
		t.Fatal("merged frame content differs")
	}
	// Not enough room: the rollback must leave the guest's descriptors as
	// they were (nothing written in place), so the next frame gets them.
	b := g.postRX(100)
	snapshot := append([]byte{}, g.mem[:g.drvOff]...)
	if err := g.q.Push(f); !errors.Is(err, ErrNoBuffers) {
		t.Fatalf("push without room: %v, want ErrNoBuffers", err)
	}
	g.q.Flush()
	if !bytes.Equal(snapshot, g.mem[:g.drvOff]) {
		t.Fatal("a rolled-back push wrote into the descriptor ring")
	}
	small := frameOf(60, 1)
	if err := g.q.Push(small); err != nil {
		t.Fatalf("small frame after rollback: %v", err)
	}
	g.q.Flush()
	_, lens = g.usedAll()
	if len(lens) != 1 || lens[0] != 72 || !bytes.Equal(g.at(b+12, 60), small) {
		t.Fatalf("used lens %v after the small frame", lens)
	}
	if st := g.q.Stats(); st.Frames != 2 || st.Drops[DropNoBuffers] != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A chain longer than the frame needs: Push skips its tail in the ring,
// the used descriptor covers the whole chain and the next chain is found.
func TestPackedPushSkipsChainTail(t *testing.T) {
	g := newPackedGuest(t, 8, packedTestFeatures, true)
	a := g.alloc(2048)
	id := g.post(tdesc{addr: a, len: 2048, flags: virtio.DescFWrite},
		tdesc{addr: g.alloc(64), len: 64, flags: virtio.DescFWrite},
		tdesc{addr: g.alloc(64), len: 64, flags: virtio.DescFWrite})
	b := g.postRX(2048)
	f1, f2 := frameOf(100, 1), frameOf(200, 2)
	if err := g.q.Push(f1); err != nil {
		t.Fatal(err)
	}
	if err := g.q.Push(f2); err != nil {
		t.Fatal(err)
	}
	g.q.Flush()
	ids, lens := g.usedAll()
	if len(ids) != 2 || ids[0] != id || lens[0] != 112 || lens[1] != 212 {
		t.Fatalf("used %v %v", ids, lens)
	}
	if !bytes.Equal(g.at(a+12, 100), f1) || !bytes.Equal(g.at(b+12, 200), f2) {
		t.Fatal("content differs")
	}
}

func TestPackedHostile(t *testing.T) {
	cases := []struct {
		name string
		rx   bool
		feat uint64
		post func(g *packedGuest)
	}{
		{"bad buffer id", false, 0, func(g *packedGuest) {
			g.sendFrame(frameOf(60, 1), 60)
			binary.LittleEndian.PutUint16(g.mem[16+12:], 99) // the chain's last descriptor
		}},
		{"loop: chain around the whole ring", false, 0, func(g *packedGuest) {
			ds := make([]tdesc, 8)
			for i := range ds {
				ds[i] = tdesc{addr: g.alloc(16), len: 16, flags: virtio.DescFNext}
			}
			g.postFlags(true, ds...)
		}},
		{"address outside memory", false, 0, func(g *packedGuest) {
			g.post(tdesc{addr: g.alloc(12), len: 12}, tdesc{addr: 1 << 40, len: 64})
		}},
		{"length past the region", false, 0, func(g *packedGuest) {
			g.post(tdesc{addr: g.alloc(12), len: 12}, tdesc{addr: g.base + uint64(len(g.mem)) - 8, len: 64})
		}},
		{"tx descriptor writable", false, 0, func(g *packedGuest) {
			g.post(tdesc{addr: g.alloc(12), len: 12, flags: virtio.DescFWrite}, tdesc{addr: g.alloc(64), len: 64})
		}},
		{"rx descriptor read-only", true, 0, func(g *packedGuest) {
			g.post(tdesc{addr: g.alloc(2048), len: 2048})
		}},
		{"indirect without INDIRECT_DESC", false, virtio.FVersion1, func(g *packedGuest) {
			g.post(g.indirect(tdesc{addr: g.alloc(12), len: 12}, tdesc{addr: g.alloc(64), len: 64}))
		}},
		{"indirect with NEXT", false, 0, func(g *packedGuest) {
			d := g.indirect(tdesc{addr: g.alloc(12), len: 12})
			d.flags |= virtio.DescFNext
			g.postFlags(true, d, tdesc{addr: g.alloc(64), len: 64})
		}},
		{"nested indirect", false, 0, func(g *packedGuest) {
			inner := g.indirect(tdesc{addr: g.alloc(64), len: 64})
			g.post(g.indirect(tdesc{addr: g.alloc(12), len: 12}, inner))
		}},
		{"indirect table of odd length", false, 0, func(g *packedGuest) {
			d := g.indirect(tdesc{addr: g.alloc(12), len: 12})
			d.len = 20
			g.post(d)
		}},
		{"indirect table outside memory", false, 0, func(g *packedGuest) {
			g.post(tdesc{addr: 1 << 40, len: 32, flags: virtio.DescFIndirect})
		}},
		{"indirect table misaligned", false, 0, func(g *packedGuest) {
			d := g.indirect(tdesc{addr: g.alloc(12), len: 12}, tdesc{addr: g.alloc(64), len: 64})
			d.addr += 4
			d.len = 16
			g.post(d)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			feat := c.feat
			if feat == 0 {
				feat = testFeatures
			}
			g := newPackedGuest(t, 8, feat, c.rx)
			c.post(g)
			var err error
			if c.rx {
				err = g.q.Push(frameOf(100, 1))
			} else {
				_, err = g.q.Pop(make([]byte, 2048))
			}
			if !errors.Is(err, ErrBroken) {
				t.Fatalf("got %v, want ErrBroken", err)
			}
			g.q.Flush()
			if _, _, ok := g.used(); ok {
				t.Fatal("a broken chain was returned used")
			}
		})
	}
}

// The loop found while skipping a chain's tail (Push did not need it)
// breaks the device too, and writes nothing.
func TestPackedHostileTailLoop(t *testing.T) {
	g := newPackedGuest(t, 8, packedTestFeatures, true)
	ds := make([]tdesc, 8)
	for i := range ds {
		ds[i] = tdesc{addr: g.alloc(2048), len: 2048, flags: virtio.DescFWrite | virtio.DescFNext}
	}
	g.postFlags(true, ds...)
	g.q.Push(frameOf(60, 1))
	if !g.q.isBroken() {
		t.Fatal("a looping chain tail did not break the device")
	}
	g.q.Flush()
	if _, _, ok := g.used(); ok {
		t.Fatal("used descriptor written for a looping chain")
	}
}

// A guest flipping a consumed, unflushed slot back to available cannot
// make the device take more than a ring's worth per batch.
func TestPackedNoMoreThanARing(t *testing.T) {
	g := newPackedGuest(t, 8, packedTestFeatures, false)
	for i := 0; i < 8; i++ {
		g.sendFrame(nil, 1) // header only: malformed, dropped, one descriptor
	}
	dst := make([]byte, 100)
	if _, err := g.q.Pop(dst); !errors.Is(err, ErrEmpty) {
		t.Fatalf("pop: %v", err)
	}
	// Make slot 0 look available in the next wrap before anything is flushed.
	binary.LittleEndian.PutUint16(g.mem[14:], virtio.DescFUsed)
	if _, err := g.q.Pop(dst); !errors.Is(err, ErrEmpty) {
		t.Fatalf("pop of a slot not yet returned: %v, want ErrEmpty", err)
	}
	g.q.Flush()
	if ids, _ := g.usedAll(); len(ids) != 8 {
		t.Fatalf("%d used, want 8", len(ids))
	}
	if st := g.q.Stats(); st.Drops[DropMalformed] != 8 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPackedBudget(t *testing.T) {
	t.Run("zero-length rx chains", func(t *testing.T) {
		const num = 256
		g := newPackedGuest(t, num, packedTestFeatures|virtio.NetFMrgRxbuf, true)
		a := g.alloc(16)
		for i := 0; i < num; i++ {
			g.post(tdesc{addr: a, len: 0, flags: virtio.DescFWrite})
		}
		g.q.SetBudget(100)
		if err := g.q.Push(frameOf(60, 1)); !errors.Is(err, ErrBudget) {
			t.Fatalf("push: %v, want ErrBudget", err)
		}
		if g.q.Budget() != 0 {
			t.Fatalf("budget left %d", g.q.Budget())
		}
		g.q.Flush()
		if _, _, ok := g.used(); ok {
			t.Fatal("a rolled-back push returned buffers")
		}
		if st := g.q.st; st.Drops[DropBudget] != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("huge indirect table", func(t *testing.T) {
		g := newPackedGuest(t, 8, packedTestFeatures|virtio.NetFMrgRxbuf, true)
		const entries = virtio.MaxQueueSize
		tbl := g.alloc(entries * 16)
		buf := g.alloc(16)
		for i := 0; i < entries; i++ {
			writePackedDesc(g.at(tbl+uint64(16*i), 16), buf, 0, 0, virtio.DescFWrite)
		}
		g.post(tdesc{addr: tbl, len: entries * 16, flags: virtio.DescFIndirect})
		g.q.SetBudget(256)
		if err := g.q.Push(frameOf(60, 1)); !errors.Is(err, ErrBudget) || g.q.Budget() != 0 {
			t.Fatalf("push: %v, budget left %d", err, g.q.Budget())
		}
	})
	t.Run("pop retries then drops", func(t *testing.T) {
		g := newPackedGuest(t, 64, packedTestFeatures, false)
		f := frameOf(200, 3)
		g.sendFrame(f, 100) // 3 descriptors
		g.sendFrame(f, 100)
		dst := make([]byte, 2048)
		g.q.SetBudget(4)
		if n, err := g.q.Pop(dst); err != nil || n != len(f) {
			t.Fatalf("first pop: %d, %v", n, err)
		}
		if _, err := g.q.Pop(dst); !errors.Is(err, ErrBudget) {
			t.Fatalf("pop past the budget: %v", err)
		}
		g.q.SetBudget(4)
		if n, err := g.q.Pop(dst); err != nil || n != len(f) {
			t.Fatalf("retried pop: %d, %v", n, err)
		}
		g.sendFrame(frameOf(40*10, 5), 10) // 41 descriptors
		g.sendFrame(f, 100)
		g.q.SetBudget(8)
		if _, err := g.q.Pop(dst); !errors.Is(err, ErrBudget) {
			t.Fatalf("pop of an over-long chain: %v", err)
		}
		g.q.SetBudget(8)
		if n, err := g.q.Pop(dst); err != nil || n != len(f) {
			t.Fatalf("pop after the dropped chain: %d, %v", n, err)
		}
		g.q.Flush()
		if ids, _ := g.usedAll(); len(ids) != 4 {
			t.Fatalf("%d used, want 4", len(ids))
		}
		if st := g.q.Stats(); st.Frames != 3 || st.Drops[DropBudget] != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("zero touches nothing", func(t *testing.T) {
		g := newPackedGuest(t, 8, packedTestFeatures, false)
		g.post(tdesc{addr: 0xdead0000, len: 64})
		g.q.SetBudget(0)
		if _, err := g.q.Pop(make([]byte, 2048)); !errors.Is(err, ErrBudget) || g.q.isBroken() {
			t.Fatalf("pop with budget 0: %v", err)
		}
	})
}

func TestPackedNotifications(t *testing.T) {
	efd := eventfd(t)
	defer unix.Close(efd)
	var nt *notifier
	calls := func() uint64 {
		nt.callPending(nil)
		var b [8]byte
		if n, err := unix.Read(efd, b[:]); err != nil || n != 8 {
			return 0
		}
		return binary.NativeEndian.Uint64(b[:])
	}
	dst := make([]byte, 100)
	popN := func(g *packedGuest, n int) {
		for i := 0; i < n; i++ {
			g.sendFrame(frameOf(60, 1), 60)
			if _, err := g.q.Pop(dst); err != nil {
				t.Fatal(err)
			}
		}
		g.q.Flush()
		g.usedAll()
	}

	t.Run("flags", func(t *testing.T) {
		g := newPackedGuest(t, 8, packedTestFeatures, false)
		nt = attachCall(g.q, efd)
		popN(g, 2)
		if c := calls(); c != 1 {
			t.Fatalf("calls after a batch: %d, want 1", c)
		}
		g.setDriverEvent(0, virtio.EventFDisable)
		popN(g, 1)
		if c := calls(); c != 0 {
			t.Fatalf("calls with DISABLE: %d", c)
		}
		// DESC without EVENT_IDX is not ours to honour: call.
		g.setDriverEvent(0, virtio.EventFDesc)
		popN(g, 1)
		if c := calls(); c != 1 {
			t.Fatalf("calls with DESC but no EVENT_IDX: %d, want 1", c)
		}
		g.q.DisableNotify()
		if _, f := g.deviceEvent(); f != virtio.EventFDisable {
			t.Fatalf("device event flags %d after DisableNotify", f)
		}
		if pending, err := g.q.EnableNotify(); err != nil || pending {
			t.Fatalf("EnableNotify: %v %v", pending, err)
		}
		if _, f := g.deviceEvent(); f != virtio.EventFEnable {
			t.Fatalf("device event flags %d after EnableNotify", f)
		}
		g.sendFrame(frameOf(60, 1), 60)
		if pending, _ := g.q.EnableNotify(); !pending {
			t.Fatal("EnableNotify missed a posted frame")
		}
	})

	t.Run("event_idx", func(t *testing.T) {
		g := newPackedGuest(t, 8, packedTestFeatures|virtio.RingFEventIdx, false)
		nt = attachCall(g.q, efd)
		// Each frame is 2 descriptors. Ask for a call at slot 4, wrap 1.
		g.setDriverEvent(4|virtio.EventWrapBit, virtio.EventFDesc)
		popN(g, 2) // used 0 -> 4: slot 4 not reached
		if c := calls(); c != 0 {
			t.Fatalf("calls before the event: %d", c)
		}
		popN(g, 1) // 4 -> 6 crosses 4
		if c := calls(); c != 1 {
			t.Fatalf("calls crossing the event: %d, want 1", c)
		}
		popN(g, 1) // 6 -> 8 (slot 0, wrap 0): event behind
		if c := calls(); c != 0 {
			t.Fatalf("calls past the event: %d", c)
		}
		// Slot 2 in the next wrap (wrap counter 0).
		g.setDriverEvent(2, virtio.EventFDesc)
		popN(g, 2) // 8 -> 12 crosses slot 2 of wrap 0
		if c := calls(); c != 1 {
			t.Fatalf("calls crossing the event after a wrap: %d, want 1", c)
		}
		if pending, _ := g.q.EnableNotify(); pending {
			t.Fatal("pending on an empty ring")
		}
		// Kick wanted at our next position: slot 4, wrap 0.
		if ow, f := g.deviceEvent(); f != virtio.EventFDesc || ow != 4 {
			t.Fatalf("device event %#x flags %d, want off_wrap 4 and DESC", ow, f)
		}
	})
}

// GET_VRING_BASE of a packed ring reports the slot and wrap counter in
// both halves; SET_VRING_BASE resumes there.
func TestPackedVringBase(t *testing.T) {
	g := newPackedGuest(t, 8, packedTestFeatures, false)
	dst := make([]byte, 100)
	for i := 0; i < 5; i++ { // 10 descriptors: slot 2, wrap 0
		g.sendFrame(frameOf(60, 1), 60)
		g.q.Pop(dst)
		g.q.Flush()
		g.usedAll()
	}
	if b := g.q.vringBase(); b != 2 {
		t.Fatalf("vring base %#x, want 2 (slot 2, wrap 0)", b)
	}
	// Resume on a fresh queue from that base: the next frame is found.
	q := &Queue{index: 1, kickFD: -1, callFD: -1}
	if err := q.ringLayout(g.mt, g.features, 8, g.descAddr, g.drvAddr, g.devAdr); err != nil {
		t.Fatal(err)
	}
	if err := q.start(2); err != nil {
		t.Fatal(err)
	}
	g.q = q
	f := frameOf(80, 9)
	g.sendFrame(f, 80)
	if n, err := q.Pop(dst); err != nil || !bytes.Equal(dst[:n], f) {
		t.Fatalf("pop after resume: %d %v", n, err)
	}
	q.Flush()
	if ids, _ := g.usedAll(); len(ids) != 1 {
		t.Fatalf("%d used after resume", len(ids))
	}
	if err := q.start(9 | virtio.EventWrapBit); err == nil {
		t.Fatal("base slot beyond the ring accepted")
	}
}

// While logging, Flush marks the pages of the used descriptors it writes
// (the descriptor ring) and Enable/DisableNotify the device area's.
func TestPackedDirtyLog(t *testing.T) {
	mem := make([]byte, 64<<10)
	g := newPackedGuestMem(t, mem, 512, packedTestFeatures, false) // ring: 8 KiB, two pages
	// Front-end addresses differ from guest physical ones, as with QEMU:
	// the log must be marked by the latter.
	const uvaOff = 1 << 30
	mt := &memTable{regions: []memRegion{{gpa: g.base, size: uint64(len(mem)), uva: g.base + uvaOff, data: mem}}}
	g.q = &Queue{index: 1, kickFD: -1, callFD: -1}
	if err := g.q.ringLayout(mt, g.features, 512, g.descAddr+uvaOff, g.drvAddr+uvaOff, g.devAdr+uvaOff); err != nil {
		t.Fatal(err)
	}
	if err := g.q.start(virtio.EventWrapBit); err != nil {
		t.Fatal(err)
	}
	log := &dirtyLog{bits: make([]byte, 64)}
	g.q.usedLog = log
	g.q.bufLog = log
	g.sendFrame(frameOf(60, 1), 60)
	g.q.Pop(make([]byte, 100))
	g.q.Flush()
	pages := pagesMarked(log.bits)
	if len(pages) != 1 || pages[0] != testBase>>LogPageShift {
		t.Fatalf("pages marked by Flush: %#x, want the ring's first page %#x", pages, testBase>>LogPageShift)
	}
	clear(log.bits)
	g.q.DisableNotify()
	pages = pagesMarked(log.bits)
	if want := (testBase + uint64(g.devOff)) >> LogPageShift; len(pages) != 1 || pages[0] != want {
		t.Fatalf("pages marked by DisableNotify: %#x, want %#x", pages, want)
	}
}

func TestPackedZeroAllocs(t *testing.T) {
	g := newPackedGuest(t, 256, packedTestFeatures|virtio.NetFMrgRxbuf, true)
	f := frameOf(1514, 1)
	for i := 0; i < 256; i++ {
		g.postRX(2048)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := g.q.Push(f); err != nil {
			t.Fatal(err)
		}
		g.q.Flush()
		// The guest takes the used buffer and posts it again.
		id := binary.LittleEndian.Uint16(g.mem[g.descOff+16*g.usedPos+12:])
		if g.usedPos++; g.usedPos == g.num {
			g.usedPos, g.usedWrap = 0, !g.usedWrap
		}
		g.repost(id)
	})
	if allocs != 0 {
		t.Fatalf("Push+Flush: %v allocs per frame", allocs)
	}
	tx := newPackedGuest(t, 256, packedTestFeatures, false)
	for i := 0; i < 120; i++ { // two descriptors each
		tx.sendFrame(f, 2000)
	}
	dst := make([]byte, 2048)
	allocs = testing.AllocsPerRun(50, func() {
		if _, err := tx.q.Pop(dst); err != nil {
			t.Fatal(err)
		}
		tx.q.Flush()
	})
	if allocs != 0 {
		t.Fatalf("Pop+Flush: %v allocs per frame", allocs)
	}
}

// repost makes buffer id available again at the next slot.
func (g *packedGuest) repost(id uint16) {
	slot := g.mem[g.descOff+16*g.availPos:]
	writePackedDesc(slot, g.base+uint64(g.bufOff)-2048, 2048, id, 0)
	binary.LittleEndian.PutUint16(slot[14:], virtio.DescFWrite|g.availFlags())
	if g.availPos++; g.availPos == g.num {
		g.availPos, g.availWrap = 0, !g.availWrap
	}
}

// fuzzPackedSeeds are guest memories with valid packed rings (8 entries):
// TX frames (direct, chained, indirect) and RX buffers.
func fuzzPackedSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	tx := newPackedGuestMem(t, make([]byte, fuzzMemLen), 8, packedTestFeatures, false)
	tx.sendFrame(frameOf(60, 1), 60)
	tx.sendFrame(frameOf(300, 2), 100)
	tx.post(tx.indirect(tdesc{addr: tx.alloc(virtio.NetHdrLen), len: virtio.NetHdrLen}, tdesc{addr: tx.alloc(64), len: 64}))
	seeds = append(seeds, tx.mem[:tx.bufOff])
	rx := newPackedGuestMem(t, make([]byte, fuzzMemLen), 8, packedTestFeatures, true)
	rx.postRX(1024)
	rx.postRX(512)
	rx.post(tdesc{addr: rx.alloc(6), len: 6, flags: virtio.DescFWrite}, tdesc{addr: rx.alloc(256), len: 256, flags: virtio.DescFWrite})
	rx.post(rx.indirect(tdesc{addr: rx.alloc(300), len: 300, flags: virtio.DescFWrite}))
	seeds = append(seeds, rx.mem[:rx.bufOff])
	return seeds
}

// FuzzPackedRing runs the device side over arbitrary guest memory holding
// a packed ring, its event suppression areas and buffers: no input may
// panic it or make it write outside guest memory, and a failure must be
// one of the queue's errors.
func FuzzPackedRing(f *testing.F) {
	for _, s := range fuzzPackedSeeds(f) {
		f.Add(s, false, false)
		f.Add(s, true, true)
	}
	f.Fuzz(runFuzzPacked)
}

func runFuzzPacked(t *testing.T, ring []byte, rx, mrg bool) {
	mem := make([]byte, fuzzMemLen)
	copy(mem, ring)
	feat := uint64(packedTestFeatures | virtio.RingFEventIdx)
	if mrg {
		feat |= virtio.NetFMrgRxbuf
	}
	g := layoutPacked(t, mem, testBase, 8)
	mt := &memTable{regions: []memRegion{{gpa: g.base, size: uint64(len(mem)), uva: g.base, data: mem}}}
	q := &Queue{index: 1, kickFD: -1, callFD: -1}
	if rx {
		q.index = 0
	}
	if err := q.ringLayout(mt, feat, 8, g.descAddr, g.drvAddr, g.devAdr); err != nil {
		t.Fatal(err)
	}
	if err := q.start(virtio.EventWrapBit); err != nil {
		t.Fatal(err)
	}
	q.usedLog = &dirtyLog{bits: make([]byte, 64)} // log every used write too
	q.SetBudget(64)
	dst := make([]byte, 1600)
	frame := frameOf(700, 3)
	for i := 0; i < 20; i++ {
		var err error
		if rx {
			err = q.Push(frame)
		} else {
			_, err = q.Pop(dst)
		}
		q.Flush()
		switch {
		case err == nil, errors.Is(err, ErrNoBuffers), errors.Is(err, ErrTooBig):
		case errors.Is(err, ErrBudget):
			q.SetBudget(64)
		case errors.Is(err, ErrEmpty), errors.Is(err, ErrBroken):
			return
		default:
			t.Fatalf("unexpected error %v", err)
		}
		if q.usedIdx != q.usedPub {
			t.Fatalf("Flush left used descriptors %d..%d unwritten", q.usedPub, q.usedIdx)
		}
		q.EnableNotify()
		q.DisableNotify()
	}
}

// Packed rings and IN_ORDER are offered by default and can be withdrawn.
func TestPackedOffered(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want uint64
	}{
		{Config{}, virtio.FRingPacked | virtio.FInOrder},
		{Config{NoPackedRing: true}, virtio.FInOrder},
		{Config{NoInOrder: true}, virtio.FRingPacked},
		{Config{NoPackedRing: true, NoInOrder: true}, 0},
	} {
		p, err := newPort("unused.sock", "server", c.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.offered & (virtio.FRingPacked | virtio.FInOrder); got != c.want {
			t.Errorf("%+v: offered %#x, want %#x", c.cfg, got, c.want)
		}
	}
}

// SET_VRING_BASE of a packed ring takes the used half in bits 16-31;
// GET_VRING_BASE stops the ring and reports the slot and wrap counter in
// both halves. Without RING_PACKED a base beyond 16 bits is refused.
func TestPackedVringBaseMessages(t *testing.T) {
	mem := make([]byte, fuzzMemLen)
	g := layoutPacked(t, mem, testBase, 8)
	h := newRecHandler()
	p, err := newPort("unused.sock", "server", Config{MAC: []byte{2, 0, 0, 0, 0, 1}, Handler: h, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.resetDevice()
	p.dev.mem = orMem(nil, mem)
	do := func(req Request, pl []byte) ([]byte, error) {
		m := message{hdr: Header{Request: req, Flags: FlagVersion, Size: uint32(len(pl))}, payload: pl}
		return p.handle(&m)
	}
	split := uint64(virtio.FVersion1)
	if _, err := do(ReqSetFeatures, u64p(split)); err != nil {
		t.Fatal(err)
	}
	if _, err := do(ReqSetVringBase, statep(1, 0x80008000)); err == nil {
		t.Fatal("a split ring took a base beyond 16 bits")
	}
	if _, err := do(ReqSetFeatures, u64p(split|virtio.FRingPacked)); err != nil {
		t.Fatal(err)
	}
	// Slot 3, wrap counter 0, in both halves (QEMU sends the used half).
	for _, m := range []struct {
		req Request
		pl  []byte
	}{
		{ReqSetVringNum, statep(1, 8)},
		{ReqSetVringBase, statep(1, 3|3<<16)},
		{ReqSetVringAddr, addrp(1, g.descAddr, g.drvAddr, g.devAdr)},
		{ReqSetVringKick, u64p(1 | VringNoFD)},
	} {
		if _, err := do(m.req, m.pl); err != nil {
			t.Fatalf("%v: %v", m.req, err)
		}
	}
	q := recv(t, h.ready, "QueueReady")
	if q.lastAvail != 8+3 || q.vringBase() != 3 {
		t.Fatalf("started at position %d (base %#x), want slot 3 of wrap 0", q.lastAvail, q.vringBase())
	}
	// The guest posts a one-descriptor frame at slot 3 (wrap 0), the
	// worker pops it: the base moves to slot 4.
	writePackedDesc(mem[16*3:], g.base+4096, virtio.NetHdrLen, 0, virtio.DescFUsed)
	if _, err := q.Pop(make([]byte, 64)); !errors.Is(err, ErrEmpty) {
		t.Fatalf("pop: %v", err)
	}
	h.drain() // the test is done with the queue: ack its stop
	reply, err := do(ReqGetVringBase, statep(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	st, _ := DecodeVringState(reply)
	if st.Num != 4|4<<16 {
		t.Fatalf("GET_VRING_BASE %#x, want %#x", st.Num, 4|4<<16)
	}
}
