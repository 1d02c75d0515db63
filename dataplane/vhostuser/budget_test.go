package vhostuser

import (
	"errors"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
)

// A ring of zero-length writable chains with MRG_RXBUF would make every
// Push walk the whole ring and roll back. The budget bounds that walk: the
// Push stops after the budget, the frame is dropped as "budget", the
// guest's buffers stay posted, and the next Push in the round costs
// nothing.
func TestBudgetBoundsZeroLengthRXChains(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		const num = 1024
		g := l.guest(t, num, testFeatures|virtio.NetFMrgRxbuf, true)
		q := g.queue()
		a := g.alloc(16)
		for i := 0; i < num; i++ {
			g.post(tdesc{addr: a, len: 0, flags: virtio.DescFWrite})
		}
		q.SetBudget(100)
		if err := q.Push(frameOf(60, 1)); !errors.Is(err, ErrBudget) {
			t.Fatalf("push into zero-length chains: %v, want ErrBudget", err)
		}
		if left := q.Budget(); left != 0 {
			t.Fatalf("budget left %d, want 0 (it walked exactly its budget)", left)
		}
		if err := q.Push(frameOf(60, 1)); !errors.Is(err, ErrBudget) {
			t.Fatalf("second push with no budget: %v, want ErrBudget", err)
		}
		q.Flush()
		if ids, _ := g.usedAll(); len(ids) != 0 {
			t.Fatalf("%d used: a rolled-back push consumed buffers", len(ids))
		}
		if st := q.st; st.Drops[DropBudget] != 2 || st.Frames != 0 { // nothing published: read the owner's counters
			t.Fatalf("stats %+v, want 2 budget drops", st)
		}
	})
}

// An indirect table of 32768 zero-length descriptors costs one budget's
// worth of walking, not 32768 descriptors per Push.
func TestBudgetBoundsHugeIndirectTable(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures|virtio.NetFMrgRxbuf, true)
		q := g.queue()
		ds := make([]tdesc, virtio.MaxQueueSize)
		buf := g.alloc(16)
		for i := range ds {
			ds[i] = tdesc{addr: buf, len: 0, flags: virtio.DescFWrite}
		}
		g.post(g.indirect(ds...))
		q.SetBudget(256)
		if err := q.Push(frameOf(60, 1)); !errors.Is(err, ErrBudget) {
			t.Fatalf("push into a huge indirect table: %v, want ErrBudget", err)
		}
		if q.Budget() != 0 {
			t.Fatalf("budget left %d", q.Budget())
		}
		// Unbounded, the same ring is walked to its end and refused as too
		// short for the frame: the budget is what kept the walk short.
		q.SetBudget(-1)
		if err := q.Push(frameOf(60, 1)); !errors.Is(err, ErrNoBuffers) {
			t.Fatalf("unbounded push: %v, want ErrNoBuffers", err)
		}
	})
}

// A TX chain the budget cannot finish waits for the next round when the
// budget was partly spent, so a well-behaved guest loses nothing at a
// round's end; a chain that a whole budget cannot finish is consumed and
// dropped, so the ring moves on.
func TestBudgetPopRetriesThenDrops(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 64, testFeatures, false)
		q := g.queue()
		f := frameOf(200, 3)
		g.sendFrame(f, 100) // header + 2 pieces: 3 descriptors
		g.sendFrame(f, 100)
		dst := make([]byte, 2048)

		q.SetBudget(4)
		if n, err := q.Pop(dst); err != nil || n != len(f) {
			t.Fatalf("first pop: %d, %v", n, err)
		}
		// One descriptor left: the second chain must wait, not be lost.
		if _, err := q.Pop(dst); !errors.Is(err, ErrBudget) {
			t.Fatalf("pop past the budget: %v, want ErrBudget", err)
		}
		q.SetBudget(4)
		if n, err := q.Pop(dst); err != nil || n != len(f) {
			t.Fatalf("retried pop next round: %d, %v", n, err)
		}

		// A 40-descriptor chain against a budget of 8: a whole budget cannot
		// finish it, so it is consumed and dropped.
		g.sendFrame(frameOf(40*10, 5), 10)
		g.sendFrame(f, 100)
		q.SetBudget(8)
		if _, err := q.Pop(dst); !errors.Is(err, ErrBudget) {
			t.Fatalf("pop of an over-long chain: %v, want ErrBudget", err)
		}
		q.SetBudget(8)
		if n, err := q.Pop(dst); err != nil || n != len(f) {
			t.Fatalf("pop after the dropped chain: %d, %v", n, err)
		}
		q.Flush()
		if ids, _ := g.usedAll(); len(ids) != 4 {
			t.Fatalf("%d used, want 4", len(ids))
		}
		if st := q.Stats(); st.Frames != 3 || st.Drops[DropBudget] != 1 {
			t.Fatalf("stats %+v, want 3 frames and 1 budget drop", st)
		}
	})
}

// With a budget of 0 nothing touches guest memory: even a ring whose
// rings point nowhere valid is not read.
func TestBudgetZeroTouchesNothing(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures, false)
		g.post(tdesc{addr: 0xdead0000, len: 64}) // would break the device if read
		g.queue().SetBudget(0)
		if _, err := g.queue().Pop(make([]byte, 2048)); !errors.Is(err, ErrBudget) {
			t.Fatalf("pop with budget 0: %v", err)
		}
		if g.queue().isBroken() {
			t.Fatal("a pop with no budget read the ring")
		}
	})
}
