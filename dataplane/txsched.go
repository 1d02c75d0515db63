package dataplane

// Guest transmit queues are polled (their notifications are off while the
// worker is busy). A queue found empty is looked at again after 1, 3, 7,
// 15 rounds; one still empty then goes to the idle list with its
// notifications on (until it has frames again): the worker's sleep then
// enables and its wake-up disables only the hot queues' notifications,
// not every guest's (with 256 quiet guests that was 512 writes to guest
// rings, each a cache miss, per sleep). A quiet guest that starts sending
// kicks (once, with EVENT_IDX): a sleeping worker wakes for it, a busy
// one asks the kick set every txIdleStride rounds (one epoll_wait for all
// guests), so it is served within txIdleStride rounds, as when the idle
// list was scanned with that stride. For a guest that sends without
// kicking, each round also looks at one idle queue in turn (one load of
// its avail index): every idle queue within len(txIdle) rounds, so no
// guest waits for ever. A queue without a kick fd never goes idle: it
// stays hot, looked at every maxTxBackoff+1 rounds.
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
				if vq.backoff == maxTxBackoff && vq.kickFD >= 0 {
					// Idle with its notifications on, unless the guest
					// posted frames meanwhile (then it stays hot).
					if !enableNotify(vq.q) {
						vq.idle, moved = true, true
						continue
					}
					disableNotify(vq.q)
					vq.backoff = 0
					n += w.transmitOne(vq)
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
	if len(w.txIdle) > 0 && w.rr%txIdleStride == 0 {
		w.takeKicks() // the kicked queues are hot for the next round
	}
	if ni := len(w.txIdle); ni > 0 {
		if w.txIdleNext >= ni {
			w.txIdleNext = 0
		}
		if vq := w.txIdle[w.txIdleNext]; txReady(vq.q) {
			w.kicked(vq) // hot, notifications off
			n += w.transmitOne(vq)
		} else {
			w.txIdleNext++
		}
	}
	return n
}

// transmitOne transmits from vq and adjusts its backoff.
func (w *worker) transmitOne(vq *virtq) int {
	w.serve(vq.vm.slot)
	got := w.transmit(vq)
	if got > 0 && vq.kicks.pending {
		vq.kicks.worked()
	}
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
		disableNotify(vq.q) // polled while hot
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
