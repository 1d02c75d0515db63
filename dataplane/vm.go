package dataplane

import (
	"sync/atomic"
	"time"

	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/xsk"
)

// vmCounters are one VM's counters on one worker. Only that worker writes
// them (add), anyone may read them (Load): single-writer atomics need no
// locked instruction on the hot path.
type vmCounters struct {
	rxPackets, rxBytes atomic.Uint64
	txPackets, txBytes atomic.Uint64
	floodCopies        atomic.Uint64
	// xdpResent: the VM's wire frames an XDP call's driver dropped,
	// sent again through its socket (txpath.go).
	xdpResent atomic.Uint64
	// offload.go: frames passed with their header, TSO frames cut and
	// the segments cut, checksums filled.
	oflPassed, oflSegmented, oflSegments, oflCsum atomic.Uint64
	rxCopied                                      atomic.Uint64 // frame bytes copied into the guest (push)
	drops                                         [NumDropReasons]atomic.Uint64
	socket                                        atomic.Pointer[xsk.Socket] // the VM's receive socket on this worker's queue
	txSocket                                      atomic.Pointer[xsk.Socket] // and its transmit socket
}

// add increments a counter that only the calling worker writes.
func add(c *atomic.Uint64, n uint64) { c.Store(c.Load() + n) }

// vmState is one VM as one worker sees it. Each worker has its own, so
// the hot path shares nothing between workers.
type vmState struct {
	slot       uint32
	name       string
	mac        MAC
	vlan       uint16
	allowSpoof bool
	pairs      int // the VM's queue pairs
	mtu        int // segments of its TSO frames are at most this (0: 1500)

	// Fair share (fairshare.go): work units left this round, and whether
	// the VM had any work this round.
	credit  int
	busy    bool
	touched bool // in worker.touched
	// floodDebt is what the copies of its flooded frames cost beyond its
	// credit (one frame may need more copies than a quantum pays): the
	// next grants pay it back first.
	floodDebt int
	// mail: the slots of this worker's mailboxes its frames hold
	// (mailbox.go): what it sends, and its own wire frames.
	mail mailSource
	// Frames counted in this round, published by flushAll: one atomic
	// store per counter and round, not per frame.
	rxPkts, rxBytes, txPkts, txBytes uint64
	rxCopied                         uint64
	txQueued                         bool // in worker.txQueued

	// QoS (qos.go): this worker's share of the VM's limits.
	rxLimited, txLimited, floodLimited bool
	lim                                vmLimits
	floodAt                            time.Time // lim.flood refilled up to here (admitFlood)

	sock *xsk.Socket // the VM's receive socket on this worker's NIC queue
	// tx: the VM's transmit socket there, apart from sock because sock is
	// in the sleep's epoll set: the kernel frees every sent frame's skb
	// with a wake-up of the sending socket's waiters (sock_wfree), a
	// locked walk of its wait queue per frame when it has one.
	tx   *xsk.Socket
	rxqs []*virtq // guest receive queues owned by this worker
	ctr  *vmCounters
	ded  *directRx // the dedicated queue's receive path (its owner worker only)

	// Frames held in sock's rx ring for a full guest ring (hold.go): in
	// worker.holders; in worker.holdSet (socket edge-triggered in the
	// sleep's set) with its kick fd+1 there (0: none).
	holding   bool
	inHoldSet bool
	holdKick  int
	// The holder's receive kicks that brought no buffer (kickmute.go),
	// and the frames delivered to it at the last one.
	holdKicks  spuriousKicks
	holdKickRx uint64
	heldSock   int           // frames left in sock's rx ring at the last visit (worker.heldSock)
	parked     []parkedFrame // frames parked for the guest's ring, oldest first
}

// virtq is a guest virtqueue owned by a worker.
type virtq struct {
	q     *vhostuser.Queue
	vm    *vmState
	dirty bool // pushed to in this batch: Flush at the end
	// TX only: rounds to skip before looking at the ring again, the
	// current backoff (see maxTxBackoff), and whether it is on the idle
	// list (txsched.go).
	skip, backoff int
	idle          bool
	kickFD        int           // TX only: the kick fd in the worker's epoll set, -1 none
	kicks         spuriousKicks // TX only: kicks that found no frames (kickmute.go)
}

func (vm *vmState) drop(r DropReason) { add(&vm.ctr.drops[r], 1) }

// publish adds the frames counted since the last call to the VM's
// counters.
func (vm *vmState) publish() {
	if vm.rxPkts > 0 {
		add(&vm.ctr.rxPackets, vm.rxPkts)
		add(&vm.ctr.rxBytes, vm.rxBytes)
		vm.rxPkts, vm.rxBytes = 0, 0
	}
	if vm.rxCopied > 0 {
		add(&vm.ctr.rxCopied, vm.rxCopied)
		vm.rxCopied = 0
	}
	if vm.txPkts > 0 {
		add(&vm.ctr.txPackets, vm.txPkts)
		add(&vm.ctr.txBytes, vm.txBytes)
		vm.txPkts, vm.txBytes = 0, 0
	}
}
