package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Direction of a measurement.
const (
	RX = "rx" // wire → guest
	TX = "tx" // guest → wire
)

// Systems measured.
const (
	Ceiling = "ceiling" // XDP_DROP on the NIC veth
	VMQ     = "vmq"
	DPDK    = "dpdk"
)

// Point is one measurement.
type Point struct {
	Dir    string `json:"dir"`
	System string `json:"system"`
	Size   int    `json:"frame_size"` // frame length without FCS, as sent
	VMs    int    `json:"vms"`        // MACs (VMs) the traffic is spread over
	// OfferedMpps is the source's rate during the window (generator or
	// sending guest); DeliveredMpps what reached the receiver in it.
	OfferedMpps   float64 `json:"offered_mpps"`
	DeliveredMpps float64 `json:"delivered_mpps"`
	// LossPct is 100*(1 - received/sent) over the whole run (warm-up
	// included), counted after the path drained.
	LossPct float64 `json:"loss_pct"`
	// Latency from the sender's timestamp to the guest, over the whole
	// run; -1 when not measured.
	P50 time.Duration `json:"latency_p50_ns"`
	P99 time.Duration `json:"latency_p99_ns"`
	// CPUSeconds is the CPU time (user+system) of the system under test
	// in the window; CPUPerMpkt that divided by the million frames
	// delivered in it. -1 when not measured.
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUPerMpkt float64 `json:"cpu_seconds_per_mpkt"`
	// OthersCPU is the share of the window (0..1) that the system under
	// test's CPU spent on anything but the system under test: other
	// processes on a shared machine. SrcCPUBusy is how busy the traffic
	// source's CPU was (0..1).
	OthersCPU  float64 `json:"others_on_sut_cpu"`
	SrcCPUBusy float64 `json:"src_cpu_busy"`
	// Rounds are the delivered Mpps of every round; the point is the median.
	Rounds []float64 `json:"rounds_mpps,omitempty"`
	// Window is the measured interval.
	Window time.Duration `json:"window_ns"`
	Note   string        `json:"note,omitempty"`
	Err    string        `json:"error,omitempty"`
}

// Key names a point's shape without its system.
func (p Point) Key() string { return fmt.Sprintf("%s/%d/%d", p.Dir, p.Size, p.VMs) }

// Report is a whole suite run.
type Report struct {
	Started  time.Time `json:"started"`
	Host     string    `json:"host"`
	Kernel   string    `json:"kernel"`
	CPUs     int       `json:"cpus"`
	Shape    string    `json:"shape"` // how work was placed on CPUs
	Duration string    `json:"duration"`
	// LoadAvg is /proc/loadavg at the start and the end: the machine may
	// be shared.
	LoadAvg [2]string `json:"loadavg"`
	Points  []Point   `json:"points"`
	Ratios  []Ratio   `json:"ratios"`
}

// Ratio compares vmq with DPDK and with the ceiling at one shape.
type Ratio struct {
	Key         string  `json:"key"`
	VMQOverDPDK float64 `json:"vmq_over_dpdk"`    // delivered Mpps; NaN-free: 0 when unknown
	VMQOverCeil float64 `json:"vmq_over_ceiling"` // delivered Mpps; 0 when unknown
	CPUVsDPDK   float64 `json:"vmq_cpu_over_dpdk_cpu"`
}

// find returns the point of system at key.
func (r *Report) find(system, key string) (Point, bool) {
	for _, p := range r.Points {
		if p.System == system && p.Key() == key && p.Err == "" {
			return p, true
		}
	}
	return Point{}, false
}

// ComputeRatios fills Ratios from Points: one per shape that vmq measured.
func (r *Report) ComputeRatios() {
	r.Ratios = nil
	for _, p := range r.Points {
		if p.System != VMQ || p.Err != "" {
			continue
		}
		k := p.Key()
		ra := Ratio{Key: k}
		if d, ok := r.find(DPDK, k); ok {
			ra.VMQOverDPDK = div(p.DeliveredMpps, d.DeliveredMpps)
			if p.CPUPerMpkt > 0 && d.CPUPerMpkt > 0 {
				ra.CPUVsDPDK = p.CPUPerMpkt / d.CPUPerMpkt
			}
		}
		if c, ok := r.find(Ceiling, k); ok {
			ra.VMQOverCeil = div(p.DeliveredMpps, c.DeliveredMpps)
		}
		r.Ratios = append(r.Ratios, ra)
	}
}

func div(a, b float64) float64 {
	if b <= 0 || math.IsNaN(a) || math.IsNaN(b) {
		return 0
	}
	return a / b
}

// Markdown renders the report as tables.
func (r *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# vmq benchmark %s\n\n", r.Started.Format("2006-01-02 15:04:05"))
	fmt.Fprintf(&b, "Host %s, kernel %s, %d CPUs, suite took %s; load average %s at the start, %s at the end.\n\n%s\n\n",
		r.Host, r.Kernel, r.CPUs, r.Duration, r.LoadAvg[0], r.LoadAvg[1], r.Shape)
	b.WriteString("| dir | frame | VMs | system | offered Mpps | delivered Mpps | loss % | p50 | p99 | CPU s/Mpkt | others on SUT CPU | rounds (Mpps) | note |\n")
	b.WriteString("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|\n")
	pts := append([]Point(nil), r.Points...)
	order := map[string]int{Ceiling: 0, VMQ: 1, DPDK: 2}
	sort.SliceStable(pts, func(i, j int) bool {
		a, c := pts[i], pts[j]
		if a.Dir != c.Dir {
			return a.Dir < c.Dir
		}
		if a.VMs != c.VMs {
			return a.VMs < c.VMs
		}
		if a.Size != c.Size {
			return a.Size < c.Size
		}
		return order[a.System] < order[c.System]
	})
	for _, p := range pts {
		if p.Err != "" {
			fmt.Fprintf(&b, "| %s | %d | %d | %s | – | – | – | – | – | – | – | – | error: %s |\n",
				p.Dir, p.Size, p.VMs, p.System, mdEscape(p.Err))
			continue
		}
		rounds := make([]string, len(p.Rounds))
		for i, r := range p.Rounds {
			rounds[i] = fmt.Sprintf("%.3f", r)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %.3f | %.3f | %.2f | %s | %s | %s | %.0f%% | %s | %s |\n",
			p.Dir, p.Size, p.VMs, p.System, p.OfferedMpps, p.DeliveredMpps, p.LossPct,
			latency(p.P50), latency(p.P99), cpu(p.CPUPerMpkt), 100*p.OthersCPU, strings.Join(rounds, " "), mdEscape(p.Note))
	}
	if len(r.Ratios) > 0 {
		b.WriteString("\n| shape (dir/frame/VMs) | vmq/DPDK Mpps | vmq/ceiling Mpps | vmq/DPDK CPU per Mpkt |\n|---|---:|---:|---:|\n")
		for _, ra := range r.Ratios {
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", ra.Key, ratio(ra.VMQOverDPDK), ratio(ra.VMQOverCeil), ratio(ra.CPUVsDPDK))
		}
	}
	return b.String()
}

func mdEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "|", "\\|"), "\n", " ")
}

func latency(d time.Duration) string {
	if d < 0 {
		return "n/a"
	}
	if d < time.Millisecond {
		return fmt.Sprintf("%.1fµs", float64(d)/1e3)
	}
	return fmt.Sprintf("%.2fms", float64(d)/1e6)
}

func cpu(v float64) string {
	if v < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", v)
}

func ratio(v float64) string {
	if v <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", v)
}

// Write stores results.md, results.json and results.png in dir.
func (r *Report) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("write report: encode JSON: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(r.Markdown()), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, "results.png"))
	if err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := r.Chart().Encode(f); err != nil {
		f.Close()
		return fmt.Errorf("write report: chart: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// Median merges the rounds of one system at one shape: the round with the
// median delivered rate stands for all, with every round's rate in Rounds.
// Failed rounds count only if all failed.
func Median(rounds []Point) Point {
	var ok []Point
	for _, p := range rounds {
		if p.Err == "" {
			ok = append(ok, p)
		}
	}
	if len(ok) == 0 {
		if len(rounds) == 0 {
			return Point{Err: "no rounds"}
		}
		return rounds[0]
	}
	sorted := append([]Point(nil), ok...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].DeliveredMpps < sorted[j].DeliveredMpps })
	m := sorted[(len(sorted)-1)/2]
	m.Rounds = nil
	for _, p := range ok {
		m.Rounds = append(m.Rounds, p.DeliveredMpps)
	}
	if n := len(rounds) - len(ok); n > 0 {
		m.Note = strings.TrimSpace(fmt.Sprintf("%s; %d failed rounds: %s", m.Note, n, firstErr(rounds)))
	}
	return m
}

func firstErr(ps []Point) string {
	for _, p := range ps {
		if p.Err != "" {
			return p.Err
		}
	}
	return ""
}
