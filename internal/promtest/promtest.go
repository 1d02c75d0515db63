// Package promtest runs a real Prometheus server for tests: started on a
// free loopback port with a temporary data directory, scraping one target
// every second, stopped at cleanup.
package promtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmq/vmq/internal/testenv"
)

// Server is a real Prometheus started by a test.
type Server struct {
	base string
}

// Start runs /usr/bin/prometheus on a free loopback port,
// scraping target every second and evaluating ruleFiles; it is stopped at
// cleanup.
func Start(t *testing.T, target string, ruleFiles ...string) *Server {
	t.Helper()
	bin := testenv.RequireCommand(t, "prometheus")
	dir := t.TempDir()

	var rules strings.Builder
	for _, f := range ruleFiles {
		abs, err := filepath.Abs(f)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&rules, "  - %q\n", abs)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
%sscrape_configs:
  - job_name: vmqd
    static_configs:
      - targets: [%q]
`, rules.String(), target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}

	// A free port: the kernel picks one, Prometheus takes it over. The
	// window between is tiny and the start is retried if it is lost.
	var out bytes.Buffer
	for attempt := 0; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()

		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, bin,
			"--config.file="+cfgPath,
			"--storage.tsdb.path="+filepath.Join(dir, "data"),
			"--web.listen-address="+addr,
			"--log.level=warn",
		)
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 10 * time.Second
		out.Reset()
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatalf("start prometheus: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() {
			cancel()
			<-exited
		}

		p := &Server{base: "http://" + addr}
		if err := p.waitReady(exited, 60*time.Second); err != nil {
			stop()
			if attempt < 2 && strings.Contains(out.String(), "address already in use") {
				continue
			}
			t.Fatalf("prometheus: %v\n%s", err, out.String())
		}
		t.Cleanup(func() {
			stop()
			if t.Failed() {
				t.Logf("prometheus output:\n%s", out.String())
			}
		})
		return p
	}
}

func (p *Server) waitReady(exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("exited before it was ready")
		default:
		}
		resp, err := http.Get(p.base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %v", timeout)
}

// APIGet decodes the data of a /api/v1 response into v.
func (p *Server) APIGet(path string, v any) error {
	resp, err := http.Get(p.base + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	if r.Status != "success" {
		return fmt.Errorf("GET %s: %s: %s", path, r.Status, r.Error)
	}
	return json.Unmarshal(r.Data, v)
}

// Sample is one series of a query result: labels and [time, value].
type Sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// Query runs an instant PromQL query.
func (p *Server) Query(q string) ([]Sample, error) {
	var d struct {
		ResultType string   `json:"resultType"`
		Result     []Sample `json:"result"`
	}
	if err := p.APIGet("/api/v1/query?query="+url.QueryEscape(q), &d); err != nil {
		return nil, err
	}
	if d.ResultType != "vector" {
		return nil, fmt.Errorf("%s: result type %s", q, d.ResultType)
	}
	return d.Result, nil
}

// WaitQuery polls q until it returns n series.
func (p *Server) WaitQuery(t *testing.T, q string, n int) []Sample {
	t.Helper()
	var last []Sample
	var err error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		last, err = p.Query(q)
		if err == nil && len(last) == n {
			return last
		}
	}
	t.Fatalf("%s: want %d series, last got %v (err %v)", q, n, last, err)
	return nil
}
