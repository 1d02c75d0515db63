// Package metrics exports the dataplane's counters to Prometheus.
//
// Nothing here polls: the vmq collector asks its Source for a
// dataplane.Snapshot on every scrape and turns it into const metrics, so a
// scrape always sees the dataplane as it is, and an idle daemon does no
// metrics work at all.
//
// vmqd wires it as
//
//	reg := metrics.NewRegistry(dp)        // dp has Snapshot() dataplane.Snapshot
//	go metrics.Serve(ctx, cfg.MetricsAddr, reg)
package metrics

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vmq/vmq/dataplane"
)

// Version is the vmq version reported by vmq_build_info. The Makefile sets
// it with -ldflags "-X github.com/vmq/vmq/metrics.Version=...".
var Version = "dev"

// Namespace prefixes every vmq metric name.
const Namespace = "vmq"

// Source hands out the dataplane's state. Snapshot is called once per
// scrape, from the HTTP server's goroutine; it must be safe to call
// concurrently with the dataplane running (and with itself, if two scrapes
// overlap).
type Source interface {
	Snapshot() dataplane.Snapshot
}

// SourceFunc adapts a function to Source.
type SourceFunc func() dataplane.Snapshot

// Snapshot calls f.
func (f SourceFunc) Snapshot() dataplane.Snapshot { return f() }

// NewRegistry returns a registry holding the vmq collector for src, the
// vmq_build_info metric and the Go runtime and process collectors. Callers
// may register more collectors on it.
func NewRegistry(src Source) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		NewCollector(src),
		BuildInfo(),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// BuildInfo returns the constant vmq_build_info{version, goversion} 1.
func BuildInfo() prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace:   Namespace,
		Name:        "build_info",
		Help:        "Always 1; the labels say which vmq build is running.",
		ConstLabels: prometheus.Labels{"version": Version, "goversion": runtime.Version()},
	}, func() float64 { return 1 })
}
