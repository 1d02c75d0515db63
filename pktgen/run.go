package pktgen

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"
)

// Sender transmits the frames of a flow in order, continuing its sequence
// from call to call.
type Sender interface {
	// Send transmits the next n frames. sent went out; failed were
	// attempted but refused by a transient condition (a full queue) and
	// are lost (their sequence numbers are skipped). err is fatal.
	Send(n int) (sent, failed int, err error)
	// FrameLen is the length of each frame.
	FrameLen() int
}

// chunker is a Sender with its own preferred frames per unpaced Send call
// (a LiveGenerator's set-up per call is worth amortising over more frames
// than a socket's).
type chunker interface {
	Chunk() int
}

// unpacedChunk is the frames per Send call of an unpaced run unless the
// sender says otherwise: small enough to check deadlines and ticks often.
const unpacedChunk = 16384

// RunOptions say how much to send and how fast. With neither Count nor
// Duration, Run sends until ctx ends.
type RunOptions struct {
	Count    uint64        // frames to send (0 = no limit)
	Duration time.Duration // how long to send (0 = no limit)
	// Rate in frames per second (0 = as fast as possible). Frames go in
	// bursts of Burst; between bursts Run sleeps to hold the average.
	// A sender that falls behind (descheduled, or a rate above what
	// bursts of Burst reach) resumes the schedule from where it is: no
	// call sends more than Burst, so a receiver with a small ring sees no
	// catch-up bursts, and the average may fall below Rate. See CatchUp.
	Rate float64
	// CatchUp makes a late paced run send every frame that is due in one
	// call (up to the sender's chunk), so the average holds up to the
	// sender's full speed: what a load test wants, not an exact-count test.
	CatchUp bool
	// Burst is the frames per Send call when paced (default 64). Unpaced
	// runs send larger chunks (at least 16384, or the sender's own) to
	// amortise the call.
	Burst int
	// Tick, when OnTick is set, is how often OnTick gets the running
	// totals (default 1s). OnTick runs on the sending goroutine: keep it short.
	Tick   time.Duration
	OnTick func(Stats)
}

// Stats are the totals of a run.
type Stats struct {
	Sent     uint64        `json:"sent"`
	Errors   uint64        `json:"errors"`
	Bytes    uint64        `json:"bytes"` // Ethernet bytes sent, without FCS
	Elapsed  time.Duration `json:"elapsed_ns"`
	FrameLen int           `json:"frame_len"`
}

// PPS is the average frames per second.
func (s Stats) PPS() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Sent) / s.Elapsed.Seconds()
}

// Gbps is the average Ethernet throughput in Gbit/s, counting frame bytes
// without FCS, preamble or inter-frame gap (add 24 bytes a frame for the
// line rate).
func (s Stats) Gbps() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Bytes) * 8 / s.Elapsed.Seconds() / 1e9
}

// Sub returns the difference s - o of the counters and elapsed time
// (the rate over an interval between two snapshots).
func (s Stats) Sub(o Stats) Stats {
	return Stats{Sent: s.Sent - o.Sent, Errors: s.Errors - o.Errors, Bytes: s.Bytes - o.Bytes,
		Elapsed: s.Elapsed - o.Elapsed, FrameLen: s.FrameLen}
}

// Run sends frames through s as opts say, on the calling goroutine, which
// it locks to its OS thread (a LiveGenerator must stay in its namespace).
// It returns the totals and the first fatal error; a cancelled ctx ends
// the run without error.
func Run(ctx context.Context, s Sender, opts RunOptions) (Stats, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if opts.Rate < 0 {
		return Stats{}, fmt.Errorf("run: negative rate %v", opts.Rate)
	}
	burst := opts.Burst
	if burst <= 0 {
		burst = 64
	}
	// The sender's chunk may change as it learns its speed: ask each time.
	chunk := func() int {
		if c, ok := s.(chunker); ok {
			return max(c.Chunk(), burst)
		}
		return max(unpacedChunk, burst)
	}
	tick := opts.Tick
	if tick <= 0 {
		tick = time.Second
	}
	st := Stats{FrameLen: s.FrameLen()}
	start := time.Now()
	sched := start // frame k is due at sched + k/rate
	nextTick := start.Add(tick)
	var deadline time.Time
	if opts.Duration > 0 {
		deadline = start.Add(opts.Duration)
	}
	done := ctx.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-done:
			st.Elapsed = time.Since(start)
			return st, nil
		default:
		}
		now := time.Now()
		if !deadline.IsZero() && !now.Before(deadline) {
			break
		}
		k := st.Sent + st.Errors // the next frame
		if opts.Count > 0 && k >= opts.Count {
			break
		}
		n := burst
		if opts.Rate == 0 {
			n = chunk()
			if el := now.Sub(start); !deadline.IsZero() && k > 0 && el > 0 {
				// Near the deadline, only what fits before it at the
				// speed so far: a large chunk must not overrun it.
				fits := float64(k) / el.Seconds() * deadline.Sub(now).Seconds()
				n = min(n, max(int(fits)+1, min(burst, 64)))
			}
		} else {
			// Hold the average: frame k is due at sched + k/rate.
			due := sched.Add(time.Duration(float64(k) / opts.Rate * float64(time.Second)))
			if wait := due.Sub(now); wait > 0 {
				if !deadline.IsZero() && due.After(deadline) {
					wait = deadline.Sub(now)
				}
				timer.Reset(wait)
				select {
				case <-done:
					st.Elapsed = time.Since(start)
					return st, nil
				case <-timer.C:
				}
				continue
			}
			if opts.CatchUp {
				// Behind: catch up with every frame due by now.
				if dueNow := uint64(now.Sub(sched).Seconds()*opts.Rate) + 1; dueNow > k+uint64(n) {
					n = int(min(dueNow-k, uint64(chunk())))
				}
			} else if late := now.Sub(due); late > time.Duration(float64(burst)/opts.Rate*float64(time.Second)) {
				// More than a burst late: the schedule restarts from now
				// rather than sending the debt back to back.
				sched = sched.Add(late)
			}
		}
		if opts.Count > 0 {
			n = int(min(uint64(n), opts.Count-k))
		}
		sent, failed, err := s.Send(n)
		st.Sent += uint64(sent)
		st.Errors += uint64(failed)
		st.Bytes += uint64(sent) * uint64(st.FrameLen)
		if err != nil {
			st.Elapsed = time.Since(start)
			return st, err
		}
		if sent+failed == 0 {
			st.Elapsed = time.Since(start)
			return st, errors.New("run: sender made no progress")
		}
		if opts.OnTick != nil {
			if now := time.Now(); !now.Before(nextTick) {
				st.Elapsed = now.Sub(start)
				opts.OnTick(st)
				nextTick = nextTick.Add(tick)
				if nextTick.Before(now) {
					nextTick = now.Add(tick)
				}
			}
		}
	}
	st.Elapsed = time.Since(start)
	return st, nil
}
