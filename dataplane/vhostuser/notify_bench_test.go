package vhostuser

import (
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkCallLatency measures how long a call takes from the worker's
// Flush (requestCall) to the write of the guest's call eventfd, while the
// worker goes on busy-polling on its locked thread as it does under
// traffic. busy=N: N other goroutines keep the remaining Ps busy (the
// control plane, a metrics scrape). Metrics: p50-µs, p99-µs, max-µs.
//
//	go test -run '^$' -bench CallLatency -benchtime 2000x ./dataplane/vhostuser
func BenchmarkCallLatency(b *testing.B) {
	for _, busy := range []int{0, 1} {
		b.Run("busy="+string(rune('0'+busy)), func(b *testing.B) { benchCallLatency(b, busy) })
	}
}

func benchCallLatency(b *testing.B, busy int) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	q := &Queue{callFD: fd}
	defer benchCallFD(b, q, fd)()

	var stop atomic.Bool
	defer stop.Store(true)
	for range busy {
		go func() {
			for !stop.Load() {
				for i := 0; i < 1000; i++ {
				}
			}
		}()
	}
	lat := make([]time.Duration, 0, b.N)
	done := make(chan struct{})
	n := b.N
	go func() { // the worker: locked, busy-polling, never blocking
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var ev [8]byte
		for range n {
			prev := q.calls.Load()
			t0 := time.Now()
			q.requestCall()
			for q.calls.Load() == prev {
				if time.Since(t0) > time.Second {
					return
				}
			}
			lat = append(lat, time.Since(t0))
			readNoWait(fd, &ev)
			for t := time.Now(); time.Since(t) < 20*time.Microsecond; { // frames between calls
			}
		}
	}()
	<-done
	if len(lat) < n {
		b.Fatalf("a call took longer than a second (%d of %d done)", len(lat), n)
	}
	slices.Sort(lat)
	us := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e3 }
	b.ReportMetric(us(0.5), "p50-µs")
	b.ReportMetric(us(0.99), "p99-µs")
	b.ReportMetric(us(1), "max-µs")
}
