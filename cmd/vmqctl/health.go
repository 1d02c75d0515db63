package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/vmq/vmq/metrics"
)

// errUnhealthy: the probes answered, and said no (exit 1 after printing).
var errUnhealthy = errors.New("vmqd is not healthy")

// healthAddr is where vmqd serves /healthz and /readyz: its metrics
// listener, not the API socket, so a kubelet can probe it over HTTP.
func healthAddr() string {
	if a := os.Getenv("VMQ_METRICS_ADDR"); a != "" {
		return a
	}
	return metrics.DefaultAddr
}

type probeResult struct {
	Probe  string               `json:"probe"`
	Status int                  `json:"status"`
	Report metrics.HealthReport `json:"report"`
}

// health asks /healthz and (unless live) /readyz and prints every check.
func (c *cli) health(ctx context.Context, addr string, live bool, args []string) error {
	if err := noArgs("health", args); err != nil {
		return err
	}
	paths := []string{metrics.HealthzPath, metrics.ReadyzPath}
	if live {
		paths = paths[:1]
	}
	var results []probeResult
	ok := true
	for _, p := range paths {
		r, err := probe(ctx, "http://"+addr+p)
		if err != nil {
			return fmt.Errorf("health %s: %w", p, err)
		}
		r.Probe = p
		ok = ok && r.Report.OK
		results = append(results, r)
	}
	if c.output == "json" {
		if err := c.json(results); err != nil {
			return err
		}
	} else {
		var rows [][]any
		for _, r := range results {
			for _, ch := range r.Report.Checks {
				state := "ok"
				if !ch.OK {
					state = "FAIL"
				}
				rows = append(rows, []any{r.Probe, ch.Name, state, ch.Detail})
			}
		}
		if err := c.table("PROBE\tCHECK\tSTATE\tDETAIL", rows); err != nil {
			return err
		}
	}
	if !ok {
		return errUnhealthy
	}
	return nil
}

func probe(ctx context.Context, url string) (probeResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return probeResult{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return probeResult{}, fmt.Errorf("vmqd metrics listener: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return probeResult{}, fmt.Errorf("read %s: %w", url, err)
	}
	r := probeResult{Status: resp.StatusCode}
	if err := json.Unmarshal(b, &r.Report); err != nil {
		return probeResult{}, fmt.Errorf("%s answered HTTP %d, not a health report: %w", url, resp.StatusCode, err)
	}
	return r, nil
}
