package vhostuser

// Ready reports whether the guest has posted a buffer since the last Pop
// or Push (or the queue broke, which the next call reports): a cheap
// look at an idle ring, one load of the avail index, without a Pop's
// set-up. Owner only. It reads guest memory: the caller guards faults
// (RecoverFault) as around Pop.
func (q *Queue) Ready() bool {
	// Only the queue's own flag: the port's is another cache line per
	// queue, and Pop reports a broken port when the ring has something.
	if q.broken {
		return true
	}
	ok, err := q.haveAvail()
	return ok || err != nil
}
