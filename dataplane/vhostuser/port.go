package vhostuser

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/ratelog"
)

// Handler receives a port's queues. All calls come from the port's
// control goroutine, except DeviceBroken, which may come from the worker
// that found the fault. None may call back into the port's Close.
type Handler interface {
	// QueueReady hands q to its worker: memory mapped, addresses set,
	// kick received, ring enabled. From now on only that worker touches
	// q's data path.
	QueueReady(q *Queue)
	// QueueStopped takes q back. It must return only once the worker no
	// longer touches q, after a final q.Flush (the port then unmaps
	// memory, answers GET_VRING_BASE or closes fds).
	QueueStopped(q *Queue)
	// DeviceBroken reports that the guest broke the protocol or its
	// rings; the port's queues refuse further work until the front-end
	// resets the device. Must not block.
	DeviceBroken(p *Port, reason string)
}

// Announcer is an optional interface of a Handler: the front-end asked
// the back-end to announce the guest's MAC to the network (SEND_RARP,
// sent by QEMU after a migration for a guest without GUEST_ANNOUNCE).
// It is called from the port's control goroutine; mac is a copy.
type Announcer interface {
	Announce(p *Port, mac net.HardwareAddr) error
}

// Disconnecter is an optional interface of a Handler: the front-end's
// connection ended (its queues were stopped first).
type Disconnecter interface {
	Disconnected(p *Port)
}

// announceEvery bounds the announcements a front-end can ask for: QEMU
// sends one per announce round (50 ms apart and more); a guest asking
// faster could flood the wire with broadcasts.
const announceEvery = 20 * time.Millisecond

// Config configures a port.
type Config struct {
	MAC        net.HardwareAddr // the guest's MAC in config space (VIRTIO_NET_F_MAC)
	QueuePairs int              // maximum queue pairs; 0 means 1
	MTU        int              // advertised MTU (VIRTIO_NET_F_MTU); 0: not advertised
	// Features masks the virtio features offered; 0 means DefaultFeatures.
	Features uint64
	Handler  Handler
	Logger   *slog.Logger
	// Client-mode reconnect backoff; 0 means 50ms and 2s.
	ReconnectMin, ReconnectMax time.Duration

	// Name is the VM's name, for errors ("VM %q: ...").
	Name string
	// MaxMemory bounds the guest memory a SET_MEM_TABLE may map, in bytes
	// (the sum of its regions); 0 means no limit.
	MaxMemory uint64
	// Server mode: the listening socket's owner and group (-1 leaves
	// them as created: vmqd's own; an id equal to the current one is not
	// applied) and permissions (0 means 0600), all set before listen(2),
	// so no front-end can connect before they hold. A missing directory
	// is created 0750 (group SocketGroup, if set).
	SocketOwner, SocketGroup int
	SocketMode               os.FileMode
	// AllowedUIDs, if non-nil, lists the uids a front-end process may
	// run as (SO_PEERCRED, both modes); any other peer is disconnected at
	// once and counted in PortState.PeerRejected.
	AllowedUIDs []uint32
	// MessageTimeout bounds a message once its first byte has arrived
	// (the rest must follow within it) and the write of each reply; a
	// front-end that is slower loses its connection (PortState.Timeouts).
	// Waiting for the next message has no deadline. 0 means 5s.
	MessageTimeout time.Duration
	// NoPackedRing and NoInOrder withdraw VIRTIO_F_RING_PACKED and
	// VIRTIO_F_IN_ORDER from the features offered (both are in
	// DefaultFeatures).
	NoPackedRing, NoInOrder bool
	// RingStarts paces the front-end's ring starts (each start, and the
	// stop before it, is a command its worker applies between rounds);
	// the zero value means DefaultRingStarts, a negative rate no limit.
	RingStarts Pace
	// Messages paces the front-end's messages and connections (the port's
	// goroutine runs on the cores vmqd's workers run on); the zero value
	// means DefaultMessages, a negative rate no limit.
	Messages Pace
}

// Pace is a token bucket: Burst at once, then PerSecond. What goes
// beyond it waits (the front-end's message is read, or answered, later);
// it is never refused. Tokens last across connections: a reconnect is no
// way around it.
type Pace struct {
	PerSecond float64
	Burst     int
}

// DefaultRingStarts lets a front-end start 64 rings at once (a device of
// 16 queue pairs started twice, as a boot or a migration does) and 64 a
// second after that. A guest that stopped and started its two rings as
// fast as vmqd answered (about 3200 starts a second) kept the worker it
// shares with other VMs 55-60% busy, against 10% before; paced, 13-19%.
var DefaultRingStarts = Pace{PerSecond: 64, Burst: 64}

// DefaultMessages lets a front-end send 1024 messages at once (or 16 per
// virtqueue of a bigger device: a start takes about 8 per ring) and 1000
// a second after that. GET_FEATURES as fast as vmqd answered (11000 a
// second) took 52% of a CPU from vmqd and tripled the busy time of the
// worker on that CPU.
var DefaultMessages = Pace{PerSecond: 1000, Burst: 1024}

// DefaultFeatures are the virtio features a port offers by default.
const DefaultFeatures = virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.RingFEventIdx |
	virtio.RingFIndirectDesc | virtio.NetFMQ | virtio.NetFMAC | virtio.NetFStatus |
	virtio.FProtocolFeatures | FeatureLogAll | virtio.FRingPacked | virtio.FInOrder

// supportedFeatures bounds Config.Features: what the back-end implements.
// The offloads (virtio.OffloadFeatures) are only honoured by a user of
// PushHdr and PopHdr, so they are not in DefaultFeatures.
const supportedFeatures = DefaultFeatures | virtio.NetFMTU | virtio.OffloadFeatures

// offeredProtocol are the protocol features the back-end implements.
const offeredProtocol = ProtocolFMQ | ProtocolFReplyAck | ProtocolFMTU | ProtocolFStatus | ProtocolFConfig |
	ProtocolFLogShmfd | ProtocolFRARP

// DefaultMessageTimeout is Config.MessageTimeout's default.
const DefaultMessageTimeout = 5 * time.Second

// MaxQueuePairs bounds Config.QueuePairs (the vring index is one byte).
const MaxQueuePairs = 128

// PortState is a port's state for metrics and the API.
type PortState struct {
	Path             string
	Mode             string // "server" or "client"
	Connected        bool
	Features         uint64 // negotiated virtio features
	ProtocolFeatures uint64
	Status           uint8 // virtio device status byte
	QueuePairs       int   // configured maximum
	RingSizes        []int // per virtqueue, 0 when not set
	Running          []bool
	Kicks, Calls     uint64
	Broken           string // why the device is broken, "" if not
	BrokenCount      uint64 // times the device was marked broken
	Connects         uint64 // connections accepted or made
	PeerRejected     uint64 // connections refused: peer uid not in AllowedUIDs
	Timeouts         uint64 // connections closed for a slow message or an unread reply
	AnnouncesDropped uint64 // SEND_RARPs dropped: sooner than announceEvery after the last
	RingStarts       uint64 // rings handed to the worker
	RingStartsPaced  uint64 // of those, starts that waited for Config.RingStarts
	MessagesPaced    uint64 // messages and connections that waited for Config.Messages
}

// vringConfig is what the front-end told us about one vring.
type vringConfig struct {
	num      uint32
	addr     VringAddr
	addrSet  bool
	base     uint16
	kickFD   int
	kickSet  bool
	callFD   int
	errFD    int
	enabled  bool
	running  bool // handed to the handler
	brokenOn bool // ring layout rejected
	// stoppedUsed is used.idx as the ring stopped (GET_VRING_BASE),
	// checked again when the device resets: only the device writes it.
	stoppedUsed  uint16
	stoppedCheck bool
	// ranSinceCall: the ring ran since its call fd was last set, so the
	// worker may have called an fd the front-end has stopped reading
	// (see SET_VRING_CALL). Cleared once GET_VRING_BASE delivered the
	// last call.
	ranSinceCall bool
}

// device is the per-connection state, owned by the control goroutine.
type device struct {
	owner    bool
	features uint64
	protocol uint64
	status   uint8
	mtu      uint64
	mem      *memTable
	log      *dirtyLog // SET_LOG_BASE; used while features have FeatureLogAll
	logFD    int       // SET_LOG_FD, kept until replaced or reset; never written
}

// Port is one vhost-user device: a socket, its front-end connection and
// its virtqueues.
type Port struct {
	path    string
	mode    string
	cfg     Config
	log     *slog.Logger
	h       Handler
	offered uint64
	queues  []*Queue
	nt      *notifier // writes the queues' call eventfds

	dev        device
	brokenFlag atomic.Bool
	conn       *net.UnixConn // control goroutine; set under mu for Close

	mu       sync.Mutex
	state    PortState
	closing  chan struct{}
	done     chan struct{}
	ln       *net.UnixListener
	closeErr error
	once     sync.Once

	// Rate limits of the log lines a front-end causes: its comings and
	// goings, its faults (apart, so a reconnect does not hide why), and
	// each kind of set-up it may repeat at will (a dirty log, a ring
	// started or stopped out of step: one does not hide another).
	connLog, faultLog                     ratelog.Limiter
	logBaseLog, ringStartLog, ringStopLog ratelog.Limiter
	lastAnnounce                          time.Time // control goroutine
	starts, msgs                          bucket    // control goroutine: Config.RingStarts, Config.Messages

	rbuf [HeaderLen + MaxPayloadLen]byte
	oob  []byte
	regs [MaxMemRegions]MemRegion
}

type nopHandler struct{}

func (nopHandler) QueueReady(*Queue)          {}
func (nopHandler) QueueStopped(*Queue)        {}
func (nopHandler) DeviceBroken(*Port, string) {}

func newPort(path, mode string, cfg Config) (*Port, error) {
	vm := vmPrefix(cfg.Name)
	if cfg.QueuePairs == 0 {
		cfg.QueuePairs = 1
	}
	if cfg.QueuePairs < 0 || cfg.QueuePairs > MaxQueuePairs {
		return nil, fmt.Errorf("%svhost-user port %s: %d queue pairs, want 1..%d", vm, path, cfg.QueuePairs, MaxQueuePairs)
	}
	if cfg.Features == 0 {
		cfg.Features = DefaultFeatures
		if cfg.MTU > 0 {
			cfg.Features |= virtio.NetFMTU
		}
	}
	if extra := cfg.Features &^ supportedFeatures; extra != 0 {
		return nil, fmt.Errorf("%svhost-user port %s: unsupported features %#x", vm, path, extra)
	}
	if cfg.MAC != nil && len(cfg.MAC) != 6 {
		return nil, fmt.Errorf("%svhost-user port %s: MAC %v is not 6 bytes", vm, path, cfg.MAC)
	}
	if cfg.MAC == nil {
		cfg.Features &^= virtio.NetFMAC
	}
	if cfg.MTU < 0 || cfg.MTU > 65535 {
		return nil, fmt.Errorf("%svhost-user port %s: MTU %d", vm, path, cfg.MTU)
	}
	if cfg.MTU == 0 {
		cfg.Features &^= virtio.NetFMTU
	}
	if cfg.QueuePairs == 1 {
		cfg.Features &^= virtio.NetFMQ
	}
	if cfg.NoPackedRing {
		cfg.Features &^= virtio.FRingPacked
	}
	if cfg.NoInOrder {
		cfg.Features &^= virtio.FInOrder
	}
	if cfg.MessageTimeout <= 0 {
		cfg.MessageTimeout = DefaultMessageTimeout
	}
	if cfg.ReconnectMin <= 0 {
		cfg.ReconnectMin = 50 * time.Millisecond
	}
	if cfg.ReconnectMax < cfg.ReconnectMin {
		cfg.ReconnectMax = max(2*time.Second, cfg.ReconnectMin)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	h := cfg.Handler
	if h == nil {
		h = nopHandler{}
	}
	p := &Port{
		path: path, mode: mode, cfg: cfg, h: h, offered: cfg.Features,
		log:     log.With("port", path, "mode", mode),
		closing: make(chan struct{}), done: make(chan struct{}),
		oob: make([]byte, unix.CmsgSpace(4*MaxMemRegions)),
	}
	for i := 0; i < 2*cfg.QueuePairs; i++ {
		q := &Queue{port: p, index: i, kickFD: -1, callFD: -1}
		q.cfg = vringConfig{kickFD: -1, callFD: -1, errFD: -1}
		p.queues = append(p.queues, q)
	}
	nt, err := newNotifier(p.queues, p.log)
	if err != nil {
		return nil, fmt.Errorf("%svhost-user port %s: %w", vm, path, err)
	}
	p.nt = nt
	for _, q := range p.queues {
		q.nt = p.nt
	}
	p.state = PortState{Path: path, Mode: mode, QueuePairs: cfg.QueuePairs}
	p.dev.logFD = -1
	return p, nil
}

// Listen creates a server-mode port: vmq listens on path and serves one
// front-end at a time, accepting the next after a disconnect. A stale
// socket file nobody listens on is replaced.
func Listen(path string, cfg Config) (*Port, error) {
	p, err := newPort(path, "server", cfg)
	if err != nil {
		return nil, err
	}
	listening := false
	defer func() {
		if !listening {
			p.nt.close()
		}
	}()
	vm := vmPrefix(cfg.Name)
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%svhost-user listen %s: exists and is not a socket", vm, path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%svhost-user listen %s: socket in use", vm, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("%svhost-user listen %s: remove stale socket: %w", vm, path, err)
		}
	}
	ln, err := listenUnix(path, cfg)
	if err != nil {
		return nil, fmt.Errorf("%svhost-user listen %s: %w", vm, path, err)
	}
	p.ln = ln
	listening = true
	go p.acceptLoop()
	return p, nil
}

// listenUnix binds a unix socket at path, sets its owner, group and mode,
// and only then listens: until listen(2) a connect is refused, so nobody
// reaches the socket with permissions it should not have.
func listenUnix(path string, cfg Config) (*net.UnixListener, error) {
	if err := makeSocketDir(filepath.Dir(path), cfg.SocketGroup); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), path) // closes fd
	defer f.Close()
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, fmt.Errorf("bind: %w", err)
	}
	ln, err := func() (net.Listener, error) {
		// Mode first: once the socket is another user's, changing its
		// mode would need CAP_FOWNER, which vmqd does not keep.
		mode := cfg.SocketMode.Perm()
		if mode == 0 {
			mode = 0o600
		}
		if err := os.Chmod(path, mode); err != nil {
			return nil, fmt.Errorf("socket mode: %w", err)
		}
		if err := setOwner(path, cfg.SocketOwner, cfg.SocketGroup); err != nil {
			return nil, err
		}
		if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
			return nil, fmt.Errorf("listen: %w", err)
		}
		return net.FileListener(f) // a dup: f's fd is closed on return
	}()
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(true)
	return ul, nil
}

// makeSocketDir creates a missing socket directory 0750 (whatever the
// umask), with group gid if gid >= 0.
func makeSocketDir(dir string, gid int) error {
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		return nil // there (or not ours to judge): bind reports problems
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("create socket directory: %w", err)
	}
	if err := os.Chmod(dir, 0o750); err != nil {
		return fmt.Errorf("socket directory mode: %w", err)
	}
	if err := setOwner(dir, -1, gid); err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	return nil
}

// setOwner changes path's owner and group where uid or gid is >= 0 and
// differs from the current one (vmqd runs without CAP_CHOWN by default:
// a no-op chown must not need it).
func setOwner(path string, uid, gid int) error {
	if uid < 0 && gid < 0 {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if uid == int(st.Uid) {
		uid = -1
	}
	if gid == int(st.Gid) {
		gid = -1
	}
	if uid < 0 && gid < 0 {
		return nil
	}
	if err := os.Lchown(path, uid, gid); err != nil {
		return fmt.Errorf("owner %d group %d: %w", uid, gid, err)
	}
	return nil
}

// vmPrefix is the "VM %q: " prefix of errors, or "" without a name.
func vmPrefix(name string) string {
	if name == "" {
		return ""
	}
	return fmt.Sprintf("VM %q: ", name)
}

// Dial creates a client-mode port: vmq connects to the front-end's
// socket at path and reconnects with backoff whenever the connection
// fails or ends, until Close. It returns without waiting for the first
// connection.
func Dial(path string, cfg Config) (*Port, error) {
	p, err := newPort(path, "client", cfg)
	if err != nil {
		return nil, err
	}
	go p.dialLoop()
	return p, nil
}

// Close stops the port: the connection is closed, every running queue is
// taken back through Handler.QueueStopped, memory is unmapped.
func (p *Port) Close() error {
	p.once.Do(func() {
		close(p.closing)
		p.mu.Lock()
		if p.ln != nil {
			p.closeErr = p.ln.Close()
		}
		if p.conn != nil {
			p.conn.Close()
		}
		p.mu.Unlock()
	})
	<-p.done
	return p.closeErr
}

// Path is the socket path.
func (p *Port) Path() string { return p.path }

// Queues returns the port's virtqueues (2 per queue pair, RX first).
func (p *Port) Queues() []*Queue { return p.queues }

// State returns a snapshot of the port for metrics. Safe from any goroutine.
func (p *Port) State() PortState {
	p.mu.Lock()
	s := p.state
	s.RingSizes = append([]int(nil), p.state.RingSizes...)
	s.Running = append([]bool(nil), p.state.Running...)
	p.mu.Unlock()
	if p.brokenFlag.Load() {
		s.Status |= statusNeedsReset
	}
	for _, q := range p.queues {
		st := q.Stats()
		s.Kicks += st.Kicks
		s.Calls += st.Calls
	}
	return s
}

func (p *Port) isClosing() bool {
	select {
	case <-p.closing:
		return true
	default:
		return false
	}
}

func (p *Port) acceptLoop() {
	defer close(p.done)
	defer p.nt.close() // every session ended: no queue runs, no worker signals
	guardFaults()
	for {
		c, err := p.ln.AcceptUnix()
		if err != nil {
			if p.isClosing() {
				return
			}
			p.log.Error("vhost-user accept failed", "err", err)
			select {
			case <-p.closing:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		_ = p.serveConn(c) // a refused peer is counted and logged; accept the next
	}
}

func (p *Port) dialLoop() {
	defer close(p.done)
	defer p.nt.close() // every session ended: no queue runs, no worker signals
	guardFaults()
	backoff := p.cfg.ReconnectMin
	// wait sleeps out the backoff and doubles it; false: the port closed.
	wait := func() bool {
		select {
		case <-p.closing:
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, p.cfg.ReconnectMax)
		return true
	}
	for !p.isClosing() {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: p.path, Net: "unix"})
		if err != nil {
			p.log.Debug("vhost-user connect failed", "err", err, "retry_in", backoff)
			if !wait() {
				return
			}
			continue
		}
		if err := p.serveConn(c); err != nil {
			// A rejected peer: retry no faster than a failed connect.
			if !wait() {
				return
			}
			continue
		}
		backoff = p.cfg.ReconnectMin
	}
}

// serveConn runs one front-end session to its end. An error: the peer
// was refused before the session began.
func (p *Port) serveConn(c *net.UnixConn) error {
	if err := p.checkPeer(c); err != nil {
		c.Close()
		p.mu.Lock()
		p.state.PeerRejected++
		p.mu.Unlock()
		p.logGuest(&p.faultLog, slog.LevelWarn, "vhost-user front-end rejected", "err", err)
		return err
	}
	p.mu.Lock()
	if p.isClosing() {
		p.mu.Unlock()
		c.Close()
		return nil
	}
	p.conn = c
	p.state.Connected = true
	p.state.Connects++
	p.mu.Unlock()
	p.logGuest(&p.connLog, slog.LevelInfo, "vhost-user front-end connected")

	for {
		var err error
		if !p.paceMessage() {
			err = errEOF // closing
		} else {
			err = p.serveOne(c)
		}
		if err != nil {
			switch {
			case errors.Is(err, errEOF) || p.isClosing():
				p.logGuest(&p.connLog, slog.LevelInfo, "vhost-user front-end disconnected")
			case errors.Is(err, errTimeout):
				p.mu.Lock()
				p.state.Timeouts++
				p.mu.Unlock()
				p.logGuest(&p.faultLog, slog.LevelWarn, "vhost-user front-end too slow: connection closed",
					"err", err, "timeout", p.cfg.MessageTimeout)
			default:
				p.logGuest(&p.faultLog, slog.LevelError, "vhost-user connection closed", "err", err)
			}
			break
		}
	}
	p.resetDevice()
	p.mu.Lock()
	p.conn = nil
	p.state.Connected = false
	p.mu.Unlock()
	c.Close()
	p.publishState()
	if d, ok := p.h.(Disconnecter); ok && !p.isClosing() {
		d.Disconnected(p)
	}
	return nil
}

// checkPeer refuses a front-end whose uid (SO_PEERCRED: the connecting
// process in server mode, the listening one in client mode) is not in
// Config.AllowedUIDs.
func (p *Port) checkPeer(c *net.UnixConn) error {
	if p.cfg.AllowedUIDs == nil {
		return nil
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("%speer credentials: %w", vmPrefix(p.cfg.Name), err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		cerr = err
	}
	if cerr != nil {
		return fmt.Errorf("%speer credentials: %w", vmPrefix(p.cfg.Name), cerr)
	}
	if !slices.Contains(p.cfg.AllowedUIDs, cred.Uid) {
		return fmt.Errorf("%speer uid %d (pid %d) not allowed", vmPrefix(p.cfg.Name), cred.Uid, cred.Pid)
	}
	return nil
}

// guestLogEvery bounds the log lines a front-end can cause: at most one
// per port per interval of each kind (connects and disconnects; timeouts,
// rejected peers, protocol errors and a broken device), so a guest that
// reconnects or breaks its rings in a loop cannot fill the host's log.
const guestLogEvery = 10 * time.Second

// logGuest logs a line a front-end caused, at most one per guestLogEvery
// of its kind; the next line says how many were left out. Safe from any
// goroutine.
func (p *Port) logGuest(l *ratelog.Limiter, level slog.Level, msg string, args ...any) {
	l.Log(p.log, guestLogEvery, level, msg, args...)
}

// announce passes a SEND_RARP to the handler, rate-limited: one asked
// for too soon after the last is dropped, not an error. An error closes
// the connection (SEND_RARP has no reply), and QEMU may well send two at
// once: a destination started paused (-S) announces when it resumes and
// again from its announce timer. Closing there left the migrated guest
// without a network.
func (p *Port) announce(mac net.HardwareAddr) error {
	a, ok := p.h.(Announcer)
	if !ok {
		return errors.New("announce: not supported by the handler")
	}
	now := time.Now()
	if now.Sub(p.lastAnnounce) < announceEvery {
		p.mu.Lock()
		p.state.AnnouncesDropped++
		p.mu.Unlock()
		return nil
	}
	p.lastAnnounce = now
	if err := a.Announce(p, slices.Clone(mac)); err != nil {
		return fmt.Errorf("announce %v: %w", mac, err)
	}
	return nil
}

// publishState copies the control state into p.state for State().
func (p *Port) publishState() {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := &p.state
	s.Features, s.ProtocolFeatures, s.Status = p.dev.features, p.dev.protocol, p.dev.status
	if p.brokenFlag.Load() {
		s.Status |= statusNeedsReset
	}
	s.RingSizes = s.RingSizes[:0]
	s.Running = s.Running[:0]
	for _, q := range p.queues {
		s.RingSizes = append(s.RingSizes, int(q.cfg.num))
		s.Running = append(s.Running, q.cfg.running)
	}
}

const statusNeedsReset = 0x40 // VIRTIO_CONFIG_S_NEEDS_RESET

// MarkBroken marks the device broken from outside the queue API (e.g. a
// worker that found a guest frame it cannot accept). Safe from any
// goroutine; the first reason wins.
func (p *Port) MarkBroken(reason string) { p.markBroken(reason) }

// markBroken records the first fault; later ones add nothing.
func (p *Port) markBroken(reason string) {
	if !p.brokenFlag.CompareAndSwap(false, true) {
		return
	}
	for _, q := range p.queues { // fixed since NewPort
		q.portBroken.Store(true)
	}
	p.logGuest(&p.faultLog, slog.LevelError, "vhost-user device broken", "reason", reason)
	p.mu.Lock()
	p.state.Broken = reason
	p.state.BrokenCount++
	p.mu.Unlock()
	p.h.DeviceBroken(p, reason)
}

// stopQueue takes a running queue back from its worker and saves where
// it stopped.
func (p *Port) stopQueue(q *Queue) {
	if !q.cfg.running {
		return
	}
	p.h.QueueStopped(q)
	q.cfg.running = false
	q.cfg.base = q.vringBase()
	if q.dirty { // counters the worker did not publish (drops only)
		q.dirty = false
		q.publishStats()
	}
}

func (p *Port) stopAll() {
	for _, q := range p.queues {
		p.stopQueue(q)
	}
}

// refresh hands every queue that became ready to the handler.
func (p *Port) refresh() {
	p.nt.start()
	if p.brokenFlag.Load() || p.dev.mem == nil {
		return
	}
	for _, q := range p.queues {
		c := &q.cfg
		enabled := c.enabled || p.dev.features&virtio.FProtocolFeatures == 0
		if c.running || c.brokenOn || c.num == 0 || !c.addrSet || !c.kickSet || !enabled {
			continue
		}
		if !p.paceRingStart() {
			return // closing
		}
		if err := q.ringLayout(p.dev.mem, p.dev.features, c.num, c.addr.DescUser, c.addr.AvailUser, c.addr.UsedUser); err != nil {
			c.brokenOn = true
			p.markBroken(fmt.Sprintf("queue %d: %v", q.index, err))
			return
		}
		q.bufLog, q.usedLog, q.usedLogAddr = nil, nil, 0
		if p.dev.features&FeatureLogAll != 0 && p.dev.log != nil {
			q.bufLog = p.dev.log
			if c.addr.Flags&VringFlagLog != 0 {
				q.usedLog, q.usedLogAddr = p.dev.log, c.addr.Log
			}
		}
		if err := startQueue(q, c.base); err != nil {
			c.brokenOn = true
			p.markBroken(fmt.Sprintf("queue %d: %v", q.index, err))
			return
		}
		if q.vringBase() != c.base { // packed: slot and wrap bit, as the base is
			// The front-end's base and the ring in memory disagree (buffers
			// in flight when the last back-end stopped, or a ring state
			// that did not migrate whole): resumed from used.idx.
			p.logGuest(&p.ringStartLog, slog.LevelWarn, "vhost-user ring start: used.idx differs from the base", "queue", q.index, "base", c.base, "used_idx", q.lastAvail)
		}
		c.stoppedCheck, c.ranSinceCall = false, true
		q.kickFD = c.kickFD // q.callFD is set with the notifier stopped (SET_VRING_CALL)
		c.running = true
		p.log.Debug("vhost-user queue ready", "queue", q.index, "size", c.num, "base", q.lastAvail)
		p.mu.Lock()
		p.state.RingStarts++
		p.mu.Unlock()
		p.h.QueueReady(q)
	}
}

// paceRingStart takes a token of Config.RingStarts for one ring start,
// waiting for it if the bucket is empty; it reports false if the port
// closed meanwhile.
func (p *Port) paceRingStart() bool {
	return p.starts.take(p.cfg.RingStarts, DefaultRingStarts, p.closing, &p.mu, &p.state.RingStartsPaced)
}

// paceMessage takes a token of Config.Messages for one message or
// connection; it reports false if the port closed meanwhile.
func (p *Port) paceMessage() bool {
	def := DefaultMessages
	def.Burst = max(def.Burst, 16*2*p.cfg.QueuePairs)
	return p.msgs.take(p.cfg.Messages, def, p.closing, &p.mu, &p.state.MessagesPaced)
}

// bucket is the state of one Pace (the control goroutine's).
type bucket struct {
	tokens float64
	last   time.Time
}

// take takes a token of lim (def if lim is zero), waiting for one if
// there is none and counting the wait in *paced under mu. It reports
// false if closing closed while it waited.
func (b *bucket) take(lim, def Pace, closing <-chan struct{}, mu *sync.Mutex, paced *uint64) bool {
	if lim.PerSecond < 0 {
		return true
	}
	if lim.PerSecond == 0 {
		lim = def
	}
	now := time.Now()
	if b.last.IsZero() {
		b.tokens = float64(lim.Burst)
	} else {
		b.tokens = min(float64(lim.Burst), b.tokens+now.Sub(b.last).Seconds()*lim.PerSecond)
	}
	b.last = now
	if b.tokens < 1 {
		mu.Lock()
		*paced++
		mu.Unlock()
		t := time.NewTimer(time.Duration((1 - b.tokens) / lim.PerSecond * float64(time.Second)))
		select {
		case <-t.C:
		case <-closing:
			t.Stop()
			return false
		}
		b.tokens, b.last = 1, time.Now()
	}
	b.tokens--
	return true
}

// guardFaults makes a memory fault on the calling goroutine a panic
// (recovered by faultError) instead of a crash: the control goroutine
// reads guest memory (used.idx when a ring starts), and the guest can
// shrink the file behind a mapped region at any time (SIGBUS).
func guardFaults() { debug.SetPanicOnFault(true) }

// faultError, deferred, turns a recovered memory fault into *err; other
// panics go on.
func faultError(err *error, what string) {
	r := recover()
	if r == nil {
		return
	}
	f, ok := r.(interface{ Addr() uintptr })
	if !ok {
		panic(r)
	}
	*err = fmt.Errorf("memory fault at %#x in guest memory %s: %v", f.Addr(), what, r)
}

// startQueue starts q (it reads used.idx in guest memory) with faults
// guarded.
func startQueue(q *Queue, base uint16) (err error) {
	defer faultError(&err, "reading the used ring")
	return q.start(base)
}

// resetDevice returns the device to its initial state: queues stopped,
// fds closed, memory unmapped.
func (p *Port) resetDevice() {
	p.stopAll()
	p.checkStopped()
	p.stopNotifier()
	for _, q := range p.queues {
		q.callPending.Store(false)
		closeFD(&q.cfg.kickFD)
		closeFD(&q.cfg.callFD)
		closeFD(&q.cfg.errFD)
		q.cfg = vringConfig{kickFD: -1, callFD: -1, errFD: -1}
		q.kickFD, q.callFD = -1, -1
		q.mem, q.desc, q.avail, q.used = nil, nil, nil, nil
		q.bufLog, q.usedLog = nil, nil
	}
	p.dev.mem.unmap()
	p.dev.log.unmap()
	closeFD(&p.dev.logFD)
	p.dev = device{logFD: -1}
	for _, q := range p.queues {
		q.portBroken.Store(false)
	}
	if p.brokenFlag.Swap(false) {
		p.mu.Lock()
		p.state.Broken = ""
		p.mu.Unlock()
	}
}

// checkStopped reports a used.idx that changed after its ring stopped
// (GET_VRING_BASE), at the reset before memory is unmapped: only the
// device writes it while the ring is set up, and a back-end write after
// QEMU's last dirty-log sync is lost in a migration. (A guest that reset
// its device and set its rings up anew also changes it.)
func (p *Port) checkStopped() {
	for _, q := range p.queues {
		if !q.cfg.stoppedCheck || q.used == nil {
			continue
		}
		var err error
		func() {
			defer faultError(&err, "reading used.idx")
			if u := uint16(atomicLoad32(q.used, 0) >> 16); u != q.cfg.stoppedUsed {
				p.logGuest(&p.ringStopLog, slog.LevelWarn, "vhost-user used.idx changed after its ring stopped: a back-end write after GET_VRING_BASE, or the guest set the ring up anew",
					"queue", q.index, "at_stop", q.cfg.stoppedUsed, "now", u)
			}
		}()
	}
}

// stopNotifier stops the call notifier so that call fds may be closed or
// replaced. If it cannot be stopped (a guest keeps its blocked write
// going), the call fds are left open rather than closed under a write
// that may still use their numbers: the notifier exits when the write
// ends.
func (p *Port) stopNotifier() {
	if p.nt.stop() {
		return
	}
	p.log.Error("vhost-user call notifier blocked in a write to the guest's call eventfd: leaving its call fds open",
		"bound", notifyGrace*notifyDrains)
	for _, q := range p.queues {
		q.cfg.callFD = -1 // leaked: never closed, so never reused
	}
}

func closeFD(fd *int) {
	if *fd >= 0 {
		unix.Close(*fd)
		*fd = -1
	}
}

var errEOF = errors.New("front-end closed the connection")
