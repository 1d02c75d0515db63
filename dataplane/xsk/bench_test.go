package xsk

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	asavie "github.com/asavie/xdp"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/internal/xdplive"
)

// The benchmarks compare, on one veth pair and in one run:
//   - xdp-drop: an XDP program on the host end that counts and drops: the
//     ceiling of what reaches the host end;
//   - vmq-xsk: vmq's socket layer behind vmq's VMQ filter (package bpf);
//   - vmq-xsk-minimal: vmq's socket layer behind a minimal redirect
//     program like asavie's, to compare the socket layers alone;
//   - asavie-xdp: github.com/asavie/xdp v0.3.3 with its own program.
//
// Traffic comes from BPF_PROG_RUN with live frames on the wire end: a
// one-instruction XDP_TX program sends 64-byte frames out of the wire veth.
// On veth the receiver's XDP (and the copy into the UMEM) runs on the
// generator's CPU, so every receiver is capped by that core; the consumer
// runs on the other. Compare numbers within one run, as ratios.
//
//	go test -run '^$' -bench . -benchtime 3000000x ./dataplane/xsk/

const benchFrameLen = 64

// Rx ring and UMEM sizes, the same for vmq and asavie: deep enough to ride
// out a consumer preempted for a few milliseconds on a shared machine.
const (
	rxRing   = 8192
	rxFrames = 2 * rxRing
)

// liveGen sends frames out of the wire end until stopped.
type liveGen struct {
	stop atomic.Bool
	done chan error
}

func startLiveGen(b *testing.B, tb *testbed, frame []byte) *liveGen {
	b.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 3), asm.Return()}, // XDP_TX
	})
	if err != nil {
		b.Fatalf("load generator program: %v", err)
	}
	g := &liveGen{done: make(chan error, 1)}
	go func() {
		g.done <- tb.wireNS.Do(func() error {
			defer prog.Close()
			defer pinThread(-1)()
			pinThread(0)
			ctx := xdplive.XDPMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(tb.wire.Index)}
			for !g.stop.Load() {
				_, err := prog.Run(&ebpf.RunOptions{
					Data: frame, Context: &ctx, Repeat: 1 << 14,
					Flags: unix.BPF_F_TEST_XDP_LIVE_FRAMES, BatchSize: 64,
				})
				if err != nil {
					return err
				}
			}
			return nil
		})
	}()
	b.Cleanup(func() { g.halt(b) })
	return g
}

func (g *liveGen) halt(b *testing.B) {
	if g.stop.Swap(true) {
		return
	}
	if err := <-g.done; err != nil {
		testenv.Skip(b, "BPF_PROG_RUN live frames: %v", err)
	}
}

// pinThread pins the calling (locked) thread to cpu, or to all CPUs when
// cpu < 0, and returns a func that unpins it. The generator runs on CPU 0
// (and with it the veth receive path it drives), the consumer on CPU 1,
// so that they do not take turns on one core.
func pinThread(cpu int) func() {
	all := func() {
		var set unix.CPUSet
		for i := range runtime.NumCPU() {
			set.Set(i)
		}
		_ = unix.SchedSetaffinity(0, &set)
	}
	if cpu < 0 || cpu >= runtime.NumCPU() {
		all()
		return func() {}
	}
	var set unix.CPUSet
	set.Set(cpu)
	_ = unix.SchedSetaffinity(0, &set)
	return all
}

// threadCPU is the calling thread's CPU time (user and system).
func threadCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportMpps(b *testing.B, frames int, elapsed time.Duration) {
	b.ReportMetric(float64(frames)/elapsed.Seconds()/1e6, "Mpps")
}

// countingDrop is an XDP program that counts frames in a per-CPU array
// and drops them.
func countingDrop(b testing.TB) (*ebpf.Program, *ebpf.Map) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R2, 0),
		asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("out"), // XDP_DROP
		asm.Return(),
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { prog.Close() })
	return prog, m
}

func readCount(b testing.TB, m *ebpf.Map) int {
	var per []uint64
	if err := m.Lookup(uint32(0), &per); err != nil {
		b.Fatal(err)
	}
	n := 0
	for _, v := range per {
		n += int(v)
	}
	return n
}

// minimalRedirect redirects every frame into xsks[rx_queue_index], like
// asavie's program (without its queue lookup), dropping on a miss.
func minimalRedirect(b testing.TB) (*ebpf.Program, *ebpf.Map) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4, MaxEntries: 8})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 16, asm.Word), // rx_queue_index
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Imm(asm.R3, 1), // XDP_DROP on a miss
		asm.FnRedirectMap.Call(),
		asm.Return(),
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { prog.Close() })
	return prog, m
}

// closeAsavie closes an asavie/xdp socket and unmaps its rings, which its
// Close forgets: the mappings would keep the socket, and so the queue,
// busy until the process exits.
func closeAsavie(b *testing.B, xsk *asavie.Socket) {
	var st unix.Stat_t
	if err := unix.Fstat(xsk.FD(), &st); err != nil {
		b.Fatal(err)
	}
	xsk.Close()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		b.Fatal(err)
	}
	tag := fmt.Sprintf("socket:[%d]", st.Ino)
	for _, line := range strings.Split(string(maps), "\n") {
		if !strings.HasSuffix(line, tag) {
			continue
		}
		var lo, hi uintptr
		if _, err := fmt.Sscanf(strings.Fields(line)[0], "%x-%x", &lo, &hi); err != nil {
			b.Fatal(err)
		}
		if _, _, errno := unix.Syscall(unix.SYS_MUNMAP, lo, hi-lo, 0); errno != 0 {
			b.Fatalf("unmap asavie ring: %v", errno)
		}
	}
}

// newAsavieSocket retries while the queue is still held by a socket closed
// a moment ago (the kernel releases it asynchronously).
func newAsavieSocket(tb *testbed, opts *asavie.SocketOptions) (*asavie.Socket, error) {
	deadline := time.Now().Add(time.Second)
	for {
		s, err := asavie.NewSocket(tb.host.Index, 0, opts)
		if err == nil || !strings.Contains(err.Error(), "busy") || time.Now().After(deadline) {
			return s, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func benchFrame(tb *testbed) []byte {
	f := make([]byte, 128)
	return buildFrame(f, vmMAC(0), tb.wire.MAC, 1, 2, payload{}, benchFrameLen)[:benchFrameLen]
}

// BenchmarkRx receives and drops 64-byte frames (b.N of them per run).
func BenchmarkRx(b *testing.B) {
	tb := newTestbed(b, 1)
	frame := benchFrame(tb)
	const warmup = 20000

	b.Run("xdp-drop", func(b *testing.B) {
		prog, counter := countingDrop(b)
		l := attachXDP(b, tb.hostNS, prog, tb.host.Index)
		defer l.Close()
		g := startLiveGen(b, tb, frame)
		for readCount(b, counter) < warmup {
			time.Sleep(time.Millisecond)
		}
		b.ReportAllocs()
		b.ResetTimer()
		start, t0 := readCount(b, counter), time.Now()
		for readCount(b, counter)-start < b.N {
			time.Sleep(200 * time.Microsecond)
		}
		got, el := readCount(b, counter)-start, time.Since(t0)
		b.StopTimer()
		g.halt(b)
		reportMpps(b, got, el)
	})

	vmqRx := func(b *testing.B, steer func(*Queue)) {
		u := newUMEM(b, UMEMConfig{NumFrames: rxFrames})
		q := openQueue(b, tb, u, 0, QueueConfig{FillSize: rxRing, RxSize: rxRing, TxSize: -1})
		q.Refill(0)
		steer(q)
		g := startLiveGen(b, tb, frame)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer pinThread(1)()
		descs := make([]Desc, 64)
		recv := func(want int) int {
			got := 0
			for got < want {
				n := q.Primary().Receive(descs)
				if n > 0 {
					q.FillDescs(descs[:n])
					got += n
				}
			}
			return got
		}
		recv(warmup)
		b.ReportAllocs()
		b.ResetTimer()
		t0 := time.Now()
		got := recv(b.N)
		el := time.Since(t0)
		b.StopTimer()
		g.halt(b)
		reportMpps(b, got, el)
		ks, _ := q.Primary().KernelStats()
		// Frames the kernel dropped for want of fill entries or rx ring
		// room (RxDropped counts the former, RxRingFull the latter).
		b.ReportMetric(float64(ks.RxDropped+ks.RxRingFull)/float64(got+warmup), "dropped/frame")
	}

	b.Run("vmq-xsk", func(b *testing.B) {
		st := newSteering(b, tb, 1)
		st.setMAC(b, vmMAC(0), 1)
		vmqRx(b, func(q *Queue) { st.register(b, 1, 0, q.Primary()) })
		st.f.Close()
	})

	b.Run("vmq-xsk-minimal", func(b *testing.B) {
		prog, xsks := minimalRedirect(b)
		l := attachXDP(b, tb.hostNS, prog, tb.host.Index)
		defer l.Close()
		vmqRx(b, func(q *Queue) {
			if err := xsks.Put(uint32(0), uint32(q.Primary().FD())); err != nil {
				b.Fatal(err)
			}
		})
	})

	b.Run("asavie-xdp", func(b *testing.B) {
		var prog *asavie.Program
		var xsk *asavie.Socket
		err := tb.hostNS.Do(func() error {
			var err error
			if prog, err = asavie.NewProgram(1); err != nil {
				return err
			}
			if err = prog.Attach(tb.host.Index); err != nil {
				return err
			}
			xsk, err = newAsavieSocket(tb, &asavie.SocketOptions{
				NumFrames: rxFrames, FrameSize: 2048,
				FillRingNumDescs: rxRing, CompletionRingNumDescs: 64,
				RxRingNumDescs: rxRing, TxRingNumDescs: 64,
			})
			if err != nil {
				return err
			}
			return prog.Register(0, xsk.FD())
		})
		if err != nil {
			b.Fatalf("asavie/xdp setup: %v", err)
		}
		defer func() {
			closeAsavie(b, xsk)
			tb.hostNS.Do(func() error { return prog.Detach(tb.host.Index) })
			prog.Close()
		}()
		xsk.Fill(xsk.GetDescs(xsk.NumFreeFillSlots()))
		g := startLiveGen(b, tb, frame)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer pinThread(1)()
		recv := func(want int) int {
			got := 0
			for got < want {
				if n := xsk.NumReceived(); n > 0 {
					descs := xsk.Receive(n)
					xsk.Fill(descs)
					got += len(descs)
				}
			}
			return got
		}
		recv(warmup)
		b.ReportAllocs()
		b.ResetTimer()
		t0 := time.Now()
		got := recv(b.N)
		el := time.Since(t0)
		b.StopTimer()
		g.halt(b)
		reportMpps(b, got, el)
	})
}

// BenchmarkTx transmits 64-byte frames from the host end (b.N completed
// frames per run) into an XDP_DROP program on the wire end.
func BenchmarkTx(b *testing.B) {
	tb := newTestbed(b, 1)
	frame := benchFrame(tb)
	prog, _ := countingDrop(b)
	attachXDP(b, tb.wireNS, prog, tb.wire.Index)
	const warmup = 20000

	// waiter: the socket is in an epoll set, as a worker's VM socket is
	// for its sleep. The kernel then wakes the set's callback for every
	// sent frame (sock_wfree), which is why vmqd transmits on a socket
	// of its own. thread-ns/frame is the sending thread's CPU time.
	for _, waiter := range []bool{false, true} {
		name := "vmq-xsk"
		if waiter {
			name = "vmq-xsk-epoll-waiter"
		}
		b.Run(name, func(b *testing.B) {
			u := newUMEM(b, UMEMConfig{NumFrames: 4096})
			q := openQueue(b, tb, u, 0, QueueConfig{FillSize: 64, CompSize: 2048, RxSize: -1, TxSize: 2048})
			s := q.Primary()
			if waiter {
				ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
				if err != nil {
					b.Fatal(err)
				}
				defer unix.Close(ep)
				if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, s.FD(), &unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
					b.Fatal(err)
				}
			}
			// Write the frame into every free frame once.
			addrs := make([]uint64, q.FreeFrames())
			n := q.Alloc(addrs)
			for _, a := range addrs[:n] {
				copy(q.Buffer(a), frame)
			}
			q.Free(addrs[:n])
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			defer pinThread(1)()
			benchSend(b, q, s, 64, benchFrameLen, 0, warmup)
		})
	}

	b.Run("asavie-xdp", func(b *testing.B) {
		var xsk *asavie.Socket
		err := tb.hostNS.Do(func() error {
			var err error
			xsk, err = newAsavieSocket(tb, &asavie.SocketOptions{
				NumFrames: 4096, FrameSize: 2048,
				FillRingNumDescs: 64, CompletionRingNumDescs: 2048,
				RxRingNumDescs: 64, TxRingNumDescs: 2048,
			})
			return err
		})
		if err != nil {
			b.Fatalf("asavie/xdp setup: %v", err)
		}
		defer closeAsavie(b, xsk)
		for _, d := range xsk.GetDescs(4096) {
			copy(xsk.GetFrame(d), frame)
		}
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer pinThread(1)()
		send := func(want int) int {
			done := 0
			for done < want {
				if n := xsk.NumCompleted(); n > 0 {
					xsk.Complete(n)
					done += n
				}
				descs := xsk.GetDescs(min(64, xsk.NumFreeTxSlots()))
				for i := range descs {
					descs[i].Len = benchFrameLen
				}
				xsk.Transmit(descs)
			}
			return done
		}
		send(warmup)
		b.ReportAllocs()
		b.ResetTimer()
		t0 := time.Now()
		got := send(b.N)
		el := time.Since(t0)
		b.StopTimer()
		reportMpps(b, got, el)
	})
}

// BenchmarkTxShape sends frames into an XDP_DROP sink in the shapes vmqd
// and DPDK's net_af_xdp send them, to tell which of their differences
// the kernel's copy-mode transmit charges for: a transmit-only socket
// sharing the queue's UMEM (vmqd) or the queue's own primary socket
// (DPDK: its own UMEM, rx and tx rings), batches of 64 (vmqd's) or 32
// (DPDK's burst), frames at a chunk's start or 4 bytes in (vmqd's
// untagged frames: room for a VLAN tag). thread-ns/frame is the sending
// thread's CPU time, the kernel's transmit and the sink's XDP included.
// Run with -count to alternate the shapes:
//
//	go test -run '^$' -bench 'BenchmarkTxShape' -benchtime 300000x -count 5 ./dataplane/xsk
func BenchmarkTxShape(b *testing.B) {
	tb := newTestbed(b, 1)
	prog, _ := countingDrop(b)
	attachXDP(b, tb.wireNS, prog, tb.wire.Index)
	for _, size := range []int{benchFrameLen, 1514} {
		frame := buildFrame(make([]byte, 2048), vmMAC(0), tb.wire.MAC, 1, 2, payload{}, size)[:size]
		for _, sh := range []struct {
			name   string
			shared bool
			batch  int
			offset uint64
		}{
			{"own-32", false, 32, 0},
			{"own-64", false, 64, 0},
			{"shared-64", true, 64, 0},
			{"shared-64-off4", true, 64, 4},
			{"shared-32-off4", true, 32, 4},
		} {
			b.Run(fmt.Sprintf("%dB/%s", size, sh.name), func(b *testing.B) {
				u := newUMEM(b, UMEMConfig{NumFrames: 8192})
				cfg := QueueConfig{FillSize: 2048, CompSize: 2048, RxSize: 1024, TxSize: 1024}
				if sh.shared {
					cfg.TxSize = -1
				}
				q := openQueue(b, tb, u, 0, cfg)
				s := q.Primary()
				if sh.shared {
					s = newSocket(b, tb, q, SocketConfig{RxSize: -1, TxSize: 1024})
					defer s.Close()
				}
				addrs := make([]uint64, q.FreeFrames())
				n := q.Alloc(addrs)
				for _, a := range addrs[:n] {
					copy(q.Buffer(a)[sh.offset:], frame)
				}
				q.Free(addrs[:n])
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				defer pinThread(1)()
				benchSend(b, q, s, sh.batch, size, sh.offset, 20000)
			})
		}
	}
}

// benchSend sends b.N frames from s (after warmup more) in batches of
// batch, each size bytes at offset into its UMEM frame, and reports Mpps,
// the sending thread's CPU time per frame and sendto calls per frame.
// The caller wrote the frame into every free frame of q and pinned its
// locked thread.
func benchSend(b *testing.B, q *Queue, s *Socket, batch, size int, offset uint64, warmup int) {
	addrs := make([]uint64, batch)
	descs := make([]Desc, batch)
	send := func(want int) int {
		done := 0
		for done < want {
			done += q.Reap()
			k := q.Alloc(addrs)
			for i := range k {
				descs[i] = Desc{Addr: addrs[i] + offset, Len: uint32(size)}
			}
			m, err := s.Transmit(descs[:k])
			if err != nil {
				b.Fatal(err)
			}
			q.Free(addrs[m:k])
		}
		return done
	}
	send(warmup)
	w0, f0 := s.Stats().Wakeups, s.Stats().TxFrames
	measureSend(b, send)
	b.ReportMetric(float64(s.Stats().Wakeups-w0)/float64(s.Stats().TxFrames-f0), "sendto/frame")
}

// measureSend times send(b.N) after the warm-up and reports Mpps and the
// sending thread's CPU ns per frame; it returns the frames sent.
func measureSend(b *testing.B, send func(int) int) int {
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := threadCPU()
	t0 := time.Now()
	got := send(b.N)
	el := time.Since(t0)
	cpu := threadCPU() - cpu0
	b.StopTimer()
	reportMpps(b, got, el)
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(got), "thread-ns/frame")
	return got
}

// BenchmarkTxPath sends frames into an XDP_DROP sink on the wire end two
// ways, alternated in one process: socket (vmqd's transmit socket: tx only,
// on the queue's shared UMEM, frames 4 bytes into their chunk) and xdp
// (XDPTx: each frame copied from its UMEM frame into the stage, as vmqd's
// worker does, then one BPF_PROG_RUN per batch). thread-ns/frame is the
// sending thread's CPU time, the kernel's transmit and the sink's XDP
// when they run in the sender's context; softirqd-ns/frame is CPU 1's
// ksoftirqd's, where the peer's NAPI (the sink) runs when the kernel
// defers it: the two together are the transmit's cost on the sender's
// CPU. sink/sent is the share of sent frames the sink counted. With
// -count to alternate:
//
//	go test -run '^$' -bench 'BenchmarkTxPath' -benchtime 200000x -count 3 ./dataplane/xsk
func BenchmarkTxPath(b *testing.B) {
	tb := newTestbed(b, 1)
	prog, sink := countingDrop(b)
	attachXDP(b, tb.wireNS, prog, tb.wire.Index)
	x := newXDPTx(b, tb)
	const off = 4
	for _, size := range []int{benchFrameLen, 1514} {
		frame := buildFrame(make([]byte, 2048), vmMAC(0), tb.wire.MAC, 1, 2, payload{}, size)[:size]
		for _, batch := range []int{4, 8, 16, 32, 64, 256} {
			for _, path := range []string{"socket", "xdp"} {
				b.Run(fmt.Sprintf("%dB/batch-%d/%s", size, batch, path), func(b *testing.B) {
					u := newUMEM(b, UMEMConfig{NumFrames: 8192})
					q := openQueue(b, tb, u, 0, QueueConfig{FillSize: 2048, CompSize: 2048, RxSize: 1024, TxSize: -1})
					addrs := make([]uint64, q.FreeFrames())
					n := q.Alloc(addrs)
					for _, a := range addrs[:n] {
						copy(q.Buffer(a)[off:], frame)
					}
					q.Free(addrs[:n])
					sink0 := readCount(b, sink)
					soft0 := ksoftirqdCPU(b, 1)
					var sent int
					err := tb.hostNS.Do(func() error {
						defer pinThread(1)()
						if path == "socket" {
							s := newSocket(b, tb, q, SocketConfig{RxSize: -1, TxSize: 1024})
							defer s.Close()
							f0 := s.Stats().TxFrames
							benchSend(b, q, s, min(batch, 1024), size, off, 20000)
							sent = int(s.Stats().TxFrames - f0)
							return nil
						}
						tq, err := x.Queue(0)
						if err != nil {
							return err
						}
						s0 := tq.Stats().Sent
						benchXDPSend(b, q, tq, batch, size, off, 20000)
						sent = int(tq.Stats().Sent - s0)
						return nil
					})
					if err != nil {
						b.Fatal(err)
					}
					var got int
					testenv.PollWithin(time.Second, func() (bool, string) {
						got = readCount(b, sink) - sink0
						return got >= sent, ""
					})
					b.ReportMetric(float64(got)/float64(sent), "sink/sent")
					b.ReportMetric(float64((ksoftirqdCPU(b, 1)-soft0).Nanoseconds())/float64(b.N), "softirqd-ns/frame")
				})
			}
		}
	}
}

// benchXDPSend is benchSend for XDPTx: b.N frames (after warmup more) in
// batches of batch, each copied from a UMEM frame of q into the stage.
func benchXDPSend(b *testing.B, q *Queue, tq *XDPTxQueue, batch, size int, offset uint64, warmup int) {
	addrs := make([]uint64, batch)
	calls := 0
	send := func(want int) int {
		done := 0
		for done < want {
			k := q.Alloc(addrs)
			for _, a := range addrs[:k] {
				tq.Add(q.Buffer(a)[offset : offset+uint64(size)])
			}
			m, err := tq.Flush()
			if err != nil {
				b.Fatal(err)
			}
			calls++
			q.Free(addrs[:k])
			done += m
		}
		return done
	}
	send(warmup)
	calls = 0
	got := measureSend(b, send)
	b.ReportMetric(float64(calls)/float64(got), "calls/frame")
}

// ksoftirqdCPU is the CPU time ksoftirqd/cpu has run (schedstat, ns).
func ksoftirqdCPU(b testing.TB, cpu int) time.Duration {
	pids, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, p := range pids {
		comm, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(comm)) != fmt.Sprintf("ksoftirqd/%d", cpu) {
			continue
		}
		st, err := os.ReadFile(filepath.Join(filepath.Dir(p), "schedstat"))
		if err != nil {
			break
		}
		ns, _ := strconv.ParseInt(strings.Fields(string(st))[0], 10, 64)
		return time.Duration(ns)
	}
	b.Fatalf("no ksoftirqd/%d", cpu)
	return 0
}
