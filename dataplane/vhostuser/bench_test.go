package vhostuser

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"sort"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
)

// Socketless data-path costs on byte-slice guest memory, on each ring
// layout (sub-benchmarks split and packed): the guest side recycles each
// batch of buffers after its Flush, so this is copy + ring work.

func BenchmarkPush(b *testing.B) {
	for _, l := range layouts {
		for _, size := range []int{64, 1514} {
			b.Run(fmt.Sprintf("%s/%d", l.name, size), func(b *testing.B) {
				g := l.guest(b, 256, testFeatures|virtio.NetFMrgRxbuf, true)
				for i := 0; i < 256; i++ {
					g.postRX(2048)
				}
				f := frameOf(size, 1)
				benchLoop(b, g, size, func() error { return g.queue().Push(f) })
			})
		}
	}
}

func BenchmarkPop(b *testing.B) {
	for _, l := range layouts {
		for _, size := range []int{64, 1514} {
			b.Run(fmt.Sprintf("%s/%d", l.name, size), func(b *testing.B) {
				benchPop(b, l.guest(b, 256, testFeatures, false), size, false)
			})
			// Header and frame in one descriptor, as DPDK and Linux send
			// them when the header fits the headroom.
			b.Run(fmt.Sprintf("%s/%d/onedesc", l.name, size), func(b *testing.B) {
				benchPop(b, l.guest(b, 256, testFeatures, false), size, true)
			})
		}
	}
}

// benchPop fills g's ring with TX frames of size bytes (header and frame
// in two descriptors, or in one) and pops them b.N times.
func benchPop(b *testing.B, g ringGuest, size int, oneDesc bool) {
	f := frameOf(size, 1)
	for i := 0; i < 128; i++ {
		if !oneDesc {
			g.sendFrame(f, 2048)
			continue
		}
		a := g.alloc(virtio.NetHdrLen + size)
		copy(g.at(a+virtio.NetHdrLen, size), f)
		g.post(tdesc{addr: a, len: uint32(virtio.NetHdrLen + size)})
	}
	dst := make([]byte, 2048)
	benchLoop(b, g, size, func() error { _, err := g.queue().Pop(dst); return err })
}

// benchLoop runs op b.N times with a Flush every 32, after which the
// guest makes the batch's buffers available again.
func benchLoop(b *testing.B, g ringGuest, size int, op func() error) {
	q := g.queue()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := op(); err != nil {
			b.Fatal(err)
		}
		if i%32 == 31 {
			q.Flush()
			for k := 0; k < 32; k++ {
				g.recycle()
			}
		}
	}
	q.Flush()
}

// BenchmarkDPDKCompare measures vmq's back-end and DPDK's net_vhost with
// the same guest (testpmd net_virtio_user, rxonly or txonly, one queue
// pair, 1024 descriptors, mrg_rxbuf=1) in one run. The rate is read from
// the guest's own port counters over measureFor, so both back-ends are
// measured the same way. Back-end on CPU 0, guest forwarding on CPU 1.
// The machine is shared, so the back-ends alternate for benchRounds
// rounds and the medians are reported.
//
//	go test -run XXX -bench DPDKCompare -benchtime 1x ./dataplane/vhostuser
func BenchmarkDPDKCompare(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireCommand(b, "dpdk-testpmd")
	for _, dir := range []string{"to_guest", "from_guest"} {
		for _, size := range []int{64, 1514} {
			b.Run(fmt.Sprintf("%s/%d", dir, size), func(b *testing.B) {
				var vmq, dpdk []float64
				for r := 0; r < benchRounds; r++ {
					vmq = append(vmq, measureBackend(b, "vmq", dir == "to_guest", size))
					dpdk = append(dpdk, measureBackend(b, "dpdk", dir == "to_guest", size))
				}
				mv, md := median(vmq), median(dpdk)
				b.Logf("%s %d bytes: vmq %v, dpdk %v Mpps", dir, size, vmq, dpdk)
				b.ReportMetric(mv, "vmq-Mpps")
				b.ReportMetric(md, "dpdk-Mpps")
				if md > 0 {
					b.ReportMetric(mv/md, "vmq/dpdk")
				}
			})
		}
	}
}

const benchRounds = 3

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

const measureFor = 3 * time.Second

func measureBackend(b *testing.B, backend string, toGuest bool, size int) float64 {
	return measureBackendVdev(b, backend, toGuest, size, "")
}

// measureBackendVdev is measureBackend with more virtio_user options for
// the guest (",packed_vq=1").
func measureBackendVdev(b *testing.B, backend string, toGuest bool, size int, guestOpts string) float64 {
	sock := filepath.Join(b.TempDir(), "vu.sock")
	guestMode, backendMode := "txonly", "rxonly"
	if toGuest {
		guestMode, backendMode = "rxonly", "txonly"
	}
	txpkts := fmt.Sprintf("--txpkts=%d", size)
	var backendPMD *testpmd
	var w *testWorker
	var port *Port
	switch backend {
	case "vmq":
		frame := make([]byte, size)
		copy(frame, []byte{2, 0, 0, 0, 0, 0x0a, 2, 0, 0, 0, 0, 0x0b, 0x08, 0x00})
		w = newTestWorker(b, frame)
		w.busy, w.busyRX, w.pin = true, toGuest, true
		if toGuest {
			w.toPush[0].Store(1 << 62)
		}
		p, err := Listen(sock, Config{MAC: []byte{2, 0, 0, 0, 0, 0x0a}, Handler: w, Logger: quietLogger()})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close() // also stops the worker before the next round
		port = p
	case "dpdk":
		eal := pmdArgs(netnstest.UniqueName("vmqbh"), fmt.Sprintf("net_vhost0,iface=%s,queues=1", sock), "0@0,1@0")
		pmd := startTestpmd(b, eal, "--forward-mode="+backendMode, "--nb-cores=1", "--rxd=1024", "--txd=1024", txpkts)
		pmd.waitPrompt(60 * time.Second)
		defer pmd.kill() // kill is idempotent; startTestpmd's cleanup repeats it
		backendPMD = pmd
	}
	vdev := fmt.Sprintf("net_virtio_user0,path=%s,queues=1,queue_size=1024,mrg_rxbuf=1,mac=02:00:00:00:00:0a", sock) + guestOpts
	guest := startTestpmd(b, pmdArgs(netnstest.UniqueName("vmqbg"), vdev, "0@0,1@1"),
		"--forward-mode="+guestMode, "--nb-cores=1", "--rxd=1024", "--txd=1024", txpkts)
	defer guest.kill()
	guest.waitPrompt(60 * time.Second)
	if port != nil {
		waitRunning(b, port, 2)
	}
	counter := "TX-packets"
	if toGuest {
		counter = "RX-packets"
	}
	if backendPMD != nil {
		backendPMD.command("start", startDone)
	}
	guest.command("start", startDone)
	time.Sleep(time.Second) // warm up
	var w0, w1 uint64
	if w != nil {
		w0 = w.total(&w.popped) + w.total(&w.pushed)
	}
	c0, t0 := guest.portStat(counter), time.Now()
	time.Sleep(measureFor)
	c1, t1 := guest.portStat(counter), time.Now()
	if w != nil {
		w1 = w.total(&w.popped) + w.total(&w.pushed)
		b.Logf("vmq worker moved %.3f Mpps; guest counted %.3f Mpps", float64(w1-w0)/t1.Sub(t0).Seconds()/1e6,
			float64(c1-c0)/t1.Sub(t0).Seconds()/1e6)
	}
	guest.command("stop", stopDone)
	mpps := float64(c1-c0) / t1.Sub(t0).Seconds() / 1e6
	return mpps
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// pinThread locks the calling goroutine to its thread and the thread to cpu.
func pinThread(cpu int) {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	unix.SchedSetaffinity(0, &set)
}

// BenchmarkPopCall is BenchmarkPop/*/64 with a call eventfd: every Flush
// (one per 32 frames) asks to notify the guest, so this measures the
// call path a worker pays per batch.
func BenchmarkPopCall(b *testing.B) {
	for _, l := range layouts {
		b.Run(l.name, func(b *testing.B) {
			efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(efd)
			g := l.guest(b, 256, testFeatures, false)
			stop := benchCallFD(b, g.queue(), efd)
			defer stop()
			benchPop(b, g, 64, false)
		})
	}
}

// BenchmarkDPDKComparePacked: vmq's back-end and DPDK's net_vhost, each
// with the same testpmd virtio_user guest on split and on packed rings
// (in_order=1 both), 64-byte frames, alternating for packedRounds rounds.
//
//	go test -run XXX -bench DPDKComparePacked -benchtime 1x ./dataplane/vhostuser
func BenchmarkDPDKComparePacked(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireCommand(b, "dpdk-testpmd")
	const packedRounds = 2
	rings := []struct{ name, opts string }{{"split", ",in_order=1"}, {"packed", ",in_order=1,packed_vq=1"}}
	for _, dir := range []string{"to_guest", "from_guest"} {
		b.Run(dir, func(b *testing.B) {
			res := map[string][]float64{}
			for r := 0; r < packedRounds; r++ {
				for _, backend := range []string{"vmq", "dpdk"} {
					for _, ring := range rings {
						k := backend + "-" + ring.name
						res[k] = append(res[k], measureBackendVdev(b, backend, dir == "to_guest", 64, ring.opts))
					}
				}
			}
			for _, backend := range []string{"vmq", "dpdk"} {
				s, p := median(res[backend+"-split"]), median(res[backend+"-packed"])
				b.Logf("%s %s: split %v packed %v Mpps", dir, backend, res[backend+"-split"], res[backend+"-packed"])
				b.ReportMetric(s, backend+"-split-Mpps")
				b.ReportMetric(p, backend+"-packed-Mpps")
			}
		})
	}
}
