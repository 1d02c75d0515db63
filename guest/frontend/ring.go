package frontend

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
)

// ErrDeviceBroken wraps every inconsistency the device wrote into a used
// ring (an id out of range or not in flight, a length beyond the buffer).
var ErrDeviceBroken = errors.New("device broke the virtqueue protocol")

// ErrFrameTooLarge is returned for a frame that does not fit a TX buffer.
var ErrFrameTooLarge = errors.New("frame larger than a tx buffer")

// ring is the driver side of one split virtqueue in shared memory. Every
// descriptor chain is a single descriptor with a fixed buffer: descriptor
// i always points at buffer i.
type ring struct {
	n     int
	mask  uint16
	desc  []byte
	avail []byte // flags, idx, ring[n], used_event, 2 bytes padding
	used  []byte // flags, idx, ring[n]{id,len}, avail_event, 2 bytes padding

	eventIdx bool
	kickFD   int           // -1 in tests without a device process
	pk       *packedDriver // non-nil: a packed ring (packed.go)

	availIdx   uint16 // shadow of avail.idx, not yet visible before publish
	availFlags uint16
	published  uint16 // avail.idx at the last publish
	lastUsed   uint16 // next used entry to read
	kicks      uint64
	noKick     bool // Config.NoTxKick
}

// ringBytes are the sizes allocated for one ring's three parts; the extra
// 2 bytes keep the event words 32-bit accessible.
func ringBytes(n int) (desc, avail, used int) {
	return virtio.DescTableSize(n), virtio.AvailRingSize(n) + 2, virtio.UsedRingSize(n) + 2
}

func newRing(mem *guestMemory, n int, eventIdx bool) (ring, error) {
	if n < 2 || n > virtio.MaxQueueSize || n&(n-1) != 0 {
		return ring{}, fmt.Errorf("queue size %d: want a power of two in 2..%d", n, virtio.MaxQueueSize)
	}
	dl, al, ul := ringBytes(n)
	desc, _, err := mem.alloc(0, dl, pageSize)
	if err != nil {
		return ring{}, err
	}
	avail, _, err := mem.alloc(0, al, pageSize)
	if err != nil {
		return ring{}, err
	}
	used, _, err := mem.alloc(0, ul, pageSize)
	if err != nil {
		return ring{}, err
	}
	clear(desc)
	clear(avail)
	clear(used)
	return ring{n: n, mask: uint16(n - 1), desc: desc, avail: avail, used: used, eventIdx: eventIdx, kickFD: -1}, nil
}

// newRingFor makes a split or packed ring as the negotiated features say.
func newRingFor(mem *guestMemory, n int, features uint64) (ring, error) {
	if features&virtio.FRingPacked != 0 {
		if err := checkPackedSize(n); err != nil {
			return ring{}, err
		}
		return newPackedRing(mem, n, features&virtio.RingFEventIdx != 0, features&virtio.FInOrder != 0)
	}
	return newRing(mem, n, features&virtio.RingFEventIdx != 0)
}

func (r *ring) putDesc(id uint16, addr uint64, length uint32, flags uint16) {
	if r.pk != nil {
		r.pk.putDesc(id, addr, length, flags)
		return
	}
	d := r.desc[int(id)*virtio.DescSize:]
	binary.LittleEndian.PutUint64(d[0:], addr)
	binary.LittleEndian.PutUint32(d[8:], length)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], 0)
}

func (r *ring) pushAvail(id uint16) {
	if r.pk != nil {
		r.pk.pushAvail(r.desc, id)
		return
	}
	binary.LittleEndian.PutUint16(r.avail[4+2*int(r.availIdx&r.mask):], id)
	r.availIdx++
}

// publish makes the new avail entries visible (one atomic store per batch)
// and reports whether the device asked to be notified about them.
func (r *ring) publish() bool {
	if r.pk != nil {
		return r.pk.publish(r.desc, r.eventIdx)
	}
	store32(r.avail, 0, uint32(r.availFlags)|uint32(r.availIdx)<<16)
	old := r.published
	r.published = r.availIdx
	// The store above is sequentially consistent, so the device's
	// suppression state read below is not older than our publication.
	if r.eventIdx {
		return virtio.NeedEvent(r.availEvent(), r.availIdx, old)
	}
	return uint16(load32(r.used, 0))&virtio.UsedFNoNotify == 0
}

func (r *ring) availEvent() uint16 { return uint16(load32(r.used, 4+8*r.n)) }

// usedIdx is the count of used entries (for a packed ring: recorded by a
// scan of the ring, which only the ring's owner may run).
func (r *ring) usedIdx() uint16 {
	if r.pk != nil {
		return r.pk.scan(r.desc)
	}
	return uint16(load32(r.used, 0) >> 16)
}

func (r *ring) usedElem(i uint16) (id, length uint32) {
	if r.pk != nil {
		return r.pk.usedElem(i)
	}
	e := r.used[4+8*int(i&r.mask):]
	return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])
}

var kickValue = [8]byte{1}

func (r *ring) kick() error {
	r.kicks++
	if r.kickFD < 0 || r.noKick {
		return nil
	}
	if _, err := unix.Write(r.kickFD, kickValue[:]); err != nil && err != unix.EAGAIN {
		return fmt.Errorf("kick: %w", err)
	}
	return nil
}

// enableInterrupts asks the device to signal the call fd at its next used
// entry. The caller must look at the used ring again afterwards, since an
// entry may have landed just before the request became visible.
func (r *ring) enableInterrupts() {
	if r.pk != nil {
		r.pk.setInterrupts(true, r.eventIdx)
		return
	}
	if r.eventIdx {
		store32(r.avail, 4+2*r.n, uint32(r.lastUsed))
		return
	}
	r.availFlags &^= virtio.AvailFNoInterrupt
	store32(r.avail, 0, uint32(r.availFlags)|uint32(r.published)<<16)
}

// disableInterrupts stops call signals while the driver busy-polls. With
// EVENT_IDX the stale used_event already suppresses them.
func (r *ring) disableInterrupts() {
	if r.pk != nil {
		r.pk.setInterrupts(false, r.eventIdx)
		return
	}
	if r.eventIdx {
		return
	}
	r.availFlags |= virtio.AvailFNoInterrupt
	store32(r.avail, 0, uint32(r.availFlags)|uint32(r.published)<<16)
}

// rxQueue is a receive virtqueue: every descriptor is posted device-writable
// and reposted as soon as its frame has been handed to the caller.
type rxQueue struct {
	ring
	bufs    [][]byte
	gpas    []uint64
	bufLen  uint32
	posted  []bool
	mrg     bool
	scratch []byte   // merged frames are copied here
	repost  []uint16 // ids to post again at the end of a batch
}

// maxMergedFrame bounds a frame assembled from several buffers.
const maxMergedFrame = 65535 + virtio.NetHdrLen

func newRxQueue(mem *guestMemory, n int, bufLen int, mrg bool, features uint64) (*rxQueue, error) {
	if bufLen < virtio.NetHdrLen+64 || (!mrg && bufLen < virtio.NetHdrLen+1514) {
		return nil, fmt.Errorf("rx buffer of %d bytes too small (mergeable=%v)", bufLen, mrg)
	}
	r, err := newRingFor(mem, n, features)
	if err != nil {
		return nil, err
	}
	q := &rxQueue{ring: r, bufs: make([][]byte, n), gpas: make([]uint64, n), bufLen: uint32(bufLen),
		posted: make([]bool, n), mrg: mrg, repost: make([]uint16, 0, n)}
	if mrg {
		q.scratch = make([]byte, maxMergedFrame)
	}
	for i := range n {
		// Spread buffers over all regions so multi-region tables are used.
		b, gpa, err := mem.alloc(i%len(mem.regions), bufLen, 64)
		if err != nil {
			return nil, fmt.Errorf("rx buffers: %w", err)
		}
		q.bufs[i], q.gpas[i] = b, gpa
		q.putDesc(uint16(i), gpa, uint32(bufLen), virtio.DescFWrite)
		q.pushAvail(uint16(i))
		q.posted[i] = true
	}
	q.publish() // setup kicks every rx ring once the device is enabled
	return q, nil
}

// poll hands up to max received frames to fn (the slice is valid only
// during the call), reposts their buffers and kicks the device if it asks.
// dropped counts frames too large to assemble.
func (q *rxQueue) poll(max int, fn func(frame []byte)) (frames, bytes, dropped int, err error) {
	ui := q.usedIdx()
	for q.lastUsed != ui && frames+dropped < max {
		id, l, err := q.usedBuf(q.lastUsed)
		if err != nil {
			return frames, bytes, dropped, err
		}
		if l < virtio.NetHdrLen {
			return frames, bytes, dropped, fmt.Errorf("%w: rx used len %d shorter than the net header", ErrDeviceBroken, l)
		}
		nbuf := uint16(1)
		if q.mrg {
			nbuf = binary.LittleEndian.Uint16(q.bufs[id][10:])
			if nbuf == 0 || int(nbuf) > q.n {
				return frames, bytes, dropped, fmt.Errorf("%w: num_buffers %d with queue size %d", ErrDeviceBroken, nbuf, q.n)
			}
			if ui-q.lastUsed < nbuf {
				break // the rest of the frame is not published yet
			}
		}
		var frame []byte
		if nbuf == 1 {
			frame = q.bufs[id][virtio.NetHdrLen:l]
			q.consume(id)
		} else {
			frame, err = q.gather(nbuf)
			if err != nil {
				return frames, bytes, dropped, err
			}
		}
		q.lastUsed += nbuf
		if frame == nil {
			dropped++
			continue
		}
		fn(frame)
		frames++
		bytes += len(frame)
	}
	if len(q.repost) > 0 {
		for _, id := range q.repost {
			q.pushAvail(id)
			q.posted[id] = true
		}
		q.repost = q.repost[:0]
		if q.publish() {
			if err := q.kick(); err != nil {
				return frames, bytes, dropped, err
			}
		}
	}
	return frames, bytes, dropped, nil
}

// usedBuf reads used entry i and checks it names a posted buffer.
func (q *rxQueue) usedBuf(i uint16) (uint16, uint32, error) {
	id, l := q.usedElem(i)
	if id >= uint32(q.n) || !q.posted[id] {
		return 0, 0, fmt.Errorf("%w: rx used id %d not in flight (queue size %d)", ErrDeviceBroken, id, q.n)
	}
	if l > q.bufLen {
		return 0, 0, fmt.Errorf("%w: rx used len %d exceeds buffer of %d", ErrDeviceBroken, l, q.bufLen)
	}
	return uint16(id), l, nil
}

func (q *rxQueue) consume(id uint16) {
	q.posted[id] = false
	q.repost = append(q.repost, id)
}

// gather copies a frame spread over nbuf used entries into scratch; a nil
// frame means it was too long and has been dropped (its buffers reposted).
func (q *rxQueue) gather(nbuf uint16) ([]byte, error) {
	n := 0
	tooLong := false
	for k := uint16(0); k < nbuf; k++ {
		id, l, err := q.usedBuf(q.lastUsed + k)
		if err != nil {
			return nil, err
		}
		seg := q.bufs[id][:l]
		if k == 0 {
			seg = seg[virtio.NetHdrLen:]
		}
		if n+len(seg) > len(q.scratch) {
			tooLong = true
		} else {
			n += copy(q.scratch[n:], seg)
		}
		q.consume(id)
	}
	if tooLong {
		return nil, nil
	}
	return q.scratch[:n], nil
}

// txQueue is a transmit virtqueue. Senders from any goroutine and the
// poll loop's reclaim share it under mu (one lock per batch).
type txQueue struct {
	mu sync.Mutex
	ring
	bufs     [][]byte
	gpas     []uint64
	free     []uint16
	inflight []bool
	closed   bool
}

func newTxQueue(mem *guestMemory, n int, bufLen int, features uint64) (*txQueue, error) {
	if bufLen < virtio.NetHdrLen+60 {
		return nil, fmt.Errorf("tx buffer of %d bytes too small", bufLen)
	}
	r, err := newRingFor(mem, n, features)
	if err != nil {
		return nil, err
	}
	q := &txQueue{ring: r, bufs: make([][]byte, n), gpas: make([]uint64, n), free: make([]uint16, 0, n), inflight: make([]bool, n)}
	for i := range n {
		b, gpa, err := mem.alloc((i+1)%len(mem.regions), bufLen, 64)
		if err != nil {
			return nil, fmt.Errorf("tx buffers: %w", err)
		}
		q.bufs[i], q.gpas[i] = b, gpa
		q.free = append(q.free, uint16(n-1-i))
	}
	// The sender reclaims when it runs short; completions need no signal.
	q.disableInterruptsTX()
	return q, nil
}

func (q *txQueue) disableInterruptsTX() {
	if q.pk != nil {
		q.pk.setInterrupts(false, q.eventIdx)
		return
	}
	q.availFlags |= virtio.AvailFNoInterrupt
	store32(q.avail, 0, uint32(q.availFlags))
	if q.eventIdx {
		// used_event half a ring behind the start: no signal for 32k entries.
		store32(q.avail, 4+2*q.n, uint32(uint16(0x8000)))
	}
}

// maxFrame is the largest frame a tx buffer holds.
func (q *txQueue) maxFrame() int { return len(q.bufs[0]) - virtio.NetHdrLen }

// reclaim frees the buffers the device has used. Caller holds mu.
func (q *txQueue) reclaim() (int, error) {
	ui := q.usedIdx()
	n := 0
	for q.lastUsed != ui {
		id, _ := q.usedElem(q.lastUsed)
		if id >= uint32(q.n) || !q.inflight[id] {
			return n, fmt.Errorf("%w: tx used id %d not in flight (queue size %d)", ErrDeviceBroken, id, q.n)
		}
		q.inflight[id] = false
		q.free = append(q.free, uint16(id))
		q.lastUsed++
		n++
	}
	return n, nil
}

// post queues as many frames as there are free buffers, publishes them
// with one store and kicks the device if it asks. Caller holds mu.
func (q *txQueue) post(frames [][]byte) (sent, bytes int, err error) {
	if len(q.free) < len(frames) {
		if _, err := q.reclaim(); err != nil {
			return 0, 0, err
		}
	}
	max := q.maxFrame()
	for _, f := range frames {
		if len(q.free) == 0 {
			break
		}
		if len(f) > max {
			err = fmt.Errorf("%w: %d > %d bytes", ErrFrameTooLarge, len(f), max)
			break
		}
		id := q.free[len(q.free)-1]
		q.free = q.free[:len(q.free)-1]
		b := q.bufs[id]
		clear(b[:virtio.NetHdrLen])
		copy(b[virtio.NetHdrLen:], f)
		q.putDesc(id, q.gpas[id], uint32(virtio.NetHdrLen+len(f)), 0)
		q.pushAvail(id)
		q.inflight[id] = true
		sent++
		bytes += len(f)
	}
	if sent > 0 && q.publish() {
		if kerr := q.kick(); kerr != nil && err == nil {
			err = kerr
		}
	}
	return sent, bytes, err
}
