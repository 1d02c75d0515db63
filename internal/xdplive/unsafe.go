package xdplive

// Every use of package unsafe in xdplive: the kernel reads the call's
// input through pointers in its attribute.

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// NewLiveRunAttr is a live-frames BPF_PROG_TEST_RUN of the program prog
// (a file descriptor) on frames made from data, with ctx as context and
// the kernel's batch (page pool refill and transmit flush) of batch
// frames. data and ctx must stay alive and unmoved while the attribute is
// used: the caller holds them (Go's heap does not move).
func NewLiveRunAttr(prog int, data []byte, ctx *XDPMD, batch uint32) RunAttr {
	return RunAttr{
		ProgFD:     uint32(prog),
		DataSizeIn: uint32(len(data)),
		DataIn:     uint64(uintptr(unsafe.Pointer(&data[0]))),
		CtxSizeIn:  uint32(unsafe.Sizeof(*ctx)),
		CtxIn:      uint64(uintptr(unsafe.Pointer(ctx))),
		Flags:      unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		BatchSize:  batch,
	}
}

// Run makes one BPF_PROG_TEST_RUN call (EINTR: a signal cut it short).
func Run(attr *RunAttr) unix.Errno {
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(attr)), unsafe.Sizeof(*attr))
	return errno
}
