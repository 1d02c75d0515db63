package vhostuser

import (
	"encoding/binary"

	"github.com/vmq/vmq/dataplane/virtio"
)

// RxRoom is how many frames the guest has posted receive buffers for, up
// to max: on a split ring the heads posted and not yet used (each frame
// takes at least one, so frames that need several find less room); on a
// packed ring the descriptors posted in a row from the next one (one load
// each, of lines the Push that follows reads anyway). A broken queue
// reports max: the
// Push that follows drops and counts as it always did. Owner only. It
// reads guest memory: the caller guards faults (RecoverFault).
func (q *Queue) RxRoom(max int) int {
	if q.broken || max <= 0 {
		return max
	}
	if q.packed {
		n := 0
		for n < max && q.packedAvailAt(q.lastAvail+uint16(n)) {
			n++
		}
		return n
	}
	if n := int(q.availIdx - q.lastAvail); n >= max {
		return max
	}
	q.availIdx = q.lastAvail // only a cache of the guest's index: reload it
	if _, err := q.haveAvail(); err != nil {
		return max
	}
	return min(int(q.availIdx-q.lastAvail), max)
}

// TouchRx reads the split ring's lines the next Push reads first, lines
// the guest writes on another CPU: the avail index, the next avail entry
// and the descriptor it names (when in range), and returns a value of
// them for the caller's sink. A worker calls it a visit ahead so these
// misses overlap the visit before. Ring memory only, checked when the
// ring started; a fault breaks the queue, as the Push's read would. It
// changes nothing else. Owner only.
func (q *Queue) TouchRx() (x uint32) {
	if q.packed || len(q.avail) == 0 || q.isBroken() {
		return 0
	}
	defer q.RecoverFault()
	x = atomicLoad32(q.avail, q.availWord)
	id := binary.LittleEndian.Uint16(q.avail[4+2*int(q.lastAvail&q.mask):])
	if uint32(id) < q.num {
		x += uint32(q.desc[int(id)*virtio.DescSize])
	}
	return x
}
