package pktgen

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// benchCPU is the core every generator benchmark pins its sending thread
// to (VMQ_BENCH_CPU, default 0): on veth the peer's XDP sink runs on the
// sender's CPU, so one core does all the work and comparisons are fair.
func benchCPU(b *testing.B) int {
	cpu := 0
	if s := os.Getenv("VMQ_BENCH_CPU"); s != "" {
		var err error
		if cpu, err = strconv.Atoi(s); err != nil {
			b.Fatalf("VMQ_BENCH_CPU=%q: %v", s, err)
		}
	}
	return cpu
}

// pinThread pins the calling (locked) OS thread to cpu.
func pinThread(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin thread to CPU %d: %w", cpu, err)
	}
	return nil
}

// refRepeat is the reference generator's frames per BPF_PROG_RUN call,
// the minimal C generator's 2^18.
const refRepeat = 1 << 18

// refGenerator is the minimal live-frames generator the issue measured in
// C: one BPF_PROG_RUN call per 2^18 frames, batch 64, a program that only
// returns XDP_TX. Every frame is data_in unchanged. It is the kernel's
// speed: what vmq-pktgen is compared with.
type refGenerator struct {
	prog *ebpf.Program
	run  ebpf.RunOptions
}

func newRefGenerator(frame []byte, ifindex int) (*refGenerator, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "ref_xdp_tx",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 3), // XDP_TX
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("reference generator: load program: %w", err)
	}
	return &refGenerator{prog: prog, run: ebpf.RunOptions{
		Data:      frame,
		Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		BatchSize: 64,
		Context:   xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)},
	}}, nil
}

// send transmits n frames in calls of at most refRepeat.
func (r *refGenerator) send(n int) error {
	for n > 0 {
		chunk := min(n, refRepeat)
		r.run.Repeat = uint32(chunk)
		if _, err := r.prog.Run(&r.run); err != nil {
			return fmt.Errorf("reference generator: BPF_PROG_RUN: %w", err)
		}
		n -= chunk
	}
	return nil
}

// threadCPU is the calling thread's user+system CPU time. On veth the
// sink's XDP runs in the sender's softirq, on this thread's account.
func threadCPU() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// liveVariant is one way of sending in BenchmarkLiveVsReference.
type liveVariant struct {
	name string
	send func(n int) error
	wall []float64 // Mpps per round
	cpu  []float64 // Mpps per second of the thread's CPU
	lost int64     // frames the sink did not count
}

// BenchmarkLiveVsReference measures, in one run, on one pinned core, into
// the same XDP_DROP sink on the veth peer, 66-byte frames (64 + the
// payload), b.N frames per variant and round:
//
//   - ref: the minimal generator (XDP_TX only, 2^18 frames a call);
//   - ref-keep: the same with its program held in the XDP dispatcher
//     (see LiveGenerator): no synchronize_rcu() waits per call;
//   - old: vmq-pktgen as it was: no dispatcher keeper, the clock read
//     for every frame, 16384 frames a call, one destination;
//   - stamp: vmq-pktgen (pktgen.Run without a rate limit, as the command
//     drives it), 4 destinations rotated, payload stamped, one clock read
//     per 16 frames (the default);
//   - stamp-clock1: the same, the clock read for every frame;
//   - nostamp: 4 destinations rotated, no payload.
//
// The variants take turns, 3 rounds; each reports its median Mpps (wall
// clock, and per second of the sending thread's CPU) and its ratio to ref
// in the same round (median). Run:
//
//	go test -run '^$' -bench LiveVsReference -benchtime 2000000x ./pktgen
func BenchmarkLiveVsReference(b *testing.B) {
	const rounds = 3
	if b.N < 1000 {
		return // the framework's probe run: too short to measure anything
	}
	p := newLivePair(b, FlowSpec{Size: 60}, SinkOptions{})
	sinkMAC := p.gen.Template().Spec().Dests[0].MAC
	ref, err := newRefGenerator(p.gen.Template().Base(), p.tx.Index)
	if err != nil {
		b.Fatal(err)
	}
	defer ref.prog.Close()
	// The reference with its program held in the dispatcher (as
	// vmq-pktgen's is): the kernel's speed without per-call waits.
	refKeep, err := newRefGenerator(p.gen.Template().Base(), p.tx.Index)
	if err != nil {
		b.Fatal(err)
	}
	defer refKeep.prog.Close()
	k, err := newKeeper(refKeep.prog)
	if err != nil {
		b.Fatal(err)
	}
	defer k.close()
	dests := []Dest{{MAC: sinkMAC}, {MAC: mac("02:00:00:00:00:0b")}, {MAC: mac("02:00:00:00:00:0c")}, {MAC: mac("02:00:00:00:00:0d")}}
	gen := func(spec FlowSpec, opts LiveOptions, burst int) func(int) error {
		spec.SrcMAC, spec.Size = p.tx.MAC, 60
		tm, err := NewTemplate(spec)
		if err != nil {
			b.Fatal(err)
		}
		opts.Ifindex = p.tx.Index
		g, err := NewLiveGenerator(tm, opts)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { g.Close() })
		if !opts.NoKeeper && !g.Keeper() {
			b.Fatal("no dispatcher keeper")
		}
		return func(n int) error {
			_, err := Run(context.Background(), g, RunOptions{Count: uint64(n), Burst: burst})
			return err
		}
	}
	rotate := FlowSpec{Dests: dests, SrcPorts: PortRange{1000, 1999}}
	vs := []*liveVariant{
		{name: "ref", send: ref.send},
		{name: "ref-keep", send: refKeep.send},
		{name: "old", send: gen(FlowSpec{Dests: dests[:1], SrcPorts: PortRange{1000, 1999}}, LiveOptions{NoKeeper: true, ClockEvery: 1}, unpacedChunk)},
		{name: "stamp", send: gen(rotate, LiveOptions{}, 0)},
		{name: "stamp-clock1", send: gen(rotate, LiveOptions{ClockEvery: 1}, 0)},
		{name: "nostamp", send: gen(rotate, LiveOptions{NoStamp: true}, 0)},
	}
	base, err := p.sink.Stats()
	if err != nil {
		b.Fatal(err)
	}
	cpu := benchCPU(b)
	seen := base.Frames
	b.ResetTimer()
	if err := p.tx.NS.Do(func() error {
		if err := pinThread(cpu); err != nil {
			return err
		}
		for r := 0; r < rounds; r++ {
			for _, v := range vs {
				c0, err := threadCPU()
				if err != nil {
					return err
				}
				start := time.Now()
				if err := v.send(b.N); err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
				el := time.Since(start)
				c1, err := threadCPU()
				if err != nil {
					return err
				}
				v.wall = append(v.wall, float64(b.N)/el.Seconds()/1e6)
				v.cpu = append(v.cpu, float64(b.N)/(c1-c0).Seconds()/1e6)
				// Settle, so the next variant's count starts clean.
				want := seen + uint64(b.N)
				got := waitSinkFrames(b, p.sink, want)
				v.lost += int64(want) - int64(got)
				seen = got

			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	want := base.Frames + uint64(rounds*len(vs)*b.N)
	// The kernel's own frames (IPv6 router solicitations) come on top.
	if got := waitSinkFrames(b, p.sink, want); got < want || got > want+100 {
		b.Fatalf("sink saw %d frames, want %d", got-base.Frames, want-base.Frames)
	}
	for _, v := range vs {
		b.ReportMetric(median(v.wall), v.name+"-Mpps")
		if v.name != "ref" {
			ratios := make([]float64, rounds)
			for r := range ratios {
				ratios[r] = v.wall[r] / vs[0].wall[r]
			}
			b.ReportMetric(median(ratios), v.name+"/ref")
		}
	}
	for _, v := range vs {
		b.ReportMetric(median(v.cpu), v.name+"-Mpps/cpu")
	}
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// waitSinkFrames polls the sink until it has counted want frames (or a few
// seconds pass) and returns the count.
func waitSinkFrames(b *testing.B, s *Sink, want uint64) uint64 {
	b.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := s.Stats()
		if err != nil {
			b.Fatal(err)
		}
		if st.Frames >= want || time.Now().After(deadline) {
			return st.Frames
		}
		time.Sleep(10 * time.Millisecond)
	}
}
