package bench

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The search against a path that loses frames above a known rate.
func TestZeroLoss(t *testing.T) {
	for _, limit := range []float64{0, 0.013, 0.3, 0.61, 0.999} {
		var rates []float64
		s, err := ZeroLoss(1, 0.01, func(r float64) (Trial, error) {
			rates = append(rates, r)
			tr := Trial{Sent: 1000, Received: 1000}
			if r > limit {
				tr.Received = 990
			}
			return tr, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if s.AtTop || s.ZeroLossMpps > limit || limit-s.ZeroLossMpps > 0.01 {
			t.Errorf("limit %v: found %v (at top %v)", limit, s.ZeroLossMpps, s.AtTop)
		}
		// 1 at the top, then halvings until the bounds are 1% apart.
		if len(rates) != 8 || rates[0] != 1 || rates[1] != 0.5 || len(s.Trials) != 8 {
			t.Errorf("limit %v: trials at %v", limit, rates)
		}
		for i, tr := range s.Trials {
			if tr.RateMpps != rates[i] {
				t.Errorf("trial %d recorded at %v, ran at %v", i, tr.RateMpps, rates[i])
			}
		}
	}
	// Nothing lost at the top: one trial, and the result says it may be higher.
	s, err := ZeroLoss(0.5, 0.05, func(float64) (Trial, error) { return Trial{Sent: 5, Received: 5}, nil })
	if err != nil || !s.AtTop || s.ZeroLossMpps != 0.5 || len(s.Trials) != 1 {
		t.Errorf("no loss: %+v %v", s, err)
	}
	// A source slower than asked: the result is its own rate.
	s, err = ZeroLoss(0.5, 0.05, func(float64) (Trial, error) { return Trial{Sent: 100000, Received: 100000, Seconds: 0.5}, nil })
	if err != nil || !s.AtTop || s.ZeroLossMpps != 0.2 {
		t.Errorf("slow source: %+v %v", s, err)
	}
	// More received than sent (a stray frame) is no loss.
	if (Trial{Sent: 5, Received: 6}).Lost() != 0 {
		t.Error("Lost with extra frames")
	}
	// A trial that sent nothing, or failed, fails the search.
	if _, err := ZeroLoss(1, 0.05, func(float64) (Trial, error) { return Trial{}, nil }); err == nil {
		t.Error("nothing sent: no error")
	}
	if _, err := ZeroLoss(1, 0.05, func(float64) (Trial, error) { return Trial{}, os.ErrDeadlineExceeded }); err == nil {
		t.Error("failed trial: no error")
	}
	for _, bad := range [][2]float64{{0, 0.05}, {1, 0}, {1, 1}, {-1, 0.5}} {
		if _, err := ZeroLoss(bad[0], bad[1], nil); err == nil {
			t.Errorf("top %v precision %v: no error", bad[0], bad[1])
		}
	}
}

func TestPlan(t *testing.T) {
	cases := Plan([]string{RX, TX, VM2VM})
	// RX and VM→VM: 3 placements × 2 guests; TX: 2 × 2; a packed-ring
	// testpmd case for RX and for TX.
	if len(cases) != 18 {
		t.Fatalf("%d cases", len(cases))
	}
	seen := map[string]bool{}
	for _, c := range cases {
		if seen[c.Key()] {
			t.Errorf("case %s twice", c.Key())
		}
		seen[c.Key()] = true
		pl := c.Placement
		if pl.Src < 0 || pl.Src > 1 || pl.SUT < 0 || pl.SUT > 1 || (pl.Dst == NoCPU) != (c.Dir == TX) {
			t.Errorf("case %s: placement %+v", c.Key(), pl)
		}
	}
	if got := ZeroLossCase(RX).Key(); got != "rx 0/1/0 vmq-pktgen→testpmd-rxonly" {
		t.Errorf("RX zero-loss case %s", got)
	}
	if got := ZeroLossCase(TX).Key(); got != "tx 0/1/wire vmq-guest→wire" {
		t.Errorf("TX zero-loss case %s", got)
	}
	if got := ZeroLossCase(VM2VM).Key(); got != "vm2vm 0/1/0 vmq-guest→testpmd-rxonly" {
		t.Errorf("VM→VM zero-loss case %s", got)
	}
	for _, c := range cases {
		if c.Queue != 0 || len(c.Systems()) != 2 {
			t.Errorf("case %s: queue %d, systems %v", c.Key(), c.Queue, c.Systems())
		}
	}
	if sizes, err := frameSizes([]string{"64", "512", "1514"}); err != nil || sizes[0] != 66 || sizes[2] != 1514 {
		t.Errorf("sizes %v %v", sizes, err)
	}
	for _, bad := range []string{"59", "1515", "x"} {
		if _, err := frameSizes([]string{bad}); err == nil {
			t.Errorf("size %q: no error", bad)
		}
	}
}

// The dedicated part: the RX placements with the generator on the CPU
// whose frames veth puts on the dedicated queue, three systems, after the
// other parts and never in a zero-loss search.
func TestPlanDedicated(t *testing.T) {
	cases := Plan([]string{RX, Dedicated})
	ded := cases[len(Plan([]string{RX})):]
	want := []string{
		"rx q1 1/0/1 vmq-pktgen→testpmd-rxonly", // switch alone
		"rx q1 1/1/0 vmq-pktgen→testpmd-rxonly", // switch with the generator
		"rx q1 1/0/0 vmq-pktgen→testpmd-rxonly", // switch with the guest
	}
	if len(ded) != len(want) {
		t.Fatalf("%d dedicated cases: %v", len(ded), ded)
	}
	for i, c := range ded {
		if c.Key() != want[i] {
			t.Errorf("case %d: %s, want %s", i, c.Key(), want[i])
		}
		if c.Queue != DedicatedQueue || c.Placement.Src != DedicatedQueue || c.Dir != RX {
			t.Errorf("case %s: queue %d, generator on CPU %d", c.Key(), c.Queue, c.Placement.Src)
		}
		if got := c.Systems(); !slices.Equal(got, []string{VMQ, VMQDedicated, DPDK}) {
			t.Errorf("case %s: systems %v", c.Key(), got)
		}
	}
	if !ded[0].Placement.Alone() {
		t.Errorf("first dedicated case %s: the switch is not alone", ded[0].Key())
	}
	if got := Plan([]string{Dedicated}); !slices.Equal(got, ded) {
		t.Errorf("dedicated alone: %v", got)
	}
	if got := ZeroLossCase(RX); got.Queue != 0 {
		t.Errorf("RX zero-loss case on queue %d", got.Queue)
	}
}

func testReport() *Report {
	rx := Case{Dir: RX, Placement: Placement{Src: 0, SUT: 1, Dst: 0}, Source: Pktgen, Receiver: TestpmdRx}
	tx := Case{Dir: TX, Placement: Placement{Src: 0, SUT: 0, Dst: NoCPU}, Source: GoGuest, Receiver: WireSink}
	ded := DedicatedCases()[0]
	return &Report{Command: "make bench", Started: time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC), Duration: "15m0s",
		Host: "vm", Kernel: "6.18", CPUs: 2, TSCMHz: 2450, LoadAvg: [2]string{"3.1 3.0 2.9", "4.0 3.5 3.0"},
		Points: []Point{
			{Case: rx, Size: 66, System: VMQ, DeliveredMpps: 0.5, LossPct: 10, BusyNSPerFrame: 80, BusyNSPerDelivered: 90, CPUNSPerFrame: 400, SUTCPU: 0.2, OthersCPU: [2]float64{0.1, 0.3}},
			{Case: rx, Size: 66, System: DPDK, DeliveredMpps: 0.25, LossPct: 50, BusyNSPerFrame: 40, BusyNSPerDelivered: 160, CPUNSPerFrame: 4000, SUTCPU: 1, OthersCPU: [2]float64{0.2, 0}},
			{Case: tx, Size: 1514, System: DPDK, DeliveredMpps: 0.8, BusyNSPerFrame: -1, BusyNSPerDelivered: -1, CPUNSPerFrame: -1},
			{Case: tx, Size: 1514, System: VMQ, Err: "vmqd exited | badly"},
			{Case: ded, Size: 66, System: VMQ, DeliveredMpps: 0.4, LossPct: 20, BusyNSPerFrame: 300, BusyNSPerDelivered: 375, CPUNSPerFrame: 900, CopiedPerFrame: 66, SUTCPU: 0.5, OthersCPU: [2]float64{0.05, 0.1}},
			{Case: ded, Size: 66, System: VMQDedicated, DeliveredMpps: 0.6, LossPct: 5, BusyNSPerFrame: 150, BusyNSPerDelivered: 160, CPUNSPerFrame: 450, CopiedPerFrame: 0, SUTCPU: 0.4},
			{Case: ded, Size: 66, System: DPDK, DeliveredMpps: 0.3, LossPct: 40, BusyNSPerFrame: 60, BusyNSPerDelivered: 200, CPUNSPerFrame: 3000, CopiedPerFrame: -1, SUTCPU: 1, OthersCPU: [2]float64{0, 0.2}},
			{Case: ded, Size: 1514, System: VMQDedicated, Err: "dedicated queue is \"copy (fallback)\""},
		},
		ZeroLoss: []ZeroLossPoint{
			{Case: rx, Size: 66, System: VMQ, TopMpps: 0.55, Repeated: repeated(Search{ZeroLossMpps: 0.55, AtTop: true, Trials: []Trial{{RateMpps: 0.55, Sent: 10, Received: 10}}})},
			{Case: rx, Size: 66, System: DPDK, TopMpps: 0.55, Repeated: repeated(
				Search{ZeroLossMpps: 0.1375, Trials: []Trial{{RateMpps: 0.55, Sent: 10, Received: 9}, {RateMpps: 0.275, Sent: 10, Received: 9}, {RateMpps: 0.1375, Sent: 10, Received: 10}}},
				Search{ZeroLossMpps: 0.275, Trials: []Trial{{RateMpps: 0.55, Sent: 10, Received: 9}, {RateMpps: 0.275, Sent: 10, Received: 10}}})},
		}}
}

func repeated(ss ...Search) Repeated {
	var r Repeated
	for _, s := range ss {
		r.Add(s)
	}
	return r
}

func TestReportTables(t *testing.T) {
	r := testReport()
	tab := r.Table()
	lines := strings.Split(strings.TrimSpace(tab), "\n")
	if len(lines) != 4 { // header, rule, one row per case and size
		t.Fatalf("table:\n%s", tab)
	}
	for _, want := range []string{
		"| rx | 66 | 0/1/0 | vmq-pktgen → testpmd-rxonly | 0.500 | 0.250 | 2.00 | 10.0 / 50.0 | 80 / 40 | 90 / 160 | 400 / 4000 | 20% / 100% | 20% / 30% |",
		"| tx | 1514 | 0/0/wire | vmq-guest → wire | failed | 0.800 | – | failed / 0.0 | failed / n/a | failed / n/a | failed / n/a | failed / 0% | 0% / 0% |",
	} {
		if !strings.Contains(tab, want) {
			t.Errorf("no row %s in\n%s", want, tab)
		}
	}
	// The dedicated part is its own table, three systems a row.
	dt := r.DedicatedTable()
	if lines := strings.Split(strings.TrimSpace(dt), "\n"); len(lines) != 4 || strings.Contains(tab, "q1") || strings.Contains(tab, "| 0.400 |") {
		t.Errorf("dedicated table:\n%s\nmain table:\n%s", dt, tab)
	}
	for _, want := range []string{
		"| 66 | 1/0/1 | 1 | 0.400 / 0.600 / 0.300 | 2.00 | 20.0 / 5.0 / 40.0 | 300 / 150 / 60 | 375 / 160 / 200 | 900 / 450 / 3000 | 66 / 0 | 50% / 40% / 100% | 5% / 20% |",
		"| 1514 | 1/0/1 | 1 | failed / failed / failed | – |",
	} {
		if !strings.Contains(dt, want) {
			t.Errorf("no row %s in\n%s", want, dt)
		}
	}
	if (&Report{Points: r.Points[:4]}).DedicatedTable() != "" {
		t.Error("dedicated table without dedicated points")
	}
	// The dedicated part alone: no empty main table.
	alone := &Report{Points: r.Points[4:]}
	if alone.Table() != "" || strings.Contains(alone.Markdown(), "## Overload") || strings.Contains(alone.Readme(), Legend) ||
		!strings.Contains(alone.Readme(), dt) {
		t.Errorf("dedicated part alone:\n%s", alone.Markdown())
	}
	z := r.ZeroLossTable(false)
	zt := r.ZeroLossTable(true)
	for _, want := range []string{"| vmq | ≥ 0.550 | 0.550–0.550 | ≥ 0.550 | 0.550 |\n", "| dpdk | 0.206 | 0.138–0.275 | 0.138, 0.275 | 0.550 |\n"} {
		if !strings.Contains(z, want) {
			t.Errorf("no %q in\n%s", want, z)
		}
	}
	for _, want := range []string{"| vmq | ≥ 0.550 | 0.550–0.550 | ≥ 0.550 | 0.550 | 0.550: 0 |\n",
		"| dpdk | 0.206 | 0.138–0.275 | 0.138, 0.275 | 0.550 | 0.550: 1, 0.275: 1, 0.138: 0; 0.550: 1, 0.275: 0 |\n"} {
		if !strings.Contains(zt, want) {
			t.Errorf("no %q in\n%s", want, zt)
		}
	}
	if f := r.Failed(); len(f) != 2 || !strings.Contains(f[0], "tx 0/0/wire vmq-guest→wire 1514 B vmq: vmqd exited") ||
		!strings.Contains(f[1], "rx q1 1/0/1 vmq-pktgen→testpmd-rxonly 1514 B vmq-dedicated: dedicated queue") {
		t.Errorf("failed %q", f)
	}
	md := r.Markdown()
	for _, want := range []string{"Command: `make bench`", "load average 3.1 3.0 2.9 at the start, 4.0 3.5 3.0 at the end",
		"TSC 2450 MHz", "**2 measurements failed:**", "vmqd exited \\| badly", "## Zero loss", tab,
		"## Dedicated queue", dt, DedicatedLegend, zt, ZeroLossLegend, "| rx q1 | 66 | 1/0/1 | vmq-pktgen → testpmd-rxonly | vmq-dedicated |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	rd := r.Readme()
	if !strings.Contains(rd, tab) || !strings.Contains(rd, Legend) || !strings.Contains(rd, z) || !strings.Contains(rd, dt) ||
		strings.Contains(rd, "## Every point") || strings.Contains(rd, "0.550: 0") {
		t.Errorf("readme section:\n%s", rd)
	}
}

func TestReportWrite(t *testing.T) {
	r := testReport()
	dir := filepath.Join(t.TempDir(), "out")
	if err := r.Write(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Markdown() != r.Markdown() {
		t.Error("results.json does not round-trip to the same tables")
	}
	for name, want := range map[string]string{"results.md": r.Markdown(), "readme.md": r.Readme()} {
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(got) != want {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := r.Write("/proc/no/such/dir"); err == nil {
		t.Error("write to /proc: no error")
	}
}

func TestVMQBusyPerFrame(t *testing.T) {
	const old = `{"workers":[{"queue":0,"busy_ns":1000}],"vms":[{"rx_packets":10,"tx_packets":0,"drops":{"virtqueue_full":5}}]}`
	const now = `{"workers":[{"queue":0,"busy_ns":4000}],"vms":[{"rx_packets":30,"tx_packets":5,"drops":{"virtqueue_full":10,"budget":0}}]}`
	a, err := parseVMQStats([]byte(old))
	if err != nil {
		t.Fatal(err)
	}
	b, err := parseVMQStats([]byte(now))
	if err != nil {
		t.Fatal(err)
	}
	// 3000 ns over 20 + 5 + 5 frames moved (delivered, sent, dropped).
	if ns, how := vmqBusyPerFrame(a, b); ns != 100 || !strings.Contains(how, "busy_ns") {
		t.Errorf("old counters: %v %q", ns, how)
	}
	// A vmqd with busy-round counters: those, by DPDK's rule.
	a, _ = parseVMQStats([]byte(`{"workers":[{"busy_ns":1,"busy_round_ns":100,"busy_round_frames":10}]}`))
	b, _ = parseVMQStats([]byte(`{"workers":[{"busy_ns":9,"busy_round_ns":700,"busy_round_frames":30}]}`))
	if ns, how := vmqBusyPerFrame(a, b); ns != 30 || !strings.Contains(how, "busy_round") {
		t.Errorf("busy rounds: %v %q", ns, how)
	}
	if ns, _ := vmqBusyPerFrame(a, a); ns != -1 {
		t.Errorf("no frames: %v", ns)
	}
	if _, err := parseVMQStats([]byte("{")); err == nil {
		t.Error("bad JSON: no error")
	}
}

func TestVMQDrops(t *testing.T) {
	a, _ := parseVMQStats([]byte(`{"workers":[{"polls":4}],"sockets":[{"rx_dropped":5,"fill_ring_empty":1}],"vms":[{"drops":{"virtqueue_full":3}}],"ports":[{"calls":7,"kicks":1}]}`))
	b, _ := parseVMQStats([]byte(`{"workers":[{"polls":14}],"sockets":[{"rx_dropped":9,"rx_ring_full":6,"fill_ring_empty":1}],"vms":[{"drops":{"virtqueue_full":10,"budget":2,"spoofed":0}}],"ports":[{"calls":107,"kicks":4}]}`))
	if got, want := vmqDrops(a, b), "xsk rx_dropped 4, rx ring full 6, fill ring empty 0; worker drops: budget 2, virtqueue_full 7; worker sleeps 10; guest calls 100, kicks 3"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	// A dedicated queue's socket drops are the kernel's too.
	a, _ = parseVMQStats([]byte(`{"sockets":[{"rx_dropped":1}],"vms":[{"dedicated":{"rx_dropped":10,"fill_ring_empty":3}}]}`))
	b, _ = parseVMQStats([]byte(`{"sockets":[{"rx_dropped":1}],"vms":[{"dedicated":{"rx_dropped":40,"fill_ring_empty":5}}]}`))
	if got, want := vmqDrops(a, b), "xsk rx_dropped 30, rx ring full 0, fill ring empty 2; worker drops: none; worker sleeps 0; guest calls 0, kicks 0"; got != want {
		t.Errorf("dedicated: got %q, want %q", got, want)
	}
}

// The stats of a vmqd with a dedicated VM (as GET /v1/stats has them):
// bytes copied per frame, and whether the queue writes into guest memory.
func TestVMQDedicatedStats(t *testing.T) {
	const shared0 = `{"vms":[{"rx_packets":100,"rx_copied_bytes":6600}]}`
	const shared1 = `{"vms":[{"rx_packets":300,"rx_copied_bytes":19800}]}`
	const ded0 = `{"vms":[{"rx_packets":50,"rx_copied_bytes":0,"dedicated":{"mode":"required","queue":1,"state":"direct","posted":960,"frames":50}}]}`
	const ded1 = `{"vms":[{"rx_packets":250,"rx_copied_bytes":0,"dedicated":{"mode":"required","queue":1,"state":"direct","posted":0,"frames":250}}]}`
	const fell = `{"vms":[{"rx_packets":250,"rx_copied_bytes":66,"dedicated":{"state":"copy (fallback)","reason":"guest memory over RLIMIT_MEMLOCK"}}]}`
	st := map[string]vmqStats{}
	for name, js := range map[string]string{"shared0": shared0, "shared1": shared1, "ded0": ded0, "ded1": ded1, "fell": fell} {
		var err error
		if st[name], err = parseVMQStats([]byte(js)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if got := vmqCopied(st["shared0"], st["shared1"]); got != 66 {
		t.Errorf("shared: %v B/frame copied", got)
	}
	if got := vmqCopied(st["ded0"], st["ded1"]); got != 0 {
		t.Errorf("dedicated: %v B/frame copied", got)
	}
	if got := vmqCopied(st["ded1"], st["ded1"]); got != -1 {
		t.Errorf("no frames: %v", got)
	}
	if err := vmqDirect(st["ded0"], true); err != nil {
		t.Errorf("ready queue: %v", err)
	}
	// During a trial the guest may have every posted buffer filled.
	if err := vmqDirect(st["ded1"], false); err != nil {
		t.Errorf("busy queue: %v", err)
	}
	for name, posted := range map[string]bool{"ded1": true, "fell": false, "shared0": false} {
		if err := vmqDirect(st[name], posted); err == nil {
			t.Errorf("%s (posted %v): no error", name, posted)
		}
	}
	if err := vmqDirect(st["fell"], false); err == nil || !strings.Contains(err.Error(), "RLIMIT_MEMLOCK") {
		t.Errorf("fallback: %v", err)
	}
	if err := vmqDirect(vmqStats{}, false); err == nil {
		t.Error("no VMs: no error")
	}
}

func TestEthtoolDrops(t *testing.T) {
	a := parseEthtoolDrops("NIC statistics:\n     peer_ifindex: 2\n     rx_queue_0_xdp_packets: 5\n     rx_queue_0_drops: 3\n     tx_queue_0_xdp_xmit_errors: 0\n")
	b := parseEthtoolDrops("NIC statistics:\n     rx_queue_0_drops: 10\n     rx_queue_0_xdp_drops: 2\n     tx_queue_0_xdp_xmit_errors: 0\n     bad_drops: x\n")
	if len(a) != 2 || a["rx_queue_0_drops"] != 3 {
		t.Errorf("parsed %v", a)
	}
	got := strings.Join(counterDeltas("nic ", a, b), ", ")
	if got != "nic rx_queue_0_drops 7, nic rx_queue_0_xdp_drops 2" {
		t.Errorf("deltas %q", got)
	}
}

// A system's result is the median of its searches, with their range;
// "at top" only if every search was; the systems alternate which goes first.
func TestRepeatedSearches(t *testing.T) {
	r := repeated(Search{ZeroLossMpps: 0.105}, Search{ZeroLossMpps: 0.061, AtTop: true}, Search{ZeroLossMpps: 0.071})
	if r.MedianMpps != 0.071 || r.MinMpps != 0.061 || r.MaxMpps != 0.105 || r.AtTop || len(r.Searches) != 3 || r.Searches[0].ZeroLossMpps != 0.105 {
		t.Errorf("odd: %+v", r)
	}
	r.Add(Search{ZeroLossMpps: 0.2})
	if r.MedianMpps != (0.071+0.105)/2 || r.MaxMpps != 0.2 {
		t.Errorf("even: %+v", r)
	}
	if r := repeated(Search{ZeroLossMpps: 0.5, AtTop: true}, Search{ZeroLossMpps: 0.4, AtTop: true}); !r.AtTop || r.MedianMpps != 0.45 {
		t.Errorf("at top: %+v", r)
	}
	var order []string
	for i := range 4 {
		order = append(order, SearchOrder(i, VMQ, DPDK)...)
	}
	if got := strings.Join(order, " "); got != "vmq dpdk dpdk vmq vmq dpdk dpdk vmq" {
		t.Errorf("order %s", got)
	}
	systems := []string{VMQ, VMQB, DPDK}
	if got := strings.Join(append(SearchOrder(0, systems...), SearchOrder(1, systems...)...), " "); got != "vmq vmq-b dpdk dpdk vmq-b vmq" ||
		systems[0] != VMQ {
		t.Errorf("three systems: %s", got)
	}
}

// TestBusyPerDelivered: the busy time of the frames moved, spread over
// the frames delivered; unknown when either count is.
func TestBusyPerDelivered(t *testing.T) {
	for _, c := range []struct {
		busy        float64
		moved, recv uint64
		want        float64
	}{
		{100, 1000, 250, 400}, // DPDK: took 1000, the guest got 250
		{100, 250, 250, 100},  // vmq: took what the guest could take
		{-1, 1000, 250, -1},
		{100, 0, 250, -1},
		{100, 1000, 0, -1},
	} {
		if got := busyPerDelivered(c.busy, c.moved, c.recv); got != c.want {
			t.Errorf("busyPerDelivered(%v, %d, %d) = %v, want %v", c.busy, c.moved, c.recv, got, c.want)
		}
	}
}

// Split twins: only the switch-alone cases of the directions asked for
// (not packed rings, not the dedicated part), each right after its twin,
// the control part on the source's CPU.
func TestPlanSplit(t *testing.T) {
	var keys []string
	for _, c := range WithSplit(Plan([]string{RX, TX, Dedicated}), []string{TX}, false) {
		if c.Placement.Split {
			if c.Placement.Ctl() != c.Placement.Src || c.Placement.SUT == c.Placement.Src {
				t.Errorf("case %s: control on %d", c.Key(), c.Placement.Ctl())
			}
			keys = append(keys, c.Key())
		}
	}
	want := []string{"tx 0/1+0/wire testpmd-txonly→wire", "tx 0/1+0/wire vmq-guest→wire"}
	if !slices.Equal(keys, want) {
		t.Errorf("split cases %q, want %q", keys, want)
	}
	cases := WithSplit(Plan([]string{TX}), []string{TX}, false)
	if len(cases) != 7 || cases[1].Key() != want[0] || cases[0].Key() != "tx 0/1/wire testpmd-txonly→wire" {
		t.Errorf("split cases not right after their twins: %v", cases)
	}
	cases = WithSplit(Plan([]string{TX}), []string{TX}, true)
	if len(cases) != 7 || cases[0].Key() != want[0] || cases[1].Key() != "tx 0/1/wire testpmd-txonly→wire" {
		t.Errorf("split cases not right before their twins: %v", cases)
	}
	if got := (Placement{Src: 0, SUT: 1, Dst: NoCPU}).Ctl(); got != 1 {
		t.Errorf("unsplit control on %d", got)
	}
	if n := len(WithSplit(Plan([]string{RX}), []string{RX}, false)); n != len(Plan([]string{RX}))+2 {
		t.Errorf("RX with split: %d cases", n)
	}
}
