package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync/atomic"

	"github.com/vmq/vmq/dataplane/virtio"
)

// Errors of the device-side queue API.
var (
	// ErrEmpty: the guest has no frame to transmit (Pop).
	ErrEmpty = errors.New("vhost-user: no guest frame available")
	// ErrNoBuffers: the guest posted no (or too few) receive buffers (Push).
	ErrNoBuffers = errors.New("vhost-user: guest posted no receive buffers")
	// ErrTooBig: the frame does not fit the guest's buffer and MRG_RXBUF is off.
	ErrTooBig = errors.New("vhost-user: frame larger than the guest's receive buffer")
	// ErrBroken: the device was marked broken (a hostile or buggy guest).
	ErrBroken = errors.New("vhost-user: device broken")
	// ErrBudget: the descriptors this queue may walk until the next
	// SetBudget are used up (see SetBudget).
	ErrBudget = errors.New("vhost-user: descriptor budget of this round used up")
)

// errBudgetSpent is nextDesc's signal that the budget ran out mid-chain.
var errBudgetSpent = errors.New("budget spent")

// unlimitedBudget is the budget of a queue nobody set one on.
const unlimitedBudget = math.MaxInt

// DropReason says why a queue dropped a frame.
type DropReason int

const (
	DropNoBuffers DropReason = iota // RX: no guest buffer
	DropTooBig                      // RX: no room without MRG_RXBUF; TX: larger than the destination
	DropMalformed                   // TX: shorter than the virtio-net header, or empty
	DropBroken                      // the device is broken
	DropBudget                      // the round's descriptor budget ran out (SetBudget)
	DropBadHeader                   // TX: a virtio-net header PopHdr refused (virtio.NetHdr.Validate)
	NumDropReasons
)

var dropNames = [NumDropReasons]string{"no_buffers", "too_big", "malformed", "broken", "budget", "bad_header"}

func (r DropReason) String() string {
	if r < 0 || r >= NumDropReasons {
		return "unknown"
	}
	return dropNames[r]
}

// QueueStats are a queue's counters since it was created. Frames and
// bytes count delivered frames (without the virtio-net header).
type QueueStats struct {
	Frames, Bytes uint64
	Kicks         uint64 // kick eventfd reads with a non-zero count
	Calls         uint64 // call eventfd writes (done by the port's notifier)
	// CallsCoalesced counts Flushes that asked for a call while one was
	// still pending: the notifier's one write serves both.
	CallsCoalesced uint64
	Drops          [NumDropReasons]uint64
}

const numStats = 4 + int(NumDropReasons)

// desc is one descriptor, read once from guest memory (the guest may
// rewrite it under us; only this copy is checked and used).
type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

// chain walks one descriptor chain, direct or through one indirect table.
type chain struct {
	table    []byte
	size     uint32 // entries in table
	idx      uint16
	count    uint32 // descriptors visited in table
	more     bool
	indirect bool
}

// Queue is one virtqueue of a port, seen from the device. Even indices
// are the guest's receive queues (the back-end Pushes frames into them),
// odd ones its transmit queues (the back-end Pops frames from them).
//
// Between Handler.QueueReady and the return of Handler.QueueStopped, the
// data-path methods (Push, Pop, Flush, EnableNotify, DisableNotify,
// AckKick, and KickFD and Size, which change between handovers) may be
// called only by the one goroutine that owns the queue. Index, IsRX,
// Pair, Port and Stats are safe from any goroutine.
type Queue struct {
	port  *Port
	index int

	// Ring layout, fixed while the queue runs.
	num       uint32
	mask      uint16
	desc      []byte
	avail     []byte
	used      []byte
	availWord int  // offset in avail of the aligned word holding avail.idx
	availSh   uint // shift of avail.idx in that word
	usedEvent int  // offset of used_event in avail (EVENT_IDX)
	availEvt  int  // offset of avail_event in used (EVENT_IDX)
	mem       *memTable
	hdrLen    int
	features  uint64 // negotiated, as of ringLayout
	mrg       bool
	eventIdx  bool
	indirect  bool
	packed    bool        // VIRTIO_F_RING_PACKED: see packed.go
	pk        packedState // the packed ring's state
	kickFD    int
	callFD    int       // written by the notifier only; see notifier
	nt        *notifier // nil: calls are requested but nobody writes them
	// Dirty logging while the front-end migrates the guest (nil: off):
	// bufLog for the receive buffers written, usedLog for the used ring
	// at usedLogAddr (VHOST_VRING_F_LOG).
	bufLog, usedLog *dirtyLog
	usedLogAddr     uint64
	nbGPA           [2]uint64 // guest addresses of num_buffers, while logging

	// Data-path state, owned by the worker.
	lastAvail uint16 // next avail entry to consume
	availIdx  uint16 // avail.idx as last read
	usedIdx   uint16 // next used entry to fill (unpublished beyond usedPub)
	usedPub   uint16 // used.idx as last published
	usedFlags uint16
	broken    bool
	// portBroken mirrors the port's broken flag (markBroken, reset) on
	// the line of the fields above: every Push and Pop checks it, and a
	// worker serving many guests found the port's own line out of cache
	// (5% of its samples with traffic to 256 VMs).
	portBroken atomic.Bool
	dirty      bool // st changed since the last publish
	// budget is how many descriptors Push and Pop may still walk;
	// budgetGiven what the last SetBudget gave (see SetBudget).
	budget, budgetGiven int
	flushes             uint64
	ch                  chain
	nb                  [2][]byte              // where num_buffers landed in guest memory
	hb                  [virtio.NetHdrLen]byte // the header PushHdr writes, PopHdr reads
	ev                  [8]byte
	st                  QueueStats

	pub [numStats]atomic.Uint64 // st as of the last Flush, for Stats

	callPending atomic.Bool   // set by Flush, cleared by the notifier
	calls       atomic.Uint64 // call eventfd writes, by the notifier

	cfg vringConfig // control goroutine only
}

// Index is the virtqueue index (2*pair for RX, 2*pair+1 for TX).
func (q *Queue) Index() int { return q.index }

// IsRX reports whether this is a guest receive queue (Push), not a
// transmit queue (Pop).
func (q *Queue) IsRX() bool { return q.index%2 == 0 }

// Pair is the queue pair this queue belongs to.
func (q *Queue) Pair() int { return q.index / 2 }

// Port is the port the queue belongs to.
func (q *Queue) Port() *Port { return q.port }

// Features are the virtio features the front-end negotiated for the
// rings the queue runs on. Owner only (they change between handovers).
func (q *Queue) Features() uint64 { return q.features }

// Size is the number of ring entries.
func (q *Queue) Size() int { return int(q.num) }

// KickFD is the eventfd the guest writes when it posts buffers (while
// notifications are enabled), or -1 when the guest gave none (then the
// worker must poll). Poll it for readability when idle, then AckKick.
func (q *Queue) KickFD() int { return q.kickFD }

// Stats returns the counters as of the last Flush. Safe from any goroutine.
func (q *Queue) Stats() QueueStats {
	var s QueueStats
	s.Frames = q.pub[0].Load()
	s.Bytes = q.pub[1].Load()
	s.Kicks = q.pub[2].Load()
	s.Calls = q.calls.Load()
	s.CallsCoalesced = q.pub[3].Load()
	for i := range s.Drops {
		s.Drops[i] = q.pub[4+i].Load()
	}
	return s
}

// publishStats stores the counters that changed since the last call:
// each store is a locked instruction, and most of them (kicks, drop
// reasons) stay the same from one flush to the next.
func (q *Queue) publishStats() {
	q.publishStat(0, q.st.Frames)
	q.publishStat(1, q.st.Bytes)
	q.publishStat(2, q.st.Kicks)
	q.publishStat(3, q.st.CallsCoalesced)
	for i, v := range q.st.Drops {
		q.publishStat(4+i, v)
	}
}

func (q *Queue) publishStat(i int, v uint64) {
	if q.pub[i].Load() != v { // only the owner stores: a plain read on amd64
		q.pub[i].Store(v)
	}
}

// ringLayout checks and maps the rings: sizes by the negotiated features,
// alignment as virtio 1.1 requires (desc 16, avail 2, used 4), each ring
// contiguous in one region.
func (q *Queue) ringLayout(mem *memTable, features uint64, num uint32, descUA, availUA, usedUA uint64) error {
	if num == 0 || num > virtio.MaxQueueSize || num&(num-1) != 0 {
		return fmt.Errorf("ring size %d: want a power of 2 up to %d", num, virtio.MaxQueueSize)
	}
	eventIdx := features&virtio.RingFEventIdx != 0
	q.packed = features&virtio.FRingPacked != 0
	if q.packed {
		if err := q.packedLayout(mem, num, descUA, availUA, usedUA); err != nil {
			return err
		}
		q.num, q.mask = num, uint16(num-1)
		q.mem = mem
		q.hdrLen = virtio.NetHdrLenFor(features)
		q.mrg = features&virtio.NetFMrgRxbuf != 0
		q.eventIdx = eventIdx
		q.indirect = features&virtio.RingFIndirectDesc != 0
		return nil
	}
	availLen, usedLen := uint64(virtio.AvailRingSize(int(num))), uint64(virtio.UsedRingSize(int(num)))
	if !eventIdx {
		availLen -= 2
		usedLen -= 2
	}
	var err error
	if q.desc, err = mem.user(descUA, uint64(virtio.DescTableSize(int(num)))); err != nil {
		return fmt.Errorf("descriptor table at %#x: %w", descUA, err)
	}
	if q.avail, err = mem.user(availUA, availLen); err != nil {
		return fmt.Errorf("available ring at %#x: %w", availUA, err)
	}
	if q.used, err = mem.user(usedUA, usedLen); err != nil {
		return fmt.Errorf("used ring at %#x: %w", usedUA, err)
	}
	if addrOf(q.desc)%16 != 0 || addrOf(q.avail)%2 != 0 || addrOf(q.used)%4 != 0 {
		return fmt.Errorf("misaligned rings: desc %#x avail %#x used %#x", descUA, availUA, usedUA)
	}
	if addrOf(q.avail)%4 == 0 {
		q.availWord, q.availSh = 0, 16
	} else {
		q.availWord, q.availSh = 2, 0
	}
	q.num, q.mask = num, uint16(num-1)
	q.usedEvent = 4 + 2*int(num)
	q.availEvt = 4 + 8*int(num)
	q.mem = mem
	q.hdrLen = virtio.NetHdrLenFor(features)
	q.features = features
	q.mrg = features&virtio.NetFMrgRxbuf != 0
	q.eventIdx = eventIdx
	q.indirect = features&virtio.RingFIndirectDesc != 0
	return nil
}

// start sets the indices for a queue about to be handed to a worker. A
// used.idx that disagrees with the base means buffers were in flight when
// the previous back-end stopped; like DPDK, resume from used.idx.
func (q *Queue) start(base uint16) error {
	q.usedFlags = 0
	q.broken = false
	q.ch = chain{}
	q.SetBudget(-1)
	if q.packed {
		return q.packedStart(base)
	}
	used := uint16(atomicLoad32(q.used, 0) >> 16)
	if used != base {
		base = used
	}
	q.lastAvail, q.availIdx, q.usedIdx, q.usedPub = base, base, base, base
	return nil
}

// SetBudget bounds the work a guest's ring can cost its worker: Push and
// Pop may walk n more descriptors (direct ones, indirect descriptors and
// each entry of their tables, zero-length ones and ones walked for a
// chain that was then rolled back all count 1) until the next SetBudget;
// n < 0 means no bound (the default). When the budget runs out, Push rolls
// the ring back, drops the frame and returns ErrBudget; Pop leaves the
// chain for the next round and returns ErrBudget, unless that chain alone
// used up a whole budget (it can never be sent), which Pop consumes and
// drops. Owner only.
func (q *Queue) SetBudget(n int) {
	if n < 0 {
		n = unlimitedBudget
	}
	q.budget, q.budgetGiven = n, n
}

// Budget reports the descriptors Push and Pop may still walk (near
// math.MaxInt when unbounded). Owner only.
func (q *Queue) Budget() int { return q.budget }

// RecoverFault, deferred by a worker around its work on q, turns a
// memory fault in guest memory into a broken device instead of a crashed
// daemon. A front-end can shrink the file behind a region after we
// mapped it; touching it is then SIGBUS, which the Go runtime delivers as
// a panic only to goroutines that called debug.SetPanicOnFault(true).
// Other panics are re-raised.
func (q *Queue) RecoverFault() {
	r := recover()
	if r == nil {
		return
	}
	if f, ok := r.(interface{ Addr() uintptr }); ok {
		q.fail("memory fault at %#x in guest memory: %v", f.Addr(), r)
		return
	}
	panic(r)
}

// fail marks the device broken; the reason is logged once by the port.
func (q *Queue) fail(format string, args ...any) error {
	q.broken = true
	reason := fmt.Sprintf("queue %d: ", q.index) + fmt.Sprintf(format, args...)
	if q.port != nil {
		q.port.markBroken(reason)
	}
	return fmt.Errorf("%w: %s", ErrBroken, reason)
}

func (q *Queue) isBroken() bool {
	return q.broken || q.portBroken.Load()
}

// haveAvail reports whether an avail entry is ready, reading avail.idx
// (one atomic load) only when the cached value is used up.
func (q *Queue) haveAvail() (bool, error) {
	if q.packed {
		return q.packedHaveAvail(), nil
	}
	if q.lastAvail != q.availIdx {
		return true, nil
	}
	idx := uint16(atomicLoad32(q.avail, q.availWord) >> q.availSh)
	if uint32(idx-q.lastAvail) > q.num {
		return false, q.fail("avail idx jumped from %d to %d, ring size %d", q.lastAvail, idx, q.num)
	}
	q.availIdx = idx
	return idx != q.lastAvail, nil
}

func (q *Queue) availHead() uint16 {
	if q.packed { // the head's slot; its buffer id is in its chain's last descriptor
		q.lastAvail++
		return (q.lastAvail - 1) & q.mask
	}
	o := 4 + 2*int(q.lastAvail&q.mask)
	q.lastAvail++
	return binary.LittleEndian.Uint16(q.avail[o:])
}

func (q *Queue) putUsed(id uint16, n uint32) {
	if q.packed {
		q.packedPutUsed(n)
		return
	}
	q.putUsedSplit(id, n)
}

func (q *Queue) putUsedSplit(id uint16, n uint32) {
	o := 4 + 8*int(q.usedIdx&q.mask)
	used := q.used[o : o+8]
	binary.LittleEndian.PutUint32(used, uint32(id))
	binary.LittleEndian.PutUint32(used[4:], n)
	q.usedIdx++
}

// singleDesc reads the next available descriptor once, for the fast
// paths: its buffer if it is direct, has exactly the WRITE flag
// wantWrite asks for, holds at least min bytes and lies in one memory
// region; ok=false otherwise (nothing consumed: the general path then
// judges the chain). id is the split ring's head or the packed ring's
// buffer id. The caller checked haveAvail (on a packed ring its atomic
// load of the flags orders the reads here).
func (q *Queue) singleDesc(wantWrite bool, min uint32) (id uint16, buf []byte, ok bool) {
	var raw []byte
	var flags uint16
	if q.packed {
		raw = q.desc[int(q.lastAvail&q.mask)*virtio.PackedDescSize:][:virtio.PackedDescSize]
		id, flags = binary.LittleEndian.Uint16(raw[12:]), binary.LittleEndian.Uint16(raw[14:])
		if uint32(id) >= q.num {
			return 0, nil, false
		}
	} else {
		id = binary.LittleEndian.Uint16(q.avail[4+2*int(q.lastAvail&q.mask):])
		if uint32(id) >= q.num {
			return 0, nil, false
		}
		raw = q.desc[int(id)*virtio.DescSize:][:virtio.DescSize]
		flags = binary.LittleEndian.Uint16(raw[12:])
	}
	want := uint16(0)
	if wantWrite {
		want = virtio.DescFWrite
	}
	l := binary.LittleEndian.Uint32(raw[8:])
	if flags&(virtio.DescFNext|virtio.DescFIndirect|virtio.DescFWrite) != want || l < min {
		return 0, nil, false
	}
	b, err := q.mem.guest(binary.LittleEndian.Uint64(raw[0:]), l)
	if err != nil || uint32(len(b)) != l {
		return 0, nil, false
	}
	return id, b, true
}

// useSingle consumes the descriptor singleDesc returned and records it
// used with n bytes written; it costs one descriptor of the budget.
func (q *Queue) useSingle(id uint16, n uint32) {
	q.budget--
	if q.packed {
		q.pk.pos, q.pk.ringCount, q.pk.ringDone, q.pk.id = q.lastAvail, 1, true, id
		q.packedPutUsed(n) // advances lastAvail
		return
	}
	q.lastAvail++
	q.putUsedSplit(id, n)
}

func (q *Queue) startChain(head uint16) error {
	if q.packed {
		q.packedStartChain()
		return nil
	}
	if uint32(head) >= q.num {
		return q.fail("avail entry %d: head descriptor %d beyond ring size %d", q.lastAvail-1, head, q.num)
	}
	c := &q.ch // field by field: cheaper than a struct copy on the hot path
	c.table, c.size, c.idx, c.count, c.more, c.indirect = q.desc, q.num, head, 0, true, false
	return nil
}

// nextDesc returns the chain's next descriptor. Loops and over-long
// chains are caught by counting: a chain visits at most size entries.
func (q *Queue) nextDesc() (d desc, ok bool, err error) {
	if q.packed {
		return q.packedNextDesc()
	}
	c := &q.ch
	for c.more {
		if q.budget <= 0 {
			return d, false, errBudgetSpent
		}
		q.budget--
		if c.count >= c.size {
			return d, false, q.fail("descriptor chain longer than its table (%d entries): a loop", c.size)
		}
		c.count++
		raw := c.table[int(c.idx)*virtio.DescSize:][:virtio.DescSize]
		d = desc{
			addr:  binary.LittleEndian.Uint64(raw[0:]),
			len:   binary.LittleEndian.Uint32(raw[8:]),
			flags: binary.LittleEndian.Uint16(raw[12:]),
			next:  binary.LittleEndian.Uint16(raw[14:]),
		}
		if d.flags&virtio.DescFIndirect != 0 {
			switch {
			case !q.indirect:
				return d, false, q.fail("indirect descriptor without INDIRECT_DESC")
			case c.indirect:
				return d, false, q.fail("nested indirect descriptor table")
			case d.flags&virtio.DescFNext != 0:
				return d, false, q.fail("indirect descriptor with NEXT flag")
			case d.len == 0 || d.len%virtio.DescSize != 0 || d.len/virtio.DescSize > virtio.MaxQueueSize:
				return d, false, q.fail("indirect table of %d bytes", d.len)
			}
			tbl, err := q.mem.guestAll(d.addr, d.len)
			if err != nil {
				return d, false, q.fail("indirect table at %#x+%d: %v", d.addr, d.len, err)
			}
			if addrOf(tbl)%8 != 0 { // keep descriptor reads aligned
				return d, false, q.fail("misaligned indirect table at %#x", d.addr)
			}
			*c = chain{table: tbl, size: d.len / virtio.DescSize, more: true, indirect: true}
			continue
		}
		if d.flags&virtio.DescFNext != 0 {
			if uint32(d.next) >= c.size {
				return d, false, q.fail("descriptor next %d beyond table size %d", d.next, c.size)
			}
			c.idx = d.next
		} else {
			c.more = false
		}
		return d, true, nil
	}
	return d, false, nil
}

// HasBuffers reports whether the guest has posted a receive buffer that
// Push has not used yet: at most one atomic load of guest memory (the
// avail index, or the packed ring's next descriptor flags), so a worker
// can drop a whole batch for a full ring without a failed Push per frame.
// An error: the device is broken (an avail index out of range breaks it
// here). It reads guest memory: guard it like Push. Owner only.
func (q *Queue) HasBuffers() (bool, error) {
	if q.isBroken() {
		return false, ErrBroken
	}
	return q.haveAvail()
}

// CountDrops counts n frames the caller dropped for reason r without a
// Push each (the rest of a batch after HasBuffers or a Push found the
// ring without buffers), as those Pushes would have. Owner only.
func (q *Queue) CountDrops(r DropReason, n int) {
	if r < 0 || r >= NumDropReasons || n <= 0 {
		return
	}
	q.st.Drops[r] += uint64(n)
	q.dirty = true
}

// Push copies one frame, after a zeroed virtio-net header, into the
// guest's receive buffers: one chain, or several with MRG_RXBUF (their
// count in num_buffers). Nothing is visible to the guest until Flush.
// ErrNoBuffers and ErrTooBig leave the ring as it was (the frame is
// dropped and counted); an error wrapping ErrBroken means the guest is
// hostile and the device is now broken.
func (q *Queue) Push(frame []byte) error { return q.PushHdr(nil, frame) }

// PushHdr is Push with the virtio-net header h (nil: zeroed); its
// NumBuffers is ignored (Push writes the count it used). The caller
// offers only what the guest negotiated (GUEST_CSUM, GUEST_TSO4/6).
func (q *Queue) PushHdr(h *virtio.NetHdr, frame []byte) error {
	if h == nil {
		clear(q.hb[:])
	} else {
		h.Encode(q.hb[:])
	}
	if q.isBroken() {
		q.st.Drops[DropBroken]++
		q.dirty = true
		return ErrBroken
	}
	if q.budget <= 0 {
		q.st.Drops[DropBudget]++
		q.dirty = true
		return ErrBudget
	}
	total := q.hdrLen + len(frame)
	if q.bufLog == nil {
		if done, err := q.pushSingle(frame, total); done {
			return err
		}
	}
	startAvail, startUsed := q.lastAvail, q.usedIdx
	written, nbufs := 0, 0
	q.nb[0], q.nb[1] = nil, nil
	for written < total {
		ok, err := q.haveAvail()
		if err != nil {
			return err
		}
		if !ok {
			q.lastAvail, q.usedIdx = startAvail, startUsed
			q.st.Drops[DropNoBuffers]++
			q.dirty = true
			return ErrNoBuffers
		}
		head := q.availHead()
		if err := q.startChain(head); err != nil {
			return err
		}
		chainLen := 0
		for written < total {
			d, ok, err := q.nextDesc()
			if err == errBudgetSpent {
				// The guest's buffers stay posted; only this frame is lost.
				q.lastAvail, q.usedIdx = startAvail, startUsed
				q.st.Drops[DropBudget]++
				q.dirty = true
				return ErrBudget
			}
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			if d.flags&virtio.DescFWrite == 0 {
				return q.fail("receive descriptor %#x+%d is not device-writable", d.addr, d.len)
			}
			addr, l, from := d.addr, d.len, written
			for l > 0 && written < total {
				want := uint32(total - written)
				if want > l {
					want = l
				}
				b, err := q.mem.guest(addr, want)
				if err != nil {
					return q.fail("receive buffer %#x+%d: %v", d.addr, d.len, err)
				}
				q.fill(b, written, frame)
				written += len(b)
				chainLen += len(b)
				addr += uint64(len(b))
				l -= uint32(len(b))
			}
			if q.bufLog != nil { // migrating: the bytes of this descriptor
				q.logBuf(d.addr, addr-d.addr, from)
			}
		}
		q.putUsed(head, uint32(chainLen))
		nbufs++
		if !q.mrg && written < total {
			q.lastAvail, q.usedIdx = startAvail, startUsed
			q.st.Drops[DropTooBig]++
			q.dirty = true
			return ErrTooBig
		}
	}
	if q.hdrLen == virtio.NetHdrLen {
		q.nb[0][0], q.nb[1][0] = byte(nbufs), byte(nbufs>>8)
		if q.bufLog != nil { // written after its page was marked
			q.logNumBuffers()
		}
	}
	q.st.Frames++
	q.st.Bytes += uint64(len(frame))
	q.dirty = true
	return nil
}

// pushSingle is PushHdr's fast path, on either ring layout, for the buffer
// guests post (Linux, DPDK and vmq-guest alike): one direct,
// device-writable descriptor, big enough for header and frame, in one
// memory region. It reads the descriptor once and checks what the
// general path would; done=false: not that case, nothing consumed, the
// general path takes the frame (and judges the descriptor) instead.
func (q *Queue) pushSingle(frame []byte, total int) (done bool, err error) {
	ok, err := q.haveAvail()
	if err != nil {
		return true, err
	}
	if !ok {
		q.st.Drops[DropNoBuffers]++
		q.dirty = true
		return true, ErrNoBuffers
	}
	head, b, ok := q.singleDesc(true, uint32(total))
	if !ok {
		return false, nil
	}
	b = b[:total]
	hdr := b[:q.hdrLen]
	copy(hdr, q.hb[:])
	if len(hdr) == virtio.NetHdrLen {
		hdr[10], hdr[11] = 1, 0 // num_buffers
	}
	copy(b[q.hdrLen:], frame)
	q.useSingle(head, uint32(total))
	q.st.Frames++
	q.st.Bytes += uint64(len(frame))
	q.dirty = true
	return true, nil
}

// fill copies bytes [pos, pos+len(dst)) of header||frame into dst and
// remembers where num_buffers (header bytes 10 and 11) went.
func (q *Queue) fill(dst []byte, pos int, frame []byte) {
	if pos < q.hdrLen {
		// The header, or the part of it this buffer holds, in one copy.
		n := min(q.hdrLen-pos, len(dst))
		copy(dst[:n], q.hb[pos:])
		for i := max(pos, 10); i < pos+n; i++ { // num_buffers: bytes 10 and 11
			q.nb[i-10] = dst[i-pos : i-pos+1]
		}
		dst, pos = dst[n:], pos+n
	}
	if len(dst) > 0 {
		copy(dst, frame[pos-q.hdrLen:])
	}
}

// Pop copies the guest's next frame, without its virtio-net header, into
// dst and returns its length. Frames larger than dst and malformed ones
// are consumed, counted as drops and skipped. ErrEmpty: nothing to send.
// The header is not looked at: a caller that offered offloads uses PopHdr.
func (q *Queue) Pop(dst []byte) (int, error) { return q.PopHdr(nil, dst) }

// PopHdr is Pop that also returns the frame's virtio-net header in h
// (unless h is nil). The header is guest input: one that fails
// virtio.NetHdr.Validate for the frame's length drops the frame
// (counted as DropBadHeader) like a malformed one.
func (q *Queue) PopHdr(h *virtio.NetHdr, dst []byte) (int, error) {
	for {
		if q.isBroken() {
			return 0, ErrBroken
		}
		if q.budget <= 0 {
			return 0, ErrBudget // the frame waits in the ring for the next round
		}
		ok, err := q.haveAvail()
		if err != nil {
			return 0, err
		}
		if !ok {
			return 0, ErrEmpty
		}
		if n, done, dropped := q.popSingle(h, dst); done {
			if dropped {
				continue
			}
			return n, nil
		}
		budgetAtHead := q.budget
		head := q.availHead()
		if err := q.startChain(head); err != nil {
			return 0, err
		}
		skip, n, tooBig := uint32(q.hdrLen), 0, false
		for {
			d, ok, err := q.nextDesc()
			if err == errBudgetSpent {
				if budgetAtHead < q.budgetGiven {
					q.lastAvail-- // not ours to judge yet: retry with a whole budget
					return 0, ErrBudget
				}
				// A whole budget did not reach its end: it never will.
				q.putUsed(head, 0)
				q.st.Drops[DropBudget]++
				q.dirty = true
				return 0, ErrBudget
			}
			if err != nil {
				return 0, err
			}
			if !ok {
				break
			}
			if d.flags&virtio.DescFWrite != 0 {
				return 0, q.fail("transmit descriptor %#x+%d is device-writable", d.addr, d.len)
			}
			addr, l := d.addr, d.len
			if skip > 0 {
				s := min(skip, l)
				b, err := q.mem.guestAll(addr, s)
				if err != nil {
					return 0, q.fail("transmit header %#x+%d: %v", d.addr, d.len, err)
				}
				if h != nil { // the header may span descriptors
					copy(q.hb[uint32(q.hdrLen)-skip:], b)
				}
				addr += uint64(s)
				l -= s
				skip -= s
			}
			for l > 0 {
				if n == len(dst) {
					tooBig = true
					// Still check the rest: a hostile length is an error
					// even when we would not copy it.
					if _, err := q.mem.guestAll(addr, l); err != nil {
						return 0, q.fail("transmit buffer %#x+%d: %v", d.addr, d.len, err)
					}
					break
				}
				b, err := q.mem.guest(addr, min(l, uint32(min(len(dst)-n, 1<<31))))
				if err != nil {
					return 0, q.fail("transmit buffer %#x+%d: %v", d.addr, d.len, err)
				}
				n += copy(dst[n:], b)
				addr += uint64(len(b))
				l -= uint32(len(b))
			}
		}
		q.putUsed(head, 0)
		q.dirty = true
		switch {
		case skip > 0 || n == 0:
			q.st.Drops[DropMalformed]++
		case tooBig:
			q.st.Drops[DropTooBig]++
		case h != nil && !q.decodeHdr(h, n):
			q.st.Drops[DropBadHeader]++
		default:
			q.st.Frames++
			q.st.Bytes += uint64(n)
			return n, nil
		}
	}
}

// popSingle is PopHdr's fast path, on either ring layout, for a frame sent in one
// direct, device-readable descriptor, header and frame together (as
// DPDK and Linux send it when the header fits the buffer's headroom),
// that fits dst. done=false: not that case, nothing consumed, the general
// path takes it. dropped: consumed and counted (a header PopHdr refuses).
func (q *Queue) popSingle(h *virtio.NetHdr, dst []byte) (n int, done, dropped bool) {
	head, b, ok := q.singleDesc(false, uint32(q.hdrLen)+1)
	if !ok || len(b)-q.hdrLen > len(dst) {
		return 0, false, false
	}
	n = copy(dst, b[q.hdrLen:])
	if h != nil {
		copy(q.hb[:], b[:q.hdrLen])
	}
	q.useSingle(head, 0)
	q.dirty = true
	if h != nil && !q.decodeHdr(h, n) {
		q.st.Drops[DropBadHeader]++
		return 0, true, true
	}
	q.st.Frames++
	q.st.Bytes += uint64(n)
	return n, true, false
}

// decodeHdr decodes the header PopHdr read and checks it against the
// frame's length n.
func (q *Queue) decodeHdr(h *virtio.NetHdr, n int) bool {
	h.Decode(q.hb[:q.hdrLen])
	return h.Validate(n) == nil
}

// Flush publishes the used entries of this batch with one atomic store
// and, if the guest asked for it, has the port's notifier write the call
// eventfd (Flush itself makes no syscall and never blocks).
func (q *Queue) Flush() {
	published := q.usedIdx != q.usedPub
	if published && q.packed {
		if q.packedFlush() {
			q.requestCall()
		}
	} else if published {
		old := q.usedPub
		q.usedPub = q.usedIdx
		// The atomic store orders the used elements before the index and,
		// being a full barrier, the index before the reads below.
		atomicStore32(q.used, 0, uint32(q.usedFlags)|uint32(q.usedPub)<<16)
		if q.usedLog != nil {
			q.logUsedEntries(old, q.usedPub)
		}
		if q.callFD >= 0 && q.needCall(old, q.usedPub) {
			q.requestCall()
		}
	}
	// Publishing costs one locked store per counter: do it when frames
	// moved, else (drops only, e.g. a spinning worker finding no guest
	// buffers) every 64th Flush; EnableNotify publishes before a sleep.
	q.flushes++
	if q.dirty && (published || q.flushes%64 == 0) {
		q.dirty = false
		q.publishStats()
	}
}

// requestCall hands the call to the port's notifier: the worker never
// writes the guest's call eventfd (the guest can make that write block).
// One atomic and, unless a call is still pending, a non-blocking wake-up.
func (q *Queue) requestCall() {
	if q.callPending.Swap(true) {
		q.st.CallsCoalesced++
		return
	}
	if q.nt != nil {
		q.nt.signal()
	}
}

func (q *Queue) needCall(old, new uint16) bool {
	if q.eventIdx {
		return virtio.NeedEvent(binary.LittleEndian.Uint16(q.avail[q.usedEvent:]), new, old)
	}
	return binary.LittleEndian.Uint16(q.avail[0:])&virtio.AvailFNoInterrupt == 0
}

// DisableNotify asks the guest not to kick while the worker busy-polls.
// With EVENT_IDX the guest kicks at most once more (avail_event stays
// where it was).
func (q *Queue) DisableNotify() {
	if q.packed {
		q.packedDisableNotify()
		return
	}
	if q.eventIdx || q.usedFlags&virtio.UsedFNoNotify != 0 {
		return
	}
	q.usedFlags |= virtio.UsedFNoNotify
	atomicStore32(q.used, 0, uint32(q.usedFlags)|uint32(q.usedPub)<<16)
	if q.usedLog != nil {
		q.logUsed(0, 4)
	}
}

// EnableNotify asks the guest to kick on its next buffer and reports
// whether buffers arrived meanwhile (then the worker must not sleep).
func (q *Queue) EnableNotify() (pending bool, err error) {
	if q.isBroken() {
		return false, ErrBroken
	}
	if q.dirty {
		q.dirty = false
		q.publishStats()
	}
	if q.packed {
		return q.packedEnableNotify()
	}
	if q.eventIdx {
		binary.LittleEndian.PutUint16(q.used[q.availEvt:], q.lastAvail)
	}
	q.usedFlags &^= virtio.UsedFNoNotify
	// Full barrier: the guest must see the request before we re-read avail.idx.
	atomicStore32(q.used, 0, uint32(q.usedFlags)|uint32(q.usedPub)<<16)
	if q.usedLog != nil {
		q.logUsed(0, 4)
		if q.eventIdx {
			q.logUsed(q.availEvt, 2)
		}
	}
	q.availIdx = q.lastAvail
	return q.haveAvail()
}

// AckKick drains the kick eventfd; call it after poll reported the fd
// readable. It never blocks, even if the guest cleared O_NONBLOCK on the
// fd it shares with us (see readNoWait).
func (q *Queue) AckKick() {
	if q.kickFD < 0 {
		return
	}
	if n, e := readNoWait(q.kickFD, &q.ev); e == 0 && n == 8 {
		q.st.Kicks++
		q.dirty = true
	}
}
