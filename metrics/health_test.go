package metrics

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane"
)

// A worker is stalled while a counted stall is followed by no progress
// for Quiet; a stall it recovered from, an idle worker that only polls,
// and stalls counted before the first look are not.
func TestWorkerWatch(t *testing.T) {
	w := &WorkerWatch{Quiet: time.Second}
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ws := func(stalls, batches, polls uint64) []dataplane.WorkerStats {
		return []dataplane.WorkerStats{{Queue: 0, Stalls: stalls, Batches: batches, Polls: polls}, {Queue: 1, Polls: polls}}
	}
	steps := []struct {
		ms                     int
		stalls, batches, polls uint64
		want                   []int
	}{
		{0, 3, 10, 5, nil},         // old stalls: history
		{500, 3, 10, 5, nil},       // idle, no new stall
		{1000, 3, 20, 6, nil},      // progress
		{1500, 4, 20, 6, nil},      // a stall, not yet quiet for 1s
		{2000, 4, 20, 6, []int{0}}, // quiet for 1s since the last progress
		{2500, 4, 20, 6, []int{0}},
		{3000, 4, 21, 7, nil}, // it moved again: recovered
		{3500, 5, 30, 8, nil}, // a stall and progress in one interval
		{4000, 5, 31, 9, nil}, // moving: the stall was transient
	}
	for _, s := range steps {
		got := w.Observe(at(s.ms), ws(s.stalls, s.batches, s.polls))
		if !slices.Equal(got, s.want) {
			t.Fatalf("at %d ms: stalled %v, want %v", s.ms, got, s.want)
		}
	}
}

type fakeProber struct{ live, ready HealthReport }

func (p fakeProber) Live(context.Context) HealthReport  { return p.live }
func (p fakeProber) Ready(context.Context) HealthReport { return p.ready }

// The probes answer 200 with the report when OK and 503 when a check
// fails; /metrics is still served next to them.
func TestHealthEndpoints(t *testing.T) {
	p := fakeProber{
		live:  NewReport(Check{Name: "workers", OK: true}),
		ready: NewReport(Check{Name: "filter", OK: false, Detail: "detached"}, Check{Name: "api", OK: true}),
	}
	srv := httptest.NewServer(MuxWithHealth(NewRegistry(SourceFunc(func() dataplane.Snapshot { return dataplane.Snapshot{} })), p))
	defer srv.Close()
	for _, tc := range []struct {
		path   string
		status int
		ok     bool
	}{{HealthzPath, 200, true}, {ReadyzPath, 503, false}, {Path, 200, true}} {
		resp, err := http.Get(srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		var rep HealthReport
		if tc.path != Path {
			if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
				t.Fatalf("%s: %v", tc.path, err)
			}
			if rep.OK != tc.ok {
				t.Errorf("%s: ok %v, want %v", tc.path, rep.OK, tc.ok)
			}
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: HTTP %d, want %d", tc.path, resp.StatusCode, tc.status)
		}
	}
}
