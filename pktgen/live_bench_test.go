package pktgen

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/internal/xdplive"

	"github.com/vmq/vmq/internal/netnstest"
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
		Context:   xdplive.XDPMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)},
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

// dropSink is the minimal XDP_DROP sink: a per-CPU frame counter, nothing
// read from the frame, so every generator's frames cost it the same.
type dropSink struct {
	count *ebpf.Map
	prog  *ebpf.Program
	lnk   link.Link
}

func attachDropSink(ifindex int) (_ *dropSink, err error) {
	d := &dropSink{}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	d.count, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("drop sink: counter map: %w", err)
	}
	d.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "drop_sink",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			asm.StoreImm(asm.R10, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, d.count.FD()),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 1).WithSymbol("out"), // XDP_DROP
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("drop sink: load program: %w", err)
	}
	d.lnk, err = link.AttachXDP(link.XDPOptions{Program: d.prog, Interface: ifindex, Flags: link.XDPDriverMode})
	if err != nil {
		return nil, fmt.Errorf("drop sink: attach to ifindex %d: %w", ifindex, err)
	}
	return d, nil
}

// frames is the frames counted on all CPUs.
func (d *dropSink) frames() (uint64, error) {
	var per []uint64
	if err := d.count.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("drop sink: read counter: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

func (d *dropSink) close() {
	if d.lnk != nil {
		_ = d.lnk.Close()
	}
	_ = d.prog.Close() // nil-safe
	_ = d.count.Close()
}

// threadCPU is the calling thread's user+system CPU time. On veth the
// sink's XDP runs in the sender's softirq, on this thread's account.
func threadCPU() (time.Duration, error) {
	ru, err := threadUsage()
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), err
}

func threadUsage() (unix.Rusage, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return ru, fmt.Errorf("getrusage: %w", err)
	}
	return ru, nil
}

// liveVariant is one way of sending in BenchmarkLiveVsReference.
type liveVariant struct {
	name string
	send func(n int) error
	wall []float64 // Mpps per round
	cpu  []float64 // Mpps per second of the thread's CPU
	lost int64     // frames the sink did not count
	// Voluntary and involuntary context switches of the sending thread.
	nvcsw, nivcsw int64
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
// The variants take turns, VMQ_BENCH_ROUNDS rounds (default 5); each
// reports its median Mpps (wall clock, and per second of the sending
// thread's CPU) and its ratio to ref in the same round (median). Run:
//
//	go test -run '^$' -bench LiveVsReference -benchtime 1000000x ./pktgen
func BenchmarkLiveVsReference(b *testing.B) {
	rounds := 5
	if v := os.Getenv("VMQ_BENCH_ROUNDS"); v != "" {
		var err error
		if rounds, err = strconv.Atoi(v); err != nil || rounds < 1 {
			b.Fatalf("VMQ_BENCH_ROUNDS=%q: want a positive number", v)
		}
	}
	if b.N < 1000 {
		return // the framework's probe run: too short to measure anything
	}
	nsA, nsB := netnstest.New(b), netnstest.New(b)
	tx, rx := netnstest.NewVethPair(b, nsA, nsB, netnstest.VethOptions{})
	var sink *dropSink
	if err := nsB.Do(func() (err error) {
		sink, err = attachDropSink(rx.Index)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer sink.close()
	refTmpl, err := NewTemplate(FlowSpec{SrcMAC: tx.MAC, Dests: []Dest{{MAC: rx.MAC}}, Size: 60})
	if err != nil {
		b.Fatal(err)
	}
	ref, err := newRefGenerator(refTmpl.Base(), tx.Index)
	if err != nil {
		b.Fatal(err)
	}
	defer ref.prog.Close()
	// The reference with its program held in the dispatcher (as
	// vmq-pktgen's is): the kernel's speed without per-call waits.
	refKeep, err := newRefGenerator(refTmpl.Base(), tx.Index)
	if err != nil {
		b.Fatal(err)
	}
	defer refKeep.prog.Close()
	k, err := xdplive.New(refKeep.prog)
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	dests := []Dest{{MAC: rx.MAC}, {MAC: mac("02:00:00:00:00:0b")}, {MAC: mac("02:00:00:00:00:0c")}, {MAC: mac("02:00:00:00:00:0d")}}
	gen := func(spec FlowSpec, opts LiveOptions, burst int) func(int) error {
		spec.SrcMAC, spec.Size = tx.MAC, 60
		tm, err := NewTemplate(spec)
		if err != nil {
			b.Fatal(err)
		}
		opts.Ifindex = tx.Index
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
		{name: "old", send: gen(FlowSpec{Dests: dests[:1], SrcPorts: PortRange{1000, 1999}}, LiveOptions{NoKeeper: true, ClockEvery: 1, MaxChunk: unpacedChunk}, 0)},
		{name: "stamp", send: gen(rotate, LiveOptions{}, 0)},
		{name: "stamp-clock1", send: gen(rotate, LiveOptions{ClockEvery: 1}, 0)},
		{name: "nostamp", send: gen(rotate, LiveOptions{NoStamp: true}, 0)},
	}
	if only := os.Getenv("VMQ_BENCH_ONLY"); only != "" {
		// Profiling some variants: perf record -p on this process.
		var sel []*liveVariant
		for _, v := range vs {
			if slices.Contains(strings.Split(only, ","), v.name) {
				sel = append(sel, v)
			}
		}
		vs = sel
	}
	seen, err := sink.frames()
	if err != nil {
		b.Fatal(err)
	}
	cpu := benchCPU(b)
	b.ResetTimer()
	if err := nsA.Do(func() error {
		if err := pinThread(cpu); err != nil {
			return err
		}
		for r := 0; r < rounds; r++ {
			// Every other round runs the variants backwards, so a drift in
			// the machine's load does not favour the first.
			order := slices.Clone(vs)
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, v := range order {
				u0, err := threadUsage()
				if err != nil {
					return err
				}
				c0 := time.Duration(u0.Utime.Nano() + u0.Stime.Nano())
				start := time.Now()
				if err := v.send(b.N); err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
				el := time.Since(start)
				u1, err := threadUsage()
				if err != nil {
					return err
				}
				c1 := time.Duration(u1.Utime.Nano() + u1.Stime.Nano())
				v.nvcsw += u1.Nvcsw - u0.Nvcsw
				v.nivcsw += u1.Nivcsw - u0.Nivcsw
				v.wall = append(v.wall, float64(b.N)/el.Seconds()/1e6)
				v.cpu = append(v.cpu, float64(b.N)/(c1-c0).Seconds()/1e6)
				// Settle, so the next variant's count starts clean.
				want := seen + uint64(b.N)
				got, err := waitDropSink(sink, want)
				if err != nil {
					return err
				}
				v.lost += int64(want) - int64(got)
				seen = got

			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	for _, v := range vs {
		b.Logf("%-13s wall Mpps %.3f  per CPU-s %.3f  lost %d  context switches %d voluntary, %d not",
			v.name, v.wall, v.cpu, v.lost, v.nvcsw, v.nivcsw)
	}
	// A veth drops what its peer's ring cannot take when the receiving
	// softirq is late (other work on the CPU): some loss is the machine's,
	// more than 1% is a bug. The kernel's own frames (IPv6 router
	// solicitations) may come on top: lost < 0.
	for _, v := range vs {
		if v.lost > int64(rounds*b.N/100) {
			b.Errorf("%s: the sink counted %d frames fewer than were sent", v.name, v.lost)
		}
		if v.lost > 0 {
			b.ReportMetric(float64(v.lost), v.name+"-lost")
		}
	}
	for _, v := range vs {
		b.ReportMetric(median(v.wall), v.name+"-Mpps")
		if v.name != "ref" && vs[0].name == "ref" {
			b.ReportMetric(ratio(v.wall, vs[0].wall), v.name+"/ref")
			b.ReportMetric(ratio(v.cpu, vs[0].cpu), v.name+"/ref-cpu")
		}
	}
	for _, v := range vs {
		b.ReportMetric(median(v.cpu), v.name+"-Mpps/cpu")
	}
	if len(vs) > 3 && vs[1].name == "ref-keep" && vs[3].name == "stamp" {
		// vmq-pktgen against the kernel's speed without per-call waits.
		b.ReportMetric(ratio(vs[3].wall, vs[1].wall), vs[3].name+"/"+vs[1].name)
	}
}

// ratio is the median over rounds of v's rate over ref's in the same round.
func ratio(v, ref []float64) float64 {
	rs := make([]float64, len(v))
	for r := range rs {
		rs[r] = v[r] / ref[r]
	}
	return median(rs)
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// waitDropSink polls the sink until it has counted want frames (or a few
// seconds pass) and returns the count.
func waitDropSink(s *dropSink, want uint64) (uint64, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := s.frames()
		if err != nil || n >= want || time.Now().After(deadline) {
			return n, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkLiveProgram is the XDP program's own cost per frame, without
// the kernel's transmit: BPF_PROG_RUN (not live) repeats it on one frame
// and times the runs. ref is the reference's XDP_TX-only program.
//
//	go test -run '^$' -bench LiveProgram ./pktgen
func BenchmarkLiveProgram(b *testing.B) {
	netnstest.New(b) // root
	spec := FlowSpec{Size: 60, SrcPorts: PortRange{1000, 1999},
		Dests: []Dest{{MAC: mac("02:00:00:00:00:0a")}, {MAC: mac("02:00:00:00:00:0b")}, {MAC: mac("02:00:00:00:00:0c")}, {MAC: mac("02:00:00:00:00:0d")}}}
	csum := spec
	csum.UDPChecksum = true
	for _, c := range []struct {
		name string
		spec FlowSpec
		opts LiveOptions
	}{
		{"ref", spec, LiveOptions{}},
		{"nostamp", spec, LiveOptions{NoStamp: true}},
		{"stamp", spec, LiveOptions{}},
		{"stamp-clock1", spec, LiveOptions{ClockEvery: 1}},
		{"stamp-csum", csum, LiveOptions{}},
	} {
		b.Run(c.name, func(b *testing.B) {
			tm, err := NewTemplate(c.spec)
			if err != nil {
				b.Fatal(err)
			}
			c.opts.Ifindex, c.opts.NoKeeper = 1, true
			g, err := NewLiveGenerator(tm, c.opts)
			if err != nil {
				b.Fatal(err)
			}
			defer g.Close()
			prog := g.objs.Prog
			if c.name == "ref" {
				r, err := newRefGenerator(g.base, 1)
				if err != nil {
					b.Fatal(err)
				}
				defer r.prog.Close()
				prog = r.prog
			}
			g.conf.Limit = 1 << 62
			if err := g.objs.Conf.Put(uint32(0), &g.conf); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			ret, per, err := prog.Benchmark(g.base, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			if ret != 3 {
				b.Fatalf("program returned %d, want XDP_TX", ret)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/frame")
		})
	}
}
