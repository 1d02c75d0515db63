package vhostuser

import (
	"encoding/binary"

	"github.com/vmq/vmq/dataplane/virtio"
)

// Direct receive (dedicated queues): the worker hands the guest's posted
// receive buffers to an AF_XDP socket whose UMEM is the guest memory
// region holding them, the kernel writes each frame into one, and the
// worker then writes only the virtio-net header and the used entry. The
// methods below are the queue's side of it; like Push they belong to the
// queue's owner.

// RxBuf is one receive buffer the guest posted: a chain of exactly one
// device-writable descriptor.
type RxBuf struct {
	Head uint16 // the split ring's head, the packed ring's buffer id
	GPA  uint64
	Len  uint32
}

// GuestRegion is the mapped region of guest memory holding an address.
// Mem is the whole mapping (page-aligned: it can be registered as a
// UMEM); the region's bytes are Mem[Off:Off+Size], at guest physical
// address GPA.
type GuestRegion struct {
	Index     int
	Mem       []byte
	Off       uint64
	GPA, Size uint64
}

// Offset is the offset in r.Mem of guest address gpa (in the region).
func (r GuestRegion) Offset(gpa uint64) uint64 { return r.Off + gpa - r.GPA }

// Contains reports whether [gpa, gpa+n) lies in the region.
func (r GuestRegion) Contains(gpa, n uint64) bool {
	return gpa >= r.GPA && gpa-r.GPA <= r.Size && n <= r.Size-(gpa-r.GPA)
}

// Region returns the region of guest memory holding gpa.
func (q *Queue) Region(gpa uint64) (GuestRegion, bool) {
	if q.mem == nil {
		return GuestRegion{}, false
	}
	for i := range q.mem.regions {
		r := &q.mem.regions[i]
		if gpa >= r.gpa && gpa-r.gpa < r.size {
			g := GuestRegion{Index: i, Mem: r.data, GPA: r.gpa, Size: r.size}
			if r.mapping != nil {
				g.Mem, g.Off = r.mapping, uint64(addrOf(r.data)-addrOf(r.mapping))
			}
			return g, true
		}
	}
	return GuestRegion{}, false
}

// RingRegion is the region holding the descriptor table: where a
// guest's buffers usually are when it has posted none yet.
func (q *Queue) RingRegion() (GuestRegion, bool) {
	if q.mem == nil || q.desc == nil {
		return GuestRegion{}, false
	}
	a := addrOf(q.desc)
	for i := range q.mem.regions {
		r := &q.mem.regions[i]
		if start := addrOf(r.data); a >= start && a < start+uintptr(r.size) {
			return q.Region(r.gpa)
		}
	}
	return GuestRegion{}, false
}

// HdrLen is the virtio-net header the guest expects before each frame.
func (q *Queue) HdrLen() int { return q.hdrLen }

// PeekRxBuffer looks at the guest's next posted receive chain without
// taking it. have is false when none is posted; simple is false when the
// chain is not one direct device-writable descriptor (then it is left to
// Push, which copies). An error wraps ErrBroken.
func (q *Queue) PeekRxBuffer() (b RxBuf, have, simple bool, err error) {
	if q.isBroken() {
		return b, false, false, ErrBroken
	}
	if q.packed {
		if !q.packedHaveAvail() {
			return b, false, false, nil
		}
		d, id := q.packedDesc(q.lastAvail)
		if uint32(id) >= q.num {
			return b, false, false, q.fail("packed descriptor at %d: buffer id %d beyond ring size %d", q.lastAvail&q.mask, id, q.num)
		}
		// The AVAIL and USED bits are the ring's, not the buffer's.
		flags := d.flags &^ (virtio.DescFAvail | virtio.DescFUsed)
		return RxBuf{Head: id, GPA: d.addr, Len: d.len}, true, flags == virtio.DescFWrite, nil
	}
	ok, err := q.haveAvail()
	if err != nil || !ok {
		return b, false, false, err
	}
	head := binary.LittleEndian.Uint16(q.avail[4+2*int(q.lastAvail&q.mask):])
	if uint32(head) >= q.num {
		return b, false, false, q.fail("avail entry %d: head descriptor %d beyond ring size %d", q.lastAvail, head, q.num)
	}
	raw := q.desc[int(head)*virtio.DescSize:][:virtio.DescSize]
	b = RxBuf{Head: head, GPA: binary.LittleEndian.Uint64(raw[0:]), Len: binary.LittleEndian.Uint32(raw[8:])}
	flags := binary.LittleEndian.Uint16(raw[12:])
	return b, true, flags == virtio.DescFWrite, nil
}

// TakeRxBuffer consumes the chain PeekRxBuffer returned (one descriptor
// in either layout): it is the caller's until CompleteRx or ReturnRx (or
// until the queue stops). Buffers taken this way may complete in any
// order: a used entry names the buffer, at the ring's next used position.
func (q *Queue) TakeRxBuffer() { q.lastAvail++ }

// putUsedTaken records a buffer TakeRxBuffer took as used with n bytes.
func (q *Queue) putUsedTaken(id uint16, n uint32) {
	if q.packed {
		q.packedPutUsedOne(id, n)
		return
	}
	q.putUsedSplit(id, n)
}

// CompleteRx finishes a frame of n bytes that the kernel wrote at
// b.GPA+HdrLen(): it writes the virtio-net header (no offloads, one
// buffer) and the used entry; Flush publishes it. The caller passes only
// buffers it took and has not completed yet.
func (q *Queue) CompleteRx(b RxBuf, n uint32) error {
	total := uint32(q.hdrLen) + n
	if total > b.Len {
		return q.fail("direct frame of %d bytes in a %d-byte buffer", n, b.Len)
	}
	hdr, err := q.mem.guestAll(b.GPA, uint32(q.hdrLen))
	if err != nil {
		return q.fail("receive buffer %#x+%d: %v", b.GPA, b.Len, err)
	}
	clear(hdr)
	if q.hdrLen == virtio.NetHdrLen {
		hdr[10] = 1 // num_buffers
	}
	if q.bufLog != nil {
		q.bufLog.mark(b.GPA, uint64(total))
	}
	q.putUsedTaken(b.Head, total)
	q.st.Frames++
	q.st.Bytes += uint64(n)
	q.dirty = true
	return nil
}

// ReturnRx gives a taken buffer back to the guest unused: a used entry
// of length 0, which drivers count as an error and repost.
func (q *Queue) ReturnRx(b RxBuf) {
	q.putUsedTaken(b.Head, 0)
	q.dirty = true
}

// GuestBytes returns n bytes of guest memory at gpa (wholly in one
// region), e.g. the MAC addresses of a frame the kernel wrote.
func (q *Queue) GuestBytes(gpa uint64, n uint32) ([]byte, error) {
	if q.mem == nil {
		return nil, errAddr
	}
	return q.mem.guestAll(gpa, n)
}
