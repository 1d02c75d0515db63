package xsk

import "fmt"

// SocketStats are a socket's own counters, kept with one atomic add per
// batch.
type SocketStats struct {
	RxFrames uint64 // descriptors taken off the rx ring
	TxFrames uint64 // descriptors queued on the tx ring
	Wakeups  uint64 // sendto calls made because the kernel asked
	TxErrors uint64 // failed wakeups (not transient)
	// RxTooLong counts multi-buffer frames dropped because they had more
	// descriptors than the Receive call had room for.
	RxTooLong uint64
}

// Stats reads the socket's counters; safe from any goroutine.
func (s *Socket) Stats() SocketStats {
	return SocketStats{
		RxFrames: s.rxFrames.Load(),
		TxFrames: s.txFrames.Load(),
		Wakeups:  s.wakeups.Load(),
		TxErrors: s.txErrors.Load(),

		RxTooLong: s.rxTooLong.Load(),
	}
}

// KernelStats are the kernel's XDP_STATISTICS for one socket.
type KernelStats struct {
	RxDropped     uint64 // frames dropped for reasons other than below
	RxInvalid     uint64 // invalid rx descriptors
	TxInvalid     uint64 // invalid tx descriptors
	RxRingFull    uint64 // frames dropped because the rx ring was full
	FillRingEmpty uint64 // times the fill ring was empty when a frame arrived
	TxRingEmpty   uint64 // times the tx ring was empty on a wakeup
}

// KernelStats reads XDP_STATISTICS (one getsockopt); safe from any
// goroutine while the socket is open.
func (s *Socket) KernelStats() (KernelStats, error) {
	st, err := getsockoptStatistics(s.fd)
	if err != nil {
		return KernelStats{}, fmt.Errorf("get XDP statistics of %s: %w", s.q.name, err)
	}
	return KernelStats{
		RxDropped:     st.Rx_dropped,
		RxInvalid:     st.Rx_invalid_descs,
		TxInvalid:     st.Tx_invalid_descs,
		RxRingFull:    st.Rx_ring_full,
		FillRingEmpty: st.Rx_fill_ring_empty_descs,
		TxRingEmpty:   st.Tx_ring_empty_descs,
	}, nil
}

// QueueStats account for every frame of a queue. At any moment
//
//	Total == Free + InFill + InTx + Held
//
// where InFill are frames given to the fill ring and not yet received,
// InTx frames queued for TX and not yet completed, and Held the frames
// the caller holds (received, allocated or completed, not yet given back).
// When the queue is quiet, InFill equals FillRing (what the fill ring
// itself still holds): anything else means the kernel kept frames.
type QueueStats struct {
	Total, Free, InFill, InTx, Held int
	FillRing                        int    // entries in the fill ring not yet consumed by the kernel
	Filled, Received                uint64 // frames put on the fill ring; taken off rx rings
	TxSubmitted, Completed          uint64
	DoubleFrees                     uint64 // frees of frames that were already free
	BadAddrs                        uint64 // frees of addresses outside the queue's frames
	Rejected                        uint64 // Fill/Transmit addresses refused
	FillWakeups                     uint64 // recvfrom calls because the fill ring asked
	Polls                           uint64
}

// Stats reads the queue's frame accounting. Safe from any goroutine; the
// counters are read one by one, so a snapshot taken while the worker runs
// is only approximately consistent. It must not race with Close.
func (q *Queue) Stats() QueueStats {
	st := QueueStats{
		Total:       q.pool.total(),
		Free:        int(q.pool.free.Load()),
		Filled:      q.filled.Load(),
		Received:    q.received.Load(),
		TxSubmitted: q.txSubmitted.Load(),
		Completed:   q.completed.Load(),
		DoubleFrees: q.pool.doubleFrees.Load(),
		BadAddrs:    q.pool.badAddrs.Load(),
		Rejected:    q.rejected.Load(),
		FillWakeups: q.fillWakeups.Load(),
		Polls:       q.polls.Load(),
	}
	if !q.closed.Load() {
		st.FillRing = int(q.fill.pending())
	}
	st.InFill = int(st.Filled - st.Received)
	st.InTx = int(st.TxSubmitted - st.Completed)
	st.Held = st.Total - st.Free - st.InFill - st.InTx
	return st
}
