// Package xdplive runs XDP programs with BPF_PROG_RUN in live-frames mode
// (BPF_F_TEST_XDP_LIVE_FRAMES: every XDP_TX or XDP_REDIRECT is a real
// transmit), for vmq-pktgen and the dataplane's XDP transmit: the call
// (RunAttr, Run) and a Keeper that holds the program in the kernel's XDP
// dispatcher so that the calls stay cheap.
//
// A live-frames call adds its program to the dispatcher at its start and removes
// it at its end, each a text patch and a synchronize_rcu() (~20 ms together
// on a busy VM). A program already in the dispatcher is only
// reference-counted, so a Keeper attaches it (generic XDP) to the loopback
// of a private network namespace of its own, which nothing else uses and
// which lives as long as the Keeper. The program sees that loopback's
// frames, if any: it must pass what it does not expect.
package xdplive

import (
	"fmt"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Keeper holds one program in the XDP dispatcher until Close.
type Keeper struct {
	nsFD int
	lnk  link.Link
}

// New attaches prog to the loopback of a new private network namespace.
// It needs CAP_SYS_ADMIN; callers treat an error as "slow, not wrong".
func New(prog *ebpf.Program) (*Keeper, error) {
	type result struct {
		k   *Keeper
		err error
	}
	res := make(chan result, 1)
	go func() {
		// The thread never returns to the runtime's pool: it leaves its
		// namespace for the private one and exits with this goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			res <- result{err: fmt.Errorf("dispatcher keeper: new network namespace: %w", err)}
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			res <- result{err: fmt.Errorf("dispatcher keeper: open namespace: %w", err)}
			return
		}
		// ifindex 1 is the loopback of every namespace.
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: 1, Flags: link.XDPGenericMode})
		if err != nil {
			unix.Close(fd)
			res <- result{err: fmt.Errorf("dispatcher keeper: attach to loopback: %w", err)}
			return
		}
		res <- result{k: &Keeper{nsFD: fd, lnk: l}}
	}()
	r := <-res
	return r.k, r.err
}

// Link is the attachment (for tests).
func (k *Keeper) Link() link.Link { return k.lnk }

// Close detaches the program and lets the namespace go.
func (k *Keeper) Close() error {
	err := k.lnk.Close()
	unix.Close(k.nsFD)
	if err != nil {
		return fmt.Errorf("dispatcher keeper: detach: %w", err)
	}
	return nil
}
