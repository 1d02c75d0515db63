package pktgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/internal/xdplive"
)

// LiveOptions configure a LiveGenerator.
type LiveOptions struct {
	// Ifindex is the interface the frames leave by. It is resolved in the
	// network namespace of the thread that calls Send.
	Ifindex int
	// Queue is the rx queue index the program sees (ctx->rx_queue_index);
	// it must be below the interface's number of rx queues.
	Queue uint32
	// BatchSize is the kernel's live-frames batch (frames per page-pool
	// refill and transmit flush), 1..256; 0 means 64.
	BatchSize uint32
	// MaxChunk bounds the frames of one BPF_PROG_RUN call (0 = 1<<20).
	// A call a signal interrupts goes on from the frame it got to.
	MaxChunk int
	// NoStamp leaves the payload out: frames carry headers (destinations
	// and ports still rotate) and data_in's zero payload, which receivers
	// do not count as vmq-pktgen frames. It saves the stamp's cost.
	NoStamp bool
	// ClockEvery is how many frames share one timestamp (0 = 16): a frame's
	// timestamp is read at or before its transmit, at most ClockEvery-1
	// frames earlier (a few µs at full speed), and afresh at the start of
	// every call. 1 reads the clock for every frame.
	ClockEvery int
	// NoKeeper skips the dispatcher keeper (see LiveGenerator): every
	// call then pays two synchronize_rcu() waits. For measurements.
	NoKeeper bool
}

// defaultClockEvery: reading the clock is the costliest part of a stamp
// (rdtsc in a VM); 16 frames at full speed are 4-6 µs.
const defaultClockEvery = 16

// LiveGenerator sends a flow's frames with BPF_PROG_RUN in live-frames mode
// (BPF_F_TEST_XDP_LIVE_FRAMES): the kernel runs pktgen_xdp once per frame
// on pages it recycles, the program stamps the frame (destination, ports,
// stream, sequence number, bpf_ktime_get_ns timestamp) and returns XDP_TX,
// which transmits it out of the ingress interface. Nothing is copied from
// user space per frame.
//
// BPF_PROG_RUN in live-frames mode adds the program to the kernel's XDP
// dispatcher at the start of each call and removes it at the end, each a
// text patch and a synchronize_rcu() (~20 ms together on a busy VM): that,
// not the frames, made small calls slow. A program already in the
// dispatcher is only reference-counted, so the generator keeps its program
// attached (generic XDP) to the loopback of a private network namespace of
// its own, created for that and gone with the generator. A call then costs
// 0.05-0.15 ms of set-up, and paced runs can send small bursts. Where the
// namespace cannot be made (no CAP_SYS_ADMIN), the generator works without
// it, slowly (Keeper reports which).
//
// A LiveGenerator is not safe for concurrent use: the program's sequence
// counter is a plain read-modify-write. Use one generator per thread (with
// distinct FlowSpec.Stream values). Send must be called from a thread in
// the interface's network namespace (netnstest's NS.Do, or
// runtime.LockOSThread + setns); Close may be called from anywhere.
type LiveGenerator struct {
	tmpl *Template
	opts LiveOptions
	base []byte
	ctx  xdplive.XDPMD
	conf pktgenBPFGenConfig
	// The program's counter, read after each call, and the maps' only
	// key: fields passed by pointer, so a call allocates nothing (cilium
	// marshals a uint32 key by value into a new slice).
	st   pktgenBPFGenState
	key0 uint32
	objs liveObjects
	sent uint64 // frames stamped so far (the program's sequence counter)
	attr xdplive.RunAttr
	keep *xdplive.Keeper // nil without the dispatcher keeper
	// The last call's frames per second, for Chunk.
	rate        float64
	interrupted int // calls a signal cut short (for tests)
}

type liveObjects struct {
	Prog  *ebpf.Program `ebpf:"pktgen_xdp"`
	Conf  *ebpf.Map     `ebpf:"gen_conf"`
	Dsts  *ebpf.Map     `ebpf:"gen_dsts"`
	State *ebpf.Map     `ebpf:"gen_st"`
}

func (o *liveObjects) close() {
	for _, c := range []interface{ Close() error }{o.Prog, o.Conf, o.Dsts, o.State} {
		if c != nil {
			_ = c.Close()
		}
	}
}

// NewLiveGenerator loads the generator program and its maps for t.
func NewLiveGenerator(t *Template, opts LiveOptions) (*LiveGenerator, error) {
	if opts.Ifindex <= 0 {
		return nil, fmt.Errorf("live generator: bad ifindex %d", opts.Ifindex)
	}
	if t.frameLen > MaxLiveFrameLen {
		return nil, fmt.Errorf("live generator: %d-byte frames: live frames carry at most %d bytes; send jumbo frames with the AF_PACKET sender", t.frameLen, MaxLiveFrameLen)
	}
	if opts.BatchSize == 0 {
		opts.BatchSize = 64
	}
	if opts.BatchSize > 256 {
		return nil, fmt.Errorf("live generator: batch size %d above 256", opts.BatchSize)
	}
	if opts.MaxChunk <= 0 {
		opts.MaxChunk = 1 << 20
	}
	if opts.ClockEvery <= 0 {
		opts.ClockEvery = defaultClockEvery
	}
	spec, err := loadPktgenBPF()
	if err != nil {
		return nil, fmt.Errorf("live generator: load BPF spec: %w", err)
	}
	g := &LiveGenerator{tmpl: t, opts: opts, base: t.Base()}
	if opts.NoStamp {
		// data_in's payload is what every frame carries: no magic, so
		// receivers do not take it for a stamped frame.
		clear(g.base[t.hdrLen:])
	}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return nil, fmt.Errorf("live generator: load program: %w", err)
	}
	for i := range t.dests {
		d := pktgenBPFGenDst{Hdr: t.dests[i].hdr, CsumBase: t.dests[i].csumBase}
		stream := t.spec.Stream + uint32(i)
		if opts.NoStamp {
			d.CsumBase -= PayloadMagic>>16 + PayloadMagic&0xffff // the base's only payload term
		} else {
			// Per destination, not per frame: the stream and its sum.
			var head [8]byte
			binary.BigEndian.PutUint32(head[0:], PayloadMagic)
			binary.BigEndian.PutUint32(head[4:], stream)
			d.PlHead = binary.NativeEndian.Uint64(head[:]) // stored as these bytes
			d.CsumBase += stream>>16 + stream&0xffff
		}
		if err := g.objs.Dsts.Put(uint32(i), &d); err != nil {
			g.objs.close()
			return nil, fmt.Errorf("live generator: set destination %d: %w", i, err)
		}
	}
	var csum, stamp uint8
	if t.spec.UDPChecksum {
		csum = 1
	}
	if !opts.NoStamp {
		stamp = 1
	}
	g.conf = pktgenBPFGenConfig{
		N_dsts:     uint32(len(t.dests)),
		SportFirst: t.src.First,
		SportCount: uint16(t.src.Count()), // a full 0-65535 range wraps to 0, which the program reads as 1
		DportFirst: t.dst.First,
		DportCount: uint16(t.dst.Count()),
		Tags:       uint8(t.tags),
		UdpCsum:    csum,
		Stamp:      stamp,
		Ifindex:    uint32(opts.Ifindex),
		ClockEvery: uint32(opts.ClockEvery),
	}
	if t.src.Count() > 0xffff || t.dst.Count() > 0xffff {
		g.objs.close()
		return nil, errors.New("live generator: a port range of all 65536 ports is not supported; use 1-65535")
	}
	g.ctx = xdplive.XDPMD{DataEnd: uint32(len(g.base)), IngressIfindex: uint32(opts.Ifindex), RxQueueIndex: opts.Queue}
	g.attr = xdplive.NewLiveRunAttr(g.objs.Prog.FD(), g.base, &g.ctx, opts.BatchSize)
	if !opts.NoKeeper {
		// Best effort: without it the generator is correct, only slow.
		g.keep, _ = xdplive.New(g.objs.Prog)
	}
	return g, nil
}

// Keeper says whether the program is held in the XDP dispatcher, which
// makes each BPF_PROG_RUN call cheap (see LiveGenerator).
func (g *LiveGenerator) Keeper() bool { return g.keep != nil }

// Template is the flow being sent.
func (g *LiveGenerator) Template() *Template { return g.tmpl }

// FrameLen is the length of each frame.
func (g *LiveGenerator) FrameLen() int { return g.tmpl.frameLen }

// chunkTime is how long an unpaced call should last: long enough that a
// call's set-up (0.05 ms idle; ms when other processes hold the XDP
// dispatcher's mutex) is small beside it, short enough for Run to end
// near its deadline.
const chunkTime = 0.1 // seconds

// Chunk is the frames per call of an unpaced Run: what the last call sent
// in chunkTime, within 1<<14..MaxChunk.
func (g *LiveGenerator) Chunk() int {
	return max(min(int(g.rate*chunkTime), g.opts.MaxChunk), min(1<<14, g.opts.MaxChunk))
}

// Sent is the number of frames stamped and handed to the interface so far;
// it is also the frame number of the next frame.
func (g *LiveGenerator) Sent() uint64 { return g.sent }

// Send transmits the next n frames of the flow, exactly: it returns n
// unless the kernel refuses (then err says why and sent says how many went
// before). "Sent" means the program stamped the frame and returned XDP_TX;
// whether the interface delivered it is the receiver's count (a veth peer
// without an XDP program drops redirected frames).
func (g *LiveGenerator) Send(n int) (sent, failed int, err error) {
	for sent < n {
		chunk := min(n-sent, g.opts.MaxChunk)
		g.conf.Limit = g.sent + uint64(chunk)
		g.conf.Call++ // the program rereads the clock at a new call
		if err := g.objs.Conf.Put(&g.key0, &g.conf); err != nil {
			return sent, 0, fmt.Errorf("live generator: set limit: %w", err)
		}
		start := time.Now()
		done, err := g.run()
		sent += done
		if err != nil {
			return sent, 0, err
		}
		if done < chunk {
			return sent, 0, fmt.Errorf("live generator: program stamped %d of %d frames (frame too short for its header?)", done, chunk)
		}
		if el := time.Since(start).Seconds(); el > 0 {
			g.rate = float64(done) / el
		}
	}
	return sent, 0, nil
}

// run makes BPF_PROG_RUN calls until the program's counter reaches the
// limit (a call a signal interrupted goes on with the frames left) or a
// call stamps nothing. It returns the frames stamped.
func (g *LiveGenerator) run() (int, error) {
	first := g.sent
	for g.sent < g.conf.Limit {
		g.attr.Repeat = uint32(g.conf.Limit - g.sent)
		errno := xdplive.Run(&g.attr)
		runtime.KeepAlive(g.base) // the kernel read data_in and ctx through g.attr
		runtime.KeepAlive(&g.ctx)
		if err := g.objs.State.Lookup(&g.key0, &g.st); err != nil {
			return int(g.sent - first), fmt.Errorf("live generator: read counter: %w", err)
		}
		progress := g.st.Seq != g.sent
		g.sent = g.st.Seq
		switch {
		case errno == unix.EINTR: // a signal: go on with the frames left
			g.interrupted++
		case errno != 0:
			return int(g.sent - first), fmt.Errorf("live generator: BPF_PROG_RUN on ifindex %d: %w", g.opts.Ifindex, errno)
		case !progress:
			return int(g.sent - first), nil
		}
	}
	return int(g.sent - first), nil
}

// Close releases the program and maps.
func (g *LiveGenerator) Close() error {
	var err error
	if g.keep != nil {
		err = g.keep.Close()
		g.keep = nil
	}
	g.objs.close()
	return err
}
