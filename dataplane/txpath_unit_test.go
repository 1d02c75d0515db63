package dataplane

import (
	"testing"

	"github.com/vmq/vmq/dataplane/xsk"
)

// A saturated worker (rounds of full batches) holds its wire frames over
// at most xdpHoldRounds rounds and never past a call's capacity; a round
// that added less than a batch sends at once.
func TestXDPHoldOver(t *testing.T) {
	x := &xdpTxState{descs: make([]xsk.Desc, 0, xsk.XDPTxMaxBatch)}
	round := func(n int) bool {
		x.descs = x.descs[:len(x.descs)+n]
		x.added += n
		return x.holdOver()
	}
	flush := func() { x.descs, x.held = x.descs[:0], 0 }
	if !x.holdOver() {
		t.Fatal("an empty round asked for a call")
	}
	// Full batches: held xdpHoldRounds rounds, the next one sends them all.
	for i := range xdpHoldRounds {
		if !round(batchSize) {
			t.Fatalf("round %d of full batches sent at once", i)
		}
	}
	if round(batchSize) || len(x.descs) != (xdpHoldRounds+1)*batchSize {
		t.Fatalf("round %d of full batches held (%d frames)", xdpHoldRounds+1, len(x.descs))
	}
	if timeEvery%(xdpHoldRounds+1) == 0 {
		t.Fatalf("a hold cycle of %d rounds aliases with the timed round in %d", xdpHoldRounds+1, timeEvery)
	}
	flush()
	// A short round sends, even after held rounds.
	if !round(batchSize) || round(10) {
		t.Fatal("a short round after a full one held its frames")
	}
	flush()
	// A round with no new frames sends what was held.
	if !round(batchSize) || round(0) {
		t.Fatal("a quiet round held its frames")
	}
	flush()
	// No hold past the call's capacity: 200 frames leave no room for a batch.
	if round(200) {
		t.Fatal("held 200 frames with no room for another batch")
	}
}
