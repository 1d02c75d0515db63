package vhostuser_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/guest/frontend"
)

// pubWorker is a dataplane worker written against the public API only:
// one goroutine per queue, busy for a while, then sleeping on the kick fd
// with notifications enabled; taken back on QueueStopped.
type pubWorker struct {
	mu     sync.Mutex
	runs   map[*vhostuser.Queue]chan chan struct{}
	frame  []byte
	toPush [8]atomic.Int64
	pushed [8]atomic.Uint64
	popped [8]atomic.Uint64
	bytes  atomic.Uint64
	broken atomic.Value
}

func (w *pubWorker) QueueReady(q *vhostuser.Queue) {
	stop := make(chan chan struct{})
	w.mu.Lock()
	w.runs[q] = stop
	w.mu.Unlock()
	go w.run(q, stop)
}

func (w *pubWorker) QueueStopped(q *vhostuser.Queue) {
	w.mu.Lock()
	stop := w.runs[q]
	delete(w.runs, q)
	w.mu.Unlock()
	if stop != nil {
		ack := make(chan struct{})
		stop <- ack
		<-ack
	}
}

func (w *pubWorker) DeviceBroken(p *vhostuser.Port, reason string) { w.broken.Store(reason) }

func (w *pubWorker) run(q *vhostuser.Queue, stop chan chan struct{}) {
	buf := make([]byte, 2048)
	pair := q.Pair()
	idle := 0
	for {
		select {
		case ack := <-stop:
			q.Flush()
			close(ack)
			return
		default:
		}
		n := 0
		if q.IsRX() {
			for n < 32 && w.toPush[pair].Load() > 0 {
				if err := q.Push(w.frame); err != nil {
					break
				}
				w.toPush[pair].Add(-1)
				w.pushed[pair].Add(1)
				n++
			}
		} else {
			for n < 64 {
				l, err := q.Pop(buf)
				if err != nil {
					break
				}
				w.bytes.Add(uint64(l))
				n++
			}
			w.popped[pair].Add(uint64(n))
		}
		q.Flush()
		if n > 0 {
			idle = 0
			continue
		}
		if idle++; idle < 50 {
			continue
		}
		if pending, err := q.EnableNotify(); pending || err != nil {
			if err != nil {
				time.Sleep(time.Millisecond)
			}
			continue
		}
		if fd := q.KickFD(); fd >= 0 {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if k, _ := unix.Poll(pfd, 2); k > 0 {
				q.AckKick()
			}
		} else {
			time.Sleep(time.Millisecond)
		}
		q.DisableNotify()
	}
}

func sum(c *[8]atomic.Uint64) uint64 {
	var s uint64
	for i := range c {
		s += c[i].Load()
	}
	return s
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestGoFrontend runs the Go guest (guest/frontend) against
// the back-end in both connection modes, with and without EVENT_IDX and
// MRG_RXBUF, on two queue pairs: stamped frames both ways, counted exactly.
func TestGoFrontend(t *testing.T) {
	for _, c := range []struct {
		client, eventIdx, mrg bool
	}{{false, true, true}, {false, false, false}, {true, true, false}, {true, false, true}} {
		name := fmt.Sprintf("client=%v/event_idx=%v/mrg=%v", c.client, c.eventIdx, c.mrg)
		t.Run(name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "vm.sock")
			guestMAC := net.HardwareAddr{2, 0, 0, 0, 0, 0x0a}
			frame, err := frontend.BuildUDP(frontend.UDPTemplate{Dst: guestMAC, Src: net.HardwareAddr{2, 0, 0, 0, 0, 0x0b},
				SrcIP: netip.MustParseAddr("198.18.0.2"), DstIP: netip.MustParseAddr("198.18.0.1"), Size: 1514})
			if err != nil {
				t.Fatal(err)
			}
			w := &pubWorker{runs: map[*vhostuser.Queue]chan chan struct{}{}, frame: frame}
			log := slog.New(slog.DiscardHandler)
			pcfg := vhostuser.Config{MAC: guestMAC, QueuePairs: 2, Handler: w, Logger: log,
				ReconnectMin: 10 * time.Millisecond, ReconnectMax: 100 * time.Millisecond}
			gcfg := frontend.Config{MAC: guestMAC, QueuePairs: 2, EventIdx: c.eventIdx, MrgRxbuf: c.mrg, Logger: log}
			if c.mrg {
				gcfg.RxBufSize = 1024 // 1514-byte frames need two buffers
			}
			ctx, cancel := context.WithCancel(context.Background())
			var port *vhostuser.Port
			var g *frontend.Guest
			if c.client {
				if g, err = frontend.Listen(sock, gcfg); err != nil {
					t.Fatal(err)
				}
				if port, err = vhostuser.Dial(sock, pcfg); err != nil {
					t.Fatal(err)
				}
			} else {
				if port, err = vhostuser.Listen(sock, pcfg); err != nil {
					t.Fatal(err)
				}
				if g, err = frontend.Dial(sock, gcfg); err != nil {
					t.Fatal(err)
				}
			}
			runErr := make(chan error, 1)
			go func() { runErr <- g.Run(ctx) }()
			t.Cleanup(func() {
				cancel()
				<-runErr
				g.Close()
				port.Close()
			})
			waitUntil(t, "queues running", func() bool {
				n := 0
				for _, r := range port.State().Running {
					if r {
						n++
					}
				}
				return n == 4 && g.Connected()
			})
			st := port.State()
			if c.eventIdx != (st.Features&(1<<29) != 0) || c.mrg != (st.Features&(1<<15) != 0) {
				t.Fatalf("negotiated features %#x", st.Features)
			}

			// Guest → back-end: exact count per queue pair.
			const n = 5000
			for qp := 0; qp < 2; qp++ {
				sent, err := g.Generate(ctx, frontend.Traffic{Dst: net.HardwareAddr{2, 0, 0, 0, 0, 0x0b}, Size: 200,
					Count: n, Queue: qp, Stream: uint32(qp)})
				if err != nil || sent != n {
					t.Fatalf("generate on %d: %d %v", qp, sent, err)
				}
			}
			waitUntil(t, "frames popped", func() bool { return sum(&w.popped) >= 2*n })
			time.Sleep(50 * time.Millisecond)
			if got := sum(&w.popped); got != 2*n || w.popped[0].Load() != n || w.bytes.Load() != 2*n*200 {
				t.Fatalf("popped %d (%d on pair 0, %d bytes), want %d", got, w.popped[0].Load(), w.bytes.Load(), 2*n)
			}

			// Back-end → guest, in bounded bursts.
			for i := 0; i < n; i += 250 {
				w.toPush[0].Add(250)
				w.toPush[1].Add(250)
				waitUntil(t, "pushes", func() bool { return w.toPush[0].Load() == 0 && w.toPush[1].Load() == 0 })
			}
			waitUntil(t, "guest rx", func() bool { return g.Stats().RxFrames >= 2*n })
			time.Sleep(50 * time.Millisecond)
			gs := g.Stats()
			if gs.RxFrames != 2*n || gs.RxBytes != 2*n*1514 || gs.RxDropped != 0 || gs.Queues[1].RxFrames != n {
				t.Fatalf("guest stats %+v, want %d frames of 1514 bytes", gs, 2*n)
			}
			st = port.State()
			t.Logf("features %#x; backend kicks %d calls %d; guest kicks %d wakeups %d", st.Features, st.Kicks, st.Calls, gs.Kicks, gs.Wakeups)
			if r, _ := w.broken.Load().(string); r != "" {
				t.Fatalf("device broken: %s", r)
			}
		})
	}
}
