package bpf

import (
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// PendingWords is how many 64-bit words of the pending bitmap one queue
// has: a bit for every slot 0..maxVMs (0 is the flood socket).
func PendingWords(maxVMs int) int { return maxVMs/64 + 1 }

// Pending is one queue's view of the filter's pending bitmap: the program
// sets a slot's bit when it redirects a frame to that slot's socket on
// the queue, the queue's worker takes the bits (Take) and visits only
// those sockets. It is mmapped: taking bits costs no syscall.
//
// A bit is set before the kernel publishes the frame in the socket's rx
// ring (at the end of the driver's poll), so a taker that finds the ring
// still empty must look again a little later; it must also not rely on
// bits alone forever (see the worker's periodic sweep).
type Pending struct {
	mem   []byte
	words []uint64 // this queue's words in mem
}

// MapPending maps the pending bitmap and returns queue's part of it.
// Close unmaps it.
func (f *Filter) MapPending(queue int) (*Pending, error) {
	if queue < 0 || queue >= f.cfg.MaxQueues {
		return nil, fmt.Errorf("pending bitmap of queue %d: queue out of range 0..%d", queue, f.cfg.MaxQueues-1)
	}
	n := PendingWords(f.cfg.MaxVMs)
	size := int(f.objs.Pending.MaxEntries()) * 8
	page := unix.Getpagesize()
	mem, err := unix.Mmap(f.objs.Pending.FD(), 0, (size+page-1)/page*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap pending bitmap: %w", err)
	}
	all := words(mem[:size])
	return &Pending{mem: mem, words: all[queue*n : queue*n+n : queue*n+n]}, nil
}

// Words is how many words the queue's bitmap has.
func (p *Pending) Words() int { return len(p.words) }

// Take clears word i and returns the bits that were set, unless every
// set bit lies in have (the sockets the taker visits anyway): then it
// leaves the word as it is and returns 0. A word found so costs one load
// and no write, and the program, which sets a bit only if it is clear,
// writes nothing either while those sockets stay busy: the word's cache
// line is not moved between the kernel's CPU and the taker's twice a
// round.
func (p *Pending) Take(i int, have uint64) uint64 {
	w := &p.words[i]
	if atomic.LoadUint64(w)&^have == 0 {
		return 0
	}
	return atomic.SwapUint64(w, 0)
}

// Close unmaps the bitmap.
func (p *Pending) Close() error {
	if p.mem == nil {
		return nil
	}
	err := unix.Munmap(p.mem)
	p.mem, p.words = nil, nil
	return err
}
