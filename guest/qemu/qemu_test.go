package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
)

// bed is the dataplane's testbed in small: a veth NIC in a host namespace
// with the XDP filter and vmq's workers on it, its peer in a wire
// namespace that plays the network (10.99.0.1/24).
type bed struct {
	t          *testing.T
	host, wire *netnstest.NS
	nic, peer  netnstest.Link
	filter     *bpf.Filter
	dp         *dataplane.Dataplane
	dir        string
}

const wireIP = "10.99.0.1"

func newBed(t *testing.T, queues int) *bed {
	t.Helper()
	testenv.RequireRoot(t)
	b := &bed{t: t, host: netnstest.New(t), wire: netnstest.New(t), dir: t.TempDir()}
	for _, ns := range []*netnstest.NS{b.host, b.wire} {
		ns.Run(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	}
	b.nic, b.peer = netnstest.NewVethPair(t, b.host, b.wire, netnstest.VethOptions{Queues: queues, MTU: 1500})
	b.wire.Run(t, "ip", "addr", "add", wireIP+"/24", "dev", b.peer.Name)
	err := b.host.Do(func() error {
		f, err := bpf.Load(bpf.Config{MaxVMs: 16, MaxQueues: max(queues, 2)})
		if err != nil {
			return err
		}
		b.filter = f
		_, err = f.Attach(b.nic.Index, bpf.Native)
		return err
	})
	if err != nil {
		t.Fatalf("filter: %v", err)
	}
	t.Cleanup(func() { b.filter.Close() })
	qids := make([]int, queues)
	for i := range qids {
		qids[i] = i
	}
	h := b.host.Handle()
	b.dp, err = dataplane.New(dataplane.Config{Ifindex: b.nic.Index, Queues: qids, Filter: b.filter,
		BusyPoll: 20 * time.Microsecond, Netns: &h})
	if err != nil {
		t.Fatalf("dataplane: %v", err)
	}
	t.Cleanup(func() {
		if err := b.dp.Close(); err != nil {
			t.Errorf("close dataplane: %v", err)
		}
	})
	return b
}

// guestSpec is one Linux guest on the bed.
type guestSpec struct {
	name  string
	slot  uint32
	mac   string
	ip    string // in 10.99.0.0/24
	pairs int
	cpus  int
}

// requireGuestTools returns the kernel and busybox, or skips.
func requireGuestTools(t *testing.T) (Kernel, string) {
	t.Helper()
	testenv.RequireCommand(t, "qemu-system-x86_64")
	bb := testenv.RequireCommand(t, "busybox")
	if err := checkStatic(bb); err != nil {
		testenv.Skip(t, "%v", err)
	}
	k, err := FindKernel()
	if err != nil {
		testenv.Skip(t, "%v", err)
	}
	return k, bb
}

// addGuest adds the VM to vmq (listening on its socket), steers its MAC
// and boots QEMU on the socket, returning once eth0 is configured.
func (b *bed) addGuest(spec guestSpec) *Guest {
	b.t.Helper()
	initrd := b.initrd(spec)
	b.addVM(spec, false)
	return b.boot(spec, initrd, false)
}

// initrd builds the guest's initramfs.
func (b *bed) initrd(spec guestSpec) string {
	t := b.t
	t.Helper()
	k, bb := requireGuestTools(t)
	mods, err := k.Modules(NetModules...)
	if err != nil {
		t.Fatalf("guest modules: %v", err)
	}
	initrd := filepath.Join(b.dir, spec.name+".initrd")
	prefix := netip.PrefixFrom(netip.MustParseAddr(spec.ip), 24)
	if err := (Initramfs{Busybox: bb, Modules: mods, Init: InitScript(ModuleNames(mods), prefix)}).Write(initrd); err != nil {
		t.Fatal(err)
	}
	return initrd
}

func (b *bed) socket(spec guestSpec) string { return filepath.Join(b.dir, spec.name+".sock") }

// addVM adds the VM to the dataplane (client: vmq connects to QEMU's
// socket) and steers its MAC to its slot.
func (b *bed) addVM(spec guestSpec, client bool) {
	t := b.t
	t.Helper()
	hw, _ := net.ParseMAC(spec.mac)
	vm := dataplane.VM{Name: spec.name, Slot: spec.slot, MAC: hw, Socket: b.socket(spec),
		Client: client, QueuePairs: spec.pairs}
	if err := b.dp.AddVM(context.Background(), vm); err != nil {
		t.Fatalf("add VM %s: %v", spec.name, err)
	}
	if err := b.filter.SetFilter(hw, 0, spec.slot); err != nil {
		t.Fatalf("set filter of %s: %v", spec.name, err)
	}
}

// boot starts QEMU (server: QEMU listens) and waits for the guest's eth0.
// The guest is killed at cleanup.
func (b *bed) boot(spec guestSpec, initrd string, server bool) *Guest {
	t := b.t
	t.Helper()
	k, _ := requireGuestTools(t)
	hw, _ := net.ParseMAC(spec.mac)
	g, err := Start(Config{Kernel: k.Image, Initrd: initrd, Socket: b.socket(spec), Server: server, MAC: hw,
		QueuePairs: spec.pairs, CPUs: spec.cpus, QEMU: os.Getenv("VMQ_QEMU"),
		Extra: strings.Fields(os.Getenv("VMQ_QEMU_EXTRA")),
		Log:   func(line string) { t.Logf("%s console: %s", spec.name, line) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("guest %s: %v", spec.name, err)
		}
		if t.Failed() {
			t.Logf("%s qemu stderr: %s", spec.name, g.Stderr())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	if err := g.WaitBoot(ctx); err != nil {
		t.Fatalf("%s: %v\nport: %+v", spec.name, err, b.port(spec.name))
	}
	t.Logf("%s booted in %v", spec.name, time.Since(start).Round(time.Millisecond))
	if out := g.Console(); strings.Contains(out, "VMQ-INSMOD-FAILED") {
		t.Fatalf("%s: a module did not load:\n%s", spec.name, out)
	}
	return g
}

func (b *bed) port(name string) dataplane.PortStats {
	for _, p := range b.dp.Snapshot().Ports {
		if p.VM == name {
			return p
		}
	}
	b.t.Fatalf("no port of VM %s in snapshot", name)
	return dataplane.PortStats{}
}

func (b *bed) vm(name string) dataplane.VMStats {
	for _, v := range b.dp.Snapshot().VMs {
		if v.Name == name {
			return v
		}
	}
	b.t.Fatalf("no VM %s in snapshot", name)
	return dataplane.VMStats{}
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)

// checkPing parses a ping summary (iputils or busybox) and requires every
// one of want echoes answered.
func checkPing(t *testing.T, who, out string, want int) {
	t.Helper()
	m := pingSummary.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%s: no ping summary in:\n%s", who, out)
	}
	sent, _ := strconv.Atoi(m[1])
	got, _ := strconv.Atoi(m[2])
	if sent != want || got != want {
		t.Fatalf("%s: %d sent, %d received, want %d of %d:\n%s", who, sent, got, want, want, out)
	}
}

// pingFromWire runs iputils ping in the wire namespace; "-cpu", "N" in
// args pins it to CPU N.
func (b *bed) pingFromWire(dst string, args ...string) string {
	b.t.Helper()
	argv := []string{"ping"}
	for i := 0; i < len(args); i++ {
		if args[i] == "-cpu" && i+1 < len(args) {
			argv = append([]string{"taskset", "-c", args[i+1]}, argv...)
			i++
			continue
		}
		argv = append(argv, args[i])
	}
	cmd := b.wire.Command(argv[0], append(argv[1:], dst)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.t.Fatalf("ping %s from the wire: %v\n%s", dst, err, out)
	}
	return string(out)
}

func guestExec(t *testing.T, g *Guest, cmd string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := g.Exec(ctx, cmd)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	return out
}

// checkFeatures requires the virtio features a Linux guest negotiates
// with vmq's defaults, EVENT_IDX above all (DPDK never negotiates it).
func checkFeatures(t *testing.T, p dataplane.PortStats, pairs int) {
	t.Helper()
	want := map[string]uint64{"VERSION_1": virtio.FVersion1, "EVENT_IDX": virtio.RingFEventIdx,
		"MRG_RXBUF": virtio.NetFMrgRxbuf, "INDIRECT_DESC": virtio.RingFIndirectDesc}
	if pairs > 1 {
		want["MQ"] = virtio.NetFMQ
	}
	for name, bit := range want {
		if p.Features&bit == 0 {
			t.Errorf("negotiated features %#x lack %s", p.Features, name)
		}
	}
	if !p.Connected || p.Broken != "" {
		t.Errorf("port: connected %v, broken %q", p.Connected, p.Broken)
	}
	if len(p.RingSizes) < 2*pairs {
		t.Errorf("port has %d rings (%v), want %d", len(p.RingSizes), p.RingSizes, 2*pairs)
	}
}

func checkNoDrops(t *testing.T, v dataplane.VMStats) {
	t.Helper()
	for r, n := range v.DropsByReason {
		t.Errorf("VM %s dropped %d frames: %s", v.Name, n, r)
	}
}

// TestLinuxGuestPing boots a Linux guest on a vmq vhost-user port and
// pings it from the wire (ARP through the flood socket, ICMP through the
// VM's socket, replies through the guest's TX and the XSK tx ring), then
// pings the wire from the guest.
func TestLinuxGuestPing(t *testing.T) {
	b := newBed(t, 1)
	spec := guestSpec{name: "lg1", slot: 1, mac: "52:54:00:00:99:02", ip: "10.99.0.2", pairs: 1, cpus: 1}
	g := b.addGuest(spec)

	if got := strings.TrimSpace(guestExec(t, g, "cat /sys/class/net/eth0/address")); got != spec.mac {
		t.Fatalf("guest eth0 has MAC %q, want %s", got, spec.mac)
	}
	var exitErr *ExitError
	if _, err := g.Exec(context.Background(), "echo oops; exit_code() { return 3; }; exit_code"); !errors.As(err, &exitErr) ||
		exitErr.Status != 3 || strings.TrimSpace(exitErr.Output) != "oops" {
		t.Fatalf("failing guest command: err %v", err)
	}
	const n = 20
	out := b.pingFromWire(spec.ip, "-c", strconv.Itoa(n), "-i", "0.05", "-W", "5")
	checkPing(t, "wire -> guest", out, n)
	t.Logf("wire -> guest: %s", lastLines(out, 2))

	// Full-size frames (1514 bytes): one mergeable buffer each way.
	out = b.pingFromWire(spec.ip, "-c", "10", "-i", "0.05", "-W", "5", "-s", "1472", "-M", "do")
	checkPing(t, "wire -> guest, 1514-byte frames", out, 10)

	// The guest starts traffic: its ARP request leaves through vmq's TX
	// path to the wire, and the wire's answers come back.
	out = guestExec(t, g, "ping -c 10 -A -W 5 "+wireIP)
	checkPing(t, "guest -> wire", out, 10)

	// Flood ping: a new echo as soon as the last reply is back, so the
	// guest's interrupt suppression (EVENT_IDX used/avail events) and
	// vmq's kick suppression are exercised on every frame.
	const flood = 500
	start := time.Now()
	out = b.pingFromWire(spec.ip, "-f", "-c", strconv.Itoa(flood), "-W", "5")
	checkPing(t, "wire -> guest, flood", out, flood)
	t.Logf("flood ping: %d echoes in %v: %s", flood, time.Since(start).Round(time.Millisecond), lastLines(out, 1))

	v := b.vm(spec.name)
	if min := uint64(n + 10 + 10 + flood); v.RxPackets < min || v.TxPackets < min {
		t.Errorf("VM counters: rx %d tx %d, want at least %d each", v.RxPackets, v.TxPackets, min)
	}
	checkNoDrops(t, v)
	p := b.port(spec.name)
	checkFeatures(t, p, 1)
	if p.Kicks == 0 || p.Calls == 0 {
		t.Errorf("port: %d kicks, %d calls: the guest should have needed both", p.Kicks, p.Calls)
	}
	t.Logf("vm %+v\nport %+v", v, p)

	// Unloading virtio_net resets the device (QEMU stops the vhost-user
	// rings: GET_VRING_BASE); loading it again renegotiates and restarts
	// them on the same connection, with ring indices back at 0.
	guestExec(t, g, "rmmod virtio_net && insmod /lib/modules/virtio_net.ko && "+
		"i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; "+
		"ip addr add "+spec.ip+"/24 dev eth0 && ip link set eth0 up")
	out = b.pingFromWire(spec.ip, "-c", strconv.Itoa(n), "-i", "0.05", "-W", "5")
	checkPing(t, "wire -> guest after driver reload", out, n)
	out = guestExec(t, g, "ping -c 5 -A -W 5 "+wireIP)
	checkPing(t, "guest -> wire after driver reload", out, 5)
	checkNoDrops(t, b.vm(spec.name))
	checkFeatures(t, b.port(spec.name), 1)
}

// TestLinuxGuestMultiqueue boots a 2-vCPU guest with 2 queue pairs on a
// 2-queue NIC; the guest's driver enables both pairs (through QEMU's
// control virtqueue), and traffic sent from each vCPU leaves on that
// vCPU's TX queue (virtio-net's XPS map), so both pairs carry frames.
func TestLinuxGuestMultiqueue(t *testing.T) {
	b := newBed(t, 2)
	spec := guestSpec{name: "lg2", slot: 2, mac: "52:54:00:00:99:03", ip: "10.99.0.3", pairs: 2, cpus: 2}
	g := b.addGuest(spec)

	if out := guestExec(t, g, "ls /sys/class/net/eth0/queues"); !strings.Contains(out, "rx-1") || !strings.Contains(out, "tx-1") {
		t.Fatalf("guest uses one queue pair only: %s", out)
	}
	// Steer the wire's traffic by CPU (XPS): pings from CPU c leave the
	// wire veth on tx queue c and arrive on the NIC's rx queue c, so each
	// worker feeds its own RX virtqueue.
	for q := range 2 {
		b.wire.Run(t, "sh", "-c", fmt.Sprintf("echo %d > /sys/class/net/%s/queues/tx-%d/xps_cpus", 1<<q, b.peer.Name, q))
	}
	const n = 20
	for cpu := range 2 {
		out := b.pingFromWire(spec.ip, "-c", strconv.Itoa(n), "-i", "0.05", "-W", "5", "-cpu", strconv.Itoa(cpu))
		checkPing(t, fmt.Sprintf("wire cpu %d -> guest", cpu), out, n)
	}

	// The guest pings from each vCPU in turn.
	for cpu := range 2 {
		out := guestExec(t, g, fmt.Sprintf("taskset %d ping -c 5 -A -W 5 %s", 1<<cpu, wireIP))
		checkPing(t, fmt.Sprintf("guest cpu %d -> wire", cpu), out, 5)
	}
	v := b.vm(spec.name)
	checkNoDrops(t, v)
	for _, q := range v.Queues {
		if q.TxPackets == 0 || q.RxPackets == 0 {
			t.Errorf("worker of queue %d: rx %d, tx %d frames: both virtqueue pairs should carry traffic both ways (%+v)",
				q.Queue, q.RxPackets, q.TxPackets, v.Queues)
		}
	}
	p := b.port(spec.name)
	checkFeatures(t, p, 2)
	t.Logf("vm %+v\nport %+v", v, p)
}

// TestLinuxGuestReconnect runs vmq as the vhost-user client of a QEMU
// that listens: vmq connects once QEMU is up; QEMU is then killed (the
// guest is gone mid-connection) and a new one started on the same path,
// and vmq's port reconnects and serves the new guest.
func TestLinuxGuestReconnect(t *testing.T) {
	b := newBed(t, 1)
	spec := guestSpec{name: "lg3", slot: 3, mac: "52:54:00:00:99:04", ip: "10.99.0.4", pairs: 1, cpus: 1}
	initrd := b.initrd(spec)
	b.addVM(spec, true)
	for round := range 2 {
		g := b.boot(spec, initrd, true)
		out := b.pingFromWire(spec.ip, "-c", "10", "-i", "0.05", "-W", "5")
		checkPing(t, fmt.Sprintf("guest %d: wire -> guest", round), out, 10)
		out = guestExec(t, g, "ping -c 5 -A -W 5 "+wireIP)
		checkPing(t, fmt.Sprintf("guest %d: guest -> wire", round), out, 5)
		p := b.port(spec.name)
		if p.Mode != "client" {
			t.Errorf("port mode %q, want client", p.Mode)
		}
		checkFeatures(t, p, 1)
		if err := g.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := g.Exec(context.Background(), "true"); err == nil {
			t.Fatal("command ran on a killed guest")
		}
		testenv.Eventually(t, "port disconnected", func() (bool, string) {
			p := b.port(spec.name)
			return !p.Connected, fmt.Sprintf("%+v", p)
		})
	}
	checkNoDrops(t, b.vm(spec.name))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// IPv6 neighbour discovery works for a Linux guest: the wire's neighbour
// solicitation goes to the guest's solicited-node multicast group (through
// the flood socket), the guest's advertisement and echo replies come back
// through its TX. The real ping -6, to the guest's link-local address.
func TestLinuxGuestIPv6(t *testing.T) {
	b := newBed(t, 1)
	// newBed turns IPv6 off for exact IPv4 counts; this test needs it on the wire.
	b.wire.Run(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
		"net.ipv6.conf."+b.peer.Name+".disable_ipv6=0")
	spec := guestSpec{name: "lg6", slot: 1, mac: "52:54:00:00:99:06", ip: "10.99.0.6", pairs: 1, cpus: 1}
	g := b.addGuest(spec)
	// The init script keeps the guest's IPv6 off; turn it on for eth0.
	guestExec(t, g, "echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 0 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6")
	// EUI-64 link-local address of the guest's MAC.
	const ll = "fe80::5054:ff:fe00:9906"
	testenv.Eventually(t, "guest link-local address ready", func() (bool, string) {
		out, _ := g.Exec(context.Background(), "cat /proc/net/if_inet6")
		return strings.Contains(out, "fe80000000000000505400fffe009906") && !strings.Contains(out, " 40 eth0"), out
	})
	var out []byte
	var err error
	// The wire's own link-local address finishes DAD about a second after
	// IPv6 comes on: retry until ping can send.
	for try := 0; try < 20; try++ {
		out, err = b.wire.Command("ping", "-6", "-c", "5", "-i", "0.1", "-W", "5", ll+"%"+b.peer.Name).CombinedOutput()
		if err == nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("ping -6 %s from the wire: %v\n%s", ll, err, out)
	}
	checkPing(t, "wire -> guest (IPv6)", string(out), 5)
	if v := b.vm(spec.name); v.FloodCopies == 0 {
		t.Fatalf("no flooded frame reached the guest: neighbour solicitation should: %+v", v)
	}
}
