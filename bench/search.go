package bench

import (
	"fmt"
	"slices"
)

// Trial is one run of a zero-loss search: frames offered at Rate for the
// search's window, and what came of them.
type Trial struct {
	RateMpps float64 `json:"rate_mpps"` // asked for
	Sent     uint64  `json:"sent"`
	Received uint64  `json:"received"`
	// Seconds the source took to send; 0 if unknown. A source slower
	// than the rate asked for sends at its own speed.
	Seconds float64 `json:"seconds"`
	Note    string  `json:"note,omitempty"` // where frames were lost
	// OthersCPU is each CPU's busy share during the trial not spent in
	// the run's processes (the load a trial met; see Point.OthersCPU).
	OthersCPU [2]float64 `json:"others_cpu"`
}

// Mpps is the rate the trial ran at: the one asked for, or the source's
// own if it could not keep up.
func (t Trial) Mpps() float64 {
	if t.Seconds > 0 {
		return min(t.RateMpps, float64(t.Sent)/t.Seconds/1e6)
	}
	return t.RateMpps
}

// Lost is the frames offered but not received (0 if more arrived).
func (t Trial) Lost() uint64 { return t.Sent - min(t.Sent, t.Received) }

// Search is the outcome of a zero-loss search.
type Search struct {
	// ZeroLossMpps is the highest rate tried that lost nothing, as the
	// source achieved it (0: none did). AtTop means the first trial, at the upper bound, lost
	// nothing: the true rate may be higher.
	ZeroLossMpps float64 `json:"zero_loss_mpps"`
	AtTop        bool    `json:"at_top"`
	Trials       []Trial `json:"trials"`
}

// ZeroLoss is RFC 2544's throughput search: a trial at top (Mpps), then a
// binary search between the highest rate that lost nothing and the lowest
// that lost frames, until they are closer than precision×top. A trial
// that sends no frames is an error, not zero loss.
func ZeroLoss(top, precision float64, trial func(rateMpps float64) (Trial, error)) (Search, error) {
	var s Search
	if top <= 0 || precision <= 0 || precision >= 1 {
		return s, fmt.Errorf("zero-loss search: top %v Mpps, precision %v: want top > 0, 0 < precision < 1", top, precision)
	}
	run := func(rate float64) (bool, error) {
		t, err := trial(rate)
		t.RateMpps = rate
		s.Trials = append(s.Trials, t)
		if err != nil {
			return false, fmt.Errorf("zero-loss trial at %.4f Mpps: %w", rate, err)
		}
		if t.Sent == 0 {
			return false, fmt.Errorf("zero-loss trial at %.4f Mpps: nothing sent", rate)
		}
		return t.Lost() == 0, nil
	}
	ok, err := run(top)
	if err != nil {
		return s, err
	}
	if ok {
		s.ZeroLossMpps, s.AtTop = s.Trials[0].Mpps(), true
		return s, nil
	}
	lo, hi := 0.0, top
	for hi-lo > precision*top {
		mid := (lo + hi) / 2
		ok, err := run(mid)
		if err != nil {
			return s, err
		}
		if ok {
			lo = mid
			s.ZeroLossMpps = s.Trials[len(s.Trials)-1].Mpps()
		} else {
			hi = mid
		}
	}
	return s, nil
}

// Repeated is one system's repeated zero-loss searches of one case: the
// searches in the order they ran (interleaved with the other system's),
// and their results' median and range.
type Repeated struct {
	Searches []Search `json:"searches"`
	// MedianMpps, MinMpps and MaxMpps are over the searches' ZeroLossMpps.
	MedianMpps float64 `json:"median_mpps"`
	MinMpps    float64 `json:"min_mpps"`
	MaxMpps    float64 `json:"max_mpps"`
	// AtTop: every search's first trial, at the start rate, lost nothing
	// (the source, not the switch, set the rate).
	AtTop bool `json:"at_top"`
}

// Add appends a search and updates the summary.
func (r *Repeated) Add(s Search) {
	r.Searches = append(r.Searches, s)
	v := make([]float64, len(r.Searches))
	r.AtTop = true
	for i, s := range r.Searches {
		v[i] = s.ZeroLossMpps
		r.AtTop = r.AtTop && s.AtTop
	}
	slices.Sort(v)
	r.MinMpps, r.MaxMpps = v[0], v[len(v)-1]
	r.MedianMpps = v[len(v)/2]
	if len(v)%2 == 0 {
		r.MedianMpps = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
}

// SearchOrder is the order of the systems' searches in round i of a
// case's repeated searches: as given, then reversed, and so on (A B, B A,
// A B: ABBAAB), so a drift of the machine's load over the rounds hits
// every system alike.
func SearchOrder(i int, systems ...string) []string {
	out := slices.Clone(systems)
	if i%2 == 1 {
		slices.Reverse(out)
	}
	return out
}
