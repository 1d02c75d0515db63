package nic

import (
	"errors"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/vmq/vmq/internal/netnstest"
)

func inspectIn(t *testing.T, ns *netnstest.NS, name string) Info {
	t.Helper()
	var info Info
	if err := ns.Do(func() (err error) {
		info, err = Inspect(name)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %+v (xdp features %s)", name, info, info.XDPFeatures)
	return info
}

func TestInspectVeth(t *testing.T) {
	for _, tc := range []struct {
		queues, mtu int
	}{
		{queues: 1, mtu: 1500},
		{queues: 4, mtu: 3000},
	} {
		hostNS, wireNS := netnstest.New(t), netnstest.New(t)
		a, _ := netnstest.NewVethPair(t, hostNS, wireNS, netnstest.VethOptions{Queues: tc.queues, MTU: tc.mtu})
		info := inspectIn(t, hostNS, a.Name)

		if info.Name != a.Name || info.Index != a.Index {
			t.Errorf("name/index = %s/%d, want %s/%d", info.Name, info.Index, a.Name, a.Index)
		}
		if info.Driver != "veth" || !info.IsVeth() {
			t.Errorf("driver = %q, want veth", info.Driver)
		}
		if info.DriverVersion != "1.0" || info.BusInfo != "" {
			t.Errorf("driver version %q bus %q, want 1.0 and none", info.DriverVersion, info.BusInfo)
		}
		if info.MTU != tc.mtu {
			t.Errorf("MTU = %d, want %d", info.MTU, tc.mtu)
		}
		if info.MAC.String() != a.MAC.String() || len(info.MAC) != 6 {
			t.Errorf("MAC = %s, want %s", info.MAC, a.MAC)
		}
		if !info.Up {
			t.Error("Up = false for a link set up")
		}
		// veth reports separate rx/tx channels, never combined; its maximum
		// is the queue count it was created with.
		if !info.ChannelsKnown {
			t.Fatal("ChannelsKnown = false on veth")
		}
		want := [6]int{tc.queues, tc.queues, 0, tc.queues, tc.queues, 0}
		got := [6]int{info.RxChannels, info.TxChannels, info.CombinedChannels, info.MaxRx, info.MaxTx, info.MaxCombined}
		if got != want {
			t.Errorf("channels rx,tx,combined,maxrx,maxtx,maxcombined = %v, want %v", got, want)
		}
		if info.Queues() != tc.queues {
			t.Errorf("Queues() = %d, want %d", info.Queues(), tc.queues)
		}
		// veth has native XDP and can redirect, but no AF_XDP zero-copy.
		if !info.XDPFeaturesKnown {
			t.Fatal("XDPFeaturesKnown = false on kernel >= 6.3")
		}
		if !info.XDPFeatures.Has(XDPBasic|XDPRedirect) || info.XDPFeatures.Has(XDPXSKZeroCopy) {
			t.Errorf("xdp features = %s, want basic and redirect without xsk-zerocopy", info.XDPFeatures)
		}
	}
}

func TestInspectDown(t *testing.T) {
	hostNS, wireNS := netnstest.New(t), netnstest.New(t)
	a, _ := netnstest.NewVethPair(t, hostNS, wireNS, netnstest.VethOptions{})
	if err := hostNS.Do(func() error {
		l, err := netlink.LinkByName(a.Name)
		if err != nil {
			return err
		}
		return netlink.LinkSetDown(l)
	}); err != nil {
		t.Fatal(err)
	}
	info := inspectIn(t, hostNS, a.Name)
	if info.Up {
		t.Error("Up = true for a link set down")
	}
	if !info.XDPFeatures.Has(XDPBasic) {
		t.Errorf("xdp features of a down veth = %s, want basic", info.XDPFeatures)
	}
}

// A veth clears its XDP features while its peer has more tx queues than
// it has rx queues: native attach would fail then (ENOSPC), and Check
// explains why.
func TestInspectVethFewerRxThanPeerTx(t *testing.T) {
	hostNS, wireNS := netnstest.New(t), netnstest.New(t)
	a, _ := netnstest.NewVethPair(t, hostNS, wireNS, netnstest.VethOptions{Queues: 4, MTU: 1500})
	hostNS.Run(t, "ethtool", "-L", a.Name, "rx", "2", "tx", "3")
	info := inspectIn(t, hostNS, a.Name)
	if info.RxChannels != 2 || info.TxChannels != 3 || info.MaxRx != 4 || info.Queues() != 2 {
		t.Errorf("rx %d tx %d maxrx %d queues %d, want 2 3 4 2", info.RxChannels, info.TxChannels, info.MaxRx, info.Queues())
	}
	if !info.XDPFeaturesKnown || info.XDPFeatures != 0 {
		t.Errorf("xdp features = %s (known %v), want none", info.XDPFeatures, info.XDPFeaturesKnown)
	}
	ps := Check(info, Requirements{Queues: []int{0, 1}, AttachMode: ModeNative})
	if err := Err(ps); err == nil || !strings.Contains(err.Error(), "tx queues") {
		t.Errorf("Check with native: %v, want an error about the peer's tx queues", err)
	} else {
		t.Log(err)
	}
}

func TestInspectMissing(t *testing.T) {
	ns := netnstest.New(t)
	err := ns.Do(func() error {
		_, err := Inspect("vmq-nosuch0")
		return err
	})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), `"vmq-nosuch0"`) {
		t.Errorf("error %q does not name the interface", err)
	}
	t.Log(err)
}

// The interface exists in the host namespace only: Inspect must look in
// the calling thread's namespace, not the process's.
func TestInspectFollowsThreadNetns(t *testing.T) {
	hostNS, wireNS := netnstest.New(t), netnstest.New(t)
	a, b := netnstest.NewVethPair(t, hostNS, wireNS, netnstest.VethOptions{})
	if err := wireNS.Do(func() error {
		_, err := Inspect(a.Name)
		return err
	}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Inspect(%s) in the peer's netns: err = %v, want ErrNotFound", a.Name, err)
	}
	if info := inspectIn(t, wireNS, b.Name); info.Index != b.Index {
		t.Errorf("index = %d, want %d", info.Index, b.Index)
	}
}

// Loopback has neither ethtool driver info nor channels: Inspect still
// answers, with one assumed queue.
func TestInspectLoopback(t *testing.T) {
	ns := netnstest.New(t)
	info := inspectIn(t, ns, "lo")
	if info.Driver != "unknown" || info.ChannelsKnown || info.Queues() != 1 || info.MTU != 65536 || !info.Up {
		t.Errorf("lo: driver %q channels known %v queues %d mtu %d up %v, want unknown false 1 65536 true",
			info.Driver, info.ChannelsKnown, info.Queues(), info.MTU, info.Up)
	}
}
