package frontend

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/virtio"
)

// device is one connection to a backend: the memory shared with it, the
// virtqueues in that memory and their eventfds. A reconnect builds a new
// one from scratch.
type device struct {
	conn     *conn
	mem      *guestMemory
	features uint64
	qps      []*queuePair
	fds      []int // eventfds, closed at teardown
	hupFD    int   // eventfd the watcher writes when the socket closes
	pollFDs  []unix.PollFd

	gone        atomic.Bool
	watcherDone chan struct{}
	hangOnce    sync.Once
	downOnce    sync.Once
}

type queuePair struct {
	index          int
	rx             *rxQueue
	tx             *txQueue
	rxCall, txCall int
	onFrame        func([]byte) // bound once: no closure per batch
	now            uint64       // CLOCK_MONOTONIC of the current rx batch

	replyBufs   [][]byte // ARP/ICMP answers built during an rx batch
	replyFrames [][]byte
	nreplies    int
}

const maxRepliesPerBatch = 32

// wantedFeatures are the virtio features the guest asks for.
func (g *Guest) wantedFeatures() uint64 {
	f := uint64(virtio.FVersion1 | virtio.FProtocolFeatures)
	if g.cfg.MrgRxbuf {
		f |= virtio.NetFMrgRxbuf
	}
	if g.cfg.EventIdx {
		f |= virtio.RingFEventIdx
	}
	if g.cfg.PackedRing {
		f |= virtio.FRingPacked
		if g.cfg.InOrder { // split rings are always driven out of order here
			f |= virtio.FInOrder
		}
	}
	if g.cfg.QueuePairs > 1 {
		f |= virtio.NetFMQ
	}
	return f
}

// setup runs the vhost-user handshake on a fresh connection.
func (g *Guest) setup(uc *net.UnixConn) (_ *device, err error) {
	d := &device{conn: newConn(uc, g.cfg.HandshakeTimeout), hupFD: -1, watcherDone: make(chan struct{})}
	defer func() {
		if err != nil {
			uc.Close()
			close(d.watcherDone)
			d.release()
		}
	}()
	c := d.conn
	offered, err := c.getU64(vhostuser.ReqGetFeatures)
	if err != nil {
		return nil, err
	}
	if offered&virtio.FVersion1 == 0 {
		return nil, fmt.Errorf("backend features %#x lack VERSION_1", offered)
	}
	want := g.wantedFeatures()
	if g.cfg.QueuePairs > 1 && offered&virtio.NetFMQ == 0 {
		return nil, fmt.Errorf("%d queue pairs asked, backend features %#x lack MQ", g.cfg.QueuePairs, offered)
	}
	if miss := want &^ offered &^ virtio.FProtocolFeatures; miss != 0 {
		g.log.Warn("backend does not offer requested features; going without", "missing", fmt.Sprintf("%#x", miss))
	}
	feats := want & offered
	if feats&virtio.FProtocolFeatures != 0 {
		pf, err := c.getU64(vhostuser.ReqGetProtocolFeatures)
		if err != nil {
			return nil, err
		}
		pf &= vhostuser.ProtocolFReplyAck | vhostuser.ProtocolFMQ
		if err := c.setU64(vhostuser.ReqSetProtocolFeatures, pf); err != nil {
			return nil, err
		}
		c.replyAck = pf&vhostuser.ProtocolFReplyAck != 0
		if g.cfg.QueuePairs > 1 {
			if pf&vhostuser.ProtocolFMQ == 0 {
				return nil, fmt.Errorf("%d queue pairs asked, backend lacks the MQ protocol feature", g.cfg.QueuePairs)
			}
			n, err := c.getU64(vhostuser.ReqGetQueueNum)
			if err != nil {
				return nil, err
			}
			if n < uint64(g.cfg.QueuePairs) {
				return nil, fmt.Errorf("%d queue pairs asked, backend has %d", g.cfg.QueuePairs, n)
			}
		}
	} else if g.cfg.QueuePairs > 1 {
		return nil, fmt.Errorf("%d queue pairs asked, backend lacks PROTOCOL_FEATURES", g.cfg.QueuePairs)
	}
	if _, err := c.call(vhostuser.ReqSetOwner, nil); err != nil {
		return nil, err
	}
	if err := c.setU64(vhostuser.ReqSetFeatures, feats); err != nil {
		return nil, err
	}
	d.features = feats
	if err := g.buildQueues(d); err != nil {
		return nil, err
	}
	regs, memFDs := d.mem.table()
	if _, err := c.call(vhostuser.ReqSetMemTable, encodeMemTable(regs), memFDs...); err != nil {
		return nil, err
	}
	for _, qp := range d.qps {
		for k, r := range []*ring{&qp.rx.ring, &qp.tx.ring} {
			call := qp.rxCall
			if k == 1 {
				call = qp.txCall
			}
			if err := g.setupVring(c, uint32(2*qp.index+k), r, call); err != nil {
				return nil, err
			}
		}
	}
	if feats&virtio.FProtocolFeatures != 0 {
		// With PROTOCOL_FEATURES rings start disabled.
		for i := range 2 * len(d.qps) {
			if err := c.setState(vhostuser.ReqSetVringEnable, uint32(i), 1); err != nil {
				return nil, err
			}
		}
	}
	// Kick the rx rings once: every buffer is already posted.
	for _, qp := range d.qps {
		if err := qp.rx.kick(); err != nil {
			return nil, err
		}
	}
	d.hupFD, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	d.fds = append(d.fds, d.hupFD)
	d.pollFDs = append(d.pollFDs, unix.PollFd{Fd: int32(d.hupFD), Events: unix.POLLIN})
	for _, qp := range d.qps {
		d.pollFDs = append(d.pollFDs, unix.PollFd{Fd: int32(qp.rxCall), Events: unix.POLLIN})
	}
	go d.watch()
	g.lastFeatures.Store(feats)
	g.connects.Add(1)
	g.log.Info("vhost-user device up", "features", fmt.Sprintf("%#x", feats), "queue_pairs", len(d.qps),
		"mrg_rxbuf", feats&virtio.NetFMrgRxbuf != 0, "event_idx", feats&virtio.RingFEventIdx != 0,
		"packed", feats&virtio.FRingPacked != 0, "in_order", feats&virtio.FInOrder != 0, "reply_ack", c.replyAck)
	return d, nil
}

func (g *Guest) setupVring(c *conn, idx uint32, r *ring, callFD int) error {
	if err := c.setU64(vhostuser.ReqSetVringCall, uint64(idx), callFD); err != nil {
		return err
	}
	if err := c.setState(vhostuser.ReqSetVringNum, idx, uint32(r.n)); err != nil {
		return err
	}
	if err := c.setState(vhostuser.ReqSetVringBase, idx, r.base()); err != nil {
		return err
	}
	addr := vhostuser.VringAddr{Index: idx, DescUser: userAddr(r.desc), UsedUser: userAddr(r.used), AvailUser: userAddr(r.avail)}
	if _, err := c.call(vhostuser.ReqSetVringAddr, encodeVringAddr(addr)); err != nil {
		return err
	}
	return c.setU64(vhostuser.ReqSetVringKick, uint64(idx), r.kickFD)
}

// queueMemory sizes the regions: rings in region 0, buffers spread.
func (g *Guest) queueMemory() []int {
	n := g.cfg.QueueSize
	dl, al, ul := ringBytes(n)
	ringPart := 2 * g.cfg.QueuePairs * (alignUp(dl, pageSize) + alignUp(al, pageSize) + alignUp(ul, pageSize))
	bufs := g.cfg.QueuePairs * n * (alignUp(g.cfg.RxBufSize, 64) + alignUp(g.cfg.TxBufSize, 64))
	per := bufs/g.cfg.MemRegions + 2*g.cfg.QueuePairs*(alignUp(max(g.cfg.RxBufSize, g.cfg.TxBufSize), 64))
	sizes := make([]int, g.cfg.MemRegions)
	for i := range sizes {
		sizes[i] = per
	}
	sizes[0] += ringPart
	return sizes
}

func (g *Guest) buildQueues(d *device) error {
	mem, err := newGuestMemory(g.queueMemory(), g.cfg.HugePages)
	if err != nil {
		return err
	}
	d.mem = mem
	mrg := d.features&virtio.NetFMrgRxbuf != 0
	for i := range g.cfg.QueuePairs {
		qp := &queuePair{index: i}
		if qp.rx, err = newRxQueue(mem, g.cfg.QueueSize, g.cfg.RxBufSize, mrg, d.features); err != nil {
			return fmt.Errorf("queue pair %d: %w", i, err)
		}
		if qp.tx, err = newTxQueue(mem, g.cfg.QueueSize, g.cfg.TxBufSize, d.features); err != nil {
			return fmt.Errorf("queue pair %d: %w", i, err)
		}
		qp.tx.noKick = g.cfg.NoTxKick
		for _, p := range []*int{&qp.rx.kickFD, &qp.tx.kickFD, &qp.rxCall, &qp.txCall} {
			fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
			if err != nil {
				return fmt.Errorf("eventfd: %w", err)
			}
			d.fds = append(d.fds, fd)
			*p = fd
		}
		qp.replyBufs = make([][]byte, maxRepliesPerBatch)
		for k := range qp.replyBufs {
			qp.replyBufs[k] = make([]byte, qp.tx.maxFrame())
		}
		qp.replyFrames = make([][]byte, maxRepliesPerBatch)
		qp.onFrame = func(f []byte) { g.rxFrame(qp, f) }
		d.qps = append(d.qps, qp)
	}
	return nil
}

// watch waits for the backend to close the socket: after the handshake it
// sends nothing, so any read result means it is gone.
func (d *device) watch() {
	defer close(d.watcherDone)
	var b [64]byte
	for {
		n, err := d.conn.uc.Read(b[:])
		if err != nil || n == 0 {
			break
		}
	}
	d.gone.Store(true)
	var one = [8]byte{1}
	_, _ = unix.Write(d.hupFD, one[:])
}

// hangup closes the socket; the watcher then marks the device gone.
func (d *device) hangup() {
	d.hangOnce.Do(func() { d.conn.uc.Close() })
}

// teardown stops senders, waits for the watcher and frees the device.
func (g *Guest) teardown(d *device) {
	d.downOnce.Do(func() {
		g.dev.CompareAndSwap(d, nil)
		d.hangup()
		<-d.watcherDone
		for _, qp := range d.qps {
			qp.tx.mu.Lock()
			qp.tx.closed = true
			qp.tx.mu.Unlock()
		}
		d.release()
	})
}

func (d *device) release() {
	for _, fd := range d.fds {
		unix.Close(fd)
	}
	d.fds = nil
	if d.mem != nil {
		d.mem.close()
	}
}
