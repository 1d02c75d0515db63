package bpf

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/internal/netnstest"
)

// xdpState reports the XDP program id and attach mode of a link in ns.
func xdpState(t testing.TB, l netnstest.Link) (progID uint32, mode AttachMode) {
	t.Helper()
	err := l.NS.Do(func() error {
		nl, err := netlink.LinkByIndex(l.Index)
		if err != nil {
			return err
		}
		if x := nl.Attrs().Xdp; x != nil && x.Attached {
			progID = x.ProgId
		}
		mode = currentMode(l.Index)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return progID, mode
}

func progID(t testing.TB, p *ebpf.Program) uint32 {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("program has no id")
	}
	return uint32(id)
}

func TestAttachModes(t *testing.T) {
	ns, wire := netnstest.New(t), netnstest.New(t)
	a, _ := netnstest.NewVethPair(t, ns, wire, netnstest.VethOptions{Queues: 2, MTU: 1500})
	for _, c := range []struct{ ask, want AttachMode }{{Native, Native}, {Generic, Generic}, {Auto, Native}} {
		t.Run(c.ask.String(), func(t *testing.T) {
			f, err := Load(Config{MaxVMs: 2, MaxQueues: 2})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var got AttachMode
			if err := ns.Do(func() (err error) { got, err = f.Attach(a.Index, c.ask); return }); err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Fatalf("Attach(%s) got %s, want %s", c.ask, got, c.want)
			}
			id, mode := xdpState(t, a)
			if id != progID(t, f.Program()) || mode != c.want {
				t.Fatalf("interface shows prog %d mode %s, want prog %d mode %s", id, mode, progID(t, f.Program()), c.want)
			}
			// A second attach elsewhere is refused while attached.
			if err := ns.Do(func() error { _, err := f.Attach(a.Index+1000, c.ask); return err }); err == nil {
				t.Fatal("attach to a second interface succeeded")
			}
			if err := f.Detach(); err != nil {
				t.Fatal(err)
			}
			if id, _ := xdpState(t, a); id != 0 {
				t.Fatalf("prog %d still attached after Detach", id)
			}
		})
	}
	// Another filter already on the interface: Auto must not stack a
	// generic program beside it.
	t.Run("busy", func(t *testing.T) {
		f1, err := Load(Config{MaxVMs: 1, MaxQueues: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer f1.Close()
		f2, err := Load(Config{MaxVMs: 1, MaxQueues: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer f2.Close()
		if err := ns.Do(func() error { _, err := f1.Attach(a.Index, Native); return err }); err != nil {
			t.Fatal(err)
		}
		err = ns.Do(func() error { _, err := f2.Attach(a.Index, Auto); return err })
		if err == nil {
			t.Fatal("second filter attached to a busy interface")
		}
		t.Log(err)
		if id, mode := xdpState(t, a); id != progID(t, f1.Program()) || mode != Native {
			t.Fatalf("interface has prog %d mode %s, want the first filter's %d native", id, mode, progID(t, f1.Program()))
		}
	})
	// A plain XDP program attaches natively on veth only while the peer's
	// MTU is <= 3506 (field notes); the filter is multi-buffer aware
	// (xdp.frags), so it attaches natively at MTU 9000 too.
	t.Run("native at MTU 9000", func(t *testing.T) {
		ns2, wire2 := netnstest.New(t), netnstest.New(t)
		a2, _ := netnstest.NewVethPair(t, ns2, wire2, netnstest.VethOptions{MTU: 9000})
		f, err := Load(Config{MaxVMs: 1, MaxQueues: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var got AttachMode
		if err := ns2.Do(func() (err error) { got, err = f.Attach(a2.Index, Auto); return }); err != nil {
			t.Fatal(err)
		}
		if got != Native {
			t.Fatalf("Auto on a jumbo veth got %s, want native", got)
		}
		if id, mode := xdpState(t, a2); id != progID(t, f.Program()) || mode != Native {
			t.Fatalf("interface has prog %d mode %s, want %d native", id, mode, progID(t, f.Program()))
		}
	})
}

func TestPinnedReuse(t *testing.T) {
	ns, wire := netnstest.New(t), netnstest.New(t)
	a, _ := netnstest.NewVethPair(t, ns, wire, netnstest.VethOptions{})
	dir := tempPinDir(t)
	cfg := Config{MaxVMs: 4, MaxQueues: 2, PinDir: dir}

	f1, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := f1.SetFilter(macA, 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := f1.SetFilter(macB, 42, 4); err != nil {
		t.Fatal(err)
	}
	if err := ns.Do(func() error { _, err := f1.Attach(a.Index, Native); return err }); err != nil {
		t.Fatal(err)
	}
	id1 := progID(t, f1.Program())
	for _, n := range append(mapNames, LinkPinName) {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("pin %s: %v", n, err)
		}
	}
	if err := f1.Close(); err != nil {
		t.Fatal(err)
	}
	// "Keep steering": the pinned link holds the program on the interface.
	if id, _ := xdpState(t, a); id != id1 {
		t.Fatalf("after Close the interface has prog %d, want %d", id, id1)
	}

	// A different shape is refused with a clear error.
	if f, err := Load(Config{MaxVMs: 5, MaxQueues: 2, PinDir: dir}); err == nil {
		f.Close()
		t.Fatal("Load with another MaxVMs reused the pinned maps")
	} else if !errors.Is(err, ebpf.ErrMapIncompatible) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("shape mismatch error: %v", err)
	}

	var f2 *Filter
	if err := ns.Do(func() (err error) { f2, err = Load(cfg); return }); err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	got, err := f2.Filters()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[Key{MAC: [6]byte(macA)}] != 1 || got[Key{MAC: [6]byte(macB), VLAN: 42}] != 4 {
		t.Fatalf("reopened filters %v", got)
	}
	if ifi, mode := f2.Attached(); ifi != a.Index || mode != Native {
		t.Fatalf("reopened Filter attached to %d/%s, want %d/native", ifi, mode, a.Index)
	}
	// Attach on the same interface replaces the program in place.
	if err := ns.Do(func() error { _, err := f2.Attach(a.Index, Auto); return err }); err != nil {
		t.Fatal(err)
	}
	if id, mode := xdpState(t, a); id != progID(t, f2.Program()) || mode != Native {
		t.Fatalf("after replace: prog %d mode %s, want prog %d native", id, mode, progID(t, f2.Program()))
	}
	if err := f2.Detach(); err != nil {
		t.Fatal(err)
	}
	if id, _ := xdpState(t, a); id != 0 {
		t.Fatalf("prog %d still attached after Detach", id)
	}
	if _, err := os.Stat(filepath.Join(dir, LinkPinName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("link pin after Detach: %v", err)
	}
	if err := f2.Unpin(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin dir after Unpin: %v", err)
	}
}

// TestLive sends real frames over a veth into the attached filter and
// receives them on AF_XDP sockets: a VM socket and a flood socket sharing
// one UMEM on queue 0.
func TestLive(t *testing.T) {
	for _, mode := range []AttachMode{Native, Generic} {
		t.Run(mode.String(), func(t *testing.T) { testLive(t, mode) })
	}
}

func testLive(t *testing.T, mode AttachMode) {
	ns, wire := netnstest.New(t), netnstest.New(t)
	a, b := netnstest.NewVethPair(t, ns, wire, netnstest.VethOptions{MTU: 1500})
	f, err := Load(Config{MaxVMs: 2, MaxQueues: 1, NoSocket: Drop})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.SetFilter(macA, 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := f.SetFilter(macB, 0, 2); err != nil { // no socket: dropped
		t.Fatal(err)
	}
	var vm, flood *testXSK
	err = ns.Do(func() error {
		if _, err := f.Attach(a.Index, mode); err != nil {
			return err
		}
		var err error
		if vm, err = openTestXSK(a.Index, 0, nil); err != nil {
			return err
		}
		flood, err = openTestXSK(a.Index, 0, vm)
		return err
	})
	if flood != nil {
		defer flood.Close()
	}
	if vm != nil {
		defer vm.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	vm.refill()
	flood.refill()
	if err := f.RegisterSocket(1, 0, vm.fd); err != nil {
		t.Fatal(err)
	}
	if err := f.RegisterFlood(0, flood.fd); err != nil {
		t.Fatal(err)
	}

	var tx int
	if err := wire.Do(func() (err error) {
		tx, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(tx)
	send := func(fr []byte) {
		if err := unix.Sendto(tx, fr, 0, &unix.SockaddrLinklayer{Ifindex: b.Index, Halen: 6}); err != nil {
			t.Fatalf("send: %v", err)
		}
	}

	before, err := f.GlobalCounters()
	if err != nil {
		t.Fatal(err)
	}
	// Ours are recognised by their source MAC; the kernel of the wire
	// namespace may send its own multicast (IPv6 ND) meanwhile.
	ours := func(fr []byte) bool { return len(fr) >= 12 && string(fr[6:12]) == "\x02\xee\x00\x00\x00\x99" }
	const rounds, burst = 5, 8
	var gotVM, gotFlood int
	for round := 1; round <= rounds; round++ {
		for range burst {
			send(frame(macA, nil, 100))
			send(frame(bcast, nil, 100))
			send(frame(macC, nil, 100)) // unknown: host stack
			send(frame(macB, nil, 100)) // VM without socket: dropped
		}
		// Drain before the next burst: each socket has 32 UMEM frames.
		deadline := time.Now().Add(5 * time.Second)
		for gotVM < round*burst || gotFlood < round*burst {
			for _, fr := range vm.receive() {
				if !ours(fr) || string(fr[:6]) != string(macA) {
					t.Fatalf("VM socket got a frame for %x", fr[:min(6, len(fr))])
				}
				gotVM++
			}
			for _, fr := range flood.receive() {
				if ours(fr) {
					if fr[0] != 0xff {
						t.Fatalf("flood socket got a frame for %x", fr[:6])
					}
					gotFlood++
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: timeout: VM socket has %d frames, flood socket %d", round, gotVM, gotFlood)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	// No extra frames may follow.
	time.Sleep(50 * time.Millisecond)
	gotVM += len(vm.receive())
	for _, fr := range flood.receive() {
		if ours(fr) {
			gotFlood++
		}
	}
	if gotVM != rounds*burst || gotFlood != rounds*burst {
		t.Fatalf("VM socket got %d, flood socket %d, want %d each", gotVM, gotFlood, rounds*burst)
	}
	after, err := f.GlobalCounters()
	if err != nil {
		t.Fatal(err)
	}
	n := uint64(rounds * burst)
	if d := after.Redirected - before.Redirected; d != n {
		t.Errorf("Redirected +%d, want %d", d, n)
	}
	if d := after.NoSocket - before.NoSocket; d != n {
		t.Errorf("NoSocket +%d, want %d", d, n)
	}
	if d := after.Dropped - before.Dropped; d != n {
		t.Errorf("Dropped +%d, want %d", d, n)
	}
	if d := after.Passed - before.Passed; d != n {
		t.Errorf("Passed +%d, want %d", d, n)
	}
	if d := after.Flooded - before.Flooded; d < n {
		t.Errorf("Flooded +%d, want at least %d", d, n)
	}
	vc, err := f.VMCounters(1)
	if err != nil {
		t.Fatal(err)
	}
	if vc.Packets != n || vc.Bytes != 100*n || vc.RedirectErrors != 0 {
		t.Errorf("slot 1 counters %+v, want %d packets of 100 bytes", vc, n)
	}
	// Unregistered, the VM's frames stop reaching its socket.
	if err := f.UnregisterSocket(1, 0); err != nil {
		t.Fatal(err)
	}
	send(frame(macA, nil, 100))
	deadline := time.Now().Add(5 * time.Second)
	for {
		g, err := f.GlobalCounters()
		if err != nil {
			t.Fatal(err)
		}
		if g.NoSocket-before.NoSocket == n+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("NoSocket +%d after unregistering, want %d", g.NoSocket-before.NoSocket, n+1)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if got := vm.receive(); len(got) != 0 {
		t.Fatalf("unregistered socket received %d frames", len(got))
	}
	vc2, err := f.VMCounters(2)
	if err != nil {
		t.Fatal(err)
	}
	if vc2.Packets != 0 || vc2.RedirectErrors != n {
		t.Errorf("slot 2 counters %+v, want %d redirect errors", vc2, n)
	}
}
