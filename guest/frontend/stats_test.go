package frontend

import (
	"testing"
	"time"

	"github.com/vmq/vmq/pktgen"
)

func TestStreamAccounting(t *testing.T) {
	var s stream
	// 0..9 in order, 10 and 11 lost, 12..14, then 11 late, 12 again, 14 again.
	for _, q := range []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 11, 12, 14} {
		s.observe(q, 1000)
	}
	got := s.snapshot()
	if got.Received != 16 || got.Lost != 1 || got.Reordered != 1 || got.Duplicates != 2 || got.MaxSeq != 14 {
		t.Fatalf("%+v", got)
	}
	// A start mid-stream counts the frames before it lost.
	var late stream
	late.observe(5, -1)
	late.observe(6, -1)
	if g := late.snapshot(); g.Lost != 5 || g.Received != 2 {
		t.Fatalf("%+v", g)
	}
	// A jump beyond the window, then a frame older than the window.
	var far stream
	far.observe(0, -1)
	far.observe(seqWindow*3, -1)
	far.observe(10, -1)
	if g := far.snapshot(); g.Lost != seqWindow*3-1-1 || g.Reordered != 1 || g.Duplicates != 0 {
		t.Fatalf("%+v", g)
	}
	// After the window wraps, an old bit must not look like a duplicate.
	var wrap stream
	for q := range uint64(3 * seqWindow) {
		if q != 2*seqWindow+5 { // its window bit was set by 5 and seqWindow+5
			wrap.observe(q, -1)
		}
	}
	wrap.observe(2*seqWindow+5, -1) // missing, within the window: reordered
	if g := wrap.snapshot(); g.Duplicates != 0 || g.Reordered != 1 || g.Lost != 0 {
		t.Fatalf("%+v", g)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	for v := uint64(1); v <= 1000; v++ {
		h.add(v * 1000) // 1µs .. 1ms
	}
	for _, c := range []struct {
		q    float64
		want uint64
	}{{0.5, 500_000}, {0.99, 990_000}} {
		got := h.quantile(c.q)
		if got < c.want*88/100 || got > c.want*112/100 {
			t.Errorf("q%.2f = %d, want %d ±12.5%%", c.q, got, c.want)
		}
	}
	if h.max != 1_000_000 || h.quantile(1) > h.max {
		t.Errorf("max %d q1 %d", h.max, h.quantile(1))
	}
	for v := uint64(0); v < 1<<20; v = v*3 + 1 {
		i := bucketOf(v)
		if bucketLow(i) > v || (i+1 < len(h.counts) && bucketLow(i+1) <= v) {
			t.Fatalf("value %d in bucket %d [%d, %d)", v, i, bucketLow(i), bucketLow(i+1))
		}
	}
}

func TestStreamTableLatency(t *testing.T) {
	f, _ := BuildUDP(UDPTemplate{Dst: guestMAC, Src: peerMAC, SrcIP: guestIP, DstIP: guestIP, Size: 100})
	var tab streamTable
	now := pktgen.MonotonicNS()
	for i := range uint64(100) {
		pktgen.Payload{Stream: 7, Seq: i, TimestampNS: now - 2_000_000}.Put(f[PayloadOffset:])
		tab.frame(f, now)
	}
	tab.frame(make([]byte, 60), now)
	ss := tab.snapshot()
	if len(ss) != 1 || ss[0].Stream != 7 || ss[0].Received != 100 || tab.unstamped != 1 {
		t.Fatalf("%+v unstamped %d", ss, tab.unstamped)
	}
	if p := ss[0].LatencyP50; p < 1750*time.Microsecond || p > 2250*time.Microsecond || ss[0].LatencyMax != 2*time.Millisecond {
		t.Fatalf("latency p50 %v max %v, want 2ms", p, ss[0].LatencyMax)
	}
}
