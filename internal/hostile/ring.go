package hostile

import (
	"encoding/binary"
	"fmt"

	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/virtio"
)

// Desc is one split-ring descriptor, written exactly as given.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Ring is one split virtqueue laid out in a Mem. The test writes
// descriptors and avail entries as it likes; the helpers (Buffers,
// SendFrames, PostRX) are for the well-behaved parts of an attack.
type Ring struct {
	Mem                        *Mem
	Num                        int
	DescOff, AvailOff, UsedOff int
	Packed                     bool // NewPackedRing: see packed.go

	availIdx   uint16 // next avail slot (published by Publish)
	availFlags uint16
	cursor     uint16 // next descriptor slot Post writes

	bufOff   []int // per descriptor, once Buffers ran
	bufLen   int
	free     []uint16
	lastUsed uint16
}

// NewRing allocates the three parts of a ring of num entries in m, sized
// for EVENT_IDX (the larger layout) and page aligned.
func NewRing(m *Mem, num int) (*Ring, error) {
	if num < 1 || num > virtio.MaxQueueSize {
		return nil, fmt.Errorf("hostile ring of %d entries", num)
	}
	r := &Ring{Mem: m, Num: num}
	var err error
	if r.DescOff, err = m.Alloc(virtio.DescTableSize(num), 4096); err != nil {
		return nil, err
	}
	if r.AvailOff, err = m.Alloc(virtio.AvailRingSize(num)+2, 4096); err != nil {
		return nil, err
	}
	if r.UsedOff, err = m.Alloc(virtio.UsedRingSize(num)+2, 4096); err != nil {
		return nil, err
	}
	return r, nil
}

// Addr is the SET_VRING_ADDR payload for this ring as vring index.
func (r *Ring) Addr(index uint32) vhostuser.VringAddr {
	return vhostuser.VringAddr{Index: index, DescUser: r.Mem.UVAOf(r.DescOff),
		AvailUser: r.Mem.UVAOf(r.AvailOff), UsedUser: r.Mem.UVAOf(r.UsedOff)}
}

// SetDesc writes descriptor i of the ring's table.
func (r *Ring) SetDesc(i int, d Desc) { WriteDescs(r.Mem, r.DescOff+i*virtio.DescSize, d) }

// WriteDescs writes descriptors back to back at offset off of m: an
// indirect table, or a run of the ring's own table.
func WriteDescs(m *Mem, off int, ds ...Desc) {
	b := m.Bytes()
	for i, d := range ds {
		e := b[off+i*virtio.DescSize:]
		binary.LittleEndian.PutUint64(e[0:], d.Addr)
		binary.LittleEndian.PutUint32(e[8:], d.Len)
		binary.LittleEndian.PutUint16(e[12:], d.Flags)
		binary.LittleEndian.PutUint16(e[14:], d.Next)
	}
}

// Push adds avail entries (visible only after Publish).
func (r *Ring) Push(heads ...uint16) {
	b := r.Mem.Bytes()
	for _, h := range heads {
		binary.LittleEndian.PutUint16(b[r.AvailOff+4+2*(int(r.availIdx)%r.Num):], h)
		r.availIdx++
	}
}

// Publish stores avail.flags and avail.idx with one atomic store.
func (r *Ring) Publish() {
	store32(r.Mem.Bytes(), r.AvailOff, uint32(r.availFlags)|uint32(r.availIdx)<<16)
}

// SetAvailIdx publishes any avail.idx, consistent or not.
func (r *Ring) SetAvailIdx(v uint16) {
	r.availIdx = v
	r.Publish()
}

// SetAvailFlags sets avail.flags (e.g. NO_INTERRUPT) at the next Publish.
func (r *Ring) SetAvailFlags(f uint16) { r.availFlags = f }

// AvailIdx is the avail index as last pushed.
func (r *Ring) AvailIdx() uint16 { return r.availIdx }

// UsedIdx reads used.idx.
func (r *Ring) UsedIdx() uint16 { return uint16(load32(r.Mem.Bytes(), r.UsedOff) >> 16) }

// UsedElem reads used entry i (modulo the ring size).
func (r *Ring) UsedElem(i uint16) (id, length uint32) {
	e := r.Mem.Bytes()[r.UsedOff+4+8*(int(i)%r.Num):]
	return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])
}

// Buffers gives every descriptor slot a buffer of size bytes.
func (r *Ring) Buffers(size int) error {
	r.bufOff = make([]int, r.Num)
	r.bufLen = size
	r.free = r.free[:0]
	for i := range r.Num {
		off, err := r.Mem.Alloc(size, 64)
		if err != nil {
			return err
		}
		r.bufOff[i] = off
		r.free = append(r.free, uint16(r.Num-1-i))
	}
	return nil
}

// reclaim frees the buffers the back-end has used. Ids it should never
// have written are ignored: this side trusts nothing and checks nothing.
func (r *Ring) reclaim() {
	ui := r.UsedIdx()
	for r.lastUsed != ui {
		id, _ := r.UsedElem(r.lastUsed)
		if int(id) < r.Num {
			r.free = append(r.free, uint16(id))
		}
		r.lastUsed++
	}
}

// SendFrames queues as many frames (each after a zeroed 12-byte
// virtio-net header) as there are free buffers and publishes them. It
// returns how many it queued.
func (r *Ring) SendFrames(frames [][]byte) int {
	r.reclaim()
	b := r.Mem.Bytes()
	n := 0
	for _, f := range frames {
		if len(r.free) == 0 || virtio.NetHdrLen+len(f) > r.bufLen {
			break
		}
		id := r.free[len(r.free)-1]
		r.free = r.free[:len(r.free)-1]
		off := r.bufOff[id]
		clear(b[off : off+virtio.NetHdrLen])
		copy(b[off+virtio.NetHdrLen:], f)
		r.SetDesc(int(id), Desc{Addr: r.Mem.GPAOf(off), Len: uint32(virtio.NetHdrLen + len(f))})
		r.Push(id)
		n++
	}
	if n > 0 {
		r.Publish()
	}
	return n
}

// PostRX posts every free buffer as one device-writable descriptor and
// publishes them; used ones are reposted first.
func (r *Ring) PostRX() int {
	r.reclaim()
	n := 0
	for len(r.free) > 0 {
		id := r.free[len(r.free)-1]
		r.free = r.free[:len(r.free)-1]
		r.SetDesc(int(id), Desc{Addr: r.Mem.GPAOf(r.bufOff[id]), Len: uint32(r.bufLen), Flags: virtio.DescFWrite})
		r.Push(id)
		n++
	}
	r.Publish()
	return n
}

// PostOneByteRX makes every slot a one-byte device-writable buffer, slot
// i at gpa+i (the caller owns Num bytes there), and publishes them all:
// with MRG_RXBUF a frame then takes a buffer per byte of header and frame.
func (r *Ring) PostOneByteRX(gpa uint64) {
	heads := make([]uint16, r.Num)
	for i := range r.Num {
		r.SetDesc(i, Desc{Addr: gpa + uint64(i), Len: 1, Flags: virtio.DescFWrite})
		heads[i] = uint16(i)
	}
	r.Push(heads...)
	r.Publish()
}

// Post writes a chain into consecutive descriptor slots from the ring's
// cursor (linking them with NEXT unless a descriptor sets Flags NEXT or
// Next itself), pushes its head and publishes it.
func (r *Ring) Post(ds ...Desc) uint16 {
	head := r.cursor
	for i, d := range ds {
		idx := int(r.cursor) % r.Num
		if i < len(ds)-1 && d.Flags&virtio.DescFNext == 0 && d.Next == 0 {
			d.Flags |= virtio.DescFNext
			d.Next = uint16((idx + 1) % r.Num)
		}
		r.SetDesc(idx, d)
		r.cursor = uint16((idx + 1) % r.Num)
	}
	r.Push(head)
	r.Publish()
	return head
}
