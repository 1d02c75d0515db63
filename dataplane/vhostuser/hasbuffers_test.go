package vhostuser

import (
	"errors"
	"testing"
)

// HasBuffers sees exactly the buffers Push would use, and CountDrops
// counts like the Pushes it replaces.
func TestHasBuffersAndCountDrops(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures, true)
		q := g.queue()
		if ok, err := q.HasBuffers(); ok || err != nil {
			t.Fatalf("empty ring: HasBuffers %v, %v", ok, err)
		}
		postRX(g, 2048)
		if ok, err := q.HasBuffers(); !ok || err != nil {
			t.Fatalf("one buffer posted: HasBuffers %v, %v", ok, err)
		}
		if err := q.Push(frameOf(60, 1)); err != nil {
			t.Fatal(err)
		}
		if ok, _ := q.HasBuffers(); ok {
			t.Fatal("HasBuffers after its one buffer was used")
		}
		if err := q.Push(frameOf(60, 1)); !errors.Is(err, ErrNoBuffers) {
			t.Fatalf("push without buffers: %v", err)
		}
		q.CountDrops(DropNoBuffers, 5)
		q.CountDrops(DropNoBuffers, -1) // ignored
		q.CountDrops(NumDropReasons, 1) // ignored
		q.Flush()
		if s := q.Stats(); s.Frames != 1 || s.Drops[DropNoBuffers] != 6 {
			t.Fatalf("stats %+v, want 1 frame and 6 no_buffers drops", s)
		}
		q.broken = true
		if ok, err := q.HasBuffers(); ok || !errors.Is(err, ErrBroken) {
			t.Fatalf("broken device: HasBuffers %v, %v", ok, err)
		}
	})
}

// TouchRx only reads: the ring's state, the room it reports and the Push
// that follows are as without it, and a broken queue is not read.
func TestTouchRxChangesNothing(t *testing.T) {
	forLayouts(t, func(t *testing.T, l layout) {
		g := l.guest(t, 8, testFeatures, true)
		q := g.queue()
		postRX(g, 2048)
		last, idx, used := q.lastAvail, q.availIdx, q.usedIdx
		x := q.TouchRx()
		if q.lastAvail != last || q.availIdx != idx || q.usedIdx != used || q.isBroken() {
			t.Fatalf("TouchRx changed the ring: lastAvail %d→%d availIdx %d→%d usedIdx %d→%d broken %v",
				last, q.lastAvail, idx, q.availIdx, used, q.usedIdx, q.isBroken())
		}
		if q.packed && x != 0 {
			t.Fatalf("packed ring: TouchRx read %d, want nothing read", x)
		}
		if n := q.RxRoom(4); n != 1 {
			t.Fatalf("RxRoom after TouchRx %d, want 1", n)
		}
		if err := q.Push(frameOf(60, 1)); err != nil {
			t.Fatal(err)
		}
		q.broken = true
		if x := q.TouchRx(); x != 0 {
			t.Fatalf("broken queue: TouchRx read %d", x)
		}
	})
}
