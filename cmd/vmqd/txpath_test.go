package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
	"testing"

	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/pktgen"
)

// vmqd with the XDP transmit and a real guest process (vmq-guest): its
// frames of 64 (66: its smallest) and 1514 bytes reach the wire exactly (every one, in
// order, the guest's length), through XDP calls, as /metrics says.
func TestDaemonXDPTransmit(t *testing.T) {
	guestBin := buildTool(t, "../vmq-guest", "vmq-guest")
	b := newBed(t, vm1)
	b.cfg.Tx.XDPMinBatch = 1 // every round through XDP: this test is about the path
	b.PassXDPOnPeer()
	d := b.start()
	capture := b.Capture()
	wire := b.Peer.MAC.String()
	const n = 3000
	sizes := []int{64, 1514}
	for i, size := range sizes {
		cmd := exec.Command(guestBin, "--socket", b.Socket("vm1"), "--mac", vm1.MAC, "--send-to", wire,
			"--count", strconv.Itoa(n), "--size", strconv.Itoa(size), "--rate", "30000",
			"--stream", strconv.Itoa(40+i), "--linger", "0s", "--log-level", "warn")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("vmq-guest %d B: %v\n%s", size, err, out)
		}
	}
	src := mustMAC(vm1.MAC)
	for i, size := range sizes {
		stream := uint32(40 + i)
		mine := func(f []byte) bool {
			p, ok := pktgen.ParseFrame(f)
			return ok && bytes.Equal(f[6:12], src) && p.Stream == stream
		}
		frames := capture.WaitFor(t, fmt.Sprintf("%d B frames on the wire", size), mine, n)
		for j, f := range frames {
			if p, _ := pktgen.ParseFrame(f); p.Seq != uint64(j) || len(f) != max(size, frontend.MinUDPFrame) {
				t.Fatalf("%d B frame %d: seq %d, %d bytes (lost, reordered or cut)", size, j, p.Seq, len(f))
			}
		}
	}
	total := float64(len(sizes) * n)
	if got := scrapeMetric(t, d.metricsAddr, "vmq_worker_tx_frames_total", `path="xdp"`); got != total {
		t.Errorf("/metrics: %v frames by XDP, want %v", got, total)
	}
	if got := scrapeMetric(t, d.metricsAddr, "vmq_worker_tx_frames_total", `path="socket"`); got != 0 {
		t.Errorf("/metrics: %v frames by socket, want 0", got)
	}
	if got := scrapeMetric(t, d.metricsAddr, "vmq_worker_tx_path_info", `path="xdp"`); got != 1 {
		t.Errorf("/metrics: tx path info %v", got)
	}
	if got := scrapeMetric(t, d.metricsAddr, "vmq_vm_tx_packets_total", `vm="vm1"`); got != total {
		t.Errorf("/metrics: vm1 tx %v, want %v", got, total)
	}
}
