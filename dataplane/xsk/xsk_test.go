package xsk

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"
)

// drainSockets receives from every socket until want frames in total have
// arrived or timeout passes; frames go straight back to the fill ring. It
// calls got(socket index, frame) for each.
func drainSockets(t *testing.T, q *Queue, socks []*Socket, want int, timeout time.Duration, got func(i int, frame []byte)) int {
	t.Helper()
	descs := make([]Desc, 64)
	total := 0
	deadline := time.Now().Add(timeout)
	for total < want && time.Now().Before(deadline) {
		q.Refill(0)
		n := 0
		for i, s := range socks {
			k := s.Receive(descs)
			for _, d := range descs[:k] {
				f := q.Frame(d)
				if f == nil {
					t.Fatalf("received descriptor %+v outside the queue's frames", d)
				}
				got(i, f)
			}
			if used := q.FillDescs(descs[:k]); used != k {
				q.FreeDescs(descs[used:k])
			}
			n += k
		}
		total += n
		if n == 0 {
			if _, err := q.Poll(5 * time.Millisecond); err != nil {
				t.Fatal(err)
			}
		}
	}
	return total
}

func TestSteeringTwoVMs(t *testing.T)   { testSteering(t, 2) }
func TestSteeringEightVMs(t *testing.T) { testSteering(t, 8) }

// testSteering puts vms VM sockets (plus the primary) on queue 0 and sends
// frames to each VM's MAC and to unknown MACs: each VM socket gets exactly
// its frames, unknown ones reach the host stack.
func testSteering(t *testing.T, vms int) {
	tb := newTestbed(t, 1)
	st := newSteering(t, tb, vms+1)
	u := newUMEM(t, UMEMConfig{NumFrames: 4096})
	q := openQueue(t, tb, u, 0, QueueConfig{Frames: 4096, FillSize: 2048, RxSize: 2048, TxSize: 256})
	if q.ZeroCopy() {
		t.Errorf("veth queue reports zero-copy; veth supports copy mode only")
	}
	socks := make([]*Socket, vms)
	for i := range socks {
		socks[i] = newSocket(t, tb, q, SocketConfig{RxSize: 2048, TxSize: -1})
		st.setMAC(t, vmMAC(i), uint32(i+1))
		st.register(t, i+1, 0, socks[i])
	}
	wire := openPacketSock(t, tb.wireNS, tb.wire.Index)
	hostStack := openPacketSock(t, tb.hostNS, tb.host.Index)

	const perVM, unknown, burst = 500, 200, 64
	counts := make([]int, vms)
	seen := make([]map[uint64]bool, vms)
	for i := range seen {
		seen[i] = map[uint64]bool{}
	}
	misdelivered := 0
	buf := make([]byte, 2048)
	seq := make([]uint64, vms+1)
	sent := 0
	// A fixed shuffle of perVM frames per VM and the unknown ones.
	var schedule []int
	for v := 0; v <= vms; v++ {
		n := perVM
		if v == vms {
			n = unknown
		}
		for range n {
			schedule = append(schedule, v)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(schedule), func(i, j int) { schedule[i], schedule[j] = schedule[j], schedule[i] })
	for sent < len(schedule) {
		// Bounded burst, then wait until the receiver caught up.
		toVMs := 0
		for inBurst := 0; inBurst < burst && sent < len(schedule); inBurst++ {
			vm := schedule[sent]
			dst := net.HardwareAddr{0x02, 0xee, 0, 0, 0, 1}
			if vm < vms {
				dst = vmMAC(vm)
				toVMs++
			}
			f := buildFrame(buf, dst, tb.wire.MAC, 1000, 2000, payload{Stream: uint32(vm), Seq: seq[vm]}, 64+vm)
			seq[vm]++
			if err := wire.send(f); err != nil {
				t.Fatalf("send: %v", err)
			}
			sent++
		}
		got := drainSockets(t, q, socks, toVMs, 10*time.Second, func(i int, f []byte) {
			p, ok := parseFrame(f)
			if !ok || int(p.Stream) != i || !bytes.Equal(f[:6], vmMAC(i)) {
				misdelivered++
				return
			}
			if seen[i][p.Seq] {
				t.Errorf("VM %d got seq %d twice", i, p.Seq)
			}
			seen[i][p.Seq] = true
			counts[i]++
		})
		if got != toVMs {
			t.Fatalf("burst of %d frames for VMs: received %d", toVMs, got)
		}
	}
	// Unknown MACs: the host stack (AF_PACKET on the host veth) sees them.
	stackGot := 0
	for {
		f, err := hostStack.recv(500 * time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if f == nil {
			break
		}
		if p, ok := parseFrame(f); ok {
			if int(p.Stream) != vms {
				t.Errorf("host stack saw a frame for VM %d", p.Stream)
			}
			stackGot++
		}
	}
	for i, c := range counts {
		if c != perVM {
			t.Errorf("VM %d: received %d frames, want %d", i, c, perVM)
		}
	}
	if misdelivered != 0 {
		t.Errorf("%d frames misdelivered", misdelivered)
	}
	if stackGot != unknown {
		t.Errorf("host stack got %d frames for unknown MACs, want %d", stackGot, unknown)
	}
	if n := q.Primary().Stats().RxFrames; n != 0 {
		t.Errorf("primary socket received %d frames, want 0", n)
	}
	for i, s := range socks {
		ks, err := s.KernelStats()
		if err != nil {
			t.Fatal(err)
		}
		if ks != (KernelStats{}) {
			t.Errorf("VM %d kernel stats: %+v, want all zero", i, ks)
		}
		if got := s.Stats().RxFrames; got != perVM {
			t.Errorf("VM %d socket counter RxFrames = %d, want %d", i, got, perVM)
		}
	}
	qs := q.Stats()
	if qs.Held != 0 || qs.InFill != qs.FillRing || qs.DoubleFrees != 0 || qs.Rejected != 0 {
		t.Errorf("frame accounting off: %+v", qs)
	}
}

// TestMultiQueue opens every queue of a 4-queue veth on one shared UMEM
// (each queue with its own fill/completion rings) and spreads flows over
// them by UDP port: every frame arrives once, each flow on one queue, and
// more than one queue carries traffic.
func TestMultiQueue(t *testing.T) {
	const queues = 4
	tb := newTestbed(t, queues)
	st := newSteering(t, tb, 1)
	st.setMAC(t, vmMAC(0), 1)
	u := newUMEM(t, UMEMConfig{NumFrames: 4 * 1024})
	qs := make([]*Queue, queues)
	for i := range qs {
		qs[i] = openQueue(t, tb, u, i, QueueConfig{Frames: 1024, FillSize: 1024, RxSize: 1024, TxSize: -1})
		st.register(t, 1, i, qs[i].Primary())
	}
	if u.FreeFrames() != 0 {
		t.Errorf("UMEM has %d unassigned frames, want 0", u.FreeFrames())
	}
	wire := openPacketSock(t, tb.wireNS, tb.wire.Index)

	const flows, perFlow = 64, 20
	flowQueue := map[uint16]int{}
	perQueue := make([]int, queues)
	buf := make([]byte, 2048)
	descs := make([]Desc, 64)
	received := 0
	for round := 0; round < perFlow; round++ {
		for f := 0; f < flows; f++ {
			fr := buildFrame(buf, vmMAC(0), tb.wire.MAC, uint16(10000+f), 4789, payload{Stream: uint32(f), Seq: uint64(round)}, 64)
			if err := wire.send(fr); err != nil {
				t.Fatal(err)
			}
		}
		want := (round + 1) * flows
		deadline := time.Now().Add(10 * time.Second)
		for received < want && time.Now().Before(deadline) {
			n := 0
			for qi, q := range qs {
				q.Refill(0)
				k := q.Primary().Receive(descs)
				for _, d := range descs[:k] {
					p, ok := parseFrame(q.Frame(d))
					if !ok {
						t.Fatalf("queue %d: unparsable frame", qi)
					}
					port := uint16(10000 + p.Stream)
					if prev, ok := flowQueue[port]; ok && prev != qi {
						t.Errorf("flow %d arrived on queues %d and %d", port, prev, qi)
					}
					flowQueue[port] = qi
					perQueue[qi]++
				}
				q.FillDescs(descs[:k])
				n += k
			}
			received += n
			if n == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		if received != want {
			t.Fatalf("round %d: received %d frames, want %d", round, received, want)
		}
	}
	used := 0
	for _, c := range perQueue {
		if c > 0 {
			used++
		}
	}
	t.Logf("frames per queue: %v", perQueue)
	if used < 2 {
		t.Errorf("all flows landed on one queue: %v", perQueue)
	}
	for i, q := range qs {
		s := q.Stats()
		if s.Held != 0 || s.InFill != s.FillRing || s.DoubleFrees != 0 {
			t.Errorf("queue %d frame accounting off: %+v", i, s)
		}
	}

	// Close queue 0, which registered the UMEM, and reopen it: the new
	// queue shares the UMEM through a queue still open and gets the
	// frames back; all flows again arrive exactly once.
	if err := qs[0].Close(); err != nil {
		t.Fatalf("close queue 0: %v", err)
	}
	if u.FreeFrames() != 1024 {
		t.Fatalf("closed queue's frames not back in the UMEM: %d free", u.FreeFrames())
	}
	qs[0] = openQueue(t, tb, u, 0, QueueConfig{Frames: 1024, FillSize: 1024, RxSize: 1024, TxSize: -1})
	st.register(t, 1, 0, qs[0].Primary())
	for f := 0; f < flows; f++ {
		fr := buildFrame(buf, vmMAC(0), tb.wire.MAC, uint16(10000+f), 4789, payload{Stream: uint32(f), Seq: 999}, 64)
		if err := wire.send(fr); err != nil {
			t.Fatal(err)
		}
	}
	again := 0
	for qi, q := range qs {
		want := perQueue[qi] / perFlow // flows stay on their queue
		n := drainSockets(t, q, []*Socket{q.Primary()}, want, 10*time.Second, func(int, []byte) {})
		if n != want {
			t.Errorf("queue %d received %d frames, want %d", qi, n, want)
		}
		again += n
	}
	if again != flows {
		t.Errorf("after reopening queue 0: %d frames, want %d", again, flows)
	}
}

// TestTransmit sends frames from the primary and from a VM socket (whose
// completions come back on the shared completion ring) and reads them
// byte-exact on the wire.
func TestTransmit(t *testing.T) {
	tb := newTestbed(t, 1)
	newSteering(t, tb, 1) // an XDP program on the host end, as in production
	u := newUMEM(t, UMEMConfig{NumFrames: 512, FrameSize: 4096})
	q := openQueue(t, tb, u, 0, QueueConfig{FillSize: 256, CompSize: 256, RxSize: 256, TxSize: 256})
	vm := newSocket(t, tb, q, SocketConfig{RxSize: -1, TxSize: 64})
	wire := openPacketSock(t, tb.wireNS, tb.wire.Index)

	const total = 600
	sent := map[uint64][]byte{}
	addrs := make([]uint64, 32)
	descs := make([]Desc, 32)
	buf := make([]byte, 4096)
	seq := uint64(0)
	gotFrames := 0
	for seq < total {
		q.Reap()
		n := q.Alloc(addrs[:min(32, total-int(seq))])
		if n == 0 {
			t.Fatalf("no free frame (stats %+v)", q.Stats())
		}
		for i := range n {
			size := 60 + int(seq%1400)
			f := buildFrame(buf, tb.wire.MAC, vmMAC(0), 1, 2, payload{Stream: 7, Seq: seq}, size)
			sent[seq] = append([]byte(nil), f...)
			copy(q.Buffer(addrs[i]), f)
			descs[i] = Desc{Addr: addrs[i], Len: uint32(len(f))}
			seq++
		}
		sock := q.Primary()
		if seq/32%2 == 1 {
			sock = vm
		}
		off := 0
		for off < n {
			k, err := sock.Transmit(descs[off:n])
			if err != nil {
				t.Fatalf("transmit: %v", err)
			}
			off += k
			if k == 0 {
				q.Reap()
				time.Sleep(time.Millisecond)
			}
		}
		// Read what arrived so far, byte-exact.
		for gotFrames < int(seq) {
			f, err := wire.recv(5 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if f == nil {
				t.Fatalf("wire got %d frames, want %d", gotFrames, seq)
			}
			p, ok := parseFrame(f)
			if !ok || p.Stream != 7 {
				continue // not ours (e.g. IPv6 noise)
			}
			if !bytes.Equal(f, sent[p.Seq]) {
				t.Fatalf("frame %d differs on the wire:\n got %x\nwant %x", p.Seq, f, sent[p.Seq])
			}
			delete(sent, p.Seq)
			gotFrames++
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for q.Stats().InTx > 0 && time.Now().Before(deadline) {
		q.Reap()
		time.Sleep(time.Millisecond)
	}
	s := q.Stats()
	if s.InTx != 0 || s.Held != 0 || s.Free+s.InFill != s.Total || s.Completed != total {
		t.Errorf("after TX: %+v", s)
	}
	if w := q.Primary().Stats().Wakeups + vm.Stats().Wakeups; w == 0 {
		t.Errorf("copy mode tx needs wakeups, counted none")
	}
	if vm.Stats().TxFrames == 0 || q.Primary().Stats().TxFrames == 0 {
		t.Errorf("both sockets should have sent: primary %+v vm %+v", q.Primary().Stats(), vm.Stats())
	}
}

// TestTransmitErrors: bad descriptors are refused with an error, never a
// panic, and the socket keeps working.
func TestTransmitErrors(t *testing.T) {
	tb := newTestbed(t, 1)
	u := newUMEM(t, UMEMConfig{NumFrames: 128})
	q := openQueue(t, tb, u, 0, QueueConfig{FillSize: 64, CompSize: 64, RxSize: 64, TxSize: 64})
	rxOnly := newSocket(t, tb, q, SocketConfig{RxSize: 64, TxSize: -1})
	if _, err := rxOnly.Transmit([]Desc{{Addr: 0, Len: 60}}); !errors.Is(err, ErrNoTxRing) {
		t.Errorf("transmit on rx-only socket: %v, want ErrNoTxRing", err)
	}
	var a [2]uint64
	if q.Alloc(a[:]) != 2 {
		t.Fatal("alloc failed")
	}
	fs := uint64(u.FrameSize())
	for _, d := range []Desc{
		{Addr: 1 << 40, Len: 60},           // outside the UMEM
		{Addr: a[0] + fs - 10, Len: 60},    // crosses the frame end
		{Addr: a[0], Len: 0},               // empty
		{Addr: a[0] + 2*fs, Len: 60},       // a frame the caller does not hold
		{Addr: ^uint64(0) - 10, Len: 4000}, // overflow
		{Addr: a[1] + 100, Len: 60},        // the frame just queued: no double hand-out
	} {
		n, err := q.Primary().Transmit([]Desc{{Addr: a[1], Len: 60}, d})
		if n != 1 || !errors.Is(err, ErrInvalidDesc) {
			t.Errorf("transmit %+v: n=%d err=%v, want 1 and ErrInvalidDesc", d, n, err)
		}
		// a[1] went out; wait for it to complete and take it back.
		deadline := time.Now().Add(5 * time.Second)
		got := 0
		for got == 0 && time.Now().Before(deadline) {
			got = q.Complete(a[1:2])
		}
		if got != 1 {
			t.Fatalf("no completion")
		}
	}
	if q.Frame(Desc{Addr: 1 << 40, Len: 10}) != nil || q.Buffer(1<<40) != nil {
		t.Error("Frame/Buffer of a foreign address should be nil")
	}
	// Double free and foreign free are refused and counted.
	if q.Free(a[:]) != 2 || q.Free(a[:1]) != 0 || q.Free([]uint64{1 << 40}) != 0 {
		t.Error("free accounting wrong")
	}
	if q.Fill(a[:1]) != 1 || q.Stats().Rejected == 0 {
		t.Error("filling a free frame should be rejected")
	}
	s := q.Stats()
	if s.DoubleFrees != 1 || s.BadAddrs != 1 || s.Held != 0 {
		t.Errorf("stats: %+v", s)
	}
	if err := q.Primary().Close(); err == nil {
		t.Error("closing the primary socket alone should fail")
	}
}

// TestBindErrors: a missing queue, a missing interface and a second UMEM
// on a busy queue each give a clear error; the open queue keeps working.
func TestBindErrors(t *testing.T) {
	tb := newTestbed(t, 1)
	st := newSteering(t, tb, 1)
	st.setMAC(t, vmMAC(0), 1)
	u := newUMEM(t, UMEMConfig{NumFrames: 256})
	q := openQueue(t, tb, u, 0, QueueConfig{Frames: 128, FillSize: 128, RxSize: 128, TxSize: 64})
	st.register(t, 1, 0, q.Primary())

	open := func(f func() (*Queue, error)) error {
		var q2 *Queue
		err := tb.hostNS.Do(func() error {
			var err error
			q2, err = f()
			return err
		})
		if err == nil {
			q2.Close()
			return errors.New("unexpectedly succeeded")
		}
		return err
	}
	cases := []struct {
		name, want string
		f          func() (*Queue, error)
	}{
		{"missing queue", "queue does not exist", func() (*Queue, error) {
			return u.OpenQueue(tb.host.Index, 1, QueueConfig{Frames: 64, FillSize: 64, RxSize: 64})
		}},
		{"missing interface", "no such interface", func() (*Queue, error) {
			return u.OpenQueue(99999, 0, QueueConfig{Frames: 64, FillSize: 64, RxSize: 64})
		}},
		{"second UMEM on busy queue", "busy", func() (*Queue, error) {
			return NewQueue(tb.host.Index, 0, UMEMConfig{NumFrames: 64}, QueueConfig{FillSize: 64, RxSize: 64})
		}},
		{"same queue twice on one UMEM", "already open", func() (*Queue, error) {
			return u.OpenQueue(tb.host.Index, 0, QueueConfig{Frames: 64, FillSize: 64, RxSize: 64})
		}},
		{"bad ring size", "power of two", func() (*Queue, error) {
			return u.OpenQueue(tb.host.Index, 0, QueueConfig{FillSize: 100, RxSize: 64})
		}},
	}
	for _, c := range cases {
		err := open(c.f)
		t.Logf("%s: %v", c.name, err)
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not say %q", c.name, err, c.want)
		}
	}
	if got := u.FreeFrames(); got != 128 {
		t.Errorf("failed opens leaked UMEM frames: %d free, want 128", got)
	}
	// The open queue still receives.
	wire := openPacketSock(t, tb.wireNS, tb.wire.Index)
	buf := make([]byte, 2048)
	for i := range 50 {
		if err := wire.send(buildFrame(buf, vmMAC(0), tb.wire.MAC, 1, 2, payload{Seq: uint64(i)}, 64)); err != nil {
			t.Fatal(err)
		}
	}
	got := drainSockets(t, q, []*Socket{q.Primary()}, 50, 10*time.Second, func(int, []byte) {})
	if got != 50 {
		t.Errorf("after failed binds the queue received %d frames, want 50", got)
	}
}

// TestModes: forcing zero-copy on veth fails with a clear error; forcing
// copy mode works and reports copy mode.
func TestModes(t *testing.T) {
	tb := newTestbed(t, 1)
	var q *Queue
	err := tb.hostNS.Do(func() error {
		var err error
		q, err = NewQueue(tb.host.Index, 0, UMEMConfig{NumFrames: 64}, QueueConfig{FillSize: 64, RxSize: 64, Mode: ModeZeroCopy})
		return err
	})
	if err == nil {
		q.Close()
		t.Fatal("zero-copy on veth succeeded")
	}
	if !strings.Contains(err.Error(), "does not support zero-copy") {
		t.Errorf("zero-copy error %q does not say why", err)
	}
	t.Log(err)
	err = tb.hostNS.Do(func() error {
		var err error
		q, err = NewQueue(tb.host.Index, 0, UMEMConfig{NumFrames: 64}, QueueConfig{FillSize: 64, RxSize: 64, Mode: ModeCopy})
		return err
	})
	if err != nil {
		t.Fatalf("copy mode after a failed zero-copy bind: %v", err)
	}
	if q.ZeroCopy() {
		t.Error("copy-mode queue reports zero-copy")
	}
	if err := q.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

func TestUMEMConfigErrors(t *testing.T) {
	for _, c := range []UMEMConfig{
		{FrameSize: 1000},
		{FrameSize: 8192},
		{NumFrames: -1},
		{Headroom: 2048},
		{Headroom: -1},
	} {
		if u, err := NewUMEM(c); err == nil {
			u.Close()
			t.Errorf("NewUMEM(%+v) succeeded", c)
		}
	}
	u, err := NewUMEM(UMEMConfig{NumFrames: 16, FrameSize: 4096, Headroom: 128})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if u.FrameSize() != 4096 || u.NumFrames() != 16 || u.Headroom() != 128 || u.FreeFrames() != 16 {
		t.Errorf("UMEM shape wrong: %d %d %d %d", u.FrameSize(), u.NumFrames(), u.Headroom(), u.FreeFrames())
	}
	_ = fmt.Sprint()
}

// TestNoNeedWakeup: without XDP_USE_NEED_WAKEUP every tx batch is kicked,
// also on a second queue sharing the UMEM (which inherits the setting).
func TestNoNeedWakeup(t *testing.T) {
	tb := newTestbed(t, 2)
	u := newUMEM(t, UMEMConfig{NumFrames: 256})
	qs := []*Queue{
		openQueue(t, tb, u, 0, QueueConfig{Frames: 128, FillSize: 64, RxSize: -1, TxSize: 64, DisableNeedWakeup: true}),
		openQueue(t, tb, u, 1, QueueConfig{Frames: 128, FillSize: 64, RxSize: -1, TxSize: 64}),
	}
	buf := make([]byte, 2048)
	for i, q := range qs {
		if q.wakeups {
			t.Errorf("queue %d uses need_wakeup; the UMEM was registered without it", i)
		}
		addrs := make([]uint64, 10)
		if q.Alloc(addrs) != 10 {
			t.Fatalf("queue %d: alloc", i)
		}
		descs := make([]Desc, 10)
		for j, a := range addrs {
			f := buildFrame(buf, tb.wire.MAC, vmMAC(0), 1, 2, payload{Seq: uint64(j)}, 64)
			copy(q.Buffer(a), f)
			descs[j] = Desc{Addr: a, Len: uint32(len(f))}
		}
		if n, err := q.Primary().Transmit(descs); n != 10 || err != nil {
			t.Fatalf("queue %d: transmit %d, %v", i, n, err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for q.Stats().Completed < 10 && time.Now().Before(deadline) {
			q.Reap()
			time.Sleep(time.Millisecond)
		}
		if s := q.Stats(); s.Completed != 10 || s.Free != s.Total-s.InFill {
			t.Errorf("queue %d: %+v", i, s)
		}
	}
}
