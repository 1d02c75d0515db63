package dataplane

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// BenchmarkDedicatedRX compares, in one run, RX into one Go guest over a
// dedicated queue (the kernel writes each frame into the guest buffer;
// the worker writes the header and used entry) with the shared, copying
// path (the kernel copies into the queue's UMEM, the worker into the
// guest), at 64 and 1514 bytes. A 2-queue veth: the shared VM's frames
// arrive on queue 0, the dedicated VM's on queue 1 (its own); the
// live-frames generator runs on the CPU of that queue, the worker on the
// other CPU, in both modes. Each iteration sends 1<<16 frames at full
// speed and waits until the worker is idle.
//
// Metrics as BenchmarkWorkerRX: worker-ns/frame (the worker's busy cost),
// wall-ns/frame, delivered (share of sent frames in the guest), Mpps
// (frames delivered per second of the run), copied-B/frame (bytes the
// worker copied per delivered frame).
//
//	sudo taskset -c 0,1 go test -run '^$' -bench BenchmarkDedicatedRX -benchtime 20x ./dataplane
func BenchmarkDedicatedRX(b *testing.B) {
	for _, size := range []int{64, 1514} {
		for _, mode := range []string{"shared", "dedicated"} {
			b.Run(fmt.Sprintf("%s/size=%d", mode, size), func(b *testing.B) { benchDedicatedRX(b, mode == "dedicated", size) })
		}
	}
}

func benchDedicatedRX(b *testing.B, dedicated bool, size int) {
	testenv.RequireRoot(b)
	if runtime.NumCPU() < 2 {
		testenv.Skip(b, "needs 2 CPUs")
	}
	host, wire := netnstest.New(b), netnstest.New(b)
	for _, ns := range []*netnstest.NS{host, wire} { // no IPv6 multicast: only the benchmark's frames
		ns.Run(b, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	nic, peer := netnstest.NewVethPair(b, host, wire, netnstest.VethOptions{Queues: 2, MTU: 1500})
	var filter *bpf.Filter
	err := host.Do(func() (err error) {
		if filter, err = bpf.Load(bpf.Config{MaxVMs: 2, MaxQueues: 2}); err != nil {
			return err
		}
		_, err = filter.Attach(nic.Index, bpf.Native)
		return err
	})
	if err != nil {
		b.Fatalf("filter: %v", err)
	}
	b.Cleanup(func() { filter.Close() })
	h := host.Handle()
	dp, err := New(Config{Ifindex: nic.Index, Queues: []int{0}, Filter: filter, Steer: newWireSteer(),
		BusyPoll: 20 * time.Microsecond, Netns: &h, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatalf("dataplane: %v", err)
	}
	b.Cleanup(func() { dp.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	hw := mustMAC(mac1)
	sock := filepath.Join(b.TempDir(), "vm.sock")
	vm := VM{Name: "vm", Slot: 1, MAC: hw, Socket: sock, QueuePairs: 1, DedicatedQueue: 1}
	genCPU, workerCPU := 0, 1 // shared: frames on queue 0
	if dedicated {
		vm.Dedicated = DedicatedRequired
		genCPU, workerCPU = 1, 0 // frames on queue 1, the VM's own
	}
	if err := dp.AddVM(ctx, vm); err != nil {
		b.Fatal(err)
	}
	if err := filter.SetFilter(hw, 0, 1); err != nil {
		b.Fatal(err)
	}
	g := runBenchGuest(b, ctx, cancel, "vm", sock, frontend.Config{MAC: hw, MrgRxbuf: true, EventIdx: true, QueueSize: 1024})
	w := dp.workers[0]
	waitFor(b, "guest's queues attached", func() bool { return int(w.ctr.virtqueues.Load()) == 2 })
	pinWorker(b, w, workerCPU)

	tmpl, err := pktgen.NewTemplate(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: hw}}, Size: size, Stream: 1})
	if err != nil {
		b.Fatal(err)
	}
	sendLive := liveSender(b, wire, peer.Index, tmpl, genCPU)
	send := func() {
		sendLive(benchFramesPerOp)
		settle(w)
	}
	send() // warm up
	if dedicated {
		if d := dp.Snapshot().VMs[0].Dedicated; d == nil || d.State != "direct" {
			b.Fatalf("dedicated queue not direct: %+v", d)
		}
	}
	stats := func() VMStats { return dp.Snapshot().VMs[0] }
	s0 := stats()
	ns0, timed0, rx0 := w.ctr.busyRoundNS.Load(), w.ctr.busyRoundFrames.Load(), g.Stats().RxFrames
	start := time.Now()
	sent := 0
	for b.Loop() {
		send()
		sent += benchFramesPerOp
	}
	elapsed := time.Since(start)
	s1 := stats()
	timed := w.ctr.busyRoundFrames.Load() - timed0
	rx := g.Stats().RxFrames - rx0
	if timed == 0 || rx == 0 {
		b.Fatalf("worker moved %d frames in timed rounds, guest got %d", timed, rx)
	}
	b.ReportMetric(float64(w.ctr.busyRoundNS.Load()-ns0)/float64(timed), "worker-ns/frame")
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(rx), "wall-ns/frame")
	b.ReportMetric(float64(rx)/float64(sent), "delivered")
	b.ReportMetric(float64(rx)/elapsed.Seconds()/1e6, "Mpps")
	b.ReportMetric(float64(s1.RxCopiedBytes-s0.RxCopiedBytes)/float64(rx), "copied-B/frame")
}
