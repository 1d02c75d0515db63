package vhostuser

import (
	"bytes"
	"errors"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
)

// TestDirectRx: PeekRxBuffer tells one writable descriptor from what
// Push must handle (chains, indirect tables, read-only), without taking
// it; CompleteRx writes only the header and the used entry; a frame
// longer than its buffer breaks the device instead of being published.
func TestDirectRx(t *testing.T) {
	g := newTestGuest(t, 8, testFeatures, true)
	q := g.q
	if _, have, _, err := q.PeekRxBuffer(); have || err != nil {
		t.Fatalf("empty ring: have %v err %v", have, err)
	}
	a := g.postRX(2048)
	b, have, simple, err := q.PeekRxBuffer()
	if !have || !simple || err != nil || b.GPA != a || b.Len != 2048 {
		t.Fatalf("peek %+v have %v simple %v err %v", b, have, simple, err)
	}
	if b2, _, _, _ := q.PeekRxBuffer(); b2 != b {
		t.Fatal("peek took the buffer")
	}
	q.TakeRxBuffer()
	frame := frameOf(100, 3)
	copy(g.at(a+virtio.NetHdrLen, len(frame)), frame) // as the kernel would
	copy(g.at(a, virtio.NetHdrLen), bytes.Repeat([]byte{0xee}, virtio.NetHdrLen))
	if err := q.CompleteRx(b, uint32(len(frame))); err != nil {
		t.Fatal(err)
	}
	q.Flush()
	if id, n := g.usedElem(0); g.usedIdx() != 1 || id != uint32(b.Head) || n != uint32(virtio.NetHdrLen+len(frame)) {
		t.Fatalf("used idx %d elem %d/%d", g.usedIdx(), id, n)
	}
	want := make([]byte, virtio.NetHdrLen)
	want[10] = 1
	if !bytes.Equal(g.at(a, virtio.NetHdrLen), want) || !bytes.Equal(g.at(a+virtio.NetHdrLen, len(frame)), frame) {
		t.Fatal("header or frame wrong")
	}

	// Not simple: a chain, a read-only buffer.
	g.post(tdesc{addr: g.alloc(12), len: 12, flags: virtio.DescFWrite}, tdesc{addr: g.alloc(2048), len: 2048, flags: virtio.DescFWrite})
	if _, have, simple, _ := q.PeekRxBuffer(); !have || simple {
		t.Fatalf("chain: have %v simple %v", have, simple)
	}
	if err := q.Push(frame); err != nil { // Push takes what direct leaves
		t.Fatal(err)
	}
	g.post(tdesc{addr: g.alloc(2048), len: 2048})
	if _, have, simple, _ := q.PeekRxBuffer(); !have || simple {
		t.Fatalf("read-only: have %v simple %v", have, simple)
	}

	// A length beyond the buffer is the caller's bug or a hostile
	// descriptor: the device breaks, nothing is published.
	before := q.usedIdx
	if err := q.CompleteRx(RxBuf{Head: 1, GPA: a, Len: 64}, 100); !errors.Is(err, ErrBroken) || q.usedIdx != before {
		t.Fatalf("overlong completion: %v", err)
	}
}

func TestGuestRegion(t *testing.T) {
	g := newTestGuest(t, 8, testFeatures, true)
	r, ok := g.q.Region(testBase + 10)
	if !ok || r.GPA != testBase || r.Size != 1<<20 || r.Offset(testBase+10) != 10 {
		t.Fatalf("region %+v %v", r, ok)
	}
	if !r.Contains(testBase, 1<<20) || r.Contains(testBase+1, 1<<20) || r.Contains(testBase-1, 2) {
		t.Fatal("Contains")
	}
	if _, ok := g.q.Region(testBase + 1<<20); ok {
		t.Fatal("address past the region found")
	}
	if rr, ok := g.q.RingRegion(); !ok || rr.GPA != testBase {
		t.Fatalf("ring region %+v %v", rr, ok)
	}
}
