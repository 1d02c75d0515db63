package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
)

// The ring tests are written once and run on both ring layouts (subtests
// split and packed) through ringGuest, the driver side of a virtqueue on a
// Go byte slice. What only one layout has (split: avail flags and
// used_event; packed: wrap counters, event suppression areas) is checked
// in a layout-specific branch or in packed_test.go.

// ringGuest is the driver side of one test virtqueue: testGuest (split)
// or packedGuest (packed).
type ringGuest interface {
	queue() *Queue
	alloc(n int) uint64
	at(addr uint64, n int) []byte
	memUsed() []byte
	// post makes a chain available (NEXT linking all but the last
	// descriptor) and returns its id: the head descriptor (split) or the
	// buffer id (packed).
	post(ds ...tdesc) uint16
	sendFrame(frame []byte, split int) uint16
	postRX(n int) uint64
	// indirect writes an indirect table of ds and returns the descriptor
	// that points to it.
	indirect(ds ...tdesc) tdesc
	// usedAll returns the used buffers the device published since the
	// last call, in order.
	usedAll() (ids []uint16, lens []uint32)
	// free is the number of ring descriptors the driver may still fill.
	free() int
	// recycle takes the next used buffer and makes it available again
	// as it was, without allocating (benchmarks, zero-alloc tests).
	recycle()
	// driverRings is a copy of the ring memory the device must not
	// change until it publishes used buffers.
	driverRings() []byte
	// suppressCalls asks the device not to call (split: avail flag
	// NO_INTERRUPT; packed: driver event DISABLE).
	suppressCalls()
	// kickFlags reads the device's notification request (split: used
	// flags; packed: device event flags).
	kickFlags() uint16
}

// layout is one ring layout in the table the tests run over.
type layout struct {
	name string
	// guestMem builds a driver-side ring of num entries at testBase over
	// mem and the started device Queue over it.
	guestMem func(t testing.TB, mem []byte, num int, features uint64, rx bool) ringGuest
	// kickOn and kickOff are kickFlags after EnableNotify and DisableNotify.
	kickOn, kickOff uint16
}

var (
	splitLayout = layout{name: "split", kickOn: 0, kickOff: virtio.UsedFNoNotify,
		guestMem: func(t testing.TB, mem []byte, num int, features uint64, rx bool) ringGuest {
			return newTestGuestMem(t, mem, num, features, rx)
		}}
	packedLayout = layout{name: "packed", kickOn: virtio.EventFEnable, kickOff: virtio.EventFDisable,
		guestMem: func(t testing.TB, mem []byte, num int, features uint64, rx bool) ringGuest {
			return newPackedGuestMem(t, mem, num, features, rx)
		}}
	layouts = []layout{splitLayout, packedLayout}
)

// guest builds a ring of num entries over a fresh 1 MiB of guest memory.
func (l layout) guest(t testing.TB, num int, features uint64, rx bool) ringGuest {
	t.Helper()
	return l.guestMem(t, make([]byte, 1<<20), num, features, rx)
}

// forLayouts runs f as a subtest for each ring layout.
func forLayouts(t *testing.T, f func(t *testing.T, l layout)) {
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) { f(t, l) })
	}
}

// ringMem is what both test guests share: guest memory on a Go byte
// slice, where guest physical and front-end addresses are the same (base
// + offset, as with DPDK's virtio_user), a bump allocator for buffers and
// the device's Queue over the ring.
type ringMem struct {
	t        testing.TB
	mem      []byte
	base     uint64
	num      int
	bufOff   int            // next free byte for buffers
	chainLen map[uint16]int // ring descriptors of each buffer in flight, by id
	features uint64
	q        *Queue
	mt       *memTable
}

const testBase = 0x100000

type tdesc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func newRingMem(t testing.TB, mem []byte, base uint64, num int) ringMem {
	return ringMem{t: t, mem: mem, base: base, num: num, chainLen: map[uint16]int{}}
}

// sameMemTable is a one-region memory table over mem at base, front-end
// address = guest physical address.
func sameMemTable(mem []byte, base uint64) *memTable {
	return &memTable{regions: []memRegion{{gpa: base, size: uint64(len(mem)), uva: base, data: mem}}}
}

// newTestQueue lays a device queue out over the ring at desc, drv, dev
// and starts it at base.
func newTestQueue(mt *memTable, features uint64, num int, rx bool, base uint16, desc, drv, dev uint64) (*Queue, error) {
	q := &Queue{index: 1, kickFD: -1, callFD: -1}
	if rx {
		q.index = 0
	}
	if err := q.ringLayout(mt, features, uint32(num), desc, drv, dev); err != nil {
		return nil, err
	}
	return q, q.start(base)
}

// attach makes the started device queue over the guest's ring.
func (g *ringMem) attach(features uint64, rx bool, base uint16, desc, drv, dev uint64) {
	g.t.Helper()
	g.features = features
	g.mt = sameMemTable(g.mem, g.base)
	q, err := newTestQueue(g.mt, features, g.num, rx, base, desc, drv, dev)
	if err != nil {
		g.t.Fatalf("ring layout: %v", err)
	}
	g.q = q
}

func (g *ringMem) queue() *Queue { return g.q }

// alloc reserves n bytes of guest memory and returns their address.
func (g *ringMem) alloc(n int) uint64 {
	a := g.base + uint64(g.bufOff)
	g.bufOff += (n + 15) &^ 15
	if g.bufOff > len(g.mem) {
		g.t.Fatal("test guest out of memory")
	}
	return a
}

func (g *ringMem) at(addr uint64, n int) []byte { return g.mem[addr-g.base:][:n] }

// memUsed is the guest memory the rings and buffers take so far.
func (g *ringMem) memUsed() []byte { return g.mem[:g.bufOff] }

func (g *ringMem) free() int {
	n := 0
	for _, l := range g.chainLen {
		n += l
	}
	return g.num - n
}

// takeUsed forgets buffer id, which the device returned, and returns the
// number of ring descriptors it held.
func (g *ringMem) takeUsed(id uint16) (descs int) {
	n, known := g.chainLen[id]
	if !known {
		g.t.Fatalf("used id %d not in flight", id)
	}
	delete(g.chainLen, id)
	return n
}

// sendFrame posts a TX frame: a header descriptor and the frame split
// into pieces of at most split bytes.
func sendFrame(g ringGuest, frame []byte, split int) uint16 {
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

// postRX posts one writable buffer of n bytes and returns its address.
func postRX(g ringGuest, n int) uint64 {
	a := g.alloc(n)
	g.post(tdesc{addr: a, len: uint32(n), flags: virtio.DescFWrite})
	return a
}

// testGuest is a driver-side split ring.
type testGuest struct {
	ringMem
	descOff, availOff, usedOff int
	availIdx                   uint16
	nextDesc                   uint16
	usedSeen                   uint16
}

func newTestGuest(t testing.TB, num int, features uint64, rx bool) *testGuest {
	t.Helper()
	return newTestGuestMem(t, make([]byte, 1<<20), num, features, rx)
}

// layoutGuest places the rings of a num-entry queue at the start of mem
// (guest address base) and buffers after them; it makes no Queue.
func layoutGuest(t testing.TB, mem []byte, base uint64, num int) *testGuest {
	g := &testGuest{ringMem: newRingMem(t, mem, base, num)}
	g.descOff = 0
	g.availOff = virtio.DescTableSize(num)
	g.usedOff = (g.availOff + virtio.AvailRingSize(num) + 3) &^ 3
	g.bufOff = (g.usedOff + virtio.UsedRingSize(num) + 63) &^ 63
	return g
}

func (g *testGuest) addrs() (desc, avail, used uint64) {
	return g.base + uint64(g.descOff), g.base + uint64(g.availOff), g.base + uint64(g.usedOff)
}

func newTestGuestMem(t testing.TB, mem []byte, num int, features uint64, rx bool) *testGuest {
	t.Helper()
	g := layoutGuest(t, mem, testBase, num)
	d, a, u := g.addrs()
	g.attach(features, rx, 0, d, a, u)
	return g
}

func (g *testGuest) writeDesc(table []byte, i int, d tdesc) {
	b := table[i*16:]
	binary.LittleEndian.PutUint64(b[0:], d.addr)
	binary.LittleEndian.PutUint32(b[8:], d.len)
	binary.LittleEndian.PutUint16(b[12:], d.flags)
	binary.LittleEndian.PutUint16(b[14:], d.next)
}

// post writes a chain into consecutive ring descriptors (linking them
// with NEXT unless the caller set flags itself) and publishes its head.
func (g *testGuest) post(ds ...tdesc) uint16 {
	head := g.nextDesc
	table := g.mem[g.descOff:]
	for i, d := range ds {
		idx := int(g.nextDesc) % g.num
		if i < len(ds)-1 && d.flags&virtio.DescFNext == 0 && d.next == 0 {
			d.flags |= virtio.DescFNext
			d.next = uint16((idx + 1) % g.num)
		}
		g.writeDesc(table, idx, d)
		g.nextDesc = uint16((idx + 1) % g.num)
	}
	g.chainLen[head%uint16(g.num)] = len(ds)
	g.publish(head % uint16(g.num))
	return head
}

func (g *testGuest) publish(head uint16) {
	binary.LittleEndian.PutUint16(g.mem[g.availOff+4+2*(int(g.availIdx)%g.num):], head)
	g.availIdx++
	binary.LittleEndian.PutUint16(g.mem[g.availOff+2:], g.availIdx)
}

func (g *testGuest) usedIdx() uint16 { return binary.LittleEndian.Uint16(g.mem[g.usedOff+2:]) }

func (g *testGuest) usedElem(i uint16) (id, n uint32) {
	o := g.usedOff + 4 + 8*(int(i)%g.num)
	return binary.LittleEndian.Uint32(g.mem[o:]), binary.LittleEndian.Uint32(g.mem[o+4:])
}

func (g *testGuest) usedAll() (ids []uint16, lens []uint32) {
	for ; g.usedSeen != g.usedIdx(); g.usedSeen++ {
		id, n := g.usedElem(g.usedSeen)
		g.takeUsed(uint16(id))
		ids, lens = append(ids, uint16(id)), append(lens, n)
	}
	return ids, lens
}

// recycle publishes the next used head again: its descriptors are still
// in the table as the guest wrote them.
func (g *testGuest) recycle() {
	id, _ := g.usedElem(g.usedSeen)
	g.usedSeen++
	g.publish(uint16(id))
}

func (g *testGuest) sendFrame(frame []byte, split int) uint16 { return sendFrame(g, frame, split) }
func (g *testGuest) postRX(n int) uint64                      { return postRX(g, n) }

// indirect writes a split indirect table, linked with NEXT.
func (g *testGuest) indirect(ds ...tdesc) tdesc {
	n := virtio.DescSize * len(ds)
	tbl := g.alloc(n)
	for i, d := range ds {
		if i < len(ds)-1 {
			d.flags |= virtio.DescFNext
			if d.next == 0 {
				d.next = uint16(i + 1)
			}
		}
		g.writeDesc(g.at(tbl, n), i, d)
	}
	return tdesc{addr: tbl, len: uint32(n), flags: virtio.DescFIndirect}
}

// driverRings: the descriptor table, the avail ring and the used index
// (the device may write used elements ahead of publishing them).
func (g *testGuest) driverRings() []byte {
	return append(append([]byte{}, g.mem[g.descOff:g.usedOff]...), g.mem[g.usedOff:g.usedOff+4]...)
}

func (g *testGuest) suppressCalls() {
	binary.LittleEndian.PutUint16(g.mem[g.availOff:], virtio.AvailFNoInterrupt)
}

func (g *testGuest) kickFlags() uint16 { return binary.LittleEndian.Uint16(g.mem[g.usedOff:]) }

func frameOf(n int, seed byte) []byte {
	f := make([]byte, n)
	for i := range f {
		f[i] = seed + byte(i*7)
	}
	return f
}

const testFeatures = virtio.FVersion1 | virtio.RingFIndirectDesc

// wantUsedLens fails unless the guest's next used buffers have exactly
// the lengths want; it returns their ids.
func wantUsedLens(t *testing.T, g ringGuest, want ...uint32) []uint16 {
	t.Helper()
	ids, lens := g.usedAll()
	if len(lens) != len(want) {
		t.Fatalf("used lens %v, want %v", lens, want)
	}
	for i := range want {
		if lens[i] != want[i] {
			t.Fatalf("used lens %v, want %v", lens, want)
		}
	}
	return ids
}

func TestPopFrames(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures, false)
		q := g.queue()
		f1, f2, f3 := frameOf(60, 1), frameOf(1514, 2), frameOf(200, 3)
		id1 := g.sendFrame(f1, 1000)
		id2 := g.sendFrame(f2, 500) // header + 4 pieces: 5 ring descriptors
		// An indirect chain: header and frame in a table of two
		// descriptors (NEXT in a packed table means nothing; set anyway).
		h, d := g.alloc(virtio.NetHdrLen), g.alloc(len(f3))
		copy(g.at(d, len(f3)), f3)
		id3 := g.post(g.indirect(tdesc{addr: h, len: virtio.NetHdrLen, flags: virtio.DescFNext}, tdesc{addr: d, len: uint32(len(f3))}))

		dst := make([]byte, 2048)
		for i, want := range [][]byte{f1, f2, f3} {
			n, err := q.Pop(dst)
			if err != nil {
				t.Fatalf("pop %d: %v", i, err)
			}
			if !bytes.Equal(dst[:n], want) {
				t.Fatalf("pop %d: got %d bytes, want %d (content differs: %v)", i, n, len(want), n == len(want))
			}
		}
		if _, err := q.Pop(dst); !errors.Is(err, ErrEmpty) {
			t.Fatalf("pop on empty ring: %v, want ErrEmpty", err)
		}
		if ids, _ := g.usedAll(); len(ids) != 0 {
			t.Fatalf("used %v published before Flush", ids)
		}
		q.Flush()
		ids := wantUsedLens(t, g, 0, 0, 0) // TX: nothing written
		if ids[0] != id1 || ids[1] != id2 || ids[2] != id3 {
			t.Fatalf("used ids %v, want [%d %d %d]", ids, id1, id2, id3)
		}
		if st := q.Stats(); st.Frames != 3 || st.Bytes != uint64(len(f1)+len(f2)+len(f3)) {
			t.Fatalf("stats %+v", st)
		}
		// 2+5+1 descriptors: the packed ring wrapped; the base says slot 0,
		// wrap 0. The split base is the avail index.
		want := map[string]uint16{"split": 3, "packed": 0}[l.name]
		if b := q.vringBase(); b != want {
			t.Fatalf("vring base %#x after 3 chains of 8 descriptors, want %#x", b, want)
		}
	})
}

func TestPopTooBigAndMalformed(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures, false)
		g.sendFrame(frameOf(3000, 1), 1500)
		g.post(tdesc{addr: g.alloc(8), len: 8}) // shorter than the header
		ok := frameOf(100, 9)
		g.sendFrame(ok, 100)
		dst := make([]byte, 2048)
		n, err := g.queue().Pop(dst)
		if err != nil || !bytes.Equal(dst[:n], ok) {
			t.Fatalf("pop: n=%d err=%v, want the 100-byte frame after two drops", n, err)
		}
		g.queue().Flush()
		st := g.queue().Stats()
		if st.Drops[DropTooBig] != 1 || st.Drops[DropMalformed] != 1 || st.Frames != 1 {
			t.Fatalf("stats %+v", st)
		}
		if ids, _ := g.usedAll(); len(ids) != 3 {
			t.Fatalf("%d used, want 3 (dropped chains are returned too)", len(ids))
		}
	})
}

// Frames of varying chain lengths through a small ring, over many wraps,
// with TX drops in between: every used id comes back once, in order.
func TestPopWrapAround(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures, false)
		q := g.queue()
		dst := make([]byte, 1600)
		var posted, got []uint16
		for round := 0; round < 200; round++ {
			split := []int{1000, 30, 20}[round%3] // 2, 3 or 4 descriptors
			f := frameOf(60, byte(round))
			if g.free() < 4 {
				q.Flush()
				ids, _ := g.usedAll()
				got = append(got, ids...)
			}
			posted = append(posted, g.sendFrame(f, split))
			n, err := q.Pop(dst)
			if err != nil || !bytes.Equal(dst[:n], f) {
				t.Fatalf("round %d: pop %d bytes, %v", round, n, err)
			}
		}
		q.Flush()
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
	})
}

func TestPushSingleBuffer(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures, true)
		a := g.postRX(2048)
		f := frameOf(1514, 5)
		copy(g.at(a, 12), bytes.Repeat([]byte{0xee}, 12)) // stale header bytes must be zeroed
		if err := g.queue().Push(f); err != nil {
			t.Fatal(err)
		}
		g.queue().Flush()
		wantUsedLens(t, g, uint32(len(f)+virtio.NetHdrLen))
		hdr := g.at(a, virtio.NetHdrLen)
		want := make([]byte, virtio.NetHdrLen)
		want[10] = 1 // num_buffers
		if !bytes.Equal(hdr, want) {
			t.Fatalf("header %x, want %x", hdr, want)
		}
		if !bytes.Equal(g.at(a+virtio.NetHdrLen, len(f)), f) {
			t.Fatal("frame content differs")
		}
	})
}

func TestPushMergeable(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures|virtio.NetFMrgRxbuf, true)
		q := g.queue()
		a1, a2, a3 := g.postRX(1024), g.postRX(1024), g.postRX(1024)
		f := frameOf(2500, 7)
		if err := q.Push(f); err != nil {
			t.Fatal(err)
		}
		q.Flush()
		lens := []uint32{1024, 1024, uint32(2500 + 12 - 2048)}
		wantUsedLens(t, g, lens...)
		if nb := binary.LittleEndian.Uint16(g.at(a1+10, 2)); nb != 3 {
			t.Fatalf("num_buffers %d, want 3", nb)
		}
		var got []byte
		for i, a := range []uint64{a1, a2, a3} {
			got = append(got, g.at(a, int(lens[i]))...)
		}
		if !bytes.Equal(got[12:], f) {
			t.Fatal("merged frame content differs")
		}
		// Not enough buffers left for another: nothing is consumed, and
		// the rollback leaves the guest's rings as they were (nothing
		// written in place), so the next frame gets the buffer.
		b := g.postRX(100)
		snapshot := g.driverRings()
		if err := q.Push(f); !errors.Is(err, ErrNoBuffers) {
			t.Fatalf("push without room: %v, want ErrNoBuffers", err)
		}
		q.Flush()
		if !bytes.Equal(snapshot, g.driverRings()) {
			t.Fatal("a rolled-back push wrote into the guest's rings")
		}
		small := frameOf(60, 1)
		if err := q.Push(small); err != nil {
			t.Fatalf("small frame after rollback: %v", err)
		}
		q.Flush()
		wantUsedLens(t, g, 72)
		if !bytes.Equal(g.at(b+12, 60), small) {
			t.Fatal("small frame content differs")
		}
		if st := q.Stats(); st.Frames != 2 || st.Drops[DropNoBuffers] != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestPushNoMergeTooBig(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures, true)
		g.postRX(1000)
		if err := g.queue().Push(frameOf(1514, 1)); !errors.Is(err, ErrTooBig) {
			t.Fatalf("push: %v, want ErrTooBig", err)
		}
		if err := g.queue().Push(frameOf(500, 1)); err != nil {
			t.Fatalf("push of a fitting frame after rollback: %v", err)
		}
		if err := g.queue().Push(frameOf(60, 1)); !errors.Is(err, ErrNoBuffers) {
			t.Fatalf("push with no buffer: %v", err)
		}
	})
}

func TestPushChainedBufferHeaderSplit(t *testing.T) {
	// A chain whose first descriptor is smaller than the header.
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures|virtio.NetFMrgRxbuf, true)
		a, b := g.alloc(5), g.alloc(2048)
		g.post(tdesc{addr: a, len: 5, flags: virtio.DescFWrite}, tdesc{addr: b, len: 2048, flags: virtio.DescFWrite})
		f := frameOf(100, 3)
		if err := g.queue().Push(f); err != nil {
			t.Fatal(err)
		}
		if nb := binary.LittleEndian.Uint16(g.at(b+5, 2)); nb != 1 {
			t.Fatalf("num_buffers %d at split header", nb)
		}
		if !bytes.Equal(g.at(b+7, 100), f) {
			t.Fatal("content differs")
		}
	})
}

// A chain longer than the frame needs: Push skips its tail in the ring,
// the used buffer covers the whole chain and the next chain is found.
func TestPushSkipsChainTail(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures, true)
		a := g.alloc(2048)
		id := g.post(tdesc{addr: a, len: 2048, flags: virtio.DescFWrite},
			tdesc{addr: g.alloc(64), len: 64, flags: virtio.DescFWrite},
			tdesc{addr: g.alloc(64), len: 64, flags: virtio.DescFWrite})
		b := g.postRX(2048)
		f1, f2 := frameOf(100, 1), frameOf(200, 2)
		if err := g.queue().Push(f1); err != nil {
			t.Fatal(err)
		}
		if err := g.queue().Push(f2); err != nil {
			t.Fatal(err)
		}
		g.queue().Flush()
		if ids := wantUsedLens(t, g, 112, 212); ids[0] != id {
			t.Fatalf("used ids %v, want %d first", ids, id)
		}
		if !bytes.Equal(g.at(a+12, 100), f1) || !bytes.Equal(g.at(b+12, 200), f2) {
			t.Fatal("content differs")
		}
	})
}

func TestNotifications(t *testing.T) {
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	var nt *notifier // run by hand: the test plays the notifier goroutine
	calls := func() uint64 {
		nt.callPending(nil)
		var b [8]byte
		if n, err := unix.Read(efd, b[:]); err != nil || n != 8 {
			return 0
		}
		return binary.NativeEndian.Uint64(b[:])
	}
	dst := make([]byte, 100)
	// popN: the guest sends n frames of two descriptors, the device pops
	// them and flushes, the guest takes them back.
	popN := func(t *testing.T, g ringGuest, n int) {
		for i := 0; i < n; i++ {
			g.sendFrame(frameOf(60, 1), 60)
			if _, err := g.queue().Pop(dst); err != nil {
				t.Fatal(err)
			}
		}
		g.queue().Flush()
		g.usedAll()
	}

	forLayouts(t, func(t *testing.T, l layout) {
		t.Run("flags", func(t *testing.T) {
			g := l.guest(t, 8, testFeatures, false)
			q := g.queue()
			nt = attachCall(q, efd)
			popN(t, g, 2)
			if c := calls(); c != 1 {
				t.Fatalf("calls after a batch: %d, want 1", c)
			}
			g.suppressCalls()
			popN(t, g, 1)
			if c := calls(); c != 0 {
				t.Fatalf("calls with calls suppressed: %d", c)
			}
			q.Flush() // nothing new: no publish, no call
			if c := calls(); c != 0 {
				t.Fatalf("calls after an empty Flush: %d", c)
			}
			if pg, ok := g.(*packedGuest); ok {
				// DESC without EVENT_IDX is not ours to honour: call.
				pg.setDriverEvent(0, virtio.EventFDesc)
				popN(t, g, 1)
				if c := calls(); c != 1 {
					t.Fatalf("calls with DESC but no EVENT_IDX: %d, want 1", c)
				}
			}
			q.DisableNotify()
			if f := g.kickFlags(); f != l.kickOff {
				t.Fatalf("kick flags %d after DisableNotify, want %d", f, l.kickOff)
			}
			if pending, err := q.EnableNotify(); err != nil || pending {
				t.Fatalf("EnableNotify: %v %v", pending, err)
			}
			if f := g.kickFlags(); f != l.kickOn {
				t.Fatalf("kick flags %d after EnableNotify, want %d", f, l.kickOn)
			}
			if ids, _ := g.usedAll(); len(ids) != 0 {
				t.Fatalf("used %v published by notify toggling", ids)
			}
			g.sendFrame(frameOf(60, 1), 60)
			if pending, _ := q.EnableNotify(); !pending {
				t.Fatal("EnableNotify missed a posted frame")
			}
		})

		// EVENT_IDX is laid out differently on each layout.
		t.Run("event_idx", func(t *testing.T) {
			g := l.guest(t, 8, testFeatures|virtio.RingFEventIdx, false)
			nt = attachCall(g.queue(), efd)
			switch g := g.(type) {
			case *testGuest:
				splitEventIdx(t, g, func(n int) { popN(t, g, n) }, calls)
			case *packedGuest:
				packedEventIdx(t, g, func(n int) { popN(t, g, n) }, calls)
			}
		})
	})
}

func splitEventIdx(t *testing.T, g *testGuest, popN func(int), calls func() uint64) {
	// used_event follows the avail ring of 8; avail_event the used ring.
	binary.LittleEndian.PutUint16(g.mem[g.availOff+4+2*8:], 2) // notify when used idx passes 2
	popN(2)                                                    // used 0→2: event 2 not crossed
	if c := calls(); c != 0 {
		t.Fatalf("calls before used_event: %d", c)
	}
	popN(1) // 2→3 crosses 2
	if c := calls(); c != 1 {
		t.Fatalf("calls crossing used_event: %d, want 1", c)
	}
	if pending, _ := g.q.EnableNotify(); pending {
		t.Fatal("pending on an empty ring")
	}
	if ae := binary.LittleEndian.Uint16(g.mem[g.usedOff+4+8*8:]); ae != 3 {
		t.Fatalf("avail_event %d, want 3", ae)
	}
}

func TestZeroAllocs(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 256, testFeatures|virtio.NetFMrgRxbuf, true)
		f := frameOf(1514, 1)
		for i := 0; i < 256; i++ {
			g.postRX(2048)
		}
		allocs := testing.AllocsPerRun(100, func() {
			if err := g.queue().Push(f); err != nil {
				t.Fatal(err)
			}
			g.queue().Flush()
			g.recycle() // the guest takes the used buffer and posts it again
		})
		if allocs != 0 {
			t.Fatalf("Push+Flush: %v allocs per frame", allocs)
		}
		// Flush asks for a call on every batch here: the notifier's wake-up
		// must not allocate either.
		efd := eventfd(t)
		defer unix.Close(efd)
		tx := l.guest(t, 256, testFeatures, false)
		nt := attachCall(tx.queue(), efd)
		nt.start()
		defer nt.stop()
		for i := 0; i < 120; i++ { // two descriptors each; AllocsPerRun pops 101
			tx.sendFrame(f, 2000)
		}
		dst := make([]byte, 2048)
		allocs = testing.AllocsPerRun(100, func() {
			if _, err := tx.queue().Pop(dst); err != nil {
				t.Fatal(err)
			}
			tx.queue().Flush()
		})
		if allocs != 0 {
			t.Fatalf("Pop+Flush: %v allocs per frame", allocs)
		}
	})
}
