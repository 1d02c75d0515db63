package bench

import (
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testReport() *Report {
	r := &Report{Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Host: "h", Kernel: "k", CPUs: 2}
	r.Points = []Point{
		{Dir: RX, System: Ceiling, Size: 66, VMs: 1, DeliveredMpps: 2, P50: -1, P99: -1, CPUPerMpkt: -1},
		{Dir: RX, System: VMQ, Size: 66, VMs: 1, DeliveredMpps: 1.5, LossPct: 25, P50: 20 * time.Microsecond,
			P99: 2 * time.Millisecond, CPUPerMpkt: 0.5, Rounds: []float64{1.4, 1.5, 1.6}},
		{Dir: RX, System: DPDK, Size: 66, VMs: 1, DeliveredMpps: 1, P50: -1, P99: -1, CPUPerMpkt: 1},
		{Dir: TX, System: VMQ, Size: 1514, VMs: 1, DeliveredMpps: 0.5, P50: -1, P99: -1, CPUPerMpkt: 2},
		{Dir: TX, System: DPDK, Size: 1514, VMs: 1, Err: "testpmd | exited"},
		{Dir: RX, System: VMQ, Size: 66, VMs: 256, DeliveredMpps: 0.75, P50: -1, P99: -1, CPUPerMpkt: 1},
	}
	r.ComputeRatios()
	return r
}

func TestRatios(t *testing.T) {
	r := testReport()
	want := map[string]Ratio{
		"rx/66/1":   {Key: "rx/66/1", VMQOverDPDK: 1.5, VMQOverCeil: 0.75, CPUVsDPDK: 0.5},
		"tx/1514/1": {Key: "tx/1514/1"}, // the DPDK point failed: no ratio
		"rx/66/256": {Key: "rx/66/256"},
	}
	if len(r.Ratios) != len(want) {
		t.Fatalf("ratios %+v", r.Ratios)
	}
	for _, ra := range r.Ratios {
		if ra != want[ra.Key] {
			t.Errorf("%s: got %+v, want %+v", ra.Key, ra, want[ra.Key])
		}
	}
}

func TestMarkdown(t *testing.T) {
	md := testReport().Markdown()
	for _, s := range []string{
		"| rx | 66 | 1 | vmq | 0.000 | 1.500 | 25.00 | 20.0µs | 2.00ms | 0.500 | 0% | 1.400 1.500 1.600 |  |",
		"| rx | 66 | 1 | ceiling | 0.000 | 2.000 | 0.00 | n/a | n/a | n/a |",
		"error: testpmd \\| exited", // a pipe in a message must not split the row
		"| rx/66/1 | 1.50 | 0.75 | 0.50 |",
		"| tx/1514/1 | – | – | – |",
	} {
		if !strings.Contains(md, s) {
			t.Errorf("markdown lacks %q:\n%s", s, md)
		}
	}
	// Ceiling before vmq before DPDK within a shape; 1 VM before 256.
	if strings.Index(md, "| rx | 66 | 1 | ceiling") > strings.Index(md, "| rx | 66 | 1 | vmq") ||
		strings.Index(md, "| rx | 66 | 1 | dpdk") > strings.Index(md, "| rx | 66 | 256 | vmq") {
		t.Errorf("rows out of order:\n%s", md)
	}
}

func TestMedian(t *testing.T) {
	pts := []Point{{DeliveredMpps: 3, Note: "c"}, {DeliveredMpps: 1, Note: "a"}, {Err: "boom"}, {DeliveredMpps: 2, Note: "b"}}
	m := Median(pts)
	if m.Note != "b; 1 failed rounds: boom" || m.DeliveredMpps != 2 {
		t.Fatalf("median %+v", m)
	}
	if len(m.Rounds) != 3 || m.Rounds[0] != 3 || m.Rounds[1] != 1 || m.Rounds[2] != 2 {
		t.Fatalf("rounds %v, want run order 3 1 2", m.Rounds)
	}
	if m := Median([]Point{{Err: "x"}, {Err: "y"}}); m.Err != "x" {
		t.Fatalf("all failed: %+v", m)
	}
	if m := Median(nil); m.Err == "" {
		t.Fatal("no rounds, no error")
	}
	// Two rounds: the lower one (a conservative median).
	if m := Median([]Point{{DeliveredMpps: 5}, {DeliveredMpps: 4}}); m.DeliveredMpps != 4 {
		t.Fatalf("two rounds: %v", m.DeliveredMpps)
	}
}

func TestWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	r := testReport()
	if err := r.Write(dir); err != nil {
		t.Fatal(err)
	}
	var back Report
	js, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Points) != len(r.Points) || back.Points[1].P99 != 2*time.Millisecond || len(back.Ratios) != 3 {
		t.Fatalf("JSON round trip: %+v", back)
	}
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil || !strings.HasPrefix(string(md), "# vmq benchmark 2026-01-02") {
		t.Fatalf("markdown: %v %.40q", err, md)
	}
	f, err := os.Open(filepath.Join(dir, "results.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	// Every measured bar is drawn in its system's colour, the failed one not.
	counts := map[string]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			for name, c := range seriesColors {
				if uint8(r>>8) == c.R && uint8(g>>8) == c.G && uint8(bl>>8) == c.B {
					counts[name]++
				}
			}
		}
	}
	// Bars are 12 px wide and as tall as their value: the vmq bars (1.5,
	// 0.5, 0.75 Mpps) outweigh the DPDK bar (1 Mpps) and the ceiling (2).
	if counts[VMQ] <= counts[DPDK] || counts[Ceiling] <= counts[DPDK] || counts[DPDK] < 12*50 {
		t.Fatalf("bar pixels %v", counts)
	}
}

func TestChartScale(t *testing.T) {
	for _, top := range []float64{0, 0.3, 1, 4.4, 17, 250} {
		step := niceStep(top)
		if step <= 0 || (top > 0 && (top/step < 2 || top/step > 10)) {
			t.Errorf("top %v: step %v", top, step)
		}
	}
	// An empty chart still draws.
	if img := (&Chart{}).Image(); img.Bounds().Dx() < 100 {
		t.Fatal("empty chart")
	}
}

func TestParsePortStats(t *testing.T) {
	out := `
  ######################## NIC statistics for port 0  ########################
  RX-packets: 186752     RX-missed: 0          RX-bytes:  12325632
  RX-errors: 0
  RX-nombuf:  0
  TX-packets: 42          TX-errors: 0          TX-bytes:  0
  Throughput (since last show)
  Rx-pps:        45831          Rx-bps:     24198808
  Tx-pps:            0          Tx-bps:            0`
	rx, tx, err := parsePortStats(out)
	if err != nil || rx != 186752 || tx != 42 {
		t.Fatalf("got %d %d %v", rx, tx, err)
	}
	if _, _, err := parsePortStats("RX-packets: 1"); err == nil {
		t.Fatal("no TX-packets accepted")
	}
	if _, _, err := parsePortStats("RX-packets: 99999999999999999999999 TX-packets: 1"); err == nil {
		t.Fatal("overflow accepted")
	}
}
