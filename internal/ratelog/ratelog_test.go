package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLimiterPassesOnePerIntervalAndCountsTheRest(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var l Limiter
	for range 5 {
		l.Log(log, time.Hour, slog.LevelWarn, "ring restarted")
	}
	if got := strings.Count(buf.String(), "ring restarted"); got != 1 {
		t.Fatalf("%d lines within one interval, want 1:\n%s", got, buf.String())
	}
	l.mu.Lock()
	l.next = time.Time{} // the interval has passed
	l.mu.Unlock()
	l.Log(log, time.Hour, slog.LevelWarn, "ring restarted")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "suppressed=4") {
		t.Fatalf("second line should report 4 suppressed:\n%s", buf.String())
	}
}
