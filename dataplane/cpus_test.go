package dataplane

import (
	"runtime"
	"testing"
)

// Reservations from several dataplanes add up, are given back in any
// order and only once, and the last gives GOMAXPROCS its value back.
func TestReserveWorkerPs(t *testing.T) {
	base := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(base) })
	a := reserveWorkerPs(func(int) int { return 2 })
	if got := runtime.GOMAXPROCS(0); got != base+2 {
		t.Fatalf("after +2: GOMAXPROCS %d, want %d", got, base+2)
	}
	var sawBase int
	b := reserveWorkerPs(func(procs int) int { sawBase = procs; return 3 })
	if sawBase != base {
		t.Errorf("second reservation saw base %d, want %d (not the raised value)", sawBase, base)
	}
	if got := runtime.GOMAXPROCS(0); got != base+5 {
		t.Fatalf("after +2 +3: GOMAXPROCS %d, want %d", got, base+5)
	}
	a()
	a() // once
	if got := runtime.GOMAXPROCS(0); got != base+3 {
		t.Fatalf("after giving back 2 (twice): GOMAXPROCS %d, want %d", got, base+3)
	}
	zero := reserveWorkerPs(func(int) int { return 0 })
	b()
	if got := runtime.GOMAXPROCS(0); got != base {
		t.Fatalf("with only a reservation of 0 left: GOMAXPROCS %d, want %d", got, base)
	}
	zero()
	if got := runtime.GOMAXPROCS(0); got != base {
		t.Fatalf("after the last: GOMAXPROCS %d, want %d", got, base)
	}
}
