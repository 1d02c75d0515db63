package dataplane

import (
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/dataplane/xsk"
)

// batchSize is how many descriptors a worker takes from one ring at once.
const batchSize = 64

// timeEvery: the run loop times one round in timeEvery (busy ns/frame).
const timeEvery = 8

// vmRingSize sizes each VM socket's rx and tx rings. Frames waiting in a
// VM's rx ring are frames of the queue's shared UMEM, so a ring bounds what
// one VM can hold while the worker is away (1024 of 8192). It must also
// cover the worker being away: on a loaded host the worker thread is
// descheduled for tens of ms, and at 256 entries (25 ms at 10k frames/s) a
// well-behaved VM next to a faulting one lost frames at rx_ring_full.
const vmRingSize = 1024

// defaultFramesPerQueue is the UMEM of each queue: the fill ring (2048),
// guest TX in flight and the VM sockets' rx rings.
const defaultFramesPerQueue = 8192

// sweepEvery: every this many rounds the worker visits again every VM
// socket whose mark it took in the last sweepEvery to 2*sweepEvery
// rounds. A mark is set before the kernel publishes the frame in the ring
// (at the end of its NAPI poll, up to 64 frames later), so a visit can
// find the ring still empty; the sweep bounds how long such a frame
// waits. Sockets with no mark that recent have nothing coming: every
// frame's mark is set before its redirect, so they are not visited.
const sweepEvery = 64

// sweepAllEvery: every this many rounds the worker visits every VM socket
// all the same, a bound for a frame whatever became of its mark.
const sweepAllEvery = 1024

// maxTxBackoff: a guest TX ring found empty is looked at again after 1,
// 3, 7, then every maxTxBackoff+1 rounds until it has frames, so many
// quiet guests cost a few ring reads per round, not one each.
const maxTxBackoff = 15

// idlePollTimeout bounds one poll(2) sleep, so an idle worker still
// notices a stop without a wakeup.
const idlePollTimeout = 200 * time.Millisecond

// workerCounters are a worker's own counters (single writer).
type workerCounters struct {
	busyNS, idleNS, batches, wakeups, polls atomic.Uint64
	// frames: frames moved (taken from sockets, guest rings, mailboxes).
	// busyRoundNS and busyRoundFrames: the time of the timed rounds
	// (one in timeEvery) that moved frames, and the frames they moved;
	// their ratio is the worker's busy cost per frame.
	frames, busyRoundNS, busyRoundFrames atomic.Uint64
	// roundNS and roundFrames: the same timed rounds by their ns per
	// frame (roundBucket), time and frames summed per bucket, so a reader
	// can tell rounds the thread was preempted in (ms in a round of µs),
	// which busyRoundNS counts in full, from the worker's own cost.
	roundNS, roundFrames [roundBuckets]atomic.Uint64
	// What the worker owns, published for snapshots.
	virtqueues, sockets atomic.Int64
	// inflight: UMEM frames in the queue's rings and the stash (publishInFlight).
	inflight atomic.Int64
	// For the watchdog: rounds finished, and the slot of the VM being
	// served (0: none, or the flood socket).
	rounds  atomic.Uint64
	serving atomic.Uint32
	// stalls is written by the watchdog, not the worker.
	stalls atomic.Uint64
	// kickMutes: times a guest's kick fd was muted for spurious kicks (kickmute.go).
	kickMutes atomic.Uint64
	// visits and visitsTook: VM socket visits in rounds that moved
	// frames, and those of them that took frames (frames per visit is
	// what a visit's fixed cost is spread over).
	visits, visitsTook atomic.Uint64
	// Transmit paths (txpath.go): wire frames sent through XDP and through
	// the VMs' sockets, XDP calls, failed calls, frames lost in the XDP
	// path, frames the driver dropped that were sent again through the
	// sockets, and the path the worker uses now (1: XDP for rounds at the
	// threshold).
	txXDP, txSocket, xdpCalls, xdpFallbacks, xdpDrops, xdpResent atomic.Uint64
	txPath                                                       atomic.Uint32
}

// publishOwned updates the counts of virtqueues and sockets the worker owns.
func (w *worker) publishOwned() {
	w.ctr.virtqueues.Store(int64(len(w.rxqs) + len(w.txqs)))
	w.ctr.sockets.Store(int64(2*len(w.vmList) + 1)) // receive and transmit, + the flood socket
	w.publishInFlight()
}

// publishInFlight counts the UMEM frames outside the allocator from the
// rings and the stash. It reads every socket's ring indices, so it runs
// between rounds now and then (before sleeping, every publishEvery busy
// rounds, after commands), not per round.
func (w *worker) publishInFlight() {
	if w.q != nil {
		w.ctr.inflight.Store(int64(w.q.RingFrames() + w.nstash + w.nparked))
	}
}

// worker forwards for one NIC queue. It alone touches the queue's UMEM,
// rings and sockets and the guest virtqueues assigned to it; everything
// else reaches it through its command channel, applied between batches.
type worker struct {
	dp      *Dataplane
	index   int          // position in dp.workers
	queueID int          // NIC queue
	tid     atomic.Int32 // its locked thread, once it runs

	q     *xsk.Queue
	flood *xsk.Socket // the primary socket: broadcast and multicast from the wire

	vms    map[uint32]*vmState // by slot
	vmList []*vmState          // iteration order for receiving
	fdb    *fdb
	txqs   []*virtq // guest transmit queues owned here
	// txqs by state (txsched.go): looked at by backoff, or idle; spare
	// arrays for regrouping them.
	txHot, txIdle, txSpare, txSpare2 []*virtq
	rxqs                             []*virtq // guest receive queues owned here (for Flush)

	cmds   chan command
	wakeFD int         // eventfd: commands and mailboxes wake a sleeping worker
	asleep atomic.Bool // in poll(2): producers must write wakeFD
	inbox  []*mailbox  // inbox[i]: frames from worker i
	outbox []*mailbox  // outbox[i]: frames to worker i
	sentTo []bool      // outbox[i] has unpublished frames
	// wireMail is the mailbox share of the copies of broadcasts from the
	// wire (receiveFlood): nobody's guest's, one source.
	wireMail mailSource
	stopped  chan struct{}

	descs      [batchSize]xsk.Desc
	txDescs    [batchSize]xsk.Desc
	addrs      [batchSize]uint64
	stash      [batchSize]uint64 // UMEM frames held for guest TX (takeFrame)
	nstash     int
	nparked    int                        // UMEM frames parked for full guest rings (hold.go)
	heldSock   int                        // frames held in the VMs' socket rings, as of their last visits (hold.go)
	jumbo      *jumbo                     // multi-buffer frames (jumbo.go); nil when the MTU fits a UMEM frame
	epfd       int                        // the sleep's epoll set (epoll.go)
	events     [maxEvents]unix.EpollEvent // epoll_wait's results
	kickEp     int                        // the guest TX queues' kick fds, in epfd (epoll.go)
	kickEvents [maxEvents]unix.EpollEvent
	// Kick fds out of the sleep's set for now (kickmute.go): TX queues'
	// (out of kickEp) and holders' receive kick fds.
	kickMuted  []*virtq
	holdMuted  []*vmState
	kickOwner  map[int32]*virtq // the TX queue of each kick fd in kickEp
	txIdleNext int              // the next idle TX queue the sparse sweep looks at (txsched.go)
	pollfds    []unix.PollFd    // the sleep's fds with dedicated queues
	ctr        workerCounters
	ofl        offloadState // guest frames with offloads (offload.go)

	// The filter's pending bitmap of this queue (nil: visit every socket
	// each round), the marks not yet found empty (ready), the marks taken
	// this round (fresh), every VM's bit (all), VMs by slot.
	pending           *bpf.Pending
	ready, fresh, all []uint64
	// seen, seenPrev: marks taken in this and the previous sweep period.
	seen, seenPrev []uint64
	bySlot         []*vmState
	visit          []*vmState // scratch: the sockets to receive from
	sweep          bool       // the next round visits every socket
	touched        []*vmState // credit or busy changed since the last grant
	holders        []*vmState // VMs with frames held in their socket ring (hold.go)
	holdSet        []*vmState // VMs whose socket is edge-triggered in the sleep's set (hold.go)
	dirtyQs        []*virtq   // virtqueues to flush at the end of the round
	txQueued       []*vmState // sockets with tx frames the kernel has not taken
	xtx            xdpTxState // XDP transmit (txpath.go)
	directs        []*vmState // VMs whose dedicated queue this worker serves (dedicated.go)

	// QoS: VMs with a limit on this worker, and the last bucket refill;
	// the clock as read in round clockRound (storm control, admitFlood).
	nlimited   int
	lastRefill time.Time
	clock      time.Time
	clockRound uint

	serving  uint32 // what ctr.serving holds, to store only on a change
	touched0 byte   // touchFrames' result, kept so its loads are not dropped
	// touchedAhead: the loads of the next visits' lines (receiveVMs).
	touchedAhead uint64
	roundWork    int // work other than frames done in this round (kicks)
	// floodCharge: copies of broadcast and multicast frames forward made
	// for the TX queue being served, which transmit charges to its VM.
	floodCharge int
	rr          uint // rounds: rotates the order VMs are served in
	// nbatches: rounds with work. It and rr are published to ctr every
	// timeEvery rounds and before a sleep (publishRounds), not per round:
	// a locked store each.
	nbatches uint64
	// Socket visits (and those that took frames) of this round, and of
	// the rounds that moved frames, published with the frame counts.
	roundVisits, roundTook, visits, visitsTook uint64

	// testHook, when set (tests only), runs before the worker serves a
	// VM's socket in each round: it can hold the worker there.
	testHook atomic.Pointer[func(slot uint32)]
}

type cmdKind int

const (
	cmdAddVM cmdKind = iota
	cmdRemoveVM
	cmdQueueReady
	cmdQueueStopped
	cmdSetLimits
	cmdAnnounce // send the VM's RARP (migrate.go)
	cmdStop
)

type command struct {
	kind   cmdKind
	vm     *VM
	ctr    *vmCounters
	slot   uint32
	vq     *vhostuser.Queue
	limits Limits
	pre    *directOpen // cmdQueueReady of a dedicated VM's first RX queue
	done   chan error
}

func newWorker(dp *Dataplane, index, queueID, nworkers int) (*worker, error) {
	wakeFD, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("worker for queue %d: eventfd: %w", queueID, err)
	}
	return &worker{
		dp: dp, index: index, queueID: queueID,
		vms: make(map[uint32]*vmState), fdb: newFDB(),
		cmds: make(chan command, 16), wakeFD: wakeFD, epfd: -1, kickEp: -1, kickOwner: make(map[int32]*virtq),
		inbox: make([]*mailbox, nworkers), outbox: make([]*mailbox, nworkers),
		sentTo: make([]bool, nworkers), wireMail: mailSource{held: make([]int, nworkers)}, stopped: make(chan struct{}),
		jumbo: newJumbo(dp.cfg.MTU, dp.cfg.FrameSize),
	}, nil
}

// send hands a command to the worker and waits for its answer, or for the
// worker to be gone.
func (w *worker) send(c command) error {
	c.done = make(chan error, 1)
	select {
	case w.cmds <- c:
	case <-w.stopped:
		return errWorkerStopped
	}
	w.wake()
	select {
	case err := <-c.done:
		return err
	case <-w.stopped:
		return errWorkerStopped
	}
}

var errWorkerStopped = errors.New("dataplane worker stopped")

func (w *worker) wake() {
	var one = [8]byte{1}
	unix.Write(w.wakeFD, one[:]) // EAGAIN only if the counter is saturated: already awake
}

// open runs on the worker's thread (in the NIC's namespace): it opens the
// queue with its primary socket and registers it as the flood socket.
func (w *worker) open() error {
	cfg := w.dp.cfg
	q, err := xsk.NewQueue(cfg.Ifindex, w.queueID,
		xsk.UMEMConfig{FrameSize: cfg.FrameSize, NumFrames: cfg.FramesPerQueue},
		xsk.QueueConfig{Mode: cfg.XSKMode, RxSize: 1024, TxSize: -1, MultiBuffer: w.jumbo != nil})
	if err != nil {
		return err
	}
	if err := w.dp.filter.RegisterFlood(uint32(w.queueID), q.Primary().FD()); err != nil {
		q.Close()
		return fmt.Errorf("register flood socket of queue %d: %w", w.queueID, err)
	}
	w.q, w.flood = q, q.Primary()
	if err := w.openEpoll(); err != nil {
		w.dp.filter.UnregisterFlood(uint32(w.queueID))
		q.Close()
		if w.epfd >= 0 {
			unix.Close(w.epfd)
		}
		if w.kickEp >= 0 {
			unix.Close(w.kickEp)
		}
		return err
	}
	if p, err := w.dp.filter.MapPending(w.queueID); err != nil {
		w.dp.log.Warn("no pending bitmap: the worker visits every socket each round", "queue", w.queueID, "err", err)
	} else {
		w.pending = p
		n := p.Words()
		w.ready, w.fresh, w.all = make([]uint64, n), make([]uint64, n), make([]uint64, n)
		w.seen, w.seenPrev = make([]uint64, n), make([]uint64, n)
	}
	w.q.Refill(0)
	w.openXDPTx()
	w.publishOwned()
	return nil
}

// run is the worker goroutine. It locks itself to an OS thread (and
// enters the NIC's namespace there) for its whole life.
func (w *worker) run(ready chan<- error) {
	defer close(w.stopped)
	runtime.LockOSThread()
	w.tid.Store(int32(unix.Gettid()))
	if err := w.placeSelf(); err != nil {
		unix.Close(w.wakeFD)
		ready <- err
		return
	}
	// Guest memory is a file the guest can shrink under us: touching it is
	// then SIGBUS, which this makes a panic that RecoverFault turns into a
	// broken device (see the guarded calls below).
	debug.SetPanicOnFault(true)
	// The thread is never unlocked: if it entered another namespace the
	// runtime must discard it when the goroutine ends.
	if w.dp.cfg.Netns != nil {
		if err := netns.Set(*w.dp.cfg.Netns); err != nil {
			unix.Close(w.wakeFD)
			ready <- fmt.Errorf("worker for queue %d: enter netns: %w", w.queueID, err)
			return
		}
	}
	if err := w.open(); err != nil {
		unix.Close(w.wakeFD)
		ready <- err
		return
	}
	ready <- nil
	defer w.close()

	busyPoll := w.dp.cfg.BusyPoll
	// The clock is read in one round of timeEvery (its two reads time that
	// round, for busy ns/frame), while idle only every idleCheckEvery empty
	// rounds (for the busy-poll deadline), and every publishEvery busy
	// rounds: no clock read per spin or per frame.
	const (
		publishEvery   = 1024
		idleCheckEvery = 16
	)
	epoch := time.Now()
	mono := func() int64 { return int64(time.Since(epoch)) } // one vDSO read
	busySince := mono()
	idleSince := int64(-1) // no idle deadline running
	var rounds, busyRounds, idleRounds uint
	var frames, timedNS, timedFrames uint64
	for {
		work, stop := w.commands()
		if stop {
			return
		}
		var moved int
		if rounds++; rounds%timeEvery == 0 {
			t0 := mono()
			moved = w.round()
			if moved > 0 {
				d := uint64(mono() - t0)
				timedNS += d
				timedFrames += uint64(moved)
				k := roundBucket(d / uint64(moved))
				w.ctr.roundNS[k].Add(d)
				w.ctr.roundFrames[k].Add(uint64(moved))
			}
			w.publishRounds()
		} else {
			moved = w.round()
		}
		work += moved + w.roundWork
		if work > 0 {
			frames += uint64(moved)
			idleSince, idleRounds = -1, 0
			if busyRounds++; busyRounds%publishEvery == 0 {
				now := mono()
				add(&w.ctr.busyNS, uint64(now-busySince))
				busySince = now
				w.publishTimes(frames, timedNS, timedFrames)
				w.publishInFlight()
				w.syncXDP()
			}
			continue
		}
		if idleRounds++; idleRounds%idleCheckEvery != 0 {
			continue
		}
		// Idle: the next round looks at every recently marked socket, so
		// a frame whose mark was taken before the kernel published it
		// waits at most idleCheckEvery idle rounds, and never into a
		// sleep (poll(2) covers every socket).
		w.sweep = true
		now := mono()
		if idleSince < 0 {
			idleSince = now
		}
		if time.Duration(now-idleSince) < busyPoll {
			continue
		}
		// Spinning counts as busy: the core was taken.
		add(&w.ctr.busyNS, uint64(now-busySince))
		w.publishTimes(frames, timedNS, timedFrames)
		w.publishInFlight()
		w.syncXDP()
		w.sleep()
		w.sweep = true // poll woke for some socket, whose mark may be gone
		woke := mono()
		add(&w.ctr.idleNS, uint64(woke-now))
		busySince, idleSince, idleRounds = woke, -1, 0
	}
}

// roundBuckets: roundBucket's range, up to 2^33 ns per frame.
const roundBuckets = 128

// roundBucket is the bucket of a round's ns per frame: quarter octaves
// (0-3 exact, then 4-4.99 is 4, 5-5.99 is 5, ..., 8-9.99 is 8, ...).
func roundBucket(nsPerFrame uint64) int {
	if nsPerFrame < 4 {
		return int(nsPerFrame)
	}
	l := bits.Len64(nsPerFrame)
	return min(4*(l-2)+int(nsPerFrame>>(l-3)&3), roundBuckets-1)
}

// roundBucketFloor is the least ns per frame of bucket k.
func roundBucketFloor(k int) uint64 {
	if k < 4 {
		return uint64(k)
	}
	return uint64(4+k%4) << (k/4 - 1)
}

// publishRounds publishes the round counts (the watchdog's sign of
// progress: a worker held inside a round stops them).
func (w *worker) publishRounds() {
	w.ctr.rounds.Store(uint64(w.rr))
	w.ctr.batches.Store(w.nbatches)
}

// publishTimes publishes the frame and busy-round counts the run loop
// keeps in registers, and the round counts.
func (w *worker) publishTimes(frames, timedNS, timedFrames uint64) {
	w.publishRounds()
	w.publishXDPTx()
	w.ctr.frames.Store(frames)
	w.ctr.busyRoundNS.Store(timedNS)
	w.ctr.busyRoundFrames.Store(timedFrames)
	w.ctr.visits.Store(w.visits)
	w.ctr.visitsTook.Store(w.visitsTook)
}

// commands applies pending control commands; it reports whether any was
// applied and whether the worker must stop.
func (w *worker) commands() (n int, stop bool) {
	if len(w.cmds) == 0 { // no select per round
		return 0, false
	}
	// Wire frames held over rounds (endRoundWire) leave before a command
	// can remove their VM's socket or stop the worker.
	w.flushWire()
	for {
		select {
		case c := <-w.cmds:
			n++
			if c.kind == cmdStop {
				c.done <- nil
				return n, true
			}
			c.done <- w.applyAndPublish(c)
		default:
			return n, false
		}
	}
}

func (w *worker) apply(c command) error {
	switch c.kind {
	case cmdAddVM:
		return w.addVM(c.vm, c.ctr)
	case cmdRemoveVM:
		return w.removeVM(c.slot)
	case cmdQueueReady:
		err := w.attachQueue(c.slot, c.vq)
		w.adoptDirect(c.slot, c.vq, c.pre, err == nil)
		return err
	case cmdQueueStopped:
		w.detachQueue(c.vq)
		return nil
	case cmdSetLimits:
		if st, ok := w.vms[c.slot]; ok {
			w.setLimits(st, c.limits)
		}
		return nil
	case cmdAnnounce:
		return w.announce(c.slot)
	}
	return fmt.Errorf("unknown worker command %d", c.kind)
}

func (w *worker) applyAndPublish(c command) error {
	defer w.publishOwned()
	return w.apply(c)
}

func (w *worker) addVM(vm *VM, ctr *vmCounters) error {
	if _, dup := w.vms[vm.Slot]; dup {
		return fmt.Errorf("queue %d: slot %d already in use", w.queueID, vm.Slot)
	}
	sock, err := w.q.NewSocket(xsk.SocketConfig{RxSize: w.vmRing(), TxSize: -1})
	if err != nil {
		return fmt.Errorf("open socket of VM %q on queue %d: %w", vm.Name, w.queueID, err)
	}
	// Transmit on a socket of its own that nothing waits on (vmState.tx).
	tx, err := w.q.NewSocket(xsk.SocketConfig{RxSize: -1, TxSize: w.vmRing()})
	if err != nil {
		sock.Close()
		return fmt.Errorf("open transmit socket of VM %q on queue %d: %w", vm.Name, w.queueID, err)
	}
	if err := w.epollAdd(sock.FD(), epSocket, int32(vm.Slot)); err != nil {
		tx.Close()
		sock.Close()
		return fmt.Errorf("VM %q: %w", vm.Name, err)
	}
	if err := w.dp.filter.RegisterSocket(vm.Slot, uint32(w.queueID), sock.FD()); err != nil {
		w.epollDel(sock.FD())
		tx.Close()
		sock.Close()
		return fmt.Errorf("register socket of VM %q on queue %d: %w", vm.Name, w.queueID, err)
	}
	st := &vmState{
		slot: vm.Slot, name: vm.Name, mac: vm.mac, vlan: vm.VLAN,
		allowSpoof: vm.AllowSpoofing, pairs: max(vm.QueuePairs, 1),
		sock: sock, tx: tx, ctr: ctr, mtu: vm.MTU,
		mail: mailSource{held: make([]int, len(w.outbox))},
	}
	w.setLimits(st, vm.Limits)
	st.credit = fairQuantum // what the first grant gives a VM without work
	ctr.socket.Store(sock)
	ctr.txSocket.Store(tx)
	w.vms[vm.Slot] = st
	if int(vm.Slot) >= len(w.bySlot) {
		w.bySlot = append(w.bySlot, make([]*vmState, int(vm.Slot)+1-len(w.bySlot))...)
	}
	w.bySlot[vm.Slot] = st
	if i := int(vm.Slot / 64); i < len(w.all) {
		w.all[i] |= 1 << (vm.Slot % 64)
		w.ready[i] |= 1 << (vm.Slot % 64) // frames may be waiting already
	}
	w.vmList = append(w.vmList, st)
	w.fdb.add(st)
	w.addDirect(st, vm)
	return nil
}

func (w *worker) removeVM(slot uint32) error {
	st, ok := w.vms[slot]
	if !ok {
		return nil
	}
	var errs []error
	if err := w.dp.filter.UnregisterSocket(slot, uint32(w.queueID)); err != nil {
		errs = append(errs, fmt.Errorf("unregister socket of VM %q on queue %d: %w", st.name, w.queueID, err))
	}
	w.removeDirect(st)
	w.dropHold(st)
	// Queues of a removed VM's port were stopped before; drop any left.
	for _, vq := range w.txqs {
		if vq.vm == st {
			w.dropKick(vq)
		}
	}
	w.txqs = removeVirtqs(w.txqs, st)
	w.txHot = removeVirtqs(w.txHot, st)
	w.txIdle = removeVirtqs(w.txIdle, st)
	w.rxqs = removeVirtqs(w.rxqs, st)
	st.rxqs = nil
	w.setLimits(st, Limits{}) // keeps the count of limited VMs right
	w.fdb.remove(st)
	delete(w.vms, slot)
	w.vmList = removeVM(w.vmList, st)
	w.touched = removeVM(w.touched, st)
	w.txQueued = removeVM(w.txQueued, st)
	w.bySlot[slot] = nil
	if i := int(slot / 64); i < len(w.all) {
		w.all[i] &^= 1 << (slot % 64)
		w.ready[i] &^= 1 << (slot % 64)
	}
	st.ctr.socket.Store(nil)
	st.ctr.txSocket.Store(nil)
	w.epollDel(st.sock.FD())
	if err := st.sock.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close socket of VM %q on queue %d: %w", st.name, w.queueID, err))
	}
	if err := st.tx.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close transmit socket of VM %q on queue %d: %w", st.name, w.queueID, err))
	}
	return errors.Join(errs...)
}

func (w *worker) attachQueue(slot uint32, q *vhostuser.Queue) error {
	st, ok := w.vms[slot]
	if !ok {
		return fmt.Errorf("queue %d: no VM in slot %d for virtqueue %d", w.queueID, slot, q.Index())
	}
	vq := &virtq{q: q, vm: st, kickFD: -1}
	if q.IsRX() {
		// Frames go to rxqs[0]: the queue that started last, so a
		// migration's destination takes over when its rings start.
		st.rxqs = append([]*virtq{vq}, st.rxqs...)
		w.rxqs = append(w.rxqs, vq)
		w.attachDirect(st, vq)
	} else {
		if err := w.addKick(vq); err != nil {
			return fmt.Errorf("VM %q: %w", st.name, err)
		}
		disableNotify(q) // busy-polling: no kicks until the worker sleeps
		w.txqs = append(w.txqs, vq)
		w.txHot = append(w.txHot, vq)
	}
	return nil
}

func (w *worker) detachQueue(q *vhostuser.Queue) {
	w.detachDirect(q) // closes a dedicated socket before the memory can go
	for _, list := range []*[]*virtq{&w.rxqs, &w.txqs} {
		for i, vq := range *list {
			if vq.q != q {
				continue
			}
			flush(q)
			*list = append((*list)[:i:i], (*list)[i+1:]...)
			if !q.IsRX() {
				w.dropTx(vq)
				w.dropKick(vq)
			}
			if q.IsRX() {
				st := vq.vm
				w.dropHold(st)
				for j, r := range st.rxqs {
					if r == vq {
						st.rxqs = append(st.rxqs[:j:j], st.rxqs[j+1:]...)
						break
					}
				}
			}
			return
		}
	}
}

func removeVirtqs(list []*virtq, st *vmState) []*virtq {
	out := list[:0:0]
	for _, vq := range list {
		if vq.vm != st {
			out = append(out, vq)
		}
	}
	return out
}

func removeVM(list []*vmState, st *vmState) []*vmState {
	out := make([]*vmState, 0, len(list))
	for _, v := range list {
		if v != st {
			out = append(out, v)
		}
	}
	return out
}

// round does one pass over every source of work and returns how many
// frames it moved; w.roundWork counts its other work (kicks).
func (w *worker) round() int {
	w.roundWork = 0
	if w.nlimited > 0 {
		w.refillLimits()
	}
	w.grantCredit()
	// Who goes first rotates, so no VM is always the one that finds the
	// stash, the tx ring or a mailbox used up by the others.
	w.rr++
	w.serve(0)
	w.q.Reap()
	n := w.receiveFlood()
	if h := w.testHook.Load(); h != nil {
		for _, vm := range w.vmList {
			w.serve(vm.slot)
			(*h)(vm.slot)
		}
	}
	if len(w.holders) > 0 {
		n += w.visitHolders()
	}
	n += w.receiveVMs()
	if len(w.directs) > 0 {
		n += w.serveDirects()
	}
	// Topped up after the receives, which gave their frames straight
	// back to the fill ring: before them, Refill filled the ring from
	// the allocator and the received frames found it full and went back
	// to the allocator, every frame twice through it.
	w.q.Refill(0)
	n += w.transmitAll()
	w.endRoundWire() // the round's wire frames, in one XDP call if enough
	// In copy mode one sendto moves a bounded number of frames: frames a
	// Transmit left queued need another kick even when the guest is quiet.
	if len(w.txQueued) > 0 {
		left := w.txQueued[:0]
		for _, vm := range w.txQueued {
			if vm.tx.TxPending() > 0 {
				vm.tx.Kick()
				w.roundWork++
			}
			if vm.tx.TxPending() > 0 {
				left = append(left, vm)
			} else {
				vm.txQueued = false
			}
		}
		clear(w.txQueued[len(left):])
		w.txQueued = left
	}
	for i, mb := range w.inbox {
		if mb != nil && i != w.index {
			n += mb.drain(w.deliverFromMailbox)
		}
	}
	w.flushAll()
	if n > 0 {
		w.visits += w.roundVisits
		w.visitsTook += w.roundTook
	}
	w.roundVisits, w.roundTook = 0, 0
	if n+w.roundWork > 0 {
		w.nbatches++
	}
	return n
}

// receiveVMs receives from the VM sockets that may have frames: those the
// filter marked, those not yet found empty since, and those marked in the
// last sweep periods again every sweepEvery rounds (and after an idle
// check), those poll(2) woke for, and all of them every sweepAllEvery
// rounds; without the bitmap, all of them every round.
func (w *worker) receiveVMs() int {
	vis := w.visit[:0]
	if w.pending == nil {
		vis = append(vis, w.vmList...)
	} else {
		period := w.rr%sweepEvery == 0
		if w.rr%sweepAllEvery == 0 {
			copy(w.ready, w.all)
		}
		if w.sweep || period {
			for i := range w.ready {
				w.ready[i] |= (w.seen[i] | w.seenPrev[i]) & w.all[i]
			}
			if period {
				w.seen, w.seenPrev = w.seenPrev, w.seen
				clear(w.seen)
			}
			w.sweep = false
		}
		for i := range w.ready {
			// Bit 0 is the flood socket, served anyway; the marks of
			// sockets already to be visited stay in the map until one is
			// found empty (then the next round takes them).
			f := w.pending.Take(i, w.ready[i]|^w.all[i]) & w.all[i]
			w.fresh[i] = f
			w.seen[i] |= f
			w.ready[i] |= f
			for b := w.ready[i]; b != 0; b &= b - 1 {
				vis = append(vis, w.bySlot[i*64+bits.TrailingZeros64(b)])
			}
		}
	}
	w.visit = vis
	nv := len(vis)
	if nv == 0 {
		return 0
	}
	n := 0
	k := int(w.rr % uint(nv))
	if nv > 1 {
		w.touchSock(vis[k])
		w.touchSock(vis[(k+1)%nv])
	}
	for j := range nv {
		vm := vis[k]
		if k++; k == nv {
			k = 0
		}
		if j+1 < nv {
			// The next visits' lines other CPUs write, loaded now so their
			// misses overlap this visit instead of following it: the
			// socket ring two visits ahead, and the next guest's ring when
			// its socket has frames (its index, touched a visit ago, is
			// in cache by now; an empty socket's guest is not read).
			if j+2 < nv {
				w.touchSock(vis[(k+1)%nv])
			}
			if next := vis[k]; w.sockPending(next) {
				w.touchGuest(next)
			}
		}
		got := w.receiveVM(vm)
		n += got
		w.roundVisits++
		if got > 0 {
			w.roundTook++
		}
		// Found empty (and not for want of credit): unmark, unless the
		// mark is from this round and the kernel may not have published
		// the frame yet.
		if i, bit := vm.slot/64, uint64(1)<<(vm.slot%64); got == 0 && vm.credit >= 2 && int(i) < len(w.ready) && w.fresh[i]&bit == 0 {
			w.ready[i] &^= bit
		}
	}
	clear(vis) // no stale pointers to removed VMs
	return n
}

// touchSock loads vm's socket ring lines a visit reads first (TouchRx).
func (w *worker) touchSock(vm *vmState) {
	p, x := vm.sock.TouchRx()
	w.touchedAhead += uint64(p) + x
}

// sockPending reports whether vm's socket ring has frames, as TouchRx sees it.
func (w *worker) sockPending(vm *vmState) bool {
	p, _ := vm.sock.TouchRx()
	return p != 0
}

// touchGuest loads the lines of vm's receive queue a push reads first.
func (w *worker) touchGuest(vm *vmState) {
	if len(vm.rxqs) > 0 {
		w.touchedAhead += uint64(vm.rxqs[0].q.TouchRx())
	}
}

// markReady makes the next round visit slot's socket.
func (w *worker) markReady(slot uint32) {
	if i := int(slot / 64); i < len(w.ready) {
		w.ready[i] |= (1 << (slot % 64)) & w.all[i]
	}
}

// receiveVM moves frames the filter steered to vm's socket into the guest.
func (w *worker) receiveVM(vm *vmState) int {
	// Each frame costs 1 unit to take and at least 1 descriptor to push:
	// take no more than the credit can serve; the rest waits in the
	// socket's ring (nothing is lost that the kernel did not count).
	// What the guest has no buffer for waits in the socket's ring (hold.go).
	n := vm.sock.Receive(w.descs[:w.rxTake(vm, w.rxBatch(min(batchSize, vm.credit/2)))])
	if n == 0 {
		return 0
	}
	vm.credit -= n
	vm.busy = true
	w.touch(vm)
	descs := w.descs[:n]
	if len(vm.rxqs) > 0 {
		w.pushBatch(vm, vm.rxqs[0], descs)
	} else {
		w.touchFrames(descs)
		for i := 0; i < n; {
			var frame []byte
			frame, i = w.rxFrame(descs, i)
			if frame = wireFrame(vm, frame); frame != nil {
				w.deliver(&vm.mail, vm, frame) // its own frames: its share of the mailbox
			}
		}
	}
	w.recycle(descs)
	return n
}

// touchFrames reads the first byte of every frame of a batch before any is
// used: the kernel wrote them on another CPU, and independent loads let
// the CPU fetch their cache lines in parallel instead of one miss per
// frame in turn.
func (w *worker) touchFrames(descs []xsk.Desc) {
	var x byte
	for _, d := range descs {
		if f := w.q.Frame(d); len(f) > 0 {
			x |= f[0]
		}
	}
	w.touched0 = x
}

// wireFrame checks a frame from the wire for vm and strips its tag
// (access port: the guest sees untagged frames); nil: dropped, counted.
func wireFrame(vm *vmState, frame []byte) []byte {
	if len(frame) < minFrameLen {
		vm.drop(DropMalformed)
		return nil
	}
	_, tagged, ok := frameVLAN(frame)
	if !ok {
		vm.drop(DropMalformed)
		return nil
	}
	if tagged {
		frame = stripTag(frame)
	}
	return frame
}

// pushBatch delivers a batch of vm's frames from the wire into vq, a
// receive queue this worker owns, under one fault guard (a fault in guest
// memory breaks the device: the frames not yet pushed are counted
// DropBroken) and one budget hand-over, not one of each per frame.
func (w *worker) pushBatch(vm *vmState, vq *virtq, descs []xsk.Desc) {
	w.serve(vm.slot)
	w.markDirty(vq) // drops are counted in the ring's stats too
	q := vq.q
	q.SetBudget(vm.credit)
	i, next := 0, 0
	defer func() {
		vm.credit = q.Budget()
		for i = next; i < len(descs); { // only after a recovered fault
			_, i = w.rxFrame(descs, i)
			vm.drop(DropBroken)
		}
	}()
	defer q.RecoverFault()
	// A guest that does not keep up leaves its ring without buffers for
	// many batches in a row: drop such a batch at once, without reading
	// its frames (their cache lines were written on the kernel's CPU).
	if ok, err := q.HasBuffers(); !ok {
		dropBatch(vm, q, descs, err)
		next = len(descs)
		return
	}
	w.touchFrames(descs)
	for i < len(descs) {
		var frame []byte
		frame, next = w.rxFrame(descs, i)
		i = next
		if frame = wireFrame(vm, frame); frame == nil {
			continue
		}
		if vm.rxLimited && !vm.admitRx(len(frame)) {
			vm.drop(DropRateLimited)
			continue
		}
		err := q.PushHdr(nil, frame)
		w.pushed(vm, err, len(frame))
		if err == vhostuser.ErrNoBuffers {
			// The ring ran out of buffers: the rest of the batch is
			// dropped at once, as DPDK's enqueue burst stops at the first
			// frame without buffers (a buffer the guest posts meanwhile
			// serves the next batch).
			dropBatch(vm, q, descs[next:], nil)
			next = len(descs)
			return
		}
	}
}

// dropBatch drops the frames of descs for vm, whose receive queue q has
// no buffers (err nil) or is broken, counting them in bulk where a Push
// of each would have counted them one by one. Malformed or rate-limited
// frames among them count as dropped for the ring: they were not read.
func dropBatch(vm *vmState, q *vhostuser.Queue, descs []xsk.Desc, err error) {
	n := framesIn(descs)
	if n == 0 {
		return
	}
	if err != nil {
		q.CountDrops(vhostuser.DropBroken, n)
		add(&vm.ctr.drops[DropBroken], uint64(n))
		return
	}
	q.CountDrops(vhostuser.DropNoBuffers, n)
	add(&vm.ctr.drops[DropVirtqueueFull], uint64(n))
}

// recycle gives received frames back to the kernel's fill ring; what the
// ring has no room for (Refill may have topped it up from the allocator
// meanwhile) goes back to the allocator, so no frame is ever lost.
func (w *worker) recycle(descs []xsk.Desc) {
	if n := w.q.FillDescs(descs); n < len(descs) {
		w.q.FreeDescs(descs[n:])
	}
}

// receiveFlood replicates broadcast and multicast frames from the wire to
// every VM of their VLAN.
func (w *worker) receiveFlood() int {
	n := w.flood.Receive(w.descs[:])
	if n == 0 {
		return 0
	}
	for i := 0; i < n; {
		var frame []byte
		frame, i = w.rxFrame(w.descs[:n], i)
		if len(frame) < minFrameLen {
			continue
		}
		vlan, tagged, ok := frameVLAN(frame)
		if !ok {
			continue
		}
		if tagged {
			frame = stripTag(frame)
		}
		for _, vm := range w.fdb.vlanMembers(vlan) {
			add(&vm.ctr.floodCopies, 1)
			w.deliver(&w.wireMail, vm, frame)
		}
	}
	w.recycle(w.descs[:n])
	return n
}

// deliver gives an untagged frame to vm's guest: into a receive queue this
// worker owns, or through the mailbox of the worker that owns one, in the
// share of it of src (the frame's sender, mailbox.go).
func (w *worker) deliver(src *mailSource, vm *vmState, frame []byte) {
	// The limit is charged where the frame enters vmq (this worker), not
	// where a mailbox takes it: each worker polices its own share.
	if vm.rxLimited && !vm.admitRx(len(frame)) {
		vm.drop(DropRateLimited)
		return
	}
	if len(vm.rxqs) > 0 {
		if !w.park(vm, frame) { // a full guest ring: it waits (hold.go)
			w.push(vm.rxqs[0], frame)
		}
		return
	}
	owner := w.dp.rxOwner(w.index, vm.pairs)
	if owner == w.index {
		vm.drop(DropGuestNotReady)
		return
	}
	if w.outbox[owner].put(src, vm.slot, frame) {
		w.sentTo[owner] = true
	} else {
		vm.drop(DropMailboxFull)
	}
}

func (w *worker) deliverFromMailbox(slot uint32, frame []byte) {
	vm, ok := w.vms[slot]
	if !ok {
		return // removed meanwhile
	}
	if len(vm.rxqs) == 0 {
		vm.drop(DropGuestNotReady)
		return
	}
	if !w.park(vm, frame) { // a full guest ring: it waits (hold.go)
		w.push(vm.rxqs[0], frame)
	}
}

// serve publishes the slot of the VM whose rings the worker is about to
// touch, for the watchdog's report.
func (w *worker) serve(slot uint32) {
	if w.serving != slot {
		w.serving = slot
		w.ctr.serving.Store(slot)
	}
}

// push gives a frame to a guest receive queue, the descriptors it walks
// paid from the receiving VM's credit (its ring decides the cost).
func (w *worker) push(vq *virtq, frame []byte) { w.pushHdr(vq, nil, frame) }

// pushHdr is push with a virtio-net header (nil: zeroed).
func (w *worker) pushHdr(vq *virtq, h *virtio.NetHdr, frame []byte) {
	vm := vq.vm
	w.serve(vm.slot)
	vm.busy = true
	w.touch(vm)
	w.markDirty(vq) // drops are counted in the ring's stats too
	vq.q.SetBudget(vm.credit)
	defer func() { vm.credit = vq.q.Budget() }()
	defer vq.q.RecoverFault()
	w.pushed(vm, vq.q.PushHdr(h, frame), len(frame))
}

// pushed counts the outcome of a Push of n bytes for vm.
func (w *worker) pushed(vm *vmState, err error, n int) {
	switch {
	case err == nil:
		// Counted here, published once per round (flushAll).
		vm.rxPkts++
		vm.rxBytes += uint64(n)
		vm.rxCopied += uint64(n)
	case errors.Is(err, vhostuser.ErrNoBuffers), errors.Is(err, vhostuser.ErrTooBig):
		vm.drop(DropVirtqueueFull)
	case errors.Is(err, vhostuser.ErrBudget):
		vm.drop(DropBudget)
	default: // the guest broke its ring; the port knows and reports it
		vm.drop(DropBroken)
	}
}

// transmit takes up to a batch of the guest's frames from vq: to local VMs
// directly, to the wire through the VM's socket (tagged with its VLAN).
func (w *worker) transmit(vq *virtq) int {
	vm := vq.vm
	// One SetBudget per round: Pop leaves a chain cut by the budget for the
	// next round, and drops it only if a whole budget could not finish it.
	vq.q.SetBudget(vm.credit)
	w.floodCharge = 0
	wire, popped := w.popBatch(vq)
	left := vq.q.Budget() - popped
	if w.floodCharge > 0 {
		left = vm.payFlood(left, w.floodCharge)
	}
	spent := left != vm.credit
	if spent {
		vm.credit = max(left, 0)
		vm.busy = true
		w.touch(vm)
	}
	if wire > 0 {
		w.sendWire(vm, wire)
	}
	// A chain no whole budget can finish is dropped without a pop: its
	// used entry needs the flush too, or the guest never gets it back.
	if popped > 0 || spent {
		w.markDirty(vq)
	}
	return popped
}

// sendWire sends w.txDescs[:wire]: deferred to the round's XDP call
// (txpath.go), or through the VM's transmit socket after the frames
// deferred before them, so that each VM's frames leave in order.
func (w *worker) sendWire(vm *vmState, wire int) {
	descs := w.txDescs[:wire]
	if w.xtx.q != nil {
		if w.deferWire(vm, descs) {
			return
		}
		w.flushWire()
	}
	w.sendSocket(vm, descs)
}

// sendSocket hands descs to the VM's transmit socket.
func (w *worker) sendSocket(vm *vmState, descs []xsk.Desc) {
	wire := len(descs)
	sent, err := vm.tx.Transmit(descs)
	add(&w.ctr.txSocket, uint64(framesIn(descs[:sent])))
	if sent < wire {
		// The tx ring is full (or the kernel refused): these frames are
		// lost, and their UMEM frames go back to the allocator.
		for _, d := range descs[sent:wire] {
			w.addrs[0] = d.Addr
			w.q.Free(w.addrs[:1])
		}
		add(&vm.ctr.drops[DropTxRingFull], uint64(framesIn(descs[sent:wire])))
	}
	if err != nil && sent == 0 {
		w.dp.log.Debug("transmit failed", "vm", vm.name, "queue", w.queueID, "err", err)
	}
	w.kickLater(vm)
}

// kickLater queues vm for another kick in the next rounds if its
// transmit socket kept frames the kernel has not taken yet.
func (w *worker) kickLater(vm *vmState) {
	if !vm.txQueued && vm.tx.TxPending() > 0 {
		vm.txQueued = true
		w.txQueued = append(w.txQueued, vm)
	}
}

// noFrame marks "no UMEM frame held" (frame addresses are offsets in the
// UMEM, far below it).
const noFrame = ^uint64(0)

// mayPop reports whether a pop batch that has popped this many frames
// may pop another (the wire batch is each loop's own bound). Local
// deliveries and drops give their frame back at once, so the pops are
// bounded as well as the wire batch; each frame handled costs a unit on
// top of its descriptors, and each copy of a flooded frame one more
// (floodCharge, paid by transmit), so the loop stops while the budget
// still pays them.
func (w *worker) mayPop(vq *virtq, popped int) bool {
	return popped < 2*batchSize && popped+w.floodCharge < vq.q.Budget()
}

// popBatch pops the guest's frames into UMEM frames: those for the wire
// end up in w.txDescs[:wire]. A fault in guest memory breaks only this
// guest's device and loses no UMEM frame: the frame being filled goes
// back to the stash, and the frames already in txDescs are still sent
// (the named results survive the recovered panic).
func (w *worker) popBatch(vq *virtq) (wire, popped int) {
	if vq.q.Features()&hostOffloads != 0 {
		return w.popBatchOffload(vq)
	}
	if w.jumbo != nil {
		return w.popBatchJumbo(vq)
	}
	held := noFrame
	defer func() {
		if held != noFrame {
			w.returnFrame(held)
		}
	}()
	defer vq.q.RecoverFault() // runs first: the panic is over when held goes back
	vm := vq.vm
	for wire < batchSize && w.mayPop(vq, popped) {
		if held == noFrame {
			a, ok := w.takeFrame()
			if !ok {
				break // no free UMEM frame: the guest's frames wait in its ring
			}
			held = a
		}
		// A frame that was not sent (dropped or delivered locally) is
		// reused for the next pop.
		addr := held
		buf := w.q.Buffer(addr)
		n, err := vq.q.Pop(buf[vlanTagLen:])
		if vm.popEnded(err) {
			break
		}
		popped++
		if !vm.txAdmitted(n) {
			continue
		}
		frame := buf[vlanTagLen : vlanTagLen+n]
		if !w.forward(vm, frame) {
			continue
		}
		w.txDescs[wire] = w.wireDesc(vm, addr, buf, n)
		wire++
		held = noFrame
	}
	return wire, popped
}

// isEmptyOrBudget: Pop found nothing to send, or the round's budget ended.
func isEmptyOrBudget(err error) bool {
	return errors.Is(err, vhostuser.ErrEmpty) || errors.Is(err, vhostuser.ErrBudget)
}

// popEnded reports whether a guest TX Pop's error ends the queue's turn:
// nothing to send, or the round's budget spent (the frame waits in the
// ring, or Pop dropped and counted a chain no budget can finish), or a
// broken device, counted here.
func (vm *vmState) popEnded(err error) bool {
	if err == nil {
		return false
	}
	if !isEmptyOrBudget(err) {
		vm.drop(DropBroken)
	}
	return true
}

// txAdmitted reports whether a popped frame of n bytes is within the VM's
// TX limit; a frame over it is counted as rate limited.
func (vm *vmState) txAdmitted(n int) bool {
	if vm.txLimited && !vm.admitTx(n) {
		vm.drop(DropRateLimited)
		return false
	}
	return true
}

// wireDesc is the tx descriptor of the frame buf[vlanTagLen:vlanTagLen+n]
// of the UMEM frame at addr, tagged with the VM's VLAN if it has one.
func (w *worker) wireDesc(vm *vmState, addr uint64, buf []byte, n int) xsk.Desc {
	if vm.vlan != 0 {
		insertTag(buf, vlanTagLen, n, vm.vlan)
		return xsk.Desc{Addr: addr, Len: uint32(n + vlanTagLen)}
	}
	return xsk.Desc{Addr: addr + vlanTagLen, Len: uint32(n)}
}

// forward switches one frame a guest sent: checks it, delivers it to the
// local VMs it is for, and reports whether it must also go to the wire.
func (w *worker) forward(vm *vmState, frame []byte) (toWire bool) {
	if len(frame) < minFrameLen {
		vm.drop(DropMalformed)
		return false
	}
	if !vm.allowSpoof && srcMAC(frame) != vm.mac {
		vm.drop(DropSpoofed)
		return false
	}
	if _, tagged, _ := frameVLAN(frame); tagged {
		// Access ports carry untagged frames only.
		vm.drop(DropMalformed)
		return false
	}
	dst := dstMAC(frame)
	if dst.IsMulticast() && vm.floodLimited && !w.admitFlood(vm) {
		return false // storm control: dropped whole, counted
	}
	vm.txPkts++ // published once per round (flushAll)
	vm.txBytes += uint64(len(frame))
	if !dst.IsMulticast() {
		if to := w.fdb.lookup(dst, vm.vlan); to != nil {
			w.deliver(&vm.mail, to, frame) // VM to VM: never touches the wire
			return false
		}
		return true
	}
	copies := 0
	for _, to := range w.fdb.vlanMembers(vm.vlan) {
		if to != vm {
			add(&to.ctr.floodCopies, 1)
			w.deliver(&vm.mail, to, frame)
			copies++
		}
	}
	// The sender pays a unit per copy (fairshare.go), here or into a
	// mailbox: transmit charges it to the VM's credit.
	w.floodCharge += copies
	return true
}

// takeFrame hands out a UMEM frame for guest TX from the worker's stash,
// refilled from the allocator a batch at a time, so an idle guest costs no
// allocator traffic.
func (w *worker) takeFrame() (uint64, bool) {
	if w.nstash == 0 {
		w.nstash = w.q.Alloc(w.stash[:])
		if w.nstash == 0 {
			return 0, false
		}
	}
	w.nstash--
	return w.stash[w.nstash], true
}

// returnFrame puts back a frame takeFrame handed out and that was not sent.
func (w *worker) returnFrame(addr uint64) {
	w.stash[w.nstash] = addr
	w.nstash++
}

// flushAll publishes used rings touched in this round, the counters of
// their VMs and the mailboxes.
func (w *worker) flushAll() {
	for _, vq := range w.dirtyQs {
		w.serve(vq.vm.slot)
		flush(vq.q)
		vq.dirty = false
		vq.vm.publish()
	}
	clear(w.dirtyQs)
	w.dirtyQs = w.dirtyQs[:0]
	for i, sent := range w.sentTo {
		if !sent {
			continue
		}
		w.sentTo[i] = false
		w.outbox[i].publish()
		if peer := w.dp.workers[i]; peer.asleep.Load() {
			peer.wake()
		}
	}
}

// markDirty queues vq for the flush at the end of the round.
func (w *worker) markDirty(vq *virtq) {
	if !vq.dirty {
		vq.dirty = true
		w.dirtyQs = append(w.dirtyQs, vq)
	}
}

// touch queues vm for the next grantCredit: its credit or busy flag
// changed in this round.
func (w *worker) touch(vm *vmState) {
	if !vm.touched {
		vm.touched = true
		w.touched = append(w.touched, vm)
	}
}

// The calls below write guest memory: each is guarded like push and
// transmit.
func flush(q *vhostuser.Queue) {
	defer q.RecoverFault()
	q.Flush()
}

func txReady(q *vhostuser.Queue) bool {
	defer q.RecoverFault()
	return q.Ready()
}

func enableNotify(q *vhostuser.Queue) bool {
	defer q.RecoverFault()
	pending, _ := q.EnableNotify()
	return pending
}

func disableNotify(q *vhostuser.Queue) {
	defer q.RecoverFault()
	q.DisableNotify()
}

// sleep waits in poll(2) for frames, guest kicks, mailbox frames or a
// command. Hot guest queues' notifications are enabled only while asleep.
func (w *worker) sleep() {
	if (len(w.holders) > 0 || len(w.holdSet) > 0) && !w.holdSleep() {
		return
	}
	// Idle queues' notifications are on already (txsched.go).
	for _, vq := range w.txHot {
		if enableNotify(vq.q) {
			w.disableNotify()
			return
		}
	}
	w.asleep.Store(true)
	defer w.asleep.Store(false)
	for i, mb := range w.inbox {
		if mb != nil && i != w.index && mb.pending() {
			w.disableNotify()
			return
		}
	}
	if len(w.directs) > 0 {
		w.pollDirects() // dedicated queues' fds change by the sleep
	} else {
		add(&w.ctr.polls, 1)
		w.waitEvents()
	}
	w.disableNotify()
}

// pollDirects is the sleep of a worker that serves dedicated queues: poll(2)
// over every fd, those of the dedicated queues included (their set
// depends on each queue's state at the time).
func (w *worker) pollDirects() {
	fds := w.pollfds[:0]
	fds = append(fds, unix.PollFd{Fd: int32(w.wakeFD), Events: unix.POLLIN})
	fds = append(fds, unix.PollFd{Fd: int32(w.flood.FD()), Events: unix.POLLIN})
	for _, vm := range w.vmList {
		fds = append(fds, unix.PollFd{Fd: int32(vm.sock.FD()), Events: unix.POLLIN})
	}
	firstKick := len(fds)
	timeout := sleepTimeout(w.unmuteKicks())
	for _, vq := range w.txqs {
		if fd := vq.q.KickFD(); fd >= 0 && !vq.kicks.muted {
			fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
		}
	}
	fds, pending := w.directPollFDs(fds)
	w.pollfds = fds
	defer w.directWoke()
	if pending {
		return
	}
	add(&w.ctr.polls, 1)
	if _, err := unix.Poll(fds, timeout); err == nil && fds[0].Revents&unix.POLLIN != 0 {
		var buf [8]byte
		unix.Read(w.wakeFD, buf[:])
		add(&w.ctr.wakeups, 1)
	}
	// Sockets poll found readable are visited next round, whether or not
	// their mark is still one the sweep covers.
	for i, vm := range w.vmList {
		if fds[2+i].Revents != 0 {
			w.markReady(vm.slot)
		}
	}
	// Drain only the kick fds poll found readable: a read per guest per
	// sleep is hundreds of syscalls with hundreds of guests.
	k := firstKick
	for _, vq := range w.txqs {
		if vq.q.KickFD() < 0 || vq.kicks.muted {
			continue
		}
		if fds[k].Revents != 0 {
			vq.q.AckKick()
			w.kickTaken(vq)
			w.kicked(vq)
		}
		k++
	}
}

// disableNotify turns the hot queues' notifications off after a sleep
// (the idle ones keep theirs, txsched.go).
func (w *worker) disableNotify() {
	for _, vq := range w.txHot {
		disableNotify(vq.q)
	}
}

// close runs on the worker's thread when it stops.
func (w *worker) close() {
	if w.pending != nil {
		w.pending.Close()
	}
	for _, vm := range w.vmList {
		w.removeVM(vm.slot)
	}
	if err := w.dp.filter.UnregisterFlood(uint32(w.queueID)); err != nil {
		w.dp.log.Warn("unregister flood socket", "queue", w.queueID, "err", err)
	}
	if err := w.q.Close(); err != nil {
		w.dp.log.Warn("close AF_XDP queue", "queue", w.queueID, "err", err)
	}
	unix.Close(w.epfd)
	unix.Close(w.kickEp)
	unix.Close(w.wakeFD)
}
