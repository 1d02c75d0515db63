package frontend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/internal/testenv"
)

// pairWorker owns both queues of one pair of a vmq backend port: it hands
// injected frames to the guest and echoes (or collects) what the guest
// sends. Push waits for buffers instead of dropping, so counts are exact.
type pairWorker struct {
	rx, tx  *vhostuser.Queue
	inject  chan []byte
	out     chan []byte // frames popped when collecting
	echo    bool
	stop    chan struct{}
	stopped chan struct{}
	err     error
}

func (w *pairWorker) run() {
	defer close(w.stopped)
	buf := make([]byte, 65536)
	push := func(f []byte) bool {
		for {
			err := w.rx.Push(f)
			if err == nil {
				return true
			}
			if !errors.Is(err, vhostuser.ErrNoBuffers) {
				w.err = err
				return false
			}
			w.rx.Flush()
			select {
			case <-w.stop:
				return false
			case <-time.After(50 * time.Microsecond):
			}
		}
	}
	for {
		select {
		case <-w.stop:
			w.rx.Flush()
			w.tx.Flush()
			return
		case f := <-w.inject:
			if !push(f) {
				return
			}
			w.rx.Flush()
		default:
		}
		work := 0
		for work < 64 {
			n, err := w.tx.Pop(buf)
			if errors.Is(err, vhostuser.ErrEmpty) {
				break
			}
			if err != nil {
				w.err = err
				return
			}
			work++
			if w.echo {
				if !push(buf[:n]) {
					return
				}
			} else {
				w.out <- append([]byte(nil), buf[:n]...)
			}
		}
		w.rx.Flush()
		w.tx.Flush()
		if work == 0 {
			time.Sleep(20 * time.Microsecond)
		}
	}
}

// pairHandler starts a pairWorker once both queues of a pair are ready.
type pairHandler struct {
	mu      sync.Mutex
	ready   map[int]*vhostuser.Queue
	workers map[int]*pairWorker
	started chan *pairWorker
	echo    bool
	broken  chan string
}

func newPairHandler(echo bool) *pairHandler {
	return &pairHandler{ready: map[int]*vhostuser.Queue{}, workers: map[int]*pairWorker{},
		started: make(chan *pairWorker, 16), echo: echo, broken: make(chan string, 4)}
}

func (h *pairHandler) QueueReady(q *vhostuser.Queue) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ready[q.Index()] = q
	rx, tx := h.ready[2*q.Pair()], h.ready[2*q.Pair()+1]
	if rx == nil || tx == nil || h.workers[q.Pair()] != nil {
		return
	}
	w := &pairWorker{rx: rx, tx: tx, inject: make(chan []byte, 16), out: make(chan []byte, 1024), echo: h.echo,
		stop: make(chan struct{}), stopped: make(chan struct{})}
	h.workers[q.Pair()] = w
	go w.run()
	h.started <- w
}

func (h *pairHandler) QueueStopped(q *vhostuser.Queue) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.ready, q.Index())
	if w := h.workers[q.Pair()]; w != nil {
		close(w.stop)
		<-w.stopped
		delete(h.workers, q.Pair())
	}
}

func (h *pairHandler) DeviceBroken(_ *vhostuser.Port, reason string) {
	select {
	case h.broken <- reason:
	default:
	}
}

type backendCase struct {
	queues        int
	mrg, eventIdx bool
	guestListens  bool
	packed        bool // packed rings with IN_ORDER
	huge          bool // guest memory on 2 MiB huge pages
}

func (c backendCase) String() string {
	s := fmt.Sprintf("qp%d_mrg%v_evidx%v_guestListens%v", c.queues, c.mrg, c.eventIdx, c.guestListens)
	if c.packed {
		s += "_packed"
	}
	if c.huge {
		s += "_hugepages"
	}
	return s
}

// connectBackend attaches a guest to a vmq backend port and waits for the
// workers of every pair.
func connectBackend(t *testing.T, c backendCase, cfg Config, h *pairHandler) (*Guest, []*pairWorker) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "vm.sock")
	cfg.MAC, cfg.IP = guestMAC, guestIP
	cfg.QueuePairs, cfg.MrgRxbuf, cfg.EventIdx = c.queues, c.mrg, c.eventIdx
	cfg.PackedRing, cfg.InOrder = c.packed, c.packed
	if cfg.HugePages = c.huge; c.huge {
		testenv.RequireHugePages(t, 1)
	}
	pcfg := vhostuser.Config{MAC: guestMAC, QueuePairs: c.queues, Handler: h, Logger: slog.New(slog.DiscardHandler)}
	var g *Guest
	var port *vhostuser.Port
	var err error
	if c.guestListens {
		if g, err = Listen(sock, cfg); err != nil {
			t.Fatal(err)
		}
		if port, err = vhostuser.Dial(sock, pcfg); err != nil {
			t.Fatal(err)
		}
	} else {
		if port, err = vhostuser.Listen(sock, pcfg); err != nil {
			t.Fatal(err)
		}
		if g, err = Dial(sock, cfg); err != nil {
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
		port.Close()
	})
	workers := make([]*pairWorker, c.queues)
	for range c.queues {
		select {
		case w := <-h.started:
			workers[w.rx.Pair()] = w
		case r := <-h.broken:
			t.Fatalf("backend says the device is broken: %s", r)
		case <-time.After(10 * time.Second):
			t.Fatalf("backend queues never became ready (port state %+v)", port.State())
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := g.WaitConnected(wctx); err != nil {
		t.Fatal(err)
	}
	checkFeatures(t, g, interopCase{mrg: c.mrg, eventIdx: c.eventIdx, packed: c.packed})
	return g, workers
}

var backendCases = []backendCase{
	{queues: 1},
	{queues: 1, mrg: true, eventIdx: true, guestListens: true},
	{queues: 2, mrg: true},
	{queues: 2, eventIdx: true, guestListens: true},
	{queues: 1, packed: true},
	{queues: 1, mrg: true, eventIdx: true, guestListens: true, packed: true},
	{queues: 2, mrg: true, eventIdx: true, packed: true},
	{queues: 2, mrg: true, eventIdx: true, huge: true},
}

// Frames injected by vmq's backend reach the guest; the guest's answers
// to ARP and ping come back byte-exact.
func TestBackendARPAndPing(t *testing.T) {
	for _, c := range backendCases {
		t.Run(c.String(), func(t *testing.T) {
			h := newPairHandler(false)
			g, workers := connectBackend(t, c, Config{}, h)
			arp := unhex(t, `ffffffffffff 020000000001 0806
				0001 0800 06 04 0001 020000000001 0a000001 000000000000 0a00000a`)
			ping := unhex(t, `02000000000a 020000000001 0800
				4500 0020 0001 0000 4001 66d2 0a000001 0a00000a
				0800 32d9 0010 0050 6162 6364`)
			wantARP := unhex(t, `020000000001 02000000000a 0806
				0001 0800 06 04 0002 02000000000a 0a00000a 020000000001 0a000001`)
			wantPing := unhex(t, `020000000001 02000000000a 0800
				4500 0020 0001 0000 4001 66d2 0a00000a 0a000001
				0000 3ad9 0010 0050 6162 6364`)
			for _, w := range workers {
				w.inject <- arp
				w.inject <- ping
				for i, want := range [][]byte{wantARP, wantPing} {
					select {
					case got := <-w.out:
						if !bytes.Equal(got, want) {
							t.Fatalf("pair %d reply %d\n got %x\nwant %x", w.rx.Pair(), i, got, want)
						}
					case <-time.After(5 * time.Second):
						t.Fatalf("pair %d: no reply %d (guest stats %+v)", w.rx.Pair(), i, g.Stats())
					}
				}
			}
			s := g.Stats()
			if s.ARPReplies != uint64(c.queues) || s.ICMPReplies != uint64(c.queues) {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

// The guest's stamped traffic, echoed by vmq's backend, comes back
// complete and in order on every queue pair.
func TestBackendEcho(t *testing.T) {
	for _, c := range backendCases {
		t.Run(c.String(), func(t *testing.T) {
			cfg := Config{}
			size := 1000
			if c.mrg {
				cfg.RxBufSize = 256 // echoed frames span several buffers
			}
			g, _ := connectBackend(t, c, cfg, newPairHandler(true))
			const perQueue = 5000
			errs := make(chan error, c.queues)
			for q := range c.queues {
				go func() {
					n, err := g.Generate(context.Background(), Traffic{Dst: peerMAC, Count: perQueue, Rate: 50000,
						Queue: q, Stream: uint32(q), Size: size})
					if err == nil && n != perQueue {
						err = fmt.Errorf("queued %d", n)
					}
					errs <- err
				}()
			}
			for range c.queues {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			want := uint64(c.queues * perQueue)
			if !waitFor(10*time.Second, func() bool { return g.Stats().RxFrames == want }) {
				t.Fatalf("sent %d, received %d", want, g.Stats().RxFrames)
			}
			s := g.Stats()
			if len(s.Streams) != c.queues {
				t.Fatalf("streams %+v", s.Streams)
			}
			for _, st := range s.Streams {
				if st.Received != perQueue || st.Lost != 0 || st.Reordered != 0 || st.Duplicates != 0 || st.MaxSeq != perQueue-1 {
					t.Fatalf("stream %+v", st)
				}
				if st.LatencyMax <= 0 || st.LatencyP50 > st.LatencyMax {
					t.Fatalf("latency %+v", st)
				}
			}
			if s.RxBytes != want*uint64(size) || s.Queues[c.queues-1].RxFrames != perQueue {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}
