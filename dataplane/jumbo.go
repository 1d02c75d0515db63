package dataplane

import (
	"fmt"

	"github.com/vmq/vmq/dataplane/xsk"
	"golang.org/x/sys/unix"
)

// Jumbo frames: a NIC MTU larger than one UMEM frame holds (3822 with
// 4096-byte frames, 1774 with 2048) makes the queues multi-buffer
// (XDP_USE_SG): a frame from the wire arrives as several descriptors,
// which the worker gathers into a scratch buffer before pushing it to the
// guest (MRG_RXBUF spreads it over the guest's buffers); a guest frame is
// popped into a scratch buffer and spread over as many UMEM frames as it
// needs on the way out. Frames that fit one UMEM frame take the same
// paths, one copy more on TX than without jumbo (guest → scratch → UMEM).

// MaxMTU is the largest NIC MTU vmq runs with.
const MaxMTU = 9000

// maxGuestFrame bounds a frame popped from a guest's TX ring (without
// the virtio-net header): longer chains are consumed and counted as
// dropped (too big) by the ring, never copied.
const maxGuestFrame = 64 << 10

// jumbo is a worker's state for multi-buffer frames; nil when the MTU
// fits one UMEM frame.
type jumbo struct {
	rx []byte // a frame gathered from several rx descriptors
	// tx is vlanTagLen of room for a tag, then a popped guest frame.
	tx []byte
	// maxFrame is the largest untagged frame the MTU allows (MTU + 14):
	// longer guest frames are dropped (DropOversize).
	maxFrame int
	// rxDescs and txDescs are how many descriptors the largest (tagged)
	// frame takes on rx and on tx.
	rxDescs, txDescs int
}

// frameRoom is how many bytes of a frame one rx descriptor carries.
func frameRoom(frameSize int) int { return frameSize - unix.XDP_PACKET_HEADROOM }

// needsJumbo reports whether frames of mtu (plus Ethernet header and one
// VLAN tag) are larger than one UMEM frame holds.
func needsJumbo(mtu, frameSize int) bool {
	return mtu+ethHdrLen+vlanTagLen > frameRoom(frameSize)
}

// checkMTU refuses an MTU the dataplane cannot carry, naming the fix.
func checkMTU(cfg Config) error {
	if cfg.MTU < 0 || cfg.MTU > MaxMTU {
		return fmt.Errorf("dataplane: MTU %d: vmq supports up to %d; lower it (ip link set dev DEV mtu %d)", cfg.MTU, MaxMTU, MaxMTU)
	}
	if !needsJumbo(cfg.MTU, cfg.FrameSize) {
		return nil
	}
	if err := xsk.ProbeMultiBuffer(); err != nil {
		fit := frameRoom(cfg.FrameSize) - ethHdrLen - vlanTagLen
		return fmt.Errorf("dataplane: MTU %d needs frames spanning several %d-byte UMEM frames: %w; lower the MTU to %d (ip link set dev DEV mtu %d)",
			cfg.MTU, cfg.FrameSize, err, fit, fit)
	}
	return nil
}

func newJumbo(mtu, frameSize int) *jumbo {
	if !needsJumbo(mtu, frameSize) {
		return nil
	}
	maxTagged := mtu + ethHdrLen + vlanTagLen
	return &jumbo{
		rx:       make([]byte, maxTagged),
		tx:       make([]byte, vlanTagLen+maxGuestFrame),
		maxFrame: mtu + ethHdrLen,
		rxDescs:  (maxTagged + frameRoom(frameSize) - 1) / frameRoom(frameSize),
		txDescs:  (maxTagged + frameSize - 1) / frameSize,
	}
}

// vmRing sizes a VM socket's rings: twice vmRingSize with jumbo frames,
// whose descriptors come three (4096-byte frames) or six at a time, so a
// ring still absorbs a few milliseconds of a worker held elsewhere.
func (w *worker) vmRing() int {
	if w.jumbo != nil {
		return 2 * vmRingSize
	}
	return vmRingSize
}

// rxBatch is how many descriptors a VM's socket may hand over when its
// credit allows want: at least the largest frame's, which Receive would
// otherwise drop as too long.
func (w *worker) rxBatch(want int) int {
	if w.jumbo != nil && want > 0 {
		return max(want, w.jumbo.rxDescs)
	}
	return want
}

// rxFrame returns the frame that starts at descs[i] and the index of the
// next frame's first descriptor. A multi-buffer frame is gathered into
// the worker's rx scratch; nil means it was unusable (the caller drops it
// as malformed).
func (w *worker) rxFrame(descs []xsk.Desc, i int) (frame []byte, next int) {
	d := descs[i]
	if d.Options&xsk.PktContd == 0 || w.jumbo == nil {
		return w.q.Frame(d), i + 1
	}
	buf, n, ok := w.jumbo.rx, 0, true
	for ; i < len(descs); i++ {
		d = descs[i]
		if piece := w.q.Frame(d); piece == nil || n+len(piece) > len(buf) {
			ok = false // too long for the MTU, or not the queue's frame
		} else {
			n += copy(buf[n:], piece)
		}
		if d.Options&xsk.PktContd == 0 {
			break
		}
	}
	if !ok {
		return nil, i + 1
	}
	return buf[:n], i + 1
}

// popBatchJumbo is popBatch for multi-buffer queues: each guest frame is
// popped into the tx scratch, switched, and if it goes to the wire copied
// (tagged with the VM's VLAN) into as many UMEM frames as it needs, which
// end up in w.txDescs[:wire] with PktContd on all but each frame's last.
// No UMEM frame is held while guest memory is read, so a fault loses none.
func (w *worker) popBatchJumbo(vq *virtq) (wire, popped int) {
	defer vq.q.RecoverFault()
	vm, j := vq.vm, w.jumbo
	for wire+j.txDescs <= batchSize && w.mayPop(vq, popped) {
		// Frames for the largest frame first: without them the guest's
		// frames wait in its ring, as on the single-frame path.
		if !w.reserveFrames(j.txDescs) {
			break
		}
		n, err := vq.q.Pop(j.tx[vlanTagLen:])
		if vm.popEnded(err) {
			break
		}
		popped++
		if n > j.maxFrame {
			vm.drop(DropOversize)
			continue
		}
		if !vm.txAdmitted(n) {
			continue
		}
		if !w.forward(vm, j.tx[vlanTagLen:vlanTagLen+n]) {
			continue
		}
		frame := j.tx[vlanTagLen : vlanTagLen+n]
		if vm.vlan != 0 {
			frame = insertTag(j.tx, vlanTagLen, n, vm.vlan)
		}
		wire += w.spread(frame, w.txDescs[wire:])
	}
	return wire, popped
}

// reserveFrames makes sure the stash holds k frames for guest TX.
func (w *worker) reserveFrames(k int) bool {
	if w.nstash < k {
		w.nstash += w.q.Alloc(w.stash[w.nstash:])
	}
	return w.nstash >= k
}

// spread copies frame into UMEM frames from the stash (reserveFrames
// made sure there are enough) and writes their descriptors to out.
func (w *worker) spread(frame []byte, out []xsk.Desc) int {
	k := 0
	for off := 0; off < len(frame); k++ {
		addr, _ := w.takeFrame()
		m := copy(w.q.Buffer(addr), frame[off:])
		out[k] = xsk.Desc{Addr: addr, Len: uint32(m), Options: xsk.PktContd}
		off += m
	}
	out[k-1].Options = 0
	return k
}

// framesIn counts the frames (last descriptors) among tx descriptors.
func framesIn(descs []xsk.Desc) int {
	n := 0
	for _, d := range descs {
		if d.Options&xsk.PktContd == 0 {
			n++
		}
	}
	return n
}
