// Package pktgen builds test traffic and reads it back: the payload that
// vmq-pktgen stamps into every frame and that receivers (vmq-guest, tests)
// parse to count loss, reordering and latency.
package pktgen

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// PayloadMagic marks a vmq-pktgen payload ("VMQ1").
const PayloadMagic uint32 = 0x564d5131

// PayloadLen is the size of a stamped payload at the start of the UDP data.
const PayloadLen = 24

// Payload is what vmq-pktgen writes at the start of each frame's UDP data,
// big-endian: magic(4) stream(4) seq(8) timestamp(8).
type Payload struct {
	// Stream identifies one sender (or one destination of a sender), so a
	// receiver tracks sequence numbers per stream.
	Stream uint32
	// Seq counts frames of the stream from 0.
	Seq uint64
	// TimestampNS is CLOCK_MONOTONIC at send time, comparable between
	// processes of one host.
	TimestampNS uint64
}

// Put writes p into b, which must be at least PayloadLen bytes.
func (p Payload) Put(b []byte) {
	_ = b[PayloadLen-1]
	binary.BigEndian.PutUint32(b[0:], PayloadMagic)
	binary.BigEndian.PutUint32(b[4:], p.Stream)
	binary.BigEndian.PutUint64(b[8:], p.Seq)
	binary.BigEndian.PutUint64(b[16:], p.TimestampNS)
}

// ParsePayload reads a payload from the start of b.
func ParsePayload(b []byte) (Payload, bool) {
	if len(b) < PayloadLen || binary.BigEndian.Uint32(b) != PayloadMagic {
		return Payload{}, false
	}
	return Payload{
		Stream:      binary.BigEndian.Uint32(b[4:]),
		Seq:         binary.BigEndian.Uint64(b[8:]),
		TimestampNS: binary.BigEndian.Uint64(b[16:]),
	}, true
}

// Header sizes of the frames vmq-pktgen builds.
const (
	EthHdrLen  = 14
	VLANHdrLen = 4
	IPv4HdrLen = 20
	UDPHdrLen  = 8
)

// UDPDataOffset returns where the UDP data starts in an Ethernet frame
// carrying IPv4/UDP, untagged or with one or two VLAN tags, or false if the
// frame is not such a frame. It reads no byte outside frame.
func UDPDataOffset(frame []byte) (int, bool) {
	off := 12
	for {
		if len(frame) < off+2 {
			return 0, false
		}
		et := binary.BigEndian.Uint16(frame[off:])
		off += 2
		if et == 0x8100 || et == 0x88a8 {
			off += 2 // skip the TCI; the inner ethertype follows
			continue
		}
		if et != 0x0800 {
			return 0, false
		}
		break
	}
	if len(frame) < off+IPv4HdrLen {
		return 0, false
	}
	ihl := int(frame[off]&0x0f) * 4
	if frame[off]>>4 != 4 || ihl < IPv4HdrLen || frame[off+9] != unix.IPPROTO_UDP {
		return 0, false
	}
	off += ihl
	if len(frame) < off+UDPHdrLen {
		return 0, false
	}
	return off + UDPHdrLen, true
}

// ParseFrame finds and parses the payload of an IPv4/UDP frame.
func ParseFrame(frame []byte) (Payload, bool) {
	off, ok := UDPDataOffset(frame)
	if !ok {
		return Payload{}, false
	}
	return ParsePayload(frame[off:])
}

// MonotonicNS returns CLOCK_MONOTONIC in nanoseconds, the clock of
// Payload.TimestampNS.
func MonotonicNS() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // cannot fail for this clock
	return uint64(ts.Nano())
}
