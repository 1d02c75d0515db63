package bpf

import (
	"testing"

	"github.com/vmq/vmq/internal/testenv"
)

// Take leaves a word whose bits the taker visits anyway, and clears one
// with a bit it does not.
func TestPendingTakeLeavesKnownBits(t *testing.T) {
	testenv.RequireRoot(t)
	f, err := Load(Config{MaxVMs: 8, MaxQueues: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	p, err := f.MapPending(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	word := func() (v uint64) {
		if err := f.objs.Pending.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if err := f.objs.Pending.Put(uint32(0), uint64(0b110)); err != nil {
		t.Fatal(err)
	}
	if got := p.Take(0, 0b111); got != 0 || word() != 0b110 {
		t.Fatalf("bits all known: Take %#b, word %#b; want 0 and the word kept", got, word())
	}
	if got := p.Take(0, 0b010); got != 0b110 || word() != 0 {
		t.Fatalf("a new bit: Take %#b, word %#b; want 0b110 and the word cleared", got, word())
	}
	if got := p.Take(0, 0); got != 0 {
		t.Fatalf("empty word: Take %#b", got)
	}
}
