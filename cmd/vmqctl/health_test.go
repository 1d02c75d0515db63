package main

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/metrics"
)

type stubProber struct{ live, ready metrics.HealthReport }

func (p *stubProber) Live(context.Context) metrics.HealthReport  { return p.live }
func (p *stubProber) Ready(context.Context) metrics.HealthReport { return p.ready }

// vmqctl health prints every check of both probes, exits 0 when all
// pass and 1 naming the failed check when one does; --live asks only
// /healthz.
func TestHealthCommand(t *testing.T) {
	p := &stubProber{
		live:  metrics.NewReport(metrics.Check{Name: "workers_not_stalled", OK: true}),
		ready: metrics.NewReport(metrics.Check{Name: "filter_attached", OK: true, Detail: "program 7 on eth0"}),
	}
	srv := httptest.NewServer(metrics.MuxWithHealth(metrics.NewRegistry(metrics.SourceFunc(func() dataplane.Snapshot { return dataplane.Snapshot{} })), p))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	expect(t, []string{"health", "--addr", addr}, 0, `PROBE     CHECK                STATE  DETAIL
/healthz  workers_not_stalled  ok     
/readyz   filter_attached      ok     program 7 on eth0
`)
	p.ready = metrics.NewReport(metrics.Check{Name: "filter_attached", Detail: "the XDP filter is not attached"})
	out := expect(t, []string{"health", "--addr", addr}, 1, "")
	if !strings.Contains(out, "filter_attached      FAIL   the XDP filter is not attached") || !strings.Contains(out, "vmqd is not healthy") {
		t.Fatalf("unhealthy output:\n%s", out)
	}
	expect(t, []string{"health", "--addr", addr, "--live"}, 0, "")
	out = expect(t, []string{"health", "--addr", "127.0.0.1:1"}, 1, "")
	if !strings.Contains(out, "vmqd metrics listener") {
		t.Fatalf("no listener: %s", out)
	}
}
