package pktgen

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/vmq/vmq/internal/netnstest"
)

// The XDP program's frames must be byte-identical to Template.Stamp's,
// given the timestamp the program chose: same headers, ports, payload,
// checksums. BPF_PROG_RUN without live frames returns the frame.
func TestLiveProgramMatchesTemplate(t *testing.T) {
	ns := netnstest.New(t)
	_ = ns // BPF needs root; RequireRoot ran in New
	specs := map[string]FlowSpec{
		"untagged": {Dests: []Dest{{MAC: mac("02:00:00:00:00:0a")}, {MAC: mac("02:00:00:00:00:0b")}, {MAC: mac("02:00:00:00:00:0c")}},
			SrcMAC: mac("02:00:00:00:00:01"), SrcPorts: PortRange{1000, 1999}, DstPorts: PortRange{7, 9}, Stream: 5, UDPChecksum: true},
		"vlan": {Dests: []Dest{{MAC: mac("02:00:00:00:00:0a"), VLAN: 10}, {MAC: mac("02:00:00:00:00:0b"), VLAN: 20}},
			Size: 1514, UDPChecksum: true, SrcPorts: PortRange{65530, 65535}},
		"qinq": {Dests: []Dest{{MAC: mac("02:00:00:00:00:0a"), VLAN: 10}}, OuterVLAN: 300, Size: 60},
		"qinq csum": {Dests: []Dest{{MAC: mac("02:00:00:00:00:0a"), VLAN: 10}}, OuterVLAN: 300, Size: 333, UDPChecksum: true,
			SrcPorts: PortRange{1, 65535}},
	}
	for name, spec := range specs {
		t.Run(name, func(t *testing.T) {
			tm, err := NewTemplate(spec)
			if err != nil {
				t.Fatal(err)
			}
			g, err := NewLiveGenerator(tm, LiveOptions{Ifindex: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			g.conf.Limit = 1 << 62
			if err := g.objs.Conf.Put(uint32(0), &g.conf); err != nil {
				t.Fatal(err)
			}
			// Feed the program garbage headers: it must rewrite them all.
			in := tm.Base()
			for i := 0; i < tm.HeaderLen()+PayloadLen; i++ {
				in[i] = 0xa5
			}
			for n := uint64(0); n < 20; n++ {
				ret, out, err := g.objs.Prog.Test(in)
				if err != nil {
					t.Fatal(err)
				}
				if ret != 3 { // XDP_TX
					t.Fatalf("frame %d: program returned %d, want XDP_TX", n, ret)
				}
				ts := binary.BigEndian.Uint64(out[tm.HeaderLen()+16:])
				if want := tm.Frame(n, ts); !bytes.Equal(out, want) {
					t.Fatalf("frame %d differs\n bpf %x\n  go %x", n, out, want)
				}
				checkFrame(t, out, tm.FrameLen())
			}
		})
	}
}

type livePair struct {
	gen  *LiveGenerator
	sink *Sink
	tx   netnstest.Link
}

// newLivePair makes a veth pair in two namespaces, a sink on the far end
// tracking stream, and a live generator for spec on the near end (spec's
// Dests default to the far end's MAC).
func newLivePair(t testing.TB, spec FlowSpec, sinkOpts SinkOptions) livePair {
	t.Helper()
	nsA, nsB := netnstest.New(t), netnstest.New(t)
	a, b := netnstest.NewVethPair(t, nsA, nsB, netnstest.VethOptions{})
	var sink *Sink
	if err := nsB.Do(func() (err error) {
		sink, err = AttachSink(b.Index, sinkOpts)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	if spec.Dests == nil {
		spec.Dests = []Dest{{MAC: b.MAC}}
	}
	spec.SrcMAC = a.MAC
	tm, err := NewTemplate(spec)
	if err != nil {
		t.Fatal(err)
	}
	gen, err := NewLiveGenerator(tm, LiveOptions{Ifindex: a.Index})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gen.Close() })
	return livePair{gen: gen, sink: sink, tx: a}
}

// waitFrames polls the sink until it has seen want payload frames (or a few
// seconds pass) and returns its last stats.
func waitFrames(t testing.TB, s *Sink, want uint64) SinkStats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := s.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Payloads >= want || time.Now().After(deadline) {
			return st
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLiveSendExact(t *testing.T) {
	const stream = 7
	p := newLivePair(t, FlowSpec{Stream: stream, UDPChecksum: true, SrcPorts: PortRange{1000, 1999}}, SinkOptions{Stream: stream})
	// Two sends of odd sizes: the sequence continues across calls, and a
	// chunk bound smaller than the count is crossed.
	p.gen.opts.MaxChunk = 1000
	total := 0
	for _, n := range []int{1, 2999} {
		var sent, failed int
		if err := p.tx.NS.Do(func() (err error) {
			sent, failed, err = p.gen.Send(n)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if sent != n || failed != 0 {
			t.Fatalf("Send(%d) = %d sent, %d failed", n, sent, failed)
		}
		total += n
	}
	if p.gen.Sent() != uint64(total) {
		t.Fatalf("Sent() = %d, want %d", p.gen.Sent(), total)
	}
	st := waitFrames(t, p.sink, uint64(total))
	// Exact: no frame more, none less, each sequence number once, in order.
	time.Sleep(50 * time.Millisecond)
	if st2, _ := p.sink.Stats(); st2.Payloads != st.Payloads {
		t.Fatalf("frames still arriving: %d then %d", st.Payloads, st2.Payloads)
	}
	// The kernel's own frames (IPv6 router solicitations) count in Frames
	// but carry no payload.
	if st.Frames < st.Payloads || st.Bytes < uint64(total*p.gen.FrameLen()) {
		t.Fatalf("sink stats %+v: fewer frames or bytes than payloads", st)
	}
	want := SinkStats{Payloads: uint64(total), Tracked: uint64(total), MaxSeq: uint64(total)}
	st.Frames, st.Bytes = 0, 0
	if st != want {
		t.Fatalf("sink stats %+v, want %+v", st, want)
	}
	if seen, err := p.sink.Seen(uint64(total) + 64); err != nil || seen != uint64(total) {
		t.Fatalf("distinct seqs below %d: %d, %v", total+64, seen, err)
	}
	if miss, err := p.sink.Missing(uint64(total), 10); err != nil || len(miss) != 0 {
		t.Fatalf("missing seqs %v, %v", miss, err)
	}
}

func TestLiveRotatesDestinations(t *testing.T) {
	// Three destinations: each stream gets every third frame, seq 0..999.
	nsA, nsB := netnstest.New(t), netnstest.New(t)
	a, b := netnstest.NewVethPair(t, nsA, nsB, netnstest.VethOptions{})
	var sink *Sink
	if err := nsB.Do(func() (err error) {
		sink, err = AttachSink(b.Index, SinkOptions{Stream: 21})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	tm, err := NewTemplate(FlowSpec{SrcMAC: a.MAC, Stream: 20, Dests: []Dest{
		{MAC: b.MAC, VLAN: 1}, {MAC: mac("02:00:00:00:00:0b"), VLAN: 2}, {MAC: mac("02:00:00:00:00:0c"), VLAN: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewLiveGenerator(tm, LiveOptions{Ifindex: a.Index})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := nsA.Do(func() error { _, _, err := g.Send(3000); return err }); err != nil {
		t.Fatal(err)
	}
	st := waitFrames(t, sink, 3000)
	if st.Payloads != 3000 || st.Tracked != 1000 || st.MaxSeq != 1000 || st.Dups != 0 || st.TSBack != 0 {
		t.Fatalf("sink stats %+v", st)
	}
}

func TestRunRateLimit(t *testing.T) {
	p := newLivePair(t, FlowSpec{Stream: 1}, SinkOptions{Stream: 1})
	const rate, count = 2000.0, 500
	var st Stats
	var ticks int
	if err := p.tx.NS.Do(func() (err error) {
		st, err = Run(context.Background(), p.gen, RunOptions{Count: count, Rate: rate, Burst: 16,
			Tick: 50 * time.Millisecond, OnTick: func(Stats) { ticks++ }})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if st.Sent != count || st.Errors != 0 || st.Bytes != count*uint64(p.gen.FrameLen()) {
		t.Fatalf("stats %+v", st)
	}
	// 500 frames at 2000/s take 0.25 s minus the first burst; not faster
	// than twice the rate. (An upper bound would be a timing test.)
	if min := time.Duration(float64(count-16) / (2 * rate) * float64(time.Second)); st.Elapsed < min {
		t.Fatalf("sent %d frames in %v at rate %v: faster than 2x", count, st.Elapsed, rate)
	}
	if ticks == 0 {
		t.Fatal("OnTick never called")
	}
	if got := waitFrames(t, p.sink, count); got.Tracked != count {
		t.Fatalf("sink stats %+v", got)
	}
}

func TestRunDurationAndCancel(t *testing.T) {
	p := newLivePair(t, FlowSpec{Stream: 1}, SinkOptions{Stream: 1})
	var st Stats
	if err := p.tx.NS.Do(func() (err error) {
		st, err = Run(context.Background(), p.gen, RunOptions{Duration: 200 * time.Millisecond, Rate: 1000})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if st.Sent == 0 || st.Sent > 2*200+64 || st.Elapsed < 200*time.Millisecond {
		t.Fatalf("duration run: %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	before := p.gen.Sent()
	if err := p.tx.NS.Do(func() (err error) {
		st, err = Run(ctx, p.gen, RunOptions{Rate: 500})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if st.Sent == 0 || p.gen.Sent()-before != st.Sent {
		t.Fatalf("cancelled run: %+v, generator counted %d", st, p.gen.Sent()-before)
	}
	if got := waitFrames(t, p.sink, p.gen.Sent()); got.Tracked != p.gen.Sent() || got.Dups != 0 {
		t.Fatalf("sink %+v, generator sent %d", got, p.gen.Sent())
	}
}

// BenchmarkLiveFrames sends 64-byte frames into an XDP_DROP sink on the
// veth peer (which runs on the sending CPU).
func BenchmarkLiveFrames(b *testing.B) {
	p := newLivePair(b, FlowSpec{Size: 60, SrcPorts: PortRange{1000, 1999}}, SinkOptions{})
	b.ResetTimer()
	start := time.Now()
	if err := p.tx.NS.Do(func() error {
		_, _, err := p.gen.Send(b.N)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds()/1e6, "Mpps")
	st := waitFrames(b, p.sink, uint64(b.N))
	if st.Payloads != uint64(b.N) {
		b.Fatalf("sink saw %d of %d frames", st.Payloads, b.N)
	}
}
