package vhostuser

import (
	"bytes"
	"errors"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
)

// sendHdrFrame posts a TX frame after header h, the header split over two
// descriptors at hsplit (0: one descriptor), the frame in one; hsplit < 0:
// header and frame together in one descriptor.
func (g *testGuest) sendHdrFrame(h virtio.NetHdr, frame []byte, hsplit int) {
	var hb [virtio.NetHdrLen]byte
	h.Encode(hb[:])
	var ds []tdesc
	if hsplit < 0 {
		a := g.alloc(virtio.NetHdrLen + len(frame))
		copy(g.at(a, virtio.NetHdrLen), hb[:])
		copy(g.at(a+virtio.NetHdrLen, len(frame)), frame)
		g.post(tdesc{addr: a, len: uint32(virtio.NetHdrLen + len(frame))})
		return
	}
	if hsplit > 0 {
		a, b := g.alloc(hsplit), g.alloc(virtio.NetHdrLen-hsplit)
		copy(g.at(a, hsplit), hb[:hsplit])
		copy(g.at(b, virtio.NetHdrLen-hsplit), hb[hsplit:])
		ds = append(ds, tdesc{addr: a, len: uint32(hsplit)}, tdesc{addr: b, len: uint32(virtio.NetHdrLen - hsplit)})
	} else {
		a := g.alloc(virtio.NetHdrLen)
		copy(g.at(a, virtio.NetHdrLen), hb[:])
		ds = append(ds, tdesc{addr: a, len: virtio.NetHdrLen})
	}
	d := g.alloc(len(frame))
	copy(g.at(d, len(frame)), frame)
	g.post(append(ds, tdesc{addr: d, len: uint32(len(frame))})...)
}

func TestPopHdr(t *testing.T) {
	g := newTestGuest(t, 64, testFeatures|virtio.NetFCsum|virtio.NetFHostTSO4, false)
	tso := virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOTCPv4, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	csum := virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, CsumStart: 34, CsumOffset: 6}
	big := frameOf(20000, 1)
	g.sendHdrFrame(tso, big, 0)
	g.sendHdrFrame(csum, frameOf(100, 2), 5) // header over two descriptors
	// Guest input PopHdr must refuse: each dropped and counted.
	g.sendHdrFrame(virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, CsumStart: 99, CsumOffset: 0}, frameOf(100, 3), 0)
	g.sendHdrFrame(virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOUDP, GSOSize: 1400, CsumStart: 34, CsumOffset: 6}, frameOf(3000, 4), 0)
	g.sendHdrFrame(virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOTCPv4, GSOSize: 1, CsumStart: 34, CsumOffset: 16}, frameOf(3000, 5), 7)
	g.sendHdrFrame(virtio.NetHdr{Flags: virtio.NetHdrFDataValid}, frameOf(60, 6), 0)
	last := frameOf(60, 7)
	g.sendHdrFrame(virtio.NetHdr{}, last, 11)

	dst := make([]byte, 65536)
	var h virtio.NetHdr
	n, err := g.q.PopHdr(&h, dst)
	if err != nil || !bytes.Equal(dst[:n], big) || h != tso {
		t.Fatalf("tso frame: n %d err %v header %+v", n, err, h)
	}
	n, err = g.q.PopHdr(&h, dst)
	if err != nil || n != 100 || h != csum {
		t.Fatalf("csum frame: n %d err %v header %+v", n, err, h)
	}
	n, err = g.q.PopHdr(&h, dst)
	if err != nil || !bytes.Equal(dst[:n], last) || h != (virtio.NetHdr{}) {
		t.Fatalf("after the bad headers: n %d err %v header %+v", n, err, h)
	}
	if _, err := g.q.PopHdr(&h, dst); !errors.Is(err, ErrEmpty) {
		t.Fatalf("empty ring: %v", err)
	}
	g.q.Flush()
	if st := g.q.Stats(); st.Drops[DropBadHeader] != 4 || st.Frames != 3 {
		t.Fatalf("stats %+v, want 4 bad headers and 3 frames", st)
	}
	if g.usedIdx() != 7 {
		t.Fatalf("used idx %d, want 7", g.usedIdx())
	}
	// Pop ignores the header: the same bad one passes.
	g.sendHdrFrame(virtio.NetHdr{Flags: virtio.NetHdrFDataValid}, frameOf(60, 8), 0)
	if n, err := g.q.Pop(dst); err != nil || n != 60 {
		t.Fatalf("Pop: %d %v", n, err)
	}
}

func TestPushHdr(t *testing.T) {
	g := newTestGuest(t, 16, testFeatures|virtio.NetFMrgRxbuf|virtio.NetFGuestCsum|virtio.NetFGuestTSO4, true)
	var bufs []uint64
	for range 8 {
		bufs = append(bufs, g.postRX(1536))
	}
	h := virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOTCPv4, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16, NumBuffers: 99}
	f := frameOf(9000, 3)
	if err := g.q.PushHdr(&h, f); err != nil {
		t.Fatal(err)
	}
	// Push after PushHdr writes a zeroed header again.
	small := frameOf(200, 4)
	if err := g.q.Push(small); err != nil {
		t.Fatal(err)
	}
	g.q.Flush()
	var got virtio.NetHdr
	got.Decode(g.at(bufs[0], virtio.NetHdrLen))
	want := h
	want.NumBuffers = uint16((9000 + virtio.NetHdrLen + 1535) / 1536)
	if got != want {
		t.Fatalf("header %+v, want %+v", got, want)
	}
	var rebuilt []byte
	for i := 0; i < int(want.NumBuffers); i++ {
		_, n := g.usedElem(uint16(i))
		b := g.at(bufs[i], int(n))
		if i == 0 {
			b = b[virtio.NetHdrLen:]
		}
		rebuilt = append(rebuilt, b...)
	}
	if !bytes.Equal(rebuilt, f) {
		t.Fatal("frame content differs")
	}
	got.Decode(g.at(bufs[want.NumBuffers], virtio.NetHdrLen))
	if got != (virtio.NetHdr{NumBuffers: 1}) {
		t.Fatalf("Push's header %+v, want zero with num_buffers 1", got)
	}
}

// PopHdr and PushHdr on a packed ring: the header read across two
// descriptors, a bad one dropped, a header written with num_buffers.
func TestPackedHdr(t *testing.T) {
	g := newPackedGuest(t, 32, packedTestFeatures|virtio.NetFCsum|virtio.NetFHostTSO4, false)
	tso := virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOTCPv4, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	post := func(h virtio.NetHdr, frame []byte, split int) {
		var hb [virtio.NetHdrLen]byte
		h.Encode(hb[:])
		a, b, d := g.alloc(split), g.alloc(virtio.NetHdrLen-split), g.alloc(len(frame))
		copy(g.at(a, split), hb[:split])
		copy(g.at(b, virtio.NetHdrLen-split), hb[split:])
		copy(g.at(d, len(frame)), frame)
		g.post(tdesc{addr: a, len: uint32(split)}, tdesc{addr: b, len: uint32(virtio.NetHdrLen - split)}, tdesc{addr: d, len: uint32(len(frame))})
	}
	big := frameOf(5000, 1)
	post(virtio.NetHdr{Flags: virtio.NetHdrFDataValid}, frameOf(60, 2), 4)
	post(tso, big, 7)
	dst := make([]byte, 65536)
	var h virtio.NetHdr
	n, err := g.q.PopHdr(&h, dst)
	if err != nil || !bytes.Equal(dst[:n], big) || h != tso {
		t.Fatalf("packed PopHdr: n %d err %v header %+v", n, err, h)
	}
	g.q.Flush()
	if st := g.q.Stats(); st.Drops[DropBadHeader] != 1 || st.Frames != 1 {
		t.Fatalf("stats %+v", st)
	}

	r := newPackedGuest(t, 32, packedTestFeatures|virtio.NetFMrgRxbuf|virtio.NetFGuestCsum|virtio.NetFGuestTSO4, true)
	a := r.postRX(8192)
	if err := r.q.PushHdr(&tso, big); err != nil {
		t.Fatal(err)
	}
	r.q.Flush()
	var got virtio.NetHdr
	got.Decode(r.at(a, virtio.NetHdrLen))
	want := tso
	want.NumBuffers = 1
	if got != want || !bytes.Equal(r.at(a+virtio.NetHdrLen, len(big)), big) {
		t.Fatalf("packed PushHdr: header %+v, want %+v", got, want)
	}
}

// Frames sent in one descriptor, header and frame together, take PopHdr's
// fast path on a split ring: the same frames, headers and drops as the
// general path gives.
func TestPopOneDescriptor(t *testing.T) {
	g := newTestGuest(t, 16, testFeatures|virtio.NetFCsum, false)
	csum := virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, CsumStart: 34, CsumOffset: 6}
	first, last := frameOf(100, 1), frameOf(60, 5)
	g.sendHdrFrame(csum, first, -1)
	g.sendHdrFrame(virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, CsumStart: 99}, frameOf(100, 2), -1) // refused header
	g.sendHdrFrame(virtio.NetHdr{}, frameOf(3000, 3), -1)                                             // larger than dst
	g.sendHdrFrame(virtio.NetHdr{}, nil, -1)                                                          // a header alone
	g.sendHdrFrame(virtio.NetHdr{}, last, -1)
	dst := make([]byte, 2048)
	var h virtio.NetHdr
	if n, err := g.q.PopHdr(&h, dst); err != nil || !bytes.Equal(dst[:n], first) || h != csum {
		t.Fatalf("first frame: n %d err %v header %+v", n, err, h)
	}
	if n, err := g.q.PopHdr(&h, dst); err != nil || !bytes.Equal(dst[:n], last) || h != (virtio.NetHdr{}) {
		t.Fatalf("last frame: n %d err %v header %+v", n, err, h)
	}
	if _, err := g.q.Pop(dst); !errors.Is(err, ErrEmpty) {
		t.Fatalf("after the last frame: %v", err)
	}
	g.q.Flush()
	s := g.q.Stats()
	if s.Frames != 2 || s.Drops[DropBadHeader] != 1 || s.Drops[DropTooBig] != 1 || s.Drops[DropMalformed] != 1 {
		t.Fatalf("stats %+v: want 2 frames, 1 bad_header, 1 too_big, 1 malformed", s)
	}
	if g.usedIdx() != 5 {
		t.Fatalf("used idx %d, want 5", g.usedIdx())
	}
}
