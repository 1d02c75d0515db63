package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
	b := newPortConn(t, cfg)
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

// newPortConn is a portBed before the handshake: the front-end is
// connected, its memory and eventfds made, nothing sent.
func newPortConn(t *testing.T, cfg Config) *portBed {
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

// TestMemoryLimit: a memory table above MaxMemory is refused with an
// error naming the VM, the size and the limit; nothing is mapped and the
// front-end may try again within the limit.
func TestMemoryLimit(t *testing.T) {
	h := newRecHandler()
	var logs strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	p, err := Listen(filepath.Join(t.TempDir(), "vm.sock"), Config{Name: "web", MaxMemory: 2 * feMemSize, Handler: h, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	defer h.drain()
	gm := newGuestMem(t, feMemSize)
	defer gm.close()
	f := dialFE(t, p.Path())
	defer f.c.Close()
	f.send(ReqSetProtocolFeatures, 0, u64p(ProtocolFReplyAck))
	f.mustAck(ReqSetFeatures, u64p(virtio.FVersion1|virtio.FProtocolFeatures))
	// Two regions of 4 GiB each over a 1 MiB file: sparse claims are
	// refused by the limit before the file size is even looked at.
	tbl := make([]byte, MemTableLen(2))
	EncodeMemTable(tbl, []MemRegion{
		{GuestPhysAddr: 0, MemorySize: 4 << 30, UserspaceAddr: 0x7f0000000000},
		{GuestPhysAddr: 4 << 30, MemorySize: 4 << 30, UserspaceAddr: 0x7f0100000000},
	})
	if v := f.ack(ReqSetMemTable, tbl, gm.fd, gm.fd); v == 0 {
		t.Fatal("memory table of 8 GiB acked with a 2 MiB limit")
	}
	want := `VM "web": guest memory of 8589934592 bytes exceeds max_guest_memory 2097152`
	mu.Lock()
	got := logs.String()
	mu.Unlock()
	if !strings.Contains(got, strings.ReplaceAll(want, `"`, `\"`)) {
		t.Fatalf("log does not say %q:\n%s", want, got)
	}
	if st := p.State(); st.BrokenCount != 0 || !st.Connected {
		t.Fatalf("state after a refused table: %+v", st)
	}
	// Within the limit (two regions summing to exactly the limit).
	EncodeMemTable(tbl, []MemRegion{
		{GuestPhysAddr: testBase, MemorySize: feMemSize, UserspaceAddr: testBase},
		{GuestPhysAddr: testBase + feMemSize, MemorySize: feMemSize, UserspaceAddr: testBase + feMemSize},
	})
	gm2 := newGuestMem(t, feMemSize)
	defer gm2.close()
	f.mustAck(ReqSetMemTable, tbl, gm.fd, gm2.fd)
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestSocketOwnership: the listening socket gets the configured owner,
// group and mode (0600 by default), its missing directory is created
// 0750, and the socket is gone after Close.
func TestSocketOwnership(t *testing.T) {
	testenv.RequireRoot(t) // chown to another uid needs CAP_CHOWN
	dir := filepath.Join(t.TempDir(), "run", "vmq")
	path := filepath.Join(dir, "web.sock")
	p, err := Listen(path, Config{SocketOwner: 4242, SocketGroup: 4343, SocketMode: 0o660, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Mode&0o7777 != 0o660 || st.Uid != 4242 || st.Gid != 4343 {
		t.Fatalf("socket mode %o uid %d gid %d, want socket 0660 4242:4343", st.Mode, st.Uid, st.Gid)
	}
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o750 || st.Gid != 4343 {
		t.Fatalf("directory mode %o gid %d, want 0750 group 4343", st.Mode&0o7777, st.Gid)
	}
	f := dialFE(t, path) // root connects whatever the mode
	if v := f.getU64(ReqGetFeatures); v&virtio.FVersion1 == 0 {
		t.Fatalf("features %#x", v)
	}
	f.c.Close()
	p.Close()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}

	// Defaults: 0600, owner and group left as created (-1).
	p, err = Listen(path, Config{SocketOwner: -1, SocketGroup: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o600 || st.Uid != uint32(os.Geteuid()) {
		t.Fatalf("default socket mode %o uid %d, want 0600 and uid %d", st.Mode&0o7777, st.Uid, os.Geteuid())
	}
}

// TestPeerRejected: a front-end whose uid is not allowed is disconnected
// at once and counted, in both socket modes; an allowed one is served.
func TestPeerRejected(t *testing.T) {
	me := uint32(os.Geteuid())
	t.Run("server", func(t *testing.T) {
		p, err := Listen(filepath.Join(t.TempDir(), "vm.sock"), Config{AllowedUIDs: []uint32{me + 1}, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		for i := 0; i < 3; i++ {
			f := dialFE(t, p.Path())
			if !f.eof() {
				t.Fatal("rejected peer's connection not closed")
			}
			f.c.Close()
		}
		testenv.Eventually(t, "rejections counted", func() (bool, string) {
			st := p.State()
			return st.PeerRejected == 3 && st.Connects == 0, fmt.Sprintf("rejected %d connects %d", st.PeerRejected, st.Connects)
		})
		p2, err := Listen(filepath.Join(t.TempDir(), "vm.sock"), Config{AllowedUIDs: []uint32{me + 1, me}, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer p2.Close()
		f := dialFE(t, p2.Path())
		defer f.c.Close()
		if v := f.getU64(ReqGetFeatures); v&virtio.FVersion1 == 0 {
			t.Fatalf("allowed peer: features %#x", v)
		}
		if st := p2.State(); st.PeerRejected != 0 || st.Connects != 1 {
			t.Fatalf("allowed peer: %+v", st)
		}
	})
	t.Run("client", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "guest.sock")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		p, err := Dial(path, Config{AllowedUIDs: []uint32{}, Logger: testLogger(t),
			ReconnectMin: 10 * time.Millisecond, ReconnectMax: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		for i := 0; i < 2; i++ {
			ln.SetDeadline(time.Now().Add(5 * time.Second))
			c, err := ln.AcceptUnix()
			if err != nil {
				t.Fatal(err)
			}
			f := &fe{t: t, c: c}
			if !f.eof() {
				t.Fatal("the port kept a connection to a listener it does not allow")
			}
			c.Close()
		}
		testenv.Eventually(t, "rejections counted", func() (bool, string) {
			st := p.State()
			return st.PeerRejected >= 2 && st.Connects == 0, fmt.Sprintf("rejected %d connects %d", st.PeerRejected, st.Connects)
		})
	})
}

// TestVMNameInErrors: port errors name the VM.
func TestVMNameInErrors(t *testing.T) {
	_, err := Listen(filepath.Join(t.TempDir(), "vm.sock"), Config{Name: "web", QueuePairs: -1})
	if err == nil || !strings.HasPrefix(err.Error(), `VM "web": `) {
		t.Fatalf("error %v does not name the VM", err)
	}
}

// TestMessageTimeout: half a message, or a reply the front-end never
// reads, closes the connection after MessageTimeout (counted); the port
// then serves the next front-end. An idle connection has no deadline.
func TestMessageTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	newPort := func(t *testing.T) *Port {
		p, err := Listen(filepath.Join(t.TempDir(), "vm.sock"), Config{MessageTimeout: timeout, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	// closed waits for the port to drop f for a timeout, then checks that
	// a new front-end is served.
	closed := func(t *testing.T, p *Port, f *fe) {
		t.Helper()
		testenv.Eventually(t, "timeout counted", func() (bool, string) {
			st := p.State()
			return st.Timeouts == 1 && !st.Connected, fmt.Sprintf("timeouts %d connected %v", st.Timeouts, st.Connected)
		})
		f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [64]byte
		for {
			if _, err := f.c.Read(b[:]); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatal("connection still open after the timeout")
				}
				break // EOF or reset: closed
			}
		}
		f.c.Close()
		f2 := dialFE(t, p.Path())
		defer f2.c.Close()
		if v := f2.getU64(ReqGetFeatures); v&virtio.FVersion1 == 0 {
			t.Fatalf("next front-end: features %#x", v)
		}
	}

	t.Run("half_header", func(t *testing.T) {
		p := newPort(t)
		f := dialFE(t, p.Path())
		if _, err := f.c.Write(msg(ReqGetFeatures, 0, nil)[:6]); err != nil {
			t.Fatal(err)
		}
		closed(t, p, f)
	})
	t.Run("half_payload", func(t *testing.T) {
		p := newPort(t)
		f := dialFE(t, p.Path())
		m := msg(ReqSetVringAddr, 0, addrp(0, testBase, testBase+0x1000, testBase+0x2000))
		if _, err := f.c.Write(m[:HeaderLen+10]); err != nil {
			t.Fatal(err)
		}
		closed(t, p, f)
	})
	t.Run("reply_never_read", func(t *testing.T) {
		p := newPort(t)
		f := dialFE(t, p.Path())
		// Requests with replies, never reading them: the port's send
		// buffer fills, its reply write times out. The writer stops when
		// the port closes the connection.
		done := make(chan struct{})
		go func() {
			defer close(done)
			m := msg(ReqGetFeatures, 0, nil)
			for i := 0; i < 1<<20; i++ {
				if _, err := f.c.Write(m); err != nil {
					return
				}
			}
		}()
		testenv.Eventually(t, "timeout counted", func() (bool, string) {
			st := p.State()
			return st.Timeouts == 1, fmt.Sprintf("timeouts %d", st.Timeouts)
		})
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the front-end's writes still go through after the timeout")
		}
		f.c.Close()
		f2 := dialFE(t, p.Path())
		defer f2.c.Close()
		if v := f2.getU64(ReqGetFeatures); v&virtio.FVersion1 == 0 {
			t.Fatalf("next front-end: features %#x", v)
		}
	})
	t.Run("log_rate_limited", func(t *testing.T) {
		var logs strings.Builder
		var mu sync.Mutex
		log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
		p, err := Listen(filepath.Join(t.TempDir(), "vm.sock"), Config{MessageTimeout: timeout, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		for i := 1; i <= 3; i++ {
			f := dialFE(t, p.Path())
			if _, err := f.c.Write([]byte{1}); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, "timeout counted", func() (bool, string) {
				st := p.State()
				return st.Timeouts == uint64(i) && !st.Connected, fmt.Sprintf("timeouts %d, want %d", st.Timeouts, i)
			})
			f.c.Close()
		}
		mu.Lock()
		n := strings.Count(logs.String(), "too slow")
		mu.Unlock()
		if n != 1 {
			t.Fatalf("%d timeout log lines for 3 timeouts within 10s, want 1", n)
		}
	})
	t.Run("idle_is_fine", func(t *testing.T) {
		p := newPort(t)
		f := dialFE(t, p.Path())
		defer f.c.Close()
		f.getU64(ReqGetFeatures)
		time.Sleep(3 * timeout) // the interval under test, not synchronisation
		if v := f.getU64(ReqGetFeatures); v&virtio.FVersion1 == 0 {
			t.Fatalf("features %#x", v)
		}
		if st := p.State(); st.Timeouts != 0 || !st.Connected {
			t.Fatalf("idle connection: %+v", st)
		}
	})
}

// TestSemaphoreKickRefused: a semaphore eventfd as kick fd is refused (it
// could stay readable for 2^64 reads, so its worker would never sleep).
func TestSemaphoreKickRefused(t *testing.T) {
	p, err := Listen(filepath.Join(t.TempDir(), "vm.sock"), Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	sem, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK|unix.EFD_SEMAPHORE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sem)
	if !isSemaphore(sem) {
		testenv.Skip(t, "this kernel does not show eventfd-semaphore in fdinfo (an older kernel)")
	}
	f := dialFE(t, p.Path())
	defer f.c.Close()
	f.send(ReqSetProtocolFeatures, 0, u64p(ProtocolFReplyAck))
	if v := f.ack(ReqSetVringKick, u64p(1), sem); v == 0 {
		t.Fatal("semaphore eventfd acked as kick fd")
	}
	plain := eventfd(t)
	defer unix.Close(plain)
	if v := f.ack(ReqSetVringKick, u64p(1), plain); v != 0 {
		t.Fatalf("plain eventfd as kick fd: ack %d", v)
	}
}
