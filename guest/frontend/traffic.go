package frontend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"time"

	"github.com/vmq/vmq/pktgen"
)

// Traffic is a run of stamped UDP frames for Generate.
type Traffic struct {
	Dst      net.HardwareAddr // destination MAC (required)
	SrcIP    netip.Addr       // default: Config.IP, else 198.18.0.1
	DstIP    netip.Addr       // default 198.18.0.2
	SrcPort  uint16           // default 9 (discard)
	DstPort  uint16           // default 9
	Size     int              // frame length without FCS; default 64 (raised to MinUDPFrame)
	Count    uint64           // frames to send; 0 = until Duration or ctx ends
	Duration time.Duration    // 0 = until Count or ctx ends
	Rate     float64          // frames per second; 0 = as fast as the ring takes them
	Stream   uint32           // pktgen stream id
	Queue    int              // queue pair to send on
	Batch    int              // frames per SendBatch; default 32
}

// Generate sends t's frames, each stamped with a pktgen payload (stream,
// seq from 0, CLOCK_MONOTONIC), and returns how many were queued. A full
// ring makes it wait, never drop, so Count frames means Count queued.
func (g *Guest) Generate(ctx context.Context, t Traffic) (uint64, error) {
	if t.Size == 0 {
		t.Size = 64
	}
	t.Size = max(t.Size, MinUDPFrame)
	if !t.SrcIP.IsValid() {
		t.SrcIP = g.cfg.IP
		if !t.SrcIP.IsValid() {
			t.SrcIP = netip.MustParseAddr("198.18.0.1")
		}
	}
	if !t.DstIP.IsValid() {
		t.DstIP = netip.MustParseAddr("198.18.0.2")
	}
	if t.SrcPort == 0 {
		t.SrcPort = 9
	}
	if t.DstPort == 0 {
		t.DstPort = 9
	}
	if t.Batch <= 0 {
		t.Batch = 32
	}
	if t.Count == 0 && t.Duration == 0 && ctx.Done() == nil {
		return 0, errors.New("generate: no count, duration or cancellable context: would never end")
	}
	tmpl, err := BuildUDP(UDPTemplate{Dst: t.Dst, Src: g.cfg.MAC, SrcIP: t.SrcIP, DstIP: t.DstIP,
		SrcPort: t.SrcPort, DstPort: t.DstPort, Size: t.Size})
	if err != nil {
		return 0, fmt.Errorf("generate: %w", err)
	}
	frames := make([][]byte, t.Batch)
	for i := range frames {
		frames[i] = append([]byte(nil), tmpl...)
	}
	start := time.Now()
	var deadline time.Time
	if t.Duration > 0 {
		deadline = start.Add(t.Duration)
	}
	var sent uint64
	full := 0
	for t.Count == 0 || sent < t.Count {
		if ctx.Err() != nil {
			return sent, nil
		}
		now := time.Now()
		if !deadline.IsZero() && !now.Before(deadline) {
			return sent, nil
		}
		n := uint64(t.Batch)
		if t.Count > 0 {
			n = min(n, t.Count-sent)
		}
		if t.Rate > 0 {
			due := uint64(t.Rate * now.Sub(start).Seconds())
			if due <= sent {
				// Sleep until the next frame is due (at least 50µs of it).
				wait := time.Duration(float64(sent+1)/t.Rate*float64(time.Second)) - now.Sub(start)
				time.Sleep(max(wait, 50*time.Microsecond))
				continue
			}
			n = min(n, due-sent)
		}
		ts := pktgen.MonotonicNS()
		for i := range n {
			pktgen.Payload{Stream: t.Stream, Seq: sent + i, TimestampNS: ts}.Put(frames[i][PayloadOffset:])
		}
		k, err := g.SendBatch(t.Queue, frames[:n])
		sent += uint64(k)
		if err != nil {
			return sent, fmt.Errorf("generate: %w", err)
		}
		if k == 0 {
			// Ring full: yield first (the device is usually just behind),
			// sleep only when it stays full.
			full++
			if full < 256 {
				runtime.Gosched()
			} else {
				time.Sleep(20 * time.Microsecond)
			}
		} else {
			full = 0
		}
	}
	return sent, nil
}
