package pktgen

import (
	"fmt"
	"math/bits"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// SinkSeqRange is how many sequence numbers (0..SinkSeqRange-1) of the
// tracked stream a Sink remembers individually.
const SinkSeqRange = (1 << 16) * 64

// SinkOptions configure a Sink.
type SinkOptions struct {
	// Pass returns XDP_PASS (frames go on to the stack); default XDP_DROP.
	Pass bool
	// Stream is the payload stream whose sequence numbers are tracked.
	Stream uint32
	// Generic attaches in generic (SKB) mode instead of native mode.
	Generic bool
}

// SinkStats are a Sink's counters.
type SinkStats struct {
	Frames   uint64 // every frame that reached the program
	Bytes    uint64
	Payloads uint64 // frames carrying a vmq-pktgen payload
	Tracked  uint64 // distinct sequence numbers of the tracked stream
	Dups     uint64 // tracked sequence numbers seen more than once
	TSBack   uint64 // payloads older than the one before (tracked stream)
	MaxSeq   uint64 // highest tracked sequence number + 1
}

// Sink is an XDP receiver for tests and benchmarks: attached to an
// interface it counts every frame, remembers which sequence numbers of one
// stream arrived, and drops (or passes) the frames. On veth it also makes
// the interface accept redirected frames (a veth only delivers XDP frames
// to a peer with an XDP program).
type Sink struct {
	objs sinkObjects
	lnk  link.Link
}

type sinkObjects struct {
	Prog   *ebpf.Program `ebpf:"pktgen_sink"`
	Conf   *ebpf.Map     `ebpf:"sink_conf"`
	Counts *ebpf.Map     `ebpf:"sink_counts"`
	Seen   *ebpf.Map     `ebpf:"sink_seen"`
}

func (o *sinkObjects) close() {
	for _, c := range []interface{ Close() error }{o.Prog, o.Conf, o.Counts, o.Seen} {
		if c != nil {
			_ = c.Close()
		}
	}
}

// AttachSink loads the sink and attaches it to ifindex, which is resolved
// in the calling thread's network namespace.
func AttachSink(ifindex int, opts SinkOptions) (*Sink, error) {
	spec, err := loadPktgenBPF()
	if err != nil {
		return nil, fmt.Errorf("sink: load BPF spec: %w", err)
	}
	s := &Sink{}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		return nil, fmt.Errorf("sink: load program: %w", err)
	}
	conf := pktgenBPFSinkConfig{Action: 1, Stream: opts.Stream} // XDP_DROP
	if opts.Pass {
		conf.Action = 2 // XDP_PASS
	}
	if err := s.objs.Conf.Put(uint32(0), &conf); err != nil {
		s.objs.close()
		return nil, fmt.Errorf("sink: configure: %w", err)
	}
	flags := link.XDPDriverMode
	if opts.Generic {
		flags = link.XDPGenericMode
	}
	s.lnk, err = link.AttachXDP(link.XDPOptions{Program: s.objs.Prog, Interface: ifindex, Flags: flags})
	if err != nil {
		s.objs.close()
		return nil, fmt.Errorf("sink: attach XDP to ifindex %d: %w", ifindex, err)
	}
	return s, nil
}

// Stats reads the counters.
func (s *Sink) Stats() (SinkStats, error) {
	var c pktgenBPFSinkStats
	if err := s.objs.Counts.Lookup(uint32(0), &c); err != nil {
		return SinkStats{}, fmt.Errorf("sink: read counters: %w", err)
	}
	return SinkStats{
		Frames: c.Frames, Bytes: c.Bytes, Payloads: c.Payloads, Tracked: c.Tracked,
		Dups: c.Dups, TSBack: c.TsBack, MaxSeq: c.MaxSeq,
	}, nil
}

// Missing returns the sequence numbers below n (at most SinkSeqRange) of
// the tracked stream that never arrived, up to limit of them.
func (s *Sink) Missing(n uint64, limit int) ([]uint64, error) {
	n = min(n, SinkSeqRange)
	var missing []uint64
	words := (n + 63) / 64
	for w := uint32(0); uint64(w) < words && len(missing) < limit; w++ {
		var v uint64
		if err := s.objs.Seen.Lookup(w, &v); err != nil {
			return missing, fmt.Errorf("sink: read bitmap word %d: %w", w, err)
		}
		if v == ^uint64(0) {
			continue
		}
		for b := 0; b < 64 && len(missing) < limit; b++ {
			seq := uint64(w)*64 + uint64(b)
			if seq < n && v&(1<<b) == 0 {
				missing = append(missing, seq)
			}
		}
	}
	return missing, nil
}

// Seen counts the distinct tracked sequence numbers below n.
func (s *Sink) Seen(n uint64) (uint64, error) {
	n = min(n, SinkSeqRange)
	var total uint64
	for w := uint32(0); uint64(w)*64 < n; w++ {
		var v uint64
		if err := s.objs.Seen.Lookup(w, &v); err != nil {
			return total, fmt.Errorf("sink: read bitmap word %d: %w", w, err)
		}
		if rest := n - uint64(w)*64; rest < 64 {
			v &= 1<<rest - 1
		}
		total += uint64(bits.OnesCount64(v))
	}
	return total, nil
}

// Close detaches and unloads the sink.
func (s *Sink) Close() error {
	err := s.lnk.Close()
	s.objs.close()
	if err != nil {
		return fmt.Errorf("sink: detach: %w", err)
	}
	return nil
}
