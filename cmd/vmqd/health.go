package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/metrics"
)

// Health sampling: the workers' counters are read in the background, so
// a probe never waits on the dataplane (a Snapshot can wait on dp.mu,
// which a control call stuck on a stalled worker may hold).
const (
	healthSampleEvery = 250 * time.Millisecond
	// healthSampleStale: no sample for this long means the sampler itself
	// is stuck in Snapshot, and so is the dataplane's control path.
	healthSampleStale = 5 * time.Second
)

// health backs /healthz and /readyz.
type health struct {
	d     *daemon
	log   *slog.Logger
	watch metrics.WorkerWatch
	nl    *netlink.Handle // in the NIC's namespace
	stop  chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	sampled time.Time
	workers int
	stalled []int
}

func newHealth(d *daemon, ns *netns.NsHandle) (*health, error) {
	h := &health{d: d, log: d.log, stop: make(chan struct{}), done: make(chan struct{})}
	var err error
	if ns != nil {
		h.nl, err = netlink.NewHandleAt(*ns)
	} else {
		h.nl, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("health: netlink handle for the NIC's namespace: %w", err)
	}
	h.sample(time.Now())
	go h.run()
	return h, nil
}

func (h *health) run() {
	defer close(h.done)
	t := time.NewTicker(healthSampleEvery)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case now := <-t.C:
			h.sample(now)
		}
	}
}

func (h *health) sample(now time.Time) {
	ws := h.d.dp.Snapshot().Workers
	stalled := h.watch.Observe(now, ws)
	h.mu.Lock()
	newly := len(stalled) > 0 && len(h.stalled) == 0
	h.sampled, h.workers, h.stalled = now, len(ws), stalled
	h.mu.Unlock()
	if newly {
		h.log.Error("dataplane workers stalled: /healthz fails", "queues", stalled)
	}
}

// stopSampling stops the sampler; the probes answer from the last sample
// until the metrics server is down, then release closes the handle.
func (h *health) stopSampling() {
	close(h.stop)
	<-h.done
}

func (h *health) release() { h.nl.Close() }

// liveChecks: the sampler runs and no worker is stalled.
func (h *health) liveChecks() []metrics.Check {
	h.mu.Lock()
	sampled, stalled := h.sampled, h.stalled
	h.mu.Unlock()
	sampler := metrics.Check{Name: "dataplane", OK: true}
	if age := time.Since(sampled); age > healthSampleStale {
		sampler.OK, sampler.Detail = false, fmt.Sprintf("no dataplane snapshot for %v: its control path is stuck", age.Round(time.Second))
	}
	workers := metrics.Check{Name: "workers_not_stalled", OK: len(stalled) == 0}
	if !workers.OK {
		workers.Detail = fmt.Sprintf("workers of queues %v: a stall counted and no progress since", stalled)
	}
	return []metrics.Check{sampler, workers}
}

// Live is /healthz: the process answers, the dataplane is sampled, no
// worker is stalled.
func (h *health) Live(ctx context.Context) metrics.HealthReport {
	return metrics.NewReport(h.liveChecks()...)
}

// Ready is /readyz: live, and the XDP filter is attached to the NIC (as
// the kernel says), every configured queue has a worker, the API answers.
func (h *health) Ready(ctx context.Context) metrics.HealthReport {
	checks := h.liveChecks()
	checks = append(checks, h.filterCheck())
	h.mu.Lock()
	n := h.workers
	h.mu.Unlock()
	want := len(h.d.cfg.Queues)
	checks = append(checks, metrics.Check{Name: "workers_running", OK: n == want,
		Detail: fmt.Sprintf("%d of %d workers", n, want)})
	checks = append(checks, h.apiCheck(ctx))
	return metrics.NewReport(checks...)
}

func (h *health) filterCheck() metrics.Check {
	c := metrics.Check{Name: "filter_attached"}
	ifindex, _ := h.d.filter.Attached()
	if ifindex == 0 {
		c.Detail = "the XDP filter is not attached"
		return c
	}
	info, err := h.d.filter.Program().Info()
	if err != nil {
		c.Detail = fmt.Sprintf("read the filter program's info: %v", err)
		return c
	}
	id, _ := info.ID()
	l, err := h.nl.LinkByIndex(ifindex)
	if err != nil {
		c.Detail = fmt.Sprintf("NIC ifindex %d: %v", ifindex, err)
		return c
	}
	x := l.Attrs().Xdp
	if x == nil || !x.Attached || x.ProgId != uint32(id) {
		var got uint32
		if x != nil {
			got = x.ProgId
		}
		c.Detail = fmt.Sprintf("%s runs XDP program %d, not vmq's (%d)", l.Attrs().Name, got, id)
		return c
	}
	c.OK, c.Detail = true, fmt.Sprintf("program %d on %s", id, l.Attrs().Name)
	return c
}

func (h *health) apiCheck(ctx context.Context) metrics.Check {
	c := metrics.Check{Name: "api_serving", OK: true}
	cl := control.NewClient(h.d.cfg.API.Socket)
	defer cl.Close()
	if _, err := cl.Status(ctx); err != nil {
		c.OK, c.Detail = false, fmt.Sprintf("API on %s: %v", h.d.cfg.API.Socket, err)
	}
	return c
}
