package testbed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/testenv"
)

// GuestConfig is the Go guest every suite uses: mergeable RX buffers,
// EVENT_IDX, 1024-entry rings, pairs queue pairs (0 means 1) and, if ip
// is set, an address it answers ARP and ping on.
func GuestConfig(mac string, pairs int, ip string) frontend.Config {
	cfg := frontend.Config{MAC: MustMAC(mac), QueuePairs: max(pairs, 1), MrgRxbuf: true, EventIdx: true, QueueSize: 1024}
	if ip != "" {
		cfg.IP = netip.MustParseAddr(ip)
	}
	return cfg
}

// RunGuest runs g until the end of the test, then stops and closes it.
func RunGuest(t testing.TB, name string, g *frontend.Guest) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		g.Close()
		if err := <-done; err != nil && !errors.Is(err, frontend.ErrClosed) {
			t.Logf("guest %s: %v", name, err)
		}
	})
}

// DialGuest connects a Go guest to a vhost-user socket that listens
// (vmq in server mode) and runs it until the end of the test.
func DialGuest(t testing.TB, name, sock string, cfg frontend.Config) *frontend.Guest {
	t.Helper()
	return startGuest(t, name, sock, cfg, frontend.Dial)
}

// ListenGuest is a Go guest listening on sock for vmq (in client mode)
// to connect, run until the end of the test.
func ListenGuest(t testing.TB, name, sock string, cfg frontend.Config) *frontend.Guest {
	t.Helper()
	return startGuest(t, name, sock, cfg, frontend.Listen)
}

func startGuest(t testing.TB, name, sock string, cfg frontend.Config, open func(string, frontend.Config) (*frontend.Guest, error)) *frontend.Guest {
	t.Helper()
	g, err := open(sock, cfg)
	if err != nil {
		t.Fatalf("guest %s: %v", name, err)
	}
	RunGuest(t, name, g)
	return g
}

// WaitRx waits until a guest has received exactly want frames, then
// checks that no more arrive.
func WaitRx(t testing.TB, name string, g *frontend.Guest, want uint64) {
	t.Helper()
	testenv.Eventually(t, name+" rx", func() (bool, string) {
		got := g.Stats().RxFrames
		return got >= want, fmt.Sprintf("%s received %d of %d", name, got, want)
	})
	time.Sleep(50 * time.Millisecond)
	if got := g.Stats().RxFrames; got != want {
		t.Fatalf("%s received %d frames, want exactly %d", name, got, want)
	}
}

// StreamReceived is how many frames of a pktgen stream g received.
func StreamReceived(g *frontend.Guest, stream uint32) uint64 {
	for _, s := range g.Stats().Streams {
		if s.Stream == stream {
			return s.Received
		}
	}
	return 0
}

// WaitStream waits (up to 15 s) until a guest has received want frames
// of a stream, then requires exactly want.
func WaitStream(t testing.TB, name string, g *frontend.Guest, stream uint32, want uint64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && StreamReceived(g, stream) < want {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if got := StreamReceived(g, stream); got != want {
		t.Fatalf("%s: stream %d received %d frames, want exactly %d", name, stream, got, want)
	}
}
