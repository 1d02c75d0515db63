package pktgen

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
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
	// MaxChunk bounds the frames of one BPF_PROG_RUN call (0 = 1<<16).
	// If a signal interrupts a call, the kernel's loop restarts from zero
	// and the program drops what exceeds the requested count; a bound keeps
	// that wasted work small.
	MaxChunk int
}

// xdpMD is struct xdp_md, the BPF_PROG_RUN context of an XDP program.
type xdpMD struct {
	Data, DataEnd, DataMeta      uint32
	IngressIfindex, RxQueueIndex uint32
	EgressIfindex                uint32
}

// LiveGenerator sends a flow's frames with BPF_PROG_RUN in live-frames mode
// (BPF_F_TEST_XDP_LIVE_FRAMES): the kernel runs pktgen_xdp once per frame
// on pages it recycles, the program stamps the frame (destination, ports,
// stream, sequence number, bpf_ktime_get_ns timestamp) and returns XDP_TX,
// which transmits it out of the ingress interface. Nothing is copied from
// user space per frame.
//
// A LiveGenerator is not safe for concurrent use: the program's sequence
// counter is a plain read-modify-write. Use one generator per thread (with
// distinct FlowSpec.Stream values). Send must be called from a thread in
// the interface's network namespace (netnstest's NS.Do, or
// runtime.LockOSThread + setns); Close may be called from anywhere.
type LiveGenerator struct {
	tmpl  *Template
	opts  LiveOptions
	base  []byte
	ctx   xdpMD
	conf  pktgenBPFGenConfig
	objs  liveObjects
	sent  uint64 // frames stamped so far (the program's sequence counter)
	runOp ebpf.RunOptions
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
	if opts.BatchSize == 0 {
		opts.BatchSize = 64
	}
	if opts.BatchSize > 256 {
		return nil, fmt.Errorf("live generator: batch size %d above 256", opts.BatchSize)
	}
	if opts.MaxChunk <= 0 {
		opts.MaxChunk = 1 << 16
	}
	spec, err := loadPktgenBPF()
	if err != nil {
		return nil, fmt.Errorf("live generator: load BPF spec: %w", err)
	}
	g := &LiveGenerator{tmpl: t, opts: opts, base: t.Base()}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		return nil, fmt.Errorf("live generator: load program: %w", err)
	}
	for i := range t.dests {
		d := pktgenBPFGenDst{Hdr: t.dests[i].hdr, CsumBase: t.dests[i].csumBase}
		if err := g.objs.Dsts.Put(uint32(i), &d); err != nil {
			g.objs.close()
			return nil, fmt.Errorf("live generator: set destination %d: %w", i, err)
		}
	}
	var csum uint8
	if t.spec.UDPChecksum {
		csum = 1
	}
	g.conf = pktgenBPFGenConfig{
		N_dsts:     uint32(len(t.dests)),
		StreamBase: t.spec.Stream,
		SportFirst: t.src.First,
		SportCount: uint16(t.src.Count()), // a full 0-65535 range wraps to 0, which the program reads as 1
		DportFirst: t.dst.First,
		DportCount: uint16(t.dst.Count()),
		Tags:       uint8(t.tags),
		UdpCsum:    csum,
	}
	if t.src.Count() > 0xffff || t.dst.Count() > 0xffff {
		g.objs.close()
		return nil, errors.New("live generator: a port range of all 65536 ports is not supported; use 1-65535")
	}
	g.ctx = xdpMD{DataEnd: uint32(len(g.base)), IngressIfindex: uint32(opts.Ifindex), RxQueueIndex: opts.Queue}
	g.runOp = ebpf.RunOptions{
		Data:      g.base,
		Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		BatchSize: opts.BatchSize,
		Context:   g.ctx,
	}
	return g, nil
}

// Template is the flow being sent.
func (g *LiveGenerator) Template() *Template { return g.tmpl }

// FrameLen is the length of each frame.
func (g *LiveGenerator) FrameLen() int { return g.tmpl.frameLen }

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
		if err := g.objs.Conf.Put(uint32(0), &g.conf); err != nil {
			return sent, 0, fmt.Errorf("live generator: set limit: %w", err)
		}
		g.runOp.Repeat = uint32(chunk)
		_, runErr := g.objs.Prog.Run(&g.runOp)
		var st pktgenBPFGenState
		if err := g.objs.State.Lookup(uint32(0), &st); err != nil {
			return sent, 0, fmt.Errorf("live generator: read counter: %w", err)
		}
		done := int(st.Seq - g.sent)
		g.sent = st.Seq
		sent += done
		if runErr != nil {
			return sent, 0, fmt.Errorf("live generator: BPF_PROG_RUN on ifindex %d: %w", g.opts.Ifindex, runErr)
		}
		if done < chunk {
			return sent, 0, fmt.Errorf("live generator: program stamped %d of %d frames (frame too short for its header?)", done, chunk)
		}
	}
	return sent, 0, nil
}

// Close releases the program and maps.
func (g *LiveGenerator) Close() error {
	g.objs.close()
	return nil
}
