package xsk

import (
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ring is one AF_XDP single-producer/single-consumer ring shared with the
// kernel. We are the producer of fill and tx rings and the consumer of rx
// and completion rings. The shared indices are free-running uint32s; the
// other side's index is cached and re-read only when the cached view runs
// out, and ours is published once per batch. Go's atomic loads and stores
// are sequentially consistent, which gives the acquire/release ordering the
// protocol needs (descriptors written before the producer index is
// published; descriptors read after the producer index is observed).
//
// A ring is not safe for concurrent use: its queue's worker owns it.
type ring[T any] struct {
	producer *uint32
	consumer *uint32
	flags    *uint32
	descs    []T
	mask     uint32
	size     uint32

	// cachedProd and cachedCons are our view of the indices. On a
	// producer ring cachedProd is our (possibly unpublished) index; on a
	// consumer ring cachedCons is.
	cachedProd uint32
	cachedCons uint32

	mem []byte // the mmap'ed region, nil for test rings
}

// --- producer side (fill, tx) ---

// free returns how many entries can be reserved, reading the kernel's
// consumer index only when fewer than want are known to be free.
func (r *ring[T]) free(want uint32) uint32 {
	n := r.size - (r.cachedProd - r.cachedCons)
	if n >= want {
		return n
	}
	r.cachedCons = atomic.LoadUint32(r.consumer)
	return r.size - (r.cachedProd - r.cachedCons)
}

// reserve claims up to n entries and returns the index of the first; the
// caller writes them with at() and publishes with submit().
func (r *ring[T]) reserve(n uint32) (idx, got uint32) {
	got = min(n, r.free(n))
	idx = r.cachedProd
	r.cachedProd += got
	return idx, got
}

// submit publishes every reserved entry to the kernel.
func (r *ring[T]) submit() { atomic.StoreUint32(r.producer, r.cachedProd) }

// --- consumer side (rx, completion) ---

// avail returns how many entries can be peeked, reading the kernel's
// producer index only when fewer than want are known to be there.
func (r *ring[T]) avail(want uint32) uint32 {
	n := r.cachedProd - r.cachedCons
	if n >= want {
		return n
	}
	r.cachedProd = atomic.LoadUint32(r.producer)
	return r.cachedProd - r.cachedCons
}

// peek returns the index of the first unread entry and how many (up to n)
// are readable with at().
func (r *ring[T]) peek(n uint32) (idx, got uint32) {
	return r.cachedCons, min(n, r.avail(n))
}

// release hands n peeked entries back to the kernel.
func (r *ring[T]) release(n uint32) {
	r.cachedCons += n
	atomic.StoreUint32(r.consumer, r.cachedCons)
}

// at is the entry at free-running index i.
func (r *ring[T]) at(i uint32) *T { return &r.descs[i&r.mask] }

// needWakeup reports whether the kernel asked to be woken (need_wakeup).
func (r *ring[T]) needWakeup() bool {
	return atomic.LoadUint32(r.flags)&unix.XDP_RING_NEED_WAKEUP != 0
}

// pending is how many entries the producer has published and the consumer
// has not yet consumed, as seen now in shared memory.
func (r *ring[T]) pending() uint32 {
	return atomic.LoadUint32(r.producer) - atomic.LoadUint32(r.consumer)
}

func (r *ring[T]) unmap() error {
	if r.mem == nil {
		return nil
	}
	err := unix.Munmap(r.mem)
	*r = ring[T]{}
	return err
}
