package xdplive

// XDPMD is struct xdp_md, the BPF_PROG_RUN context of an XDP program.
type XDPMD struct {
	Data, DataEnd, DataMeta      uint32
	IngressIfindex, RxQueueIndex uint32
	EgressIfindex                uint32
}

// RunAttr is union bpf_attr's BPF_PROG_TEST_RUN member. Callers make the
// call themselves (Run) rather than through ebpf.Program.Run, which
// allocates per call and restarts an interrupted call with its full
// count: a large one might then never finish under a signal every few ms
// (profiling). They set Repeat before each call.
type RunAttr struct {
	ProgFD, Retval          uint32
	DataSizeIn, DataSizeOut uint32
	DataIn, DataOut         uint64
	Repeat, Duration        uint32
	CtxSizeIn, CtxSizeOut   uint32
	CtxIn, CtxOut           uint64
	Flags, CPU, BatchSize   uint32
	_                       uint32
}
