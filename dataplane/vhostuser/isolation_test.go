package vhostuser

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/testenv"
)

// Hostile front-ends against the isolation rules of a port: nothing a
// guest does to the fds it shares with us, to its memory file or to the
// control channel may hold a worker or the daemon.

// portBed is a server port with one connected test front-end and its
// queue pair running.
type portBed struct {
	p          *Port
	h          *recHandler
	f          *fe
	gm         *guestMem
	gs         [2]*testGuest
	rxq, txq   *Queue
	kick, call [2]int
}

func newPortBed(t *testing.T, cfg Config) *portBed {
	t.Helper()
	b := &portBed{h: newRecHandler()}
	cfg.Handler, cfg.Logger = b.h, testLogger(t)
	p, err := Listen(filepath.Join(t.TempDir(), "vm.sock"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.p = p
	t.Cleanup(func() { p.Close() })
	t.Cleanup(b.h.drain) // runs before Close: acks the final QueueStopped
	b.gm = newGuestMem(t, feMemSize)
	t.Cleanup(b.gm.close)
	b.kick = [2]int{eventfd(t), eventfd(t)}
	b.call = [2]int{eventfd(t), eventfd(t)}
	t.Cleanup(func() {
		for _, fd := range append(b.kick[:], b.call[:]...) {
			unix.Close(fd)
		}
	})
	b.f = dialFE(t, p.Path())
	t.Cleanup(func() { b.f.c.Close() })
	b.gs = b.f.handshake(b.gm, virtio.FVersion1|virtio.FProtocolFeatures, b.kick, b.call)
	for i := 0; i < 2; i++ {
		if q := recv(t, b.h.ready, "QueueReady"); q.IsRX() {
			b.rxq = q
		} else {
			b.txq = q
		}
	}
	return b
}

// within runs f and fails the test if it does not return in 5 s (it
// would block the worker that calls it).
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s blocked", what)
	}
}

// TestKickNonblockCleared: the guest clears O_NONBLOCK on its kick
// eventfd (the file description is shared); AckKick must still return at
// once with nothing to read, and count a real kick.
func TestKickNonblockCleared(t *testing.T) {
	b := newPortBed(t, Config{})
	if err := unix.SetNonblock(b.kick[1], false); err != nil {
		t.Fatal(err)
	}
	fl, err := unix.FcntlInt(uintptr(b.txq.KickFD()), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Fatalf("the port's kick fd flags %#x (%v): O_NONBLOCK not cleared through the shared description", fl, err)
	}
	within(t, "AckKick on an empty blocking kick fd", b.txq.AckKick)
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	if _, err := unix.Write(b.kick[1], one[:]); err != nil {
		t.Fatal(err)
	}
	within(t, "AckKick", b.txq.AckKick)
	within(t, "AckKick after the kick was read", b.txq.AckKick)
	if _, err := b.txq.EnableNotify(); err != nil { // publishes the counters
		t.Fatal(err)
	}
	if k := b.txq.Stats().Kicks; k != 1 {
		t.Fatalf("kicks %d, want 1", k)
	}
	if a := testing.AllocsPerRun(100, b.txq.AckKick); a != 0 {
		t.Fatalf("AckKick: %v allocs", a)
	}
}

// TestCallSaturated: the guest clears O_NONBLOCK on its call eventfd and
// sets the counter to its maximum, so a write of 1 blocks. Flush must
// return at once (the notifier blocks, not the worker), further calls
// coalesce, and a reset or a disconnect stops the notifier: no goroutine
// (and no thread in write(2)) outlives the device.
func TestCallSaturated(t *testing.T) {
	for _, how := range []string{"reset_owner", "disconnect"} {
		t.Run(how, func(t *testing.T) {
			base := notifiersRunning.Load()
			b := newPortBed(t, Config{})
			if n := notifiersRunning.Load(); n != base+1 {
				t.Fatalf("%d notifiers running, want %d", n, base+1)
			}
			var max [8]byte
			binary.NativeEndian.PutUint64(max[:], 0xfffffffffffffffe)
			if _, err := unix.Write(b.call[1], max[:]); err != nil {
				t.Fatal(err)
			}
			if err := unix.SetNonblock(b.call[1], false); err != nil {
				t.Fatal(err)
			}
			dst := make([]byte, 2048)
			for i := 0; i < 3; i++ {
				b.gs[1].sendFrame(frameOf(64, byte(i)), 64)
				if _, err := b.txq.Pop(dst); err != nil {
					t.Fatal(err)
				}
				within(t, "Flush with a saturated call eventfd", b.txq.Flush)
				if i == 0 {
					testenv.Eventually(t, "notifier blocked in write", func() (bool, string) {
						fd := b.p.nt.writing.Load()
						return fd >= 0, fmt.Sprintf("writing fd %d", fd)
					})
				}
			}
			// The first call is the blocked write, the second waits
			// pending, the third joins it.
			st := b.txq.Stats()
			if st.Calls != 0 || st.CallsCoalesced != 1 {
				t.Fatalf("calls %d, coalesced %d while blocked: want 0 and 1", st.Calls, st.CallsCoalesced)
			}
			switch how {
			case "reset_owner":
				b.f.send(ReqResetOwner, 0, nil)
			case "disconnect":
				b.f.c.Close()
			}
			recv(t, b.h.stopped, "QueueStopped")
			recv(t, b.h.stopped, "QueueStopped")
			testenv.Eventually(t, "notifier stopped", func() (bool, string) {
				n := notifiersRunning.Load()
				return n == base, fmt.Sprintf("%d notifiers running, want %d", n, base)
			})
			// The drain let the blocked write through: it was a real call.
			if c := b.txq.Stats().Calls; c != 1 {
				t.Fatalf("calls %d after the drain, want 1", c)
			}
			if how == "reset_owner" {
				// The port still serves this front-end.
				if v := b.f.getU64(ReqGetFeatures); v&virtio.FVersion1 == 0 {
					t.Fatalf("features %#x after reset", v)
				}
			}
		})
	}
}

// TestTruncatedBeforeStart: the front-end shrinks its memory file after
// SET_MEM_TABLE and before the rings start. Starting a ring reads used.idx
// on the port's control goroutine: SIGBUS there must break the device,
// not crash the daemon, and a reset brings it back.
func TestTruncatedBeforeStart(t *testing.T) {
	h := newRecHandler()
	p, err := Listen(filepath.Join(t.TempDir(), "vm.sock"), Config{Handler: h, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	defer h.drain()
	gm := newGuestMem(t, feMemSize)
	defer gm.close()
	kick := [2]int{eventfd(t), eventfd(t)}
	call := [2]int{eventfd(t), eventfd(t)}
	defer func() {
		for _, fd := range append(kick[:], call[:]...) {
			unix.Close(fd)
		}
	}()
	f := dialFE(t, p.Path())
	defer f.c.Close()
	f.send(ReqSetProtocolFeatures, 0, u64p(ProtocolFReplyAck))
	f.mustAck(ReqSetFeatures, u64p(virtio.FVersion1|virtio.FProtocolFeatures))
	tbl := make([]byte, MemTableLen(1))
	EncodeMemTable(tbl, []MemRegion{{GuestPhysAddr: testBase, MemorySize: feMemSize, UserspaceAddr: testBase}})
	f.mustAck(ReqSetMemTable, tbl, gm.fd)
	if err := unix.Ftruncate(gm.fd, 0); err != nil {
		t.Fatal(err)
	}
	g := layoutGuest(t, gm.mem, testBase, 256) // addresses only: the memory is gone
	d, a, u := g.addrs()
	f.mustAck(ReqSetVringNum, statep(1, 256))
	f.mustAck(ReqSetVringAddr, addrp(1, d, a, u))
	f.mustAck(ReqSetVringCall, u64p(1), call[1])
	f.mustAck(ReqSetVringKick, u64p(1), kick[1])
	f.mustAck(ReqSetVringEnable, statep(1, 1)) // the ring starts here
	reason := recv(t, h.broken, "DeviceBroken")
	if !strings.Contains(reason, "memory fault") || !strings.Contains(reason, "used ring") {
		t.Fatalf("broken because %q, want a memory fault on the used ring", reason)
	}
	if st := p.State(); st.Running[1] || st.BrokenCount != 1 {
		t.Fatalf("state after the fault: running %v, broken count %d", st.Running, st.BrokenCount)
	}
	if s := f.getU64(ReqGetStatus); s&statusNeedsReset == 0 {
		t.Fatalf("GET_STATUS %#x without NEEDS_RESET", s)
	}

	// A reset and memory that is there again: the device works.
	f.send(ReqResetOwner, 0, nil)
	if err := unix.Ftruncate(gm.fd, feMemSize); err != nil {
		t.Fatal(err)
	}
	gs := f.handshake(gm, virtio.FVersion1|virtio.FProtocolFeatures, kick, call)
	var txq *Queue
	for i := 0; i < 2; i++ {
		if q := recv(t, h.ready, "QueueReady after reset"); !q.IsRX() {
			txq = q
		}
	}
	fr := frameOf(100, 3)
	gs[1].sendFrame(fr, 100)
	dst := make([]byte, 2048)
	if n, err := txq.Pop(dst); err != nil || !bytes.Equal(dst[:n], fr) {
		t.Fatalf("pop after reset: %d %v", n, err)
	}
}
