package dataplane

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/pktgen"
)

// BenchmarkWorkerJumbo measures one worker (pinned to CPU 1) moving
// frames of 1514 and 9014 bytes on an MTU-9000 veth, and 1514 on an
// MTU-1500 one for comparison: wire → guest (an AF_PACKET generator on
// CPU 0, unpaced: live frames carry one page), guest → wire and guest →
// guest (a Go guest sending unpaced). Each iteration moves 1<<14 frames.
//
// Metrics as BenchmarkWorkerRX: worker-ns/frame (the worker's busy cost),
// wall-ns/frame, Gbit/s (frame bytes moved per second of wall time),
// allocs/frame (the whole process), delivered (received / sent).
//
//	sudo taskset -c 0,1 go test -run '^$' -bench BenchmarkWorkerJumbo -benchtime 5x ./dataplane
func BenchmarkWorkerJumbo(b *testing.B) {
	for _, dir := range []string{"rx", "tx", "vm2vm"} {
		for _, c := range []struct{ mtu, size int }{{1500, 1514}, {9000, 1514}, {9000, 9014}} {
			b.Run(fmt.Sprintf("%s/mtu=%d/size=%d", dir, c.mtu, c.size), func(b *testing.B) {
				benchJumbo(b, dir, c.mtu, c.size)
			})
		}
	}
}

const jumboFramesPerOp = 1 << 14

func benchJumbo(b *testing.B, dir string, mtu, size int) {
	host, wire := netnstest.New(b), netnstest.New(b)
	nic, peer := netnstest.NewVethPair(b, host, wire, netnstest.VethOptions{Queues: 1, MTU: mtu})
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
	dp, err := New(Config{Ifindex: nic.Index, Queues: []int{0}, Filter: filter, FrameSize: 4096, MTU: mtu,
		BusyPoll: 20 * time.Microsecond, Netns: &h, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatalf("dataplane: %v", err)
	}
	b.Cleanup(func() { dp.Close() })

	sockDir := b.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	guests := make([]*frontend.Guest, 2)
	macs := make([]net.HardwareAddr, 2)
	for i := range guests {
		hw := net.HardwareAddr{0x02, 0xbe, 0, 0, 0, byte(i + 1)}
		name := fmt.Sprintf("vm%d", i+1)
		sock := filepath.Join(sockDir, name+".sock")
		vm := VM{Name: name, Slot: uint32(i + 1), MAC: hw, Socket: sock, QueuePairs: 1, MTU: mtu}
		if err := dp.AddVM(ctx, vm); err != nil {
			b.Fatalf("add %s: %v", name, err)
		}
		if err := filter.SetFilter(hw, 0, vm.Slot); err != nil {
			b.Fatal(err)
		}
		g := runBenchGuest(b, ctx, cancel, name, sock, frontend.Config{MAC: hw, MrgRxbuf: true, EventIdx: true, QueueSize: 1024, MTU: mtu})
		guests[i], macs[i] = g, hw
	}
	w := dp.workers[0]
	waitFor(b, "guests' queues attached", func() bool { return int(w.ctr.virtqueues.Load()) == 4 })
	pinWorker(b, w, 1)

	var send func()
	switch dir {
	case "rx":
		tmpl, err := pktgen.NewTemplate(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: macs[0]}}, Size: size, Stream: 1})
		if err != nil {
			b.Fatal(err)
		}
		var s *pktgen.PacketSender
		if err := wire.Do(func() (err error) {
			s, err = pktgen.NewPacketSender(tmpl, pktgen.PacketOptions{Ifindex: peer.Index, Batch: 64})
			return err
		}); err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		send = func() {
			err := wire.Do(func() error {
				var set unix.CPUSet
				set.Set(0)
				if err := unix.SchedSetaffinity(0, &set); err != nil {
					return err
				}
				_, err := pktgen.Run(context.Background(), s, pktgen.RunOptions{Count: jumboFramesPerOp})
				return err
			})
			if err != nil {
				b.Fatalf("send: %v", err)
			}
		}
	case "tx", "vm2vm":
		dst := net.HardwareAddr{0x02, 0xee, 0, 0, 0, 1} // not a VM: the wire
		if dir == "vm2vm" {
			dst = macs[1]
		}
		send = func() {
			if _, err := guests[0].Generate(ctx, frontend.Traffic{Dst: dst, Count: jumboFramesPerOp, Size: size, Batch: 64}); err != nil {
				b.Fatal(err)
			}
		}
	}
	rx := func() (n uint64) {
		for _, g := range guests {
			n += g.Stats().RxFrames
		}
		return n
	}
	round := func() { send(); settle(w) }
	round() // warm up

	frames0, ns0, timed0, rx0 := w.ctr.frames.Load(), w.ctr.busyRoundNS.Load(), w.ctr.busyRoundFrames.Load(), rx()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	sent := 0
	for b.Loop() {
		round()
		sent += jumboFramesPerOp
	}
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	frames := w.ctr.frames.Load() - frames0
	timed := w.ctr.busyRoundFrames.Load() - timed0
	if frames == 0 || timed == 0 {
		b.Fatalf("the worker moved %d frames (%d in timed rounds)", frames, timed)
	}
	b.ReportMetric(float64(w.ctr.busyRoundNS.Load()-ns0)/float64(timed), "worker-ns/frame")
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(frames), "wall-ns/frame")
	b.ReportMetric(float64(frames)*float64(size)*8/elapsed.Seconds()/1e9, "Gbit/s")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(frames), "allocs/frame")
	if dir != "tx" {
		b.ReportMetric(float64(rx()-rx0)/float64(sent), "delivered")
	}
}
