package dataplane

// Checksum and TSO offloads with real peers: Linux guests under QEMU that
// negotiate CSUM, GUEST_CSUM, HOST_TSO4/6 and GUEST_TSO4/6 with vmq, TCP
// transfers between them and with a Go TCP peer on the wire, a sniffer on
// the wire checking every frame vmq puts there.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/guest/qemu"
	tbed "github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/xorstream"
)

// tcpxBinary cross-builds the guest's TCP transfer program (static).
func tcpxBinary(t testing.TB) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "tcpx")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./testdata/tcpx")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build tcpx: %v\n%s", err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// tcpGuest is a Linux guest with tcpx in its initramfs.
type tcpGuest struct {
	spec tbed.LinuxGuest
	g    *qemu.Guest
}

// addTCPGuest boots a guest with tcpx on a vmq port (offloads offered
// unless noOffloads), returning once its eth0 is up.
func (tb *testbed) addTCPGuest(spec tbed.LinuxGuest, slot uint32, noOffloads bool, tcpx []byte) *tcpGuest {
	tb.t.Helper()
	initrd := tb.initrdWith(guestSpec{name: spec.Name, ip: spec.IP},
		qemu.File{Name: "bin/tcpx", Mode: qemu.ModeRegular | 0o755, Data: tcpx})
	tb.addPort(VM{Name: spec.Name, Slot: slot, MAC: mustMAC(spec.MAC), Socket: tb.Socket(spec.Name),
		QueuePairs: 1, NoOffloads: noOffloads})
	return &tcpGuest{spec: spec, g: tb.bootLinux(spec, initrd, false)}
}

// transfer is one tcpx report: bytes, their SHA-256, wall and guest CPU ms.
type transfer struct {
	n         int64
	sum       string
	ms, cpuMS int64
}

func parseTransfer(t testing.TB, who, out, tag string) transfer {
	t.Helper()
	i := strings.Index(out, tag+" ")
	if i < 0 {
		t.Fatalf("%s: no %s line in:\n%s", who, tag, out)
	}
	f := strings.Fields(out[i+len(tag)+1:])
	if len(f) < 4 {
		t.Fatalf("%s: short %s line in:\n%s", who, tag, out)
	}
	var r transfer
	r.n, _ = strconv.ParseInt(f[0], 10, 64)
	r.sum = f[1]
	r.ms, _ = strconv.ParseInt(f[2], 10, 64)
	r.cpuMS, _ = strconv.ParseInt(f[3], 10, 64)
	return r
}

// listen runs `tcpx recv port` in the foreground of the guest's shell,
// from a goroutine, and returns a wait for its report. (A background job
// that exits while the guest's init shell reads the console can end that
// shell, and the guest with it.) Senders retry until it listens.
func (g *tcpGuest) listen(t testing.TB, port int, args ...string) (wait func() transfer) {
	t.Helper()
	type result struct {
		out string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
		defer cancel()
		out, err := g.g.Exec(ctx, strings.TrimSpace(fmt.Sprintf("tcpx recv %d %s", port, strings.Join(args, " "))))
		ch <- result{out, err}
	}()
	return func() transfer {
		t.Helper()
		r := <-ch
		if r.err != nil {
			t.Fatalf("%s: receive on port %d: %v", g.spec.Name, port, r.err)
		}
		return parseTransfer(t, g.spec.Name+" receiver", r.out, "TCPX-RECV")
	}
}

// send runs `tcpx send addr n` in the guest.
func (g *tcpGuest) send(t testing.TB, addr string, n int, args ...string) transfer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	out, err := g.g.Exec(ctx, strings.TrimSpace(fmt.Sprintf("tcpx send %s %d %s", addr, n, strings.Join(args, " "))))
	if err != nil {
		t.Fatalf("%s: send to %s: %v", g.spec.Name, addr, err)
	}
	return parseTransfer(t, g.spec.Name+" sender", out, "TCPX-SENT")
}

// tcpxStream is tcpx's byte stream (xorshift64, 256 KiB writes), for
// the wire's sender.
func tcpxStream(w io.Writer, total int) (string, error) {
	h := sha256.New()
	buf := make([]byte, 256<<10)
	x := xorstream.Seed
	for sent := 0; sent < total; {
		n := min(len(buf), total-sent)
		xorstream.Fill(buf[:n], &x)
		h.Write(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return "", err
		}
		sent += n
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sniffer checks every frame arriving at the wire end (from vmq): each
// IPv4/IPv6 TCP frame must be a valid one of at most 1514 bytes with
// right checksums.
type sniffer struct {
	fd       int
	limit    int // largest frame allowed
	tcp, bad atomic.Uint64
	mu       sync.Mutex
	errs     []string
	frames   [][]byte // the valid TCP frames, if keep
	stop     atomic.Bool
	done     chan struct{}
	keep     bool
}

func (tb *testbed) sniff() *sniffer { return tb.sniffMTU(1500, false) }

// sniffMTU is sniff for frames of up to mtu+14 bytes; keep keeps the
// valid TCP frames (see kept).
func (tb *testbed) sniffMTU(mtu int, keep bool) *sniffer {
	t := tb.t
	t.Helper()
	// One skb per wire frame: no GRO on the receiving end. And the wire
	// acts as a NIC would: the veth's own checksum offload would hand vmq
	// frames whose TCP checksum is still open (only the pseudo-header
	// sum), which no guest may be given as complete.
	tb.Wire.Run(t, "ethtool", "-K", tb.Peer.Name, "gro", "off", "tx", "off")
	s := &sniffer{fd: -1, limit: ethHdrLen + mtu, keep: keep, done: make(chan struct{})}
	proto := int(htons(unix.ETH_P_ALL))
	err := tb.Wire.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		s.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: tb.Peer.Index})
	})
	if err != nil {
		t.Fatalf("sniffer: %v", err)
	}
	unix.SetsockoptTimeval(s.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	go s.loop()
	t.Cleanup(func() {
		if t.Failed() {
			s.mu.Lock()
			t.Logf("wire sniffer: %d TCP frames, %d bad: %v", s.tcp.Load(), s.bad.Load(), s.errs)
			s.mu.Unlock()
		}
		s.stop.Store(true)
		<-s.done
		unix.Close(s.fd)
	})
	return s
}

func (s *sniffer) loop() {
	defer close(s.done)
	buf := make([]byte, 1<<16)
	for !s.stop.Load() {
		// MSG_TRUNC: n is the frame's real length even past the buffer.
		n, _, _, from, err := unix.Recvmsg(s.fd, buf, nil, unix.MSG_TRUNC)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		frame := buf[:min(n, len(buf))]
		if _, ok := parseTCP(frame); !ok && n <= len(buf) {
			continue // ARP and the like
		}
		s.tcp.Add(1)
		if n > len(buf) {
			s.fail(fmt.Sprintf("frame of %d bytes", n))
			continue
		}
		if _, _, err := checkSegment(frame, s.limit); err != nil {
			s.fail(err.Error())
		} else if s.keep {
			s.mu.Lock()
			s.frames = append(s.frames, bytes.Clone(frame))
			s.mu.Unlock()
		}
	}
}

// kept returns the valid TCP frames kept so far.
func (s *sniffer) kept() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.frames...)
}

func (s *sniffer) fail(msg string) {
	s.bad.Add(1)
	s.mu.Lock()
	if len(s.errs) < 10 {
		s.errs = append(s.errs, msg)
	}
	s.mu.Unlock()
}

func (s *sniffer) check(t testing.TB, min uint64) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bad.Load() > 0 || s.tcp.Load() < min {
		t.Fatalf("wire sniffer: %d TCP frames (want at least %d), %d bad: %v", s.tcp.Load(), min, s.bad.Load(), s.errs)
	}
	t.Logf("wire sniffer: %d TCP frames from vmq, all valid and within the MTU", s.tcp.Load())
}

// wireListen accepts one TCP connection on the wire and hashes what it
// reads; the result comes on the channel.
func (tb *testbed) wireListen(t testing.TB, port int) <-chan transfer {
	t.Helper()
	return tb.wireListenOn(t, "tcp4", fmt.Sprintf("%s:%d", wireIP, port))
}

func (tb *testbed) wireListenOn(t testing.TB, network, addr string) <-chan transfer {
	t.Helper()
	var ln net.Listener
	err := tb.Wire.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on the wire: %v", err)
	}
	ch := make(chan transfer, 1)
	go func() {
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			ch <- transfer{n: -1}
			return
		}
		defer c.Close()
		h := sha256.New()
		n, _ := io.Copy(h, c)
		ch <- transfer{n: n, sum: hex.EncodeToString(h.Sum(nil))}
	}()
	t.Cleanup(func() { ln.Close() })
	return ch
}

// wireSend connects from the wire to addr and sends n bytes of tcpx's stream.
func (tb *testbed) wireSend(t testing.TB, addr string, n int) transfer {
	t.Helper()
	var c net.Conn
	var err error
	// Until the guest's receiver listens: refused.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		err = tb.Wire.Do(func() (err error) {
			c, err = net.DialTimeout("tcp4", addr, 10*time.Second)
			return err
		})
		if !errors.Is(err, unix.ECONNREFUSED) {
			break
		}
	}
	if err != nil {
		t.Fatalf("dial %s from the wire: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(120 * time.Second))
	sum, err := tcpxStream(c, n)
	if err != nil {
		t.Fatalf("send to %s from the wire: %v", addr, err)
	}
	return transfer{n: int64(n), sum: sum}
}

func sameStream(t testing.TB, what string, sent, got transfer) {
	t.Helper()
	if sent.n != got.n || sent.sum != got.sum {
		t.Fatalf("%s: sent %d bytes (sha256 %s), received %d (sha256 %s)", what, sent.n, sent.sum, got.n, got.sum)
	}
	t.Logf("%s: %d bytes intact, sender %d ms (guest CPU %d ms), receiver %d ms (guest CPU %d ms)",
		what, sent.n, sent.ms, sent.cpuMS, got.ms, got.cpuMS)
}

func checkOffloadFeatures(t testing.TB, name string, p PortStats, want bool) {
	t.Helper()
	bits := map[string]uint64{"CSUM": virtio.NetFCsum, "GUEST_CSUM": virtio.NetFGuestCsum,
		"HOST_TSO4": virtio.NetFHostTSO4, "HOST_TSO6": virtio.NetFHostTSO6,
		"GUEST_TSO4": virtio.NetFGuestTSO4, "GUEST_TSO6": virtio.NetFGuestTSO6}
	for n, b := range bits {
		if (p.Features&b != 0) != want {
			t.Errorf("%s: negotiated features %#x: %s %v, want %v", name, p.Features, n, p.Features&b != 0, want)
		}
	}
}

// TestLinuxGuestOffloads: two Linux guests with checksum and TSO offloads
// negotiated move a TCP stream between them (64 KiB segments passed as
// they are), a guest sends to the wire (vmq cuts the segments and fills
// the checksums; a sniffer checks every frame), the wire sends to a
// guest, and a guest sends to a third guest that switched offloads off
// (vmq cuts for it too). Every stream's SHA-256 is compared.
func TestLinuxGuestOffloads(t *testing.T) {
	tcpx := tcpxBinary(t)
	b := newLinuxBed(t, 1)
	a := b.addTCPGuest(tbed.LinuxGuest{Name: "ofa", MAC: "52:54:00:00:99:21", IP: "10.99.0.21", Pairs: 1, CPUs: 1}, 1, false, tcpx)
	c := b.addTCPGuest(tbed.LinuxGuest{Name: "ofb", MAC: "52:54:00:00:99:22", IP: "10.99.0.22", Pairs: 1, CPUs: 1}, 2, false, tcpx)
	d := b.addTCPGuest(tbed.LinuxGuest{Name: "ofc", MAC: "52:54:00:00:99:23", IP: "10.99.0.23", Pairs: 1, CPUs: 1}, 3, true, tcpx)
	checkOffloadFeatures(t, "ofa", b.portStats("ofa"), true)
	checkOffloadFeatures(t, "ofb", b.portStats("ofb"), true)
	checkOffloadFeatures(t, "ofc", b.portStats("ofc"), false)
	sn := b.sniff()
	const size = 8 << 20

	// VM to VM, both with offloads: large segments pass as they are.
	wait := c.listen(t, 5001)
	sent := a.send(t, c.spec.IP+":5001", size)
	sameStream(t, "ofa -> ofb", sent, wait())
	st := b.vmStats("ofa")
	if st.Offload.Passed == 0 || st.TxBytes/max(st.TxPackets, 1) <= 1514 {
		t.Fatalf("ofa -> ofb: no segment larger than the MTU passed: %+v", st)
	}
	t.Logf("ofa -> ofb: %d frames, %d bytes each on average, %+v", st.TxPackets, st.TxBytes/st.TxPackets, st.Offload)

	// Guest to wire: vmq segments and checksums.
	got := b.wireListen(t, 5002)
	sent = a.send(t, wireIP+":5002", size)
	sameStream(t, "ofa -> wire", sent, <-got)
	st2 := b.vmStats("ofa")
	if st2.Offload.Segmented == 0 {
		t.Fatalf("ofa -> wire: nothing segmented: %+v", st2.Offload)
	}
	t.Logf("ofa -> wire: %+v", st2.Offload)

	// Wire to guest.
	wait = c.listen(t, 5003)
	sameStream(t, "wire -> ofb", b.wireSend(t, c.spec.IP+":5003", size), wait())

	// To a guest without offloads: vmq segments for it.
	wait = d.listen(t, 5004)
	sent = a.send(t, d.spec.IP+":5004", size)
	sameStream(t, "ofa -> ofc (offloads off)", sent, wait())
	st3 := b.vmStats("ofa")
	if st3.Offload.Segmented == st2.Offload.Segmented {
		t.Fatalf("ofa -> ofc: nothing segmented: %+v", st3.Offload)
	}
	// And back, from the guest without offloads: plain frames.
	wait = a.listen(t, 5005)
	sent = d.send(t, a.spec.IP+":5005", size/4)
	sameStream(t, "ofc -> ofa", sent, wait())

	// IPv6 (TSO6): to the wire and to the guest without offloads. Static
	// addresses without duplicate address detection, so nothing waits.
	b.Wire.Run(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
		"net.ipv6.conf."+b.Peer.Name+".accept_dad=0", "net.ipv6.conf."+b.Peer.Name+".disable_ipv6=0")
	b.Wire.Run(t, "ip", "-6", "addr", "add", "fd00:99::1/64", "dev", b.Peer.Name, "nodad")
	for i, g := range []*tcpGuest{a, d} {
		tbed.GuestExec(t, g.g, "echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad; echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "+
			"echo 0 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6; ip -6 addr add fd00:99::"+strconv.Itoa(21+2*i)+"/64 dev eth0")
	}
	before := b.vmStats("ofa").Offload.Segmented
	got = b.wireListenOn(t, "tcp6", "[fd00:99::1]:5006")
	sent = a.send(t, "[fd00:99::1]:5006", size/2)
	sameStream(t, "ofa -> wire (IPv6)", sent, <-got)
	wait = d.listen(t, 5007)
	sent = a.send(t, "[fd00:99::23]:5007", size/2)
	sameStream(t, "ofa -> ofc (IPv6, offloads off)", sent, wait())
	if v := b.vmStats("ofa").Offload; v.Segmented == before {
		t.Fatalf("IPv6: nothing segmented: %+v", v)
	}
	if p := b.portStats("ofa"); p.Features&virtio.NetFHostTSO6 == 0 {
		t.Fatalf("ofa did not negotiate HOST_TSO6: %#x", p.Features)
	}

	sn.check(t, size/1448+size/2/1428)
	// A TCP stream may lose frames to a guest slow to post buffers (TCP
	// resends them); none may be refused for its header or shape.
	for _, n := range []string{"ofa", "ofb", "ofc"} {
		v := b.vmStats(n)
		for _, r := range []DropReason{DropBadOffload, DropMalformed, DropBroken, DropNoUMEMFrame} {
			if v.Drops[r] > 0 {
				t.Errorf("VM %s: %d frames dropped: %s", n, v.Drops[r], r)
			}
		}
		t.Logf("VM %s: rx %d tx %d frames, drops %v, offload %+v", n, v.RxPackets, v.TxPackets, v.DropsByReason, v.Offload)
	}
}

// BenchmarkLinuxGuestTCP moves a 16 MiB TCP stream between two Linux
// guests (QEMU, TCG) through vmq, with the checksum and TSO offloads
// offered to both and to neither. Besides the rate it reports the CPU
// time both guests spent per MiB (busy jiffies of their /proc/stat).
// Root; about a minute with the boots:
//
//	go test -run '^$' -bench LinuxGuestTCP -benchtime 3x ./dataplane
func BenchmarkLinuxGuestTCP(b *testing.B) {
	tcpx := tcpxBinary(b)
	const size = 16 << 20
	for _, on := range []bool{true, false} {
		b.Run(map[bool]string{true: "offloads=on", false: "offloads=off"}[on], func(b *testing.B) {
			tb := newLinuxBed(b, 1)
			src := tb.addTCPGuest(tbed.LinuxGuest{Name: "bsrc", MAC: "52:54:00:00:99:31", IP: "10.99.0.31", Pairs: 1, CPUs: 1}, 1, !on, tcpx)
			dst := tb.addTCPGuest(tbed.LinuxGuest{Name: "bdst", MAC: "52:54:00:00:99:32", IP: "10.99.0.32", Pairs: 1, CPUs: 1}, 2, !on, tcpx)
			checkOffloadFeatures(b, "bsrc", tb.portStats("bsrc"), on)
			// Warm up: ARP, slow start, page cache of the binaries.
			wait := dst.listen(b, 5000)
			sameStream(b, "warm-up", src.send(b, dst.spec.IP+":5000", 1<<20), wait())
			b.SetBytes(size)
			var cpuMS, port int64 = 0, 5001
			for b.Loop() {
				wait := dst.listen(b, int(port), "fast")
				sent := src.send(b, fmt.Sprintf("%s:%d", dst.spec.IP, port), size, "fast")
				got := wait()
				if got.n != size {
					b.Fatalf("stream differs: sent %d %s, got %d %s", sent.n, sent.sum, got.n, got.sum)
				}
				cpuMS += sent.cpuMS + got.cpuMS
				port++
			}
			b.ReportMetric(float64(cpuMS)/float64(b.N)/(size>>20), "guest-cpu-ms/MiB")
			v := tb.vmStats("bsrc")
			b.ReportMetric(float64(v.TxBytes)/float64(max(v.TxPackets, 1)), "bytes/frame")
		})
	}
}
