package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
)

// testGuest is a driver-side split ring on a Go byte slice: the "guest
// memory" of the unit tests. Guest physical and front-end addresses are
// the same (base + offset), as with DPDK's virtio_user.
type testGuest struct {
	t                          testing.TB
	mem                        []byte
	base                       uint64
	num                        int
	descOff, availOff, usedOff int
	bufOff                     int // next free byte for buffers
	availIdx                   uint16
	nextDesc                   uint16
	usedSeen                   uint16
	features                   uint64
	q                          *Queue
}

const testBase = 0x100000

type tdesc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func newTestGuest(t testing.TB, num int, features uint64, rx bool) *testGuest {
	t.Helper()
	return newTestGuestMem(t, make([]byte, 1<<20), num, features, rx)
}

// layoutGuest places the rings of a num-entry queue at the start of mem
// (guest address base) and buffers after them; it makes no Queue.
func layoutGuest(t testing.TB, mem []byte, base uint64, num int) *testGuest {
	g := &testGuest{t: t, mem: mem, base: base, num: num}
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
	g.features = features
	mt := &memTable{regions: []memRegion{{gpa: g.base, size: uint64(len(g.mem)), uva: g.base, data: g.mem}}}
	idx := 1
	if rx {
		idx = 0
	}
	g.q = &Queue{index: idx, kickFD: -1, callFD: -1}
	d, a, u := g.addrs()
	if err := g.q.ringLayout(mt, features, uint32(num), d, a, u); err != nil {
		t.Fatalf("ring layout: %v", err)
	}
	g.q.start(0)
	return g
}

// alloc reserves n bytes of guest memory and returns their address.
func (g *testGuest) alloc(n int) uint64 {
	a := g.base + uint64(g.bufOff)
	g.bufOff += (n + 15) &^ 15
	if g.bufOff > len(g.mem) {
		g.t.Fatal("test guest out of memory")
	}
	return a
}

func (g *testGuest) at(addr uint64, n int) []byte { return g.mem[addr-g.base:][:n] }

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

// sendFrame posts a TX frame: a header descriptor and the frame split
// into pieces of at most split bytes.
func (g *testGuest) sendFrame(frame []byte, split int) uint16 {
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
func (g *testGuest) postRX(n int) uint64 {
	a := g.alloc(n)
	g.post(tdesc{addr: a, len: uint32(n), flags: virtio.DescFWrite})
	return a
}

func frameOf(n int, seed byte) []byte {
	f := make([]byte, n)
	for i := range f {
		f[i] = seed + byte(i*7)
	}
	return f
}

const testFeatures = virtio.FVersion1 | virtio.RingFIndirectDesc

func TestPopFrames(t *testing.T) {
	g := newTestGuest(t, 8, testFeatures, false)
	f1, f2 := frameOf(60, 1), frameOf(1514, 2)
	g.sendFrame(f1, 1000)
	g.sendFrame(f2, 500) // header + 4 pieces
	// An indirect chain: header and frame in a table of two descriptors.
	f3 := frameOf(200, 3)
	tbl := g.alloc(32)
	h, d := g.alloc(virtio.NetHdrLen), g.alloc(len(f3))
	copy(g.at(d, len(f3)), f3)
	g.writeDesc(g.at(tbl, 32), 0, tdesc{addr: h, len: virtio.NetHdrLen, flags: virtio.DescFNext, next: 1})
	g.writeDesc(g.at(tbl, 32), 1, tdesc{addr: d, len: uint32(len(f3))})
	g.post(tdesc{addr: tbl, len: 32, flags: virtio.DescFIndirect})

	dst := make([]byte, 2048)
	for i, want := range [][]byte{f1, f2, f3} {
		n, err := g.q.Pop(dst)
		if err != nil {
			t.Fatalf("pop %d: %v", i, err)
		}
		if !bytes.Equal(dst[:n], want) {
			t.Fatalf("pop %d: got %d bytes, want %d (content differs: %v)", i, n, len(want), n == len(want))
		}
	}
	if _, err := g.q.Pop(dst); !errors.Is(err, ErrEmpty) {
		t.Fatalf("pop on empty ring: %v, want ErrEmpty", err)
	}
	if g.usedIdx() != 0 {
		t.Fatalf("used idx %d published before Flush", g.usedIdx())
	}
	g.q.Flush()
	if g.usedIdx() != 3 {
		t.Fatalf("used idx %d after Flush, want 3", g.usedIdx())
	}
	for i := uint16(0); i < 3; i++ {
		id, n := g.usedElem(i)
		if n != 0 {
			t.Errorf("used elem %d: len %d, want 0 for TX", i, n)
		}
		_ = id
	}
	st := g.q.Stats()
	if st.Frames != 3 || st.Bytes != uint64(len(f1)+len(f2)+len(f3)) {
		t.Fatalf("stats %+v", st)
	}
}

func TestPopTooBigAndMalformed(t *testing.T) {
	g := newTestGuest(t, 8, testFeatures, false)
	g.sendFrame(frameOf(3000, 1), 1500)
	g.post(tdesc{addr: g.alloc(8), len: 8}) // shorter than the header
	ok := frameOf(100, 9)
	g.sendFrame(ok, 100)
	dst := make([]byte, 2048)
	n, err := g.q.Pop(dst)
	if err != nil || !bytes.Equal(dst[:n], ok) {
		t.Fatalf("pop: n=%d err=%v, want the 100-byte frame after two drops", n, err)
	}
	g.q.Flush()
	st := g.q.Stats()
	if st.Drops[DropTooBig] != 1 || st.Drops[DropMalformed] != 1 || st.Frames != 1 {
		t.Fatalf("stats %+v", st)
	}
	if g.usedIdx() != 3 {
		t.Fatalf("used idx %d, want 3 (dropped chains are returned too)", g.usedIdx())
	}
}

func TestPushSingleBuffer(t *testing.T) {
	g := newTestGuest(t, 8, testFeatures, true)
	a := g.postRX(2048)
	f := frameOf(1514, 5)
	copy(g.at(a, 12), bytes.Repeat([]byte{0xee}, 12)) // stale header bytes must be zeroed
	if err := g.q.Push(f); err != nil {
		t.Fatal(err)
	}
	g.q.Flush()
	if g.usedIdx() != 1 {
		t.Fatalf("used idx %d", g.usedIdx())
	}
	_, n := g.usedElem(0)
	if n != uint32(len(f)+virtio.NetHdrLen) {
		t.Fatalf("used len %d, want %d", n, len(f)+virtio.NetHdrLen)
	}
	hdr := g.at(a, virtio.NetHdrLen)
	want := make([]byte, virtio.NetHdrLen)
	want[10] = 1 // num_buffers
	if !bytes.Equal(hdr, want) {
		t.Fatalf("header %x, want %x", hdr, want)
	}
	if !bytes.Equal(g.at(a+virtio.NetHdrLen, len(f)), f) {
		t.Fatal("frame content differs")
	}
}

func TestPushMergeable(t *testing.T) {
	g := newTestGuest(t, 8, testFeatures|virtio.NetFMrgRxbuf, true)
	a1, a2, a3 := g.postRX(1024), g.postRX(1024), g.postRX(1024)
	f := frameOf(2500, 7)
	if err := g.q.Push(f); err != nil {
		t.Fatal(err)
	}
	g.q.Flush()
	if g.usedIdx() != 3 {
		t.Fatalf("used idx %d, want 3", g.usedIdx())
	}
	if nb := binary.LittleEndian.Uint16(g.at(a1+10, 2)); nb != 3 {
		t.Fatalf("num_buffers %d, want 3", nb)
	}
	lens := []uint32{1024, 1024, uint32(2500 + 12 - 2048)}
	var got []byte
	for i, a := range []uint64{a1, a2, a3} {
		_, n := g.usedElem(uint16(i))
		if n != lens[i] {
			t.Fatalf("used len[%d] = %d, want %d", i, n, lens[i])
		}
		got = append(got, g.at(a, int(n))...)
	}
	if !bytes.Equal(got[12:], f) {
		t.Fatal("merged frame content differs")
	}
	// Not enough buffers left for another: nothing is consumed.
	g.postRX(100)
	if err := g.q.Push(f); !errors.Is(err, ErrNoBuffers) {
		t.Fatalf("push without room: %v, want ErrNoBuffers", err)
	}
	if err := g.q.Push(frameOf(60, 1)); err != nil {
		t.Fatalf("small frame after rollback: %v", err)
	}
	g.q.Flush()
	if g.usedIdx() != 4 {
		t.Fatalf("used idx %d, want 4", g.usedIdx())
	}
	st := g.q.Stats()
	if st.Frames != 2 || st.Drops[DropNoBuffers] != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPushNoMergeTooBig(t *testing.T) {
	g := newTestGuest(t, 8, testFeatures, true)
	g.postRX(1000)
	if err := g.q.Push(frameOf(1514, 1)); !errors.Is(err, ErrTooBig) {
		t.Fatalf("push: %v, want ErrTooBig", err)
	}
	if err := g.q.Push(frameOf(500, 1)); err != nil {
		t.Fatalf("push of a fitting frame after rollback: %v", err)
	}
	if err := g.q.Push(frameOf(60, 1)); !errors.Is(err, ErrNoBuffers) {
		t.Fatalf("push with no buffer: %v", err)
	}
}

func TestPushChainedBufferHeaderSplit(t *testing.T) {
	// A chain whose first descriptor is smaller than the header.
	g := newTestGuest(t, 8, testFeatures|virtio.NetFMrgRxbuf, true)
	a, b := g.alloc(5), g.alloc(2048)
	g.post(tdesc{addr: a, len: 5, flags: virtio.DescFWrite}, tdesc{addr: b, len: 2048, flags: virtio.DescFWrite})
	f := frameOf(100, 3)
	if err := g.q.Push(f); err != nil {
		t.Fatal(err)
	}
	if nb := binary.LittleEndian.Uint16(g.at(b+5, 2)); nb != 1 {
		t.Fatalf("num_buffers %d at split header", nb)
	}
	if !bytes.Equal(g.at(b+7, 100), f) {
		t.Fatal("content differs")
	}
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

	t.Run("flags", func(t *testing.T) {
		g := newTestGuest(t, 8, testFeatures, false)
		nt = attachCall(g.q, efd)
		g.sendFrame(frameOf(60, 1), 60)
		g.sendFrame(frameOf(60, 1), 60)
		dst := make([]byte, 100)
		g.q.Pop(dst)
		g.q.Pop(dst)
		g.q.Flush()
		if c := calls(); c != 1 {
			t.Fatalf("calls after a batch: %d, want 1", c)
		}
		binary.LittleEndian.PutUint16(g.mem[g.availOff:], virtio.AvailFNoInterrupt)
		g.sendFrame(frameOf(60, 1), 60)
		g.q.Pop(dst)
		g.q.Flush()
		if c := calls(); c != 0 {
			t.Fatalf("calls with NO_INTERRUPT: %d", c)
		}
		g.q.Flush() // nothing new: no publish, no call
		g.q.DisableNotify()
		if f := binary.LittleEndian.Uint16(g.mem[g.usedOff:]); f != virtio.UsedFNoNotify {
			t.Fatalf("used.flags %d after DisableNotify", f)
		}
		if pending, err := g.q.EnableNotify(); err != nil || pending {
			t.Fatalf("EnableNotify: %v %v", pending, err)
		}
		if f := binary.LittleEndian.Uint16(g.mem[g.usedOff:]); f != 0 {
			t.Fatalf("used.flags %d after EnableNotify", f)
		}
		if g.usedIdx() != 3 {
			t.Fatalf("used idx %d changed by notify toggling", g.usedIdx())
		}
		g.sendFrame(frameOf(60, 1), 60)
		if pending, _ := g.q.EnableNotify(); !pending {
			t.Fatal("EnableNotify missed a posted frame")
		}
	})

	t.Run("event_idx", func(t *testing.T) {
		g := newTestGuest(t, 8, testFeatures|virtio.RingFEventIdx, false)
		nt = attachCall(g.q, efd)
		dst := make([]byte, 100)
		usedEvent := func(v uint16) { binary.LittleEndian.PutUint16(g.mem[g.availOff+4+2*8:], v) }
		usedEvent(2) // notify when used idx passes 2
		g.sendFrame(frameOf(60, 1), 60)
		g.sendFrame(frameOf(60, 1), 60)
		g.q.Pop(dst)
		g.q.Pop(dst)
		g.q.Flush() // used 0→2: event 2 not crossed
		if c := calls(); c != 0 {
			t.Fatalf("calls before used_event: %d", c)
		}
		g.sendFrame(frameOf(60, 1), 60)
		g.q.Pop(dst)
		g.q.Flush() // 2→3 crosses 2
		if c := calls(); c != 1 {
			t.Fatalf("calls crossing used_event: %d, want 1", c)
		}
		if pending, _ := g.q.EnableNotify(); pending {
			t.Fatal("pending on an empty ring")
		}
		if ae := binary.LittleEndian.Uint16(g.mem[g.usedOff+4+8*8:]); ae != 3 {
			t.Fatalf("avail_event %d, want 3", ae)
		}
	})
}

func TestZeroAllocs(t *testing.T) {
	g := newTestGuest(t, 256, testFeatures|virtio.NetFMrgRxbuf, true)
	f := frameOf(1514, 1)
	addrs := make([]uint64, 256)
	for i := range addrs {
		addrs[i] = g.postRX(2048)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := g.q.Push(f); err != nil {
			t.Fatal(err)
		}
		g.q.Flush()
		// Recycle the buffer, like a guest would.
		g.publish(uint16(g.q.usedPub-1) % 256)
	})
	if allocs != 0 {
		t.Fatalf("Push+Flush: %v allocs per frame", allocs)
	}
	// Flush asks for a call on every batch here: the notifier's wake-up
	// must not allocate either.
	efd := eventfd(t)
	defer unix.Close(efd)
	tx := newTestGuest(t, 256, testFeatures, false)
	nt := attachCall(tx.q, efd)
	nt.start()
	defer nt.stop()
	for i := 0; i < 200; i++ {
		tx.sendFrame(f, 2000)
	}
	dst := make([]byte, 2048)
	allocs = testing.AllocsPerRun(100, func() {
		if _, err := tx.q.Pop(dst); err != nil {
			t.Fatal(err)
		}
		tx.q.Flush()
	})
	if allocs != 0 {
		t.Fatalf("Pop+Flush: %v allocs per frame", allocs)
	}
}
