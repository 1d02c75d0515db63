// Package dataplane is vmq's forwarding engine, the NetVSP's data path:
// one worker per NIC queue moves frames between the VMs' AF_XDP sockets
// (the VM queues the XDP filter steers into) and the guests' vhost-user
// virtqueues, and switches guest frames to other local VMs or the wire.
//
// Ownership: a worker alone touches its queue's UMEM, rings and sockets
// and the virtqueues assigned to it (pair p of a VM belongs to worker
// p mod workers). The control side (AddVM, RemoveVM, the vhost-user
// ports' handlers) sends commands the worker applies between batches.
// Frames for a VM whose virtqueue another worker owns travel through a
// lock-free mailbox to that worker.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/dataplane/xsk"
)

// Config shapes a Dataplane.
type Config struct {
	// Ifindex is the NIC; Queues its rx queue ids, one worker each.
	Ifindex int
	Queues  []int
	// Filter is the loaded XDP filter (attached by the caller); the
	// dataplane registers its sockets in it.
	Filter *bpf.Filter
	// FrameSize (2048 or 4096) and FramesPerQueue shape each queue's UMEM.
	FrameSize      int
	FramesPerQueue int
	// XSKMode forces copy or zero-copy sockets; auto picks zero-copy when
	// the driver has it.
	XSKMode xsk.Mode
	// MTU is the NIC's MTU (0: 1500), up to MaxMTU. Above what one UMEM
	// frame holds the queues are multi-buffer (XDP_USE_SG, jumbo.go).
	MTU int
	// BusyPoll is how long an idle worker spins before sleeping in poll(2).
	BusyPoll time.Duration
	// Netns, when set, is the namespace of the NIC: workers enter it.
	Netns *netns.NsHandle
	// NIC is reported as is in snapshots.
	NIC    NICStatus
	Logger *slog.Logger
	// Migrated, if set, hears that a VM's migration completed: its
	// socket is the standby port's from now on. Called on its own
	// goroutine.
	Migrated func(vm, socket string, client bool)

	// Dedicated queues (dedicated.go): Steer places a dedicated VM's
	// frames on its queue; nil means the NIC's ntuple flow rules.
	Steer Steerer

	// CPU placement (cpus.go): worker i runs on WorkerCPUs[i mod len],
	// every other thread of the process on HousekeepingCPUs (nil: where
	// it was started). Nil both: threads are left alone.
	WorkerCPUs, HousekeepingCPUs []int

	// TxPath (txpath.go): how guest frames for the wire leave; "" is
	// auto. XDPTxMinBatch is the fewest frames in a round that go through
	// XDP (0: DefaultXDPTxMinBatch).
	TxPath        TxPath
	XDPTxMinBatch int
	// XDPCheckEvery is how often the NIC's xdp-features are asked (0: a
	// second; tests make it long to hold a state).
	XDPCheckEvery time.Duration
}

// VM is one guest as the dataplane needs it.
type VM struct {
	Name string
	Slot uint32 // 1..MaxVMs, given by the control plane
	MAC  net.HardwareAddr
	VLAN uint16 // access VLAN, 0 = untagged
	// Socket is the vhost-user socket path; Client makes vmqd connect to
	// it instead of listening.
	Socket        string
	Client        bool
	QueuePairs    int
	AllowSpoofing bool
	MTU           int
	// NoOffloads turns off the checksum and TSO offloads (offload.go)
	// the VM's port offers by default.
	NoOffloads bool
	// NoPackedRing and NoInOrder turn off the packed virtqueues and
	// IN_ORDER the VM's port offers by default.
	NoPackedRing, NoInOrder bool
	// Limits are the VM's QoS limits (zero: unlimited); SetLimits changes
	// them while it runs.
	Limits Limits

	// Port hardening, passed to the vhost-user port. MaxMemory bounds the
	// guest memory a SET_MEM_TABLE may map (0: no limit). SocketOwner and
	// SocketGroup own a listening socket (-1 leaves it), SocketMode is its
	// mode (0: 0600). AllowedUIDs, when non-nil, are the only peer uids
	// accepted.
	MaxMemory                uint64
	SocketOwner, SocketGroup int
	SocketMode               os.FileMode
	AllowedUIDs              []uint32

	// Dedicated asks for a NIC queue of the VM's own (dedicated.go):
	// DedicatedQueue, or the lowest free queue when it is negative.
	Dedicated      DedicatedMode
	DedicatedQueue int

	mac MAC
	// Set by AddVM for the workers when the VM has its queue.
	dedQueue int
	dedCtr   *dedCounters
}

// Dataplane runs the workers and the VMs' vhost-user ports.
type Dataplane struct {
	cfg     Config
	filter  *bpf.Filter
	log     *slog.Logger
	workers []*worker

	mu  sync.RWMutex // guards vms; held for AddVM/RemoveVM and snapshots
	vms map[string]*vmEntry

	// slotNames maps a slot to its VM's name for the watchdog, which must
	// not wait for mu.
	slotNames sync.Map
	watchStop chan struct{}
	watchDone chan struct{}
	// unplace gives the threads the process's CPUs back (cpus.go).
	unplace func()
	// xdptx: the XDP transmit program and maps, shared by the workers
	// (nil: sockets only). xdpOK: whether the NIC takes XDP frames, as
	// last checked; xdpGen counts the checks (txpath.go).
	xdptx            *xsk.XDPTx
	xdpOK            atomic.Bool
	xdpGen           atomic.Uint64
	xdpStop, xdpDone chan struct{}
}

// vmEntry is the control side of a VM: its port and its counters on
// every worker.
type vmEntry struct {
	vm   VM
	port *vhostuser.Port
	ctrs []*vmCounters // by worker
	// mig is the standby port of a migration (migrate.go); retired is
	// closed once the last migration's source port is closed.
	mig     *migration
	retired chan struct{}
	ded     *dedEntry // nil: shared mode only
}

// New opens an AF_XDP queue per configured NIC queue, registers the flood
// sockets and starts the workers.
func New(cfg Config) (*Dataplane, error) {
	if cfg.Filter == nil {
		return nil, errors.New("dataplane: no XDP filter")
	}
	if len(cfg.Queues) == 0 {
		return nil, errors.New("dataplane: no NIC queues")
	}
	if cfg.FrameSize == 0 {
		cfg.FrameSize = xsk.DefaultFrameSize
	}
	if cfg.FramesPerQueue == 0 {
		cfg.FramesPerQueue = defaultFramesPerQueue
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	if err := checkMTU(cfg); err != nil {
		return nil, err
	}
	path, err := ParseTxPath(string(cfg.TxPath))
	if err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	cfg.TxPath = path
	if cfg.XDPTxMinBatch <= 0 {
		cfg.XDPTxMinBatch = DefaultXDPTxMinBatch
	}
	if cfg.XDPCheckEvery <= 0 {
		cfg.XDPCheckEvery = xdpCheckEvery
	}
	dp := &Dataplane{cfg: cfg, filter: cfg.Filter, log: cfg.Logger, vms: make(map[string]*vmEntry)}
	if err := dp.openXDPTx(); err != nil {
		return nil, err
	}
	n := len(cfg.Queues)
	for i, qid := range cfg.Queues {
		w, err := newWorker(dp, i, qid, n)
		if err != nil {
			for _, w := range dp.workers { // none runs yet
				unix.Close(w.wakeFD)
			}
			dp.closeXDPTx()
			return nil, err
		}
		dp.workers = append(dp.workers, w)
	}
	// Mailboxes between every pair of workers; slots fit a frame plus a tag.
	// 512 slots: one source alone may fill half (mailbox.go), which holds
	// one broadcast's copies to every other VM (control.MaxVMs is 255).
	slotSize := max(cfg.FrameSize, cfg.MTU+ethHdrLen+vlanTagLen)
	for _, src := range dp.workers {
		for _, dst := range dp.workers {
			if src != dst {
				mb := newMailbox(512, slotSize)
				mb.to = dst.index
				src.outbox[dst.index] = mb
				dst.inbox[src.index] = mb
			}
		}
	}
	unplace, err := dp.placeHousekeeping()
	if err != nil {
		for _, w := range dp.workers {
			unix.Close(w.wakeFD)
		}
		return nil, err
	}
	dp.unplace = unplace
	var errs []error
	started := dp.workers[:0:0]
	for _, w := range dp.workers {
		ready := make(chan error, 1)
		go w.run(ready)
		if err := <-ready; err != nil {
			errs = append(errs, err)
			continue
		}
		started = append(started, w)
	}
	if len(errs) > 0 {
		for _, w := range started {
			w.send(command{kind: cmdStop})
			<-w.stopped // its sockets and UMEM are closed
		}
		unplace()
		dp.closeXDPTx()
		return nil, fmt.Errorf("dataplane: %w", errors.Join(errs...))
	}
	dp.watchStop, dp.watchDone = make(chan struct{}), make(chan struct{})
	go dp.watchdog(dp.watchStop, dp.watchDone)
	return dp, nil
}

// rxOwner is the worker that owns the receive queue a frame from worker w
// goes to when w owns none of the VM's pairs.
func (dp *Dataplane) rxOwner(w, pairs int) int {
	return (w % pairs) % len(dp.workers)
}

// AddVM opens the VM's socket on every queue, registers them in the
// filter's XSKMAP and starts its vhost-user port. Steering the VM's MAC to
// its slot (SetFilter) is the caller's job, after AddVM returns.
func (dp *Dataplane) AddVM(ctx context.Context, vm VM) error {
	if len(vm.MAC) != 6 {
		return fmt.Errorf("add VM %q: MAC %q is not 6 bytes", vm.Name, vm.MAC)
	}
	copy(vm.mac[:], vm.MAC)
	vm.QueuePairs = max(vm.QueuePairs, 1)
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if _, dup := dp.vms[vm.Name]; dup {
		return fmt.Errorf("add VM %q: already present", vm.Name)
	}
	for _, e := range dp.vms {
		if e.vm.Slot == vm.Slot {
			return fmt.Errorf("add VM %q: slot %d is VM %q's", vm.Name, vm.Slot, e.vm.Name)
		}
	}
	e := &vmEntry{vm: vm, ctrs: make([]*vmCounters, len(dp.workers))}
	if err := dp.addDedicated(e); err != nil {
		return fmt.Errorf("add VM %q: %w", vm.Name, err)
	}
	var added []*worker
	dp.slotNames.Store(vm.Slot, vm.Name)
	undo := func(err error) error {
		for _, w := range added {
			w.send(command{kind: cmdRemoveVM, slot: vm.Slot})
		}
		dp.slotNames.Delete(vm.Slot)
		if rerr := dp.removeDedicated(e); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return err
	}
	for i, w := range dp.workers {
		e.ctrs[i] = new(vmCounters)
		if err := w.send(command{kind: cmdAddVM, vm: &e.vm, ctr: e.ctrs[i]}); err != nil {
			return undo(fmt.Errorf("add VM %q: %w", vm.Name, err))
		}
		added = append(added, w)
	}
	pcfg := dp.portConfig(vm, &portHandler{dp: dp, slot: vm.Slot, name: vm.Name})
	var err error
	if vm.Client {
		e.port, err = vhostuser.Dial(vm.Socket, pcfg)
	} else {
		e.port, err = vhostuser.Listen(vm.Socket, pcfg)
	}
	if err != nil {
		return undo(fmt.Errorf("add VM %q: %w", vm.Name, err))
	}
	dp.vms[vm.Name] = e
	return nil
}

// portConfig is the vhost-user configuration of a VM's port (its own or
// a migration's standby port).
func (dp *Dataplane) portConfig(vm VM, h *portHandler) vhostuser.Config {
	features := uint64(vhostuser.DefaultFeatures | virtio.OffloadFeatures)
	if vm.NoOffloads {
		features = vhostuser.DefaultFeatures
	}
	if vm.MTU > 0 {
		features |= virtio.NetFMTU
	}
	return vhostuser.Config{
		Features: features,
		Name:     vm.Name, MAC: vm.MAC, QueuePairs: vm.QueuePairs, MTU: vm.MTU,
		MaxMemory:   vm.MaxMemory,
		SocketOwner: vm.SocketOwner, SocketGroup: vm.SocketGroup, SocketMode: vm.SocketMode,
		AllowedUIDs:  vm.AllowedUIDs,
		NoPackedRing: vm.NoPackedRing,
		// A dedicated queue's direct path completes the buffers the NIC
		// holds after the ones Push fills meanwhile (floods): not in order.
		NoInOrder: vm.NoInOrder || vm.Dedicated != DedicatedOff,
		Handler:   h,
		Logger:    dp.log.With("vm", vm.Name),
	}
}

// closePorts closes the VM's port and a migration's standby port.
func (e *vmEntry) closePorts() error {
	var errs []error
	if e.mig != nil {
		if err := e.mig.port.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close standby port: %w", err))
		}
	}
	if err := e.port.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close vhost-user port: %w", err))
	}
	if e.retired != nil {
		<-e.retired // a migration's source port, closing
	}
	return errors.Join(errs...)
}

// RemoveVM stops the VM's port (its queues come back from the workers),
// then closes its sockets. The caller deletes its filter entry first.
func (dp *Dataplane) RemoveVM(ctx context.Context, name string) error {
	dp.mu.Lock()
	e, ok := dp.vms[name]
	if ok {
		delete(dp.vms, name)
	}
	dp.mu.Unlock()
	if !ok {
		return fmt.Errorf("remove VM %q: not present", name)
	}
	var errs []error
	if err := e.closePorts(); err != nil {
		errs = append(errs, err)
	}
	for _, w := range dp.workers {
		if err := w.send(command{kind: cmdRemoveVM, slot: e.vm.Slot}); err != nil && !errors.Is(err, errWorkerStopped) {
			errs = append(errs, err)
		}
	}
	dp.slotNames.CompareAndDelete(e.vm.Slot, name)
	if err := dp.removeDedicated(e); err != nil { // its sockets are closed
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove VM %q: %w", name, err)
	}
	return nil
}

// Close stops every port and worker. The XDP program stays attached; the
// caller decides whether to detach it.
func (dp *Dataplane) Close() error {
	dp.mu.Lock()
	entries := make([]*vmEntry, 0, len(dp.vms))
	for _, e := range dp.vms {
		entries = append(entries, e)
	}
	dp.vms = map[string]*vmEntry{}
	dp.mu.Unlock()
	if dp.watchStop != nil {
		close(dp.watchStop)
		<-dp.watchDone
		dp.watchStop = nil
	}
	var errs []error
	for _, e := range entries {
		if err := e.closePorts(); err != nil {
			errs = append(errs, fmt.Errorf("close port of VM %q: %w", e.vm.Name, err))
		}
	}
	for _, w := range dp.workers {
		if err := w.send(command{kind: cmdStop}); err != nil && !errors.Is(err, errWorkerStopped) {
			errs = append(errs, err)
		}
		<-w.stopped
	}
	for _, e := range entries { // no flow rule outlives vmqd
		if err := dp.removeDedicated(e); err != nil {
			errs = append(errs, err)
		}
	}
	if dp.unplace != nil {
		dp.unplace()
		dp.unplace = nil
	}
	dp.closeXDPTx() // the workers, its only users, are gone
	return errors.Join(errs...)
}

// portHandler hands a VM's virtqueues to their workers.
type portHandler struct {
	dp   *Dataplane
	slot uint32
	name string
	// standby: a migration's standby port; started once one of its
	// queues went to a worker (then the source's disconnect ends the
	// migration).
	standby bool
	started atomic.Bool
}

func (h *portHandler) owner(q *vhostuser.Queue) *worker {
	return h.dp.workers[q.Pair()%len(h.dp.workers)]
}

func (h *portHandler) QueueReady(q *vhostuser.Queue) {
	if h.standby && !h.started.Swap(true) {
		h.dp.log.Info("migration: the destination started its rings; traffic moves to the standby port", "vm", h.name, "socket", q.Port().Path())
	}
	c := command{kind: cmdQueueReady, slot: h.slot, vq: q}
	if q.IsRX() && q.Pair() == 0 && !h.standby {
		c.pre = h.dp.preopenDirect(h.name, q) // nil unless the VM has a dedicated queue
	}
	if err := h.owner(q).send(c); err != nil {
		c.pre.close()
		h.dp.log.Warn("virtqueue not attached", "vm", h.name, "virtqueue", q.Index(), "err", err)
	}
}

func (h *portHandler) QueueStopped(q *vhostuser.Queue) {
	h.owner(q).send(command{kind: cmdQueueStopped, slot: h.slot, vq: q})
}

func (h *portHandler) DeviceBroken(p *vhostuser.Port, reason string) {
	// The port has logged it (rate-limited: the guest controls how often).
}

// Snapshot reports every counter. Safe from any goroutine.
func (dp *Dataplane) Snapshot() Snapshot {
	s := Snapshot{NIC: dp.cfg.NIC}
	s.NIC.Queues = append([]int(nil), dp.cfg.Queues...)
	if g, err := dp.filter.GlobalCounters(); err == nil {
		s.Filter = FilterStats{Redirected: g.Redirected, Passed: g.Passed + g.FloodPassed,
			Flooded: g.Flooded, Malformed: g.Malformed, NoSocket: g.NoSocket}
	}
	for _, w := range dp.workers {
		s.Sockets = append(s.Sockets, socketStats("", w.queueID, w.flood, nil))
		s.Workers = append(s.Workers, WorkerStats{
			Queue: w.queueID, BusyNS: w.ctr.busyNS.Load(), IdleNS: w.ctr.idleNS.Load(),
			Batches: w.ctr.batches.Load(), Wakeups: w.ctr.wakeups.Load(), Polls: w.ctr.polls.Load(),
			FreeFrames: w.freeFrames(), TotalFrames: dp.cfg.FramesPerQueue,
			InFlightFrames: int(w.ctr.inflight.Load()), Stalls: w.ctr.stalls.Load(),
			Frames: w.ctr.frames.Load(), BusyRoundNS: w.ctr.busyRoundNS.Load(),
			BusyRoundFrames: w.ctr.busyRoundFrames.Load(), KickMutes: w.ctr.kickMutes.Load(),
			VirtQueues: int(w.ctr.virtqueues.Load()), XDPSockets: int(w.ctr.sockets.Load()),
			TxPath: w.txPathName(), TxXDPFrames: w.ctr.txXDP.Load(), TxSocketFrames: w.ctr.txSocket.Load(),
			XDPTxCalls: w.ctr.xdpCalls.Load(), XDPTxFallbacks: w.ctr.xdpFallbacks.Load(), XDPTxDrops: w.ctr.xdpDrops.Load(),
			XDPTxResent: w.ctr.xdpResent.Load(), MailboxDrops: w.mailboxDrops(), CPUs: w.cpus(),
		})
	}
	dp.mu.RLock()
	defer dp.mu.RUnlock()
	names := make([]string, 0, len(dp.vms))
	for n := range dp.vms {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		e := dp.vms[name]
		v := VMStats{Name: name, Slot: e.vm.Slot, MAC: e.vm.mac.String(), VLAN: e.vm.VLAN,
			Limits: e.vm.Limits, DropsByReason: make(map[string]uint64)}
		for i, c := range e.ctrs {
			qs := VMQueueStats{Queue: dp.cfg.Queues[i],
				RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
				TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load()}
			v.RxPackets += qs.RxPackets
			v.RxBytes += qs.RxBytes
			v.TxPackets += qs.TxPackets
			v.TxBytes += qs.TxBytes
			v.RxCopiedBytes += c.rxCopied.Load()
			v.FloodCopies += c.floodCopies.Load()
			v.XDPTxResent += c.xdpResent.Load()
			v.Offload.Passed += c.oflPassed.Load()
			v.Offload.Segmented += c.oflSegmented.Load()
			v.Offload.Segments += c.oflSegments.Load()
			v.Offload.CsumFills += c.oflCsum.Load()
			for r := range c.drops {
				v.Drops[r] += c.drops[r].Load()
			}
			v.Queues = append(v.Queues, qs)
			if sock := c.socket.Load(); sock != nil {
				s.Sockets = append(s.Sockets, socketStats(name, dp.cfg.Queues[i], sock, c.txSocket.Load()))
			}
		}
		// Frames the backend refused while reading the guest's rings.
		for _, q := range e.port.Queues() {
			qs := q.Stats()
			v.Drops[DropMalformed] += qs.Drops[vhostuser.DropMalformed]
			v.Drops[DropBadOffload] += qs.Drops[vhostuser.DropBadHeader]
			if !q.IsRX() {
				v.Drops[DropMalformed] += qs.Drops[vhostuser.DropTooBig]
				// Chains Pop dropped because no budget could finish them
				// (on RX the worker counts ErrBudget itself).
				v.Drops[DropBudget] += qs.Drops[vhostuser.DropBudget]
			}
		}
		for r, n := range v.Drops {
			if n > 0 {
				v.DropsByReason[DropReason(r).String()] = n
			}
		}
		if e.ded != nil {
			v.Dedicated = e.ded.stats()
		}
		if fc, err := dp.filter.VMCounters(e.vm.Slot); err == nil {
			v.FilterPackets, v.FilterBytes, v.FilterRedirErrs = fc.Packets, fc.Bytes, fc.RedirectErrors
		}
		s.VMs = append(s.VMs, v)
		s.Ports = append(s.Ports, portStats(name, e.port, false))
		if e.mig != nil {
			s.Ports = append(s.Ports, portStats(name, e.mig.port, true))
		}
	}
	return s
}

func portStats(vm string, p *vhostuser.Port, standby bool) PortStats {
	ps := p.State()
	running := 0
	for _, r := range ps.Running {
		if r {
			running++
		}
	}
	return PortStats{VM: vm, Path: ps.Path, Mode: ps.Mode, Connected: ps.Connected,
		Features: ps.Features, ProtocolFeatures: ps.ProtocolFeatures, QueuePairs: ps.QueuePairs,
		RingSizes: ps.RingSizes, RingsRunning: running, Kicks: ps.Kicks, Calls: ps.Calls, Broken: ps.Broken,
		Timeouts: ps.Timeouts, PeerRejected: ps.PeerRejected, Standby: standby,
		RingStarts: ps.RingStarts, RingStartsPaced: ps.RingStartsPaced, MessagesPaced: ps.MessagesPaced}
}

// socketStats are the kernel's counters of a VM's receive socket sock
// and its transmit socket tx (nil: none), as one socket's.
func socketStats(vm string, queue int, sock, tx *xsk.Socket) SocketStats {
	ss := SocketStats{VM: vm, Queue: queue, ZeroCopy: sock.Queue().ZeroCopy()}
	if ks, err := sock.KernelStats(); err == nil {
		ss.RxDropped, ss.RxInvalid, ss.TxInvalid = ks.RxDropped, ks.RxInvalid, ks.TxInvalid
		ss.RxRingFull, ss.FillRingEmpty, ss.TxRingEmpty = ks.RxRingFull, ks.FillRingEmpty, ks.TxRingEmpty
	}
	if tx != nil {
		if ks, err := tx.KernelStats(); err == nil {
			ss.TxInvalid += ks.TxInvalid
			ss.TxRingEmpty += ks.TxRingEmpty
		}
	}
	ss.RxTooLong = sock.Stats().RxTooLong
	return ss
}

func (w *worker) freeFrames() int {
	if w.q == nil {
		return 0
	}
	return w.q.FreeFrames()
}
