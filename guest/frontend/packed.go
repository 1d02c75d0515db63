package frontend

import (
	"encoding/binary"
	"fmt"

	"github.com/vmq/vmq/dataplane/virtio"
)

// The driver side of a packed virtqueue (VIRTIO_F_RING_PACKED, virtio
// 1.1 section 2.7). The ring's methods in ring.go dispatch here when the
// ring is packed, so rxQueue and txQueue work the same on both layouts:
//
//   - putDesc records a buffer's address, length and flags by its id;
//     pushAvail writes it into the next ring slot, its flags marking it
//     available with our wrap counter (the first of a batch's flags are
//     held back until publish, which makes the batch visible with one
//     atomic store);
//   - usedIdx scans the ring for descriptors the device marked used and
//     records them in order, so usedIdx and usedElem read like a split
//     ring's used ring: a free-running count and its entries.
//
// With IN_ORDER a device may write one used descriptor for a batch of
// buffers (the last buffer's id) and skip the others' slots; we know which
// buffer we put in each slot, so the skipped ones are recorded used too
// (with length 0: devices batch only transmit buffers).
//
// Positions are free-running 16-bit counters: the slot is pos & mask and
// the wrap counter is 1 while pos & n is 0.
type packedDriver struct {
	n    int
	mask uint16
	drv  []byte // driver area: our call suppression
	dev  []byte // device area: the device's kick suppression

	inOrder bool

	bufs   []packedBuf // putDesc's record, by buffer id
	slotID []uint16    // the buffer id we put in each slot

	availPos  uint16 // next slot to fill
	published uint16 // availPos at the last publish
	headSlot  int    // slot whose flags publish writes; -1: none held back
	headWord  uint32 // its id and flags

	usedPos uint16   // next slot the device writes used
	seen    uint16   // used entries recorded (usedIdx)
	ids     []uint16 // recorded entries, by seen & mask
	lens    []uint32
}

type packedBuf struct {
	addr  uint64
	len   uint32
	flags uint16
}

// newPackedRing allocates a packed ring of n descriptors and its two
// event suppression areas. r.desc, r.avail and r.used are the ring, the
// driver area and the device area (what SET_VRING_ADDR carries).
func newPackedRing(mem *guestMemory, n int, eventIdx, inOrder bool) (ring, error) {
	desc, _, err := mem.alloc(0, virtio.PackedDescTableSize(n), pageSize)
	if err != nil {
		return ring{}, err
	}
	drv, _, err := mem.alloc(0, virtio.PackedEventSize, 64)
	if err != nil {
		return ring{}, err
	}
	dev, _, err := mem.alloc(0, virtio.PackedEventSize, 64)
	if err != nil {
		return ring{}, err
	}
	clear(desc)
	clear(drv)
	clear(dev)
	p := &packedDriver{n: n, mask: uint16(n - 1), drv: drv, dev: dev, inOrder: inOrder,
		bufs: make([]packedBuf, n), slotID: make([]uint16, n), headSlot: -1,
		ids: make([]uint16, n), lens: make([]uint32, n)}
	return ring{n: n, mask: uint16(n - 1), desc: desc, avail: drv, used: dev, eventIdx: eventIdx, kickFD: -1, pk: p}, nil
}

func (p *packedDriver) wrap(pos uint16) bool { return pos&uint16(p.n) == 0 }

// offWrap encodes a position as an event offset and wrap counter.
func (p *packedDriver) offWrap(pos uint16) uint16 {
	v := pos & p.mask
	if p.wrap(pos) {
		v |= virtio.EventWrapBit
	}
	return v
}

// base is the SET_VRING_BASE value of a fresh ring: slot 0, wrap counter 1.
func (r *ring) base() uint32 {
	if r.pk != nil {
		return virtio.EventWrapBit
	}
	return 0
}

func (p *packedDriver) putDesc(id uint16, addr uint64, length uint32, flags uint16) {
	p.bufs[id] = packedBuf{addr: addr, len: length, flags: flags}
}

// pushAvail writes buffer id into the next slot. Its flags make it
// available, except the batch's first, held back for publish.
func (p *packedDriver) pushAvail(desc []byte, id uint16) {
	slot := int(p.availPos & p.mask)
	b := p.bufs[id]
	d := desc[slot*virtio.PackedDescSize:]
	binary.LittleEndian.PutUint64(d[0:], b.addr)
	binary.LittleEndian.PutUint32(d[8:], b.len)
	flags := b.flags
	if p.wrap(p.availPos) {
		flags |= virtio.DescFAvail
	} else {
		flags |= virtio.DescFUsed
	}
	w := uint32(id) | uint32(flags)<<16
	if p.headSlot < 0 {
		// The slot still holds the device's used descriptor (or zeros):
		// not available until publish stores the word.
		p.headSlot, p.headWord = slot, w
	} else {
		binary.LittleEndian.PutUint32(d[12:], w)
	}
	p.slotID[slot] = id
	p.availPos++
}

// publish makes the batch visible and reports whether the device wants a
// kick for it.
func (p *packedDriver) publish(desc []byte, eventIdx bool) bool {
	if p.headSlot >= 0 {
		store32(desc, p.headSlot*virtio.PackedDescSize+12, p.headWord)
		p.headSlot = -1
	}
	old := p.published
	p.published = p.availPos
	if old == p.availPos {
		return false
	}
	// The store above is sequentially consistent: the suppression read
	// below is not older than our publication.
	w := load32(p.dev, 0)
	switch uint16(w >> 16) {
	case virtio.EventFDisable:
		return false
	case virtio.EventFDesc:
		if !eventIdx {
			return true
		}
	default:
		return true
	}
	evt := uint16(w) &^ virtio.EventWrapBit
	if uint16(w)&virtio.EventWrapBit == 0 {
		evt += uint16(p.n)
	}
	past := (p.availPos - evt) & uint16(2*p.n-1)
	return past-1 < p.availPos-old
}

// scan records the used descriptors the device wrote since the last scan
// and returns the count of used entries recorded so far.
func (p *packedDriver) scan(desc []byte) uint16 {
	for p.usedPos != p.availPos {
		slot := int(p.usedPos & p.mask)
		w := load32(desc, slot*virtio.PackedDescSize+12)
		flags := uint16(w >> 16)
		wrap := p.wrap(p.usedPos)
		if (flags&virtio.DescFAvail != 0) != wrap || (flags&virtio.DescFUsed != 0) != wrap {
			break
		}
		id := uint16(w)
		l := binary.LittleEndian.Uint32(desc[slot*virtio.PackedDescSize+8:])
		if p.inOrder {
			// A batch: every buffer from here to the one named used.
			inFlight := int(p.availPos - p.usedPos)
			k := 0
			for k < inFlight && p.slotID[int((p.usedPos+uint16(k))&p.mask)] != id {
				k++
			}
			if k < inFlight {
				for j := 0; j < k; j++ {
					p.record(p.slotID[int((p.usedPos+uint16(j))&p.mask)], 0)
				}
				p.usedPos += uint16(k)
			}
		}
		p.record(id, l)
		p.usedPos++
	}
	return p.seen
}

func (p *packedDriver) record(id uint16, l uint32) {
	p.ids[p.seen&p.mask], p.lens[p.seen&p.mask] = id, l
	p.seen++
}

func (p *packedDriver) usedElem(i uint16) (uint32, uint32) {
	return uint32(p.ids[i&p.mask]), p.lens[i&p.mask]
}

// setInterrupts writes our call suppression: flags, and with EVENT_IDX
// the position of the next used descriptor we wait for.
func (p *packedDriver) setInterrupts(on, eventIdx bool) {
	switch {
	case !on:
		store32(p.drv, 0, uint32(virtio.EventFDisable)<<16)
	case eventIdx:
		store32(p.drv, 0, uint32(p.offWrap(p.usedPos))|uint32(virtio.EventFDesc)<<16)
	default:
		store32(p.drv, 0, uint32(virtio.EventFEnable)<<16)
	}
}

// checkPackedSize: the packed driver keeps positions as free-running
// counters, which needs a power-of-2 size as for the split ring.
func checkPackedSize(n int) error {
	if n < 2 || n > virtio.MaxQueueSize || n&(n-1) != 0 {
		return fmt.Errorf("queue size %d: want a power of two in 2..%d", n, virtio.MaxQueueSize)
	}
	return nil
}
