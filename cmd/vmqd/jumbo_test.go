package main

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/internal/testbed"
)

// vmqd on a NIC with MTU 9000 starts (multi-buffer sockets, noted in the
// status), and a guest sized for it answers 9000-byte pings from the
// wire without fragmentation; MTU 9001 is refused, naming the fix.
func TestDaemonJumbo(t *testing.T) {
	b := newBedOpts(t, testbed.Options{MTU: 9000}, vm1)
	b.start()
	c := control.NewClient(b.cfg.API.Socket)
	defer c.Close()
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.NIC.MTU != 9000 || st.NIC.AttachMode != "native" {
		t.Fatalf("status NIC: %+v", st.NIC)
	}
	if !slices.ContainsFunc(st.NIC.Notes, func(n string) bool { return strings.Contains(n, "AF_XDP multi-buffer") }) {
		t.Errorf("no note on multi-buffer frames: %q", st.NIC.Notes)
	}
	cfg := testbed.GuestConfig(vm1.MAC, 1, "10.0.0.2")
	cfg.MTU = 9000
	testbed.DialGuest(t, vm1.Name, b.Socket(vm1.Name), cfg)
	out, err := b.Wire.Command("ping", "-c", "5", "-i", "0.05", "-W", "5", "-s", "8972", "-M", "do", "10.0.0.2").CombinedOutput()
	if err != nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	testbed.CheckPing(t, "wire -> guest, 9000-byte packets", string(out), 5)

	b2 := newBedOpts(t, testbed.Options{MTU: 9001}, vm1)
	h := b2.Host.Handle()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	d, err := startDaemon(context.Background(), daemonOptions{cfg: b2.cfg, log: log, netns: &h, metricsAddr: "127.0.0.1:0"})
	if err == nil {
		d.stop(context.Background())
		t.Fatal("vmqd started on a NIC with MTU 9001")
	}
	if !strings.Contains(err.Error(), "MTU 9001, above the 9000 vmq supports") || !strings.Contains(err.Error(), "mtu 9000") {
		t.Errorf("refusal does not name the limit and the fix: %v", err)
	}
	t.Log(err)
}
