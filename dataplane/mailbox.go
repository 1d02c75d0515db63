package dataplane

import (
	"sync/atomic"
)

// mailbox carries frame copies from one worker to another when the
// destination VM's RX virtqueue is owned by a different worker (a VM with
// fewer queue pairs than the NIC has queues, VM-to-VM, flooding). It is a
// single-producer single-consumer ring of fixed slots: the producing worker
// copies a frame in, the owning worker pushes it to the guest. No locks;
// indices are published with atomics once per batch.
//
// The slots are shared by every source of frames on the producing
// worker, so each source may hold at most as many of them as are free
// (put): one source alone fills half the mailbox, k sources that never
// let go fill k/(k+1) of it, and a frame of any other source finds room.
// A source is a VM for what it sends (unicast, and the copies of its
// broadcasts) and for its own wire frames, and the wire for the copies of
// broadcasts from the wire. Without it one guest's broadcast storm on one
// worker filled the mailbox and every other VM's frames crossing to the
// same worker were refused (TestMailboxShare, TestHostile cross_worker_*).
type mailbox struct {
	slots    []mailSlot
	mask     uint64
	slotSize int
	to       int // the consumer's worker index: a source's count in mailSource.held

	head atomic.Uint64 // next slot to consume; written by the consumer
	_    [56]byte      // keep producer and consumer indices on separate cache lines
	tail atomic.Uint64 // next slot to produce; written by the producer

	// Producer-local: the tail not yet published and a cached head.
	prodTail   uint64
	cachedHead uint64
	// Consumer-local: the head not yet published and a cached tail.
	consHead   uint64
	cachedTail uint64

	dropped atomic.Uint64 // frames refused because the mailbox was full
}

type mailSlot struct {
	slot uint32 // the destination VM's slot; the consumer looks it up in its own table
	n    int
	data []byte
	src  *mailSource // producer-only: whose share the frame holds until it is consumed
}

// mailSource is one source's slots held in each mailbox of its worker
// (held[i]: in the mailbox to worker i), as the producer last saw them
// released. Producer-local, like the vmState it is part of.
type mailSource struct {
	held []int
}

// newMailbox makes a mailbox of size slots (a power of two) of slotSize bytes.
func newMailbox(size, slotSize int) *mailbox {
	if size&(size-1) != 0 || size == 0 {
		panic("mailbox size must be a power of two")
	}
	backing := make([]byte, size*slotSize)
	m := &mailbox{slots: make([]mailSlot, size), mask: uint64(size - 1), slotSize: slotSize}
	for i := range m.slots {
		m.slots[i].data = backing[i*slotSize : (i+1)*slotSize : (i+1)*slotSize]
	}
	return m
}

// put copies frame from src for the VM of slot into the next slot; false
// if src holds as many slots as are free (a full mailbox has none) or the
// frame is too large. The copy is visible to the consumer after publish.
func (m *mailbox) put(src *mailSource, slot uint32, frame []byte) bool {
	if len(frame) > m.slotSize {
		m.dropped.Add(1)
		return false
	}
	if m.to >= len(src.held) {
		src.held = append(src.held, make([]int, m.to+1-len(src.held))...) // once per source
	}
	if !m.room(src) {
		m.release()
		if !m.room(src) {
			m.dropped.Add(1)
			return false
		}
	}
	s := &m.slots[m.prodTail&m.mask]
	s.slot = slot
	s.n = copy(s.data, frame)
	s.src = src
	src.held[m.to]++
	m.prodTail++
	return true
}

// room reports whether src may put a frame as the producer last saw the
// mailbox: it holds fewer slots than are free.
func (m *mailbox) room(src *mailSource) bool {
	free := uint64(len(m.slots)) - (m.prodTail - m.cachedHead)
	return uint64(src.held[m.to]) < free
}

// release gives the slots the consumer has taken since the producer last
// looked back to their sources.
func (m *mailbox) release() {
	head := m.head.Load()
	for ; m.cachedHead != head; m.cachedHead++ {
		s := &m.slots[m.cachedHead&m.mask]
		s.src.held[m.to]--
		s.src = nil
	}
}

// publish makes the frames put so far visible to the consumer and reports
// whether there were any.
func (m *mailbox) publish() bool {
	if m.prodTail == m.tail.Load() {
		return false
	}
	m.tail.Store(m.prodTail)
	return true
}

// drain calls fn for each published frame, then releases the slots. The
// frame slice is valid only during the call.
func (m *mailbox) drain(fn func(slot uint32, frame []byte)) int {
	m.cachedTail = m.tail.Load()
	n := 0
	for m.consHead != m.cachedTail {
		s := &m.slots[m.consHead&m.mask]
		fn(s.slot, s.data[:s.n])
		m.consHead++
		n++
	}
	if n > 0 {
		m.head.Store(m.consHead)
	}
	return n
}

// pending reports whether published frames wait (for the consumer's idle check).
func (m *mailbox) pending() bool { return m.tail.Load() != m.consHead }

// mailboxDrops are the frames refused by w's inbound mailboxes.
func (w *worker) mailboxDrops() uint64 {
	var n uint64
	for _, mb := range w.inbox {
		if mb != nil {
			n += mb.dropped.Load()
		}
	}
	return n
}
