package pktgen

import (
	"math"
	"math/bits"
	"sort"
)

// Histogram is a fixed log-linear histogram of nanosecond values: exact
// below 16, then 16 buckets per power of two (at most 6.25% relative
// error). Recording neither allocates nor fails.
type Histogram struct {
	counts   [histBuckets]uint64
	n        uint64
	sum      float64
	min, max uint64
}

const (
	histSub     = 16 // buckets per power of two
	histShift   = 4  // log2(histSub)
	histBuckets = (64-histShift)*histSub + histSub
)

func histIndex(v uint64) int {
	if v < histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histShift - 1
	return shift*histSub + int(v>>shift) // v>>shift is in [16, 32)
}

// histUpper is the largest value that lands in bucket i.
func histUpper(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	shift := i/histSub - 1
	mant := uint64(i%histSub + histSub)
	return (mant+1)<<shift - 1
}

// Record adds one value.
func (h *Histogram) Record(v uint64) {
	h.counts[histIndex(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// Count is the number of recorded values.
func (h *Histogram) Count() uint64 { return h.n }

// Min and Max are the exact extremes (0 when empty).
func (h *Histogram) Min() uint64 { return h.min }
func (h *Histogram) Max() uint64 { return h.max }

// Mean is the exact average (0 when empty).
func (h *Histogram) Mean() float64 {
	if h.n == 0 {
		return 0
	}
	return h.sum / float64(h.n)
}

// Quantile returns an upper bound of the q-quantile (0 <= q <= 1), at
// most 6.25% above it and never above Max.
func (h *Histogram) Quantile(q float64) uint64 {
	if h.n == 0 {
		return 0
	}
	if math.IsNaN(q) || q < 0 {
		q = 0
	}
	rank := uint64(math.Ceil(min(q, 1) * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(max(histUpper(i), h.min), h.max)
		}
	}
	return h.max
}

// Merge adds o's values to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// Reset empties h.
func (h *Histogram) Reset() { *h = Histogram{} }

// Latency summarises a histogram in nanoseconds.
type Latency struct {
	Count uint64  `json:"count"`
	Min   uint64  `json:"min_ns"`
	Mean  float64 `json:"mean_ns"`
	P50   uint64  `json:"p50_ns"`
	P99   uint64  `json:"p99_ns"`
	Max   uint64  `json:"max_ns"`
}

// Summary returns the usual percentiles.
func (h *Histogram) Summary() Latency {
	return Latency{Count: h.n, Min: h.min, Mean: h.Mean(), P50: h.Quantile(0.5), P99: h.Quantile(0.99), Max: h.max}
}

// TrackWindow is how far back (in sequence numbers) a Tracker can tell a
// reordered frame from a duplicate.
const TrackWindow = 1024

// StreamStats are a Tracker's counts for one stream.
type StreamStats struct {
	Stream     uint32 `json:"stream"`
	Received   uint64 `json:"received"`   // frames, duplicates included
	Lost       uint64 `json:"lost"`       // sequence numbers below NextSeq not (yet) seen
	Reordered  uint64 `json:"reordered"`  // arrived after a higher sequence number
	Duplicates uint64 `json:"duplicates"` // seen before, within TrackWindow
	// Late arrived more than TrackWindow behind NextSeq: reordered or
	// duplicate, the tracker cannot tell, and Lost is not corrected.
	Late    uint64  `json:"late"`
	NextSeq uint64  `json:"next_seq"` // highest sequence number seen + 1
	Latency Latency `json:"latency"`
}

// Tracker counts what receivers get from vmq-pktgen: per stream received,
// lost, reordered and duplicate frames, and one-way latency (receive time
// minus the payload's CLOCK_MONOTONIC stamp, valid on one host). Streams
// count from sequence number 0, so a receiver that starts late counts the
// frames before as lost.
//
// Observe does not allocate, except once per new stream. A Tracker is
// not safe for concurrent use: keep one per receiving goroutine and Merge
// their Stats.
type Tracker struct {
	index     map[uint32]int
	streams   []*trackedStream
	max       int
	untracked uint64
	invalid   uint64
}

type trackedStream struct {
	id                           uint32
	next                         uint64 // highest seq seen + 1
	recv, lost, reord, dup, late uint64
	window                       [TrackWindow / 64]uint64 // bit s%TrackWindow for s in [next-TrackWindow, next)
	hist                         Histogram
}

// NewTracker tracks up to maxStreams streams (at least 1); frames of
// further streams only count in Untracked.
func NewTracker(maxStreams int) *Tracker {
	maxStreams = max(maxStreams, 1)
	return &Tracker{index: make(map[uint32]int, min(maxStreams, 1024)), max: maxStreams}
}

// ObserveFrame parses an Ethernet frame and observes its payload at time
// now (CLOCK_MONOTONIC ns, e.g. one MonotonicNS per batch). Frames without
// a payload count in Invalid and return false.
func (t *Tracker) ObserveFrame(frame []byte, now uint64) bool {
	p, ok := ParseFrame(frame)
	if !ok {
		t.invalid++
		return false
	}
	t.Observe(p, now)
	return true
}

// Observe counts one received payload at time now.
func (t *Tracker) Observe(p Payload, now uint64) {
	s := t.stream(p.Stream)
	if s == nil {
		t.untracked++
		return
	}
	s.recv++
	var lat uint64
	if now > p.TimestampNS {
		lat = now - p.TimestampNS
	}
	s.hist.Record(lat)
	seq := p.Seq
	switch {
	case seq >= s.next:
		gap := seq - s.next
		s.lost += gap
		if gap >= TrackWindow {
			s.window = [TrackWindow / 64]uint64{}
		} else {
			for x := s.next; x < seq; x++ {
				s.window[x/64%uint64(len(s.window))] &^= 1 << (x % 64)
			}
		}
		s.mark(seq)
		s.next = seq + 1
	case s.next-seq > TrackWindow:
		s.late++
	case s.marked(seq):
		s.dup++
	default:
		s.mark(seq)
		s.reord++
		s.lost--
	}
}

func (s *trackedStream) mark(seq uint64) {
	s.window[seq/64%uint64(len(s.window))] |= 1 << (seq % 64)
}

func (s *trackedStream) marked(seq uint64) bool {
	return s.window[seq/64%uint64(len(s.window))]&(1<<(seq%64)) != 0
}

func (t *Tracker) stream(id uint32) *trackedStream {
	// The common case: frames of the last stream seen.
	if n := len(t.streams); n > 0 && t.streams[n-1].id == id {
		return t.streams[n-1]
	}
	if i, ok := t.index[id]; ok {
		return t.streams[i]
	}
	if len(t.streams) >= t.max {
		return nil
	}
	s := &trackedStream{id: id}
	t.index[id] = len(t.streams)
	t.streams = append(t.streams, s)
	return s
}

// Untracked counts frames of streams beyond the tracker's capacity.
func (t *Tracker) Untracked() uint64 { return t.untracked }

// Invalid counts frames ObserveFrame found no payload in.
func (t *Tracker) Invalid() uint64 { return t.invalid }

// Stats returns each stream's counts, ordered by stream.
func (t *Tracker) Stats() []StreamStats {
	out := make([]StreamStats, 0, len(t.streams))
	for _, s := range t.streams {
		out = append(out, s.stats())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Stream < out[j].Stream })
	return out
}

// Stream returns the counts of one stream, and false if it was never seen.
func (t *Tracker) Stream(id uint32) (StreamStats, bool) {
	if i, ok := t.index[id]; ok {
		return t.streams[i].stats(), true
	}
	return StreamStats{Stream: id}, false
}

// Total sums all streams (Stream and NextSeq are 0; latency merges all).
func (t *Tracker) Total() StreamStats {
	var tot StreamStats
	var h Histogram
	for _, s := range t.streams {
		tot.Received += s.recv
		tot.Lost += s.lost
		tot.Reordered += s.reord
		tot.Duplicates += s.dup
		tot.Late += s.late
		h.Merge(&s.hist)
	}
	tot.Latency = h.Summary()
	return tot
}

func (s *trackedStream) stats() StreamStats {
	return StreamStats{
		Stream: s.id, Received: s.recv, Lost: s.lost, Reordered: s.reord,
		Duplicates: s.dup, Late: s.late, NextSeq: s.next, Latency: s.hist.Summary(),
	}
}
