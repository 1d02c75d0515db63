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
