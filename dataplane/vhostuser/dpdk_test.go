package vhostuser

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
	tpmd "github.com/vmq/vmq/internal/testpmd"
)

// testpmd is an interactive dpdk-testpmd driven through its stdin; its
// methods fail the test on error.
type testpmd struct {
	*tpmd.Proc
	t testing.TB
}

// pmdArgs are the EAL arguments of one testpmd with a single vdev.
// Hugepage files go under a unique prefix, removed at cleanup.
func pmdArgs(prefix, vdev string, lcores string) []string {
	return []string{"--lcores=" + lcores, "--file-prefix=" + prefix, "-m", "128",
		"--single-file-segments", "--vdev=" + vdev, "--log-level=lib.eal:error"}
}

// startTestpmd starts testpmd interactively (-i): forwarding begins on
// "start", so the test controls exactly when frames flow.
func startTestpmd(t testing.TB, eal []string, app ...string) *testpmd {
	t.Helper()
	// A small mbuf pool: hugepages are shared with other tests (the
	// default pool alone takes over 300 MB).
	p, err := tpmd.Start(t, tpmd.Config{EAL: eal, App: append([]string{"--total-num-mbufs=16384"}, app...), Interactive: true})
	if err != nil {
		t.Fatal(err)
	}
	return &testpmd{Proc: p, t: t}
}

// kill quits testpmd and removes its files; it is idempotent.
func (p *testpmd) kill() { p.Stop() }

// command sends one line and returns its output once it contains
// marker (testpmd prints the prompt before a command's output).
func (p *testpmd) command(line, marker string) string {
	p.t.Helper()
	out, err := p.Command(line, marker)
	if err != nil {
		p.t.Fatal(err)
	}
	return out
}

// Markers that end the output of the commands the tests use.
const (
	startDone = tpmd.StartDone
	stopDone  = tpmd.StopDone
)

// waitPrompt waits for the first prompt (EAL and ports initialised).
func (p *testpmd) waitPrompt(d time.Duration) {
	p.t.Helper()
	if err := p.WaitPrompt(d); err != nil {
		p.t.Fatalf("testpmd did not start: %v", err)
	}
}

// portStat reads one counter of port 0 with "show port stats 0".
func (p *testpmd) portStat(name string) uint64 {
	p.t.Helper()
	v, err := p.PortStat(0, name)
	if err != nil {
		p.t.Fatal(err)
	}
	return v
}

// testWorker plays the dataplane worker: one goroutine per ready queue,
// taken back on QueueStopped. TX queues are popped and counted; RX
// queues push what the test queues up in toPush.
type workerRun struct{ stop, done chan struct{} }

type testWorker struct {
	t       testing.TB
	frame   []byte // pushed frame
	busy    bool   // never sleep on the busy direction's queues (benchmarks)
	busyRX  bool   // the busy direction is RX (to the guest)
	pin     bool   // lock each queue's goroutine to a thread on CPU 0 (benchmarks)
	mu      sync.Mutex
	running map[*Queue]workerRun
	ready   chan *Queue

	popped  [8]atomic.Uint64 // by queue pair
	pushed  [8]atomic.Uint64
	toPush  [8]atomic.Int64
	badLen  atomic.Uint64
	wantLen int
	broken  atomic.Value
}

func newTestWorker(t testing.TB, frame []byte) *testWorker {
	return &testWorker{t: t, frame: frame, running: map[*Queue]workerRun{}, ready: make(chan *Queue, 64)}
}

func (w *testWorker) QueueReady(q *Queue) {
	r := workerRun{stop: make(chan struct{}), done: make(chan struct{})}
	w.mu.Lock()
	w.running[q] = r
	w.mu.Unlock()
	go w.run(q, r.stop, r.done)
	select {
	case w.ready <- q:
	default:
	}
}

// QueueStopped returns once the queue's goroutine has flushed and exited.
func (w *testWorker) QueueStopped(q *Queue) {
	w.mu.Lock()
	r, ok := w.running[q]
	delete(w.running, q)
	w.mu.Unlock()
	if ok {
		close(r.stop)
		<-r.done
	}
}

func (w *testWorker) DeviceBroken(p *Port, reason string) { w.broken.Store(reason) }

func (w *testWorker) run(q *Queue, stop, done chan struct{}) {
	defer close(done)
	defer q.Flush()
	busy := w.busy && q.IsRX() == w.busyRX
	if w.pin && busy {
		pinThread(0)
		defer runtime.UnlockOSThread()
	}
	if busy {
		q.DisableNotify() // a busy-polling worker wants no kicks
	}
	pair := q.Pair()
	buf := make([]byte, 2048)
	idle := 0
	for {
		select {
		case <-stop:
			return
		default:
		}
		n := 0
		if q.IsRX() {
			// The shared counters move once per batch, as a worker's would.
			want := min(32, w.toPush[pair].Load())
			for int64(n) < want {
				if err := q.Push(w.frame); err != nil {
					break
				}
				n++
			}
			if n > 0 {
				w.toPush[pair].Add(-int64(n))
				w.pushed[pair].Add(uint64(n))
			}
		} else {
			for n < 64 {
				l, err := q.Pop(buf)
				if err != nil {
					break
				}
				if w.wantLen > 0 && l != w.wantLen {
					w.badLen.Add(1)
				}
				n++
			}
			w.popped[pair].Add(uint64(n))
		}
		q.Flush()
		if n > 0 || busy {
			idle = 0
			continue
		}
		// Idle: ask for kicks and sleep on the kick fd (short timeout so
		// stop and toPush are noticed).
		if idle++; idle < 100 {
			continue
		}
		if q.IsRX() && w.toPush[pair].Load() == 0 {
			// Nothing to push: wait for the test, not for kicks. The
			// guest's posted buffers would make EnableNotify report
			// pending forever and this loop spin on the measured CPU.
			time.Sleep(time.Millisecond)
			continue
		}
		if pending, err := q.EnableNotify(); err != nil || pending {
			if err != nil {
				time.Sleep(time.Millisecond)
			}
			continue
		}
		if fd := q.KickFD(); fd >= 0 {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if n, _ := unix.Poll(pfd, 2); n > 0 {
				q.AckKick()
			}
		} else {
			time.Sleep(time.Millisecond)
		}
		q.DisableNotify()
	}
}

func (w *testWorker) total(c *[8]atomic.Uint64) uint64 {
	var s uint64
	for i := range c {
		s += c[i].Load()
	}
	return s
}

type interopCase struct {
	client bool // vmq dials (virtio_user server=1)
	mrg    int
	queues int
	vdev   string // more virtio_user options (",packed_vq=1,in_order=1")
}

func (c interopCase) String() string {
	mode := "server"
	if c.client {
		mode = "client"
	}
	// No ',' or '=' in the name: it ends up in the socket path of a vdev argument.
	return fmt.Sprintf("%s/mrg%d/q%d%s", mode, c.mrg, c.queues, strings.NewReplacer(",", "+", "=", "").Replace(c.vdev))
}

// interopLayouts run DPDK's virtio_user on each ring layout: split rings
// in both socket modes, with and without mergeable buffers, on one and
// two queue pairs; packed rings with and without IN_ORDER in both socket
// modes (and multiqueue once). reconnect is the vdev of the layout's
// TestDPDKReconnect cases.
var interopLayouts = []struct {
	name      string
	cases     []interopCase
	reconnect string
}{
	{"split", []interopCase{
		{false, 1, 1, ""}, {false, 0, 1, ""}, {true, 1, 1, ""}, {true, 0, 1, ""},
		{false, 1, 2, ""}, {false, 0, 2, ""}, {true, 1, 2, ""}, {true, 0, 2, ""},
	}, ""},
	{"packed", []interopCase{
		{false, 1, 1, ",packed_vq=1,in_order=1"}, {true, 1, 1, ",packed_vq=1,in_order=1"},
		{false, 0, 1, ",packed_vq=1,in_order=0"}, {true, 0, 1, ",packed_vq=1,in_order=0"},
		{false, 1, 2, ",packed_vq=1,in_order=1"},
	}, ",packed_vq=1,in_order=1"},
}

// forInteropCases runs f as a subtest for each case, under a subtest for
// its ring layout.
func forInteropCases(t *testing.T, f func(t *testing.T, c interopCase)) {
	for _, l := range interopLayouts {
		t.Run(l.name, func(t *testing.T) {
			for _, c := range l.cases {
				t.Run(c.String(), func(t *testing.T) { f(t, c) })
			}
		})
	}
}

// checkLayout fails unless the port negotiated the case's ring layout
// (and, on packed rings, IN_ORDER exactly when the case asked for it).
func checkLayout(t *testing.T, p *Port, c interopCase) {
	t.Helper()
	f := p.State().Features
	packed := strings.Contains(c.vdev, "packed_vq=1")
	if (f&virtio.FRingPacked != 0) != packed {
		t.Fatalf("features %#x: RING_PACKED negotiated %v, want %v", f, f&virtio.FRingPacked != 0, packed)
	}
	if wantIO := strings.Contains(c.vdev, "in_order=1"); packed && (f&virtio.FInOrder != 0) != wantIO {
		t.Fatalf("features %#x: IN_ORDER negotiated %v, want %v", f, f&virtio.FInOrder != 0, wantIO)
	}
}

// startVirtioUser starts testpmd with a net_virtio_user guest attached
// to a vmq port, which it returns once every queue is ready.
func startVirtioUser(t *testing.T, c interopCase, w *testWorker, mode string, app ...string) (*Port, *testpmd) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "dpdk-testpmd")
	sock := filepath.Join(t.TempDir(), "vu.sock")
	cfg := Config{MAC: []byte{2, 0, 0, 0, 0, 0x0a}, QueuePairs: c.queues, Handler: w, Logger: testLogger(t),
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}
	var p *Port
	var err error
	var pmd *testpmd
	if c.client {
		pmd = startVirtioUserPMD(t, sock, c, mode, app...)
		if p, err = Dial(sock, cfg); err != nil {
			t.Fatal(err)
		}
	} else {
		if p, err = Listen(sock, cfg); err != nil {
			t.Fatal(err)
		}
		pmd = startVirtioUserPMD(t, sock, c, mode, app...)
	}
	t.Cleanup(func() { pmd.kill(); p.Close() })
	pmd.waitPrompt(60 * time.Second)
	waitRunning(t, p, 2*c.queues)
	return p, pmd
}

// startVirtioUserPMD starts the testpmd guest on sock.
func startVirtioUserPMD(t *testing.T, sock string, c interopCase, mode string, app ...string) *testpmd {
	prefix := netnstest.UniqueName("vmqvu")
	vdev := fmt.Sprintf("net_virtio_user0,path=%s,queues=%d,queue_size=1024,mrg_rxbuf=%d,mac=02:00:00:00:00:0a", sock, c.queues, c.mrg)
	if c.queues > 1 {
		vdev += ",cq=1" // virtio_user emulates the control queue that switches pairs on
	}
	if c.client {
		vdev += ",server=1"
	}
	vdev += c.vdev
	app = append([]string{"--forward-mode=" + mode, fmt.Sprintf("--rxq=%d", c.queues), fmt.Sprintf("--txq=%d", c.queues),
		"--nb-cores=1", "--rxd=1024", "--txd=1024"}, app...)
	return startTestpmd(t, pmdArgs(prefix, vdev, "0@0,1@1"), app...)
}

func waitRunning(t testing.TB, p *Port, n int) {
	t.Helper()
	waitFor(t, func() bool {
		k := 0
		for _, r := range p.State().Running {
			if r {
				k++
			}
		}
		return k == n
	}, fmt.Sprintf("%d queues running", n))
}

// guestTx runs testpmd txonly until the backend has seen some frames,
// stops it, and checks that the backend popped exactly what it sent.
func guestTx(t *testing.T, pmd *testpmd, w *testWorker, min uint64) uint64 {
	t.Helper()
	base := w.total(&w.popped)
	pmd.command("start", startDone)
	waitFor(t, func() bool { return w.total(&w.popped)-base > min }, "frames from testpmd")
	out := pmd.command("stop", stopDone)
	sent, err := tpmd.Stat(out, "TX-packets")
	if err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	// Everything testpmd sent is in the ring: wait for the worker to drain it.
	deadline := time.Now().Add(10 * time.Second)
	for w.total(&w.popped)-base < sent && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if got := w.total(&w.popped) - base; got != sent {
		t.Fatalf("testpmd sent %d frames, backend popped %d", sent, got)
	}
	return sent
}

// TestDPDKReconnect: the guest is killed and restarted; the port (server
// or client mode) serves the new one from its own ring base (a packed
// ring: slot 0, wrap 1), and frames flow again, exactly.
func TestDPDKReconnect(t *testing.T) {
	for _, l := range interopLayouts {
		t.Run(l.name, func(t *testing.T) {
			for _, client := range []bool{false, true} {
				c := interopCase{client: client, mrg: 1, queues: 1, vdev: l.reconnect}
				t.Run(c.String(), func(t *testing.T) {
					w := newTestWorker(t, nil)
					p, pmd := startVirtioUser(t, c, w, "txonly", "--txpkts=64")
					checkLayout(t, p, c)
					guestTx(t, pmd, w, 10000)
					pmd.Kill() // a crash: no GET_VRING_BASE, no goodbye
					waitFor(t, func() bool { return !p.State().Connected }, "disconnect")
					waitRunning(t, p, 0)
					sock := p.Path()
					if client {
						os.Remove(sock) // the killed testpmd left its listening socket behind
					}
					pmd2 := startVirtioUserPMD(t, sock, c, "txonly", "--txpkts=64")
					pmd2.waitPrompt(60 * time.Second)
					waitRunning(t, p, 2)
					sent := guestTx(t, pmd2, w, 10000)
					st := p.State()
					if st.Connects != 2 || st.Broken != "" {
						t.Fatalf("state after reconnect: %+v", st)
					}
					t.Logf("second guest sent %d, all popped; connects %d", sent, st.Connects)
				})
			}
		})
	}
}

// TestDPDKGuestTx: testpmd txonly sends through virtio_user; the backend
// pops exactly as many frames as testpmd counts as sent, frames of the
// right length, on every queue pair.
func TestDPDKGuestTx(t *testing.T) {
	forInteropCases(t, func(t *testing.T, c interopCase) {
		w := newTestWorker(t, nil)
		w.wantLen = 64
		p, pmd := startVirtioUser(t, c, w, "txonly", "--txpkts=64")
		checkLayout(t, p, c)
		sent := guestTx(t, pmd, w, 50000)
		got := w.total(&w.popped)
		if b := w.badLen.Load(); b != 0 {
			t.Fatalf("%d frames of the wrong length", b)
		}
		for i := 0; i < c.queues; i++ {
			if w.popped[i].Load() == 0 {
				t.Errorf("queue pair %d carried nothing", i)
			}
		}
		st := p.State()
		t.Logf("sent %d popped %d per pair %d/%d; kicks %d calls %d; features %#x protocol %#x",
			sent, got, w.popped[0].Load(), w.popped[1].Load(), st.Kicks, st.Calls, st.Features, st.ProtocolFeatures)
		if st.Broken != "" {
			t.Fatalf("device broken: %s", st.Broken)
		}
	})
}

// TestDPDKGuestRx: the backend pushes a known number of frames per
// queue; testpmd rxonly receives exactly that many frames and bytes.
func TestDPDKGuestRx(t *testing.T) {
	forInteropCases(t, func(t *testing.T, c interopCase) {
		frame := make([]byte, 1514)
		copy(frame, []byte{2, 0, 0, 0, 0, 0x0a, 2, 0, 0, 0, 0, 0x0b, 0x08, 0x00})
		w := newTestWorker(t, frame)
		p, pmd := startVirtioUser(t, c, w, "rxonly")
		checkLayout(t, p, c)
		pmd.command("start", startDone)
		const perQueue = 20000
		// Bounded bursts the guest keeps up with: exact counts, no drops.
		for sent := 0; sent < perQueue; sent += 500 {
			for i := 0; i < c.queues; i++ {
				w.toPush[i].Add(500)
			}
			waitFor(t, func() bool {
				for i := 0; i < c.queues; i++ {
					if w.toPush[i].Load() > 0 {
						return false
					}
				}
				return true
			}, "pushes")
		}
		want := uint64(perQueue * c.queues)
		var got uint64
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if got = pmd.portStat("RX-packets"); got >= want {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if got != want || w.total(&w.pushed) != want {
			t.Fatalf("pushed %d, testpmd received %d, want %d", w.total(&w.pushed), got, want)
		}
		if bytes := pmd.portStat("RX-bytes"); bytes != want*uint64(len(frame)) {
			t.Fatalf("testpmd received %d bytes, want %d", bytes, want*uint64(len(frame)))
		}
		var drops uint64
		for _, q := range p.Queues() {
			drops += q.Stats().Drops[DropTooBig]
		}
		st := p.State()
		t.Logf("pushed %d, testpmd RX %d; too-big drops %d; calls %d; features %#x", want, got, drops, st.Calls, st.Features)
		if st.Broken != "" {
			t.Fatalf("device broken: %s", st.Broken)
		}
	})
}
