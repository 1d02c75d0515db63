package xsk

import "sync/atomic"

// framePool is a queue's frame allocator: a fixed stack of free frame
// addresses plus one state byte per frame, so a frame freed twice or an
// address that is not one of the queue's frames is refused and counted
// instead of corrupting the stack. Nothing allocates after construction.
// Only the queue's worker calls it; the counters are atomics so that
// statistics can be read from anywhere.
type framePool struct {
	stack     []uint64 // free frame base addresses; len is the free count
	out       []bool   // out[i]: frame i is handed out (not in the stack)
	base      uint64   // UMEM offset of the queue's first frame
	frameSize uint64
	shift     uint // log2(frameSize)

	free        atomic.Int64
	doubleFrees atomic.Uint64
	badAddrs    atomic.Uint64
}

func newFramePool(base uint64, frameSize uint64, n int) *framePool {
	p := &framePool{
		stack:     make([]uint64, n),
		out:       make([]bool, n),
		base:      base,
		frameSize: frameSize,
	}
	for frameSize > 1 {
		frameSize >>= 1
		p.shift++
	}
	// Hand out low addresses first: it makes dumps easier to read.
	for i := range p.stack {
		p.stack[n-1-i] = base + uint64(i)<<p.shift
	}
	p.free.Store(int64(n))
	return p
}

func (p *framePool) total() int { return len(p.out) }

// index returns the frame index of any address inside one of the pool's
// frames, or false.
func (p *framePool) index(addr uint64) (int, bool) {
	if addr < p.base {
		return 0, false
	}
	i := (addr - p.base) >> p.shift
	if i >= uint64(len(p.out)) {
		return 0, false
	}
	return int(i), true
}

// alloc pops up to len(addrs) free frames into addrs.
func (p *framePool) alloc(addrs []uint64) int {
	n := min(len(addrs), len(p.stack))
	top := len(p.stack)
	for i := 0; i < n; i++ {
		a := p.stack[top-1-i]
		addrs[i] = a
		p.out[(a-p.base)>>p.shift] = true
	}
	p.stack = p.stack[:top-n]
	p.free.Store(int64(len(p.stack)))
	return n
}

// put returns frames to the pool. Any address inside a frame frees that
// frame. It returns how many were accepted; the rest were not the pool's
// or not handed out, and are counted.
func (p *framePool) put(addrs []uint64) int {
	ok := 0
	for _, a := range addrs {
		if p.putOne(a) {
			ok++
		}
	}
	p.free.Store(int64(len(p.stack)))
	return ok
}

func (p *framePool) putOne(a uint64) bool {
	i, valid := p.index(a)
	if !valid {
		p.badAddrs.Add(1)
		return false
	}
	if !p.out[i] {
		p.doubleFrees.Add(1)
		return false
	}
	p.out[i] = false
	p.stack = append(p.stack, p.base+uint64(i)<<p.shift) // within capacity: never allocates
	return true
}
