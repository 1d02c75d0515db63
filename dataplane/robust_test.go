package dataplane

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// sendAsync sends count frames per destination in the background and
// returns a channel that yields once they are all sent.
func (tb *testbed) sendAsync(spec pktgen.FlowSpec, count int) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tb.send(spec, count)
	}()
	return done
}

// Adding and removing a VM while another receives changes nothing for the
// one receiving: its count stays exact.
func TestHotAddRemoveUnderTraffic(t *testing.T) {
	tb := newTestbed(t, 1)
	g1 := tb.addVM("vm1", 1, mac1, 0, 1, "")
	const n = 6000
	done := tb.sendAsync(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 64, Stream: 1}, n)

	for i := range 3 {
		name := fmt.Sprintf("hot%d", i)
		g := tb.addVM(name, 2, mac2, 0, 1, "")
		tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac2)}}, Size: 64, Stream: 2}, 200)
		waitRx(t, name, g, 200)
		if err := tb.filter.DeleteFilter(mustMAC(mac2), 0); err != nil {
			t.Fatal(err)
		}
		if err := tb.dp.RemoveVM(context.Background(), name); err != nil {
			t.Fatalf("remove %s: %v", name, err)
		}
	}
	<-done
	waitRx(t, "vm1", g1, n)
	if st := g1.Stats().Streams; len(st) != 1 || st[0].Lost != 0 || st[0].Reordered != 0 {
		t.Fatalf("vm1 stream: %+v", st)
	}
}

// A guest that goes away mid-traffic costs only its own frames (counted as
// guest_not_ready); the others stay exact, and a guest that comes back on
// the same socket receives again.
func TestGuestDisconnectMidTraffic(t *testing.T) {
	tb := newTestbed(t, 1)
	g1 := tb.addVM("vm1", 1, mac1, 0, 1, "")
	g2 := tb.addVM("vm2", 2, mac2, 0, 1, "")
	const n = 4000
	spec := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}, {MAC: mustMAC(mac2)}}, Size: 64, Stream: 1}
	done := tb.sendAsync(spec, n)
	testenv.Eventually(t, "vm2 receiving", func() (bool, string) {
		return g2.Stats().RxFrames > 200, "vm2 not receiving yet"
	})
	g2.Close() // the guest process dies
	<-done
	waitRx(t, "vm1", g1, n)

	got2 := g2.Stats().RxFrames
	testenv.Eventually(t, "vm2's lost frames counted", func() (bool, string) {
		vs := tb.vmStats("vm2")
		counted := vs.RxPackets + vs.DropsByReason["guest_not_ready"] + vs.DropsByReason["virtqueue_full"]
		return counted == n, fmt.Sprintf("vm2: delivered %d + dropped %v != %d sent", vs.RxPackets, vs.DropsByReason, n)
	})
	if got2 == 0 || got2 >= n {
		t.Fatalf("vm2 received %d before it left: the test did not disconnect mid-traffic", got2)
	}

	// The guest comes back on the same socket.
	g3, err := frontend.Dial(tb.Socket("vm2"), frontend.Config{MAC: mustMAC(mac2), MrgRxbuf: true})
	if err != nil {
		t.Fatalf("reconnect vm2: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); g3.Close() }()
	go g3.Run(ctx)
	tb.waitRunning("vm2", 2)
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac2)}}, Size: 64, Stream: 9}, 500)
	waitRx(t, "vm2 (reconnected)", g3, 500)
}

// A guest that stops reading fills its ring, then its share of held
// frames (hold.go: its whole socket ring here, 2 VMs on the default UMEM):
// beyond that its frames are dropped (virtqueue_full, or by the kernel at
// its full socket ring), and the other VM's count stays exact.
func TestStalledGuestDoesNotHurtOthers(t *testing.T) {
	tb := newTestbed(t, 1)
	g1 := tb.addVM("vm1", 1, mac1, 0, 1, "")
	hw := mustMAC(mac2)
	sock := tb.Socket("stalled")
	tb.addPort(VM{Name: "stalled", Slot: 2, MAC: hw, Socket: sock})
	// The guest sets its rings up and posts 256 buffers, then never runs:
	// nothing reads what arrives, no buffer is ever given back.
	stalled, err := frontend.Dial(sock, frontend.Config{MAC: hw, QueueSize: 256})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stalled.Close() })
	tb.waitRunning("stalled", 2)

	const n = 3000
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}, {MAC: hw}}, Size: 64, Stream: 1}, n)
	waitRx(t, "vm1", g1, n)
	testenv.Eventually(t, "stalled guest's drops", func() (bool, string) {
		vs := tb.vmStats("stalled")
		full := vs.DropsByReason["virtqueue_full"]
		var kernel uint64
		for _, s := range tb.dp.Snapshot().Sockets {
			if s.VM == "stalled" {
				kernel += s.RxRingFull + s.RxDropped
			}
		}
		return vs.RxPackets == 256 && full+kernel == n-256-vmRingSize,
			fmt.Sprintf("stalled: delivered %d, drops %v, kernel drops %d", vs.RxPackets, vs.DropsByReason, kernel)
	})
	if vs := tb.vmStats("vm1"); len(vs.DropsByReason) != 0 {
		t.Fatalf("vm1 dropped %v", vs.DropsByReason)
	}
}

// Two NIC queues, two workers: a VM with two queue pairs gets each queue's
// frames on its own pair; a VM with one pair gets the second queue's
// frames through the mailbox to the worker that owns its pair.
func TestMultiQueueDelivery(t *testing.T) {
	if runtime.NumCPU() < 2 {
		testenv.Skip(t, "needs 2 CPUs to steer frames to 2 veth queues")
	}
	tb := newTestbed(t, 2)
	one := tb.addVM("one", 1, mac1, 0, 1, "")
	two := tb.addVM("two", 2, mac2, 0, 2, "")
	const n = 1500
	spec := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}, {MAC: mustMAC(mac2)}}, Size: 64, Stream: 10}
	tb.SendOnCPU(0, spec, n)
	spec.Stream = 20
	tb.SendOnCPU(1, spec, n)

	waitRx(t, "one", one, 2*n)
	waitRx(t, "two", two, 2*n)
	if q := two.Stats().Queues; len(q) != 2 || q[0].RxFrames != n || q[1].RxFrames != n {
		t.Fatalf("two: per-pair rx %+v, want %d on each pair", q, n)
	}
	if q := one.Stats().Queues; len(q) != 1 || q[0].RxFrames != 2*n {
		t.Fatalf("one: rx %+v", q)
	}
	// Both NIC queues carried traffic, and what crossed workers was counted
	// where it was delivered.
	snap := tb.dp.Snapshot()
	for _, v := range snap.VMs {
		if v.RxPackets != 2*n || len(v.DropsByReason) != 0 {
			t.Errorf("%s: rx %d drops %v", v.Name, v.RxPackets, v.DropsByReason)
		}
		if v.Name == "two" && (v.Queues[0].RxPackets != n || v.Queues[1].RxPackets != n) {
			t.Errorf("two: per-queue %+v", v.Queues)
		}
		if v.Name == "one" && v.Queues[0].RxPackets != 2*n {
			t.Errorf("one: per-queue %+v (all delivered by worker 0)", v.Queues)
		}
	}
	for _, s := range one.Stats().Streams {
		if s.Lost != 0 || s.Duplicates != 0 || s.Received != n {
			t.Errorf("one stream %d: %+v", s.Stream, s)
		}
	}
}

// memfds returns the memfd file descriptors open in this process.
func memfds(t *testing.T) map[int]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fds := make(map[int]bool)
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.HasPrefix(link, "/memfd:vmq-guest") {
			fd, _ := strconv.Atoi(e.Name())
			fds[fd] = true
		}
	}
	return fds
}

// A guest that shrinks the file behind its memory after handing it to
// vmqd makes the worker fault (SIGBUS) on its next access: only that
// guest's device breaks, the daemon and every other VM keep running.
func TestGuestShrinksItsMemory(t *testing.T) {
	tb := newTestbed(t, 1)
	g1 := tb.addVM("vm1", 1, mac1, 0, 1, "")
	hw := mustMAC(mac2)
	sock := tb.Socket("shrinker")
	tb.addPort(VM{Name: "shrinker", Slot: 2, MAC: hw, Socket: sock})
	before := memfds(t)
	// Set up but never run: nothing in this process touches its memory
	// after the handshake, so only vmqd's worker sees the fault.
	shrinker, err := frontend.Dial(sock, frontend.Config{MAC: hw, QueueSize: 256})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shrinker.Close() })
	tb.waitRunning("shrinker", 2)
	var victim []int
	for fd := range memfds(t) {
		if !before[fd] {
			victim = append(victim, fd)
		}
	}
	if len(victim) == 0 {
		t.Fatal("no memfd of the new guest found")
	}
	for _, fd := range victim {
		if err := unix.Ftruncate(fd, 0); err != nil {
			t.Fatal(err)
		}
	}

	const n = 2000
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}, {MAC: hw}}, Size: 64, Stream: 1}, n)
	waitRx(t, "vm1", g1, n)
	testenv.Eventually(t, "shrinker broken", func() (bool, string) {
		for _, p := range tb.dp.Snapshot().Ports {
			if p.VM == "shrinker" && strings.Contains(p.Broken, "memory fault") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("ports: %+v", tb.dp.Snapshot().Ports)
	})
	vs := tb.vmStats("shrinker")
	if vs.RxPackets != 0 || vs.DropsByReason["broken"] == 0 {
		t.Fatalf("shrinker: delivered %d, drops %v", vs.RxPackets, vs.DropsByReason)
	}
	// The worker is alive and still forwarding.
	tb.send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1)}}, Size: 64, Stream: 2}, 500)
	waitRx(t, "vm1 after the fault", g1, n+500)
}

// A queue the NIC does not have fails New with an error naming it, and
// the workers that did start are stopped: their queue is free again.
func TestNewWithBadQueueCleansUp(t *testing.T) {
	tb := newTestbed(t, 1) // its dataplane holds queue 0: close it first
	if err := tb.dp.Close(); err != nil {
		t.Fatal(err)
	}
	h := tb.Host.Handle()
	fdsBefore := openFDs(t)
	_, err := New(Config{Ifindex: tb.NIC.Index, Queues: []int{0, 3}, Filter: tb.filter, Netns: &h})
	if err == nil || !strings.Contains(err.Error(), "queue 3") {
		t.Fatalf("New with queue 3 on a 1-queue NIC: %v", err)
	}
	if after := openFDs(t); after != fdsBefore {
		t.Errorf("%d file descriptors open after the failed New, %d before", after, fdsBefore)
	}
	dp, err := New(Config{Ifindex: tb.NIC.Index, Queues: []int{0}, Filter: tb.filter, Netns: &h})
	if err != nil {
		t.Fatalf("queue 0 not released by the failed New: %v", err)
	}
	tb.dp = dp // closed by the testbed's cleanup
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
