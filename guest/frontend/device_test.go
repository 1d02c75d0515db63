package frontend

import (
	"encoding/binary"
	"fmt"

	"github.com/vmq/vmq/dataplane/virtio"
)

// testDev is a minimal device side of one virtqueue over the driver's
// memory, for unit tests without a backend process.
type testDev struct {
	r         *ring
	mem       *guestMemory
	lastAvail uint16
	usedIdx   uint16
}

func newTestDev(r *ring, mem *guestMemory) *testDev { return &testDev{r: r, mem: mem} }

func (d *testDev) availIdx() uint16 { return uint16(load32(d.r.avail, 0) >> 16) }

// pop takes the next available descriptor and returns its buffer.
func (d *testDev) pop() (id uint16, buf []byte, flags uint16, err error) {
	if d.lastAvail == d.availIdx() {
		return 0, nil, 0, fmt.Errorf("no available descriptor")
	}
	id = binary.LittleEndian.Uint16(d.r.avail[4+2*int(d.lastAvail&d.r.mask):])
	d.lastAvail++
	desc := d.r.desc[int(id)*virtio.DescSize:]
	addr := binary.LittleEndian.Uint64(desc)
	l := binary.LittleEndian.Uint32(desc[8:])
	flags = binary.LittleEndian.Uint16(desc[12:])
	buf, err = d.mem.translate(addr, l)
	return id, buf, flags, err
}

// used writes a used entry without publishing it.
func (d *testDev) used(id, l uint32) {
	e := d.r.used[4+8*int(d.usedIdx&d.r.mask):]
	binary.LittleEndian.PutUint32(e, id)
	binary.LittleEndian.PutUint32(e[4:], l)
	d.usedIdx++
}

func (d *testDev) publish() {
	w := load32(d.r.used, 0)
	store32(d.r.used, 0, w&0xffff|uint32(d.usedIdx)<<16)
}

func (d *testDev) setUsedFlags(f uint16) {
	w := load32(d.r.used, 0)
	store32(d.r.used, 0, w&0xffff0000|uint32(f))
}

func (d *testDev) setAvailEvent(v uint16) { store32(d.r.used, 4+8*d.r.n, uint32(v)) }

// deliver writes frame into the rx queue as a device would: one buffer,
// or several with num_buffers when mrg. It does not publish.
func (d *testDev) deliver(frame []byte, mrg bool) error {
	total := virtio.NetHdrLen + len(frame)
	var first []byte
	nbuf := uint16(0)
	src := frame
	for written := 0; written < total; {
		id, buf, flags, err := d.pop()
		if err != nil {
			return err
		}
		if flags&virtio.DescFWrite == 0 {
			return fmt.Errorf("rx descriptor %d not device-writable", id)
		}
		n := 0
		if written == 0 {
			first = buf
			clear(buf[:virtio.NetHdrLen])
			n = virtio.NetHdrLen
		}
		c := copy(buf[n:], src)
		src = src[c:]
		n += c
		written += n
		nbuf++
		d.used(uint32(id), uint32(n))
		if !mrg && written < total {
			return fmt.Errorf("frame of %d bytes does not fit one buffer", len(frame))
		}
	}
	binary.LittleEndian.PutUint16(first[10:], nbuf)
	return nil
}

// take reads every available tx frame, returns copies and uses them.
func (d *testDev) take() ([][]byte, error) {
	var out [][]byte
	for d.lastAvail != d.availIdx() {
		id, buf, flags, err := d.pop()
		if err != nil {
			return out, err
		}
		if flags != 0 || len(buf) < virtio.NetHdrLen {
			return out, fmt.Errorf("tx descriptor %d: flags %#x len %d", id, flags, len(buf))
		}
		out = append(out, append([]byte(nil), buf[virtio.NetHdrLen:]...))
		d.used(uint32(id), 0)
	}
	d.publish()
	return out, nil
}
