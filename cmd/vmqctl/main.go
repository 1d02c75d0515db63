// Command vmqctl is the CLI for vmqd's control API.
//
//	vmqctl [--socket PATH] [-o table|json] vm list
//	vmqctl vm show NAME
//	vmqctl vm add NAME --mac MAC --socket PATH [--vlan N] [--mode server|client] [--queue-pairs N] [--allow-spoofing]
//	vmqctl vm set NAME [--rx-pps N] [--rx-bps N] [--tx-pps N] [--tx-bps N] [--flood-pps N]
//	vmqctl vm rm NAME
//	vmqctl vm migrate-prepare NAME --socket PATH [--mode server|client]
//	vmqctl vm migrate-abort NAME
//	vmqctl status
//	vmqctl stats
//	vmqctl health [--addr HOST:PORT] [--live]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/dataplane"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: vmqctl [--socket API_SOCKET] [-o table|json] [--timeout D] COMMAND

(on "vm add", --socket is the VM's vhost-user socket; give the API socket
before the command or in VMQ_SOCKET)

commands:
  vm list                         list VMs
  vm show NAME                    one VM with its counters
  vm add NAME --mac MAC --socket PATH [--vlan N] [--mode server|client]
             [--queue-pairs N] [--allow-spoofing] [limit flags]
             [--queue dedicated [--queue-id N] [--dedicated required|preferred]]
  vm set NAME [--rx-pps N] [--rx-bps N] [--tx-pps N] [--tx-bps N] [--flood-pps N]
                                  change a running VM's QoS limits live
                                  (frames or bits per second; 0 clears;
                                  flags not given keep their value;
                                  --flood-pps: broadcast and multicast
                                  frames from the guest, default 10000)
  vm rm NAME                      remove a VM
  vm migrate-prepare NAME --socket PATH [--mode server|client]
                                  open a standby port for a migration's destination QEMU
  vm migrate-abort NAME           close the standby port (a failed migration)
  status                          NIC and worker status
  stats                           dataplane counters
  health [--addr HOST:PORT] [--live]
                                  vmqd's /healthz and /readyz on its metrics
                                  listener (env VMQ_METRICS_ADDR); exit 1
                                  when a check fails
`

// errUsage marks errors that deserve the usage text (exit 2).
var errUsage = errors.New("usage")

type cli struct {
	socket  string
	output  string
	timeout time.Duration
	stdout  io.Writer
}

// run is vmqctl without the process: tests call it against a test server.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := &cli{stdout: stdout}
	fs := flag.NewFlagSet("vmqctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.globalFlags(fs)
	err := fs.Parse(args)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		err = fmt.Errorf("%w: %v", errUsage, err)
	}
	if err == nil {
		err = c.dispatch(ctx, fs.Args())
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "vmqctl: %v\n\n%s", err, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "vmqctl: %v\n", err)
		return 1
	}
}

// globalFlags are the flags before the command.
func (c *cli) globalFlags(fs *flag.FlagSet) {
	def := os.Getenv("VMQ_SOCKET")
	if def == "" {
		def = control.DefaultAPISocket
	}
	fs.StringVar(&c.socket, "socket", def, "vmqd API socket (env VMQ_SOCKET)")
	fs.StringVar(&c.output, "o", "table", "output format: table or json")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "request timeout")
}

// parseInterleaved lets flags follow positional arguments
// ("vm add NAME --mac ..."), which package flag alone does not.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func (c *cli) dispatch(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command", errUsage)
	}
	cmd, args := args[0], args[1:]
	if cmd == "vm" {
		if len(args) == 0 {
			return fmt.Errorf("%w: vm needs list, show, add, set or rm", errUsage)
		}
		cmd, args = "vm "+args[0], args[1:]
	}
	var vm control.VMConfig
	var mig control.MigrationRequest
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	// The global flags may also follow the command ("vm list -o json"),
	// except that on "vm add" --socket is the VM's vhost-user socket.
	fs.StringVar(&c.output, "o", c.output, "output format: table or json")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "request timeout")
	if cmd == "vm migrate-prepare" {
		fs.StringVar(&mig.Socket, "socket", "", "the destination QEMU's vhost-user socket path (required)")
		fs.StringVar(&mig.Mode, "mode", control.ModeServer, "vhost-user mode: server (vmqd listens) or client")
	} else if cmd == "vm add" {
		fs.StringVar(&vm.MAC, "mac", "", "VM MAC address (required)")
		fs.IntVar(&vm.VLAN, "vlan", 0, "access VLAN (0 = untagged)")
		fs.StringVar(&vm.Socket, "socket", "", "vhost-user socket path (required)")
		fs.StringVar(&vm.Mode, "mode", control.ModeServer, "vhost-user mode: server (vmqd listens) or client")
		fs.IntVar(&vm.QueuePairs, "queue-pairs", 1, "virtqueue pairs")
		fs.BoolVar(&vm.AllowSpoofing, "allow-spoofing", false, "let the guest send with other source MACs")
		fs.BoolVar(&vm.NoOffloads, "no-offloads", false, "offer the guest no checksum or TSO offloads")
		fs.StringVar(&vm.Queue, "queue", "", "shared (default) or dedicated: a NIC queue of the VM's own")
		fs.Func("queue-id", "the dedicated queue (default: the lowest free one)", func(s string) error {
			q, err := strconv.Atoi(s)
			if err != nil {
				return fmt.Errorf("queue id %q: %w", s, err)
			}
			vm.QueueID = &q
			return nil
		})
		fs.StringVar(&vm.Dedicated, "dedicated", "", "preferred (shared mode if the NIC cannot steer) or required")
	} else {
		fs.StringVar(&c.socket, "socket", c.socket, "vmqd API socket")
	}
	addr, live := healthAddr(), false
	if cmd == "health" {
		fs.StringVar(&addr, "addr", addr, "vmqd metrics listener (env VMQ_METRICS_ADDR)")
		fs.BoolVar(&live, "live", false, "only /healthz (liveness)")
	}
	var lim control.Limits
	if cmd == "vm add" || cmd == "vm set" {
		fs.Uint64Var(&lim.RxPPS, "rx-pps", 0, "RX limit, frames/s (0 = none)")
		fs.Uint64Var(&lim.RxBPS, "rx-bps", 0, "RX limit, bits/s (0 = none)")
		fs.Uint64Var(&lim.TxPPS, "tx-pps", 0, "TX limit, frames/s (0 = none)")
		fs.Uint64Var(&lim.TxBPS, "tx-bps", 0, "TX limit, bits/s (0 = none)")
		fs.Func("flood-pps", fmt.Sprintf("storm control: broadcast and multicast frames/s from the guest (0 = none; default %d)", control.DefaultFloodPPS), func(s string) error {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return fmt.Errorf("flood-pps %q: %w", s, err)
			}
			lim.FloodPPS = &v
			return nil
		})
	}
	args, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	vm.Limits = lim
	// vm set sends only the limits named on the command line.
	var patch control.LimitsPatch
	set := 0
	fs.Visit(func(f *flag.Flag) {
		p := map[string]**uint64{"rx-pps": &patch.RxPPS, "rx-bps": &patch.RxBPS, "tx-pps": &patch.TxPPS, "tx-bps": &patch.TxBPS}[f.Name]
		if p != nil {
			v := f.Value.(flag.Getter).Get().(uint64)
			*p = &v
			set++
		}
		if f.Name == "flood-pps" {
			patch.FloodPPS = lim.FloodPPS
			set++
		}
	})
	if c.output != "table" && c.output != "json" {
		return fmt.Errorf("%w: -o %q: want table or json", errUsage, c.output)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cl := control.NewClient(c.socket)
	defer cl.Close()
	switch cmd {
	case "status":
		return c.status(ctx, cl, args)
	case "stats":
		return c.stats(ctx, cl, args)
	case "health":
		return c.health(ctx, addr, live, args)
	case "vm list", "vm ls":
		return c.vmList(ctx, cl, args)
	case "vm show":
		return c.vmShow(ctx, cl, args)
	case "vm add":
		return c.vmAdd(ctx, cl, vm, args)
	case "vm set":
		if set == 0 {
			return fmt.Errorf("%w: vm set needs at least one of --rx-pps, --rx-bps, --tx-pps, --tx-bps, --flood-pps", errUsage)
		}
		return c.vmSet(ctx, cl, patch, args)
	case "vm rm", "vm remove":
		return c.vmRemove(ctx, cl, args)
	case "vm migrate-prepare":
		name, err := oneName(cmd, args)
		if err != nil {
			return err
		}
		return cl.PrepareMigration(ctx, name, mig)
	case "vm migrate-abort":
		name, err := oneName(cmd, args)
		if err != nil {
			return err
		}
		return cl.AbortMigration(ctx, name)
	}
	return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
}

func noArgs(cmd string, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: %s takes no arguments, got %q", errUsage, cmd, args)
	}
	return nil
}

func oneName(cmd string, args []string) (string, error) {
	if len(args) != 1 {
		return "", fmt.Errorf("%w: %s needs exactly one VM name", errUsage, cmd)
	}
	return args[0], nil
}

func (c *cli) json(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *cli) table(header string, rows [][]any) error {
	tw := newTab(c.stdout)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		s := make([]string, len(r))
		for i, v := range r {
			s[i] = fmt.Sprint(v)
		}
		fmt.Fprintln(tw, strings.Join(s, "\t"))
	}
	return tw.Flush()
}

func (c *cli) vmList(ctx context.Context, cl *control.Client, args []string) error {
	if err := noArgs("vm list", args); err != nil {
		return err
	}
	vms, err := cl.ListVMs(ctx)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(vms)
	}
	rows := make([][]any, len(vms))
	for i, v := range vms {
		rows[i] = []any{v.Name, v.Slot, v.State, v.MAC, vlanString(v.VLAN), v.Mode, v.QueuePairs, v.Socket, v.Source}
	}
	return c.table("NAME\tSLOT\tSTATE\tMAC\tVLAN\tMODE\tQP\tSOCKET\tSOURCE", rows)
}

func vlanString(v int) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprint(v)
}

func (c *cli) vmShow(ctx context.Context, cl *control.Client, args []string) error {
	name, err := oneName("vm show", args)
	if err != nil {
		return err
	}
	d, err := cl.GetVM(ctx, name)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(d)
	}
	tw := newTab(c.stdout)
	kv := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
	kv("Name", d.Name)
	kv("Slot", d.Slot)
	kv("State", d.State)
	if d.Error != "" {
		kv("Error", d.Error)
	}
	kv("Source", d.Source)
	kv("MAC", d.MAC)
	kv("VLAN", vlanString(d.VLAN))
	kv("Socket", fmt.Sprintf("%s (%s)", d.Socket, d.Mode))
	kv("Queue pairs", d.QueuePairs)
	kv("Allow spoofing", d.AllowSpoofing)
	kv("Offloads", !d.NoOffloads)
	kv("Limits", limitsString(d.Limits))
	if p := d.Port; p != nil {
		kv("Connected", p.Connected)
		if p.Broken != "" {
			kv("Broken", p.Broken)
		}
		kv("Features", fmt.Sprintf("%#x (protocol %#x)", p.Features, p.ProtocolFeatures))
	}
	if s := d.Stats; s != nil {
		kv("RX", fmt.Sprintf("%d packets, %d bytes", s.RxPackets, s.RxBytes))
		kv("TX", fmt.Sprintf("%d packets, %d bytes", s.TxPackets, s.TxBytes))
		kv("Flood copies", s.FloodCopies)
		kv("RX copied", fmt.Sprintf("%d bytes", s.RxCopiedBytes))
		if q := s.Dedicated; q != nil {
			mode := "copy mode"
			if q.ZeroCopy {
				mode = "zero-copy"
			}
			kv("Dedicated queue", fmt.Sprintf("%d (%s): %s, %s, %s; %d frames in place, %d buffers posted",
				q.Queue, q.Mode, q.State, mode, q.Steering, q.Frames, q.Posted))
			if q.Reason != "" {
				kv("Fallback", fmt.Sprintf("%s (%d times)", q.Reason, q.Fallbacks))
			}
		}
		kv("Filter", fmt.Sprintf("%d packets, %d bytes, %d redirect errors", s.FilterPackets, s.FilterBytes, s.FilterRedirErrs))
		kv("Drops", dropsString(s.DropsByReason))
	}
	return tw.Flush()
}

// limitsString lists the limits set, or "none".
func limitsString(l control.Limits) string {
	var parts []string
	for _, f := range []struct {
		name string
		v    uint64
	}{{"rx_pps", l.RxPPS}, {"rx_bps", l.RxBPS}, {"tx_pps", l.TxPPS}, {"tx_bps", l.TxBPS}} {
		if f.v > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", f.name, f.v))
		}
	}
	switch {
	case l.FloodPPS == nil:
		parts = append(parts, fmt.Sprintf("flood_pps=%d (default)", l.Flood()))
	case *l.FloodPPS == 0:
		parts = append(parts, "flood_pps=unlimited")
	default:
		parts = append(parts, fmt.Sprintf("flood_pps=%d", *l.FloodPPS))
	}
	return strings.Join(parts, " ")
}

func (c *cli) vmSet(ctx context.Context, cl *control.Client, patch control.LimitsPatch, args []string) error {
	name, err := oneName("vm set", args)
	if err != nil {
		return err
	}
	info, err := cl.PatchVM(ctx, name, control.VMPatch{Limits: &patch})
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(info)
	}
	fmt.Fprintf(c.stdout, "VM %s limits: %s\n", info.Name, limitsString(info.Limits))
	return nil
}

// dropsString lists nonzero drop counters by reason, sorted.
func dropsString(m map[string]uint64) string {
	var parts []string
	for r, n := range m {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", r, n))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func dropsTotal(m map[string]uint64) uint64 {
	var t uint64
	for _, n := range m {
		t += n
	}
	return t
}

func (c *cli) vmAdd(ctx context.Context, cl *control.Client, vm control.VMConfig, args []string) error {
	name, err := oneName("vm add", args)
	if err != nil {
		return err
	}
	vm.Name = name
	if vm.MAC == "" || vm.Socket == "" {
		return fmt.Errorf("%w: vm add needs --mac and --socket", errUsage)
	}
	info, err := cl.AddVM(ctx, vm)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(info)
	}
	fmt.Fprintf(c.stdout, "added VM %s on slot %d\n", info.Name, info.Slot)
	return nil
}

func (c *cli) vmRemove(ctx context.Context, cl *control.Client, args []string) error {
	name, err := oneName("vm rm", args)
	if err != nil {
		return err
	}
	if err := cl.RemoveVM(ctx, name); err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(map[string]string{"removed": name})
	}
	fmt.Fprintf(c.stdout, "removed VM %s\n", name)
	return nil
}

func (c *cli) status(ctx context.Context, cl *control.Client, args []string) error {
	if err := noArgs("status", args); err != nil {
		return err
	}
	st, err := cl.Status(ctx)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(st)
	}
	n := st.NIC
	attach := "detached"
	if n.Attached {
		attach = "XDP " + n.AttachMode
	}
	fmt.Fprintf(c.stdout, "NIC %s (ifindex %d, %s, mtu %d): %s, queues %v of %d, frame size %d\n",
		n.Name, n.Index, n.Driver, n.MTU, attach, n.Queues, n.Channels, n.FrameSize)
	for _, note := range n.Notes {
		fmt.Fprintf(c.stdout, "  note: %s\n", note)
	}
	fmt.Fprintf(c.stdout, "VMs: %d (%d running), slots max %d; up since %s\n",
		st.VMs, st.VMsRunning, st.SlotsMax, st.StartedAt.UTC().Format(time.RFC3339))
	if st.HousekeepingCPUs != "" {
		fmt.Fprintf(c.stdout, "Threads other than the workers run on CPUs %s\n", st.HousekeepingCPUs)
	}
	if st.KeepSteeringOnExit {
		fmt.Fprintln(c.stdout, "Steering stays on exit.")
	}
	for _, r := range st.RestartPending {
		fmt.Fprintf(c.stdout, "Restart needed for: %s\n", r)
	}
	fmt.Fprintln(c.stdout)
	rows := make([][]any, len(st.Workers))
	for i, w := range st.Workers {
		cpus := w.CPUs
		if cpus == "" {
			cpus = "-"
		}
		rows[i] = []any{w.Queue, cpus, busyPercent(w), w.Batches, w.Wakeups, w.Polls, w.VirtQueues, w.XDPSockets,
			fmt.Sprintf("%d/%d", w.FreeFrames, w.TotalFrames), w.InFlightFrames, w.Stalls,
			txPath(w), w.TxXDPFrames, w.TxSocketFrames, w.XDPTxFallbacks, w.XDPTxResent}
	}
	if err := c.table("QUEUE\tCPUS\tBUSY\tBATCHES\tWAKEUPS\tPOLLS\tVQS\tXSKS\tFREE/FRAMES\tINFLIGHT\tSTALLS\tTX_PATH\tTX_XDP\tTX_SOCKET\tXDP_FAILS\tXDP_RESENT", rows); err != nil {
		return err
	}
	return c.dedicatedStatus(ctx, cl)
}

// dedicatedStatus lists the VMs that asked for a dedicated queue: which
// queue, direct or fallen back, zero-copy or copy mode.
func (c *cli) dedicatedStatus(ctx context.Context, cl *control.Client) error {
	s, err := cl.Stats(ctx)
	if err != nil {
		return err
	}
	var rows [][]any
	for _, v := range s.VMs {
		if d := v.Dedicated; d != nil {
			mode := "copy"
			if d.ZeroCopy {
				mode = "zero-copy"
			}
			reason := d.Reason
			if reason == "" {
				reason = "-"
			}
			rows = append(rows, []any{v.Name, d.Queue, d.Mode, d.State, mode, d.Frames, v.RxCopiedBytes, reason})
		}
	}
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(c.stdout)
	return c.table("DEDICATED_VM\tQUEUE\tMODE\tSTATE\tXSK\tIN_PLACE\tCOPIED_BYTES\tFALLBACK", rows)
}

func busyPercent(w dataplane.WorkerStats) string {
	if w.BusyNS+w.IdleNS == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(w.BusyNS)/float64(w.BusyNS+w.IdleNS))
}

func (c *cli) stats(ctx context.Context, cl *control.Client, args []string) error {
	if err := noArgs("stats", args); err != nil {
		return err
	}
	s, err := cl.Stats(ctx)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(s)
	}
	f := s.Filter
	fmt.Fprintf(c.stdout, "filter: redirected %d, passed %d, flooded %d, malformed %d, no socket %d\n\n",
		f.Redirected, f.Passed, f.Flooded, f.Malformed, f.NoSocket)
	rows := make([][]any, len(s.VMs))
	for i, v := range s.VMs {
		rows[i] = []any{v.Name, v.Slot, v.RxPackets, v.RxBytes, v.TxPackets, v.TxBytes, v.FloodCopies, dropsTotal(v.DropsByReason)}
	}
	if err := c.table("VM\tSLOT\tRX_PKTS\tRX_BYTES\tTX_PKTS\tTX_BYTES\tFLOOD\tDROPS", rows); err != nil {
		return err
	}
	if len(s.Sockets) == 0 {
		return nil
	}
	fmt.Fprintln(c.stdout)
	rows = make([][]any, len(s.Sockets))
	for i, k := range s.Sockets {
		vm := k.VM
		if vm == "" {
			vm = "(flood)"
		}
		rows[i] = []any{vm, k.Queue, k.ZeroCopy, k.RxDropped, k.RxInvalid, k.TxInvalid, k.RxRingFull, k.FillRingEmpty, k.TxRingEmpty}
	}
	return c.table("SOCKET_VM\tQUEUE\tZC\tRX_DROP\tRX_INVAL\tTX_INVAL\tRX_FULL\tFILL_EMPTY\tTX_EMPTY", rows)
}

func newTab(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// txPath is a worker's transmit path ("-" from a vmqd without one).
func txPath(w dataplane.WorkerStats) string {
	if w.TxPath == "" {
		return "-"
	}
	return w.TxPath
}
