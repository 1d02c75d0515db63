package frontend

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmq/vmq/internal/testenv"
	tpmd "github.com/vmq/vmq/internal/testpmd"
)

// testpmd runs dpdk-testpmd with a net_vhost port (DPDK's vhost-user
// backend) in the background.
type testpmd struct{ *tpmd.Proc }

// startTestpmd starts testpmd; client makes net_vhost connect to sock
// instead of listening on it.
func startTestpmd(t testing.TB, sock string, queues int, client bool, mode string, extra ...string) *testpmd {
	t.Helper()
	testenv.RequireCommand(t, "dpdk-testpmd")
	testenv.RequireRoot(t)
	vdev := fmt.Sprintf("net_vhost0,iface=%s,queues=%d", sock, queues)
	if client {
		vdev += ",client=1"
	}
	app := append([]string{"--forward-mode=" + mode, "--nb-cores=1",
		fmt.Sprintf("--rxq=%d", queues), fmt.Sprintf("--txq=%d", queues), "--total-num-mbufs=16384",
		"--no-flush-rx"}, extra...) // frames sent before forwarding starts must count, not be flushed
	p, err := tpmd.Start(t, tpmd.Config{Prefix: "vmqg", Lcores: "0@0,1@0", Mem: 256, EAL: []string{"--no-huge"},
		Vdevs: []string{vdev}, App: app})
	if err != nil {
		t.Fatal(err)
	}
	return &testpmd{p}
}

// kill interrupts testpmd (kills it after 10s); it is idempotent.
func (p *testpmd) kill() { p.Stop() }

// stop interrupts testpmd and returns its final RX and TX packet counts.
func (p *testpmd) stop(t testing.TB) (rx, tx uint64) {
	t.Helper()
	p.Stop()
	rx, tx, err := p.Stats()
	if err != nil {
		t.Fatalf("%v:\n%s", err, p.Output())
	}
	return rx, tx
}

func waitFile(t testing.TB, path string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	t.Fatalf("%s never appeared", path)
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

type interopCase struct {
	queues   int
	mrg      bool
	eventIdx bool
	server   bool // the guest listens, net_vhost connects
	regions  int  // memory regions; 0 = 1
	packed   bool // packed rings with IN_ORDER
}

func (c interopCase) String() string {
	mode := "client"
	if c.server {
		mode = "server"
	}
	s := fmt.Sprintf("qp%d_mrg%v_evidx%v_%s_mem%d", c.queues, c.mrg, c.eventIdx, mode, max(c.regions, 1))
	if c.packed {
		s += "_packed"
	}
	return s
}

var interopCases = []interopCase{
	{queues: 1, mrg: false},
	{queues: 1, mrg: true},
	{queues: 1, mrg: true, server: true, regions: 3},
	{queues: 1, mrg: false, eventIdx: true, server: true},
	{queues: 2, mrg: false, eventIdx: true, regions: 8},
	{queues: 2, mrg: true, regions: 2},
	{queues: 2, mrg: true, eventIdx: true, server: true},
	{queues: 2, mrg: false, server: true},
	{queues: 1, mrg: true, packed: true},
	{queues: 1, mrg: false, eventIdx: true, server: true, packed: true},
	{queues: 2, mrg: true, eventIdx: true, regions: 2, packed: true},
}

var testMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}

// startGuest connects a guest to testpmd per the case and runs it.
func startGuest(t testing.TB, c interopCase, cfg Config, mode string, extra ...string) (*Guest, *testpmd) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "vhost.sock")
	cfg.MAC = testMAC
	cfg.IP = netip.MustParseAddr("198.18.0.10")
	cfg.QueuePairs, cfg.MrgRxbuf, cfg.EventIdx, cfg.MemRegions = c.queues, c.mrg, c.eventIdx, c.regions
	cfg.PackedRing, cfg.InOrder = c.packed, c.packed
	var g *Guest
	var p *testpmd
	var err error
	if c.server {
		g, err = Listen(sock, cfg)
		if err != nil {
			t.Fatal(err)
		}
		p = startTestpmd(t, sock, c.queues, true, mode, extra...)
	} else {
		p = startTestpmd(t, sock, c.queues, false, mode, extra...)
		waitFile(t, sock)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			g, err = Dial(sock, cfg)
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		g.Close()
		<-runErr
	})
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	if err := g.WaitConnected(wctx); err != nil {
		t.Fatal(err)
	}
	return g, p
}

// TestDPDKTxonlyToGuest: testpmd txonly sends into the guest; the guest
// counts exactly what testpmd reports as transmitted.
func TestDPDKTxonlyToGuest(t *testing.T) {
	for _, c := range interopCases {
		t.Run(c.String(), func(t *testing.T) {
			cfg := Config{}
			var extra []string
			if c.mrg {
				// Small buffers and large frames force merging.
				cfg.RxBufSize = 512
				extra = append(extra, "--txpkts=1400")
			}
			g, p := startGuest(t, c, cfg, "txonly", extra...)
			if !waitFor(10*time.Second, func() bool { return g.Stats().RxFrames >= 20000 }) {
				t.Fatalf("guest received only %d frames", g.Stats().RxFrames)
			}
			_, tx := p.stop(t)
			if !waitFor(5*time.Second, func() bool { return g.Stats().RxFrames == tx }) {
				t.Fatalf("testpmd sent %d frames, guest received %d", tx, g.Stats().RxFrames)
			}
			s := g.Stats()
			t.Logf("testpmd tx %d, guest rx %d, queues %+v, features %#x", tx, s.RxFrames, s.Queues, g.Features())
			for q, qs := range s.Queues {
				if qs.RxFrames == 0 {
					t.Errorf("queue pair %d received nothing", q)
				}
			}
			want := uint64(64)
			if c.mrg {
				want = 1400
			}
			if s.RxBytes != s.RxFrames*want {
				t.Errorf("rx bytes %d, want %d frames of %d", s.RxBytes, s.RxFrames, want)
			}
			checkFeatures(t, g, c)
		})
	}
}

func checkFeatures(t testing.TB, g *Guest, c interopCase) {
	t.Helper()
	f := g.Features()
	if got := f&(1<<15) != 0; got != c.mrg {
		t.Errorf("MRG_RXBUF negotiated %v, want %v", got, c.mrg)
	}
	if got := f&(1<<29) != 0; got != c.eventIdx {
		t.Errorf("EVENT_IDX negotiated %v, want %v", got, c.eventIdx)
	}
	if got := f&(1<<34) != 0 && f&(1<<35) != 0; got != c.packed {
		t.Errorf("RING_PACKED and IN_ORDER negotiated %v, want %v (features %#x)", got, c.packed, f)
	}
}

// TestDPDKGuestToRxonly: the guest sends N stamped frames; testpmd rxonly
// receives exactly N.
func TestDPDKGuestToRxonly(t *testing.T) {
	for _, c := range interopCases {
		t.Run(c.String(), func(t *testing.T) {
			g, p := startGuest(t, c, Config{}, "rxonly")
			const perQueue = 20000
			var wg sync.WaitGroup
			errs := make([]error, c.queues)
			for q := range c.queues {
				wg.Add(1)
				go func() {
					defer wg.Done()
					n, err := g.Generate(context.Background(), Traffic{Dst: net.HardwareAddr{2, 0, 0, 0, 0, 0xb},
						Count: perQueue, Rate: 100000, Stream: uint32(q), Queue: q, Size: 128})
					if err == nil && n != perQueue {
						err = fmt.Errorf("queued %d of %d", n, perQueue)
					}
					errs[q] = err
				}()
			}
			wg.Wait()
			for q, err := range errs {
				if err != nil {
					t.Fatalf("queue %d: %v", q, err)
				}
			}
			// Wait until the device has consumed every frame.
			if !waitFor(10*time.Second, func() bool { return g.txIdle() }) {
				t.Fatal("tx rings never drained")
			}
			rx, _ := p.stop(t)
			want := uint64(c.queues * perQueue)
			if rx != want {
				t.Fatalf("testpmd received %d frames, guest sent %d", rx, want)
			}
			if s := g.Stats(); s.TxFrames != want {
				t.Fatalf("guest counted %d tx frames, want %d", s.TxFrames, want)
			}
			checkFeatures(t, g, c)
		})
	}
}
