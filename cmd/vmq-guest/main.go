// Command vmq-guest is a guest in a process: a vhost-user front-end that
// attaches to vmqd (or DPDK's vhost backend, or any vhost-user-net
// device), answers ARP and ping for its IPv4 address, counts pktgen
// streams it receives and optionally sends stamped UDP traffic.
//
//	vmq-guest --socket /run/vmq/vm1.sock --mac 02:00:00:00:00:0a --ip 10.0.0.10
//	vmq-guest --socket S --mac M --send-to 02:00:00:00:00:0b --rate 100000 --count 1000000 --json
//
// It prints a summary at the end (and on SIGINT/SIGTERM).
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
	"sync"
	"syscall"
	"time"

	"github.com/vmq/vmq/guest/frontend"
)

type options struct {
	socket     string
	server     bool
	mac        string
	ip         string
	queues     int
	queueSize  int
	mrg        bool
	eventIdx   bool
	packed     bool
	inOrder    bool
	regions    int
	reconnect  bool
	busyPoll   bool
	duration   time.Duration
	sendTo     string
	dstIP      string
	rate       float64
	count      uint64
	size       int
	mtu        int
	stream     uint
	linger     time.Duration
	jsonOut    bool
	logLevel   string
	connectFor time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("vmq-guest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.socket, "socket", "", "vhost-user socket path (required)")
	fs.BoolVar(&o.server, "server", false, "listen on the socket; the backend connects (default: connect to a listening backend)")
	fs.StringVar(&o.mac, "mac", "02:00:00:00:00:0a", "guest MAC address")
	fs.StringVar(&o.ip, "ip", "", "IPv4 address to answer ARP and ping for (empty: answer nothing)")
	fs.IntVar(&o.queues, "queues", 1, "virtqueue pairs (multiqueue needs MQ from the backend)")
	fs.IntVar(&o.queueSize, "queue-size", 256, "descriptors per virtqueue (power of two)")
	fs.BoolVar(&o.mrg, "mrg-rxbuf", true, "negotiate mergeable rx buffers if offered")
	fs.BoolVar(&o.eventIdx, "event-idx", true, "negotiate EVENT_IDX if offered")
	fs.BoolVar(&o.packed, "packed", false, "use packed virtqueues (VIRTIO_F_RING_PACKED) if offered")
	fs.BoolVar(&o.inOrder, "in-order", true, "with --packed, negotiate IN_ORDER if offered")
	fs.IntVar(&o.regions, "mem-regions", 1, "memfd regions in the memory table (1..8)")
	fs.BoolVar(&o.reconnect, "reconnect", false, "client mode: redial when the backend goes away")
	fs.BoolVar(&o.busyPoll, "busy-poll", false, "never sleep on call eventfds (one busy core)")
	fs.DurationVar(&o.duration, "duration", 0, "run (and send) for this long; 0 = until the count is sent or a signal")
	fs.StringVar(&o.sendTo, "send-to", "", "send stamped UDP frames to this MAC")
	fs.StringVar(&o.dstIP, "dst-ip", "198.18.0.2", "destination IPv4 of sent frames")
	fs.Float64Var(&o.rate, "rate", 0, "frames per second in total (0 = as fast as the rings take them)")
	fs.Uint64Var(&o.count, "count", 0, "frames to send in total (0 = until --duration or a signal)")
	fs.IntVar(&o.size, "size", 64, "frame size in bytes, without FCS (up to --mtu + 14)")
	fs.IntVar(&o.mtu, "mtu", 1500, "largest IP packet sent or answered (sizes the tx buffers; 9000 for jumbo frames)")
	fs.UintVar(&o.stream, "stream", 0, "pktgen stream id of queue 0 (queue q sends stream+q)")
	fs.DurationVar(&o.linger, "linger", time.Second, "after sending, keep receiving this long before the summary")
	fs.DurationVar(&o.connectFor, "connect-timeout", 30*time.Second, "how long to wait for the backend")
	fs.BoolVar(&o.jsonOut, "json", false, "print the summary as JSON")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.socket == "" {
		return o, errors.New("--socket is required")
	}
	if o.queues < 1 {
		return o, fmt.Errorf("--queues %d: want at least 1", o.queues)
	}
	if o.mtu < 68 || o.mtu > 65521 {
		return o, fmt.Errorf("--mtu %d: want 68..65521", o.mtu)
	}
	if o.size > o.mtu+14 {
		return o, fmt.Errorf("--size %d: larger than --mtu %d allows (%d); raise --mtu", o.size, o.mtu, o.mtu+14)
	}
	if o.rate < 0 {
		return o, fmt.Errorf("--rate %v: want >= 0", o.rate)
	}
	return o, nil
}

func main() {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "vmq-guest:", err)
		os.Exit(2)
	}
	if err := run(o, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "vmq-guest:", err)
		os.Exit(1)
	}
}

func run(o options, stdout, stderr io.Writer) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	mac, err := net.ParseMAC(o.mac)
	if err != nil {
		return fmt.Errorf("--mac: %w", err)
	}
	cfg := frontend.Config{MAC: mac, QueuePairs: o.queues, QueueSize: o.queueSize, MrgRxbuf: o.mrg,
		EventIdx: o.eventIdx, PackedRing: o.packed, InOrder: o.inOrder, MemRegions: o.regions, Reconnect: o.reconnect, BusyPoll: o.busyPoll, MTU: o.mtu, Logger: log}
	if o.ip != "" {
		if cfg.IP, err = netip.ParseAddr(o.ip); err != nil {
			return fmt.Errorf("--ip: %w", err)
		}
	}
	var traffic *frontend.Traffic
	if o.sendTo != "" {
		dst, err := net.ParseMAC(o.sendTo)
		if err != nil {
			return fmt.Errorf("--send-to: %w", err)
		}
		dstIP, err := netip.ParseAddr(o.dstIP)
		if err != nil {
			return fmt.Errorf("--dst-ip: %w", err)
		}
		traffic = &frontend.Traffic{Dst: dst, DstIP: dstIP, Size: o.size, Duration: o.duration}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.duration > 0 && traffic == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}

	var g *frontend.Guest
	if o.server {
		g, err = frontend.Listen(o.socket, cfg)
	} else {
		g, err = dialRetry(ctx, o, cfg)
	}
	if err != nil {
		return err
	}
	defer g.Close()
	start := time.Now()
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	runErr := make(chan error, 1)
	go func() { runErr <- g.Run(runCtx) }()

	var sendErr error
	var sent uint64
	if traffic != nil {
		wctx, cancel := context.WithTimeout(ctx, o.connectFor)
		err := g.WaitConnected(wctx)
		cancel()
		if err != nil {
			cancelRun()
			<-runErr
			return err
		}
		sent, sendErr = sendAll(ctx, g, *traffic, o)
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := g.Flush(fctx); err != nil {
			sendErr = errors.Join(sendErr, err)
		}
		cancel()
		log.Info("sending done", "frames", sent, "elapsed", time.Since(start).Round(time.Millisecond))
		select {
		case <-ctx.Done():
		case <-time.After(o.linger):
		}
		cancelRun()
	}
	err = <-runErr
	elapsed := time.Since(start)
	if perr := printSummary(stdout, g.Stats(), elapsed, o.jsonOut); perr != nil {
		return perr
	}
	return errors.Join(err, sendErr)
}

func dialRetry(ctx context.Context, o options, cfg frontend.Config) (*frontend.Guest, error) {
	deadline := time.Now().Add(o.connectFor)
	for {
		g, err := frontend.Dial(o.socket, cfg)
		if err == nil || time.Now().After(deadline) {
			return g, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// sendAll splits the count and rate over the queue pairs, one sender each.
func sendAll(ctx context.Context, g *frontend.Guest, t frontend.Traffic, o options) (uint64, error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total uint64
	var errs []error
	for q := range o.queues {
		tq := t
		tq.Queue, tq.Stream = q, uint32(o.stream)+uint32(q)
		tq.Rate = o.rate / float64(o.queues)
		if o.count > 0 {
			tq.Count = o.count / uint64(o.queues)
			if uint64(q) < o.count%uint64(o.queues) {
				tq.Count++
			}
			if tq.Count == 0 {
				continue
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := g.Generate(ctx, tq)
			mu.Lock()
			total += n
			if err != nil {
				errs = append(errs, fmt.Errorf("queue %d: %w", tq.Queue, err))
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total, errors.Join(errs...)
}

type summary struct {
	ElapsedSeconds float64 `json:"elapsed_s"`
	frontend.Stats
}

func printSummary(w io.Writer, s frontend.Stats, elapsed time.Duration, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(summary{ElapsedSeconds: elapsed.Seconds(), Stats: s})
	}
	secs := max(elapsed.Seconds(), 1e-9)
	fmt.Fprintf(w, "elapsed %.3fs, connects %d, disconnects %d\n", elapsed.Seconds(), s.Connects, s.Disconnects)
	fmt.Fprintf(w, "rx %d frames %d bytes (%.0f fps), dropped %d, unstamped %d\n", s.RxFrames, s.RxBytes, float64(s.RxFrames)/secs, s.RxDropped, s.Unstamped)
	fmt.Fprintf(w, "tx %d frames %d bytes (%.0f fps), ring full %d\n", s.TxFrames, s.TxBytes, float64(s.TxFrames)/secs, s.TxRingFull)
	fmt.Fprintf(w, "arp replies %d, icmp replies %d, kicks %d, wakeups %d\n", s.ARPReplies, s.ICMPReplies, s.Kicks, s.Wakeups)
	for i, q := range s.Queues {
		fmt.Fprintf(w, "queue %d: rx %d tx %d\n", i, q.RxFrames, q.TxFrames)
	}
	for _, st := range s.Streams {
		fmt.Fprintf(w, "stream %d: received %d lost %d reordered %d duplicates %d max_seq %d latency p50 %v p99 %v max %v\n",
			st.Stream, st.Received, st.Lost, st.Reordered, st.Duplicates, st.MaxSeq, st.LatencyP50, st.LatencyP99, st.LatencyMax)
	}
	return nil
}
