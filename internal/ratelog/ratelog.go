// Package ratelog bounds the log lines an untrusted party can cause: a
// guest that restarts its rings or breaks its device in a loop must not
// fill the host's log.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Limiter lets one line through per interval and counts the rest; the
// next line that passes says how many were left out. The zero value is
// ready to use and safe from any goroutine.
type Limiter struct {
	mu      sync.Mutex
	next    time.Time
	dropped int
}

// Log writes msg to log unless a line passed this Limiter less than
// every ago.
func (l *Limiter) Log(log *slog.Logger, every time.Duration, level slog.Level, msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if now.Before(l.next) {
		l.dropped++
		l.mu.Unlock()
		return
	}
	l.next = now.Add(every)
	if l.dropped > 0 {
		args = append(args, "suppressed", l.dropped)
		l.dropped = 0
	}
	l.mu.Unlock()
	log.Log(context.Background(), level, msg, args...)
}
