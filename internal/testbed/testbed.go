// Package testbed is the one test bed every suite of vmq builds on: a
// "host" network namespace with a veth NIC of N queues, its peer in a
// "wire" namespace that plays the network, IPv6 off in both (neighbour
// discovery would add frames to exact counts), optionally an address on
// the wire end, vmq's XDP filter loaded and attached, and a private
// bpffs pin directory; wire tools (a paced sender with exact counts, an
// AF_PACKET sender at a rate, a capture that restores VLAN tags); and
// guests on vhost-user sockets: Go guests (guest/frontend) and Linux
// guests under QEMU (guest/qemu), with waits for exact counts.
//
// What runs the data plane on the bed is up to the suite: package
// dataplane's tests start dataplane.New on it, cmd/vmqd's start vmqd,
// the benchmark both vmq and DPDK. So testbed does not import
// dataplane: package dataplane's internal tests (which need its
// unexported state: worker mailboxes, ports, locks) import testbed, and
// a testbed that imported dataplane would be an import cycle. Their
// dataplane layer is a thin file over this package
// (dataplane/testbed_test.go).
package testbed

import (
	"cmp"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
)

// Options shape a bed. The zero value is one queue, MTU 1500, no
// address on the wire.
type Options struct {
	// Queues of the NIC (and its peer), all active. 0 means 1.
	Queues int
	// WireAddr, if set, is given to the wire end (e.g. "10.0.0.1/24"),
	// so the wire namespace can ping guests.
	WireAddr string
	// MTU of the NIC and its peer; 0 means 1500.
	MTU int
	// MaxVMs the filter steers to (the highest slot); 0 means 16.
	MaxVMs int
	// PeerXDP attaches an XDP_PASS program to the peer from the start
	// (PassXDPOnPeer; Bed.DetachPeerXDP removes it).
	PeerXDP bool
}

// Bed is a host/wire namespace pair joined by a veth: NIC in the host,
// Peer on the wire. Everything is removed when the test ends.
type Bed struct {
	T          testing.TB
	Host, Wire *netnstest.NS
	NIC, Peer  netnstest.Link
	Queues     int
	MTU        int // of the NIC and its peer
	maxVMs     int
	// Dir is a private directory for sockets, configs and logs.
	Dir string
	// Filter is vmq's XDP filter, after AttachFilter.
	Filter *bpf.Filter
	// DetachPeerXDP removes the peer's program of Options.PeerXDP.
	DetachPeerXDP func()
}

// New builds the namespaces and the veth (requires root).
func New(t testing.TB, opts Options) *Bed {
	t.Helper()
	queues := max(opts.Queues, 1)
	mtu := opts.MTU
	if mtu == 0 {
		mtu = 1500
	}
	b := &Bed{T: t, Host: netnstest.New(t), Wire: netnstest.New(t), Queues: queues, MTU: mtu, Dir: t.TempDir(), maxVMs: cmp.Or(opts.MaxVMs, 16)}
	for _, ns := range []*netnstest.NS{b.Host, b.Wire} {
		// No IPv6: its neighbour discovery would add frames to exact counts.
		ns.Run(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	b.NIC, b.Peer = netnstest.NewVethPair(t, b.Host, b.Wire, netnstest.VethOptions{Queues: queues, MTU: mtu})
	if opts.WireAddr != "" {
		b.Wire.Run(t, "ip", "addr", "add", opts.WireAddr, "dev", b.Peer.Name)
	}
	if opts.PeerXDP {
		b.DetachPeerXDP = b.PassXDPOnPeer()
	}
	return b
}

// QueueIDs are the NIC's queues, 0..Queues-1.
func (b *Bed) QueueIDs() []int {
	q := make([]int, b.Queues)
	for i := range q {
		q[i] = i
	}
	return q
}

// AttachFilter loads vmq's XDP filter (Options.MaxVMs, at least 2 queues) in the
// host namespace and attaches it natively to the NIC; it is closed (and
// detached) at the end of the test.
func (b *Bed) AttachFilter() *bpf.Filter {
	t := b.T
	t.Helper()
	err := b.Host.Do(func() error {
		f, err := bpf.Load(bpf.Config{MaxVMs: b.maxVMs, MaxQueues: max(b.Queues, 2)})
		if err != nil {
			return err
		}
		b.Filter = f
		_, err = f.Attach(b.NIC.Index, bpf.Native)
		return err
	})
	if err != nil {
		t.Fatalf("filter: %v", err)
	}
	t.Cleanup(func() { b.Filter.Close() })
	return b.Filter
}

// PinDir makes a private directory under /sys/fs/bpf for pinned maps
// and removes it at the end of the test; no bpffs skips the test.
func (b *Bed) PinDir() string {
	t := b.T
	t.Helper()
	dir := filepath.Join("/sys/fs/bpf", netnstest.UniqueName("vmqdtest-"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		testenv.Skip(t, "no bpffs at /sys/fs/bpf: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove pins: %v", err)
		}
	})
	return dir
}

// Socket is the path of a VM's vhost-user socket in Dir.
func (b *Bed) Socket(name string) string { return filepath.Join(b.Dir, name+".sock") }

// MustMAC parses a MAC address a test wrote down.
func MustMAC(s string) net.HardwareAddr {
	hw, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return hw
}
