// Package vhostuser is vmq's vhost-user net back-end (the device side of
// the "VMBus"): a guest's virtio-net driver shares its memory and its
// virtqueues, split or packed (packed.go), with vmqd over a unix socket
// (QEMU docs/interop/vhost-user.rst, virtio 1.1).
//
// A Port is one device. Listen serves front-ends one at a time (server
// mode); Dial connects to a front-end's socket and reconnects with
// backoff (client mode). The port's control goroutine handles messages
// and hands queues to the dataplane through a Handler:
//
//   - QueueReady(q): memory mapped, ring addresses valid, kick received,
//     ring enabled. From then on only the owning worker calls q's data
//     path: Push/Pop, Flush, EnableNotify/DisableNotify, AckKick.
//   - QueueStopped(q): before the port unmaps memory, answers
//     GET_VRING_BASE, changes a ring or a fd, resets, or loses the
//     front-end. It must return only after the worker has done a final
//     q.Flush and will not touch q again (the worker acks through its
//     command channel).
//   - DeviceBroken(p, reason): the guest broke the rules; all queues of
//     the port now refuse work (ErrBroken) until the front-end resets the
//     device. May be called from a worker goroutine; must not block.
//
// A worker's loop, per queue, batched:
//
//	RX (to the guest):   for frames { q.Push(f) }  q.Flush()
//	TX (from the guest): for { n, err := q.Pop(umemFrame) ... }  q.Flush()
//
// Flush publishes the used index once and, as EVENT_IDX or the
// no-interrupt flag ask, has the port's notifier goroutine write the call
// eventfd (a guest can make that write block: the worker never makes it,
// and never blocks on a guest's fd; AckKick reads with RWF_NOWAIT). A busy worker calls
// DisableNotify; before sleeping it calls EnableNotify (which reports
// work that raced in), polls KickFD, then AckKick. Workers should run
// with debug.SetPanicOnFault(true) and defer q.RecoverFault() around a
// batch: a front-end that shrinks a mapped file would otherwise crash the
// daemon with SIGBUS.
//
// Live migration: the port offers VHOST_F_LOG_ALL with LOG_SHMFD. While
// the front-end has LOG_ALL in the features and a log mapped
// (SET_LOG_BASE), Push marks the pages of the receive buffers it writes,
// and Flush, EnableNotify and DisableNotify the used-ring pages (at the
// ring's log address, VHOST_VRING_F_LOG) in the front-end's bitmap with
// atomic ORs; with logging off that costs a nil check per written buffer
// segment and per flush. GET_VRING_BASE stops the ring (its worker
// flushes and logs) before the reply, so the last used entries are in the
// log when the source's QEMU syncs it. SEND_RARP goes to a Handler that
// is also an Announcer; a Handler that is a Disconnecter hears each
// front-end leave (the dataplane ends a migration there).
//
// Every guest-provided address, length, index and chain is checked
// against the memory table; a violation marks the port broken (logged
// with slog, counted in PortState.BrokenCount) and never reads or writes
// outside the guest's regions.
package vhostuser
