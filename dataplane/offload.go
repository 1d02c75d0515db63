package dataplane

import (
	"encoding/binary"
	"math/bits"

	"github.com/vmq/vmq/dataplane/virtio"
)

// Checksum and TCP segmentation offload (virtio-net CSUM, HOST_TSO4/6 and
// their GUEST_* counterparts). A guest that negotiated them hands vmq
// frames whose checksum is left open (NEEDS_CSUM) and TCP segments of up
// to 64 KiB (gso_type, gso_size). vmq passes such a frame as it is to a
// local VM that accepts it (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN), and
// otherwise (the wire, a VM without them, a VM served through another
// worker's mailbox) fills the checksum or cuts the segment into frames
// of at most the MTU with their IPv4 and TCP checksums, IP ids, sequence
// numbers and flags set, as the kernel's own GSO would.

// hostOffloads are the features that let a guest send frames needing
// work: its TX queues are read with PopHdr into the worker's scratch
// buffer.
const hostOffloads = virtio.NetFCsum | virtio.NetFHostTSO4 | virtio.NetFHostTSO6

// scratchLen holds the largest frame a guest may send with TSO: an IPv4
// total length of 65535 after an Ethernet header and two VLAN tags.
const scratchLen = 65535 + ethHdrLen + 2*vlanTagLen

// defaultMTU is the segment size limit of a VM whose MTU was not set.
const defaultMTU = 1500

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	protoTCP      = 6
	tcpFlagFIN    = 0x01
	tcpFlagPSH    = 0x08
	tcpFlagCWR    = 0x80
)

// offloadState is a worker's scratch for guest frames with offloads.
type offloadState struct {
	// scratch is vlanTagLen of room for a tag, then the popped frame;
	// segBuf (jumbo queues only) a segment on its way to several UMEM
	// frames. Allocated when the worker first serves such a guest.
	scratch, segBuf []byte
	hdr             virtio.NetHdr
	seg             segmenter
	// extra is the work of the last frame beyond one pop (its segments
	// after the first): charged to the guest's share like pops.
	extra int
}

// l34 says where a frame's IP and TCP headers are.
type l34 struct {
	ipOff, l4Off, hdrEnd int // hdrEnd: the end of the TCP header
	v6                   bool
}

// parseTCP finds the IP and TCP headers of an Ethernet frame: up to two
// VLAN tags, IPv4 (not a fragment) or IPv6 (through hop-by-hop, routing
// and destination options headers), then TCP. ok is false for anything
// else and for a truncated frame.
func parseTCP(frame []byte) (p l34, ok bool) {
	off := ethHdrLen
	if len(frame) < off {
		return p, false
	}
	et := binary.BigEndian.Uint16(frame[12:])
	for tags := 0; et == tpid8021Q || et == tpid8021AD; tags++ {
		if tags == 2 || len(frame) < off+vlanTagLen {
			return p, false
		}
		et = binary.BigEndian.Uint16(frame[off+2:])
		off += vlanTagLen
	}
	p.ipOff = off
	var proto byte
	switch et {
	case etherTypeIPv4:
		if len(frame) < off+20 || frame[off]>>4 != 4 {
			return p, false
		}
		ihl := int(frame[off]&0xf) * 4
		if ihl < 20 || len(frame) < off+ihl || binary.BigEndian.Uint16(frame[off+6:])&0x3fff != 0 {
			return p, false
		}
		proto, p.l4Off = frame[off+9], off+ihl
	case etherTypeIPv6:
		if len(frame) < off+40 || frame[off]>>4 != 6 {
			return p, false
		}
		proto, p.l4Off, p.v6 = frame[off+6], off+40, true
		for i := 0; i < 4 && (proto == 0 || proto == 43 || proto == 60); i++ {
			if len(frame) < p.l4Off+8 {
				return p, false
			}
			proto, p.l4Off = frame[p.l4Off], p.l4Off+(int(frame[p.l4Off+1])+1)*8
		}
	default:
		return p, false
	}
	if proto != protoTCP || len(frame) < p.l4Off+20 {
		return p, false
	}
	thl := int(frame[p.l4Off+12]>>4) * 4
	if thl < 20 || len(frame) < p.l4Off+thl {
		return p, false
	}
	p.hdrEnd = p.l4Off + thl
	return p, true
}

// checkGSO parses a TSO frame and checks that its header agrees with it:
// TCP over the IP version gso_type names, the checksum at the TCP one.
func checkGSO(h *virtio.NetHdr, frame []byte) (l34, bool) {
	p, ok := parseTCP(frame)
	if !ok || int(h.CsumStart) != p.l4Off || h.CsumOffset != 16 {
		return p, false
	}
	return p, p.v6 == (h.GSOType&^virtio.GSOECN == virtio.GSOTCPv6)
}

// acceptsHdr reports whether a guest with the negotiated features f may
// be handed a frame with header h as it is.
func acceptsHdr(f uint64, h *virtio.NetHdr) bool {
	if h.Flags&virtio.NetHdrFNeedsCsum != 0 && f&virtio.NetFGuestCsum == 0 {
		return false
	}
	switch h.GSOType &^ virtio.GSOECN {
	case virtio.GSONone:
		return true
	case virtio.GSOTCPv4:
		if f&virtio.NetFGuestTSO4 == 0 {
			return false
		}
	case virtio.GSOTCPv6:
		if f&virtio.NetFGuestTSO6 == 0 {
			return false
		}
	default:
		return false
	}
	return h.GSOType&virtio.GSOECN == 0 || f&virtio.NetFGuestECN != 0
}

// fillCsum completes a NEEDS_CSUM frame: the field at start+off holds
// the pseudo-header sum (virtio 1.1, 5.1.6.2); the checksum of
// frame[start:] replaces it. 0 goes out as 0xffff, as the kernel's
// skb_checksum_help does (the same in ones' complement, and what UDP
// needs).
func fillCsum(frame []byte, start, off int) {
	c := csumFold(csumAdd(0, frame[start:]))
	if c == 0 {
		c = 0xffff
	}
	putCsum(frame[start+off:], c)
}

// segmenter cuts a TCP segment into frames of at most mss payload bytes.
// It keeps no pointer beyond the frame it was given and allocates nothing.
type segmenter struct {
	frame []byte
	p     l34
	mss   int
	off   int // payload bytes emitted
	i     int // segments emitted
	seq   uint32
	id    uint16
	flags byte
}

// init starts cutting frame (parsed into p) into segments of mss bytes.
func (s *segmenter) init(frame []byte, p l34, mss int) {
	s.frame, s.p, s.mss, s.off, s.i = frame, p, mss, 0, 0
	s.seq = binary.BigEndian.Uint32(frame[p.l4Off+4:])
	s.flags = frame[p.l4Off+13]
	if !p.v6 {
		s.id = binary.BigEndian.Uint16(frame[p.ipOff+4:])
	}
}

// done reports whether every segment was emitted (a frame without
// payload gives one segment).
func (s *segmenter) done() bool { return s.i > 0 && s.off >= len(s.frame)-s.p.hdrEnd }

// count is the number of segments the frame gives.
func (s *segmenter) count() int {
	n := len(s.frame) - s.p.hdrEnd
	return max(1, (n+s.mss-1)/s.mss)
}

// next writes the next segment into dst and returns its length, or 0
// when dst is too small for it.
func (s *segmenter) next(dst []byte) int {
	p, hl := &s.p, s.p.hdrEnd
	payload := s.frame[hl:]
	n := min(s.mss, len(payload)-s.off)
	if len(dst) < hl+n {
		return 0
	}
	copy(dst, s.frame[:hl])
	copy(dst[hl:], payload[s.off:s.off+n])
	seg := dst[:hl+n]
	ip := seg[p.ipOff:]
	if p.v6 {
		binary.BigEndian.PutUint16(ip[4:], uint16(hl-p.ipOff-40+n))
	} else {
		ihl := p.l4Off - p.ipOff
		binary.BigEndian.PutUint16(ip[2:], uint16(hl-p.ipOff+n))
		binary.BigEndian.PutUint16(ip[4:], s.id+uint16(s.i))
		ip[10], ip[11] = 0, 0
		putCsum(ip[10:], csumFold(csumAdd(0, ip[:ihl])))
	}
	tcp := seg[p.l4Off:]
	binary.BigEndian.PutUint32(tcp[4:], s.seq+uint32(s.off))
	f := s.flags
	if s.i > 0 {
		f &^= tcpFlagCWR // congestion window reduced: said once
	}
	if s.off+n < len(payload) {
		f &^= tcpFlagFIN | tcpFlagPSH // only the last segment ends the push
	}
	tcp[13] = f
	tcp[16], tcp[17] = 0, 0
	putCsum(tcp[16:], csumFold(csumAdd(pseudoSum(seg, p), tcp)))
	s.off += n
	s.i++
	return hl + n
}

// pseudoSum is the sum of the TCP pseudo-header of a frame whose TCP
// header and payload are frame[p.l4Off:].
func pseudoSum(frame []byte, p *l34) uint64 {
	ip := frame[p.ipOff:]
	var sum uint64
	if p.v6 {
		sum = csumAdd(0, ip[8:40])
	} else {
		sum = csumAdd(0, ip[12:20])
	}
	// Big-endian words in little-endian space: byte-swapped.
	return sum + uint64(bits.ReverseBytes16(protoTCP)) + uint64(bits.ReverseBytes16(uint16(len(frame)-p.l4Off)))
}

// segLimit is the largest frame vm may put on the wire or into another
// VM: its MTU (else the NIC's) after the Ethernet header and the tags the
// frame carries.
func (w *worker) segLimit(vm *vmState, ipOff int) int {
	mtu := vm.mtu
	if mtu <= 0 {
		mtu = w.dp.cfg.MTU
	}
	if mtu <= 0 {
		mtu = defaultMTU
	}
	return ipOff + mtu
}

// popBatchOffload is popBatch for a guest that negotiated offloads: each
// frame is popped with its header into the worker's 64 KiB scratch
// buffer, then passed on as it is, completed, or segmented into UMEM
// frames (sendOffload).
func (w *worker) popBatchOffload(vq *virtq) (wire, popped int) {
	defer vq.q.RecoverFault() // the named results survive the recovered panic
	o := &w.ofl
	if o.scratch == nil { // once per worker
		o.scratch = make([]byte, vlanTagLen+scratchLen)
		if w.jumbo != nil {
			o.segBuf = make([]byte, vlanTagLen+scratchLen)
		}
	}
	vm := vq.vm
	for wire < batchSize && w.mayPop(vq, popped) {
		n, err := vq.q.PopHdr(&o.hdr, o.scratch[vlanTagLen:])
		if vm.popEnded(err) {
			break
		}
		popped++
		if !vm.txAdmitted(n) {
			continue
		}
		wire = w.sendOffload(vm, &o.hdr, o.scratch, n, wire)
		popped += o.extra
		o.extra = 0
	}
	return wire, popped
}

// sendOffload switches one frame a guest sent with header h, the frame
// buf[vlanTagLen:vlanTagLen+n]. Frames for the wire are added to
// w.txDescs from index wire on (sent and restarted from 0 when a
// segmented frame fills it); it returns the new count.
func (w *worker) sendOffload(vm *vmState, h *virtio.NetHdr, buf []byte, n, wire int) int {
	frame := buf[vlanTagLen : vlanTagLen+n]
	if len(frame) < minFrameLen {
		vm.drop(DropMalformed)
		return wire
	}
	if h.IsPlain() {
		return w.emitCopy(vm, buf, n, wire)
	}
	var p l34
	if h.GSOType != virtio.GSONone {
		var ok bool
		if p, ok = checkGSO(h, frame); !ok {
			vm.drop(DropBadOffload)
			return wire
		}
		h.HdrLen = uint16(p.hdrEnd) // exact, whatever the guest's hint said
	}
	// A large segment or an open checksum goes as it is to a local VM that
	// takes it, after forward's checks.
	if dst := dstMAC(frame); !dst.IsMulticast() {
		if to := w.fdb.lookup(dst, vm.vlan); to != nil && len(to.rxqs) > 0 && acceptsHdr(to.rxqs[0].q.Features(), h) {
			if !vm.allowSpoof && srcMAC(frame) != vm.mac {
				vm.drop(DropSpoofed)
				return wire
			}
			if _, tagged, _ := frameVLAN(frame); tagged {
				vm.drop(DropMalformed)
				return wire
			}
			vm.txPkts++
			vm.txBytes += uint64(len(frame))
			if to.rxLimited && !to.admitRx(len(frame)) {
				to.drop(DropRateLimited)
				return wire
			}
			add(&vm.ctr.oflPassed, 1)
			w.pushHdr(to.rxqs[0], h, frame)
			return wire
		}
	}
	if h.GSOType == virtio.GSONone {
		fillCsum(frame, int(h.CsumStart), int(h.CsumOffset))
		add(&vm.ctr.oflCsum, 1)
		return w.emitCopy(vm, buf, n, wire)
	}
	// Headers that leave less room than the smallest gso_size would make
	// one frame cost thousands of segments.
	mss := min(int(h.GSOSize), w.segLimit(vm, p.ipOff)-p.hdrEnd)
	if mss < virtio.MinGSOSize {
		vm.drop(DropBadOffload)
		return wire
	}
	s := &w.ofl.seg
	s.init(frame, p, mss)
	add(&vm.ctr.oflSegmented, 1)
	add(&vm.ctr.oflSegments, uint64(s.count()))
	w.ofl.extra += s.count() - 1
	if w.jumbo != nil {
		// Segments may span UMEM frames: cut each into the seg scratch.
		for !s.done() {
			m := s.next(w.ofl.segBuf[vlanTagLen:])
			if m == 0 { // cannot happen: segBuf holds any frame
				break
			}
			wire = w.emitCopy(vm, w.ofl.segBuf, m, wire)
		}
		return wire
	}
	for !s.done() {
		if wire == batchSize {
			w.sendWire(vm, wire)
			wire = 0
		}
		addr, ok := w.takeFrame()
		if !ok {
			vm.drop(DropNoUMEMFrame) // TCP resends what is lost
			return wire
		}
		buf := w.q.Buffer(addr)
		n := s.next(buf[vlanTagLen:])
		if n == 0 {
			w.returnFrame(addr)
			vm.drop(DropMalformed)
			return wire
		}
		wire = w.emitFrame(vm, addr, buf, n, wire)
	}
	return wire
}

// emitCopy switches the complete frame buf[vlanTagLen:vlanTagLen+n]
// (buf has room for a tag before it): copied into a UMEM frame, or on a
// multi-buffer queue into as many as it needs.
func (w *worker) emitCopy(vm *vmState, buf []byte, n, wire int) int {
	frame := buf[vlanTagLen : vlanTagLen+n]
	if j := w.jumbo; j != nil {
		if n > j.maxFrame {
			vm.drop(DropOversize)
			return wire
		}
		if wire+j.txDescs > batchSize {
			w.sendWire(vm, wire)
			wire = 0
		}
		if !w.reserveFrames(j.txDescs) {
			vm.drop(DropNoUMEMFrame)
			return wire
		}
		if !w.forward(vm, frame) {
			return wire
		}
		if vm.vlan != 0 {
			frame = insertTag(buf, vlanTagLen, n, vm.vlan)
		}
		return wire + w.spread(frame, w.txDescs[wire:])
	}
	addr, ok := w.takeFrame()
	if !ok {
		vm.drop(DropNoUMEMFrame)
		return wire
	}
	ub := w.q.Buffer(addr)
	if n > len(ub)-vlanTagLen {
		w.returnFrame(addr)
		vm.drop(DropMalformed)
		return wire
	}
	copy(ub[vlanTagLen:], frame)
	return w.emitFrame(vm, addr, ub, n, wire)
}

// emitFrame switches the frame buf[vlanTagLen:vlanTagLen+n] of the UMEM
// frame at addr: delivered locally (the UMEM frame goes back to the
// stash) and/or queued for the wire at w.txDescs[wire].
func (w *worker) emitFrame(vm *vmState, addr uint64, buf []byte, n, wire int) int {
	if !w.forward(vm, buf[vlanTagLen:vlanTagLen+n]) {
		w.returnFrame(addr)
		return wire
	}
	w.txDescs[wire] = w.wireDesc(vm, addr, buf, n)
	return wire + 1
}
