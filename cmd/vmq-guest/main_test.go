package main

import (
	"bytes"
	"encoding/json"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/internal/testpmd"
)

func TestFlags(t *testing.T) {
	for _, bad := range [][]string{
		{},
		{"--socket", "s", "extra"},
		{"--socket", "s", "--queues", "0"},
		{"--socket", "s", "--rate", "-1"},
		{"--socket", "s", "--size", "1515"},
		{"--socket", "s", "--mtu", "9000", "--size", "9015"},
		{"--socket", "s", "--mtu", "67"},
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	o, err := parseFlags([]string{"--socket", "s", "--server", "--queues", "2", "--send-to", "02:00:00:00:00:0b", "--count", "10", "--json"}, io.Discard)
	if err != nil || !o.server || o.queues != 2 || o.count != 10 || !o.jsonOut || o.sendTo == "" {
		t.Fatalf("%+v %v", o, err)
	}
	if o, err := parseFlags([]string{"--socket", "s", "--mtu", "9000", "--size", "9014"}, io.Discard); err != nil || o.mtu != 9000 || o.size != 9014 {
		t.Fatalf("jumbo flags: %+v %v", o, err)
	}
	for _, o := range []options{
		{socket: "s", mac: "nope", logLevel: "info"},
		{socket: "s", mac: "02:00:00:00:00:0a", ip: "x", logLevel: "info"},
		{socket: "s", mac: "02:00:00:00:00:0a", logLevel: "loud"},
	} {
		if err := run(o, io.Discard, io.Discard); err == nil {
			t.Errorf("run(%+v) accepted", o)
		}
	}
}

// The command sends an exact count to DPDK's vhost backend (testpmd
// rxonly, which connects to the guest's listening socket) and reports it.
func TestSendToTestpmd(t *testing.T) {
	testenv.RequireCommand(t, "dpdk-testpmd")
	testenv.RequireRoot(t)
	t.Run("split", func(t *testing.T) { sendToTestpmd(t, false) })
	t.Run("packed", func(t *testing.T) { sendToTestpmd(t, true) })
}

func sendToTestpmd(t *testing.T, packed bool) {
	sock := filepath.Join(t.TempDir(), "guest.sock")
	pmd, err := testpmd.Start(t, testpmd.Config{Prefix: "vmqc", Lcores: "0@0,1@0", Mem: 256, EAL: []string{"--no-huge"},
		Vdevs: []string{"net_vhost0,iface=" + sock + ",queues=2,client=1"},
		App:   []string{"--forward-mode=rxonly", "--nb-cores=1", "--rxq=2", "--txq=2", "--total-num-mbufs=16384", "--no-flush-rx"}})
	if err != nil {
		t.Fatal(err)
	}

	var stdout bytes.Buffer
	o, err := parseFlags([]string{"--socket", sock, "--server", "--queues", "2", "--ip", "198.18.0.10",
		"--send-to", "02:00:00:00:00:0b", "--count", "10001", "--rate", "50000", "--size", "200",
		"--linger", "300ms", "--json", "--log-level", "warn", "--packed=" + strconv.FormatBool(packed)}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := run(o, &stdout, io.Discard); err != nil {
		t.Fatalf("run: %v", err)
	}
	var s summary
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
		t.Fatalf("summary %q: %v", stdout.String(), err)
	}
	if s.TxFrames != 10001 || s.TxBytes != 10001*200 || len(s.Queues) != 2 || s.Queues[0].TxFrames != 5001 || s.Connects != 1 {
		t.Fatalf("summary %+v", s)
	}
	const packedInOrder = virtio.FRingPacked | virtio.FInOrder
	if got := s.Features&packedInOrder == packedInOrder; got != packed {
		t.Fatalf("features %#x: packed and in-order %v, want %v", s.Features, got, packed)
	}
	pmd.Stop()
	rx, _, err := pmd.Stats()
	if err != nil {
		t.Fatalf("no testpmd statistics: %v", err)
	}
	if rx != 10001 {
		t.Fatalf("testpmd received %d frames, want 10001", rx)
	}

	var text bytes.Buffer
	printSummary(&text, s.Stats, time.Second, false)
	if !strings.Contains(text.String(), "tx 10001 frames 2000200 bytes") {
		t.Fatalf("text summary:\n%s", text.String())
	}
}
