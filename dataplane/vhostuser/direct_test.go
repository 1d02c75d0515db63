package vhostuser

import (
	"bytes"
	"errors"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
)

// TestDirectRx: PeekRxBuffer tells one writable descriptor from what
// Push must handle (chains, read-only), without taking it; CompleteRx
// writes only the header and the used entry; buffers taken together
// complete in any order, each named in its used entry; a frame longer
// than its buffer breaks the device instead of being published. On split
// and packed rings.
func TestDirectRx(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures, true)
		q := g.queue()
		if _, have, _, err := q.PeekRxBuffer(); have || err != nil {
			t.Fatalf("empty ring: have %v err %v", have, err)
		}
		a1 := g.postRX(2048)
		b1, have, simple, err := q.PeekRxBuffer()
		if !have || !simple || err != nil || b1.GPA != a1 || b1.Len != 2048 {
			t.Fatalf("peek %+v have %v simple %v err %v", b1, have, simple, err)
		}
		if again, _, _, _ := q.PeekRxBuffer(); again != b1 {
			t.Fatal("peek took the buffer")
		}
		q.TakeRxBuffer()
		a2 := g.postRX(2048)
		b2, have, _, _ := q.PeekRxBuffer()
		if !have || b2.GPA != a2 || b2.Head == b1.Head {
			t.Fatalf("second buffer %+v (first %+v)", b2, b1)
		}
		q.TakeRxBuffer()

		// The kernel fills the second buffer first.
		frame := frameOf(100, 3)
		for _, b := range []RxBuf{b2, b1} {
			copy(g.at(b.GPA+virtio.NetHdrLen, len(frame)), frame) // as the kernel would
			copy(g.at(b.GPA, virtio.NetHdrLen), bytes.Repeat([]byte{0xee}, virtio.NetHdrLen))
		}
		if err := q.CompleteRx(b2, uint32(len(frame))); err != nil {
			t.Fatal(err)
		}
		if err := q.CompleteRx(b1, uint32(len(frame)-10)); err != nil {
			t.Fatal(err)
		}
		q.Flush()
		ids, lens := g.usedAll()
		wantLens := []uint32{uint32(virtio.NetHdrLen + len(frame)), uint32(virtio.NetHdrLen + len(frame) - 10)}
		if len(ids) != 2 || ids[0] != b2.Head || ids[1] != b1.Head || lens[0] != wantLens[0] || lens[1] != wantLens[1] {
			t.Fatalf("used %v lens %v, want ids [%d %d] lens %v", ids, lens, b2.Head, b1.Head, wantLens)
		}
		want := make([]byte, virtio.NetHdrLen)
		want[10] = 1
		if !bytes.Equal(g.at(a2, virtio.NetHdrLen), want) || !bytes.Equal(g.at(a2+virtio.NetHdrLen, len(frame)), frame) {
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
		if err := q.CompleteRx(RxBuf{Head: 1, GPA: a1, Len: 64}, 100); !errors.Is(err, ErrBroken) || q.usedIdx != before {
			t.Fatalf("overlong completion: %v", err)
		}
	})
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
