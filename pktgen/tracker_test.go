package pktgen

import (
	"math/rand/v2"
	"sort"
	"testing"
)

func observeSeqs(tr *Tracker, stream uint32, seqs ...uint64) {
	for _, s := range seqs {
		tr.Observe(Payload{Stream: stream, Seq: s, TimestampNS: 100}, 100+1000*(s+1))
	}
}

func TestTrackerCounts(t *testing.T) {
	tr := NewTracker(4)
	// 0 1 2 [3 lost] 5 4 (reordered) 4 (dup) 6 ... 9, 8 again (dup)
	observeSeqs(tr, 1, 0, 1, 2, 5, 4, 4, 6, 7, 8, 9, 8)
	observeSeqs(tr, 2, 0, 1)
	got, ok := tr.Stream(1)
	if !ok {
		t.Fatal("stream 1 unknown")
	}
	got.Latency = Latency{}
	want := StreamStats{Stream: 1, Received: 11, Lost: 1, Reordered: 1, Duplicates: 2, NextSeq: 10}
	if got != want {
		t.Fatalf("stream 1: %+v, want %+v", got, want)
	}
	// The lost 3 arrives late, within the window: no longer lost.
	observeSeqs(tr, 1, 3)
	if got, _ := tr.Stream(1); got.Lost != 0 || got.Reordered != 2 {
		t.Fatalf("after late 3: %+v", got)
	}
	tot := tr.Total()
	if tot.Received != 14 || tot.Lost != 0 || tot.Duplicates != 2 || tot.Latency.Count != 14 {
		t.Fatalf("total %+v", tot)
	}
	st := tr.Stats()
	if len(st) != 2 || st[0].Stream != 1 || st[1].Stream != 2 {
		t.Fatalf("stats %+v", st)
	}
	// Latency of seq s was 1000*(s+1) - 0.
	if l := st[1].Latency; l.Min != 1000 || l.Max != 2000 || l.Mean != 1500 {
		t.Fatalf("stream 2 latency %+v", l)
	}
}

func TestTrackerWindowAndCapacity(t *testing.T) {
	tr := NewTracker(1)
	observeSeqs(tr, 9, 0, 5000) // a big gap clears the window
	observeSeqs(tr, 9, 1)       // far behind: late, cannot tell dup from reorder
	observeSeqs(tr, 9, 5001-TrackWindow)
	observeSeqs(tr, 9, 5001-TrackWindow)
	s, _ := tr.Stream(9)
	want := StreamStats{Stream: 9, Received: 5, Lost: 4998, Reordered: 1, Duplicates: 1, Late: 1, NextSeq: 5001}
	s.Latency = Latency{}
	if s != want {
		t.Fatalf("%+v, want %+v", s, want)
	}
	observeSeqs(tr, 10, 0)
	if tr.Untracked() != 1 {
		t.Fatalf("untracked %d", tr.Untracked())
	}
	if tr.ObserveFrame([]byte{1, 2, 3}, 0) || tr.Invalid() != 1 {
		t.Fatal("junk frame accepted")
	}
}

// A shuffled, lossy, duplicating stream against a straightforward model.
func TestTrackerModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 50; round++ {
		var seqs []uint64
		for s := uint64(0); s < 3000; s++ {
			if rng.IntN(10) == 0 {
				continue // lost
			}
			seqs = append(seqs, s)
			if rng.IntN(20) == 0 {
				seqs = append(seqs, s) // duplicated
			}
		}
		// Local reordering, well inside the window.
		for i := range seqs {
			j := min(len(seqs)-1, i+rng.IntN(8))
			seqs[i], seqs[j] = seqs[j], seqs[i]
		}
		tr := NewTracker(1)
		observeSeqs(tr, 0, seqs...)
		got, _ := tr.Stream(0)
		seen := map[uint64]bool{}
		var dups, reord uint64
		var high uint64
		for i, s := range seqs {
			if seen[s] {
				dups++
			} else if i > 0 && s < high {
				reord++
			}
			seen[s] = true
			if i == 0 || s+1 > high {
				high = s + 1
			}
		}
		lost := high - uint64(len(seen))
		if got.Received != uint64(len(seqs)) || got.Duplicates != dups || got.Reordered != reord || got.Lost != lost || got.NextSeq != high || got.Late != 0 {
			t.Fatalf("round %d: %+v; want dups %d reord %d lost %d next %d", round, got, dups, reord, lost, high)
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	vals := make([]uint64, 0, 10000)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 10000; i++ {
		v := uint64(rng.ExpFloat64() * 50000)
		vals = append(vals, v)
		h.Record(v)
	}
	sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 1} {
		exact := vals[max(0, int(q*float64(len(vals))+0.999999)-1)]
		got := h.Quantile(q)
		if got < exact || float64(got) > float64(exact)*1.0625+1 {
			t.Errorf("q%v = %d, exact %d", q, got, exact)
		}
	}
	if h.Max() != vals[len(vals)-1] || h.Min() != vals[0] || h.Count() != 10000 {
		t.Fatalf("min %d max %d count %d", h.Min(), h.Max(), h.Count())
	}
	var m Histogram
	m.Merge(&h)
	m.Merge(&h)
	if m.Count() != 20000 || m.Quantile(0.5) != h.Quantile(0.5) {
		t.Fatalf("merge: count %d p50 %d vs %d", m.Count(), m.Quantile(0.5), h.Quantile(0.5))
	}
	for _, v := range []uint64{0, 1, 15, 16, 17, 31, 32, 33, 1 << 40, 1<<64 - 1} {
		i := histIndex(v)
		if i >= histBuckets || histUpper(i) < v || (i > 0 && histUpper(i-1) >= v) {
			t.Errorf("value %d in bucket %d with upper %d", v, i, histUpper(i))
		}
	}
}

func TestTrackerNoAlloc(t *testing.T) {
	tr := NewTracker(8)
	tm, _ := NewTemplate(FlowSpec{Dests: []Dest{{MAC: mac("02:00:00:00:00:0a")}}})
	f := tm.Frame(0, 1)
	tr.ObserveFrame(f, 10) // creates the stream
	var seq uint64
	allocs := testing.AllocsPerRun(1000, func() {
		seq++
		tr.Observe(Payload{Stream: 0, Seq: seq, TimestampNS: 5}, 100)
		tr.ObserveFrame(f, 100)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per observed frame", allocs)
	}
}

func BenchmarkTrackerObserveFrame(b *testing.B) {
	tm, _ := NewTemplate(FlowSpec{Dests: []Dest{{MAC: mac("02:00:00:00:00:0a")}, {MAC: mac("02:00:00:00:00:0b")}}})
	frames := make([][]byte, 64)
	for i := range frames {
		frames[i] = tm.Frame(uint64(i), 1000)
	}
	tr := NewTracker(4)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		f := frames[i%64]
		tm.Stamp(f, uint64(i), 1000)
		tr.ObserveFrame(f, 5000)
	}
}

// FuzzTracker feeds arbitrary payload sequences: no panic, and the counts
// stay consistent with each other.
func FuzzTracker(f *testing.F) {
	f.Add([]byte{0, 1, 2, 5, 4, 4, 255, 3})
	f.Add([]byte{200, 0, 0, 0, 100})
	f.Fuzz(func(t *testing.T, b []byte) {
		tr := NewTracker(2)
		distinct := map[[2]uint64]bool{}
		for i := 0; i+1 < len(b); i += 2 {
			stream := uint32(b[i] >> 6)
			seq := uint64(b[i]&0x3f)<<8 | uint64(b[i+1])
			seq *= uint64(b[i]>>4&3) + 1 // some big jumps
			tr.Observe(Payload{Stream: stream, Seq: seq, TimestampNS: uint64(b[i+1]) << 20}, uint64(i)<<16)
			distinct[[2]uint64{uint64(stream), seq}] = true
		}
		var total uint64
		for _, s := range tr.Stats() {
			if s.Duplicates+s.Late > s.Received || s.Lost > s.NextSeq || s.Latency.Count != s.Received {
				t.Fatalf("inconsistent %+v", s)
			}
			// Every sequence number below NextSeq is either seen or lost,
			// exactly once; late frames are not placed.
			if s.Received-s.Duplicates-s.Late+s.Lost != s.NextSeq {
				t.Fatalf("seqs unaccounted: %+v", s)
			}
			total += s.Received
		}
		if total+tr.Untracked() != uint64(len(b)/2) {
			t.Fatalf("frames: %d tracked + %d untracked, fed %d", total, tr.Untracked(), len(b)/2)
		}
	})
}
