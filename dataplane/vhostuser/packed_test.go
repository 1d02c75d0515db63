package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
)

// Packed-ring test guest and the tests of what only the packed layout
// has; the behaviours both layouts share are tested once, over both, in
// ring_test.go, budget_test.go and fuzz_test.go.

// packedGuest is a driver-side packed ring, as testGuest is for the
// split ring.
type packedGuest struct {
	ringMem
	descOff, drvOff, devOff   int
	availPos, usedPos         int // slot
	availWrap, usedWrap       bool
	nextID                    uint16
	chains                    [][]tdesc // each buffer id's descriptors as last posted (for recycle)
	descAddr, drvAddr, devAdr uint64
}

const packedTestFeatures = testFeatures | virtio.FRingPacked

func newPackedGuest(t testing.TB, num int, features uint64, rx bool) *packedGuest {
	t.Helper()
	return newPackedGuestMem(t, make([]byte, 1<<20), num, features, rx)
}

func layoutPacked(t testing.TB, mem []byte, base uint64, num int) *packedGuest {
	g := &packedGuest{ringMem: newRingMem(t, mem, base, num), availWrap: true, usedWrap: true, chains: make([][]tdesc, num)}
	g.drvOff = virtio.PackedDescTableSize(num)
	g.devOff = g.drvOff + virtio.PackedEventSize
	g.bufOff = (g.devOff + virtio.PackedEventSize + 63) &^ 63
	g.descAddr, g.drvAddr, g.devAdr = base, base+uint64(g.drvOff), base+uint64(g.devOff)
	return g
}

func (g *packedGuest) addrs() (desc, drv, dev uint64) { return g.descAddr, g.drvAddr, g.devAdr }

func newPackedGuestMem(t testing.TB, mem []byte, num int, features uint64, rx bool) *packedGuest {
	t.Helper()
	g := layoutPacked(t, mem, testBase, num)
	g.attach(features|virtio.FRingPacked, rx, virtio.EventWrapBit, g.descAddr, g.drvAddr, g.devAdr)
	return g
}

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
	ch := g.chains[id][:0]
	for i, d := range ds {
		if !rawFlags && i < len(ds)-1 {
			d.flags |= virtio.DescFNext
		}
		ch = append(ch, d)
	}
	g.chains[id] = ch
	g.postChain(id, ch)
	return id
}

// postChain writes ds (flags as they are, plus the avail bits) at the
// next slots, the head's flags last. It does not allocate.
func (g *packedGuest) postChain(id uint16, ds []tdesc) {
	head := g.availPos
	var headFlags uint16
	for i, d := range ds {
		f := d.flags | g.availFlags()
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
}

// used returns the next used descriptor, if the device wrote one.
func (g *packedGuest) used() (id uint16, l uint32, ok bool) {
	b := g.mem[g.descOff+16*g.usedPos:]
	f := binary.LittleEndian.Uint16(b[14:])
	if (f&virtio.DescFAvail != 0) != g.usedWrap || (f&virtio.DescFUsed != 0) != g.usedWrap {
		return 0, 0, false
	}
	id, l = binary.LittleEndian.Uint16(b[12:]), binary.LittleEndian.Uint32(b[8:])
	g.skipUsed(g.takeUsed(id))
	return id, l, true
}

func (g *packedGuest) skipUsed(n int) {
	if g.usedPos += n; g.usedPos >= g.num {
		g.usedPos, g.usedWrap = g.usedPos-g.num, !g.usedWrap
	}
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

// recycle takes the next used buffer (without checking it is used) and
// posts its descriptors again at the next slots.
func (g *packedGuest) recycle() {
	id := binary.LittleEndian.Uint16(g.mem[g.descOff+16*g.usedPos+12:])
	ch := g.chains[id]
	g.skipUsed(len(ch))
	g.postChain(id, ch)
}

func (g *packedGuest) sendFrame(frame []byte, split int) uint16 { return sendFrame(g, frame, split) }
func (g *packedGuest) postRX(n int) uint64                      { return postRX(g, n) }

// indirect writes a packed indirect table and returns its descriptor.
func (g *packedGuest) indirect(ds ...tdesc) tdesc {
	tbl := g.alloc(16 * len(ds))
	for i, d := range ds {
		writePackedDesc(g.at(tbl+uint64(16*i), 16), d.addr, d.len, 0, d.flags)
	}
	return tdesc{addr: tbl, len: uint32(16 * len(ds)), flags: virtio.DescFIndirect}
}

// driverRings: the descriptor ring (used descriptors are written there,
// at Flush).
func (g *packedGuest) driverRings() []byte { return append([]byte{}, g.mem[:g.drvOff]...) }

func (g *packedGuest) suppressCalls() { g.setDriverEvent(0, virtio.EventFDisable) }

func (g *packedGuest) kickFlags() uint16 { _, f := g.deviceEvent(); return f }

func (g *packedGuest) setDriverEvent(offWrap, flags uint16) {
	binary.LittleEndian.PutUint16(g.mem[g.drvOff:], offWrap)
	binary.LittleEndian.PutUint16(g.mem[g.drvOff+2:], flags)
}

func (g *packedGuest) deviceEvent() (offWrap, flags uint16) {
	return binary.LittleEndian.Uint16(g.mem[g.devOff:]), binary.LittleEndian.Uint16(g.mem[g.devOff+2:])
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

// packedEventIdx is TestNotifications/packed/event_idx: the driver event
// names a slot and wrap counter.
func packedEventIdx(t *testing.T, g *packedGuest, popN func(int), calls func() uint64) {
	// Each frame is 2 descriptors. Ask for a call at slot 4, wrap 1.
	g.setDriverEvent(4|virtio.EventWrapBit, virtio.EventFDesc)
	popN(2) // used 0 -> 4: slot 4 not reached
	if c := calls(); c != 0 {
		t.Fatalf("calls before the event: %d", c)
	}
	popN(1) // 4 -> 6 crosses 4
	if c := calls(); c != 1 {
		t.Fatalf("calls crossing the event: %d, want 1", c)
	}
	popN(1) // 6 -> 8 (slot 0, wrap 0): event behind
	if c := calls(); c != 0 {
		t.Fatalf("calls past the event: %d", c)
	}
	// Slot 2 in the next wrap (wrap counter 0).
	g.setDriverEvent(2, virtio.EventFDesc)
	popN(2) // 8 -> 12 crosses slot 2 of wrap 0
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
	q, err := newTestQueue(g.mt, g.features, 8, false, 2, g.descAddr, g.drvAddr, g.devAdr)
	if err != nil {
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
	q, err := newTestQueue(mt, g.features, 512, false, virtio.EventWrapBit, g.descAddr+uvaOff, g.drvAddr+uvaOff, g.devAdr+uvaOff)
	if err != nil {
		t.Fatal(err)
	}
	g.q = q
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
