package xsk

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Multi-buffer (XDP_USE_SG): a frame larger than one chunk travels as
// several descriptors, each inside one chunk, every one but the last
// flagged PktContd. On rx the kernel copies a jumbo frame into as many
// fill-ring chunks as it needs (chunk size minus the headroom each); on tx
// the caller spreads a frame over several frames of its own.

// PktContd is XDP_PKT_CONTD: more descriptors of this packet follow.
const PktContd = unix.XDP_PKT_CONTD

// MaxTxDescs is the most descriptors one transmitted packet may have. In
// copy mode the kernel builds an skb from the first descriptor and one
// fragment per further one, up to MAX_SKB_FRAGS (17 in every default
// config) and refuses longer packets (EOVERFLOW); 17 in all keeps a margin
// and still carries 34 KB with 2048-byte frames.
const MaxTxDescs = 17

// ErrNoMultiBuffer is wrapped by ProbeMultiBuffer and OpenQueue when the
// kernel has no AF_XDP multi-buffer support.
var ErrNoMultiBuffer = errors.New("kernel has no AF_XDP multi-buffer support (XDP_USE_SG, Linux 6.6 or later)")

// ProbeMultiBuffer reports whether the running kernel knows XDP_USE_SG.
// It binds a fresh AF_XDP socket with that flag to ifindex 0: a kernel
// that knows the flag gets as far as looking the device up (ENODEV), an
// older one refuses the flag (EINVAL).
func ProbeMultiBuffer() error {
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("probe AF_XDP multi-buffer: create AF_XDP socket: %w", err)
	}
	defer unix.Close(fd)
	err = unix.Bind(fd, &unix.SockaddrXDP{Flags: unix.XDP_USE_SG | unix.XDP_COPY})
	switch {
	case errors.Is(err, unix.ENODEV):
		return nil
	case errors.Is(err, unix.EINVAL):
		return ErrNoMultiBuffer
	case err == nil:
		return errors.New("probe AF_XDP multi-buffer: bind to ifindex 0 succeeded")
	}
	return fmt.Errorf("probe AF_XDP multi-buffer: %w", err)
}

// MultiBuffer reports whether the queue's sockets were bound with
// XDP_USE_SG (frames may span several descriptors).
func (q *Queue) MultiBuffer() bool { return q.multiBuf }

// RxChunk is how many bytes of a frame one rx descriptor carries at most:
// the chunk less the kernel's and the UMEM's headroom.
func (q *Queue) RxChunk() int {
	return q.umem.frameSize - unix.XDP_PACKET_HEADROOM - q.umem.headroom
}

// wholePackets trims n peeked rx entries starting at idx to whole packets.
// A packet longer than the caller's slice (want entries) can never be
// taken: it is dropped here, its frames back to the allocator, and counted.
func (s *Socket) wholePackets(idx, n, want uint32) uint32 {
	end := n
	for end > 0 && s.rx.at(idx+end-1).Options&PktContd != 0 {
		end--
	}
	if end > 0 || n < want {
		return end // whole packets, or the first one not yet published
	}
	// The first packet alone fills the slice: find its last descriptor.
	avail := s.rx.avail(n + 1)
	last := n
	for last < avail && s.rx.at(idx+last).Options&PktContd != 0 {
		last++
	}
	if last == avail {
		return 0 // its end is not published yet
	}
	for i := uint32(0); i <= last; i++ {
		s.q.pool.putFrom(s.rx.at(idx+i).Addr, frameKernel)
	}
	s.q.pool.sync()
	s.rx.release(last + 1)
	s.q.received.Add(uint64(last + 1))
	s.rxTooLong.Add(1)
	return 0
}

// txPacketEnd returns how many of descs[:n] form whole packets (the last
// one's final descriptor without PktContd).
func txPacketEnd(descs []Desc, n uint32) uint32 {
	for n > 0 && descs[n-1].Options&PktContd != 0 {
		n--
	}
	return n
}
