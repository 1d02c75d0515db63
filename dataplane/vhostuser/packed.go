package vhostuser

import (
	"encoding/binary"
	"fmt"

	"github.com/vmq/vmq/dataplane/virtio"
)

// Packed virtqueues (VIRTIO_F_RING_PACKED, virtio 1.1 section 2.7): the
// ring-format primitives that Push and Pop call when the front-end
// negotiated the packed layout. The split ring's entry points in
// queue.go dispatch here on q.packed.
//
// Positions in the ring are kept as free-running 16-bit counters, as for
// the split ring: the slot is pos & mask and the wrap counter is 1 while
// pos & num is 0 (it starts at 1 and flips each time the position passes
// the ring's end). A power-of-2 ring size divides 65536 evenly, so the
// counters wrap consistently and rollbacks are plain assignments.
//
// Used descriptors are written in place over the ring, so they cannot be
// written as Push and Pop go: a rolled-back frame would have clobbered
// descriptors the guest still owns. putUsed records them in a shadow
// array and Flush writes the batch, the first descriptor's flags last
// (one atomic store makes the whole batch visible).

// packedState is the packed-ring part of a Queue.
type packedState struct {
	driverEvt []byte // driver area: the guest's call suppression (read)
	deviceEvt []byte // device area: our kick suppression (written)
	descGPA   uint64 // guest physical addresses of the ring and the
	devGPA    uint64 // device area, for the dirty log
	devEvt    uint32 // the device area as last written; devEvtUnset: unknown

	// The chain being walked: its head position, the ring descriptors
	// walked so far, whether its ring part has ended and its buffer id
	// (from its last ring descriptor).
	pos       uint16
	ringCount uint32
	ringDone  bool
	id        uint16

	sh  []usedShadow // used descriptors of this batch, in ring order
	nsh int
}

// usedShadow is one used descriptor not yet written to the ring.
type usedShadow struct {
	pos uint16
	id  uint16
	len uint32
}

const devEvtUnset = ^uint32(0)

// Packed reports whether the queue runs the packed layout (set while the
// queue is handed to a worker). Code that reads the split ring itself
// (rather than through Push and Pop) must check it.
func (q *Queue) Packed() bool { return q.packed }

// packedWrap reports the wrap counter at position pos.
func (q *Queue) packedWrap(pos uint16) bool { return pos&uint16(q.num) == 0 }

// packedLayout checks and maps a packed ring: the descriptor ring (16-byte
// aligned) and the two event suppression structures (4-byte aligned),
// each contiguous in one region.
func (q *Queue) packedLayout(mem *memTable, num uint32, descUA, driverUA, deviceUA uint64) error {
	var err error
	if q.desc, err = mem.user(descUA, uint64(virtio.PackedDescTableSize(int(num)))); err != nil {
		return fmt.Errorf("packed descriptor ring at %#x: %w", descUA, err)
	}
	if q.pk.driverEvt, err = mem.user(driverUA, virtio.PackedEventSize); err != nil {
		return fmt.Errorf("driver event suppression at %#x: %w", driverUA, err)
	}
	if q.pk.deviceEvt, err = mem.user(deviceUA, virtio.PackedEventSize); err != nil {
		return fmt.Errorf("device event suppression at %#x: %w", deviceUA, err)
	}
	if addrOf(q.desc)%16 != 0 || addrOf(q.pk.driverEvt)%4 != 0 || addrOf(q.pk.deviceEvt)%4 != 0 {
		return fmt.Errorf("misaligned packed ring: desc %#x driver %#x device %#x", descUA, driverUA, deviceUA)
	}
	// Used descriptors land in the descriptor ring, not at the used-ring
	// log address: log by the guest physical addresses of what we write.
	q.pk.descGPA, _ = mem.userToGPA(descUA)
	q.pk.devGPA, _ = mem.userToGPA(deviceUA)
	q.avail, q.used = q.pk.driverEvt, q.pk.deviceEvt
	if cap(q.pk.sh) < int(num) {
		q.pk.sh = make([]usedShadow, num) // once per ring set-up, not per frame
	}
	q.pk.sh = q.pk.sh[:num]
	return nil
}

// userToGPA translates a front-end address into a guest physical one.
func (t *memTable) userToGPA(uva uint64) (uint64, bool) {
	for i := range t.regions {
		r := &t.regions[i]
		if uva >= r.uva && uva-r.uva < r.size {
			return r.gpa + (uva - r.uva), true
		}
	}
	return 0, false
}

// packedBase decodes a packed vring base (bits 0-14 the next avail slot,
// bit 15 its wrap counter; the used half in bits 16-31 is ignored: after
// GET_VRING_BASE both are equal, as DPDK assumes too).
func (q *Queue) packedStart(base uint16) error {
	slot := uint32(base &^ virtio.EventWrapBit)
	if slot >= q.num {
		return fmt.Errorf("packed vring base: slot %d beyond ring size %d", slot, q.num)
	}
	pos := uint16(slot)
	if base&virtio.EventWrapBit == 0 {
		pos += uint16(q.num)
	}
	q.lastAvail, q.availIdx, q.usedIdx, q.usedPub = pos, pos, pos, pos
	q.pk.nsh = 0
	q.pk.devEvt = devEvtUnset
	return nil
}

// vringBase is the base GET_VRING_BASE reports once the queue stopped:
// the split ring's avail index, or the packed ring's slot and wrap counter.
func (q *Queue) vringBase() uint16 {
	if !q.packed {
		return q.lastAvail
	}
	b := q.lastAvail & q.mask
	if q.packedWrap(q.lastAvail) {
		b |= virtio.EventWrapBit
	}
	return b
}

// packedHaveAvail reports whether the descriptor at the next position is
// available: one atomic load of its id and flags, which orders the reads
// of its address and length after it.
func (q *Queue) packedHaveAvail() bool { return q.packedAvailAt(q.lastAvail) }

// packedAvailAt reports whether the descriptor at ring position pos
// (lastAvail or after it) is available to the device.
func (q *Queue) packedAvailAt(pos uint16) bool {
	// A ring's worth consumed and not yet flushed: whatever the slot says,
	// it cannot be available again (a conforming driver waits for it).
	if uint32(pos-q.usedPub) >= q.num {
		return false
	}
	flags := uint16(atomicLoad32(q.desc, int(pos&q.mask)*virtio.PackedDescSize+12) >> 16)
	wrap := q.packedWrap(pos)
	return (flags&virtio.DescFAvail != 0) == wrap && (flags&virtio.DescFUsed != 0) != wrap
}

// packedStartChain begins the chain whose head availHead just took.
func (q *Queue) packedStartChain() {
	c := &q.ch
	c.table, c.size, c.idx, c.count, c.more, c.indirect = nil, 0, 0, 0, true, false
	q.pk.pos, q.pk.ringCount, q.pk.ringDone = q.lastAvail-1, 0, false
}

// packedDesc reads the ring descriptor at position pos.
func (q *Queue) packedDesc(pos uint16) (d desc, id uint16) {
	raw := q.desc[int(pos&q.mask)*virtio.PackedDescSize:][:virtio.PackedDescSize]
	return desc{
		addr:  binary.LittleEndian.Uint64(raw[0:]),
		len:   binary.LittleEndian.Uint32(raw[8:]),
		flags: binary.LittleEndian.Uint16(raw[14:]),
	}, binary.LittleEndian.Uint16(raw[12:])
}

// packedEndRing records the buffer id of a chain's last ring descriptor.
func (q *Queue) packedEndRing(id uint16) error {
	q.pk.ringDone = true
	if uint32(id) >= q.num {
		return q.fail("packed descriptor at %d: buffer id %d beyond ring size %d", q.pk.pos&q.mask, id, q.num)
	}
	q.pk.id = id
	return nil
}

// packedNextDesc returns the chain's next descriptor: consecutive ring
// descriptors linked by NEXT, then (if the last is INDIRECT) every entry
// of its table in order. The budget and the loop bound count as for the
// split ring: a chain visits at most one ring's worth of descriptors.
func (q *Queue) packedNextDesc() (d desc, ok bool, err error) {
	c := &q.ch
	for c.more {
		if q.budget <= 0 {
			return d, false, errBudgetSpent
		}
		q.budget--
		if c.indirect {
			raw := c.table[int(c.idx)*virtio.PackedDescSize:][:virtio.PackedDescSize]
			c.idx++
			c.count++
			d = desc{
				addr:  binary.LittleEndian.Uint64(raw[0:]),
				len:   binary.LittleEndian.Uint32(raw[8:]),
				flags: binary.LittleEndian.Uint16(raw[14:]),
			}
			if d.flags&virtio.DescFIndirect != 0 {
				return d, false, q.fail("nested indirect descriptor table")
			}
			// Entries follow one another; NEXT means nothing in a table.
			d.flags &^= virtio.DescFNext
			if c.count >= c.size {
				c.more = false
			}
			return d, true, nil
		}
		if q.pk.ringCount >= q.num {
			return d, false, q.fail("descriptor chain longer than the ring (%d entries): a loop", q.num)
		}
		var id uint16
		d, id = q.packedDesc(q.pk.pos + uint16(q.pk.ringCount))
		q.pk.ringCount++
		if d.flags&virtio.DescFIndirect != 0 {
			switch {
			case !q.indirect:
				return d, false, q.fail("indirect descriptor without INDIRECT_DESC")
			case d.flags&virtio.DescFNext != 0:
				return d, false, q.fail("indirect descriptor with NEXT flag")
			case d.len == 0 || d.len%virtio.PackedDescSize != 0 || d.len/virtio.PackedDescSize > virtio.MaxQueueSize:
				return d, false, q.fail("indirect table of %d bytes", d.len)
			}
			if err := q.packedEndRing(id); err != nil {
				return d, false, err
			}
			tbl, err := q.mem.guestAll(d.addr, d.len)
			if err != nil {
				return d, false, q.fail("indirect table at %#x+%d: %v", d.addr, d.len, err)
			}
			if addrOf(tbl)%8 != 0 {
				return d, false, q.fail("misaligned indirect table at %#x", d.addr)
			}
			c.table, c.size, c.idx, c.count, c.indirect = tbl, d.len/virtio.PackedDescSize, 0, 0, true
			continue
		}
		if d.flags&virtio.DescFNext == 0 {
			c.more = false
			if err := q.packedEndRing(id); err != nil {
				return d, false, err
			}
		}
		return d, true, nil
	}
	return d, false, nil
}

// packedPutUsed records the chain just walked as used with n bytes
// written. A chain Push did not need to the end (the frame fitted) is
// skipped to its last ring descriptor, for its buffer id and its length
// in the ring: those descriptors count against the budget too (it stops
// at 0; the next Push or Pop then reports it spent).
func (q *Queue) packedPutUsed(n uint32) {
	for !q.pk.ringDone {
		if q.pk.ringCount >= q.num {
			q.fail("descriptor chain longer than the ring (%d entries): a loop", q.num)
			return
		}
		if q.budget > 0 {
			q.budget--
		}
		d, id := q.packedDesc(q.pk.pos + uint16(q.pk.ringCount))
		q.pk.ringCount++
		if d.flags&virtio.DescFNext == 0 || d.flags&virtio.DescFIndirect != 0 {
			if q.packedEndRing(id) != nil {
				return
			}
		}
	}
	// Drop shadow entries a rollback (Push) took back.
	window := q.usedIdx - q.usedPub
	for q.pk.nsh > 0 && q.pk.sh[q.pk.nsh-1].pos-q.usedPub >= window {
		q.pk.nsh--
	}
	if q.pk.nsh == len(q.pk.sh) {
		q.fail("more used descriptors than ring entries in one batch")
		return
	}
	q.pk.sh[q.pk.nsh] = usedShadow{pos: q.usedIdx, id: q.pk.id, len: n}
	q.pk.nsh++
	q.usedIdx += uint16(q.pk.ringCount)
	q.lastAvail = q.pk.pos + uint16(q.pk.ringCount)
}

// packedPutUsedOne records a one-descriptor buffer taken earlier (direct
// receive) as used at the next used position, whatever chains were taken
// since: packed rings name the buffer in the used descriptor.
func (q *Queue) packedPutUsedOne(id uint16, n uint32) {
	if q.pk.nsh == len(q.pk.sh) {
		q.fail("more used descriptors than ring entries in one batch")
		return
	}
	q.pk.sh[q.pk.nsh] = usedShadow{pos: q.usedIdx, id: id, len: n}
	q.pk.nsh++
	q.usedIdx++
}

// packedUsedFlags are the flags of a used descriptor at position pos:
// AVAIL and USED both equal to the wrap counter there.
func (q *Queue) packedUsedFlags(pos uint16) uint16 {
	if q.packedWrap(pos) {
		return virtio.DescFAvail | virtio.DescFUsed
	}
	return 0
}

// packedFlush writes the batch's used descriptors, the first one's id
// and flags last with one atomic store, and reports whether the guest
// wants a call for them.
func (q *Queue) packedFlush() (call bool) {
	old := q.usedPub
	window := q.usedIdx - old
	n := 0
	for n < q.pk.nsh && q.pk.sh[n].pos-old < window {
		n++
	}
	for i := n - 1; i >= 0; i-- {
		e := &q.pk.sh[i]
		o := int(e.pos&q.mask) * virtio.PackedDescSize
		binary.LittleEndian.PutUint32(q.desc[o+8:], e.len)
		w := uint32(e.id) | uint32(q.packedUsedFlags(e.pos))<<16
		if i > 0 {
			binary.LittleEndian.PutUint32(q.desc[o+12:], w)
		} else {
			// Release: every descriptor and buffer byte before it is
			// visible once the guest sees this flag; being a full barrier,
			// it also orders the event suppression read below.
			atomicStore32(q.desc, o+12, w)
		}
		if q.usedLog != nil {
			q.usedLog.mark(q.pk.descGPA+uint64(o), virtio.PackedDescSize)
		}
	}
	q.pk.nsh = 0
	q.usedPub = q.usedIdx
	return q.callFD >= 0 && q.packedNeedCall(old, q.usedPub)
}

// packedNeedCall reads the driver's event suppression: ENABLE calls,
// DISABLE does not, DESC (with EVENT_IDX) calls when the used descriptors
// written from old to new reached its offset and wrap counter.
func (q *Queue) packedNeedCall(old, new uint16) bool {
	w := atomicLoad32(q.pk.driverEvt, 0)
	switch uint16(w >> 16) {
	case virtio.EventFDisable:
		return false
	case virtio.EventFDesc:
		if !q.eventIdx {
			return true
		}
	default:
		return true
	}
	offWrap := uint16(w)
	period := uint16(2*q.num - 1) // positions repeat every two wraps
	evt := offWrap &^ virtio.EventWrapBit
	if offWrap&virtio.EventWrapBit == 0 {
		evt += uint16(q.num)
	}
	// How far new is past the event position: it was crossed if the
	// event lies in [old, new).
	past := (new - evt) & period
	return past-1 < new-old
}

// packedSetDeviceEvent writes our kick suppression (the device area) if
// it changed, with a full barrier, and logs it while migrating.
func (q *Queue) packedSetDeviceEvent(v uint32) {
	if q.pk.devEvt == v {
		return
	}
	q.pk.devEvt = v
	atomicStore32(q.pk.deviceEvt, 0, v)
	if q.usedLog != nil {
		q.usedLog.mark(q.pk.devGPA, virtio.PackedEventSize)
	}
}

// packedDisableNotify asks the guest not to kick.
func (q *Queue) packedDisableNotify() {
	q.packedSetDeviceEvent(uint32(virtio.EventFDisable) << 16)
}

// packedEnableNotify asks for a kick at the next available descriptor
// (with EVENT_IDX: at our next position) and re-checks the ring.
func (q *Queue) packedEnableNotify() (bool, error) {
	v := uint32(virtio.EventFEnable) << 16
	if q.eventIdx {
		off := q.lastAvail & q.mask
		if q.packedWrap(q.lastAvail) {
			off |= virtio.EventWrapBit
		}
		v = uint32(off) | uint32(virtio.EventFDesc)<<16
	}
	q.pk.devEvt = devEvtUnset // always store: the barrier matters
	q.packedSetDeviceEvent(v)
	return q.packedHaveAvail(), nil
}
