package dataplane

// Guest transmit queues are polled (their notifications are off while the
// worker is busy). A queue found empty is looked at again after 1, 3, 7,
// 15 rounds; one still empty then goes to the idle list, of which each
// round looks at every txIdleStride-th queue with one load of its avail
// index. So each quiet guest is still looked at every txIdleStride
// rounds, as before, but a round no longer walks every queue: with 256
// quiet guests it reads 16 rings, not 256 queue states.
const txIdleStride = maxTxBackoff + 1

// transmitAll serves the guest transmit queues and returns the frames
// they moved.
func (w *worker) transmitAll() int {
	n := 0
	if nq := len(w.txHot); nq > 0 {
		moved := false
		// One division a round, not one per ring (a div is ~40 cycles).
		k := int(w.rr % uint(nq))
		for range nq {
			vq := w.txHot[k]
			if k++; k == nq {
				k = 0
			}
			if vq.skip > 0 {
				vq.skip--
				continue
			}
			if vq.backoff > 0 && vq.vm.credit > 0 && !txReady(vq.q) {
				// Found empty before and still empty: one load, no Pop.
				if vq.backoff == maxTxBackoff {
					vq.idle, moved = true, true
					continue
				}
				vq.backoff = min(2*vq.backoff+1, maxTxBackoff)
				vq.skip = vq.backoff
				continue
			}
			n += w.transmitOne(vq)
		}
		if moved {
			w.regroupTx()
		}
	}
	if ni := len(w.txIdle); ni > 0 {
		woke := false
		for j := int(w.rr % txIdleStride); j < ni; j += txIdleStride {
			if vq := w.txIdle[j]; txReady(vq.q) {
				vq.idle, vq.backoff, vq.skip = false, 0, 0
				woke = true
				n += w.transmitOne(vq)
			}
		}
		if woke {
			w.regroupTx()
		}
	}
	return n
}

// transmitOne transmits from vq and adjusts its backoff.
func (w *worker) transmitOne(vq *virtq) int {
	w.serve(vq.vm.slot)
	got := w.transmit(vq)
	if got == 0 && vq.vm.credit > 0 {
		vq.backoff = min(2*vq.backoff+1, maxTxBackoff)
		vq.skip = vq.backoff
	} else {
		vq.backoff = 0
	}
	return got
}

// kicked makes a queue whose guest kicked while the worker slept hot
// again: the next round looks at it.
func (w *worker) kicked(vq *virtq) {
	vq.backoff, vq.skip = 0, 0
	if vq.idle {
		vq.idle = false
		w.regroupTx()
	}
}

// regroupTx moves queues between the hot and idle lists by their idle
// flag. Appends stay within the lists' capacity once they have held
// every queue: no allocation in the steady state.
func (w *worker) regroupTx() {
	hot, idle := w.txHot, w.txIdle
	w.txHot, w.txIdle = w.txSpare[:0], w.txSpare2[:0]
	for _, list := range [2][]*virtq{hot, idle} {
		for _, vq := range list {
			if vq.idle {
				w.txIdle = append(w.txIdle, vq)
			} else {
				w.txHot = append(w.txHot, vq)
			}
		}
	}
	clear(hot)
	clear(idle)
	w.txSpare, w.txSpare2 = hot[:0], idle[:0]
}

// dropTx removes vq from the hot and idle lists.
func (w *worker) dropTx(vq *virtq) {
	w.txHot = removeVirtq(w.txHot, vq)
	w.txIdle = removeVirtq(w.txIdle, vq)
}

func removeVirtq(list []*virtq, vq *virtq) []*virtq {
	for i, v := range list {
		if v == vq {
			copy(list[i:], list[i+1:])
			list[len(list)-1] = nil
			return list[:len(list)-1]
		}
	}
	return list
}
