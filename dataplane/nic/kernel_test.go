package nic

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/internal/netnstest"
)

// Check's predictions about native XDP on veth must match what the kernel
// does when a multi-buffer aware program (xdp.frags, as vmq's filter is)
// is attached in driver mode.
func TestCheckNativeAgreesWithKernel(t *testing.T) {
	for _, tc := range []struct {
		name       string
		mtu        int
		queues     int
		rx, peerTx string // channel changes after creation, "" for none
		attaches   bool
	}{
		{name: "mtu 3506", mtu: 3506, queues: 1, attaches: true},
		{name: "mtu 3507", mtu: 3507, queues: 1, attaches: true},
		{name: "mtu 9000", mtu: 9000, queues: 1, attaches: true},
		{name: "peer tx 4 > rx 2", mtu: 1500, queues: 4, rx: "2", attaches: false},
		{name: "peer tx 2 = rx 2", mtu: 1500, queues: 4, rx: "2", peerTx: "2", attaches: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostNS, wireNS := netnstest.New(t), netnstest.New(t)
			a, b := netnstest.NewVethPair(t, hostNS, wireNS, netnstest.VethOptions{Queues: tc.queues, MTU: tc.mtu})
			if tc.rx != "" {
				hostNS.Run(t, "ethtool", "-L", a.Name, "rx", tc.rx)
			}
			if tc.peerTx != "" {
				wireNS.Run(t, "ethtool", "-L", b.Name, "tx", tc.peerTx)
			}
			info := inspectIn(t, hostNS, a.Name)
			ps := Check(info, Requirements{FrameSize: 4096, AttachMode: ModeNative, XSKMode: ModeCopy, MultiBuffer: true})
			for _, p := range ps {
				t.Log(p)
			}
			predicted := Err(ps) == nil

			prog := xdpPass(t)
			err := hostNS.Do(func() error {
				l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: a.Index, Flags: link.XDPDriverMode})
				if err != nil {
					return err
				}
				return l.Close()
			})
			t.Logf("native attach: %v", err)
			if (err == nil) != tc.attaches {
				t.Fatalf("native attach error %v, want success %v", err, tc.attaches)
			}
			if predicted != tc.attaches {
				t.Errorf("Check predicted native attach %v, kernel says %v", predicted, tc.attaches)
			}
		})
	}
}

func xdpPass(t *testing.T) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.XDP,
		Flags:   unix.BPF_F_XDP_HAS_FRAGS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
		},
	})
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			t.Fatalf("load XDP program: %+v", verr)
		}
		t.Fatalf("load XDP program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}
