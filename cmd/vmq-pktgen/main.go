// Command vmq-pktgen sends UDP test traffic at VM MAC addresses: XDP live
// frames (BPF_PROG_RUN, the fastest on veth and any XDP-capable driver),
// an AF_XDP socket, or an AF_PACKET socket. Every frame carries the
// vmq-pktgen payload (stream, sequence number, CLOCK_MONOTONIC timestamp)
// that receivers use to count loss, reordering and latency.
//
//	vmq-pktgen --dev eth0 --dst-mac 02:00:00:00:00:0a,02:00:00:00:00:0b@20 \
//	    --udp-src 1000-1999 --size 60 --duration 10s --rate 1000000
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vmq/vmq/pktgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

type config struct {
	dev, netnsName, mode  string
	dstMACs, srcMAC       string
	vlan, qinq            uint
	srcIP, dstIP          string
	udpSrc, udpDst        string
	size                  int
	count                 uint64
	duration              time.Duration
	rate                  float64
	burst, threads, queue int
	stream                uint
	udpCsum, jsonOut      bool
	noStamp               bool
	clockEvery            int
	spec                  pktgen.FlowSpec
}

// Summary is what --json prints at the end.
type Summary struct {
	Dev      string  `json:"dev"`
	Mode     string  `json:"mode"`
	Threads  int     `json:"threads"`
	FrameLen int     `json:"frame_len"`
	Sent     uint64  `json:"sent"`
	Errors   uint64  `json:"errors"`
	Bytes    uint64  `json:"bytes"`
	Seconds  float64 `json:"seconds"`
	PPS      float64 `json:"pps"`
	Gbps     float64 `json:"gbps"`
	Error    string  `json:"error,omitempty"`
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("vmq-pktgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.dev, "dev", "", "interface to send on (required)")
	fs.StringVar(&c.netnsName, "netns", "", "named network namespace of the interface (/run/netns/NAME)")
	fs.StringVar(&c.dstMACs, "dst-mac", "", "destination MACs, comma-separated, each optionally MAC@VLAN; frames rotate among them (required)")
	fs.StringVar(&c.srcMAC, "src-mac", "", "source MAC (default: the interface's)")
	fs.UintVar(&c.vlan, "vlan", 0, "802.1Q VLAN of destinations given without @VLAN (0 = untagged)")
	fs.UintVar(&c.qinq, "qinq", 0, "outer 802.1ad S-tag VLAN (QinQ), needs tagged destinations")
	fs.StringVar(&c.srcIP, "src-ip", "10.0.0.1", "source IPv4 address")
	fs.StringVar(&c.dstIP, "dst-ip", "10.0.0.2", "destination IPv4 address")
	fs.StringVar(&c.udpSrc, "udp-src", "9", "UDP source port or range FIRST-LAST (rotated: spreads RSS)")
	fs.StringVar(&c.udpDst, "udp-dst", "9", "UDP destination port or range")
	fs.IntVar(&c.size, "size", 60, "frame size without FCS, 60-1514, up to 9018 (jumbo) with the AF_PACKET sender (raised to fit the 24-byte payload: 66 untagged)")
	fs.Uint64Var(&c.count, "count", 0, "frames to send (all threads together)")
	fs.DurationVar(&c.duration, "duration", 0, "how long to send")
	fs.Float64Var(&c.rate, "rate", 0, "frames per second, all threads together (0 = as fast as possible)")
	fs.IntVar(&c.burst, "burst", 64, "frames per send call when rate-limited")
	fs.IntVar(&c.threads, "threads", 1, "sending threads, each with its own stream (xdp and packet modes)")
	fs.IntVar(&c.queue, "queue", 0, "queue: rx queue index seen by the xdp program, or the AF_XDP queue")
	fs.UintVar(&c.stream, "stream", 0, "payload stream of the first destination (thread t, destination i: stream + t*destinations + i)")
	fs.BoolVar(&c.udpCsum, "udp-csum", false, "compute UDP checksums (default 0: none)")
	fs.BoolVar(&c.noStamp, "no-stamp", false, "xdp mode: no payload (receivers cannot count loss or latency); saves the stamp's cost")
	fs.IntVar(&c.clockEvery, "clock-every", 16, "xdp mode: frames per timestamp read (1 = every frame; a read costs more than the rest of the stamp)")
	fs.StringVar(&c.mode, "mode", "xdp", "xdp (BPF_PROG_RUN live frames), xsk (AF_XDP tx) or packet (AF_PACKET)")
	fs.BoolVar(&c.jsonOut, "json", false, "print the summary as JSON on stdout")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.dev == "" || c.dstMACs == "" {
		return nil, errors.New("--dev and --dst-mac are required")
	}
	if c.count == 0 && c.duration == 0 {
		return nil, errors.New("give --count or --duration")
	}
	switch c.mode {
	case "xdp", "packet":
	case "xsk":
		if c.threads != 1 {
			return nil, errors.New("--mode xsk sends from one thread (one AF_XDP socket per queue)")
		}
	default:
		return nil, fmt.Errorf("--mode %q: want xdp, xsk or packet", c.mode)
	}
	if c.mode != "xdp" && c.noStamp {
		return nil, errors.New("--no-stamp is for --mode xdp")
	}
	if c.clockEvery < 1 {
		return nil, fmt.Errorf("--clock-every %d: want at least 1", c.clockEvery)
	}
	if c.threads < 1 || c.threads > 64 {
		return nil, fmt.Errorf("--threads %d out of 1..64", c.threads)
	}
	if c.rate < 0 || c.burst < 1 || c.queue < 0 {
		return nil, errors.New("--rate, --burst and --queue must not be negative (burst at least 1)")
	}
	if c.vlan > 4094 || c.qinq > 4094 {
		return nil, errors.New("--vlan and --qinq must be 0..4094")
	}
	for _, s := range strings.Split(c.dstMACs, ",") {
		macStr, vlanStr, hasVLAN := strings.Cut(strings.TrimSpace(s), "@")
		m, err := net.ParseMAC(macStr)
		if err != nil || len(m) != 6 {
			return nil, fmt.Errorf("--dst-mac %q: not a MAC address", macStr)
		}
		d := pktgen.Dest{MAC: m, VLAN: uint16(c.vlan)}
		if hasVLAN {
			v, err := strconv.ParseUint(vlanStr, 10, 12)
			if err != nil {
				return nil, fmt.Errorf("--dst-mac %q: bad VLAN %q", s, vlanStr)
			}
			d.VLAN = uint16(v)
		}
		c.spec.Dests = append(c.spec.Dests, d)
	}
	var err error
	if c.srcMAC != "" {
		if c.spec.SrcMAC, err = net.ParseMAC(c.srcMAC); err != nil {
			return nil, fmt.Errorf("--src-mac: %w", err)
		}
	}
	if c.spec.SrcIP, err = netip.ParseAddr(c.srcIP); err != nil {
		return nil, fmt.Errorf("--src-ip: %w", err)
	}
	if c.spec.DstIP, err = netip.ParseAddr(c.dstIP); err != nil {
		return nil, fmt.Errorf("--dst-ip: %w", err)
	}
	if c.spec.SrcPorts, err = pktgen.ParsePortRange(c.udpSrc); err != nil {
		return nil, fmt.Errorf("--udp-src: %w", err)
	}
	if c.spec.DstPorts, err = pktgen.ParsePortRange(c.udpDst); err != nil {
		return nil, fmt.Errorf("--udp-dst: %w", err)
	}
	c.spec.OuterVLAN = uint16(c.qinq)
	c.spec.Size = c.size
	c.spec.UDPChecksum = c.udpCsum
	c.spec.Stream = uint32(c.stream)
	t, err := pktgen.NewTemplate(c.spec)
	if err != nil {
		return nil, err
	}
	if c.mode != "packet" && t.FrameLen() > pktgen.MaxLiveFrameLen {
		return nil, fmt.Errorf("--size %d: --mode %s sends at most %d-byte frames; use --mode packet for jumbo frames", c.size, c.mode, pktgen.MaxLiveFrameLen)
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	c, err := parseFlags(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "vmq-pktgen: %v\n", err)
		}
		return 2
	}
	sum, err := generate(ctx, c, stderr)
	if err != nil {
		sum.Error = err.Error()
		log.Error("generation failed", "dev", c.dev, "err", err)
	}
	if c.jsonOut {
		enc := json.NewEncoder(stdout)
		if err := enc.Encode(sum); err != nil {
			log.Error("write summary", "err", err)
			return 1
		}
	} else {
		fmt.Fprintf(stdout, "%s %s: sent %d frames of %d bytes in %.3fs: %.0f pps, %.3f Gbit/s, %d errors\n",
			sum.Dev, sum.Mode, sum.Sent, sum.FrameLen, sum.Seconds, sum.PPS, sum.Gbps, sum.Errors)
	}
	if err != nil {
		return 1
	}
	return 0
}

// inNetns runs fn on a locked OS thread inside the named namespace (or
// the current one). The thread stays locked: a thread moved into another
// namespace must not return to the runtime's pool, so it exits with the
// goroutine.
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if name != "" {
			h, err := netns.GetFromPath(filepath.Join("/run/netns", name))
			if err != nil {
				errc <- fmt.Errorf("open netns %s: %w", name, err)
				return
			}
			err = netns.Set(h)
			h.Close()
			if err != nil {
				errc <- fmt.Errorf("enter netns %s: %w", name, err)
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}

type worker struct {
	warn   string // said once on stderr
	sender pktgen.Sender
	close  func() error
	sent   atomic.Uint64
	errs   atomic.Uint64
	stats  pktgen.Stats
	err    error
}

func generate(ctx context.Context, c *config, stderr io.Writer) (Summary, error) {
	sum := Summary{Dev: c.dev, Mode: c.mode, Threads: c.threads}
	var ifindex int
	var ifMAC net.HardwareAddr
	if err := inNetns(c.netnsName, func() error {
		l, err := netlink.LinkByName(c.dev)
		if err != nil {
			return fmt.Errorf("find interface %s: %w", c.dev, err)
		}
		ifindex, ifMAC = l.Attrs().Index, l.Attrs().HardwareAddr
		return nil
	}); err != nil {
		return sum, err
	}
	if c.spec.SrcMAC == nil {
		c.spec.SrcMAC = ifMAC
	}
	workers := make([]*worker, c.threads)
	defer func() {
		for _, w := range workers {
			if w != nil && w.close != nil {
				_ = w.close()
			}
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for i := range workers {
		spec := c.spec
		spec.Stream = c.spec.Stream + uint32(i*len(c.spec.Dests))
		tm, err := pktgen.NewTemplate(spec)
		if err != nil {
			return sum, err
		}
		sum.FrameLen = tm.FrameLen()
		w := &worker{}
		workers[i] = w
		opts := pktgen.RunOptions{
			Count:    c.count / uint64(c.threads),
			Duration: c.duration,
			Rate:     c.rate / float64(c.threads),
			Burst:    c.burst,
			CatchUp:  true, // a load test holds its average rate
			Tick:     200 * time.Millisecond,
			OnTick: func(s pktgen.Stats) {
				w.sent.Store(s.Sent)
				w.errs.Store(s.Errors)
			},
		}
		if i == 0 {
			opts.Count += c.count % uint64(c.threads)
		}
		if c.count > 0 && opts.Count == 0 {
			continue // more threads than frames
		}
		ready := make(chan error, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.err = inNetns(c.netnsName, func() error {
				if err := w.open(c, tm, ifindex); err != nil {
					ready <- err
					return err
				}
				if w.warn != "" {
					fmt.Fprintf(stderr, "vmq-pktgen: warning: %s\n", w.warn)
				}
				ready <- nil
				st, err := pktgen.Run(ctx, w.sender, opts)
				w.stats = st
				w.sent.Store(st.Sent)
				w.errs.Store(st.Errors)
				return err
			})
		}()
		if err := <-ready; err != nil {
			cancel() // stop the threads already sending
			wg.Wait()
			return sum, err
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastSent, lastErrs uint64
	last := start
loop:
	for {
		select {
		case <-done:
			break loop
		case now := <-tick.C:
			var s, e uint64
			for _, w := range workers {
				s += w.sent.Load()
				e += w.errs.Load()
			}
			dt := now.Sub(last).Seconds()
			pps := float64(s-lastSent) / dt
			fmt.Fprintf(stderr, "%6.1fs  %10.0f pps  %7.3f Gbit/s  sent %d  errors %d (+%d)\n",
				now.Sub(start).Seconds(), pps, pps*float64(sum.FrameLen)*8/1e9, s, e, e-lastErrs)
			lastSent, lastErrs, last = s, e, now
		}
	}
	var firstErr error
	var elapsed time.Duration
	for i, w := range workers {
		if w == nil {
			continue
		}
		sum.Sent += w.stats.Sent
		sum.Errors += w.stats.Errors
		sum.Bytes += w.stats.Bytes
		elapsed = max(elapsed, w.stats.Elapsed)
		if w.err != nil && firstErr == nil {
			firstErr = fmt.Errorf("thread %d: %w", i, w.err)
		}
	}
	sum.Seconds = elapsed.Seconds()
	if sum.Seconds > 0 {
		sum.PPS = float64(sum.Sent) / sum.Seconds
		sum.Gbps = float64(sum.Bytes) * 8 / sum.Seconds / 1e9
	}
	return sum, firstErr
}

// open creates the worker's sender; it runs in the interface's namespace.
func (w *worker) open(c *config, tm *pktgen.Template, ifindex int) error {
	switch c.mode {
	case "xdp":
		g, err := pktgen.NewLiveGenerator(tm, pktgen.LiveOptions{Ifindex: ifindex, Queue: uint32(c.queue),
			NoStamp: c.noStamp, ClockEvery: c.clockEvery})
		if err != nil {
			return err
		}
		if !g.Keeper() {
			w.warn = "xdp mode: cannot hold the program in the XDP dispatcher (a private network namespace needs CAP_SYS_ADMIN): every call waits ~20 ms"
		}
		w.sender, w.close = g, g.Close
	case "xsk":
		s, err := pktgen.NewXSKSender(tm, pktgen.XSKOptions{Ifindex: ifindex, Queue: c.queue, Batch: c.burst})
		if err != nil {
			return err
		}
		w.sender, w.close = s, s.Close
	case "packet":
		s, err := pktgen.NewPacketSender(tm, pktgen.PacketOptions{Ifindex: ifindex, Batch: min(c.burst, 1024)})
		if err != nil {
			return err
		}
		w.sender, w.close = s, s.Close
	}
	return nil
}
