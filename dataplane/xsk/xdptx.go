package xsk

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/internal/xdplive"
)

// XDP transmit limits (bpf/xdptx.c's TX_SLOT and TX_RING).
const (
	// XDPTxMaxFrame is the longest frame the XDP path takes: one staging
	// slot (a live frame holds up to PAGE_SIZE - 256 - skb_shared_info,
	// ~3.5 KiB on 4 KiB pages). Longer frames take the socket path.
	XDPTxMaxFrame = 2048
	// XDPTxMaxBatch is the most frames one flush sends.
	XDPTxMaxBatch = 256
	xdpTxMinFrame = 14
)

// ErrXmitDrops: the interface's driver dropped frames of a flush in its
// bulk transmit (ndo_xdp_xmit failed: e.g. a veth whose peer lost XDP,
// or a ring the receiver does not drain in time). XDPTxQueue.Dropped
// says which; XDPTxStats.XmitDrops counts them.
var ErrXmitDrops = errors.New("the driver dropped frames in its XDP bulk transmit")

// ErrXmitFull (which is also ErrXmitDrops): the driver took part of its
// bulks and dropped the rest, with no error: its ring was full (the
// receiver does not drain it as fast). Sending the dropped frames again
// later may succeed.
var ErrXmitFull = fmt.Errorf("%w: its ring was full", ErrXmitDrops)

// XDPTx transmits batches of frames out of one interface through XDP rather
// than the AF_XDP socket's copy-mode skb path: the frames are copied into
// a staging map (BPF_F_MMAPABLE, no system call), then one BPF_PROG_RUN
// call in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES, Linux >= 5.18)
// runs bpf/xdptx.c once per frame, which copies the frame into a live page
// and returns XDP_TX: the kernel sends them in bulks through the
// interface's ndo_xdp_xmit, with no skb, no softirq and no second copy per
// frame. Each call has a fixed cost (~20 µs: the call's page pool), so
// only large batches gain; small ones should take the socket.
//
// The program is held in the XDP dispatcher (xdplive.Keeper) so a call does not
// add and remove it (two synchronize_rcu). The interface must accept XDP
// frames (NdoXmit): a veth only while its peer has XDP or GRO on, and
// frames the driver refuses are dropped where BPF_PROG_RUN's caller
// cannot see them.
//
// One XDPTx serves every queue of the interface; each queue's XDPTxQueue
// belongs to one thread.
type XDPTx struct {
	objs    xdptxObjects
	keep    *xdplive.Keeper
	watch   []link.Link // the tracepoints that count the driver's drops (none: not counted)
	tids    []uint32    // each queue's thread, in tx_tids
	ifindex int
	nqueues int
	progID  uint32 // the program's id: the redirect errors of ours
	qmem    []byte // tx_queues, mmapped
	smem    []byte // tx_slots, mmapped
	// watchErr: why the tracepoints are not attached (tracefs not
	// mounted, perf_event_open refused: CAP_PERFMON, a seccomp filter).
	watchErr error
}

// NewXDPTx loads the program for ifindex with state for queues 0..nqueues-1.
func NewXDPTx(ifindex, nqueues int) (*XDPTx, error) {
	if ifindex <= 0 || nqueues <= 0 || nqueues > 1024 {
		return nil, fmt.Errorf("XDP transmit: bad ifindex %d or queue count %d", ifindex, nqueues)
	}
	spec, err := loadXdptx()
	if err != nil {
		return nil, fmt.Errorf("XDP transmit: load spec: %w", err)
	}
	spec.Maps["tx_queues"].MaxEntries = uint32(nqueues)
	spec.Maps["tx_slots"].MaxEntries = uint32(nqueues * XDPTxMaxBatch)
	spec.Maps["tx_tids"].MaxEntries = uint32(nqueues)
	x := &XDPTx{ifindex: ifindex, nqueues: nqueues, tids: make([]uint32, nqueues)}
	if err := spec.LoadAndAssign(&x.objs, nil); err != nil {
		return nil, fmt.Errorf("XDP transmit: load program: %w", err)
	}
	if info, ierr := x.objs.VmqXdpTx.Info(); ierr == nil {
		id, _ := info.ID()
		x.progID = uint32(id)
	}
	if x.qmem, err = mmapMap(x.objs.TxQueues); err == nil {
		x.smem, err = mmapMap(x.objs.TxSlots)
	}
	if err != nil {
		x.Close()
		return nil, fmt.Errorf("XDP transmit: %w", err)
	}
	// Best effort: without it every call waits two synchronize_rcu().
	x.keep, _ = xdplive.New(x.objs.VmqXdpTx)
	// Best effort too (needs tracefs): without them a driver's drops go
	// unnoticed. Frames refused at enqueue (no ndo_xdp_xmit) show in
	// xdp_redirect_err, frames a driver refused in its bulk in
	// xdp_devmap_xmit.
	for _, tp := range []struct {
		name string
		prog *ebpf.Program
	}{{"xdp_devmap_xmit", x.objs.VmqXdpTxXmit}, {"xdp_redirect_err", x.objs.VmqXdpTxRedirectErr}} {
		l, err := link.Tracepoint("xdp", tp.name, tp.prog, nil)
		if err != nil {
			x.closeWatch()
			x.watchErr = fmt.Errorf("tracepoint xdp:%s: %w", tp.name, err)
			break
		}
		x.watch = append(x.watch, l)
	}
	return x, nil
}

func (x *XDPTx) closeWatch() error {
	var errs []error
	for _, l := range x.watch {
		errs = append(errs, l.Close())
	}
	x.watch = nil
	return errors.Join(errs...)
}

// XmitWatched says whether the driver's drops in bulk transmits are
// counted (XDPTxStats.XmitDrops, ErrXmitDrops).
func (x *XDPTx) XmitWatched() bool { return len(x.watch) > 0 }

// WatchErr says why the driver's drops are not watched (nil when they are).
func (x *XDPTx) WatchErr() error { return x.watchErr }

// Keeper says whether the program is held in the XDP dispatcher.
func (x *XDPTx) Keeper() bool { return x.keep != nil }

// Close releases the program and maps; no queue may be used after it.
func (x *XDPTx) Close() error {
	var errs []error
	if x.keep != nil {
		errs = append(errs, x.keep.Close())
		x.keep = nil
	}
	errs = append(errs, x.closeWatch())
	for _, m := range [][]byte{x.qmem, x.smem} {
		if m != nil {
			errs = append(errs, unix.Munmap(m))
		}
	}
	x.qmem, x.smem = nil, nil
	errs = append(errs, x.objs.Close())
	return errors.Join(errs...)
}

func mmapMap(m *ebpf.Map) ([]byte, error) {
	size := int(m.MaxEntries()) * int(m.ValueSize())
	size = (size + unix.Getpagesize() - 1) &^ (unix.Getpagesize() - 1)
	mem, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap map %s: %w", m, err)
	}
	return mem, nil
}

// XDPTxStats are one queue's counters (the program's).
type XDPTxStats struct {
	Sent    uint64 // frames transmitted (XDP_TX)
	BadLen  uint64 // dropped: staged length out of range
	Overrun uint64 // dropped: a run past the staged frames
	NoSlot  uint64 // dropped: no slot, or the live frame could not be sized
	// The driver's bulk transmits in this queue's calls (XmitWatched):
	// frames it took, frames it dropped, bulks that failed, and dropped
	// frames Dropped could not name (0 unless the kernel's bulks change).
	XmitSent, XmitDrops, XmitErrs, XmitUnmatched uint64
}

// XDPTxQueue stages and flushes one queue's frames. It belongs to one
// thread, which must be in the interface's network namespace: the kernel
// resolves the interface index of each call in the caller's namespace.
type XDPTxQueue struct {
	x     *XDPTx
	st    *xdptxTxq // this queue's state, in the mmapped map
	slots []byte    // this queue's staging slots
	n     int
	// unmatched: XmitUnmatched before the last Flush.
	unmatched uint64
	data      [64]byte // data_in: the live frames' initial bytes (overwritten)
	ctx       xdplive.XDPMD
	attr      xdplive.RunAttr
}

// Queue returns the transmit state of queue q; call it on the thread that
// will flush, in the interface's network namespace (checked).
func (x *XDPTx) Queue(q int) (*XDPTxQueue, error) {
	if q < 0 || q >= x.nqueues {
		return nil, fmt.Errorf("XDP transmit: queue %d out of 0..%d", q, x.nqueues-1)
	}
	if err := ifindexHere(x.ifindex); err != nil {
		return nil, fmt.Errorf("XDP transmit: %w", err)
	}
	t := &XDPTxQueue{
		x:     x,
		st:    txqAt(x.qmem, q),
		slots: x.smem[q*XDPTxMaxBatch*XDPTxMaxFrame : (q+1)*XDPTxMaxBatch*XDPTxMaxFrame],
		ctx:   xdplive.XDPMD{DataEnd: 64, IngressIfindex: uint32(x.ifindex), RxQueueIndex: uint32(q)},
	}
	t.st.Ifindex, t.st.ProgId = uint32(x.ifindex), x.progID
	t.attr = xdplive.NewLiveRunAttr(x.objs.VmqXdpTx.FD(), t.data[:], &t.ctx, xdpTxBatchSize)
	// The tracepoint finds the queue by the flushing thread.
	if old := x.tids[q]; old != 0 {
		_ = x.objs.TxTids.Delete(old)
	}
	tid, qq := uint32(unix.Gettid()), uint32(q)
	if err := x.objs.TxTids.Put(tid, qq); err != nil {
		return nil, fmt.Errorf("XDP transmit: register thread of queue %d: %w", q, err)
	}
	x.tids[q] = tid
	return t, nil
}

// ifindexHere checks that ifindex names an interface in the calling
// thread's network namespace.
func ifindexHere(ifindex int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if _, err := ifnameOf(fd, ifindex); err != nil {
		return fmt.Errorf("ifindex %d is not in this thread's network namespace: %w", ifindex, err)
	}
	return nil
}

// Add stages a copy of frame; false when the batch is full or the frame's
// length is outside 14..XDPTxMaxFrame (send it through the socket).
func (t *XDPTxQueue) Add(frame []byte) bool {
	if t.n >= XDPTxMaxBatch || len(frame) < xdpTxMinFrame || len(frame) > XDPTxMaxFrame {
		return false
	}
	copy(t.slots[t.n*XDPTxMaxFrame:], frame)
	t.st.Len[t.n] = uint16(len(frame))
	t.n++
	return true
}

// Len is the number of frames staged.
func (t *XDPTxQueue) Len() int { return t.n }

// Flush runs the program over the staged frames in one BPF_PROG_RUN call
// (more if a signal interrupts it) and empties the stage. done is how many
// of them the program took, in order: sent, or dropped as malformed
// (counted in Stats). On an error the frames from done on were not sent;
// the caller may send them another way. The copies are made during the
// call: the caller's frames are free when Flush returns. If the driver
// dropped some of them (counted when XmitWatched), err wraps ErrXmitDrops
// and done is all: Dropped says which (their bytes are gone from the
// stage, the caller still has the frames).
func (t *XDPTxQueue) Flush() (done int, err error) {
	n := uint32(t.n)
	t.n = 0
	if n == 0 {
		return 0, nil
	}
	drops, errs := t.st.XmitDrops, t.st.XmitErrs
	defer func() {
		// Every frame the program returned is in a bulk by the end of the
		// call (the batch's xdp_do_flush): a frame the kernel dropped
		// unreported would shift the bulks' match, so Dropped is then not
		// to be trusted whole.
		if o, b := t.st.OrderN, t.st.BulkPos; o != b && t.x.XmitWatched() {
			t.st.XmitUnmatched += uint64(max(o, b) - min(o, b))
		}
		if d := t.st.XmitDrops - drops; d > 0 && err == nil {
			why := ErrXmitDrops
			if t.st.XmitErrs == errs {
				why = ErrXmitFull
			}
			err = fmt.Errorf("XDP transmit on ifindex %d queue %d: %d frames: %w", t.x.ifindex, t.ctx.RxQueueIndex, d, why)
		}
	}()
	t.st.N, t.st.Next = n, 0
	t.st.OrderN, t.st.BulkPos, t.st.LostN = 0, 0, 0
	t.unmatched = t.st.XmitUnmatched
	for t.st.Next < n {
		before := t.st.Next
		t.attr.Repeat = n - before
		errno := xdplive.Run(&t.attr)
		runtime.KeepAlive(t)
		switch {
		case errno == unix.EINTR: // a signal: go on from where it stopped
		case errno != 0:
			return int(min(t.st.Next, n)), fmt.Errorf("XDP transmit: BPF_PROG_RUN on ifindex %d queue %d: %w", t.x.ifindex, t.ctx.RxQueueIndex, errno)
		case t.st.Next == before:
			return int(before), fmt.Errorf("XDP transmit: program made no progress on queue %d", t.ctx.RxQueueIndex)
		}
	}
	return int(n), nil
}

// Dropped is the last Flush's frames the driver dropped, as indices into
// that batch in the order they were staged (read by the tracepoints from
// the kernel's bulk reports: a bulk's drops are its tail), and whether
// that is all of them: false when some drop could not be matched to a
// frame (XDPTxStats.XmitUnmatched) or the drops are not watched. The
// slice is the queue's, valid until the next Flush.
func (t *XDPTxQueue) Dropped() (idx []uint16, complete bool) {
	return t.st.LostIdx[:min(int(t.st.LostN), XDPTxMaxBatch)], t.x.XmitWatched() && t.st.XmitUnmatched == t.unmatched
}

// Stats reads the queue's counters (on the queue's thread).
func (t *XDPTxQueue) Stats() XDPTxStats {
	return XDPTxStats{Sent: t.st.Sent, BadLen: t.st.BadLen, Overrun: t.st.Overrun, NoSlot: t.st.NoSlot,
		XmitSent: t.st.XmitSent, XmitDrops: t.st.XmitDrops, XmitErrs: t.st.XmitErrs, XmitUnmatched: t.st.XmitUnmatched}
}

// xdpTxBatchSize is the kernel's live-frames batch (page pool refill and
// transmit flush); the lead's probes found 8, 16 and 64 alike.
const xdpTxBatchSize = 64
