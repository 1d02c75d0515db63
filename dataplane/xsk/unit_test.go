package xsk

import (
	"math/rand/v2"
	"testing"
)

// TestRingIndices drives a producer and a consumer over a small ring with
// free-running indices that wrap around uint32, checking batch limits.
func TestRingIndices(t *testing.T) {
	r := newTestRing[uint64](8)
	// Start near the uint32 wrap to exercise it.
	start := ^uint32(0) - 3
	*r.producer, *r.consumer = start, start
	r.cachedProd, r.cachedCons = start, start
	c := r // a second view: the consumer side shares the indices
	next, want := uint64(0), uint64(0)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 1000 {
		n := uint32(rng.IntN(12))
		idx, got := r.reserve(n)
		if got > n || got > 8 {
			t.Fatalf("reserved %d of %d", got, n)
		}
		for i := range got {
			*r.at(idx + i) = next
			next++
		}
		r.submit()
		if *r.producer-*r.consumer > 8 {
			t.Fatalf("producer ran over the consumer: %d in flight", *r.producer-*r.consumer)
		}
		m := uint32(rng.IntN(12))
		cidx, cgot := c.peek(m)
		if cgot > m {
			t.Fatalf("peeked %d of %d", cgot, m)
		}
		for i := range cgot {
			if v := *c.at(cidx + i); v != want {
				t.Fatalf("read %d, want %d", v, want)
			}
			want++
		}
		c.release(cgot)
	}
	if next-want != uint64(*r.producer-*r.consumer) {
		t.Fatalf("lost entries: wrote %d read %d, ring holds %d", next, want, *r.producer-*r.consumer)
	}
	if want < 1000 {
		t.Fatalf("only %d entries went through", want)
	}
}

func TestRingFullAndEmpty(t *testing.T) {
	r := newTestRing[Desc](4)
	if _, got := r.reserve(10); got != 4 {
		t.Fatalf("reserve on empty ring of 4: %d", got)
	}
	r.submit()
	if _, got := r.reserve(1); got != 0 {
		t.Fatalf("reserve on full ring: %d", got)
	}
	c := r
	if _, got := c.peek(10); got != 4 {
		t.Fatalf("peek: %d", got)
	}
	c.release(3)
	r.cachedCons = 0 // the producer's stale view is refreshed on demand
	if _, got := r.reserve(5); got != 3 {
		t.Fatalf("reserve after 3 released: %d", got)
	}
}

// newMemQueue builds a Queue over ordinary memory and test rings, to test
// frame handling without a kernel.
func newMemQueue(t testing.TB, frames, frameSize int, firstFrame int) *Queue {
	t.Helper()
	mem := make([]byte, (firstFrame+frames)*frameSize)
	q := &Queue{
		mem:       mem,
		frames:    frameRange{firstFrame, frames},
		lo:        uint64(firstFrame * frameSize),
		hi:        uint64((firstFrame + frames) * frameSize),
		frameMask: ^uint64(frameSize - 1),
		fill:      newTestRing[uint64](uint32(frames)),
		comp:      newTestRing[uint64](uint32(frames)),
		umem:      &UMEM{frameSize: frameSize},
	}
	q.pool = newFramePool(q.lo, uint64(frameSize), frames)
	q.wakeups = true
	return q
}

// TestPoolAccounting: frames cycle through alloc, fill, "kernel", rx, free
// and completion; the allocator never hands a frame out twice and the
// totals always add up.
func TestPoolAccounting(t *testing.T) {
	q := newMemQueue(t, 64, 2048, 3)
	held := map[uint64]bool{}
	addrs := make([]uint64, 16)
	rng := rand.New(rand.NewPCG(5, 6))
	for range 2000 {
		switch rng.IntN(4) {
		case 0:
			n := q.Alloc(addrs[:rng.IntN(16)+1])
			for _, a := range addrs[:n] {
				if held[a] {
					t.Fatalf("frame %#x handed out twice", a)
				}
				held[a] = true
			}
		case 1:
			k := 0
			for a := range held {
				if k == len(addrs) || rng.IntN(2) == 0 {
					break
				}
				addrs[k] = a + uint64(rng.IntN(2048)) // any address inside the frame frees it
				delete(held, a)
				k++
			}
			if got := q.Free(addrs[:k]); got != k {
				t.Fatalf("freed %d of %d held frames", got, k)
			}
		case 2:
			// A stale or foreign address must be refused.
			bad := []uint64{0, q.hi, q.hi + 5000, ^uint64(0)}
			if got := q.Free(bad); got != 0 {
				t.Fatalf("freed %d foreign addresses", got)
			}
		case 3:
			for a := range held {
				if q.Free([]uint64{a}) != 1 || q.Free([]uint64{a}) != 0 {
					t.Fatalf("double free of %#x not refused", a)
				}
				delete(held, a)
				break
			}
		}
		if q.FreeFrames()+len(held) != q.NumFrames() {
			t.Fatalf("free %d + held %d != total %d", q.FreeFrames(), len(held), q.NumFrames())
		}
	}
	s := q.Stats()
	if s.DoubleFrees == 0 || s.BadAddrs == 0 {
		t.Errorf("refusals not counted: %+v", s)
	}
}

func TestRefillAndFill(t *testing.T) {
	q := newMemQueue(t, 32, 4096, 0)
	if n := q.Refill(10); n != 10 {
		t.Fatalf("refill 10: %d", n)
	}
	if n := q.Refill(0); n != 22 {
		t.Fatalf("refill rest: %d", n)
	}
	if q.FreeFrames() != 0 || q.Refill(0) != 0 {
		t.Fatal("refill from an empty pool")
	}
	// Simulate the kernel consuming 4 fill entries and receiving them.
	idx, n := q.fill.peek(4)
	var descs []Desc
	for i := range n {
		a := *q.fill.at(idx + i)
		q.pool.fromKernel(a) // as Receive does
		descs = append(descs, Desc{Addr: a + 256, Len: 60})
	}
	q.fill.release(n)
	// A frame the kernel still owns cannot be freed.
	if q.Free([]uint64{*q.fill.at(q.fill.cachedCons)}) != 0 {
		t.Fatal("freed a frame that sits in the fill ring")
	}
	// Frame data of a received descriptor.
	if f := q.Frame(descs[0]); len(f) != 60 {
		t.Fatalf("frame len %d", len(f))
	}
	// Fill takes them back, masked to the frame base; a bogus address
	// is skipped.
	addrs := []uint64{descs[0].Addr, 1 << 50, descs[1].Addr}
	if used := q.Fill(addrs); used != 3 {
		t.Fatalf("fill used %d", used)
	}
	if q.Stats().Rejected != 1 {
		t.Fatalf("rejected %d", q.Stats().Rejected)
	}
	if got := *q.fill.at(q.fill.cachedProd - 1); got != descs[1].Addr&^4095 {
		t.Fatalf("fill ring got %#x, want frame base %#x", got, descs[1].Addr&^4095)
	}
	if q.fill.pending() != 30 {
		t.Fatalf("fill ring holds %d, want 30", q.fill.pending())
	}
}

// FuzzFrame: descriptors from the rings or the caller never yield a slice
// outside the queue's frames, never cross a frame, and never panic.
func FuzzFrame(f *testing.F) {
	f.Add(uint64(0), uint32(60))
	f.Add(uint64(2048*5-1), uint32(2))
	f.Add(^uint64(0), ^uint32(0))
	f.Add(uint64(2048*2+256), uint32(1792))
	q := newMemQueue(f, 8, 2048, 2)
	var a [1]uint64
	q.Alloc(a[:])
	f.Fuzz(func(t *testing.T, addr uint64, n uint32) {
		d := Desc{Addr: addr, Len: n}
		b := q.Frame(d)
		if b != nil {
			if addr < q.lo || addr+uint64(n) > q.hi || len(b) != int(n) {
				t.Fatalf("Frame(%+v) returned %d bytes outside [%#x,%#x)", d, len(b), q.lo, q.hi)
			}
			if n > 0 && addr/2048 != (addr+uint64(n)-1)/2048 {
				t.Fatalf("Frame(%+v) crosses a frame", d)
			}
		}
		if buf := q.Buffer(addr); buf != nil && (addr < q.lo || addr >= q.hi || addr/2048 != (addr+uint64(len(buf))-1)/2048) {
			t.Fatalf("Buffer(%#x) out of frame", addr)
		}
		if q.validTx(d) && (addr < q.lo || addr+uint64(n) > q.hi || n == 0) {
			t.Fatalf("validTx accepted %+v", d)
		}
		q.Free([]uint64{addr})
		q.Alloc(a[:])
	})
}

// TestNoAllocs: the per-batch frame and ring operations allocate nothing.
func TestNoAllocs(t *testing.T) {
	q := newMemQueue(t, 256, 2048, 0)
	addrs := make([]uint64, 64)
	descs := make([]Desc, 64)
	allocs := testing.AllocsPerRun(100, func() {
		q.Refill(64)
		// The "kernel" takes the fill entries and hands them back as
		// received frames, which go back to the fill ring or the pool.
		idx, n := q.fill.peek(64)
		for i := range n {
			a := *q.fill.at(idx + i)
			q.pool.fromKernel(a)
			descs[i] = Desc{Addr: a + 256, Len: 64}
		}
		q.fill.release(n)
		_ = q.Frame(descs[0])
		q.FillDescs(descs[:n/2])
		q.FreeDescs(descs[n/2 : n])
		idx, n = q.fill.peek(64)
		for i := range n {
			addrs[i] = *q.fill.at(idx + i)
		}
		q.fill.release(n)
		// Completion path: frames come back on the completion ring.
		cidx, k := q.comp.reserve(n)
		for i := range k {
			*q.comp.at(cidx + i) = addrs[i]
		}
		q.comp.submit()
		q.Reap()
		k = uint32(q.Alloc(addrs))
		_ = q.Buffer(addrs[0])
		q.Free(addrs[:k])
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch, want 0", allocs)
	}
	if s := q.Stats(); s.DoubleFrees != 0 || s.BadAddrs != 0 || s.Rejected != 0 || s.Free != s.Total {
		t.Errorf("accounting after the cycle: %+v", s)
	}
}
