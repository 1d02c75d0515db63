package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/pktgen"
)

// The lab: a "host" namespace whose veth vmqnic0 is the NIC, a "wire"
// namespace holding its peer wire0 (the network outside), vmqd on vmqnic0
// and three vmq-guest processes.
const (
	labNIC     = "vmqnic0"
	labWire    = "wire0"
	labWireIP  = "10.0.0.1/24"
	labWireMAC = "02:00:00:00:ee:01"
)

type labVM struct {
	name, mac, ip string
	vlan          uint16
	stream        uint32 // stream of the wire's frames to this VM
}

var labVMs = []labVM{
	{name: "vm1", mac: "02:00:00:00:01:01", ip: "10.0.0.11", stream: 100},
	{name: "vm2", mac: "02:00:00:00:01:02", ip: "10.0.0.12", stream: 101},
	{name: "vm3", mac: "02:00:00:00:01:03", ip: "10.0.100.13", vlan: 100, stream: 200},
}

// Streams of the guests' own traffic.
const (
	streamVM1ToWire = 300
	streamVM2ToVM1  = 400
)

type labOptions struct {
	duration    time.Duration
	rate        float64 // frames/s from the wire to each VM
	guestRate   float64 // frames/s each sending guest sends
	size        int
	burst       int           // frames per send call from the wire
	busyPoll    time.Duration // the workers' polling.busy_poll
	guestPoll   bool          // guests busy-poll (never sleep on call eventfds)
	guestBin    string
	metricsAddr string
	logLevel    string
}

func labMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vmqd lab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o labOptions
	fs.DurationVar(&o.duration, "duration", 15*time.Second, "how long traffic runs")
	fs.Float64Var(&o.rate, "rate", 5000, "frames per second from the wire to each VM")
	fs.Float64Var(&o.guestRate, "guest-rate", 2000, "frames per second vm1 sends to the wire and vm2 to vm1")
	fs.IntVar(&o.size, "size", 128, "frame size in bytes")
	fs.IntVar(&o.burst, "burst", 32, "frames per send call from the wire (the latency columns count from the burst's timestamp)")
	fs.DurationVar(&o.busyPoll, "busy-poll", control.DefaultBusyPoll, "how long vmqd's idle worker spins before it sleeps (polling.busy_poll)")
	fs.BoolVar(&o.guestPoll, "guest-busy-poll", false, "guests never sleep on their call eventfds (each spins on a core)")
	fs.StringVar(&o.guestBin, "guest-bin", "", "vmq-guest binary (default: next to vmqd, then $PATH)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:9469", "serve /metrics here during the lab")
	fs.StringVar(&o.logLevel, "log-level", "warn", "vmqd log level")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: vmqd lab [flags]\n\nRuns vmqd on a veth NIC in a network namespace with three vmq-guest guests,\nsends traffic both ways, shows live counters, then cleans up.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.burst < 1 {
		fmt.Fprintf(stderr, "vmqd lab: -burst %d: want at least 1\n", o.burst)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "vmqd lab: needs root (network namespaces, XDP, AF_XDP): sudo make lab")
		return 1
	}
	if err := runLab(o, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "vmqd lab: %v\n", err)
		return 1
	}
	return 0
}

func findGuestBin(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "vmq-guest")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("vmq-guest"); err == nil {
		return p, nil
	}
	return "", errors.New("vmq-guest not found next to vmqd or in $PATH: run `make build` (or `sudo make lab`, which builds it)")
}

// lab holds everything the lab created, for clean-up.
type lab struct {
	host, wire       netns.NsHandle
	hostName, wireNm string
	dir              string
	cleanups         []func()
}

func (l *lab) close() {
	for i := len(l.cleanups) - 1; i >= 0; i-- {
		l.cleanups[i]()
	}
}

func runLab(o labOptions, stdout, stderr io.Writer) error {
	guestBin, err := findGuestBin(o.guestBin)
	if err != nil {
		return err
	}
	l := &lab{}
	defer l.close()
	if err := l.setupNetwork(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "lab: NIC %s in netns %s, wire %s (%s) in netns %s\n", labNIC, l.hostName, labWire, labWireIP, l.wireNm)

	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log) // as vmqd's run does
	cfg := control.Default(labNIC)
	if cfg.PinDir, err = l.pinDir(); err != nil {
		return err
	}
	cfg.API.Socket = filepath.Join(l.dir, "vmqd.sock")
	cfg.Metrics.Address = o.metricsAddr
	cfg.Polling.BusyPoll = o.busyPoll
	for _, vm := range labVMs {
		cfg.VMs = append(cfg.VMs, control.VMConfig{Name: vm.name, MAC: vm.mac, VLAN: int(vm.vlan),
			Socket: filepath.Join(l.dir, vm.name+".sock"), Mode: control.ModeServer, QueuePairs: 1})
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("lab config: %w", err)
	}
	d, err := startDaemon(context.Background(), daemonOptions{cfg: cfg, log: log, netns: &l.host})
	if err != nil && strings.Contains(err.Error(), "address already in use") {
		d, err = startDaemon(context.Background(), daemonOptions{cfg: cfg, log: log, netns: &l.host, metricsAddr: "127.0.0.1:0"})
	}
	if err != nil {
		return err
	}
	l.cleanups = append(l.cleanups, func() { d.stop(context.Background()) })
	fmt.Fprintf(stdout, "lab: vmqd up: API %s (vmqctl --socket %s status), metrics http://%s/metrics\n",
		cfg.API.Socket, cfg.API.Socket, d.metricsAddr)

	// Count at the wire before vm1 starts sending to it.
	sink, err := l.attachWireSink()
	if err != nil {
		return err
	}
	guests, err := l.startGuests(d, guestBin, o, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "lab: %d guests connected; traffic for %v: wire→VMs %.0f/s each, vm1→wire and vm2→vm1 %.0f/s\n\n",
		len(guests), o.duration, o.rate, o.guestRate)

	// Drops before the traffic (a flooded ARP reply's request reaching a
	// guest not started yet) are not the traffic's: the summary counts
	// from here.
	start := d.snapshot()
	ctx, cancel := context.WithTimeout(context.Background(), o.duration)
	defer cancel()
	var wg sync.WaitGroup
	wireSent := make([]pktgen.Stats, 2)
	wireErr := make([]error, 2)
	flows := []pktgen.FlowSpec{
		{Dests: []pktgen.Dest{{MAC: mustMAC(labVMs[0].mac)}, {MAC: mustMAC(labVMs[1].mac)}}, Stream: labVMs[0].stream},
		{Dests: []pktgen.Dest{{MAC: mustMAC(labVMs[2].mac), VLAN: labVMs[2].vlan}}, Stream: labVMs[2].stream},
	}
	for i, spec := range flows {
		spec.SrcMAC = mustMAC(labWireMAC)
		spec.Size = o.size
		spec.SrcPorts = pktgen.PortRange{First: 1000, Last: 1999}
		wg.Add(1)
		go func() {
			defer wg.Done()
			wireSent[i], wireErr[i] = l.sendFromWire(ctx, spec, o.rate*float64(len(spec.Dests)), o.burst)
		}()
	}
	pingOut := make(chan string, 1)
	go func() { pingOut <- l.ping(labVMs[0].ip) }()
	live(ctx, d, stdout)
	wg.Wait()
	ping := <-pingOut
	time.Sleep(300 * time.Millisecond) // let the last frames drain into the guests

	summaries := stopGuests(guests)
	sinkStats, _ := sink.Stats()
	for i, err := range wireErr {
		if err != nil {
			return fmt.Errorf("wire traffic %d: %w", i, err)
		}
	}
	printLabSummary(stdout, start, d.snapshot(), summaries, wireSent, sinkStats, ping)
	return nil
}

func mustMAC(s string) net.HardwareAddr {
	hw, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return hw
}

func randomSuffix() string {
	var b [3]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (l *lab) setupNetwork() error {
	suffix := randomSuffix()
	l.hostName, l.wireNm = "vmqlab-host-"+suffix, "vmqlab-wire-"+suffix
	dir, err := os.MkdirTemp("", "vmqlab-")
	if err != nil {
		return err
	}
	l.dir = dir
	l.cleanups = append(l.cleanups, func() { os.RemoveAll(dir) })
	for _, name := range []string{l.hostName, l.wireNm} {
		var h netns.NsHandle
		err := func() error {
			errc := make(chan error, 1)
			go func() {
				runtime.LockOSThread()
				// NewNamed switches this thread into the new namespace; the
				// thread is discarded when the goroutine ends.
				nh, err := netns.NewNamed(name)
				h = nh
				errc <- err
			}()
			return <-errc
		}()
		if err != nil {
			return fmt.Errorf("create network namespace %s: %w", name, err)
		}
		name := name
		l.cleanups = append(l.cleanups, func() { h.Close(); netns.DeleteNamed(name) })
		if name == l.hostName {
			l.host = h
		} else {
			l.wire = h
		}
	}
	return inNetns(&l.host, func() error {
		for _, p := range []string{"/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"} {
			os.WriteFile(p, []byte("1"), 0o644) // quieter counters; absent without IPv6
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: labNIC, MTU: 1500},
			PeerName:      labWire,
			PeerNamespace: netlink.NsFd(int(l.wire)),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s/%s: %w", labNIC, labWire, err)
		}
		link, err := netlink.LinkByName(labNIC)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		return inNetns(&l.wire, func() error {
			for _, p := range []string{"/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"} {
				os.WriteFile(p, []byte("1"), 0o644)
			}
			w, err := netlink.LinkByName(labWire)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetHardwareAddr(w, mustMAC(labWireMAC)); err != nil {
				return err
			}
			addr, _ := netlink.ParseAddr(labWireIP)
			if err := netlink.AddrAdd(w, addr); err != nil {
				return err
			}
			return netlink.LinkSetUp(w)
		})
	})
}

// pinDir makes a private directory on bpffs (mounting bpffs if the
// machine has none), removed when the lab ends.
func (l *lab) pinDir() (string, error) {
	const root = "/sys/fs/bpf"
	var st syscall.Statfs_t
	if err := syscall.Statfs(root, &st); err != nil || st.Type != bpffsMagic {
		if err := syscall.Mount("bpf", root, "bpf", 0, ""); err != nil {
			return "", fmt.Errorf("mount bpffs on %s: %w", root, err)
		}
	}
	dir := filepath.Join(root, "vmqlab-"+filepath.Base(l.dir))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("pin directory: %w", err)
	}
	l.cleanups = append(l.cleanups, func() { os.RemoveAll(dir) })
	return dir, nil
}

const bpffsMagic = 0xcafe4a11

type guestProc struct {
	vm  labVM
	cmd *exec.Cmd
	out bytes.Buffer
}

// startGuests starts the guests one by one, each once the one before it
// runs: vm2 sends to vm1 from its start, so vm1 must run first or vm2's
// first frames find no guest (guest_not_ready).
func (l *lab) startGuests(d *daemon, bin string, o labOptions, stderr io.Writer) ([]*guestProc, error) {
	var guests []*guestProc
	for _, i := range []int{0, 2, 1} {
		vm := labVMs[i]
		args := []string{"--socket", filepath.Join(l.dir, vm.name+".sock"), "--mac", vm.mac, "--ip", vm.ip,
			"--json", "--linger", "200ms", "--log-level", "error"}
		if o.guestPoll {
			args = append(args, "--busy-poll")
		}
		switch i {
		case 0:
			args = append(args, "--send-to", labWireMAC, "--rate", fmt.Sprint(o.guestRate),
				"--stream", fmt.Sprint(streamVM1ToWire), "--size", fmt.Sprint(o.size), "--dst-ip", "10.0.0.1")
		case 1:
			args = append(args, "--send-to", labVMs[0].mac, "--rate", fmt.Sprint(o.guestRate),
				"--stream", fmt.Sprint(streamVM2ToVM1), "--size", fmt.Sprint(o.size), "--dst-ip", labVMs[0].ip)
		}
		g := &guestProc{vm: vm, cmd: exec.Command(bin, args...)}
		g.cmd.Stdout, g.cmd.Stderr = &g.out, stderr
		if err := g.cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s for %s: %w", bin, vm.name, err)
		}
		l.cleanups = append(l.cleanups, func() {
			if g.cmd.ProcessState == nil {
				g.cmd.Process.Kill()
				g.cmd.Wait()
			}
		})
		guests = append(guests, g)
		if err := waitGuestsRunning(d, len(guests), 15*time.Second); err != nil {
			return nil, fmt.Errorf("%s: %w", vm.name, err)
		}
	}
	return guests, nil
}

// waitGuestsRunning waits until n ports have both virtqueues served by a
// worker.
func waitGuestsRunning(d *daemon, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		up := 0
		for _, p := range d.snapshot().Ports {
			if p.Connected && p.RingsRunning >= 2 {
				up++
			}
		}
		if up >= n {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("guests not running after %v", timeout)
}

func (l *lab) attachWireSink() (*pktgen.Sink, error) {
	var sink *pktgen.Sink
	err := inNetns(&l.wire, func() error {
		w, err := net.InterfaceByName(labWire)
		if err != nil {
			return err
		}
		// Pass: the wire's stack must still see ARP and ping replies.
		sink, err = pktgen.AttachSink(w.Index, pktgen.SinkOptions{Pass: true, Stream: streamVM1ToWire})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("count frames on the wire: %w", err)
	}
	l.cleanups = append(l.cleanups, func() { sink.Close() })
	return sink, nil
}

func (l *lab) sendFromWire(ctx context.Context, spec pktgen.FlowSpec, rate float64, burst int) (pktgen.Stats, error) {
	tmpl, err := pktgen.NewTemplate(spec)
	if err != nil {
		return pktgen.Stats{}, err
	}
	var st pktgen.Stats
	err = inNetns(&l.wire, func() error {
		w, err := net.InterfaceByName(labWire)
		if err != nil {
			return err
		}
		// AF_PACKET, not live frames: a BPF_PROG_RUN call costs tens of
		// milliseconds of set-up, too coarse for paced traffic.
		g, err := pktgen.NewPacketSender(tmpl, pktgen.PacketOptions{Ifindex: w.Index})
		if err != nil {
			return err
		}
		defer g.Close()
		st, err = pktgen.Run(ctx, g, pktgen.RunOptions{Rate: rate, Burst: burst})
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			err = nil
		}
		return err
	})
	return st, err
}

// ping runs the real ping from the wire namespace to a guest: 5 echoes,
// with a deadline (-w) rather than a reply timeout, which would give the
// last reply only two round trips on a busy machine.
func (l *lab) ping(ip string) string {
	if _, err := exec.LookPath("ping"); err != nil {
		return "skipped: no ping installed (apt-get install iputils-ping)"
	}
	out, err := exec.Command("ip", "netns", "exec", l.wireNm, "ping", "-c", "5", "-i", "0.2", "-w", "5", ip).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "packet loss") {
			return strings.TrimSpace(line)
		}
	}
	if err != nil {
		return "failed: " + err.Error()
	}
	return strings.TrimSpace(string(out))
}

// live prints per-VM rates once a second until ctx ends.
func live(ctx context.Context, d *daemon, w io.Writer) {
	prev := d.snapshot()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	fmt.Fprintf(w, "%-8s", "time")
	for _, v := range prev.VMs {
		fmt.Fprintf(w, " | %-26s", v.Name+" rx/s  tx/s  drops")
	}
	fmt.Fprintln(w)
	start := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cur := d.snapshot()
		fmt.Fprintf(w, "%-8s", time.Since(start).Round(time.Second))
		for i, v := range cur.VMs {
			if i >= len(prev.VMs) {
				break
			}
			p := prev.VMs[i]
			fmt.Fprintf(w, " | %8d %8d %8d", v.RxPackets-p.RxPackets, v.TxPackets-p.TxPackets, sumDrops(v)-sumDrops(p))
		}
		fmt.Fprintln(w)
		prev = cur
	}
}

func sumDrops(v dataplane.VMStats) uint64 {
	var n uint64
	for _, d := range v.Drops {
		n += d
	}
	return n
}

type guestSummary struct {
	ElapsedSeconds float64 `json:"elapsed_s"`
	RxFrames       uint64  `json:"rx_frames"`
	TxFrames       uint64  `json:"tx_frames"`
	ICMPReplies    uint64  `json:"icmp_replies"`
	ARPReplies     uint64  `json:"arp_replies"`
	Streams        []struct {
		Stream     uint32 `json:"stream"`
		Received   uint64 `json:"received"`
		Lost       uint64 `json:"lost"`
		LatencyP50 int64  `json:"latency_p50_ns"`
		LatencyP99 int64  `json:"latency_p99_ns"`
	} `json:"streams"`
}

func stopGuests(guests []*guestProc) map[string]guestSummary {
	out := make(map[string]guestSummary)
	// One at a time, last first: vm2 sends to vm1, so vm2 flushes its last
	// frames and exits before vm1 stops counting.
	for _, g := range slices.Backward(guests) {
		g.cmd.Process.Signal(syscall.SIGTERM)
		g.cmd.Wait()
		var s guestSummary
		if err := json.Unmarshal(g.out.Bytes(), &s); err == nil {
			out[g.vm.name] = s
		}
	}
	return out
}

func streamOf(s guestSummary, id uint32) (received, lost uint64, p50, p99 time.Duration) {
	for _, st := range s.Streams {
		if st.Stream == id {
			return st.Received, st.Lost, time.Duration(st.LatencyP50), time.Duration(st.LatencyP99)
		}
	}
	return 0, 0, 0, 0
}

func printLabSummary(w io.Writer, start, snap dataplane.Snapshot, guests map[string]guestSummary,
	wire []pktgen.Stats, sink pktgen.SinkStats, ping string) {
	fmt.Fprintln(w, "\nsummary")
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tVLAN\twire→VM sent\tguest received\tlost\tp50\tp99\tdrops (vmqd)")
	sentTo := []uint64{wire[0].Sent / 2, wire[0].Sent - wire[0].Sent/2, wire[1].Sent}
	for i, vm := range labVMs {
		recv, lost, p50, p99 := streamOf(guests[vm.name], vm.stream)
		drops := dropsSince(start, snap, vm.name)
		vlan := "-"
		if vm.vlan != 0 {
			vlan = fmt.Sprint(vm.vlan)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%v\t%v\t%s\n", vm.name, vlan, sentTo[i], recv, lost,
			p50.Round(time.Microsecond), p99.Round(time.Microsecond), drops)
	}
	tw.Flush()
	g1, g2 := guests["vm1"], guests["vm2"]
	v2v, _, _, _ := streamOf(g1, streamVM2ToVM1)
	fmt.Fprintf(w, "vm1 → wire: sent %d, arrived at the wire %d\n", g1.TxFrames-g1.ICMPReplies-g1.ARPReplies, sink.Tracked)
	fmt.Fprintf(w, "vm2 → vm1 (switched locally): sent %d, received %d\n", g2.TxFrames-g2.ICMPReplies-g2.ARPReplies, v2v)
	fmt.Fprintf(w, "ping wire → vm1 (%s): %s\n", labVMs[0].ip, ping)
	fmt.Fprintf(w, "filter: redirected %d, to host stack %d, flooded %d, malformed %d, no socket %d\n",
		snap.Filter.Redirected, snap.Filter.Passed, snap.Filter.Flooded, snap.Filter.Malformed, snap.Filter.NoSocket)
}

// dropsSince is the drops of VM name from snapshot a to b, by reason;
// "0" for none.
func dropsSince(a, b dataplane.Snapshot, name string) string {
	was := map[string]uint64{}
	for _, v := range a.VMs {
		if v.Name == name {
			was = v.DropsByReason
		}
	}
	var parts []string
	for _, v := range b.VMs {
		if v.Name != name {
			continue
		}
		for r, n := range v.DropsByReason {
			if n > was[r] {
				parts = append(parts, fmt.Sprintf("%s:%d", r, n-was[r]))
			}
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}
