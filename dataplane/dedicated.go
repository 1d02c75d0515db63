package dataplane

// Dedicated queues: a VM gets a NIC queue of its own (a queue no shared
// socket uses), the NIC's flow rule steers its MAC (and VLAN) there, and
// the socket on that queue registers the guest memory region holding the
// VM's receive buffers as its UMEM. The worker feeds the fill ring with
// the addresses of the buffers the guest posted, placed so that the
// kernel (copy mode) or the NIC (zero-copy) writes each frame right after
// the virtio-net header; the worker then writes only the header and the
// used entry. Nothing the guest does can move a kernel write: a buffer is
// checked against the memory table, posted once (its head may not be
// posted again until completed), completed only for an rx descriptor that
// matches it, and the socket is closed (releasing every fill entry)
// before the queue stops, so before the memory is unmapped.
//
// When the guest memory cannot be a UMEM (alignment, memlock, size) or
// its buffers cannot take a frame in place, the dedicated queue falls
// back to a copying socket of its own; when the NIC cannot steer (or no
// queue is free), the VM falls back to shared mode unless the config
// demands a dedicated queue. Both are logged and counted.

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/ntuple"
	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/xsk"
	"github.com/vmq/vmq/internal/ratelog"
)

// DedicatedMode says whether a VM wants a NIC queue of its own.
type DedicatedMode string

const (
	DedicatedOff       DedicatedMode = ""
	DedicatedPreferred DedicatedMode = "preferred" // else shared mode, logged and counted
	DedicatedRequired  DedicatedMode = "required"  // else AddVM fails
)

// ErrNoDedicatedQueue: a VM that requires a dedicated queue cannot have one.
var ErrNoDedicatedQueue = errors.New("no dedicated queue")

// Steerer places a VM's frames on a NIC queue: the NIC's flow rules
// (ntuple) by default; tests on veth steer from the wire instead.
type Steerer interface {
	Steer(r ntuple.Rule) error
	Unsteer(r ntuple.Rule) error
	// Reconcile deletes vmq's rules whose location is not in keep.
	Reconcile(keep map[uint32]bool) (deleted []uint32, err error)
}

// ntupleSteerer is the NIC's ethtool flow rules, set from its namespace.
type ntupleSteerer struct {
	dev string
	ns  *netns.NsHandle
}

func (s ntupleSteerer) Steer(r ntuple.Rule) error {
	return inNetns(s.ns, func() error { return ntuple.Insert(s.dev, r) })
}

func (s ntupleSteerer) Unsteer(r ntuple.Rule) error {
	return inNetns(s.ns, func() error { return ntuple.Delete(s.dev, r.Location) })
}

func (s ntupleSteerer) Reconcile(keep map[uint32]bool) (del []uint32, err error) {
	err = inNetns(s.ns, func() error {
		var e error
		del, e = ntuple.Reconcile(s.dev, keep)
		return e
	})
	return del, err
}

// ExternalSteering is a Steerer for NICs whose queues someone else
// steers (tc, the switch, a test's wire): it sets nothing and logs what
// it expects.
type ExternalSteering struct{ Log func(msg string, args ...any) }

func (s ExternalSteering) Steer(r ntuple.Rule) error {
	if s.Log != nil {
		s.Log("dedicated queue: steering is external; frames must arrive on the queue", "mac", r.MAC.String(), "vlan", r.VLAN, "queue", r.Queue)
	}
	return nil
}

func (ExternalSteering) Unsteer(ntuple.Rule) error { return nil }

func (ExternalSteering) Reconcile(map[uint32]bool) ([]uint32, error) { return nil, nil }

// inNetns runs fn on a thread in ns (nil: here).
func inNetns(ns *netns.NsHandle, fn func() error) error {
	if ns == nil {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(*ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// steerer is the configured Steerer, or the NIC's ntuple rules.
func (dp *Dataplane) steerer() Steerer {
	if dp.cfg.Steer != nil {
		return dp.cfg.Steer
	}
	dev := dp.cfg.NIC.Name
	if dev == "" {
		inNetns(dp.cfg.Netns, func() error {
			if ifc, err := net.InterfaceByIndex(dp.cfg.Ifindex); err == nil {
				dev = ifc.Name
			}
			return nil
		})
	}
	return ntupleSteerer{dev: dev, ns: dp.cfg.Netns}
}

// Dedicated queue states, as reported.
const (
	dedWaiting int32 = iota // the guest's receive queue is not running
	dedDirect               // frames land in guest buffers
	dedCopy                 // a copying socket on the dedicated queue (fallback)
	dedShared               // no dedicated queue: shared mode (fallback)
)

var dedStateNames = [...]string{"waiting for the guest", "direct", "copy (fallback)", "shared (fallback)"}

// dedCounters are a dedicated VM's counters: written by its owner worker
// (or by AddVM before it starts), read by snapshots.
type dedCounters struct {
	queue                            atomic.Int64
	state                            atomic.Int32
	zeroCopy                         atomic.Bool
	frames, bytes                    atomic.Uint64 // delivered in place, no copy
	posted                           atomic.Int64  // guest buffers on the fill ring
	fallbacks, unsuitable, unmatched atomic.Uint64
	returned                         atomic.Uint64 // posted buffers given back empty on a stop
	reason                           atomic.Pointer[string]
	direct                           atomic.Pointer[xsk.Direct]
	copySock                         atomic.Pointer[xsk.Socket]
	// The guest's ring starts and stops cause these lines: a guest that
	// restarts its ring in a loop gets one line per kind per interval.
	startLog, faultLog ratelog.Limiter
}

func (c *dedCounters) fallback(state int32, reason string) {
	c.state.Store(state)
	c.reason.Store(&reason)
	c.fallbacks.Add(1)
}

// dedEntry is the control side of a dedicated VM.
type dedEntry struct {
	mode    DedicatedMode
	queue   int
	rule    ntuple.Rule
	steered bool
	steer   Steerer
	ctr     *dedCounters
}

// DedicatedStats report a VM's dedicated queue.
type DedicatedStats struct {
	Mode  DedicatedMode `json:"mode"`
	Queue int           `json:"queue"`
	// State: "direct", "waiting for the guest", "copy (fallback)" or
	// "shared (fallback)"; Reason says why the last fallback happened.
	State     string `json:"state"`
	Reason    string `json:"reason,omitempty"`
	ZeroCopy  bool   `json:"zero_copy"`
	Steering  string `json:"steering"`
	Frames    uint64 `json:"frames"` // written by the kernel/NIC into guest buffers
	Bytes     uint64 `json:"bytes"`
	Posted    int64  `json:"posted"` // guest buffers on the fill ring now
	Fallbacks uint64 `json:"fallbacks"`
	// Unsuitable: guest buffers that could not take a frame in place;
	// Unmatched: rx descriptors that matched no posted buffer (ignored);
	// Returned: posted buffers given back empty when the queue stopped.
	Unsuitable uint64 `json:"unsuitable_buffers"`
	Unmatched  uint64 `json:"unmatched_descriptors"`
	Returned   uint64 `json:"returned_buffers"`
	RxDropped  uint64 `json:"rx_dropped"`
	FillEmpty  uint64 `json:"fill_ring_empty"`
}

func (e *dedEntry) stats() *DedicatedStats {
	c := e.ctr
	s := &DedicatedStats{Mode: e.mode, Queue: int(c.queue.Load()), State: dedStateNames[c.state.Load()],
		ZeroCopy: c.zeroCopy.Load(), Frames: c.frames.Load(), Bytes: c.bytes.Load(), Posted: c.posted.Load(),
		Fallbacks: c.fallbacks.Load(), Unsuitable: c.unsuitable.Load(), Unmatched: c.unmatched.Load(),
		Returned: c.returned.Load()}
	if r := c.reason.Load(); r != nil {
		s.Reason = *r
	}
	switch _, external := e.steer.(ExternalSteering); {
	case e.steered && external:
		s.Steering = "external"
	case e.steered:
		s.Steering = fmt.Sprintf("flow rule at location %d", e.rule.Location)
	default:
		s.Steering = "none"
	}
	if d := c.direct.Load(); d != nil {
		if ks, err := d.KernelStats(); err == nil {
			s.RxDropped, s.FillEmpty = ks.RxDropped, ks.FillRingEmpty
		}
	} else if cs := c.copySock.Load(); cs != nil {
		if ks, err := cs.KernelStats(); err == nil {
			s.RxDropped, s.FillEmpty = ks.RxDropped, ks.FillRingEmpty
		}
	}
	return s
}

// addDedicated picks the VM's queue and steers it there (AddVM, dp.mu
// held). A preferred VM that cannot have one runs shared, counted.
func (dp *Dataplane) addDedicated(e *vmEntry) error {
	vm := &e.vm
	if vm.Dedicated == DedicatedOff {
		return nil
	}
	d := &dedEntry{mode: vm.Dedicated, queue: -1, ctr: new(dedCounters)}
	d.ctr.queue.Store(-1)
	e.ded = d
	fail := func(err error) error {
		if vm.Dedicated == DedicatedRequired {
			e.ded = nil
			return fmt.Errorf("VM %q requires a dedicated queue: %w", vm.Name, err)
		}
		d.ctr.fallback(dedShared, err.Error())
		dp.log.Warn("dedicated queue not available: the VM runs in shared mode", "vm", vm.Name, "reason", err)
		return nil
	}
	q, err := dp.pickQueue(vm.Name, vm.DedicatedQueue)
	if err != nil {
		return fail(err)
	}
	loc, err := ntuple.LocationOf(vm.Slot)
	if err != nil {
		return fail(fmt.Errorf("%w: %w", ErrNoDedicatedQueue, err))
	}
	d.rule = ntuple.Rule{MAC: vm.MAC, VLAN: vm.VLAN, Queue: uint32(q), Location: loc}
	d.steer = dp.steerer()
	if err := d.steer.Steer(d.rule); err != nil {
		return fail(fmt.Errorf("%w: steer %s to queue %d: %w", ErrNoDedicatedQueue, vm.MAC, q, err))
	}
	d.steered, d.queue = true, q
	d.ctr.queue.Store(int64(q))
	vm.dedQueue, vm.dedCtr = q, d.ctr
	dp.log.Info("dedicated queue", "vm", vm.Name, "queue", q, "rule", d.rule.Command(dp.cfg.NIC.Name))
	return nil
}

// pickQueue is want if free, else (want < 0) the lowest free queue: not
// a shared queue, not another VM's, within the NIC's channels.
func (dp *Dataplane) pickQueue(name string, want int) (int, error) {
	used := map[int]string{}
	for _, q := range dp.cfg.Queues {
		used[q] = "a shared queue"
	}
	for n, o := range dp.vms {
		if o.ded != nil && o.ded.steered {
			used[o.ded.queue] = fmt.Sprintf("VM %q's dedicated queue", n)
		}
	}
	limit := dp.filter.Config().MaxQueues
	if c := dp.cfg.NIC.Channels; c > 0 {
		limit = min(limit, c)
	}
	if want >= 0 {
		if want >= limit {
			return 0, fmt.Errorf("%w: queue %d is beyond the NIC's %d queues", ErrNoDedicatedQueue, want, limit)
		}
		if who, taken := used[want]; taken {
			return 0, fmt.Errorf("%w: queue %d is %s", ErrNoDedicatedQueue, want, who)
		}
		return want, nil
	}
	for q := range limit {
		if _, taken := used[q]; !taken {
			return q, nil
		}
	}
	return 0, fmt.Errorf("%w: all %d queues are shared or dedicated to other VMs", ErrNoDedicatedQueue, limit)
}

// removeDedicated removes the VM's flow rule (after its sockets closed).
func (dp *Dataplane) removeDedicated(e *vmEntry) error {
	d := e.ded
	if d == nil || !d.steered {
		return nil
	}
	d.steered = false
	if err := d.steer.Unsteer(d.rule); err != nil {
		return fmt.Errorf("remove flow rule of VM %q: %w", e.vm.Name, err)
	}
	return nil
}

// ReconcileSteering deletes the flow rules in vmq's range that no
// running VM owns (left by a vmqd that died). A NIC without flow rules
// has nothing to reconcile.
func (dp *Dataplane) ReconcileSteering() error {
	keep := map[uint32]bool{}
	dp.mu.RLock()
	for _, e := range dp.vms {
		if e.ded != nil && e.ded.steered {
			keep[e.ded.rule.Location] = true
		}
	}
	dp.mu.RUnlock()
	del, err := dp.steerer().Reconcile(keep)
	if errors.Is(err, ntuple.ErrNotSupported) {
		return nil
	}
	if len(del) > 0 {
		dp.log.Info("removed stale flow rules", "locations", del)
	}
	return err
}

// --- the worker's side ---

// directRx is a dedicated VM's receive path on the worker that owns its
// first receive queue.
type directRx struct {
	queue int
	ctr   *dedCounters
	vq    *virtq // the guest's receive queue 0, while it runs

	sock  *xsk.Direct // direct: the UMEM is region's mapping
	copyQ *xsk.Queue  // fallback: a copying socket on the queue
	// noDirect: direct failed for this run of the ring; copy until the
	// ring restarts.
	noDirect bool

	region   vhostuser.GuestRegion
	hdr      uint64 // virtio-net header length
	shift    uint64 // 4 on a VLAN: the tag lands in the header, then 12 bytes move
	window   uint64 // most bytes the kernel writes from the frame start
	frameOff uint64 // fill address to frame start
	chunk    uint64 // the UMEM's chunk size
	// zcPage: zero-copy: a chunk must not cross a 4 KiB page (the
	// kernel drops a fill entry whose chunk spans pages it cannot prove
	// DMA-contiguous, and the buffer would be lost until the socket closes).
	zcPage bool

	posted  []postedBuf // by descriptor head
	fifo    []uint16    // heads in fill order: the usual match
	fifoPos uint32
	fifoLen uint32
	nposted int
	maxPost int
	blocked bool // the next buffer is one direct cannot use (counted once)
	addrs   [batchSize]uint64
	descs   [batchSize]xsk.Desc
}

type postedBuf struct {
	buf   vhostuser.RxBuf
	fill  uint64
	valid bool
}

// directMTU is the frame size the dedicated path takes when the VM has none.
const directMTU = 1500

func (w *worker) addDirect(st *vmState, vm *VM) {
	if vm.dedCtr == nil || w.index != 0 { // pair 0's receive queue is worker 0's
		return
	}
	st.ded = &directRx{queue: vm.dedQueue, ctr: vm.dedCtr, window: directWindow(vm)}
	if vm.VLAN != 0 {
		st.ded.shift = vlanTagLen
	}
	w.directs = append(w.directs, st)
}

// directWindow is the most the kernel may write for one frame: the MTU,
// the Ethernet header and a VLAN tag.
func directWindow(vm *VM) uint64 {
	mtu := vm.MTU
	if mtu <= 0 {
		mtu = directMTU
	}
	return uint64(mtu) + ethHdrLen + vlanTagLen
}

// directOpen is a dedicated socket opened for a worker, or why not.
type directOpen struct {
	sock   *xsk.Direct
	region vhostuser.GuestRegion
	err    error
}

func (o *directOpen) close() {
	if o != nil && o.sock != nil {
		o.sock.Close()
		o.sock = nil
	}
}

// preopenDirect opens a dedicated VM's socket on the guest memory region
// of its receive buffers (of its first posted buffer, else of its ring),
// on the port's goroutine: registering the UMEM pins every page of the
// region, which takes long enough (hundreds of ms for a few hundred MB)
// to stall every VM of a worker. Nil when the VM has no dedicated queue.
func (dp *Dataplane) preopenDirect(name string, q *vhostuser.Queue) (o *directOpen) {
	dp.mu.RLock()
	e := dp.vms[name]
	var vm VM
	if e != nil {
		vm = e.vm
	}
	dp.mu.RUnlock()
	if vm.dedCtr == nil {
		return nil
	}
	o = &directOpen{}
	defer func() { // the guest may shrink its memory under us: SIGBUS
		if r := recover(); r != nil {
			if _, ok := r.(interface{ Addr() uintptr }); !ok {
				panic(r)
			}
			o.close()
			o.err = fmt.Errorf("memory fault reading the guest's ring: %v", r)
		}
	}()
	region, ok := q.RingRegion()
	if b, have, _, err := q.PeekRxBuffer(); err == nil && have {
		region, ok = q.Region(b.GPA)
	}
	if !ok {
		o.err = errors.New("no guest memory region holds the receive ring")
		return o
	}
	window := directWindow(&vm)
	chunk := uint64(2048)
	if window+xsk.DirectHeadroom > chunk {
		chunk = 4096
	}
	if window+xsk.DirectHeadroom > chunk {
		o.err = fmt.Errorf("frames of %d bytes do not fit a 4096-byte chunk", window)
		return o
	}
	o.err = inNetns(dp.cfg.Netns, func() error {
		var err error
		o.sock, err = xsk.OpenDirect(xsk.DirectConfig{
			Ifindex: dp.cfg.Ifindex, QueueID: vm.dedQueue, Mem: region.Mem,
			ChunkSize: int(chunk), Headroom: int(chunk - xsk.DirectHeadroom - window),
			FillSize: 1024, RxSize: 1024, Mode: dp.cfg.XSKMode,
		})
		return err
	})
	o.region = region
	return o
}

// adoptDirect takes the socket preopenDirect opened for st's first
// receive queue (or falls back to copying when it could not).
func (w *worker) adoptDirect(slot uint32, q *vhostuser.Queue, o *directOpen, attached bool) {
	if o == nil {
		return
	}
	st := w.vms[slot]
	if !attached || st == nil || st.ded == nil || st.ded.vq == nil || st.ded.vq.q != q {
		o.close()
		return
	}
	if o.err != nil {
		w.fallbackCopy(st, fmt.Sprintf("guest memory not registered as UMEM: %v", o.err))
		return
	}
	w.installDirect(st, o.sock, o.region)
}

// attachDirect starts the direct path when the VM's receive queue 0 runs.
func (w *worker) attachDirect(st *vmState, vq *virtq) {
	d := st.ded
	if d == nil || !vq.q.IsRX() || vq.q.Pair() != 0 {
		return
	}
	w.stopDirect(st) // a restart without a stop: start clean
	d.vq, d.noDirect = vq, false
	// The socket opens on the first posted buffer (its region becomes the
	// UMEM): see serveDirect.
}

// detachDirect stops the direct path before the queue goes back to the
// port (which then may unmap the guest memory).
func (w *worker) detachDirect(q *vhostuser.Queue) {
	for _, st := range w.directs {
		if d := st.ded; d.vq != nil && d.vq.q == q {
			w.stopDirect(st)
			d.vq = nil
		}
	}
}

func (w *worker) removeDirect(st *vmState) {
	if st.ded == nil {
		return
	}
	w.stopDirect(st)
	st.ded.vq = nil
	w.directs = removeVM(w.directs, st)
}

// stopDirect closes the dedicated queue's socket. Closing is the only way
// to take fill entries back from the kernel: once Close returns, nothing
// more is written into the guest buffers. Buffers still posted are then
// given back to the guest empty (used length 0, as a dropped frame), so
// the guest does not lose them.
func (w *worker) stopDirect(st *vmState) {
	d := st.ded
	if err := w.dp.filter.UnregisterSocket(st.slot, uint32(d.queue)); err != nil && (d.sock != nil || d.copyQ != nil) {
		w.logDirect(st, &d.ctr.faultLog, slog.LevelWarn, "unregister dedicated socket", "err", err)
	}
	if d.sock != nil {
		d.ctr.direct.Store(nil)
		zc := d.sock.ZeroCopy()
		if err := d.sock.Close(); err != nil {
			w.logDirect(st, &d.ctr.faultLog, slog.LevelWarn, "close dedicated socket", "err", err)
		}
		if zc {
			// The driver stops DMA into the guest's buffers in a deferred
			// teardown: wait for it before they go back and the memory
			// can be unmapped.
			if err := xsk.WaitReleased(w.dp.cfg.Ifindex, d.queue, 2*time.Second); err != nil {
				w.logDirect(st, &d.ctr.faultLog, slog.LevelError,
					"zero-copy queue not released: the NIC may still write into buffers given back to the guest", "err", err)
			}
		}
		d.sock = nil
		if d.nposted > 0 && d.vq != nil {
			w.returnPosted(d)
		}
		clear(d.posted)
		d.nposted, d.fifoLen = 0, 0
		d.ctr.posted.Store(0)
	}
	if d.copyQ != nil {
		d.ctr.copySock.Store(nil)
		if err := d.copyQ.Close(); err != nil {
			w.logDirect(st, &d.ctr.faultLog, slog.LevelWarn, "close dedicated copy socket", "err", err)
		}
		d.copyQ = nil
	}
	if d.ctr.state.Load() != dedShared {
		d.ctr.state.Store(dedWaiting)
	}
}

// returnPosted gives every buffer still posted back to the guest with a
// used length of 0 (the socket is closed: the kernel holds none).
func (w *worker) returnPosted(d *directRx) {
	q := d.vq.q
	func() {
		defer q.RecoverFault()
		for i := range d.posted {
			if p := &d.posted[i]; p.valid {
				p.valid = false
				q.ReturnRx(p.buf)
				d.ctr.returned.Add(1)
			}
		}
	}()
	flush(q)
}

// openDirect opens the dedicated queue's socket on the region holding b,
// or the copying fallback.
func (w *worker) openDirect(st *vmState, b vhostuser.RxBuf) {
	d := st.ded
	q := d.vq.q
	err := func() error {
		region, ok := q.Region(b.GPA)
		if !ok {
			return fmt.Errorf("receive buffer %#x is outside guest memory", b.GPA)
		}
		chunk := uint64(2048)
		if d.window+xsk.DirectHeadroom > chunk {
			chunk = 4096
		}
		if d.window+xsk.DirectHeadroom > chunk {
			return fmt.Errorf("frames of %d bytes do not fit a 4096-byte chunk", d.window)
		}
		sock, err := xsk.OpenDirect(xsk.DirectConfig{
			Ifindex: w.dp.cfg.Ifindex, QueueID: d.queue, Mem: region.Mem,
			ChunkSize: int(chunk), Headroom: int(chunk - xsk.DirectHeadroom - d.window),
			FillSize: 1024, RxSize: 1024, Mode: w.dp.cfg.XSKMode,
		})
		if err != nil {
			return err
		}
		w.installDirect(st, sock, region)
		return nil
	}()
	if err != nil {
		w.fallbackCopy(st, fmt.Sprintf("guest memory not registered as UMEM: %v", err))
	}
}

// installDirect makes sock the dedicated queue's socket.
func (w *worker) installDirect(st *vmState, sock *xsk.Direct, region vhostuser.GuestRegion) {
	d := st.ded
	q := d.vq.q
	if err := w.dp.filter.RegisterSocket(st.slot, uint32(d.queue), sock.FD()); err != nil {
		sock.Close()
		w.fallbackCopy(st, fmt.Sprintf("register dedicated socket: %v", err))
		return
	}
	d.sock, d.region = sock, region
	d.hdr, d.frameOff, d.chunk, d.zcPage = uint64(q.HdrLen()), sock.FrameOffset(), sock.Chunk(), sock.ZeroCopy()
	n := q.Size()
	if cap(d.posted) < n {
		d.posted, d.fifo = make([]postedBuf, n), make([]uint16, n)
	}
	d.posted, d.fifo = d.posted[:n], d.fifo[:n]
	clear(d.posted)
	d.fifoPos, d.fifoLen, d.nposted, d.blocked = 0, 0, 0, false
	// Leave buffers for the frames that still come by copy (floods,
	// other VMs, shared queues): a quarter of the ring, at most 64.
	d.maxPost = min(n-min(n/4, 64), 1024)
	d.ctr.zeroCopy.Store(sock.ZeroCopy())
	d.ctr.direct.Store(sock)
	d.ctr.state.Store(dedDirect)
	w.logDirect(st, &d.ctr.startLog, slog.LevelInfo, "dedicated queue: frames land in guest memory",
		"zero_copy", sock.ZeroCopy(), "umem_bytes", len(region.Mem), "max_frame", d.window)
}

// dedicatedLogEvery bounds the lines a guest's ring starts and stops
// cause on its dedicated queue, as vhostuser bounds its own.
const dedicatedLogEvery = 10 * time.Second

// logDirect logs a line about st's dedicated queue that the guest's
// ring starts and stops cause, at most one per dedicatedLogEvery of its
// kind.
func (w *worker) logDirect(st *vmState, l *ratelog.Limiter, level slog.Level, msg string, args ...any) {
	l.Log(w.dp.log, dedicatedLogEvery, level, msg, append([]any{"vm", st.name, "queue", st.ded.queue}, args...)...)
}

// fallbackCopy replaces the direct socket with a copying one on the
// dedicated queue until the guest restarts its ring.
func (w *worker) fallbackCopy(st *vmState, reason string) {
	d := st.ded
	w.stopDirect(st)
	d.noDirect = true
	d.ctr.fallback(dedCopy, reason)
	w.logDirect(st, &d.ctr.startLog, slog.LevelWarn, "dedicated queue falls back to copying", "reason", reason)
	cq, err := xsk.NewQueue(w.dp.cfg.Ifindex, d.queue,
		xsk.UMEMConfig{FrameSize: w.dp.cfg.FrameSize, NumFrames: 1024},
		xsk.QueueConfig{Mode: w.dp.cfg.XSKMode, RxSize: 512, TxSize: -1, FillSize: 512, CompSize: 64})
	if err != nil {
		w.logDirect(st, &d.ctr.faultLog, slog.LevelError, "dedicated queue: no copying socket either", "err", err)
		return
	}
	if err := w.dp.filter.RegisterSocket(st.slot, uint32(d.queue), cq.Primary().FD()); err != nil {
		cq.Close()
		w.logDirect(st, &d.ctr.faultLog, slog.LevelError, "dedicated queue: register copying socket", "err", err)
		return
	}
	cq.Refill(0)
	d.copyQ = cq
	d.ctr.copySock.Store(cq.Primary())
	d.ctr.zeroCopy.Store(cq.ZeroCopy())
}

// serveDirects runs every dedicated VM's receive path of this worker.
func (w *worker) serveDirects() int {
	n := 0
	for _, st := range w.directs {
		d := st.ded
		if d.vq == nil {
			continue
		}
		w.serve(st.slot)
		if d.copyQ != nil {
			n += w.receiveDirectCopy(st)
			continue
		}
		if d.noDirect {
			continue
		}
		n += w.serveDirect(st)
	}
	return n
}

// serveDirect completes the frames the kernel wrote and posts more of
// the guest's buffers.
func (w *worker) serveDirect(st *vmState) (n int) {
	d := st.ded
	vq := d.vq
	defer vq.q.RecoverFault()
	if d.sock == nil {
		b, have, _, err := vq.q.PeekRxBuffer()
		if err != nil || !have {
			return 0
		}
		w.openDirect(st, b)
		if d.sock == nil {
			return 0
		}
	}
	if d.nposted > 0 {
		n = w.completeDirect(st)
	}
	if d.nposted < d.maxPost {
		w.postDirect(st)
	}
	return n
}

// completeDirect turns received descriptors into used entries.
func (w *worker) completeDirect(st *vmState) int {
	d := st.ded
	got := d.sock.Receive(d.descs[:min(batchSize, max(st.credit/2, 1))])
	if got == 0 {
		return 0
	}
	st.credit -= got
	st.busy = true
	w.touch(st)
	w.markDirty(d.vq)
	repost := 0
	var frames, bytes uint64
	for _, desc := range d.descs[:got] {
		fill, off := xsk.DirectAddr(desc.Addr)
		head, ok := d.match(fill)
		if !ok {
			d.ctr.unmatched.Add(1) // not a buffer we posted: never completed
			continue
		}
		p := &d.posted[head]
		n := uint64(desc.Len)
		if off != d.frameOff || n > d.window {
			d.ctr.unmatched.Add(1)
			d.addrs[repost] = p.fill
			repost++
			continue
		}
		m, ok := w.directFrame(st, p, n)
		if !ok {
			// Dropped: the buffer is still the guest's posted one; give
			// it to the kernel again.
			d.addrs[repost] = p.fill
			repost++
			continue
		}
		p.valid = false
		d.nposted--
		frames++
		bytes += m
	}
	// Single writer: a store per batch, not a locked add per frame.
	d.ctr.frames.Store(d.ctr.frames.Load() + frames)
	d.ctr.bytes.Store(d.ctr.bytes.Load() + bytes)
	if repost > 0 {
		w.refill(d, d.addrs[:repost])
	}
	d.ctr.posted.Store(int64(d.nposted))
	return got
}

// directFrame checks one frame in its guest buffer and completes it,
// returning its length as the guest sees it.
func (w *worker) directFrame(st *vmState, p *postedBuf, n uint64) (uint64, bool) {
	d := st.ded
	q := d.vq.q
	start := p.buf.GPA + d.hdr - d.shift
	if n < minFrameLen {
		st.drop(DropMalformed)
		return 0, false
	}
	eth, err := q.GuestBytes(start, ethHdrLen+vlanTagLen)
	if err != nil {
		st.drop(DropMalformed)
		return 0, false
	}
	vlan, tagged, ok := frameVLAN(eth)
	switch {
	case !ok, tagged != (d.shift != 0), tagged && vlan != st.vlan:
		st.drop(DropMalformed)
		return 0, false
	case tagged:
		// Strip the tag: the MACs move 4 bytes up, next to the payload,
		// which stays where the kernel wrote it.
		copy(eth[vlanTagLen:vlanTagLen+12], eth[:12])
		n -= vlanTagLen
	}
	if st.rxLimited && !st.admitRx(int(n)) {
		st.drop(DropRateLimited)
		return 0, false
	}
	if err := q.CompleteRx(p.buf, uint32(n)); err != nil {
		st.drop(DropBroken)
		return 0, false
	}
	st.rxPkts++
	st.rxBytes += n
	return n, true
}

// match finds the posted buffer of a fill address: the oldest posted one
// in the usual case (the kernel takes fill entries in order), else by a
// scan.
func (d *directRx) match(fill uint64) (uint16, bool) {
	size := uint32(len(d.fifo))
	for d.fifoLen > 0 {
		h := d.fifo[d.fifoPos%size]
		p := &d.posted[h]
		if !p.valid { // completed out of order earlier
			d.fifoPos++
			d.fifoLen--
			continue
		}
		if p.fill == fill {
			d.fifoPos++
			d.fifoLen--
			return h, true
		}
		break
	}
	for h := range d.posted {
		if p := &d.posted[h]; p.valid && p.fill == fill {
			return uint16(h), true
		}
	}
	return 0, false
}

func (d *directRx) pushFIFO(h uint16) {
	size := uint32(len(d.fifo))
	if d.fifoLen == size { // only stale entries can fill it: drop the oldest
		d.fifoPos++
		d.fifoLen--
	}
	d.fifo[(d.fifoPos+d.fifoLen)%size] = h
	d.fifoLen++
}

// fillAddr is where the kernel must start a buffer's chunk so the frame
// lands right after the virtio-net header (with a VLAN: the tag in the
// header's last 4 bytes), or false if the buffer cannot take a frame of
// d.window bytes there wholly inside itself.
func (d *directRx) fillAddr(b vhostuser.RxBuf, simple bool) (uint64, bool) {
	if !simple || !d.region.Contains(b.GPA, uint64(b.Len)) {
		return 0, false
	}
	if uint64(b.Len) < d.hdr-d.shift+d.window {
		return 0, false
	}
	start := d.region.Offset(b.GPA + d.hdr - d.shift)
	if start < d.frameOff || start+d.window > uint64(len(d.region.Mem)) {
		return 0, false
	}
	fill := start - d.frameOff
	if d.zcPage && fill/4096 != (fill+d.chunk-1)/4096 {
		return 0, false
	}
	return fill, true
}

// postDirect gives the guest's next posted buffers to the kernel.
func (w *worker) postDirect(st *vmState) {
	d := st.ded
	q := d.vq.q
	room := min(d.sock.FillRoom(), d.maxPost-d.nposted, batchSize)
	k := 0
	for k < room {
		b, have, simple, err := q.PeekRxBuffer()
		if err != nil || !have {
			break
		}
		fill, ok := d.fillAddr(b, simple)
		if !ok {
			// Left in the ring for the copying path. If nothing of ours
			// is posted, frames on this queue would have nowhere to go.
			if !d.blocked {
				d.blocked = true
				d.ctr.unsuitable.Add(1)
			}
			if d.nposted == 0 && k == 0 {
				w.fallbackCopy(st, fmt.Sprintf("guest receive buffer %#x+%d (flags simple=%v) cannot take a %d-byte frame in place",
					b.GPA, b.Len, simple, d.window))
				return
			}
			break
		}
		if d.posted[b.Head].valid {
			q.Port().MarkBroken(fmt.Sprintf("receive descriptor %d posted again while the NIC owns it", b.Head))
			break
		}
		q.TakeRxBuffer()
		d.blocked = false
		d.posted[b.Head] = postedBuf{buf: b, fill: fill, valid: true}
		d.pushFIFO(b.Head)
		d.addrs[k] = fill
		k++
	}
	if k > 0 {
		d.nposted += k
		w.refill(d, d.addrs[:k])
		d.ctr.posted.Store(int64(d.nposted))
	}
}

// refill puts fill addresses on the ring; room was checked, so the ring
// takes them all (a shortfall would strand a posted buffer: count it).
func (w *worker) refill(d *directRx, addrs []uint64) {
	if n := d.sock.Fill(addrs); n < len(addrs) {
		d.ctr.unmatched.Add(uint64(len(addrs) - n))
	}
}

// receiveDirectCopy is the fallback: frames copied like a shared queue's.
func (w *worker) receiveDirectCopy(st *vmState) int {
	d := st.ded
	cq := d.copyQ
	n := cq.Primary().Receive(d.descs[:min(batchSize, max(st.credit/2, 1))])
	cq.Refill(0)
	if n == 0 {
		return 0
	}
	st.credit -= n
	st.busy = true
	w.touch(st)
	for _, desc := range d.descs[:n] {
		frame := cq.Frame(desc)
		if len(frame) < minFrameLen {
			st.drop(DropMalformed)
			continue
		}
		if _, tagged, ok := frameVLAN(frame); !ok {
			st.drop(DropMalformed)
			continue
		} else if tagged {
			frame = stripTag(frame)
		}
		w.deliver(&st.mail, st, frame) // its own frames: its share of the mailbox
	}
	if k := cq.FillDescs(d.descs[:n]); k < n {
		cq.FreeDescs(d.descs[k:n])
	}
	return n
}

// directPollFDs adds the dedicated sockets and the kick fds of their
// receive queues (the guest kicks when it posts buffers) to a sleep's
// poll set, after enabling the kicks; pending reports buffers that
// arrived meanwhile and could be posted now (then do not sleep).
func (w *worker) directPollFDs(fds []unix.PollFd) (_ []unix.PollFd, pending bool) {
	for _, st := range w.directs {
		d := st.ded
		switch {
		case d.vq == nil:
			continue
		case d.copyQ != nil:
			fds = append(fds, unix.PollFd{Fd: int32(d.copyQ.Primary().FD()), Events: unix.POLLIN})
			continue
		case d.sock != nil:
			fds = append(fds, unix.PollFd{Fd: int32(d.sock.FD()), Events: unix.POLLIN})
		}
		if d.noDirect {
			continue
		}
		if enableNotify(d.vq.q) && (d.sock == nil || d.nposted < d.maxPost) {
			pending = true
		}
		if fd := d.vq.q.KickFD(); fd >= 0 {
			fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
		}
	}
	return fds, pending
}

// directWoke drains the receive queues' kicks after a sleep.
func (w *worker) directWoke() {
	for _, st := range w.directs {
		if d := st.ded; d.vq != nil && d.copyQ == nil && !d.noDirect {
			d.vq.q.AckKick()
			disableNotify(d.vq.q)
		}
	}
}
