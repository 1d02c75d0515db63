package frontend

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"testing"
	"time"
)

// The guest notices the backend leaving and, in server mode, takes the
// next one; in client mode with Reconnect it redials.
func TestDPDKBackendRestart(t *testing.T) {
	for _, server := range []bool{true, false} {
		name := "client_reconnect"
		if server {
			name = "server"
		}
		t.Run(name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "vhost.sock")
			cfg := Config{MAC: testMAC, IP: netip.MustParseAddr("198.18.0.10"), MrgRxbuf: true,
				Reconnect: !server, ReconnectInterval: 50 * time.Millisecond}
			var g *Guest
			var err error
			p := startTestpmd(t, sock, 1, server, "txonly")
			if server {
				g, err = Listen(sock, cfg)
			} else {
				waitFile(t, sock)
				waitFor(10*time.Second, func() bool { g, err = Dial(sock, cfg); return err == nil })
			}
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			runErr := make(chan error, 1)
			go func() { runErr <- g.Run(ctx) }()
			defer func() {
				cancel()
				g.Close()
				if err := <-runErr; err != nil {
					t.Errorf("Run: %v", err)
				}
			}()
			if !waitFor(15*time.Second, func() bool { return g.Stats().RxFrames > 1000 }) {
				t.Fatal("no traffic from the first backend")
			}
			_, tx1 := p.stop(t)
			if !waitFor(5*time.Second, func() bool { s := g.Stats(); return s.Disconnects == 1 && !g.Connected() }) {
				t.Fatalf("disconnect not noticed: %+v", g.Stats())
			}
			if got := g.Stats().RxFrames; got != tx1 {
				t.Fatalf("first backend sent %d, guest received %d", tx1, got)
			}
			if _, err := g.SendBatch(0, [][]byte{make([]byte, 64)}); !errors.Is(err, ErrNotConnected) {
				t.Fatalf("send while disconnected: %v", err)
			}
			p2 := startTestpmd(t, sock, 1, server, "txonly")
			if !waitFor(15*time.Second, func() bool { return g.Stats().Connects == 2 && g.Stats().RxFrames > tx1+1000 }) {
				t.Fatalf("no traffic after the backend came back: %+v", g.Stats())
			}
			_, tx2 := p2.stop(t)
			if !waitFor(5*time.Second, func() bool { return g.Stats().RxFrames == tx1+tx2 }) {
				t.Fatalf("backends sent %d+%d, guest received %d", tx1, tx2, g.Stats().RxFrames)
			}
		})
	}
}

// Without Reconnect, a client's Run ends with ErrDisconnected.
func TestDPDKClientDisconnectEndsRun(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	p := startTestpmd(t, sock, 1, false, "rxonly")
	waitFile(t, sock)
	var g *Guest
	var err error
	waitFor(10*time.Second, func() bool { g, err = Dial(sock, Config{MAC: testMAC}); return err == nil })
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	runErr := make(chan error, 1)
	go func() { runErr <- g.Run(context.Background()) }()
	p.stop(t)
	select {
	case err := <-runErr:
		if !errors.Is(err, ErrDisconnected) {
			t.Fatalf("Run returned %v, want ErrDisconnected", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not notice the backend leaving")
	}
}

// Run ends promptly when its context is cancelled while frames keep
// arriving (testpmd txonly floods the guest).
func TestDPDKRunStopsUnderLoad(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	startTestpmd(t, sock, 1, false, "txonly")
	waitFile(t, sock)
	var g *Guest
	var err error
	waitFor(10*time.Second, func() bool { g, err = Dial(sock, Config{MAC: testMAC}); return err == nil })
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- g.Run(ctx) }()
	if !waitFor(10*time.Second, func() bool { return g.Stats().RxFrames > 10000 }) {
		t.Fatal("no traffic")
	}
	cancel()
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run ignored its cancelled context under load")
	}
	if g.Connected() {
		t.Fatal("still connected after Run returned")
	}
}
