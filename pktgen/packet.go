package pktgen

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// PacketOptions configure a PacketSender.
type PacketOptions struct {
	// Ifindex is the interface to send on, resolved in the calling
	// thread's network namespace when the sender is created.
	Ifindex int
	// Batch is the frames per sendmmsg call (default 64, at most 1024).
	Batch int
	// UseQdisc sends through the interface's qdisc; by default the socket
	// bypasses it (PACKET_QDISC_BYPASS), as pktgen does.
	UseQdisc bool
}

// PacketSender sends a flow's frames on an AF_PACKET socket with
// sendmmsg: a user-space generator for any interface (including ones
// whose driver has no XDP). Frames are stamped in user space, one
// timestamp per batch. Not safe for concurrent use; the socket keeps the
// namespace it was created in, so Send may run on any thread.
type PacketSender struct {
	tmpl  *Template
	fd    int
	buf   []byte
	iovs  []unix.Iovec
	msgs  []unix.Mmsghdr
	next  uint64 // frame number of the next frame
	batch int
}

// NewPacketSender opens the socket, binds it to opts.Ifindex and
// preallocates a batch of frame buffers.
func NewPacketSender(t *Template, opts PacketOptions) (*PacketSender, error) {
	if opts.Ifindex <= 0 {
		return nil, fmt.Errorf("packet sender: bad ifindex %d", opts.Ifindex)
	}
	if opts.Batch <= 0 {
		opts.Batch = 64
	}
	if opts.Batch > 1024 {
		return nil, fmt.Errorf("packet sender: batch %d above 1024", opts.Batch)
	}
	// Protocol 0: the socket only sends, the kernel queues nothing to it.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packet sender: socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: opts.Ifindex}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("packet sender: bind to ifindex %d: %w", opts.Ifindex, err)
	}
	if !opts.UseQdisc {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("packet sender: PACKET_QDISC_BYPASS: %w", err)
		}
	}
	s := &PacketSender{
		tmpl:  t,
		fd:    fd,
		batch: opts.Batch,
		buf:   make([]byte, opts.Batch*t.frameLen),
		iovs:  make([]unix.Iovec, opts.Batch),
		msgs:  make([]unix.Mmsghdr, opts.Batch),
	}
	for i := range s.msgs {
		s.iovs[i].Base = &s.buf[i*t.frameLen]
		s.iovs[i].SetLen(t.frameLen)
		s.msgs[i].Hdr.Iov = &s.iovs[i]
		s.msgs[i].Hdr.SetIovlen(1)
	}
	return s, nil
}

// FrameLen is the length of each frame.
func (s *PacketSender) FrameLen() int { return s.tmpl.frameLen }

// Next is the frame number of the next frame to send.
func (s *PacketSender) Next() uint64 { return s.next }

// Send transmits the next n frames. A frame the kernel refuses because a
// queue is full (ENOBUFS, EAGAIN) counts as failed and its sequence
// number is skipped; other errors are fatal.
func (s *PacketSender) Send(n int) (sent, failed int, err error) {
	fl := s.tmpl.frameLen
	for sent+failed < n {
		k := min(n-sent-failed, s.batch)
		ts := MonotonicNS()
		for i := 0; i < k; i++ {
			s.tmpl.Stamp(s.buf[i*fl:(i+1)*fl], s.next+uint64(i), ts)
		}
		off := 0
		for off < k {
			m, err := sendmmsg(s.fd, s.msgs[off:k])
			switch {
			case err == nil:
				off += m
				sent += m
			case errors.Is(err, unix.EINTR):
			case errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN):
				off++ // sendmmsg reports an error only when the first message failed
				failed++
			default:
				s.next += uint64(off)
				return sent, failed, fmt.Errorf("packet sender: sendmmsg: %w", err)
			}
		}
		s.next += uint64(k)
	}
	return sent, failed, nil
}

// Close closes the socket.
func (s *PacketSender) Close() error {
	if err := unix.Close(s.fd); err != nil {
		return fmt.Errorf("packet sender: close: %w", err)
	}
	return nil
}
