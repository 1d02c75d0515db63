package dataplane

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// testbed is a NIC veth in a "host" namespace with the filter and the
// dataplane on it, its peer in a "wire" namespace, and Go guests.
type testbed struct {
	t          *testing.T
	host, wire *netnstest.NS
	nic, peer  netnstest.Link
	filter     *bpf.Filter
	dp         *Dataplane
	dir        string
	guests     map[string]*frontend.Guest
}

func newTestbed(t *testing.T, queues int) *testbed {
	t.Helper()
	return newTestbedCfg(t, queues, nil)
}

// newTestbedCfg is newTestbed with a hook to change the dataplane's
// config before it starts.
func newTestbedCfg(t *testing.T, queues int, change func(*Config)) *testbed {
	t.Helper()
	tb := &testbed{t: t, host: netnstest.New(t), wire: netnstest.New(t), dir: t.TempDir(),
		guests: make(map[string]*frontend.Guest)}
	for _, ns := range []*netnstest.NS{tb.host, tb.wire} {
		// No IPv6: its neighbour discovery would add frames to exact counts.
		ns.Run(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	tb.nic, tb.peer = netnstest.NewVethPair(t, tb.host, tb.wire, netnstest.VethOptions{Queues: queues, MTU: 1500})
	qids := make([]int, queues)
	for i := range qids {
		qids[i] = i
	}
	err := tb.host.Do(func() error {
		f, err := bpf.Load(bpf.Config{MaxVMs: 16, MaxQueues: max(queues, 2)})
		if err != nil {
			return err
		}
		tb.filter = f
		if _, err := f.Attach(tb.nic.Index, bpf.Native); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("filter: %v", err)
	}
	t.Cleanup(func() { tb.filter.Close() })
	h := tb.host.Handle()
	cfg := Config{Ifindex: tb.nic.Index, Queues: qids, Filter: tb.filter,
		BusyPoll: 20 * time.Microsecond, Netns: &h}
	if change != nil {
		change(&cfg)
	}
	tb.dp, err = New(cfg)
	if err != nil {
		t.Fatalf("dataplane: %v", err)
	}
	t.Cleanup(func() {
		if err := tb.dp.Close(); err != nil {
			t.Errorf("close dataplane: %v", err)
		}
	})
	return tb
}

// addVM adds a VM to the dataplane, steers its MAC to it and connects a
// Go guest, returning once the guest's queues run on the workers.
func (tb *testbed) addVM(name string, slot uint32, mac string, vlan uint16, pairs int, ip string) *frontend.Guest {
	t := tb.t
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	sock := filepath.Join(tb.dir, name+".sock")
	vm := VM{Name: name, Slot: slot, MAC: hw, VLAN: vlan, Socket: sock, QueuePairs: pairs}
	if err := tb.dp.AddVM(context.Background(), vm); err != nil {
		t.Fatalf("add VM %s: %v", name, err)
	}
	if err := tb.filter.SetFilter(hw, vlan, slot); err != nil {
		t.Fatalf("set filter of %s: %v", name, err)
	}
	cfg := frontend.Config{MAC: hw, QueuePairs: pairs, MrgRxbuf: true, EventIdx: true, QueueSize: 1024}
	if ip != "" {
		cfg.IP = netip.MustParseAddr(ip)
	}
	g, err := frontend.Dial(sock, cfg)
	if err != nil {
		t.Fatalf("guest %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		g.Close()
		if err := <-done; err != nil && !errors.Is(err, frontend.ErrClosed) {
			t.Logf("guest %s: %v", name, err)
		}
	})
	tb.guests[name] = g
	tb.waitRunning(name, 2*pairs)
	return g
}

// waitRunning waits until the VM's port has n running virtqueues.
func (tb *testbed) waitRunning(name string, n int) {
	tb.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		tb.dp.mu.RLock()
		e := tb.dp.vms[name]
		tb.dp.mu.RUnlock()
		running := 0
		for _, r := range e.port.State().Running {
			if r {
				running++
			}
		}
		if running == n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	tb.t.Fatalf("VM %s: virtqueues not running after 10s: %+v", name, tb.vmPort(name))
}

func (tb *testbed) vmPort(name string) any {
	tb.dp.mu.RLock()
	defer tb.dp.mu.RUnlock()
	return tb.dp.vms[name].port.State()
}

// send sends count frames to each destination from the wire, in bursts a
// 2-core machine sustains end to end (the test counts exactly).
func (tb *testbed) send(spec pktgen.FlowSpec, count int) {
	t := tb.t
	t.Helper()
	tmpl, err := pktgen.NewTemplate(spec)
	if err != nil {
		t.Fatal(err)
	}
	err = tb.wire.Do(func() error {
		g, err := pktgen.NewLiveGenerator(tmpl, pktgen.LiveOptions{Ifindex: tb.peer.Index})
		if err != nil {
			return err
		}
		defer g.Close()
		return sendPaced(g, count*len(spec.Dests))
	})
	if err != nil {
		t.Fatalf("send from the wire: %v", err)
	}
}

// sendPaced sends total frames in bursts of 128 at no more than 100k
// frames/s: a pace the whole path sustains on two busy cores, so exact
// counts hold.
func sendPaced(g *pktgen.LiveGenerator, total int) error {
	_, err := pktgen.Run(context.Background(), g, pktgen.RunOptions{Count: uint64(total), Rate: 100000, Burst: 128})
	return err
}

// vmStats returns the dataplane's counters of one VM.
func (tb *testbed) vmStats(name string) VMStats {
	for _, v := range tb.dp.Snapshot().VMs {
		if v.Name == name {
			return v
		}
	}
	tb.t.Fatalf("no VM %s in snapshot", name)
	return VMStats{}
}

// waitRx waits until a guest has received exactly want frames, then
// checks that no more arrive.
func waitRx(t *testing.T, name string, g *frontend.Guest, want uint64) {
	t.Helper()
	testenv.Eventually(t, name+" rx", func() (bool, string) {
		got := g.Stats().RxFrames
		return got >= want, fmt.Sprintf("%s received %d of %d", name, got, want)
	})
	time.Sleep(50 * time.Millisecond)
	if got := g.Stats().RxFrames; got != want {
		t.Fatalf("%s received %d frames, want exactly %d", name, got, want)
	}
}

// wireCapture reads frames arriving at the wire end, with their VLAN tags
// put back (the kernel moves them into metadata).
type wireCapture struct {
	fd     int
	mu     sync.Mutex
	frames [][]byte
	stop   atomic.Bool
	done   chan struct{}
}

func (tb *testbed) captureWire() *wireCapture {
	t := tb.t
	t.Helper()
	c := &wireCapture{fd: -1, done: make(chan struct{})}
	err := tb.wire.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		c.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: tb.peer.Index})
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

func (c *wireCapture) loop() {
	defer close(c.done)
	buf := make([]byte, 4096)
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

// matching returns the captured frames for which keep is true.
func (c *wireCapture) matching(keep func([]byte) bool) [][]byte {
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
