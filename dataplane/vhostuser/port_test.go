package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/testenv"
)

// recHandler hands ready queues to the test, which plays the worker
// synchronously (it never touches a queue after QueueStopped).
type recHandler struct {
	mu      sync.Mutex
	ready   chan *Queue
	stopped chan *Queue
	broken  chan string
}

func newRecHandler() *recHandler {
	// stopped is unbuffered: the test's receive is its "worker ack", so
	// what it did with the queue happens before the port goes on.
	return &recHandler{ready: make(chan *Queue, 64), stopped: make(chan *Queue), broken: make(chan string, 8)}
}

// drain acknowledges every further QueueStopped (deferred before Close,
// once the test no longer touches queues).
func (h *recHandler) drain() {
	go func() {
		for range h.stopped {
		}
	}()
}
func (h *recHandler) QueueReady(q *Queue)   { h.ready <- q }
func (h *recHandler) QueueStopped(q *Queue) { h.stopped <- q }
func (h *recHandler) DeviceBroken(p *Port, reason string) {
	select {
	case h.broken <- reason:
	default:
	}
}

func recv[T any](t *testing.T, ch chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(b, "\n")))
	return len(b), nil
}

// fe is a minimal test front-end speaking the wire protocol.
type fe struct {
	t *testing.T
	c *net.UnixConn
}

func dialFE(t *testing.T, path string) *fe {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	return &fe{t: t, c: c}
}

func (f *fe) send(req Request, flags uint32, pl []byte, fds ...int) {
	f.t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := f.c.WriteMsgUnix(msg(req, flags, pl), oob, nil); err != nil {
		f.t.Fatalf("send %v: %v", req, err)
	}
}

func (f *fe) recv(req Request) []byte {
	f.t.Helper()
	f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hb [HeaderLen]byte
	if _, err := io.ReadFull(f.c, hb[:]); err != nil {
		f.t.Fatalf("reply to %v: %v", req, err)
	}
	h := Header{Request: Request(binary.LittleEndian.Uint32(hb[0:])), Flags: binary.LittleEndian.Uint32(hb[4:]), Size: binary.LittleEndian.Uint32(hb[8:])}
	if h.Flags != FlagReply|FlagVersion || h.Request != req {
		f.t.Fatalf("reply header %+v to %v", h, req)
	}
	pl := make([]byte, h.Size)
	if _, err := io.ReadFull(f.c, pl); err != nil {
		f.t.Fatalf("reply payload to %v: %v", req, err)
	}
	return pl
}

func (f *fe) get(req Request, pl []byte) []byte { f.send(req, 0, pl); return f.recv(req) }

func (f *fe) getU64(req Request) uint64 {
	v, err := DecodeU64(f.get(req, nil))
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

// ack sends with NEED_REPLY and returns the ack value (0 = success).
func (f *fe) ack(req Request, pl []byte, fds ...int) uint64 {
	f.t.Helper()
	f.send(req, FlagNeedReply, pl, fds...)
	v, err := DecodeU64(f.recv(req))
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

func (f *fe) mustAck(req Request, pl []byte, fds ...int) {
	f.t.Helper()
	if v := f.ack(req, pl, fds...); v != 0 {
		f.t.Fatalf("%v: ack %d", req, v)
	}
}

// eof reports whether the back-end closed the connection.
func (f *fe) eof() bool {
	f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	_, err := f.c.Read(b[:])
	return errors.Is(err, io.EOF)
}

// openFDs lists the process's open fds with what they are. A leak check
// compares sets, not counts: another test's goroutine closing an fd of
// its own meanwhile is not this test's business.
func openFDs(t *testing.T) map[string]string {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fds := make(map[string]string, len(ents))
	for _, e := range ents {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fds[e.Name()] = target
	}
	return fds
}

// checkNoNewFDs fails for every fd open now that was not open (as the
// same file) at base.
func checkNoNewFDs(t *testing.T, base map[string]string) {
	t.Helper()
	for fd, target := range openFDs(t) {
		if was, ok := base[fd]; !ok || was != target {
			t.Errorf("fd leak: fd %s (%s) was not open before the sessions", fd, target)
		}
	}
}

func eventfd(t *testing.T) int {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// guestMem is a memfd the test front-end shares as its memory.
type guestMem struct {
	fd  int
	mem []byte
}

func newGuestMem(t *testing.T, size int) *guestMem {
	fd, err := unix.MemfdCreate("vmq-test-guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	return &guestMem{fd: fd, mem: m}
}

func (g *guestMem) close() { unix.Munmap(g.mem); unix.Close(g.fd) }

const feMemSize = 1 << 20

// handshake sets up one queue pair over gm: q0 rings at offset 0, q1 at
// 256K. It returns the driver views of both rings.
func (f *fe) handshake(gm *guestMem, features uint64, kick, call [2]int) [2]*testGuest {
	f.t.Helper()
	f.send(ReqSetOwner, 0, nil)
	pf := f.getU64(ReqGetProtocolFeatures)
	f.send(ReqSetProtocolFeatures, 0, u64p(pf&(ProtocolFReplyAck|ProtocolFMQ|ProtocolFStatus|ProtocolFConfig)))
	f.mustAck(ReqSetFeatures, u64p(features))
	tbl := make([]byte, MemTableLen(1))
	EncodeMemTable(tbl, []MemRegion{{GuestPhysAddr: testBase, MemorySize: feMemSize, UserspaceAddr: testBase, MmapOffset: 0}})
	f.mustAck(ReqSetMemTable, tbl, gm.fd)
	var gs [2]*testGuest
	for i := 0; i < 2; i++ {
		off := i * 256 << 10
		g := layoutGuest(f.t, gm.mem[off:off+256<<10], testBase+uint64(off), 256)
		gs[i] = g
		d, a, u := g.addrs()
		f.mustAck(ReqSetVringNum, statep(uint32(i), 256))
		f.mustAck(ReqSetVringBase, statep(uint32(i), 0))
		f.mustAck(ReqSetVringAddr, addrp(uint32(i), d, a, u))
		f.mustAck(ReqSetVringCall, u64p(uint64(i)), call[i])
		f.mustAck(ReqSetVringKick, u64p(uint64(i)), kick[i])
		f.mustAck(ReqSetVringEnable, statep(uint32(i), 1))
	}
	return gs
}

func TestPortServer(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vm.sock")
	h := newRecHandler()
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 0x0a}
	p, err := Listen(path, Config{MAC: mac, MTU: 1500, Handler: h, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	defer h.drain()
	baseFDs := openFDs(t)

	gm := newGuestMem(t, feMemSize)
	kick := [2]int{eventfd(t), eventfd(t)}
	call := [2]int{eventfd(t), eventfd(t)}
	f := dialFE(t, path)

	offered := f.getU64(ReqGetFeatures)
	wantOffered := uint64(DefaultFeatures&^virtio.NetFMQ | virtio.NetFMTU)
	if offered != wantOffered {
		t.Fatalf("offered features %#x, want %#x", offered, wantOffered)
	}
	features := uint64(virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.RingFIndirectDesc | virtio.FProtocolFeatures)
	gs := f.handshake(gm, features, kick, call)
	if n := f.getU64(ReqGetQueueNum); n != 1 {
		t.Fatalf("GET_QUEUE_NUM %d", n)
	}
	// GET_CONFIG: MAC, link up, MTU.
	creq := make([]byte, ConfigHeaderLen+NetConfigLen)
	ConfigRequest{Size: NetConfigLen}.Encode(creq)
	cr, space, err := DecodeConfig(f.get(ReqGetConfig, creq))
	if err != nil || cr.Size != NetConfigLen || !bytes.Equal(space[:6], mac) ||
		binary.LittleEndian.Uint16(space[NetConfigMTUOff:]) != 1500 || space[NetConfigStatusOff]&virtio.NetSLinkUp == 0 {
		t.Fatalf("config %+v %x %v", cr, space, err)
	}

	var qs [2]*Queue
	for i := 0; i < 2; i++ {
		q := recv(t, h.ready, "QueueReady")
		qs[q.Index()] = q
	}
	rxq, txq := qs[0], qs[1]
	if !rxq.IsRX() || txq.IsRX() || rxq.KickFD() < 0 {
		t.Fatalf("queues: rx %v tx %v kick %d", rxq.IsRX(), txq.IsRX(), rxq.KickFD())
	}
	st := p.State()
	if !st.Connected || st.Features != features || st.RingSizes[0] != 256 || !st.Running[1] {
		t.Fatalf("state %+v", st)
	}

	// Guest → back-end.
	f1 := frameOf(1514, 9)
	gs[1].sendFrame(f1, 700)
	dst := make([]byte, 2048)
	n, err := txq.Pop(dst)
	if err != nil || !bytes.Equal(dst[:n], f1) {
		t.Fatalf("pop: %d %v", n, err)
	}
	txq.Flush()
	// The port's notifier writes the call eventfd for the worker.
	testenv.Eventually(t, "call after flush", func() (bool, string) {
		var ev [8]byte
		_, err := unix.Read(call[1], ev[:])
		return err == nil, fmt.Sprint(err)
	})
	testenv.Eventually(t, "call counted", func() (bool, string) {
		st := p.State()
		return st.Calls == 1, fmt.Sprintf("calls %d, want 1", st.Calls)
	})
	// Back-end → guest.
	a := gs[0].postRX(2048)
	if err := rxq.Push(f1); err != nil {
		t.Fatal(err)
	}
	rxq.Flush()
	if !bytes.Equal(gm.mem[a-testBase+12:][:len(f1)], f1) || gs[0].usedIdx() != 1 {
		t.Fatal("pushed frame not in guest memory")
	}

	// Misbehaving requests: an error ack, the connection survives.
	if v := f.ack(ReqSetVringNum, statep(0, 3)); v == 0 {
		t.Fatal("ring size 3 acked")
	}
	if v := f.ack(Request(77), []byte{1, 2}); v == 0 {
		t.Fatal("unknown request acked")
	}
	if v := f.ack(ReqSetVringNum, statep(9, 256)); v == 0 {
		t.Fatal("vring index 9 acked")
	}
	junk := eventfd(t)
	if v := f.ack(ReqSetVringErr, u64p(1|VringNoFD), junk); v != 0 { // fd sent despite NOFD: closed by the port
		t.Fatalf("SET_VRING_ERR nofd: ack %d", v)
	}
	unix.Close(junk)
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	if v := f.ack(ReqSetVringCall, u64p(0), pipe[1]); v == 0 { // a pipe could block the worker
		t.Fatal("pipe as call fd acked")
	}
	unix.Close(pipe[0])
	unix.Close(pipe[1])
	if v := f.ack(ReqSetMemTable, make([]byte, MemTableLen(1))); v == 0 {
		t.Fatal("memory table without fds acked")
	}

	// GET_VRING_BASE stops the queue before it answers, and answers
	// only once the call the worker's last Flush asked for is written
	// (here a call whose wake-up the notifier never got): QEMU reads its
	// call eventfd for the last time right after.
	var ev [8]byte
	readNoWait(call[1], &ev)
	txq.callPending.Store(true)
	f.send(ReqGetVringBase, 0, statep(1, 0))
	if q := recv(t, h.stopped, "QueueStopped"); q != txq {
		t.Fatalf("stopped queue %d", q.Index())
	}
	s, err := DecodeVringState(f.recv(ReqGetVringBase))
	if err != nil || s.Num != 1 {
		t.Fatalf("GET_VRING_BASE: %+v %v", s, err)
	}
	if n, e := readNoWait(call[1], &ev); n != 8 || e != 0 {
		t.Fatalf("no call written before the GET_VRING_BASE reply: %d %v", n, e)
	}

	// Disconnect: the running RX queue is taken back, memory unmapped.
	f.c.Close()
	if q := recv(t, h.stopped, "QueueStopped on disconnect"); q != rxq {
		t.Fatalf("stopped queue %d", q.Index())
	}
	waitFor(t, func() bool { return !p.State().Connected }, "disconnect")

	// A bad header closes the connection; the next front-end is served.
	f2 := dialFE(t, path)
	f2.send(ReqGetFeatures, 0x2, nil) // version 2
	if !f2.eof() {
		t.Fatal("connection with a bad version not closed")
	}
	f2.c.Close()
	f3 := dialFE(t, path)
	if v := f3.getU64(ReqGetFeatures); v != wantOffered {
		t.Fatalf("second front-end: features %#x", v)
	}
	f3.c.Close()
	waitFor(t, func() bool { return !p.State().Connected }, "disconnect")

	for _, fd := range append(kick[:], call[:]...) {
		unix.Close(fd)
	}
	gm.close()
	checkNoNewFDs(t, baseFDs)
}

func waitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	// Generous: the machine is shared; only a failing test waits this long.
	for i := 0; i < 2000; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestPortBrokenGuest: a hostile ring marks the device broken (handler
// told, NEEDS_RESET in the status) and a reset clears it.
func TestPortBrokenGuest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.sock")
	h := newRecHandler()
	p, err := Listen(path, Config{Handler: h, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	defer h.drain()
	gm := newGuestMem(t, feMemSize)
	defer gm.close()
	kick := [2]int{eventfd(t), eventfd(t)}
	call := [2]int{eventfd(t), eventfd(t)}
	f := dialFE(t, path)
	defer f.c.Close()
	gs := f.handshake(gm, virtio.FVersion1|virtio.FProtocolFeatures, kick, call)
	var txq *Queue
	for i := 0; i < 2; i++ {
		if q := recv(t, h.ready, "QueueReady"); !q.IsRX() {
			txq = q
		}
	}
	gs[1].post(tdesc{addr: 0x10, len: 100}) // outside guest memory
	if _, err := txq.Pop(make([]byte, 2048)); !errors.Is(err, ErrBroken) {
		t.Fatalf("pop: %v", err)
	}
	reason := recv(t, h.broken, "DeviceBroken")
	if st := p.State(); st.Broken != reason || st.Status&statusNeedsReset == 0 {
		t.Fatalf("state %+v", st)
	}
	if s := f.getU64(ReqGetStatus); s&statusNeedsReset == 0 {
		t.Fatalf("GET_STATUS %#x without NEEDS_RESET", s)
	}
	f.send(ReqResetOwner, 0, nil)
	recv(t, h.stopped, "QueueStopped")
	recv(t, h.stopped, "QueueStopped")
	waitFor(t, func() bool { return p.State().Broken == "" }, "broken cleared")
	for _, fd := range append(kick[:], call[:]...) {
		unix.Close(fd)
	}
}

// TestPortClient: client mode reconnects after the front-end goes away.
func TestPortClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "guest.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p, err := Dial(path, Config{Logger: testLogger(t), ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := 0; i < 3; i++ {
		ln.SetDeadline(time.Now().Add(5 * time.Second))
		c, err := ln.AcceptUnix()
		if err != nil {
			t.Fatalf("accept %d: %v", i, err)
		}
		f := &fe{t: t, c: c}
		if v := f.getU64(ReqGetFeatures); v&virtio.FVersion1 == 0 {
			t.Fatalf("features %#x", v)
		}
		c.Close()
	}
	// The listener goes away and comes back: the port keeps retrying.
	ln.Close()
	os.Remove(path)
	time.Sleep(100 * time.Millisecond)
	ln2, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	ln2.SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln2.AcceptUnix()
	if err != nil {
		t.Fatalf("accept after restart: %v", err)
	}
	c.Close()
	waitFor(t, func() bool { return p.State().Connects >= 4 }, "4 connections")
}

// TestFaultRecovered: the front-end shrinks its memory file after the
// back-end mapped it; the worker's access faults (SIGBUS), and with
// SetPanicOnFault plus RecoverFault the device is broken, not the daemon.
func TestFaultRecovered(t *testing.T) {
	gm := newGuestMem(t, feMemSize)
	defer gm.close()
	mt, err := mapRegions([]MemRegion{{GuestPhysAddr: testBase, MemorySize: feMemSize, UserspaceAddr: testBase}}, []int{gm.fd})
	if err != nil {
		t.Fatal(err)
	}
	defer mt.unmap()
	g := layoutGuest(t, gm.mem, testBase, 256)
	q := &Queue{index: 1, kickFD: -1, callFD: -1}
	d, a, u := g.addrs()
	if err := q.ringLayout(mt, testFeatures, 256, d, a, u); err != nil {
		t.Fatal(err)
	}
	q.start(0)
	// A frame whose data lies in the last page, which then goes away.
	hdr := g.alloc(virtio.NetHdrLen)
	data := uint64(testBase + feMemSize - 4096)
	g.post(tdesc{addr: hdr, len: virtio.NetHdrLen}, tdesc{addr: data, len: 100})
	if err := unix.Ftruncate(gm.fd, feMemSize-8192); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		var perr error = errors.New("no fault")
		func() {
			defer q.RecoverFault()
			_, perr = q.Pop(make([]byte, 2048))
		}()
		done <- perr
	}()
	<-done
	if !q.isBroken() {
		t.Fatal("queue not broken after a fault in guest memory")
	}
	if _, err := q.Pop(make([]byte, 2048)); !errors.Is(err, ErrBroken) {
		t.Fatalf("pop after fault: %v", err)
	}
}

// TestMemTableReplaced: a second SET_MEM_TABLE (DPDK sends one when its
// memory grows) takes running queues back before unmapping, then hands
// them out again over the new mapping.
func TestMemTableReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.sock")
	h := newRecHandler()
	p, err := Listen(path, Config{Handler: h, Logger: testLogger(t)})
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
	f := dialFE(t, path)
	defer f.c.Close()
	gs := f.handshake(gm, virtio.FVersion1|virtio.FProtocolFeatures, kick, call)
	var txq *Queue
	for i := 0; i < 2; i++ {
		if q := recv(t, h.ready, "QueueReady"); !q.IsRX() {
			txq = q
		}
	}
	gs[1].sendFrame(frameOf(64, 1), 64)
	if _, err := txq.Pop(make([]byte, 2048)); err != nil {
		t.Fatal(err)
	}
	txq.Flush()
	// The same memory, announced again through a new fd.
	fd2, err := unix.Dup(gm.fd)
	if err != nil {
		t.Fatal(err)
	}
	tbl := make([]byte, MemTableLen(1))
	EncodeMemTable(tbl, []MemRegion{{GuestPhysAddr: testBase, MemorySize: feMemSize, UserspaceAddr: testBase}})
	f.send(ReqSetMemTable, FlagNeedReply, tbl, fd2)
	unix.Close(fd2)
	recv(t, h.stopped, "QueueStopped")
	recv(t, h.stopped, "QueueStopped")
	if v, _ := DecodeU64(f.recv(ReqSetMemTable)); v != 0 {
		t.Fatalf("SET_MEM_TABLE ack %d", v)
	}
	for i := 0; i < 2; i++ {
		if q := recv(t, h.ready, "QueueReady again"); !q.IsRX() {
			txq = q
		}
	}
	f2 := frameOf(300, 2)
	gs[1].sendFrame(f2, 300)
	dst := make([]byte, 2048)
	n, err := txq.Pop(dst)
	if err != nil || !bytes.Equal(dst[:n], f2) {
		t.Fatalf("pop over the new mapping: %d %v", n, err)
	}
}

// TestRingEnableRules: with VHOST_USER_F_PROTOCOL_FEATURES negotiated a
// ring waits for SET_VRING_ENABLE; without it, the kick starts it. A
// memory table with overlapping regions breaks the device.
func TestRingEnableRules(t *testing.T) {
	for _, proto := range []bool{true, false} {
		t.Run(fmt.Sprintf("protocol_features=%v", proto), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "vm.sock")
			h := newRecHandler()
			p, err := Listen(path, Config{Handler: h, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			defer h.drain()
			gm := newGuestMem(t, feMemSize)
			defer gm.close()
			kick := eventfd(t)
			defer unix.Close(kick)
			f := dialFE(t, path)
			defer f.c.Close()
			feat := uint64(virtio.FVersion1)
			if proto {
				feat |= virtio.FProtocolFeatures
				f.send(ReqSetProtocolFeatures, 0, u64p(ProtocolFReplyAck))
			}
			f.send(ReqSetFeatures, 0, u64p(feat))
			tbl := make([]byte, MemTableLen(1))
			EncodeMemTable(tbl, []MemRegion{{GuestPhysAddr: testBase, MemorySize: feMemSize, UserspaceAddr: testBase}})
			f.send(ReqSetMemTable, 0, tbl, gm.fd)
			g := layoutGuest(t, gm.mem, testBase, 256)
			d, a, u := g.addrs()
			f.send(ReqSetVringNum, 0, statep(1, 256))
			f.send(ReqSetVringAddr, 0, addrp(1, d, a, u))
			f.send(ReqSetVringKick, 0, u64p(1), kick)
			f.getU64(ReqGetFeatures) // a round trip: everything before it is handled
			select {
			case q := <-h.ready:
				if proto {
					t.Fatalf("queue %d ready before SET_VRING_ENABLE", q.Index())
				}
			case <-time.After(100 * time.Millisecond):
				if !proto {
					t.Fatal("queue not started by its kick without protocol features")
				}
				f.send(ReqSetVringEnable, 0, statep(1, 1))
				recv(t, h.ready, "QueueReady after enable")
			}
			if proto {
				// Overlapping regions: refused, device broken.
				bad := make([]byte, MemTableLen(2))
				EncodeMemTable(bad, []MemRegion{{GuestPhysAddr: testBase, MemorySize: feMemSize, UserspaceAddr: testBase},
					{GuestPhysAddr: testBase + 4096, MemorySize: 4096, UserspaceAddr: 0x10000000}})
				if v := f.ack(ReqSetMemTable, bad, gm.fd, gm.fd); v == 0 {
					t.Fatal("overlapping memory table acked")
				}
				if st := p.State(); st.BrokenCount != 1 || !strings.Contains(st.Broken, "overlaps") {
					t.Fatalf("state after overlapping regions: %+v", st)
				}
			}
		})
	}
}

// TestRingStartsPaced: ring starts beyond Config.RingStarts' burst wait
// (counted as paced), and closing the port ends such a wait at once.
func TestRingStartsPaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.sock")
	h := newRecHandler()
	// 3 starts at once, then one every 1000 s: the fourth start waits.
	p, err := Listen(path, Config{Handler: h, Logger: testLogger(t), RingStarts: Pace{PerSecond: 0.001, Burst: 3}})
	if err != nil {
		t.Fatal(err)
	}
	gm := newGuestMem(t, feMemSize)
	defer gm.close()
	kick, call := [2]int{eventfd(t), eventfd(t)}, [2]int{eventfd(t), eventfd(t)}
	f := dialFE(t, path)
	defer f.c.Close()
	f.handshake(gm, virtio.FVersion1|virtio.FProtocolFeatures, kick, call)
	recv(t, h.ready, "ring 0 started")
	recv(t, h.ready, "ring 1 started")
	// QueueStopped waits for the test's receive (the worker's ack).
	f.send(ReqSetVringEnable, 0, statep(0, 0))
	recv(t, h.stopped, "ring 0 stopped")
	f.mustAck(ReqSetVringEnable, statep(0, 1)) // the third token
	recv(t, h.ready, "ring 0 started again")
	f.send(ReqSetVringEnable, 0, statep(0, 0))
	recv(t, h.stopped, "ring 0 stopped again")
	f.send(ReqSetVringEnable, FlagNeedReply, statep(0, 1)) // waits for a token
	waitFor(t, func() bool { return p.State().RingStartsPaced == 1 }, "the fourth start paced")
	select {
	case q := <-h.ready:
		t.Fatalf("queue %d started beyond the limit", q.Index())
	default:
	}
	if st := p.State(); st.RingStarts != 3 {
		t.Errorf("RingStarts %d, want 3", st.RingStarts)
	}
	h.drain() // Close stops ring 1
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for the paced ring start")
	}
}

// TestBrokenIsolated: a front-end whose ring lies outside its memory
// table breaks its own port only; a second port keeps forwarding.
func TestBrokenIsolated(t *testing.T) {
	dir := t.TempDir()
	ha, hb := newRecHandler(), newRecHandler()
	pa, err := Listen(filepath.Join(dir, "a.sock"), Config{Handler: ha, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer pa.Close()
	defer ha.drain()
	pb, err := Listen(filepath.Join(dir, "b.sock"), Config{Handler: hb, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer pb.Close()
	defer hb.drain()
	gm := newGuestMem(t, feMemSize)
	defer gm.close()
	kick := eventfd(t)
	defer unix.Close(kick)

	fa := dialFE(t, pa.Path())
	defer fa.c.Close()
	fa.send(ReqSetFeatures, 0, u64p(virtio.FVersion1))
	tbl := make([]byte, MemTableLen(1))
	EncodeMemTable(tbl, []MemRegion{{GuestPhysAddr: testBase, MemorySize: feMemSize, UserspaceAddr: testBase}})
	fa.send(ReqSetMemTable, 0, tbl, gm.fd)
	fa.send(ReqSetVringNum, 0, statep(1, 256))
	fa.send(ReqSetVringAddr, 0, addrp(1, testBase, testBase+feMemSize-64, testBase+8192)) // avail ring past the end
	fa.send(ReqSetVringKick, 0, u64p(1), kick)
	reason := recv(t, ha.broken, "DeviceBroken")
	if !strings.Contains(reason, "available ring") {
		t.Fatalf("reason %q", reason)
	}
	select {
	case q := <-ha.ready:
		t.Fatalf("queue %d of a broken device handed out", q.Index())
	case <-time.After(50 * time.Millisecond):
	}

	gm2 := newGuestMem(t, feMemSize)
	defer gm2.close()
	kicks := [2]int{eventfd(t), eventfd(t)}
	calls := [2]int{eventfd(t), eventfd(t)}
	defer func() {
		for _, fd := range append(kicks[:], calls[:]...) {
			unix.Close(fd)
		}
	}()
	fb := dialFE(t, pb.Path())
	defer fb.c.Close()
	gs := fb.handshake(gm2, virtio.FVersion1|virtio.FProtocolFeatures, kicks, calls)
	var txq *Queue
	for i := 0; i < 2; i++ {
		if q := recv(t, hb.ready, "QueueReady on the healthy port"); !q.IsRX() {
			txq = q
		}
	}
	f := frameOf(100, 4)
	gs[1].sendFrame(f, 100)
	dst := make([]byte, 2048)
	if n, err := txq.Pop(dst); err != nil || !bytes.Equal(dst[:n], f) {
		t.Fatalf("healthy port pop: %d %v", n, err)
	}
	if a, b := pa.State(), pb.State(); a.BrokenCount != 1 || b.BrokenCount != 0 || b.Broken != "" {
		t.Fatalf("broken counts: a %d (%q), b %d (%q)", a.BrokenCount, a.Broken, b.BrokenCount, b.Broken)
	}
}

// TestListenPath: a stale socket is replaced, a live one or a regular
// file is refused (never deleted).
func TestListenPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file, Config{Logger: testLogger(t)}); err == nil {
		t.Fatal("listened over a regular file")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Fatalf("regular file damaged: %q %v", b, err)
	}
	sock := filepath.Join(dir, "vm.sock")
	p1, err := Listen(sock, Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(sock, Config{Logger: testLogger(t)}); err == nil {
		t.Fatal("second Listen on a live socket succeeded")
	}
	p1.Close()
	// A stale socket file (its listener gone without unlinking).
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	p2, err := Listen(sock, Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	p2.Close()
}

// TestCallAfterLateSetVringCall plays QEMU's start of a migration's
// destination: its rings were enabled while the state loaded
// (SET_VRING_ENABLE before anything else), so a ring runs from
// SET_VRING_KICK on, while its call fd is still the one QEMU set at
// connect time (its "masked notifier", which it clears and never reads);
// SET_VRING_CALL with the real fd follows. A call the worker asked for in
// between went to the old fd. With EVENT_IDX the guest is not called for
// later entries either (they are past its used_event), so it never learns
// of any: the new fd must get a call.
func TestCallAfterLateSetVringCall(t *testing.T) {
	b := newPortConn(t, Config{})
	f, h, gm := b.f, b.h, b.gm
	masked, call, kick := b.call[0], b.call[1], b.kick[0]
	f.send(ReqSetOwner, 0, nil)
	pf := f.getU64(ReqGetProtocolFeatures)
	f.send(ReqSetProtocolFeatures, 0, u64p(pf&(ProtocolFReplyAck|ProtocolFMQ)))
	f.mustAck(ReqSetVringCall, u64p(0), masked) // vhost_dev_init
	f.mustAck(ReqSetVringEnable, statep(0, 1))  // virtio_net_post_load_device
	f.mustAck(ReqSetFeatures, u64p(virtio.FVersion1|virtio.NetFMrgRxbuf|virtio.RingFEventIdx|virtio.FProtocolFeatures))
	tbl := make([]byte, MemTableLen(1))
	EncodeMemTable(tbl, []MemRegion{{GuestPhysAddr: testBase, MemorySize: feMemSize, UserspaceAddr: testBase}})
	f.mustAck(ReqSetMemTable, tbl, gm.fd)
	g := layoutGuest(t, gm.mem[:256<<10], testBase, 256)
	d, a, u := g.addrs()
	f.mustAck(ReqSetVringNum, statep(0, 256))
	f.mustAck(ReqSetVringBase, statep(0, 0))
	f.mustAck(ReqSetVringAddr, addrp(0, d, a, u))
	f.mustAck(ReqSetVringKick, u64p(0), kick)
	q := recv(t, h.ready, "QueueReady at SET_VRING_KICK")

	// The worker delivers a frame before SET_VRING_CALL arrives.
	g.postRX(2048)
	if err := q.Push(frameOf(60, 1)); err != nil {
		t.Fatal(err)
	}
	q.Flush()
	var ev [8]byte
	testenv.Eventually(t, "the call on the connect-time fd", func() (bool, string) {
		n, e := readNoWait(masked, &ev)
		return n == 8, fmt.Sprint(e)
	})

	f.send(ReqSetVringCall, FlagNeedReply, u64p(0), call)
	recv(t, h.stopped, "QueueStopped at SET_VRING_CALL")
	if v, err := DecodeU64(f.recv(ReqSetVringCall)); err != nil || v != 0 {
		t.Fatalf("SET_VRING_CALL: ack %d %v", v, err)
	}
	recv(t, h.ready, "QueueReady after SET_VRING_CALL")
	testenv.Eventually(t, "a call on the new fd for the entry already used", func() (bool, string) {
		n, e := readNoWait(call, &ev)
		return n == 8, fmt.Sprintf("used.idx %d, no call: %v", g.usedIdx(), e)
	})
}
