package xsk

import "sync/atomic"

// Frame states. Every frame of a queue is in exactly one.
const (
	frameFree   uint8 = iota // in the allocator
	frameHeld                // the caller's: allocated, received or completed
	frameKernel              // given to the kernel: in the fill or a tx ring
)

// framePool is a queue's frame allocator: a fixed stack of free frame
// addresses plus one state byte per frame. Every hand-over (allocator,
// caller, kernel) checks and moves the state, so a frame freed twice,
// given to the kernel twice, or sent while the kernel owns it is refused
// and counted instead of corrupting the stack or a ring. Nothing allocates
// after construction. Only the queue's worker calls it; the counters are
// atomics so that statistics can be read from anywhere.
type framePool struct {
	stack     []uint64 // free frame base addresses; len is the free count
	state     []uint8  // per frame index
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
		state:     make([]uint8, n),
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

func (p *framePool) total() int { return len(p.state) }

// index returns the frame index of any address inside one of the pool's
// frames, or false.
func (p *framePool) index(addr uint64) (int, bool) {
	if addr < p.base {
		return 0, false
	}
	i := (addr - p.base) >> p.shift
	if i >= uint64(len(p.state)) {
		return 0, false
	}
	return int(i), true
}

// alloc pops up to len(addrs) free frames into addrs for the caller.
func (p *framePool) alloc(addrs []uint64) int {
	n := min(len(addrs), len(p.stack))
	top := len(p.stack)
	for i := 0; i < n; i++ {
		a := p.stack[top-1-i]
		addrs[i] = a
		p.state[(a-p.base)>>p.shift] = frameHeld
	}
	p.stack = p.stack[:top-n]
	p.sync()
	return n
}

// pop takes one free frame for the kernel (the caller checked there is
// one); sync must follow the batch.
func (p *framePool) popToKernel() uint64 {
	top := len(p.stack) - 1
	a := p.stack[top]
	p.stack = p.stack[:top]
	p.state[(a-p.base)>>p.shift] = frameKernel
	return a
}

func (p *framePool) sync() { p.free.Store(int64(len(p.stack))) }

// put returns frames the caller holds. Any address inside a frame frees
// that frame. It returns how many were accepted; the rest were not the
// pool's or not the caller's, and are counted.
func (p *framePool) put(addrs []uint64) int {
	ok := 0
	for _, a := range addrs {
		if p.putFrom(a, frameHeld) {
			ok++
		}
	}
	p.sync()
	return ok
}

// putFrom frees the frame of a if it is in state from; sync must follow.
func (p *framePool) putFrom(a uint64, from uint8) bool {
	i, valid := p.index(a)
	if !valid {
		p.badAddrs.Add(1)
		return false
	}
	if p.state[i] != from {
		p.doubleFrees.Add(1)
		return false
	}
	p.state[i] = frameFree
	p.stack = append(p.stack, p.base+uint64(i)<<p.shift) // within capacity: never allocates
	return true
}

// toKernel moves a held frame to the kernel; false if a is not a frame
// the caller holds.
func (p *framePool) toKernel(a uint64) bool {
	i, valid := p.index(a)
	if !valid || p.state[i] != frameHeld {
		return false
	}
	p.state[i] = frameKernel
	return true
}

// fromKernel records that the kernel handed a frame back (rx or
// completion). Addresses outside the pool are ignored: Frame refuses them.
func (p *framePool) fromKernel(a uint64) {
	if i, valid := p.index(a); valid {
		p.state[i] = frameHeld
	}
}
