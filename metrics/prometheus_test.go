package metrics

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/internal/promtest"
)

// A real Prometheus scrapes the exporter: PromQL sees each VM's exact
// counts, the target is healthy, the shipped alert rules evaluate cleanly
// (and the broken device fires), and every dashboard query runs and
// returns data.
func TestPrometheusEndToEnd(t *testing.T) {
	var scrapes atomic.Uint64
	src := SourceFunc(func() dataplane.Snapshot {
		s := fakeSnapshot()
		// One counter moves, so rate()-based panels and alerts see change.
		n := scrapes.Add(1)
		s.VMs[0].Drops[dataplane.DropVirtqueueFull] += n
		s.Workers[0].BusyNS += n * 1e6
		return s
	})
	base := httpServer(t, NewRegistry(src))
	p := promtest.Start(t, strings.TrimPrefix(base, "http://"), "../deploy/prometheus/alerts.yml")

	got := p.WaitQuery(t, "vmq_vm_rx_packets_total", 2)
	want := map[string]string{"web": "1001", "db": "55"}
	for _, s := range got {
		vm := s.Metric["vm"]
		if s.Value[1] != want[vm] {
			t.Errorf("vmq_vm_rx_packets_total{vm=%q} = %v, want %s", vm, s.Value[1], want[vm])
		}
		if s.Metric["job"] != "vmqd" {
			t.Errorf("series without job=vmqd: %v", s.Metric)
		}
		delete(want, vm)
	}
	if len(want) != 0 {
		t.Errorf("missing VMs %v", want)
	}
	for q, v := range map[string]string{
		`vmq_vm_tx_packets_total{vm="web"}`:                    "2002",
		`sum(vmq_vm_queue_rx_packets_total{vm="web"})`:         "1001",
		`vmq_vm_drops_total{vm="web",reason="spoofed"}`:        "3",
		`vmq_xsk_fill_ring_empty_total{vm="(flood)"}`:          "6",
		`vmq_xdp_attached`:                                     "1",
		`vmq_port_broken{vm="db"}`:                             "1",
		`count(vmq_vm_drops_total{vm="db"})`:                   strconv.Itoa(int(dataplane.NumDropReasons) + 1), // every reason + one only the API knows
		`vmq_vm_limit{vm="web",direction="rx",unit="packets"}`: "10000",
		`vmq_worker_stalls_total{queue="0"}`:                   "2",
		`vmq_worker_inflight_frames{queue="0"}`:                "1096",
		`vmq_worker_idle_seconds_total{queue="1"}`:             "9.75",
		`up{job="vmqd"}`:                                       "1",
		`count(vmq_build_info{version!="",goversion!=""})`:     "1",
		`count(go_goroutines) + count(process_open_fds)`:       "2",
		`sum(scrape_samples_scraped{job="vmqd"}) > bool 100`:   "1",
	} {
		r, err := p.Query(q)
		if err != nil {
			t.Errorf("%s: %v", q, err)
			continue
		}
		if len(r) != 1 || r[0].Value[1] != v {
			t.Errorf("%s = %v, want one series of %s", q, r, v)
		}
	}

	var targets struct {
		ActiveTargets []struct {
			Health    string `json:"health"`
			LastError string `json:"lastError"`
		} `json:"activeTargets"`
	}
	if err := p.APIGet("/api/v1/targets", &targets); err != nil {
		t.Fatal(err)
	}
	if len(targets.ActiveTargets) != 1 || targets.ActiveTargets[0].Health != "up" || targets.ActiveTargets[0].LastError != "" {
		t.Errorf("targets: %+v", targets.ActiveTargets)
	}

	// Dashboard queries need two samples in their rate window.
	p.WaitQuery(t, "rate(vmq_vm_rx_packets_total[1m])", 2)
	checkDashboardQueries(t, p)
	checkRules(t, p)
}

func checkDashboardQueries(t *testing.T, p *promtest.Server) {
	b, err := os.ReadFile("../deploy/grafana/vmq-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if s, ok := c.(string); ok && k == "expr" {
					exprs = append(exprs, s)
				}
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(dash)
	if len(exprs) == 0 {
		t.Fatal("no dashboard queries")
	}
	grafana := strings.NewReplacer("$__rate_interval", "1m", "$instance", ".*", "$vm", ".*")
	for _, e := range exprs {
		q := grafana.Replace(e)
		r, err := p.Query(q)
		switch {
		case err != nil:
			t.Errorf("dashboard query fails: %s: %v", q, err)
		case len(r) == 0:
			t.Errorf("dashboard query returns nothing: %s", q)
		}
	}
	t.Logf("%d dashboard queries ran", len(exprs))
}

// checkRules waits for the shipped rules to be evaluated, requires them
// all healthy, and VMQDeviceBroken (for: 0) firing for db only.
func checkRules(t *testing.T, p *promtest.Server) {
	type rule struct {
		Name           string `json:"name"`
		Health         string `json:"health"`
		LastError      string `json:"lastError"`
		LastEvaluation string `json:"lastEvaluation"`
		State          string `json:"state"`
		Alerts         []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	var rules []rule
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		var d struct {
			Groups []struct {
				Rules []rule `json:"rules"`
			} `json:"groups"`
		}
		if err := p.APIGet("/api/v1/rules", &d); err != nil {
			t.Fatal(err)
		}
		rules = rules[:0]
		evaluated := true
		for _, g := range d.Groups {
			for _, r := range g.Rules {
				rules = append(rules, r)
				evaluated = evaluated && r.Health != "unknown" && !strings.HasPrefix(r.LastEvaluation, "0001-")
			}
		}
		if len(rules) > 0 && evaluated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rules not evaluated: %+v", rules)
		}
	}
	if len(rules) < 5 {
		t.Fatalf("only %d rules loaded", len(rules))
	}
	for _, r := range rules {
		if r.Health != "ok" || r.LastError != "" {
			t.Errorf("rule %s: health %s, error %q", r.Name, r.Health, r.LastError)
		}
		switch r.Name {
		case "VMQDeviceBroken":
			if len(r.Alerts) != 1 || r.Alerts[0].Labels["vm"] != "db" || r.Alerts[0].State != "firing" {
				t.Errorf("VMQDeviceBroken alerts: %+v", r.Alerts)
			}
		case "VMQXDPDetached", "VMQDaemonDown":
			if len(r.Alerts) != 0 {
				t.Errorf("%s active on a healthy fake: %+v", r.Name, r.Alerts)
			}
		}
	}
}
