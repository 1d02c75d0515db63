package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is where vmqd serves /metrics unless --metrics-addr says
// otherwise: loopback only, since the metrics name VMs and socket paths.
const DefaultAddr = "127.0.0.1:9469"

// Path is the URL path of the exposition.
const Path = "/metrics"

// slogPrintln adapts slog to promhttp's error logger.
type slogPrintln struct{}

func (slogPrintln) Println(v ...any) {
	slog.Warn("metrics: scrape error", "err", fmt.Sprint(v...))
}

// Handler serves reg in the Prometheus exposition formats. An error in
// one metric is logged and the rest are still served.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slogPrintln{},
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            reg, // promhttp_metric_handler_errors_total
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
}

// Mux returns an http.Handler with reg on /metrics and a short index on /.
func Mux(reg *prometheus.Registry) http.Handler { return MuxWithHealth(reg, nil) }

// MuxWithHealth is Mux plus /healthz and /readyz answered by p (none if
// p is nil).
func MuxWithHealth(reg *prometheus.Registry, p Prober) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(Path, Handler(reg))
	if p != nil {
		mux.Handle(HealthzPath, HealthHandler(p.Live))
		mux.Handle(ReadyzPath, HealthHandler(p.Ready))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "vmqd %s: metrics at %s\n", Version, Path)
	})
	return mux
}

// Serve listens on addr (DefaultAddr if empty) and serves Mux(reg) until
// ctx is done; it then shuts the server down and returns nil.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry) error {
	if addr == "" {
		addr = DefaultAddr
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	return ServeListener(ctx, ln, reg)
}

// ServeListener is Serve on a listener the caller opened (a test's
// 127.0.0.1:0, or a socket handed over by systemd). It closes ln.
func ServeListener(ctx context.Context, ln net.Listener, reg *prometheus.Registry) error {
	return ServeHandler(ctx, ln, Mux(reg))
}

// ServeHandler is ServeListener with the caller's handler (MuxWithHealth).
func ServeHandler(ctx context.Context, ln net.Listener, h http.Handler) error {
	addr := ln.Addr()
	if ta, ok := addr.(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
		slog.Warn("metrics: serving on a non-loopback address", "addr", addr.String())
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       time.Minute,
	}
	done := make(chan struct{})     // Serve returned
	shutDown := make(chan struct{}) // Shutdown finished draining
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			close(shutDown)
		case <-done:
		}
	}()
	slog.Info("metrics: serving", "addr", addr.String(), "path", Path)
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		// Shutdown was called: wait for it to drain before returning.
		<-shutDown
		return nil
	}
	return fmt.Errorf("metrics: serve on %s: %w", addr, err)
}
