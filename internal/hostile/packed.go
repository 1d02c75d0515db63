package hostile

import (
	"encoding/binary"
	"fmt"

	"github.com/vmq/vmq/dataplane/virtio"
)

// Packed rings (VIRTIO_F_RING_PACKED): a Ring made by NewPackedRing has
// one descriptor ring of Num 16-byte descriptors at DescOff, the driver
// event suppression area at AvailOff and the device area at UsedOff, so
// Addr gives the SET_VRING_ADDR payload unchanged. PostPacked writes
// chains as a driver would (the head's flags last); SetPackedDesc writes
// any descriptor with any flags, for lies about ids and wrap counters.

// PackedDesc is one packed-ring descriptor, written exactly as given
// (Flags are the raw flags: PostPacked adds AVAIL and USED).
type PackedDesc struct {
	Addr  uint64
	Len   uint32
	ID    uint16
	Flags uint16
}

// NewPackedRing allocates a packed ring of num entries in m.
func NewPackedRing(m *Mem, num int) (*Ring, error) {
	if num < 1 || num > virtio.MaxQueueSize {
		return nil, fmt.Errorf("hostile packed ring of %d entries", num)
	}
	r := &Ring{Mem: m, Num: num, Packed: true}
	var err error
	if r.DescOff, err = m.Alloc(virtio.PackedDescTableSize(num), 4096); err != nil {
		return nil, err
	}
	if r.AvailOff, err = m.Alloc(virtio.PackedEventSize, 64); err != nil {
		return nil, err
	}
	if r.UsedOff, err = m.Alloc(virtio.PackedEventSize, 64); err != nil {
		return nil, err
	}
	return r, nil
}

// SetPackedDesc writes ring slot i, the flags (id and flags, one word)
// last with one atomic store.
func (r *Ring) SetPackedDesc(i int, d PackedDesc) {
	b := r.Mem.Bytes()
	o := r.DescOff + (i%r.Num)*virtio.PackedDescSize
	binary.LittleEndian.PutUint64(b[o:], d.Addr)
	binary.LittleEndian.PutUint32(b[o+8:], d.Len)
	store32(b, o+12, uint32(d.ID)|uint32(d.Flags)<<16)
}

// packedAvailFlags are AVAIL and USED as a driver sets them at position
// pos: AVAIL equal to its wrap counter, USED not.
func (r *Ring) packedAvailFlags(pos uint16) uint16 {
	if (int(pos)/r.Num)%2 == 0 { // wrap counter 1
		return virtio.DescFAvail
	}
	return virtio.DescFUsed
}

// PostPacked makes a chain available at the next positions (each with
// its flags plus the AVAIL/USED pair of its position), the head's flags
// written last so the chain appears whole.
func (r *Ring) PostPacked(ds ...PackedDesc) {
	head := r.availIdx
	for i := len(ds) - 1; i >= 0; i-- {
		pos := head + uint16(i)
		d := ds[i]
		d.Flags |= r.packedAvailFlags(pos)
		r.SetPackedDesc(int(pos)%r.Num, d)
	}
	r.availIdx += uint16(len(ds))
}

// PackedUsed reports whether slot i holds a used descriptor (in either
// wrap): AVAIL and USED equal.
func (r *Ring) PackedUsed(i int) bool {
	f := uint16(load32(r.Mem.Bytes(), r.DescOff+(i%r.Num)*virtio.PackedDescSize+12) >> 16)
	return (f&virtio.DescFAvail != 0) == (f&virtio.DescFUsed != 0)
}

// WritePackedDescs writes packed descriptors back to back at offset off
// of m: an indirect table of a packed ring. The layout is a split
// descriptor's with id where flags were and flags where next was.
func WritePackedDescs(m *Mem, off int, ds ...PackedDesc) {
	for i, d := range ds {
		WriteDescs(m, off+i*virtio.PackedDescSize, Desc{Addr: d.Addr, Len: d.Len, Flags: d.ID, Next: d.Flags})
	}
}
