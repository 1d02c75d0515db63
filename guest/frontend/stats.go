package frontend

import (
	"math/bits"
	"slices"
	"time"

	"github.com/vmq/vmq/pktgen"
)

// Stats is a snapshot of a guest's counters, summed over queues and
// connections.
type Stats struct {
	RxFrames    uint64        `json:"rx_frames"`
	RxBytes     uint64        `json:"rx_bytes"`
	TxFrames    uint64        `json:"tx_frames"`
	TxBytes     uint64        `json:"tx_bytes"`
	RxDropped   uint64        `json:"rx_dropped"`   // frames too long to assemble
	TxRingFull  uint64        `json:"tx_ring_full"` // sends that found no free buffer
	ARPReplies  uint64        `json:"arp_replies"`
	ICMPReplies uint64        `json:"icmp_replies"`
	Unstamped   uint64        `json:"unstamped"` // received frames without a pktgen payload
	Kicks       uint64        `json:"kicks"`     // notifications written to kick fds
	Wakeups     uint64        `json:"wakeups"`   // sleeps ended by a call fd
	Connects    uint64        `json:"connects"`
	Disconnects uint64        `json:"disconnects"`
	Features    uint64        `json:"features"` // negotiated with the (last) backend
	Queues      []QueueStats  `json:"queues"`
	Streams     []StreamStats `json:"streams"`
}

// QueueStats counts one queue pair.
type QueueStats struct {
	RxFrames uint64 `json:"rx_frames"`
	TxFrames uint64 `json:"tx_frames"`
}

// StreamStats counts the frames of one pktgen stream.
type StreamStats struct {
	Stream     uint32 `json:"stream"`
	Received   uint64 `json:"received"`
	Lost       uint64 `json:"lost"`       // sequence numbers never seen (so far)
	Reordered  uint64 `json:"reordered"`  // frames that arrived after a later one
	Duplicates uint64 `json:"duplicates"` // sequence numbers seen twice (within the window)
	MaxSeq     uint64 `json:"max_seq"`
	// Latency from the payload timestamp to reception, CLOCK_MONOTONIC.
	LatencyP50 time.Duration `json:"latency_p50_ns"`
	LatencyP99 time.Duration `json:"latency_p99_ns"`
	LatencyMax time.Duration `json:"latency_max_ns"`
}

// seqWindow is how far back duplicates and late frames are told apart.
const seqWindow = 8192

// stream tracks one pktgen stream; no allocation after creation.
type stream struct {
	id                         uint32
	received, lost, reord, dup uint64
	next                       uint64 // highest seq seen + 1
	seen                       [seqWindow / 64]uint64
	hist                       histogram
	started                    bool
}

func (s *stream) observe(seq uint64, latency int64) {
	s.received++
	if latency >= 0 {
		s.hist.add(uint64(latency))
	}
	switch {
	case !s.started || seq >= s.next:
		if s.started {
			gap := seq - s.next
			s.lost += gap
			// Clear the window bits the jump passes over.
			if gap >= seqWindow {
				clear(s.seen[:])
			} else {
				for q := s.next; q < seq; q++ {
					s.clearSeen(q)
				}
			}
		} else {
			s.lost = seq // frames before the first one we saw
			clear(s.seen[:])
		}
		s.started = true
		s.next = seq + 1
		s.setSeen(seq)
	case s.next-seq > seqWindow:
		// Too old to tell: a late frame, once counted lost.
		s.reord++
		if s.lost > 0 {
			s.lost--
		}
	case s.isSeen(seq):
		s.dup++
	default:
		s.reord++
		s.setSeen(seq)
		if s.lost > 0 {
			s.lost--
		}
	}
}

func (s *stream) setSeen(q uint64)     { s.seen[(q/64)%(seqWindow/64)] |= 1 << (q % 64) }
func (s *stream) clearSeen(q uint64)   { s.seen[(q/64)%(seqWindow/64)] &^= 1 << (q % 64) }
func (s *stream) isSeen(q uint64) bool { return s.seen[(q/64)%(seqWindow/64)]&(1<<(q%64)) != 0 }

func (s *stream) snapshot() StreamStats {
	return StreamStats{
		Stream: s.id, Received: s.received, Lost: s.lost, Reordered: s.reord, Duplicates: s.dup,
		MaxSeq:     s.next - 1,
		LatencyP50: time.Duration(s.hist.quantile(0.50)),
		LatencyP99: time.Duration(s.hist.quantile(0.99)),
		LatencyMax: time.Duration(s.hist.max),
	}
}

// histogram is log-linear: 8 sub-buckets per power of two, so a quantile
// is within 12.5% of the truth; values below 16 are exact.
type histogram struct {
	counts [16 + 60*8]uint64
	total  uint64
	max    uint64
}

func bucketOf(v uint64) int {
	if v < 16 {
		return int(v)
	}
	e := bits.Len64(v) - 1 // >= 4
	return 16 + (e-4)*8 + int(v>>(e-3)&7)
}

// bucketLow is the smallest value of bucket i.
func bucketLow(i int) uint64 {
	if i < 16 {
		return uint64(i)
	}
	e := (i-16)/8 + 4
	return uint64(8+(i-16)%8) << (e - 3)
}

func (h *histogram) add(v uint64) {
	h.counts[bucketOf(v)]++
	h.total++
	h.max = max(h.max, v)
}

// quantile returns the middle of the bucket holding quantile q, capped at max.
func (h *histogram) quantile(q float64) uint64 {
	if h.total == 0 {
		return 0
	}
	rank := uint64(q*float64(h.total-1)) + 1
	var acc uint64
	for i, c := range h.counts {
		acc += c
		if acc >= rank {
			lo := bucketLow(i)
			hi := lo
			if i+1 < len(h.counts) {
				hi = bucketLow(i+1) - 1
			}
			return min(lo+(hi-lo)/2, h.max)
		}
	}
	return h.max
}

// streamTable maps stream ids to their trackers. It is used only by the
// goroutine that polls rx under Guest.statsMu.
type streamTable struct {
	m         map[uint32]*stream
	unstamped uint64
}

func (t *streamTable) frame(frame []byte, now uint64) {
	p, ok := pktgen.ParseFrame(frame)
	if !ok {
		t.unstamped++
		return
	}
	s := t.m[p.Stream]
	if s == nil {
		if t.m == nil {
			t.m = make(map[uint32]*stream)
		}
		s = &stream{id: p.Stream}
		t.m[p.Stream] = s
	}
	lat := int64(-1)
	if p.TimestampNS != 0 && now >= p.TimestampNS {
		lat = int64(now - p.TimestampNS)
	}
	s.observe(p.Seq, lat)
}

func (t *streamTable) snapshot() []StreamStats {
	out := make([]StreamStats, 0, len(t.m))
	for _, s := range t.m {
		out = append(out, s.snapshot())
	}
	slices.SortFunc(out, func(a, b StreamStats) int { return int(int64(a.Stream) - int64(b.Stream)) })
	return out
}
