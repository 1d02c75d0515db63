package pktgen

import (
	"fmt"
	"runtime"

	"github.com/vmq/vmq/dataplane/xsk"
)

// XSKOptions configure an XSKSender.
type XSKOptions struct {
	// Ifindex and Queue are the interface and tx queue to bind to, resolved
	// in the calling thread's network namespace at creation.
	Ifindex, Queue int
	// Batch is the frames per tx ring submission (default 64).
	Batch int
	// Mode is the bind mode: zero-copy where the driver has it (ModeAuto).
	Mode xsk.Mode
}

// XSKSender sends a flow's frames through an AF_XDP socket's tx ring
// (package dataplane/xsk): zero-copy on drivers that support it, copy mode
// elsewhere (veth). Frames are stamped in user space straight into UMEM
// frames, one timestamp per batch. Not safe for concurrent use.
type XSKSender struct {
	tmpl  *Template
	q     *xsk.Queue
	sock  *xsk.Socket
	addrs []uint64
	descs []xsk.Desc
	next  uint64
}

// NewXSKSender opens a tx-only AF_XDP queue for t's frames.
func NewXSKSender(t *Template, opts XSKOptions) (*XSKSender, error) {
	if t.frameLen > MaxLiveFrameLen {
		return nil, fmt.Errorf("xsk sender: %d-byte frames: one UMEM frame carries at most %d bytes here; send jumbo frames with the AF_PACKET sender", t.frameLen, MaxLiveFrameLen)
	}
	if opts.Batch <= 0 {
		opts.Batch = 64
	}
	q, err := xsk.NewQueue(opts.Ifindex, opts.Queue, xsk.UMEMConfig{}, xsk.QueueConfig{RxSize: -1, Mode: opts.Mode})
	if err != nil {
		return nil, fmt.Errorf("xsk sender: open ifindex %d queue %d: %w", opts.Ifindex, opts.Queue, err)
	}
	return &XSKSender{
		tmpl:  t,
		q:     q,
		sock:  q.Primary(),
		addrs: make([]uint64, opts.Batch),
		descs: make([]xsk.Desc, opts.Batch),
	}, nil
}

// FrameLen is the length of each frame.
func (s *XSKSender) FrameLen() int { return s.tmpl.frameLen }

// ZeroCopy reports whether the socket is bound zero-copy.
func (s *XSKSender) ZeroCopy() bool { return s.q.ZeroCopy() }

// Next is the frame number of the next frame to send.
func (s *XSKSender) Next() uint64 { return s.next }

// Send queues the next n frames on the tx ring (and wakes the kernel as
// it asks). It waits for completions when the UMEM runs out of frames.
func (s *XSKSender) Send(n int) (sent, failed int, err error) {
	fl := s.tmpl.frameLen
	idle := 0
	for sent < n {
		s.q.Reap()
		k := s.q.Alloc(s.addrs[:min(n-sent, len(s.addrs))])
		if k == 0 {
			// Every frame is in flight: let the kernel complete some.
			if err := s.sock.Kick(); err != nil {
				return sent, 0, fmt.Errorf("xsk sender: kick: %w", err)
			}
			if idle++; idle > 1000 {
				runtime.Gosched()
			}
			continue
		}
		idle = 0
		ts := MonotonicNS()
		for i, a := range s.addrs[:k] {
			buf := s.q.Buffer(a)
			if len(buf) < fl {
				s.q.Free(s.addrs[:k])
				return sent, 0, fmt.Errorf("xsk sender: frame of %d bytes does not fit a %d-byte UMEM frame", fl, len(buf))
			}
			s.tmpl.Stamp(buf[:fl], s.next+uint64(i), ts)
			s.descs[i] = xsk.Desc{Addr: a, Len: uint32(fl)}
		}
		m, err := s.sock.Transmit(s.descs[:k])
		// Frames not queued go back; their sequence numbers are reused.
		if m < k {
			s.q.Free(s.addrs[m:k])
		}
		s.next += uint64(m)
		sent += m
		if err != nil {
			return sent, 0, fmt.Errorf("xsk sender: transmit: %w", err)
		}
	}
	return sent, 0, nil
}

// Close closes the socket and its UMEM; frames still queued may be lost.
func (s *XSKSender) Close() error {
	if err := s.q.Close(); err != nil {
		return fmt.Errorf("xsk sender: close: %w", err)
	}
	return nil
}
