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
type mailbox struct {
	slots    []mailSlot
	mask     uint64
	slotSize int

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

// put copies frame for the VM of slot into the next slot; false if the mailbox is full
// or the frame too large. The copy is visible to the consumer after publish.
func (m *mailbox) put(slot uint32, frame []byte) bool {
	if len(frame) > m.slotSize {
		m.dropped.Add(1)
		return false
	}
	if m.prodTail-m.cachedHead >= uint64(len(m.slots)) {
		m.cachedHead = m.head.Load()
		if m.prodTail-m.cachedHead >= uint64(len(m.slots)) {
			m.dropped.Add(1)
			return false
		}
	}
	s := &m.slots[m.prodTail&m.mask]
	s.slot = slot
	s.n = copy(s.data, frame)
	m.prodTail++
	return true
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
