package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Point is one system's measurement of one case at one frame size, with
// the source sending as fast as it can (overload).
type Point struct {
	Case
	Size   int    `json:"frame_size"` // bytes on the wire without FCS
	System string `json:"system"`
	// Seconds the source sent for; Sent and Received frames over the whole
	// run (counted after the path drained).
	Seconds  float64 `json:"seconds"`
	Sent     uint64  `json:"sent"`
	Received uint64  `json:"received"`
	// OfferedMpps = Sent/Seconds, DeliveredMpps = Received/Seconds.
	OfferedMpps   float64 `json:"offered_mpps"`
	DeliveredMpps float64 `json:"delivered_mpps"`
	LossPct       float64 `json:"loss_pct"`
	// BusyNSPerFrame is the switch's forwarding core's time in iterations
	// that moved frames ÷ frames moved (DPDK: --record-core-cycles at its
	// TSC frequency; vmq: the worker's counters, BusyHow says which). -1
	// when not measured.
	BusyNSPerFrame float64 `json:"busy_ns_per_frame"`
	BusyHow        string  `json:"busy_how"`
	// BusyNSPerDelivered is the same busy time over the frames the
	// receiver got (busyPerDelivered); -1 when not measured.
	BusyNSPerDelivered float64 `json:"busy_ns_per_delivered"`
	// SUTCPU is the switch's processes' CPU time from /proc per second of
	// the run (1 = one CPU); CPUNSPerFrame that time ÷ frames received.
	SUTCPU        float64 `json:"sut_cpu"`
	CPUNSPerFrame float64 `json:"sut_cpu_ns_per_frame"`
	// CopiedPerFrame is the frame bytes vmq's workers copied into guests
	// per frame they delivered (rx_copied_bytes): the frame on the shared
	// path, 0 on a dedicated queue. -1 when not measured (DPDK).
	CopiedPerFrame float64 `json:"rx_copied_bytes_per_frame"`
	// SourceCPU and ReceiverCPU: the guests' and generator's processes, as
	// SUTCPU (the wire sink and the generator's kernel work are in the
	// sender's time).
	SourceCPU   float64 `json:"source_cpu"`
	ReceiverCPU float64 `json:"receiver_cpu"`
	// OthersCPU is each CPU's busy time from /proc/stat not spent in this
	// run's processes, per second: other work on a shared machine.
	OthersCPU [2]float64 `json:"others_cpu"`
	LoadAvg   string     `json:"loadavg"`
	Note      string     `json:"note,omitempty"`
	Err       string     `json:"error,omitempty"`
}

// ZeroLossPoint is one system's repeated zero-loss searches of one case.
type ZeroLossPoint struct {
	Case
	Size   int    `json:"frame_size"`
	System string `json:"system"`
	Repeated
	// TopMpps is where every search of both systems started: the higher
	// of the two systems' delivered rates at overload in this run, raised
	// by a tenth (one start, one grid of rates for both).
	TopMpps float64 `json:"top_mpps"`
	LoadAvg string  `json:"loadavg"`
	Err     string  `json:"error,omitempty"`
}

// Report is a whole run.
type Report struct {
	Command  string    `json:"command"`
	Started  time.Time `json:"started"`
	Duration string    `json:"duration"`
	Host     string    `json:"host"`
	Kernel   string    `json:"kernel"`
	CPUs     int       `json:"cpus"`
	// TSCMHz is the TSC frequency DPDK measured (testpmd prints it with
	// the core cycles); DPDK's cycles are converted with it.
	TSCMHz uint64 `json:"tsc_mhz"`
	// LoadAvg is /proc/loadavg at the start and the end.
	LoadAvg  [2]string       `json:"loadavg"`
	Settings string          `json:"settings"`
	Points   []Point         `json:"points"`
	ZeroLoss []ZeroLossPoint `json:"zero_loss"`
}

// Failed lists every measurement that failed.
func (r *Report) Failed() []string {
	var out []string
	for _, p := range r.Points {
		if p.Err != "" {
			out = append(out, fmt.Sprintf("%s %d B %s: %s", p.Key(), p.Size, p.System, p.Err))
		}
	}
	for _, z := range r.ZeroLoss {
		if z.Err != "" {
			out = append(out, fmt.Sprintf("zero-loss %s %d B %s: %s", z.Key(), z.Size, z.System, z.Err))
		}
	}
	return out
}

func (r *Report) point(c Case, size int, system string) (Point, bool) {
	for _, p := range r.Points {
		if p.Case == c && p.Size == size && p.System == system {
			return p, true
		}
	}
	return Point{}, false
}

// pairs are the (case, size) shapes in the order first measured: the
// dedicated part's (a Queue) or the others'.
func (r *Report) pairs(dedicated bool) []Point {
	var out []Point
	seen := map[string]bool{}
	for _, p := range r.Points {
		if (p.Queue != 0) != dedicated {
			continue
		}
		k := fmt.Sprintf("%s/%d", p.Key(), p.Size)
		if !seen[k] {
			seen[k] = true
			out = append(out, p)
		}
	}
	return out
}

// Table is the side-by-side comparison: one row per case and size, vmq
// and DPDK measured back to back in this run. The README's table is this.
func (r *Report) Table() string {
	if len(r.pairs(false)) == 0 {
		return "" // a run of the dedicated part alone
	}
	var b strings.Builder
	b.WriteString("| dir | frame B | CPUs src/switch/dst | source → receiver | Mpps vmq | Mpps DPDK | vmq/DPDK | loss % vmq / DPDK | busy ns/frame vmq / DPDK | busy ns/delivered vmq / DPDK | CPU ns/frame vmq / DPDK | switch CPU vmq / DPDK | others' CPU 0 / 1 |\n")
	b.WriteString("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, k := range r.pairs(false) {
		v, vok := r.point(k.Case, k.Size, VMQ)
		d, dok := r.point(k.Case, k.Size, DPDK)
		ratio := "–"
		if vok && dok && v.Err == "" && d.Err == "" && d.DeliveredMpps > 0 {
			ratio = fmt.Sprintf("%.2f", v.DeliveredMpps/d.DeliveredMpps)
		}
		// Others' share: the larger of the two systems' rows, the worse case.
		var others [2]float64
		for _, p := range []Point{v, d} {
			others[0], others[1] = max(others[0], p.OthersCPU[0]), max(others[1], p.OthersCPU[1])
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s → %s | %s | %s | %s | %s / %s | %s / %s | %s / %s | %s / %s | %s / %s | %.0f%% / %.0f%% |\n",
			k.Dir, k.Size, k.Placement, k.Source, k.Receiver, val(vok, v, mpps), val(dok, d, mpps), ratio,
			val(vok, v, loss), val(dok, d, loss), val(vok, v, busy), val(dok, d, busy),
			val(vok, v, busyDel), val(dok, d, busyDel), val(vok, v, cpu), val(dok, d, cpu), val(vok, v, share), val(dok, d, share), 100*others[0], 100*others[1])
	}
	return b.String()
}

// Formatting of one column of a point; val says "failed" for a point that
// failed or is missing.
var (
	mpps    = func(p Point) string { return fmt.Sprintf("%.3f", p.DeliveredMpps) }
	loss    = func(p Point) string { return fmt.Sprintf("%.1f", p.LossPct) }
	busy    = func(p Point) string { return ns(p.BusyNSPerFrame) }
	busyDel = func(p Point) string { return ns(p.BusyNSPerDelivered) }
	cpu     = func(p Point) string { return ns(p.CPUNSPerFrame) }
	share   = func(p Point) string { return fmt.Sprintf("%.0f%%", 100*p.SUTCPU) }
	copied  = func(p Point) string { return ns(p.CopiedPerFrame) }
)

func val(ok bool, p Point, f func(Point) string) string {
	if !ok || p.Err != "" {
		return "failed"
	}
	return f(p)
}

// DedicatedTable is the dedicated part: RX into a guest with its frames on
// a NIC queue of its own, vmq's shared (copying) path, vmq's dedicated
// queue and DPDK, one row per case and size. Empty when the run had none.
func (r *Report) DedicatedTable() string {
	rows := r.pairs(true)
	if len(rows) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("| frame B | CPUs src/switch/dst | queue | Mpps vmq shared / dedicated / DPDK | dedicated/DPDK | loss % shared / dedicated / DPDK | busy ns/frame shared / dedicated / DPDK | busy ns/delivered shared / dedicated / DPDK | CPU ns/frame shared / dedicated / DPDK | copied B/frame shared / dedicated | switch CPU shared / dedicated / DPDK | others' CPU 0 / 1 |\n")
	b.WriteString("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, k := range rows {
		var pts [3]Point
		var oks [3]bool
		var others [2]float64
		for i, sys := range []string{VMQ, VMQDedicated, DPDK} {
			pts[i], oks[i] = r.point(k.Case, k.Size, sys)
			others[0], others[1] = max(others[0], pts[i].OthersCPU[0]), max(others[1], pts[i].OthersCPU[1])
		}
		three := func(f func(Point) string) string {
			return fmt.Sprintf("%s / %s / %s", val(oks[0], pts[0], f), val(oks[1], pts[1], f), val(oks[2], pts[2], f))
		}
		ratio := "–"
		if oks[1] && oks[2] && pts[1].Err == "" && pts[2].Err == "" && pts[2].DeliveredMpps > 0 {
			ratio = fmt.Sprintf("%.2f", pts[1].DeliveredMpps/pts[2].DeliveredMpps)
		}
		fmt.Fprintf(&b, "| %d | %s | %d | %s | %s | %s | %s | %s | %s | %s / %s | %s | %.0f%% / %.0f%% |\n",
			k.Size, k.Placement, k.Queue, three(mpps), ratio, three(loss), three(busy), three(busyDel), three(cpu),
			val(oks[0], pts[0], copied), val(oks[1], pts[1], copied), three(share), 100*others[0], 100*others[1])
	}
	return b.String()
}

// DedicatedLegend explains the dedicated part's table.
const DedicatedLegend = `RX (vmq-pktgen → testpmd rxonly guest) with the VM's frames on NIC queue 1 of a 2-queue veth
(the generator runs on CPU 1: veth puts a frame on the rx queue of the CPU that sent it, as a NIC's flow
rule would put the VM's MAC on its queue). Shared: vmqd serves queue 1 as its shared queue (the kernel
copies each frame into the socket's UMEM, the worker into the guest). Dedicated: the VM has queue 1 to
itself, its socket's UMEM is the guest's memory, the kernel writes each frame into the guest's buffer.
DPDK: testpmd net_af_xdp on queue 1 (start_queue=1) → net_vhost. Same guest, same CPUs for the three.
Copied B/frame: frame bytes vmq's worker copied into the guest per frame delivered (rx_copied_bytes).`

// ZeroLossTable compares the zero-loss searches: per system the median
// and range of its searches and each search's result; with trials, every
// trial of every search too (results.md; the README leaves them out).
func (r *Report) ZeroLossTable(trials bool) string {
	if len(r.ZeroLoss) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("| dir | frame B | CPUs src/switch/dst | source → receiver | system | zero-loss Mpps, median | range | each search, in order | searched from Mpps |")
	if trials {
		b.WriteString(" trials of each search (Mpps: lost) |\n|---|---:|---|---|---|---:|---|---|---:|---|\n")
	} else {
		b.WriteString("\n|---|---:|---|---|---|---:|---|---|---:|\n")
	}
	for _, z := range r.ZeroLoss {
		at := ""
		if z.AtTop {
			at = "≥ "
		}
		res := fmt.Sprintf("%s%.3f", at, z.MedianMpps)
		rng := fmt.Sprintf("%.3f–%.3f", z.MinMpps, z.MaxMpps)
		if len(z.Searches) == 0 {
			res, rng = "–", "–"
		}
		if z.Err != "" {
			res = "failed"
		}
		var each, tr []string
		for _, s := range z.Searches {
			e := fmt.Sprintf("%.3f", s.ZeroLossMpps)
			if s.AtTop {
				e = "≥ " + e
			}
			each = append(each, e)
			var ts []string
			for _, t := range s.Trials {
				ts = append(ts, fmt.Sprintf("%.3f: %d", t.RateMpps, t.Lost()))
			}
			tr = append(tr, strings.Join(ts, ", "))
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s → %s | %s | %s | %s | %s | %.3f |", z.Dir, z.Size, z.Placement, z.Source, z.Receiver,
			z.System, res, rng, strings.Join(each, ", "), z.TopMpps)
		if trials {
			fmt.Fprintf(&b, " %s |", strings.Join(tr, "; "))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func ns(v float64) string {
	if v < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f", v)
}

// Header says what ran, when, where and how loaded the machine was.
func (r *Report) Header() string {
	return fmt.Sprintf("Command: `%s`  \nStarted %s, took %s on %s (kernel %s, %d CPUs, TSC %d MHz as DPDK measured it); "+
		"load average %s at the start, %s at the end.  \n%s\n",
		r.Command, r.Started.Format("2006-01-02 15:04 MST"), r.Duration, r.Host, r.Kernel, r.CPUs, r.TSCMHz,
		r.LoadAvg[0], r.LoadAvg[1], r.Settings)
}

// Legend explains the columns; the README carries it with the table.
const Legend = `CPUs src/switch/dst: the CPU of the traffic source (vmq-pktgen, or the sending guest), of the
switch under test (vmqd, or DPDK's forwarding testpmd) and of the receiving guest ("wire": an XDP_DROP
counter on the wire end, which runs where the switch transmits). A switch on "1+0" (split) forwards on
CPU 1 (vmqd's worker_cpus, DPDK's forwarding lcore) with its control part on CPU 0 (vmqd's
housekeeping_cpus: the Go runtime's threads, API, ports; DPDK's main lcore); without "+", all of vmqd
runs on the one CPU, and so do DPDK's two lcores (its EAL threads go to the CPUs no lcore has, as in
every row). Others' CPU counts a split switch's whole time on its forwarding CPU. Mpps: frames received ÷ the source's
sending time, source at full speed. Busy ns/frame: the switch's forwarding core's time in iterations
that moved frames ÷ frames moved (DPDK: --record-core-cycles ÷ TSC; vmq: the worker's counters).
Busy ns/delivered: the same busy time ÷ frames the receiver got (where the guest starves, DPDK's forwarder
moves frames it then drops at the guest's ring, while vmq's worker leaves them in the VM's socket ring).
CPU ns/frame: the switch's CPU time from /proc ÷ frames received. Switch CPU: its CPU time per second.
Others' CPU: busy time of each CPU not spent in this run's processes (other work on the machine).`

// ZeroLossLegend explains the zero-loss table.
const ZeroLossLegend = `RFC 2544 binary searches, 0 frames lost over each trial, the switch alone on its CPU; ` +
	`each system searched several times, the two systems' searches interleaved (vmq, DPDK, DPDK, vmq, ...) from one start rate ` +
	`on one grid of rates; the median of a system's searches is its result, the range their spread. "≥": nothing was lost at the ` +
	`fastest the source managed, so the source, not the switch, set the rate`

// Markdown is results.md: the header, the tables, then every point.
func (r *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# vmq vs DPDK, %s\n\n%s\n", r.Started.Format("2006-01-02 15:04"), r.Header())
	if f := r.Failed(); len(f) > 0 {
		fmt.Fprintf(&b, "**%d measurements failed:**\n\n", len(f))
		for _, e := range f {
			fmt.Fprintf(&b, "- %s\n", mdEscape(e))
		}
		b.WriteString("\n")
	}
	if t := r.Table(); t != "" {
		fmt.Fprintf(&b, "## Overload\n\n%s\n%s\n", t, Legend)
	}
	if d := r.DedicatedTable(); d != "" {
		fmt.Fprintf(&b, "\n## Dedicated queue\n\n%s\n%s\n", d, DedicatedLegend)
	}
	if z := r.ZeroLossTable(true); z != "" {
		fmt.Fprintf(&b, "\n## Zero loss\n\n%s.\n\n%s", ZeroLossLegend, z)
	}
	b.WriteString("\n## Every point\n\n| dir | frame B | CPUs | source → receiver | system | s | sent | received | offered Mpps | delivered Mpps | loss % | busy ns/frame | busy ns/delivered | how | switch CPU | CPU ns/frame | copied B/frame | source CPU | receiver CPU | others 0 / 1 | load | note |\n")
	b.WriteString("|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|---|\n")
	for _, p := range r.Points {
		dir := p.Dir
		if p.Queue != 0 {
			dir = fmt.Sprintf("%s q%d", p.Dir, p.Queue)
		}
		if p.Err != "" {
			fmt.Fprintf(&b, "| %s | %d | %s | %s → %s | %s | error: %s |||||||||||||||||\n",
				dir, p.Size, p.Placement, p.Source, p.Receiver, p.System, mdEscape(p.Err))
			continue
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s → %s | %s | %.2f | %d | %d | %.3f | %.3f | %.2f | %s | %s | %s | %.2f | %s | %s | %.2f | %.2f | %.2f / %.2f | %s | %s |\n",
			dir, p.Size, p.Placement, p.Source, p.Receiver, p.System, p.Seconds, p.Sent, p.Received,
			p.OfferedMpps, p.DeliveredMpps, p.LossPct, ns(p.BusyNSPerFrame), ns(p.BusyNSPerDelivered), p.BusyHow, p.SUTCPU, ns(p.CPUNSPerFrame), ns(p.CopiedPerFrame),
			p.SourceCPU, p.ReceiverCPU, p.OthersCPU[0], p.OthersCPU[1], p.LoadAvg, mdEscape(p.Note))
	}
	return b.String()
}

// Readme is the README's Benchmarks table section, to paste between its
// bench markers (make bench-readme does).
func (r *Report) Readme() string {
	var b strings.Builder
	b.WriteString(r.Header() + "\n")
	if t := r.Table(); t != "" {
		fmt.Fprintf(&b, "%s\n%s\n", t, Legend)
	}
	if d := r.DedicatedTable(); d != "" {
		fmt.Fprintf(&b, "\nDedicated queue, same run:\n\n%s\n%s\n", d, DedicatedLegend)
	}
	if z := r.ZeroLossTable(false); z != "" {
		fmt.Fprintf(&b, "\nZero-loss throughput, same run (%s):\n\n%s", ZeroLossLegend, z)
	}
	return b.String()
}

func mdEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "|", "\\|"), "\n", " ")
}

// Write stores results.md, results.json and readme.md in dir.
func (r *Report) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("write report: encode JSON: %w", err)
	}
	for name, body := range map[string][]byte{"results.json": append(js, '\n'),
		"results.md": []byte(r.Markdown()), "readme.md": []byte(r.Readme())} {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return nil
}
