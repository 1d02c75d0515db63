package vhostuser

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
