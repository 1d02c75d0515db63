package dataplane

import (
	"fmt"
	"time"

	"github.com/vmq/vmq/dataplane/xsk"
)

// TxPath chooses how guest frames for the wire leave (Config.TxPath).
type TxPath string

const (
	// TxPathAuto sends a round's wire frames through XDP (xsk.XDPTx) when
	// there are at least XDPTxMinBatch and the NIC takes XDP frames
	// (ndo_xdp_xmit, re-checked every xdpCheckEvery), else through each
	// VM's AF_XDP transmit socket. Zero-copy queues keep the sockets.
	TxPathAuto TxPath = "auto"
	// TxPathXDP is TxPathAuto without the NIC feature check (the socket
	// still takes small rounds, jumbo frames and what a failed call left).
	TxPathXDP TxPath = "xdp"
	// TxPathSocket sends every frame through the VMs' sockets.
	TxPathSocket TxPath = "socket"
)

// DefaultXDPTxMinBatch is the fewest wire frames in a round that go
// through XDP: a BPF_PROG_RUN call costs ~20 µs whatever it carries, and
// on veth (BenchmarkTxPath, thread CPU ns per frame into an XDP_DROP sink)
// 16 frames per call cost about what the socket costs per frame (64 B:
// 1583-1616 vs 1469-1946; 1514 B: 1315-1455 vs 1529-1664), 32 about half,
// 8 more than the socket.
const DefaultXDPTxMinBatch = 16

// xdpCheckEvery: how often the dataplane asks the NIC whether it still
// takes XDP frames (a veth does only while its peer has XDP or GRO on);
// Config.XDPCheckEvery.
const xdpCheckEvery = time.Second

// ParseTxPath reads a TxPath ("" is auto).
func ParseTxPath(s string) (TxPath, error) {
	switch TxPath(s) {
	case "", TxPathAuto:
		return TxPathAuto, nil
	case TxPathXDP, TxPathSocket:
		return TxPath(s), nil
	}
	return "", fmt.Errorf("transmit path %q: want auto, xdp or socket", s)
}

// xdpTxState is a worker's XDP transmit: the round's wire frames wait in
// descs (their VMs in vms, same order) until the round's end, then leave
// in one call, or through their sockets when too few.
type xdpTxState struct {
	q     *xsk.XDPTxQueue // nil: socket path only
	on    bool            // the NIC takes XDP frames (last check), or forced
	min   int
	descs []xsk.Desc
	vms   []*vmState
	// resend and resendVMs: frames of a call the driver dropped, to go
	// again through their sockets (flushWire).
	resend    []xsk.Desc
	resendVMs []*vmState
	// failedGen: the check (Dataplane.xdpGen) during which a call failed:
	// the worker stays on the sockets until the next one.
	failedGen uint64
	// added: frames deferred in this round; held: rounds the deferred
	// frames have been held over (endRoundWire).
	added, held int
	warned      bool // a failure was logged
}

// openXDPTx sets up the worker's XDP transmit on its (locked, NIC
// namespace) thread.
func (w *worker) openXDPTx() {
	if w.dp.xdptx == nil {
		return
	}
	if w.q.ZeroCopy() && w.dp.cfg.TxPath == TxPathAuto {
		// A zero-copy socket transmits without a copy or an skb: what the
		// XDP path saves is the copy-mode skb path (not measured here:
		// no zero-copy NIC on the test machine).
		w.dp.log.Info("zero-copy queue: frames leave through the AF_XDP sockets (tx.path xdp to override)", "queue", w.queueID)
		return
	}
	tq, err := w.dp.xdptx.Queue(w.queueID)
	if err != nil {
		w.dp.log.Warn("no XDP transmit: frames leave through the AF_XDP sockets", "queue", w.queueID, "err", err)
		return
	}
	w.xtx = xdpTxState{q: tq, min: w.dp.cfg.XDPTxMinBatch, failedGen: ^uint64(0),
		descs: make([]xsk.Desc, 0, xsk.XDPTxMaxBatch), vms: make([]*vmState, 0, xsk.XDPTxMaxBatch),
		resend: make([]xsk.Desc, 0, xsk.XDPTxMaxBatch), resendVMs: make([]*vmState, 0, xsk.XDPTxMaxBatch)}
	if w.index == 0 {
		w.dp.startXDPWatch() // on this thread: its netlink socket is in the NIC's namespace
	}
	w.syncXDP()
}

// syncXDP takes the watcher's last answer (Dataplane.watchXDP): two
// atomic loads, at the points where the worker publishes its counters.
func (w *worker) syncXDP() {
	x := &w.xtx
	if x.q == nil {
		return
	}
	gen := w.dp.xdpGen.Load()
	on := w.dp.xdpOK.Load() && gen != x.failedGen
	if on != x.on {
		w.dp.log.Info("transmit path", "queue", w.queueID, "xdp", on, "min_batch", x.min)
		if on {
			w.ctr.txPath.Store(1)
		} else {
			w.ctr.txPath.Store(0)
		}
	}
	x.on = on
}

// startXDPWatch asks the NIC now and then every xdpCheckEvery, on a
// goroutine of its own, whether it takes XDP frames (a netlink round trip
// of ~20 µs, not on a worker). Called on a thread in the NIC's namespace.
// With tx path xdp it only ticks (a failed call's worker retries at the
// next tick).
func (dp *Dataplane) startXDPWatch() {
	var ndo *xsk.NdoXmitChecker
	if dp.cfg.TxPath != TxPathXDP {
		var err error
		if ndo, err = xsk.NewNdoXmitChecker(dp.cfg.Ifindex); err != nil {
			dp.log.Warn("cannot read the NIC's xdp-features (Linux >= 6.3): frames leave through the AF_XDP sockets", "err", err)
			return
		}
	}
	dp.checkXDP(ndo)
	dp.xdpStop, dp.xdpDone = make(chan struct{}), make(chan struct{})
	go dp.watchXDP(ndo, dp.xdpStop, dp.xdpDone)
}

func (dp *Dataplane) watchXDP(ndo *xsk.NdoXmitChecker, stop, done chan struct{}) {
	defer close(done)
	if ndo != nil {
		defer ndo.Close()
	}
	tick := time.NewTicker(dp.cfg.XDPCheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			dp.checkXDP(ndo)
		}
	}
}

// checkXDP publishes whether the NIC takes XDP frames (nil ndo: forced).
func (dp *Dataplane) checkXDP(ndo *xsk.NdoXmitChecker) {
	ok := true
	if ndo != nil {
		var err error
		if ok, err = ndo.Check(); err != nil {
			ok = false
			dp.log.Debug("xdp-features", "err", err)
		}
	}
	if dp.xdpOK.Swap(ok) != ok || dp.xdpGen.Load() == 0 {
		dp.log.Info("NIC takes XDP frames (ndo_xdp_xmit)", "ifindex", dp.cfg.Ifindex, "ok", ok)
	}
	dp.xdpGen.Add(1)
}

func (dp *Dataplane) stopXDPWatch() {
	if dp.xdpStop != nil {
		close(dp.xdpStop)
		<-dp.xdpDone
		dp.xdpStop = nil
	}
}

// deferWire queues a VM's wire frames for the round's XDP call; false
// when they must take the socket: a frame XDP cannot carry (multi-buffer,
// longer than a staging slot), or frames of the VM still in its socket's
// ring (they leave first).
func (w *worker) deferWire(vm *vmState, descs []xsk.Desc) bool {
	x := &w.xtx
	if !x.on || vm.tx.TxPending() > 0 {
		return false
	}
	for _, d := range descs {
		if d.Options != 0 || d.Len > xsk.XDPTxMaxFrame {
			return false
		}
	}
	if len(x.descs)+len(descs) > cap(x.descs) {
		w.flushWire()
	}
	for _, d := range descs {
		x.descs = append(x.descs, d)
		x.vms = append(x.vms, vm)
	}
	x.added += len(descs)
	return true
}

// xdpHoldRounds: the most rounds a saturated worker holds its wire frames
// over before the call, so that a call carries up to 3 batches (192
// frames): the call's page pool costs the same for 64 frames as for 256.
// Not 3 (calls of 256): a 4-round cycle aliases with the run loop's one
// timed round in 8 (timeEvery), and busy ns/frame then missed or doubled
// the call's round; 3 is prime to 8, so the timed rounds see every phase.
const xdpHoldRounds = 2

// endRoundWire sends the deferred frames at the round's end, unless the
// guests are sending full batches (the round added at least batchSize):
// then they wait for up to xdpHoldRounds more rounds, while a next
// round's batch still fits the call. A round that added fewer (the
// guests are not saturated) sends at once, so frames wait only where the
// guests' rings are full anyway.
func (w *worker) endRoundWire() {
	if !w.xtx.holdOver() {
		w.flushWire()
	}
}

// holdOver ends a round: whether its deferred frames wait for the next.
func (x *xdpTxState) holdOver() bool {
	added := x.added
	x.added = 0
	if len(x.descs) == 0 {
		return true // nothing to send
	}
	if added >= batchSize && x.held < xdpHoldRounds && len(x.descs)+batchSize <= cap(x.descs) {
		x.held++
		return true
	}
	return false
}

// flushWire sends the deferred frames: in one XDP call when there are at
// least the threshold, else (and whatever a failed call left) through
// each VM's socket, in order. The XDP call copies the frames, so their
// UMEM frames go back to the allocator right after it, except those the
// driver dropped (takeDropped): they go again through their sockets,
// which hold what the kernel cannot take yet (a full socket ring drops
// them as tx_ring_full, counted on the VM), so no frame the driver
// refused is lost unseen. Such a frame leaves after the frames of its VM
// that followed it in the call.
func (w *worker) flushWire() {
	x := &w.xtx
	n := len(x.descs)
	if n == 0 {
		return
	}
	done := 0
	if x.on && n >= x.min {
		for _, d := range x.descs {
			if !x.q.Add(w.q.Frame(d)) {
				break // cannot be (deferWire checked): the rest take the socket
			}
		}
		var err error
		done, err = x.q.Flush()
		add(&w.ctr.xdpCalls, 1)
		sent := w.takeDropped(done)
		add(&w.ctr.txXDP, uint64(sent))
		w.q.FreeDescs(x.descs[:sent])
		if err != nil {
			w.xdpFailed(err)
		}
	}
	w.sendSocketRuns(x.resend, x.resendVMs)
	w.sendSocketRuns(x.descs[done:n], x.vms[done:n])
	x.descs = x.descs[:0]
	clear(x.vms)
	x.vms = x.vms[:0]
	clear(x.resendVMs)
	x.resend, x.resendVMs = x.resend[:0], x.resendVMs[:0]
	x.held = 0
}

// takeDropped moves the frames of the call's first done the driver
// dropped (xsk.XDPTxQueue.Dropped) to x.resend, and the sent ones to the
// front of x.descs; it returns how many were sent.
func (w *worker) takeDropped(done int) int {
	x := &w.xtx
	lost, _ := x.q.Dropped() // drops it cannot name are lost, counted in publishXDPTx
	if len(lost) == 0 {
		return done
	}
	sent, j := 0, 0
	for i := 0; i < done; i++ {
		for j < len(lost) && int(lost[j]) < i {
			j++ // not in staged order: cannot be, skipped
		}
		if j < len(lost) && int(lost[j]) == i {
			j++
			x.resend = append(x.resend, x.descs[i])
			x.resendVMs = append(x.resendVMs, x.vms[i])
			add(&x.vms[i].ctr.xdpResent, 1)
			continue
		}
		x.descs[sent] = x.descs[i]
		sent++
	}
	add(&w.ctr.xdpResent, uint64(done-sent))
	return sent
}

// sendSocketRuns sends frames through their VMs' sockets (vms[i] is
// descs[i]'s), a run of one VM's frames at a time.
func (w *worker) sendSocketRuns(descs []xsk.Desc, vms []*vmState) {
	for i, n := 0, len(descs); i < n; {
		vm, j := vms[i], i+1
		for j < n && vms[j] == vm {
			j++
		}
		w.sendSocket(vm, descs[i:j])
		i = j
	}
}

// xdpFailed: a call failed (its frames left went to the sockets) or the
// driver dropped frames of it (xsk.ErrXmitDrops: sent again through the
// sockets): the NIC stopped taking XDP frames, or does not drain them
// as fast. The worker stays on the sockets until the next check.
func (w *worker) xdpFailed(err error) {
	add(&w.ctr.xdpFallbacks, 1)
	x := &w.xtx
	x.on, x.failedGen = false, w.dp.xdpGen.Load()
	w.ctr.txPath.Store(0)
	if !x.warned {
		x.warned = true
		w.dp.log.Warn("XDP transmit failed: frames leave through the AF_XDP sockets (logged once)", "queue", w.queueID, "err", err)
	}
}

// openXDPTx loads the XDP transmit program unless the socket path is
// asked for. Auto goes on without it (logged); xdp fails.
func (dp *Dataplane) openXDPTx() error {
	if dp.cfg.TxPath == TxPathSocket {
		return nil
	}
	nq := 0
	for _, q := range dp.cfg.Queues {
		nq = max(nq, q+1)
	}
	x, err := xsk.NewXDPTx(dp.cfg.Ifindex, nq)
	if err != nil {
		if dp.cfg.TxPath == TxPathXDP {
			return fmt.Errorf("dataplane: tx path xdp: %w", err)
		}
		dp.log.Warn("no XDP transmit (needs Linux >= 5.18, CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON): frames leave through the AF_XDP sockets", "err", err)
		return nil
	}
	if !x.Keeper() {
		dp.log.Warn("XDP transmit without its dispatcher keeper: every call waits two RCU grace periods")
	}
	// One line either way: whether a driver's drops are named (README:
	// Deploying on a real NIC, what the unit and the DaemonSet grant).
	if x.XmitWatched() {
		dp.log.Info("XDP transmit: frames a driver drops are named by the xdp tracepoints and sent again through the sockets")
	} else {
		dp.log.Warn("XDP transmit cannot name the frames a driver drops (no xdp tracepoints: tracefs mounted? CAP_PERFMON? perf_event_open allowed by seccomp?); they are lost unseen", "err", x.WatchErr())
	}
	dp.xdptx = x
	return nil
}

func (dp *Dataplane) closeXDPTx() {
	dp.stopXDPWatch()
	if dp.xdptx != nil {
		if err := dp.xdptx.Close(); err != nil {
			dp.log.Warn("close XDP transmit", "err", err)
		}
		dp.xdptx = nil
	}
}

// txPathName is the worker's transmit path for snapshots.
func (w *worker) txPathName() string {
	if w.ctr.txPath.Load() == 1 {
		return "xdp"
	}
	return "socket"
}

// publishXDPTx publishes the program's drop counters for snapshots.
func (w *worker) publishXDPTx() {
	if w.xtx.q != nil {
		st := w.xtx.q.Stats()
		w.ctr.xdpDrops.Store(st.BadLen + st.Overrun + st.NoSlot + st.XmitUnmatched)
	}
}
