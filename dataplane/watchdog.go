package dataplane

import (
	"time"
)

// stallThreshold: a worker that is awake (not in poll) and has not
// finished a round for this long is stalled. A round is bounded work
// (batches, budgets), so only a bug or something outside the worker's
// control (a blocking syscall, a page fault storm, a starved CPU) gets
// there.
const stallThreshold = 100 * time.Millisecond

// watchdogTick is how often the watchdog looks at the workers.
const watchdogTick = 20 * time.Millisecond

// stallLogEvery limits the log to one line per worker per interval; every
// stall is counted regardless (WorkerStats.Stalls).
const stallLogEvery = 10 * time.Second

// watchState is the watchdog's view of one worker.
type watchState struct {
	rounds, polls uint64
	since         time.Time // last progress seen
	reported      bool      // this stall was counted
	lastLog       time.Time
	unlogged      uint64 // stalls counted but not logged since lastLog
}

// watchdog reports stalled workers until stop is closed. It only reads
// the workers' atomics: it never waits for a worker or for dp.mu (a
// stalled worker may be what a control call holding dp.mu waits for).
func (dp *Dataplane) watchdog(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(watchdogTick)
	defer t.Stop()
	states := make([]watchState, len(dp.workers))
	now := time.Now()
	for i := range states {
		states[i].since = now
	}
	for {
		select {
		case <-stop:
			return
		case now = <-t.C:
		}
		for i, w := range dp.workers {
			dp.watch(w, &states[i], now)
		}
	}
}

func (dp *Dataplane) watch(w *worker, st *watchState, now time.Time) {
	rounds, polls := w.ctr.rounds.Load(), w.ctr.polls.Load()
	// Asleep in poll, or moved on since the last look (a round finished or
	// a poll came and went in between): not stalled.
	if w.asleep.Load() || rounds != st.rounds || polls != st.polls {
		st.rounds, st.polls, st.since, st.reported = rounds, polls, now, false
		return
	}
	stuck := now.Sub(st.since)
	if st.reported || stuck < stallThreshold {
		return
	}
	st.reported = true
	w.ctr.stalls.Add(1)
	if now.Sub(st.lastLog) < stallLogEvery {
		st.unlogged++
		return
	}
	slot := w.ctr.serving.Load()
	vm := ""
	if name, ok := dp.slotNames.Load(slot); ok {
		vm = name.(string)
	}
	dp.log.Warn("dataplane worker stalled: no round finished while awake",
		"queue", w.queueID, "vm", vm, "slot", slot, "stalled_for", stuck.Round(time.Millisecond),
		"stalls_not_logged", st.unlogged)
	st.lastLog, st.unlogged = now, 0
}
