// Package xsk is vmq's AF_XDP socket layer: UMEM, the four rings, and
// sockets that share one UMEM and fill/completion ring pair per NIC queue
// (XDP_SHARED_UMEM), so that every VM gets its own socket on each queue.
//
// # Objects
//
// A UMEM is the packet memory. A Queue is one (interface, queue id) opened
// on a UMEM: it owns the queue's fill and completion rings, a disjoint
// range of the UMEM's frames with an allocator, and its sockets. The
// queue's primary socket binds first and registers the rings; per-VM
// sockets (Queue.NewSocket) bind to the same queue with XDP_SHARED_UMEM.
// Several queues may share one UMEM (UMEM.OpenQueue), each with its own
// fill/completion rings; NewQueue is the short form with a private UMEM.
//
// # Ownership and threading
//
// Everything reached through a Queue is used by one goroutine, the
// queue's worker: no method takes a lock or is safe for concurrent use,
// except the statistics readers (Queue.Stats, Socket.Stats,
// Socket.KernelStats). Ring indices are published with atomics once per
// batch. Nothing on the packet path allocates; syscalls happen only when
// the kernel asks for a wakeup (need_wakeup) or in Poll.
//
// # Worker loop
//
//	descs := make([]xsk.Desc, 64)
//	for {
//		q.Reap()          // completed tx frames back to the allocator
//		q.Refill(0)       // keep the fill ring stocked
//		for _, s := range q.Sockets() {
//			n := s.Receive(descs)
//			for _, d := range descs[:n] {
//				deliver(q.Frame(d))   // copy into the guest
//			}
//			q.FillDescs(descs[:n])     // frames straight back to the fill ring
//		}
//		// guest TX: one copy into a UMEM frame, then out of the VM's socket
//		var a [1]uint64
//		if q.Alloc(a[:]) == 1 {
//			n := copy(q.Buffer(a[0]), guestFrame)
//			vmSock.Transmit([]xsk.Desc{{Addr: a[0], Len: uint32(n)}})
//		}
//		if idle { q.Poll(time.Millisecond) }
//	}
//
// Frame accounting: every frame of a queue is free (in the allocator), in
// the fill ring, queued for TX, or held by the caller; QueueStats shows
// each, and the allocator refuses double frees and foreign addresses.
//
// Multi-buffer (QueueConfig.MultiBuffer, XDP_USE_SG, Linux 6.6+): a frame
// larger than a chunk spans several descriptors, PktContd on all but the
// last. Receive hands over whole frames only; Transmit queues whole
// packets only (at most MaxTxDescs descriptors each); every descriptor's
// frame completes or is refused on its own, so the accounting above holds
// per frame.
//
// On veth, AF_XDP works in copy mode only: ModeAuto falls back to copy
// mode, and Queue.ZeroCopy reports what the kernel granted.
package xsk
