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
	// Full batches: held three rounds (192 frames), the fourth sends 256.
	for i := range xdpHoldRounds {
		if !round(batchSize) {
			t.Fatalf("round %d of full batches sent at once", i)
		}
	}
	if round(batchSize) || len(x.descs) != xsk.XDPTxMaxBatch {
		t.Fatalf("the fourth full round held (%d frames)", len(x.descs))
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
