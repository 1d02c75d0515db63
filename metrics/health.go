package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/vmq/vmq/dataplane"
)

// Probe paths on the metrics listener, for a kubelet or a load balancer.
const (
	HealthzPath = "/healthz" // liveness: restart me if this fails
	ReadyzPath  = "/readyz"  // readiness: don't count on me yet
)

// Check is one named health check's result.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// HealthReport is what /healthz and /readyz answer (200 if OK, else 503).
type HealthReport struct {
	OK     bool    `json:"ok"`
	Checks []Check `json:"checks"`
}

// NewReport makes a report that is OK when every check is.
func NewReport(checks ...Check) HealthReport {
	r := HealthReport{OK: true, Checks: checks}
	for _, c := range checks {
		r.OK = r.OK && c.OK
	}
	return r
}

// Prober answers the liveness and readiness probes.
type Prober interface {
	Live(ctx context.Context) HealthReport
	Ready(ctx context.Context) HealthReport
}

// probeTimeout bounds a probe: a check that hangs is a failed check,
// never a hung probe.
const probeTimeout = 3 * time.Second

// HealthHandler serves one probe as JSON: 200 when OK, 503 when not.
func HealthHandler(probe func(context.Context) HealthReport) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), probeTimeout)
		defer cancel()
		done := make(chan HealthReport, 1)
		go func() { done <- probe(ctx) }()
		var rep HealthReport
		select {
		case rep = <-done:
		case <-ctx.Done():
			rep = NewReport(Check{Name: "probe", Detail: fmt.Sprintf("checks did not answer within %v", probeTimeout)})
		}
		status := http.StatusOK
		if !rep.OK {
			status = http.StatusServiceUnavailable
		}
		b, _ := json.MarshalIndent(rep, "", "  ")
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(status)
		w.Write(append(b, '\n'))
	})
}

// WorkerWatch tells, from successive dataplane snapshots, which workers
// are stalled now. The watchdog's Stalls counter says a worker was stuck
// at some point; it is stalled now if a stall was counted and its
// progress counters (batches, polls) have not moved for Quiet since. A
// healthy idle worker polls at least every busy_poll (≤1s) plus the
// 200 ms poll timeout, so Quiet above that never flags an idle worker.
type WorkerWatch struct {
	Quiet time.Duration // default 1.5s

	mu   sync.Mutex
	seen map[int]*workerSeen
}

type workerSeen struct {
	stalls, progress uint64
	stallAt, progAt  time.Time // zero stallAt: no stall seen
}

// Observe records a snapshot's workers taken at now and returns the
// queues whose workers are stalled now.
func (w *WorkerWatch) Observe(now time.Time, workers []dataplane.WorkerStats) []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen == nil {
		w.seen = map[int]*workerSeen{}
	}
	quiet := w.Quiet
	if quiet == 0 {
		quiet = 1500 * time.Millisecond
	}
	var stalled []int
	for _, ws := range workers {
		progress := ws.Batches + ws.Polls
		s, ok := w.seen[ws.Queue]
		if !ok {
			// First sight: stalls already counted are history.
			w.seen[ws.Queue] = &workerSeen{stalls: ws.Stalls, progress: progress, progAt: now}
			continue
		}
		if progress != s.progress {
			s.progress, s.progAt = progress, now
		}
		if ws.Stalls != s.stalls {
			s.stalls, s.stallAt = ws.Stalls, now
		}
		// A stall seen no earlier than the last progress, and no progress
		// for Quiet: the worker is stuck, not merely once slow.
		if !s.stallAt.IsZero() && !s.stallAt.Before(s.progAt) && now.Sub(s.progAt) >= quiet {
			stalled = append(stalled, ws.Queue)
		}
	}
	return stalled
}
