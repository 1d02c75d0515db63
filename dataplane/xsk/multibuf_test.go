package xsk

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"
)

// jumboSizes are frame lengths around every chunk boundary of 2048- and
// 4096-byte frames (1792 and 3840 bytes of data each) up to MTU 9000.
var jumboSizes = []int{60, 1514, 1792, 1793, 3584, 3585, 3840, 3841, 5376, 5377, 7680, 7681, 9000, 9014}

// TestMultiBufferProbe: this kernel (6.18) has AF_XDP multi-buffer.
func TestMultiBufferProbe(t *testing.T) {
	if err := ProbeMultiBuffer(); err != nil {
		t.Fatalf("probe: %v", err)
	}
}

// TestMultiBufferRx sends jumbo frames from the wire of an MTU-9000 veth
// through vmq's (xdp.frags) filter into a VM socket bound with
// XDP_USE_SG: every frame arrives once, as exactly ceil(len/chunk)
// descriptors with PktContd on all but the last, reassembling to the
// bytes sent; afterwards every UMEM frame is back (free or in the fill
// ring).
func TestMultiBufferRx(t *testing.T) {
	for _, fs := range []int{2048, 4096} {
		t.Run(fmt.Sprint(fs), func(t *testing.T) { testMultiBufferRx(t, fs) })
	}
}

func testMultiBufferRx(t *testing.T, frameSize int) {
	tb := newTestbedMTU(t, 1, 9000)
	st := newSteering(t, tb, 1)
	u := newUMEM(t, UMEMConfig{NumFrames: 1024, FrameSize: frameSize})
	q := openQueue(t, tb, u, 0, QueueConfig{FillSize: 512, CompSize: 64, RxSize: 64, TxSize: -1, Mode: ModeCopy, MultiBuffer: true})
	if !q.MultiBuffer() {
		t.Fatal("queue does not report multi-buffer")
	}
	vm := newSocket(t, tb, q, SocketConfig{RxSize: 256, TxSize: -1})
	if !vm.Queue().MultiBuffer() {
		t.Fatal("shared socket's queue does not report multi-buffer")
	}
	st.setMAC(t, vmMAC(0), 1)
	st.register(t, 1, 0, vm)
	wire := openPacketSock(t, tb.wireNS, tb.wire.Index)

	chunk := q.RxChunk()
	const rounds = 10
	descs := make([]Desc, 64)
	buf := make([]byte, 9014)
	frame := make([]byte, 0, 9014)
	seq := uint64(0)
	for range rounds {
		for _, size := range jumboSizes {
			want := buildFrame(buf, vmMAC(0), tb.wire.MAC, 1, 2, payload{Stream: 3, Seq: seq}, size)
			if err := wire.send(want); err != nil {
				t.Fatalf("send %d bytes: %v", size, err)
			}
			// One frame in flight at a time: its descriptors are checked
			// against the size sent.
			var n int
			deadline := time.Now().Add(5 * time.Second)
			for n == 0 && time.Now().Before(deadline) {
				q.Refill(0)
				if n = vm.Receive(descs); n == 0 {
					q.Poll(5 * time.Millisecond)
				}
			}
			if n == 0 {
				ks, _ := vm.KernelStats()
				t.Fatalf("frame %d (%d bytes) did not arrive: kernel %+v queue %+v", seq, size, ks, q.Stats())
			}
			if wantDescs := (size + chunk - 1) / chunk; n != wantDescs {
				t.Fatalf("%d-byte frame came as %d descriptors, want %d (%d-byte chunks): %+v", size, n, wantDescs, chunk, descs[:n])
			}
			frame = frame[:0]
			for i, d := range descs[:n] {
				if last := i == n-1; (d.Options&PktContd != 0) == last {
					t.Fatalf("descriptor %d of %d has options %#x", i, n, d.Options)
				}
				frame = append(frame, q.Frame(d)...)
			}
			if !bytes.Equal(frame, want) {
				t.Fatalf("frame %d (%d bytes) reassembled to %d bytes that differ", seq, size, len(frame))
			}
			if used := q.FillDescs(descs[:n]); used != n {
				q.FreeDescs(descs[used:n])
			}
			seq++
		}
	}
	if ks, err := vm.KernelStats(); err != nil || ks.RxDropped != 0 || ks.RxInvalid != 0 {
		t.Errorf("kernel stats %+v (%v)", ks, err)
	}

	// A frame with more descriptors than the Receive has room for is
	// dropped, counted, and its frames come back.
	want := buildFrame(buf, vmMAC(0), tb.wire.MAC, 1, 2, payload{Stream: 3, Seq: seq}, 9014)
	if err := wire.send(want); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for vm.Stats().RxTooLong == 0 && time.Now().Before(deadline) {
		if n := vm.Receive(descs[:2]); n != 0 {
			t.Fatalf("Receive into 2 slots returned %d descriptors of a 9014-byte frame", n)
		}
		q.Poll(5 * time.Millisecond)
	}
	if got := vm.Stats().RxTooLong; got != 1 {
		t.Fatalf("RxTooLong %d, want 1", got)
	}
	s := q.Stats()
	if s.Held != 0 || s.Free+s.InFill != s.Total || s.BadAddrs != 0 || s.DoubleFrees != 0 {
		t.Errorf("frame accounting after RX: %+v", s)
	}
	t.Logf("%d frames, %d-byte chunks: queue %+v", seq, chunk, s)
}

// TestMultiBufferTx sends frames spread over several UMEM frames
// (PktContd) out of a VM socket in copy mode: each arrives on the wire
// once and byte-exact, every descriptor completes, and no frame is lost.
func TestMultiBufferTx(t *testing.T) {
	tb := newTestbedMTU(t, 1, 9000)
	newSteering(t, tb, 1)
	const frameSize = 2048
	u := newUMEM(t, UMEMConfig{NumFrames: 512, FrameSize: frameSize})
	q := openQueue(t, tb, u, 0, QueueConfig{FillSize: 64, CompSize: 256, RxSize: 64, TxSize: 64, Mode: ModeCopy, MultiBuffer: true})
	vm := newSocket(t, tb, q, SocketConfig{RxSize: -1, TxSize: 128})
	wire := openPacketSock(t, tb.wireNS, tb.wire.Index)

	const rounds = 10
	buf := make([]byte, 9014)
	addrs := make([]uint64, MaxTxDescs)
	descs := make([]Desc, 0, 64)
	seq, totalDescs := uint64(0), 0
	for range rounds {
		for _, size := range jumboSizes {
			q.Reap()
			f := buildFrame(buf, tb.wire.MAC, vmMAC(0), 1, 2, payload{Stream: 9, Seq: seq}, size)
			// Uneven pieces: 1000 bytes into the first frame, the rest in
			// whole frames, so the split is not the kernel's rx split.
			descs = descs[:0]
			for off := 0; off < len(f); {
				if q.Alloc(addrs[:1]) != 1 {
					t.Fatalf("no free frame: %+v", q.Stats())
				}
				k := min(len(f)-off, frameSize)
				if off == 0 {
					k = min(k, 1000)
				}
				copy(q.Buffer(addrs[0]), f[off:off+k])
				descs = append(descs, Desc{Addr: addrs[0], Len: uint32(k), Options: PktContd})
				off += k
			}
			descs[len(descs)-1].Options = 0
			n, err := vm.Transmit(descs)
			if err != nil || n != len(descs) {
				t.Fatalf("transmit %d descriptors: %d, %v", len(descs), n, err)
			}
			totalDescs += n
			for {
				got, err := wire.recv(5 * time.Second)
				if err != nil || got == nil {
					t.Fatalf("frame %d (%d bytes) not on the wire: %v (kernel %v)", seq, size, err, must(vm.KernelStats()))
				}
				p, ok := parseFrame(got)
				if !ok || p.Stream != 9 {
					continue
				}
				if p.Seq != seq || !bytes.Equal(got, f) {
					t.Fatalf("wire got frame %d of %d bytes, want frame %d of %d, byte-exact", p.Seq, len(got), seq, size)
				}
				break
			}
			seq++
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for q.Stats().InTx > 0 && time.Now().Before(deadline) {
		q.Reap()
		time.Sleep(time.Millisecond)
	}
	s := q.Stats()
	if s.InTx != 0 || s.Held != 0 || s.Free+s.InFill != s.Total || s.Completed != uint64(totalDescs) {
		t.Errorf("after TX of %d descriptors: %+v", totalDescs, s)
	}
	if ks := must(vm.KernelStats()); ks.TxInvalid != 0 {
		t.Errorf("kernel counted invalid tx descriptors: %+v", ks)
	}
	t.Logf("%d frames in %d descriptors: %+v", seq, totalDescs, s)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestMultiBufferTxRefused: a packet without its last descriptor, one
// longer than MaxTxDescs and PktContd on a queue without multi-buffer are
// refused whole; the frames stay the caller's and nothing is queued.
func TestMultiBufferTxRefused(t *testing.T) {
	tb := newTestbedMTU(t, 1, 9000)
	u := newUMEM(t, UMEMConfig{NumFrames: 128})
	q := openQueue(t, tb, u, 0, QueueConfig{FillSize: 32, CompSize: 64, RxSize: 32, TxSize: 64, Mode: ModeCopy, MultiBuffer: true})
	s := q.Primary()
	addrs := make([]uint64, MaxTxDescs+2)
	if q.Alloc(addrs) != len(addrs) {
		t.Fatal("alloc")
	}
	mk := func(n int) []Desc {
		d := make([]Desc, n)
		for i := range d {
			d[i] = Desc{Addr: addrs[i], Len: 100, Options: PktContd}
		}
		return d
	}
	// A whole one-descriptor packet, then an unterminated one: only the
	// first goes.
	d := mk(3)
	d[0].Options = 0
	n, err := s.Transmit(d)
	if n != 1 || !errors.Is(err, ErrInvalidDesc) {
		t.Fatalf("unterminated packet: sent %d, %v; want 1 and ErrInvalidDesc", n, err)
	}
	// MaxTxDescs+1 descriptors in one packet.
	d = mk(MaxTxDescs + 1)
	d[0].Addr = addrs[MaxTxDescs+1] // addrs[0] is the kernel's now
	d[len(d)-1].Options = 0
	if n, err := s.Transmit(d); n != 0 || !errors.Is(err, ErrInvalidDesc) {
		t.Fatalf("%d-descriptor packet: sent %d, %v; want 0 and ErrInvalidDesc", len(d), n, err)
	}
	// Exactly MaxTxDescs is fine.
	d = d[1:]
	if n, err := s.Transmit(d); n != len(d) || err != nil {
		t.Fatalf("%d-descriptor packet: sent %d, %v", len(d), n, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for q.Stats().InTx > 0 && time.Now().Before(deadline) {
		q.Reap()
		time.Sleep(time.Millisecond)
	}
	if st := q.Stats(); st.InTx != 0 || st.Completed != uint64(1+MaxTxDescs) || st.Held != 1 || st.DoubleFrees != 0 {
		t.Fatalf("accounting: %+v", st)
	}

	// Without XDP_USE_SG, PktContd is refused.
	tb2 := newTestbed(t, 1)
	u2 := newUMEM(t, UMEMConfig{NumFrames: 64})
	q2 := openQueue(t, tb2, u2, 0, QueueConfig{FillSize: 32, CompSize: 32, RxSize: 32, TxSize: 32, Mode: ModeCopy})
	if q2.MultiBuffer() {
		t.Fatal("queue without MultiBuffer reports it")
	}
	a := make([]uint64, 2)
	q2.Alloc(a)
	if n, err := q2.Primary().Transmit([]Desc{{Addr: a[0], Len: 60, Options: PktContd}, {Addr: a[1], Len: 60}}); n != 0 || !errors.Is(err, ErrInvalidDesc) {
		t.Fatalf("PktContd without multi-buffer: sent %d, %v", n, err)
	}
	if st := q2.Stats(); st.Held != 2 {
		t.Fatalf("refused frames not the caller's: %+v", st)
	}
}
