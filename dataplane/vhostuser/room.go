package vhostuser

// RxRoom is how many frames the guest has posted receive buffers for, up
// to max: on a split ring the heads posted and not yet used (each frame
// takes at least one, so frames that need several find less room); on a
// packed ring, whose posted descriptors cannot be counted without walking
// them, max if one is posted, else 0. A broken queue reports max: the
// Push that follows drops and counts as it always did. Owner only. It
// reads guest memory: the caller guards faults (RecoverFault).
func (q *Queue) RxRoom(max int) int {
	if q.broken || max <= 0 {
		return max
	}
	if q.packed {
		if q.packedHaveAvail() {
			return max
		}
		return 0
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
