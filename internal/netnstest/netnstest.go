// Package netnstest gives tests private network namespaces and veth pairs
// with unique names, removed when the test ends.
//
// Both ends of a pair usually live in namespaces of their own: one plays
// the host with its "NIC", the other the wire. Code that must run inside a
// namespace (attaching XDP, opening AF_XDP sockets, BPF_PROG_RUN with live
// frames) runs in NS.Do on a locked OS thread; sockets keep their namespace
// after Do returns, so workers may use them from any thread.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vmq/vmq/internal/testenv"
)

// NS is a named network namespace, visible to `ip netns exec NAME`.
type NS struct {
	Name   string
	handle netns.NsHandle
}

// UniqueName returns prefix followed by random hex, at most 15 bytes
// (the limit of an interface name).
func UniqueName(prefix string) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	name := prefix + hex.EncodeToString(b[:])
	if len(name) > 15 {
		name = name[:15]
	}
	return name
}

// New creates a network namespace with its loopback up. It requires root
// and is deleted at the end of the test.
func New(t testing.TB) *NS {
	t.Helper()
	testenv.RequireRoot(t)
	name := UniqueName("vmqt-")
	var handle netns.NsHandle
	err := onLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return fmt.Errorf("get current netns: %w", err)
		}
		defer orig.Close()
		h, err := netns.NewNamed(name) // also switches this thread into it
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		handle = h
		if err := netns.Set(orig); err != nil {
			return fmt.Errorf("return from netns %s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ns := &NS{Name: name, handle: handle}
	t.Cleanup(func() {
		handle.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Logf("delete netns %s: %v", name, err)
		}
	})
	if err := ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		t.Fatalf("bring up lo in %s: %v", name, err)
	}
	return ns
}

// Handle is the namespace's file descriptor handle.
func (ns *NS) Handle() netns.NsHandle { return ns.handle }

// Do runs fn on an OS thread switched into the namespace. The thread is
// switched back before Do returns; if that fails the thread is left locked
// so the Go runtime discards it instead of reusing it in the wrong namespace.
func (ns *NS) Do(fn func() error) error {
	return onLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return fmt.Errorf("get current netns: %w", err)
		}
		defer orig.Close()
		if err := netns.Set(ns.handle); err != nil {
			return fmt.Errorf("enter netns %s: %w", ns.Name, err)
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			return errThreadTainted{fmt.Errorf("leave netns %s: %w", ns.Name, err)}
		}
		return fnErr
	})
}

type errThreadTainted struct{ error }

func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		if _, tainted := err.(errThreadTainted); !tainted {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Command returns a command that runs inside the namespace (`ip netns exec`).
// Note that ip netns exec remounts /sys: bpffs is not visible inside
// unless mounted there.
func (ns *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Run runs a command inside the namespace and fails the test on error.
func (ns *NS) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := ns.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("in netns %s: %s %v: %v\n%s", ns.Name, name, args, err, out)
	}
	return string(out)
}

// Link is one end of a veth pair.
type Link struct {
	NS    *NS
	Name  string
	Index int
	MAC   net.HardwareAddr
}

// VethOptions shape a veth pair. Zero values mean one queue and the
// kernel's default MTU.
type VethOptions struct {
	// Queues is the number of rx and tx queues of each end, all active.
	Queues int
	// MTU of both ends. Native XDP on veth needs the peer's MTU at most 3506.
	MTU int
}

// NewVethPair creates a veth pair with end a in nsA and end b in nsB, both
// up. It is removed with its namespaces.
func NewVethPair(t testing.TB, nsA, nsB *NS, opts VethOptions) (a, b Link) {
	t.Helper()
	queues := max(opts.Queues, 1)
	nameA, nameB := UniqueName("vqa"), UniqueName("vqb")
	err := nsA.Do(func() error {
		veth := &netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{
				Name:        nameA,
				NumTxQueues: queues,
				NumRxQueues: queues,
				MTU:         opts.MTU,
			},
			PeerName:        nameB,
			PeerNamespace:   netlink.NsFd(int(nsB.handle)),
			PeerMTU:         uint32(opts.MTU),
			PeerNumTxQueues: uint32(queues),
			PeerNumRxQueues: uint32(queues),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s/%s: %w", nameA, nameB, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	a = upLink(t, nsA, nameA, queues)
	b = upLink(t, nsB, nameB, queues)
	return a, b
}

func upLink(t testing.TB, ns *NS, name string, queues int) Link {
	t.Helper()
	if queues > 1 {
		// A veth starts with one active queue; binding AF_XDP to a higher
		// queue fails until the channels are raised.
		testenv.RequireCommand(t, "ethtool")
		q := strconv.Itoa(queues)
		ns.Run(t, "ethtool", "-L", name, "rx", q, "tx", q)
	}
	var l Link
	err := ns.Do(func() error {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find %s: %w", name, err)
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", name, err)
		}
		l = Link{NS: ns, Name: name, Index: link.Attrs().Index, MAC: link.Attrs().HardwareAddr}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// PassXDP attaches an XDP_PASS program natively to ifindex in ns until
// the test ends or the returned detach runs: a veth takes XDP frames
// (ndo_xdp_xmit, vmq's XDP transmit) only while its peer has an XDP
// program, and the peer's stack still sees every frame.
func PassXDP(t testing.TB, ns *NS, ifindex int) (detach func()) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}}) // XDP_PASS
	if err != nil {
		testenv.Skip(t, "load XDP program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	var l link.Link
	if err := ns.Do(func() (err error) {
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
		return err
	}); err != nil {
		testenv.Skip(t, "attach XDP in %s: %v", ns.Name, err)
	}
	var once sync.Once
	detach = func() { once.Do(func() { l.Close() }) }
	t.Cleanup(detach)
	return detach
}
