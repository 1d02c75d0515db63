package testbed

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/internal/cpuset"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// Send sends count frames to each destination of spec from the wire,
// paced (SendPaced) so that exact counts hold.
func (b *Bed) Send(spec pktgen.FlowSpec, count int) {
	b.T.Helper()
	b.SendOnCPU(-1, spec, count)
}

// SendOnCPU is Send from a generator thread pinned to cpu (-1: any): on
// veth, a frame transmitted with XDP_TX lands on the peer's rx queue
// cpu mod queues.
func (b *Bed) SendOnCPU(cpu int, spec pktgen.FlowSpec, count int) {
	t := b.T
	t.Helper()
	tmpl, err := pktgen.NewTemplate(spec)
	if err != nil {
		t.Fatal(err)
	}
	err = b.Wire.Do(func() error {
		send := func() error {
			g, err := pktgen.NewLiveGenerator(tmpl, pktgen.LiveOptions{Ifindex: b.Peer.Index})
			if err != nil {
				return err
			}
			defer g.Close()
			return SendPaced(g, count*len(spec.Dests))
		}
		if cpu < 0 {
			return send()
		}
		// The thread goes back to the runtime after Do (RunOn restores
		// its mask).
		return cpuset.RunOn([]int{cpu}, send)
	})
	if err != nil {
		if cpu >= 0 {
			t.Fatalf("send on cpu %d: %v", cpu, err)
		}
		t.Fatalf("send from the wire: %v", err)
	}
}

// SendPaced sends total frames in bursts of 32 at no more than 10k
// frames/s: a pace the whole path (vmq and Go guests) sustains on two
// cores loaded by the rest of the suite, so exact counts hold. A VM
// socket's rx ring holds 256 frames: at this pace that is 25 ms of a
// worker held elsewhere, e.g. closing another VM's AF_XDP socket, which
// waits ~14 ms in the kernel (synchronize_net). The old 100k/s in bursts
// of 128 was only ever ~6k/s while each live-frames call cost ~20 ms.
func SendPaced(s pktgen.Sender, total int) error {
	_, err := pktgen.Run(context.Background(), s, pktgen.RunOptions{Count: uint64(total), Rate: 10000, Burst: 32})
	return err
}

// PacketSender opens an AF_PACKET sender of spec on the wire end (the
// socket keeps the namespace), sending batches of batch frames. The
// caller closes it.
func (b *Bed) PacketSender(spec pktgen.FlowSpec, batch int) *pktgen.PacketSender {
	t := b.T
	t.Helper()
	tmpl, err := pktgen.NewTemplate(spec)
	if err != nil {
		t.Fatal(err)
	}
	var s *pktgen.PacketSender
	err = b.Wire.Do(func() error {
		var err error
		s, err = pktgen.NewPacketSender(tmpl, pktgen.PacketOptions{Ifindex: b.Peer.Index, Batch: batch})
		return err
	})
	if err != nil {
		t.Fatalf("wire sender: %v", err)
	}
	return s
}

// SendAt sends count frames per destination from the wire at rate
// frames/s in bursts of 32 (AF_PACKET: a live-frames generator costs
// tens of ms per call, too coarse to hold a rate), requires every one
// sent, and returns how long it took.
func (b *Bed) SendAt(spec pktgen.FlowSpec, count int, rate float64) time.Duration {
	t := b.T
	t.Helper()
	s := b.PacketSender(spec, 32)
	defer s.Close()
	total := uint64(count * len(spec.Dests))
	st, err := pktgen.Run(context.Background(), s, pktgen.RunOptions{Count: total, Rate: rate, Burst: 32})
	if err != nil {
		t.Fatalf("send from the wire: %v", err)
	}
	if st.Sent != total {
		t.Fatalf("sent %d of %d", st.Sent, total)
	}
	return st.Elapsed
}

// Flow sends spec from the wire at rate frames/s in bursts of 32 until
// ctx ends, in the background; the returned function waits for it and
// returns its totals.
func (b *Bed) Flow(ctx context.Context, spec pktgen.FlowSpec, rate float64) func() (pktgen.Stats, error) {
	b.T.Helper()
	return b.FlowOnCPU(ctx, -1, spec, rate)
}

// FlowOnCPU is Flow from a sender thread pinned to cpu (-1: any): the
// sender bypasses the qdisc, so the kernel picks the peer's tx queue cpu
// mod queues, and on veth the frames land on the NIC's rx queue of that
// number.
func (b *Bed) FlowOnCPU(ctx context.Context, cpu int, spec pktgen.FlowSpec, rate float64) func() (pktgen.Stats, error) {
	b.T.Helper()
	s := b.PacketSender(spec, 32)
	var st pktgen.Stats
	var runErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer s.Close()
		run := func() error {
			st, runErr = pktgen.Run(ctx, s, pktgen.RunOptions{Rate: rate, Burst: 32})
			return nil
		}
		if cpu < 0 {
			run()
		} else {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if err := cpuset.RunOn([]int{cpu}, run); err != nil {
				runErr = fmt.Errorf("flow on cpu %d: %w", cpu, err)
			}
		}
		if errors.Is(runErr, context.Canceled) {
			runErr = nil
		}
	}()
	return func() (pktgen.Stats, error) { <-done; return st, runErr }
}

// Capture reads the frames arriving at the wire end, with their VLAN
// tags put back (the kernel moves them into metadata).
type Capture struct {
	fd     int
	mu     sync.Mutex
	frames [][]byte
	stop   atomic.Bool
	done   chan struct{}
}

// Capture starts capturing on the wire end until the test ends.
func (b *Bed) Capture() *Capture {
	t := b.T
	t.Helper()
	c := &Capture{fd: -1, done: make(chan struct{})}
	err := b.Wire.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		c.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return err
		}
		// A test counts every frame: the default buffer (~200 KB, some
		// 170 frames) overflows when a loaded machine keeps the loop off
		// its CPU for a few tens of milliseconds.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
			return fmt.Errorf("capture buffer: %w", err)
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: b.Peer.Index})
	})
	if err != nil {
		t.Fatalf("capture on wire: %v", err)
	}
	unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	go c.loop()
	t.Cleanup(func() {
		c.stop.Store(true) // the loop sees it within one receive timeout
		<-c.done
		unix.Close(c.fd)
	})
	return c
}

func (c *Capture) loop() {
	defer close(c.done)
	buf := make([]byte, 65536) // jumbo frames too
	oob := make([]byte, 256)
	for {
		n, oobn, _, from, err := unix.Recvmsg(c.fd, buf, oob, 0)
		if c.stop.Load() {
			return
		}
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		frame := append([]byte(nil), buf[:n]...)
		if vlan, ok := auxVLAN(oob[:oobn]); ok {
			tagged := make([]byte, 0, n+4)
			tagged = append(tagged, frame[:12]...)
			tagged = binary.BigEndian.AppendUint16(tagged, 0x8100)
			tagged = binary.BigEndian.AppendUint16(tagged, vlan)
			frame = append(tagged, frame[12:]...)
		}
		c.mu.Lock()
		c.frames = append(c.frames, frame)
		c.mu.Unlock()
	}
}

func auxVLAN(oob []byte) (uint16, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA && len(m.Data) >= 20 {
			status := binary.NativeEndian.Uint32(m.Data[0:])
			tci := binary.NativeEndian.Uint16(m.Data[16:])
			if status&unix.TP_STATUS_VLAN_VALID != 0 {
				return tci, true
			}
		}
	}
	return 0, false
}

// WaitFor waits until n captured frames match keep and returns them; it
// fails the test if more arrive (a duplicate or a stray frame).
func (c *Capture) WaitFor(t testing.TB, what string, keep func([]byte) bool, n int) [][]byte {
	t.Helper()
	testenv.Eventually(t, what, func() (bool, string) {
		got := len(c.Matching(keep))
		return got >= n, fmt.Sprintf("%d of %d", got, n)
	})
	frames := c.Matching(keep)
	if len(frames) != n {
		t.Fatalf("%s: %d frames, want %d", what, len(frames), n)
	}
	return frames
}

// Matching returns the captured frames for which keep is true.
func (c *Capture) Matching(keep func([]byte) bool) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [][]byte
	for _, f := range c.frames {
		if keep(f) {
			out = append(out, f)
		}
	}
	return out
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// PassXDPOnPeer attaches an XDP_PASS program natively to the wire end
// until the test ends or the returned detach runs (netnstest.PassXDP):
// the wire's stack and Capture still see every frame.
func (b *Bed) PassXDPOnPeer() (detach func()) {
	b.T.Helper()
	return netnstest.PassXDP(b.T, b.Wire, b.Peer.Index)
}
