// Package frontend is a vhost-user front-end: a guest in a process. It
// shares memfd memory with a vhost-user backend (vmqd, DPDK's net_vhost,
// any vhost-user-net device), drives the split virtqueues from the driver
// side, answers ARP and ICMP echo for one IPv4 address, counts pktgen
// streams (loss, reordering, duplicates, latency) and sends test traffic.
//
// Threading: Run is the only goroutine that reads receive queues (and
// calls Config.OnFrame). Send, SendBatch and Generate may be called from
// any goroutine; each transmit queue is guarded by one mutex taken once
// per batch. Stats may be called at any time.
package frontend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/pktgen"
)

// Errors of the Guest API.
var (
	ErrNotConnected = errors.New("vhost-user backend not connected")
	ErrDisconnected = errors.New("vhost-user backend went away")
	ErrRingFull     = errors.New("tx ring full")
	ErrClosed       = errors.New("guest closed")
)

// Config configures a Guest. Zero values take the defaults noted.
type Config struct {
	MAC net.HardwareAddr // required: the guest's address, for ARP/ICMP and as traffic source
	IP  netip.Addr       // IPv4 address answered for ARP and ICMP echo; invalid: answer nothing

	QueuePairs int // default 1; >1 needs MQ from the backend
	QueueSize  int // descriptors per virtqueue, a power of two; default 256
	MrgRxbuf   bool
	EventIdx   bool
	// PackedRing asks for packed virtqueues (VIRTIO_F_RING_PACKED), and
	// with it InOrder for VIRTIO_F_IN_ORDER; split rings if not offered.
	PackedRing bool
	InOrder    bool
	RxBufSize  int // bytes per rx buffer including the net header; default 2048
	TxBufSize  int // bytes per tx buffer including the net header; default 2048, more for MTU
	// MTU is the largest IP packet the guest sends (and answers pings
	// of): it sizes the tx buffers when TxBufSize is 0. Default 1500.
	MTU        int
	MemRegions int // memfd regions in the memory table, 1..8; default 1
	// HugePages puts the guest's memory on 2 MiB huge pages (memfd with
	// MFD_HUGETLB), as QEMU's hugetlbfs and memfd hugetlb backends do and
	// vhost-user deployments mostly run; it needs free huge pages
	// (vm.nr_hugepages), one per region at least.
	HugePages bool

	// Reconnect redials after the backend goes away (client mode). In
	// server mode the guest always waits for the backend to come back.
	Reconnect         bool
	ReconnectInterval time.Duration // default 200ms
	HandshakeTimeout  time.Duration // per message; default 5s
	// BusyPoll never sleeps on the call fds (lowest latency, one core).
	BusyPoll bool
	// NoTxKick never kicks the transmit rings, whatever the device asks:
	// a misbehaving or poll-mode guest, for tests of the backend's sweep.
	NoTxKick bool

	// OnFrame, if set, sees every received frame from the rx loop; the
	// slice is valid only during the call.
	OnFrame func(queue int, frame []byte)
	Logger  *slog.Logger
}

func (c *Config) setDefaults() error {
	if len(c.MAC) != 6 {
		return fmt.Errorf("guest config: MAC %q is not a 6-byte address", c.MAC)
	}
	if c.IP.IsValid() && !c.IP.Is4() {
		return fmt.Errorf("guest config: IP %v is not IPv4", c.IP)
	}
	if c.QueuePairs == 0 {
		c.QueuePairs = 1
	}
	if c.QueuePairs < 1 || c.QueuePairs > 128 {
		return fmt.Errorf("guest config: %d queue pairs, want 1..128", c.QueuePairs)
	}
	if c.QueueSize == 0 {
		c.QueueSize = 256
	}
	if c.QueueSize < 2 || c.QueueSize > virtio.MaxQueueSize || c.QueueSize&(c.QueueSize-1) != 0 {
		return fmt.Errorf("guest config: queue size %d is not a power of two in 2..%d", c.QueueSize, virtio.MaxQueueSize)
	}
	if c.RxBufSize == 0 {
		c.RxBufSize = 2048
		if !c.MrgRxbuf { // a whole frame per buffer
			c.RxBufSize = max(2048, virtio.NetHdrLen+14+c.MTU)
		}
	}
	if c.MTU < 0 || c.MTU > 65535-14 {
		return fmt.Errorf("guest config: MTU %d out of range", c.MTU)
	}
	if c.TxBufSize == 0 {
		c.TxBufSize = max(2048, virtio.NetHdrLen+14+c.MTU)
	}
	if c.RxBufSize > 65536 || c.TxBufSize > 65536+virtio.NetHdrLen {
		return fmt.Errorf("guest config: buffers of %d/%d bytes too large", c.RxBufSize, c.TxBufSize)
	}
	if c.MemRegions == 0 {
		c.MemRegions = 1
	}
	if c.MemRegions < 1 || c.MemRegions > vhostuser.MaxMemRegions {
		return fmt.Errorf("guest config: %d memory regions, want 1..%d", c.MemRegions, vhostuser.MaxMemRegions)
	}
	if c.ReconnectInterval == 0 {
		c.ReconnectInterval = 200 * time.Millisecond
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Guest is one virtio-net device driven over vhost-user.
type Guest struct {
	cfg  Config
	log  *slog.Logger
	path string
	ln   *net.UnixListener // server mode
	resp responder

	dev atomic.Pointer[device]

	mu      sync.Mutex // running, closed
	running bool
	closed  bool

	statsMu sync.Mutex // streams, qstats snapshots
	streams streamTable

	rxFrames, rxBytes, txFrames, txBytes, rxDropped, txRingFull    atomic.Uint64
	arpReplies, icmpReplies, kicks, wakeups, connects, disconnects atomic.Uint64
	qrx, qtx                                                       []atomic.Uint64

	lastFeatures atomic.Uint64
}

func newGuest(path string, cfg Config) (*Guest, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &Guest{
		cfg: cfg, path: path, log: cfg.Logger.With("socket", path),
		resp: newResponder(cfg.MAC, cfg.IP),
		qrx:  make([]atomic.Uint64, cfg.QueuePairs), qtx: make([]atomic.Uint64, cfg.QueuePairs),
	}, nil
}

// Dial connects to a backend listening on path (client mode) and sets the
// device up. Call Run to move frames.
func Dial(path string, cfg Config) (*Guest, error) {
	g, err := newGuest(path, cfg)
	if err != nil {
		return nil, err
	}
	d, err := g.dial()
	if err != nil {
		return nil, err
	}
	g.dev.Store(d)
	return g, nil
}

// Listen listens on path (server mode); Run accepts the backend, and
// accepts it again after it goes away.
func Listen(path string, cfg Config) (*Guest, error) {
	g, err := newGuest(path, cfg)
	if err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	g.ln = ln
	return g, nil
}

func (g *Guest) dial() (*device, error) {
	c, err := net.DialTimeout("unix", g.path, g.cfg.HandshakeTimeout)
	if err != nil {
		return nil, fmt.Errorf("connect to vhost-user backend %s: %w", g.path, err)
	}
	return g.setup(c.(*net.UnixConn))
}

func (g *Guest) accept(ctx context.Context) (*device, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := g.ln.SetDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			return nil, fmt.Errorf("accept on %s: %w", g.path, err)
		}
		c, err := g.ln.AcceptUnix()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return nil, fmt.Errorf("accept on %s: %w", g.path, err)
		}
		d, err := g.setup(c)
		if err != nil {
			g.log.Warn("vhost-user handshake failed; waiting for the backend again", "err", err)
			continue
		}
		return d, nil
	}
}

// Connected reports whether a backend is attached and set up.
func (g *Guest) Connected() bool { return g.dev.Load() != nil }

// WaitConnected waits until a backend is attached (Run does the accepting
// in server mode and the redialing in client mode).
func (g *Guest) WaitConnected(ctx context.Context) error {
	for !g.Connected() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for vhost-user backend on %s: %w", g.path, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// Features returns the virtio features negotiated with the current (or
// last) backend.
func (g *Guest) Features() uint64 { return g.lastFeatures.Load() }

// Run drives the device until ctx ends (nil), the guest is closed (nil) or
// the backend goes away without a way back (ErrDisconnected, or the
// protocol error that broke the device).
func (g *Guest) Run(ctx context.Context) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return ErrClosed
	}
	if g.running {
		g.mu.Unlock()
		return errors.New("guest: Run called twice")
	}
	g.running = true
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.running = false
		g.mu.Unlock()
	}()
	for {
		d := g.dev.Load()
		if d == nil {
			var err error
			d, err = g.reconnect(ctx)
			if err != nil {
				if ctx.Err() != nil || g.isClosed() {
					return nil
				}
				return err
			}
			g.dev.Store(d)
		}
		err := g.poll(ctx, d)
		g.teardown(d)
		if ctx.Err() != nil || g.isClosed() {
			return nil
		}
		g.disconnects.Add(1)
		g.log.Warn("vhost-user backend lost", "err", err)
		if g.ln == nil && !g.cfg.Reconnect {
			return err
		}
	}
}

func (g *Guest) reconnect(ctx context.Context) (*device, error) {
	if g.ln != nil {
		return g.accept(ctx)
	}
	if !g.cfg.Reconnect {
		return nil, ErrNotConnected
	}
	for {
		d, err := g.dial()
		if err == nil {
			return d, nil
		}
		g.log.Debug("redial failed", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(g.cfg.ReconnectInterval):
		}
		if g.isClosed() {
			return nil, ErrClosed
		}
	}
}

func (g *Guest) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// Close detaches from the backend and frees the guest memory. A running
// Run returns.
func (g *Guest) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	running := g.running
	g.mu.Unlock()
	if g.ln != nil {
		g.ln.Close()
	}
	if d := g.dev.Load(); d != nil {
		d.hangup()
		if !running {
			g.teardown(d)
		}
	}
	return nil
}

// spinFor is how long the poll loop busy-polls after its last frame
// before it sleeps on the call fds.
const spinFor = 50 * time.Microsecond

// rxBatch bounds the frames taken from one rx queue per round.
const rxBatch = 64

func (g *Guest) poll(ctx context.Context, d *device) error {
	lastWork := time.Now()
	for iter := 0; ; iter++ {
		if d.gone.Load() {
			// Our memory is still mapped: take what the device had
			// completed before it left.
			for range d.qps[0].rx.n {
				work := 0
				for _, qp := range d.qps {
					n, err := g.pollQueuePair(qp)
					if err != nil {
						return err
					}
					work += n
				}
				if work == 0 {
					break
				}
			}
			return ErrDisconnected
		}
		work := 0
		for _, qp := range d.qps {
			n, err := g.pollQueuePair(qp)
			if err != nil {
				return err
			}
			work += n
		}
		if iter%64 == 0 && ctx.Err() != nil {
			return nil // checked under load too, not only when idle
		}
		if work > 0 {
			lastWork = time.Now()
			continue
		}
		if g.cfg.BusyPoll || time.Since(lastWork) < spinFor {
			runtime.Gosched()
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		if err := g.sleep(d); err != nil {
			return err
		}
		lastWork = time.Now()
	}
}

// sleep enables call signals on the rx queues, looks once more, and waits
// on the call fds (and the hang-up fd) for at most 50ms.
func (g *Guest) sleep(d *device) error {
	pending := false
	for _, qp := range d.qps {
		qp.rx.enableInterrupts()
	}
	for _, qp := range d.qps {
		if qp.rx.usedIdx() != qp.rx.lastUsed {
			pending = true
		}
	}
	if !pending {
		n, err := unix.Poll(d.pollFDs, 50)
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("poll call fds: %w", err)
		}
		if n > 0 {
			g.wakeups.Add(1)
			var b [8]byte
			for _, p := range d.pollFDs {
				if p.Revents&unix.POLLIN != 0 {
					_, _ = unix.Read(int(p.Fd), b[:]) // eventfd: resets the counter
				}
			}
		}
	}
	for _, qp := range d.qps {
		qp.rx.disableInterrupts()
	}
	return nil
}

func (g *Guest) pollQueuePair(qp *queuePair) (int, error) {
	work := 0
	if qp.rx.usedIdx() != qp.rx.lastUsed {
		qp.now = pktgen.MonotonicNS()
		g.statsMu.Lock()
		frames, bytes, dropped, err := qp.rx.poll(rxBatch, qp.onFrame)
		g.statsMu.Unlock()
		if frames > 0 {
			g.rxFrames.Add(uint64(frames))
			g.rxBytes.Add(uint64(bytes))
			g.qrx[qp.index].Add(uint64(frames))
		}
		if dropped > 0 {
			g.rxDropped.Add(uint64(dropped))
		}
		work += frames + dropped
		if err != nil {
			return work, fmt.Errorf("queue pair %d rx: %w", qp.index, err)
		}
	}
	tx := qp.tx
	// lastUsed belongs to whoever holds mu (Send reclaims too): look at it
	// only under the lock.
	tx.mu.Lock()
	if qp.nreplies > 0 || tx.usedIdx() != tx.lastUsed {
		_, err := tx.reclaim()
		if err == nil && qp.nreplies > 0 {
			var sent, bytes int
			sent, bytes, err = tx.post(qp.replyFrames[:qp.nreplies])
			g.countTx(qp.index, sent, bytes)
			if sent < qp.nreplies {
				g.txRingFull.Add(uint64(qp.nreplies - sent))
			}
			qp.nreplies = 0
		}
		g.kicks.Add(tx.kicks)
		tx.kicks = 0
		if err != nil {
			tx.mu.Unlock()
			return work, fmt.Errorf("queue pair %d tx: %w", qp.index, err)
		}
	}
	tx.mu.Unlock()
	g.kicks.Add(qp.rx.kicks)
	qp.rx.kicks = 0
	return work, nil
}

// rxFrame handles one received frame on the rx loop (statsMu held).
func (g *Guest) rxFrame(qp *queuePair, frame []byte) {
	if g.cfg.OnFrame != nil {
		// The hook may call Stats: it runs without the stats lock.
		g.statsMu.Unlock()
		g.cfg.OnFrame(qp.index, frame)
		g.statsMu.Lock()
	}
	if qp.nreplies < len(qp.replyBufs) {
		if n, kind := g.resp.reply(frame, qp.replyBufs[qp.nreplies]); n > 0 {
			qp.replyFrames[qp.nreplies] = qp.replyBufs[qp.nreplies][:n]
			qp.nreplies++
			if kind == replyARP {
				g.arpReplies.Add(1)
			} else {
				g.icmpReplies.Add(1)
			}
			return
		}
	}
	g.streams.frame(frame, qp.now)
}

func (g *Guest) countTx(q, frames, bytes int) {
	if frames > 0 {
		g.txFrames.Add(uint64(frames))
		g.txBytes.Add(uint64(bytes))
		g.qtx[q].Add(uint64(frames))
	}
}

// Send queues one frame on queue pair 0. It returns ErrRingFull when no
// tx buffer is free; the frame is copied, so it may be reused at once.
func (g *Guest) Send(frame []byte) error {
	one := [1][]byte{frame}
	n, err := g.SendBatch(0, one[:])
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrRingFull
	}
	return nil
}

// SendBatch queues as many frames as fit on a queue pair's tx ring with
// one publish and at most one kick, and returns how many it queued.
func (g *Guest) SendBatch(queue int, frames [][]byte) (int, error) {
	d := g.dev.Load()
	if d == nil {
		return 0, ErrNotConnected
	}
	if queue < 0 || queue >= len(d.qps) {
		return 0, fmt.Errorf("send: queue pair %d of %d", queue, len(d.qps))
	}
	tx := d.qps[queue].tx
	tx.mu.Lock()
	if tx.closed {
		tx.mu.Unlock()
		return 0, ErrNotConnected
	}
	sent, bytes, err := tx.post(frames)
	g.kicks.Add(tx.kicks)
	tx.kicks = 0
	tx.mu.Unlock()
	g.countTx(queue, sent, bytes)
	if sent == 0 && len(frames) > 0 && err == nil {
		g.txRingFull.Add(1)
	}
	if err != nil {
		return sent, fmt.Errorf("send on queue pair %d: %w", queue, err)
	}
	return sent, nil
}

// txIdle reports whether every tx buffer has come back from the device.
func (g *Guest) txIdle() bool {
	d := g.dev.Load()
	if d == nil {
		return false
	}
	for _, qp := range d.qps {
		qp.tx.mu.Lock()
		_, err := qp.tx.reclaim()
		idle := err == nil && !qp.tx.closed && len(qp.tx.free) == qp.tx.n
		qp.tx.mu.Unlock()
		if !idle {
			return false
		}
	}
	return true
}

// Flush waits until the device has consumed every frame queued so far.
func (g *Guest) Flush(ctx context.Context) error {
	for !g.txIdle() {
		if g.dev.Load() == nil {
			return ErrNotConnected
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("flush tx: %w", ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// Stats returns a snapshot of the counters.
func (g *Guest) Stats() Stats {
	s := Stats{
		RxFrames: g.rxFrames.Load(), RxBytes: g.rxBytes.Load(),
		TxFrames: g.txFrames.Load(), TxBytes: g.txBytes.Load(),
		RxDropped: g.rxDropped.Load(), TxRingFull: g.txRingFull.Load(),
		ARPReplies: g.arpReplies.Load(), ICMPReplies: g.icmpReplies.Load(),
		Kicks: g.kicks.Load(), Wakeups: g.wakeups.Load(),
		Connects: g.connects.Load(), Disconnects: g.disconnects.Load(),
		Features: g.lastFeatures.Load(),
	}
	for i := range g.qrx {
		s.Queues = append(s.Queues, QueueStats{RxFrames: g.qrx[i].Load(), TxFrames: g.qtx[i].Load()})
	}
	g.statsMu.Lock()
	s.Unstamped = g.streams.unstamped
	s.Streams = g.streams.snapshot()
	g.statsMu.Unlock()
	return s
}
