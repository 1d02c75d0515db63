package xsk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
)

// testbed is a veth pair: host end (where XDP and the xsk sockets live)
// and wire end (where test traffic comes from), each in its own netns.
type testbed struct {
	hostNS, wireNS *netnstest.NS
	host, wire     netnstest.Link
}

func newTestbed(t testing.TB, queues int) *testbed {
	t.Helper()
	return newTestbedMTU(t, queues, 1500)
}

// newTestbedMTU is newTestbed with both veth ends at mtu.
func newTestbedMTU(t testing.TB, queues, mtu int) *testbed {
	t.Helper()
	testenv.RequireRoot(t)
	hostNS, wireNS := netnstest.New(t), netnstest.New(t)
	host, wire := netnstest.NewVethPair(t, hostNS, wireNS, netnstest.VethOptions{Queues: queues, MTU: mtu})
	return &testbed{hostNS: hostNS, wireNS: wireNS, host: host, wire: wire}
}

// maxQueues is the stride of the filter's XSKMAP index:
// slot*maxQueues + rx_queue_index.
const maxQueues = 8

// steering is vmq's real VMQ filter (package bpf) on the host end:
// (dst MAC) → slot → the slot's socket for the frame's rx queue; unknown
// unicast passes to the host stack. VM slots are 1..slots.
type steering struct {
	f *bpf.Filter
}

func newSteering(t testing.TB, tb *testbed, slots int) *steering {
	t.Helper()
	f, err := bpf.Load(bpf.Config{MaxVMs: slots, MaxQueues: maxQueues, Malformed: bpf.Drop, NoSocket: bpf.Pass})
	if err != nil {
		testenv.Skip(t, "load vmq filter: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	err = tb.hostNS.Do(func() error {
		_, err := f.Attach(tb.host.Index, bpf.Native)
		return err
	})
	if err != nil {
		testenv.Skip(t, "attach vmq filter natively to veth: %v", err)
	}
	return &steering{f: f}
}

func (s *steering) setMAC(t testing.TB, mac net.HardwareAddr, slot uint32) {
	t.Helper()
	if err := s.f.SetFilter(mac, 0, slot); err != nil {
		t.Fatalf("set filter %s → slot %d: %v", mac, slot, err)
	}
}

func (s *steering) register(t testing.TB, slot, queue int, sock *Socket) {
	t.Helper()
	if err := s.f.RegisterSocket(uint32(slot), uint32(queue), sock.FD()); err != nil {
		t.Fatalf("register socket slot %d queue %d: %v", slot, queue, err)
	}
}

func attachXDP(t testing.TB, ns *netnstest.NS, prog *ebpf.Program, ifindex int) link.Link {
	t.Helper()
	var l link.Link
	err := ns.Do(func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		testenv.Skip(t, "attach native XDP to veth: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func vmMAC(i int) net.HardwareAddr { return net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x01, byte(i)} }

// buildFrame writes an Ethernet/IPv4/UDP frame of size bytes (at least
// 66, the headers and payload) carrying payload p into b and returns it.
func buildFrame(b []byte, dst, src net.HardwareAddr, sport, dport uint16, p payload, size int) []byte {
	size = max(size, 42+payloadLen)
	f := b[:size]
	clear(f)
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(size-14))
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	copy(ip[12:16], []byte{10, 0, 0, 1})
	copy(ip[16:20], []byte{10, 0, 0, 2})
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(size-34))
	p.put(udp[8:])
	for i := 8 + payloadLen; i < len(udp); i++ {
		udp[i] = byte(i) ^ byte(p.Seq)
	}
	return f
}

// packetSock is an AF_PACKET socket on one interface inside a netns.
type packetSock struct {
	fd      int
	ifindex int
	buf     []byte
}

func openPacketSock(t testing.TB, ns *netnstest.NS, ifindex int) *packetSock {
	t.Helper()
	ps := &packetSock{ifindex: ifindex, buf: make([]byte, 16384)}
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		ps.fd = fd
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex})
	})
	if err != nil {
		t.Fatalf("open AF_PACKET socket on ifindex %d: %v", ifindex, err)
	}
	t.Cleanup(func() { unix.Close(ps.fd) })
	return ps
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (ps *packetSock) send(frame []byte) error {
	for {
		err := unix.Sendto(ps.fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ps.ifindex, Halen: 6})
		if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
			time.Sleep(100 * time.Microsecond)
			continue
		}
		return err
	}
}

// recv returns the next incoming (not outgoing) frame, or nil when none
// arrives within timeout.
func (ps *packetSock) recv(timeout time.Duration) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	for {
		n, from, err := unix.Recvfrom(ps.fd, ps.buf, unix.MSG_DONTWAIT)
		if err == nil {
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			return ps.buf[:n], nil
		}
		if !errors.Is(err, unix.EAGAIN) {
			return nil, fmt.Errorf("recv on AF_PACKET: %w", err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		pfd := []unix.PollFd{{Fd: int32(ps.fd), Events: unix.POLLIN}}
		_, _ = unix.Poll(pfd, int(min(left, 10*time.Millisecond).Milliseconds())+1)
	}
}

// openQueue opens a queue inside the host namespace, stocks its fill ring
// (frames arriving before that are dropped) and closes it at cleanup.
func openQueue(t testing.TB, tb *testbed, u *UMEM, queueID int, cfg QueueConfig) *Queue {
	t.Helper()
	var q *Queue
	err := tb.hostNS.Do(func() error {
		var err error
		q, err = u.OpenQueue(tb.host.Index, queueID, cfg)
		return err
	})
	if err != nil {
		t.Fatalf("open queue %d: %v", queueID, err)
	}
	t.Cleanup(func() { q.Close() })
	q.Refill(int(q.fill.size / 2)) // half: leave room for tests to Fill
	return q
}

func newUMEM(t testing.TB, cfg UMEMConfig) *UMEM {
	t.Helper()
	u, err := NewUMEM(cfg)
	if err != nil {
		t.Fatalf("new UMEM: %v", err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

func newSocket(t testing.TB, tb *testbed, q *Queue, cfg SocketConfig) *Socket {
	t.Helper()
	var s *Socket
	err := tb.hostNS.Do(func() error {
		var err error
		s, err = q.NewSocket(cfg)
		return err
	})
	if err != nil {
		t.Fatalf("new socket on queue %d: %v", q.ID(), err)
	}
	return s
}

// payload mirrors pktgen's payload layout (magic, stream, seq) without
// importing pktgen, which imports this package.
type payload struct {
	Stream uint32
	Seq    uint64
}

const (
	payloadMagic = 0x564d5131
	payloadLen   = 24
	udpDataOff   = 42 // untagged Ethernet + IPv4 without options + UDP
)

func (p payload) put(b []byte) {
	binary.BigEndian.PutUint32(b[0:], payloadMagic)
	binary.BigEndian.PutUint32(b[4:], p.Stream)
	binary.BigEndian.PutUint64(b[8:], p.Seq)
	binary.BigEndian.PutUint64(b[16:], 0)
}

// parseFrame reads the payload of a frame built by buildFrame.
func parseFrame(f []byte) (payload, bool) {
	if len(f) < udpDataOff+payloadLen || binary.BigEndian.Uint16(f[12:]) != 0x0800 ||
		f[23] != unix.IPPROTO_UDP || binary.BigEndian.Uint32(f[udpDataOff:]) != payloadMagic {
		return payload{}, false
	}
	return payload{
		Stream: binary.BigEndian.Uint32(f[udpDataOff+4:]),
		Seq:    binary.BigEndian.Uint64(f[udpDataOff+8:]),
	}, true
}
