package main

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/internal/testenv"
)

// xdpFloodWindow is how long the attacker floods through the XDP
// transmit path.
const xdpFloodWindow = 2 * time.Second

// attackXDPTxFlood: the flood of attackFlood with the worker's XDP
// transmit path on (the wire sink's XDP program on the peer gives the veth
// ndo_xdp_xmit): the attacker's frames and the victim's leave in the same
// BPF_PROG_RUN calls, whose bulks the driver may cut short. The case
// checks that the flood went through XDP (the worker's counters), so it
// cannot pass on the sockets alone; runAttack checks the victim exact.
//
// It holds on veth because a live-frames call sends in batches of 64
// with bottom halves off, and the peer's NAPI, scheduled on the sending
// CPU (__veth_xdp_flush), drains its 256-entry ring when they come back
// on: the ring never fills (0 driver drops at 1.0-1.4M frames/s). With
// the peer's NAPI threaded it does, and both paths lose the victim's
// frames, the sockets more (bench/HISTORY.md, "XDP transmit under a
// flood"). VMQ_XDPFLOOD_NAPI=threaded measures that: it makes the peer's
// NAPI threaded, and the case then fails, on either path
// (VMQ_HOSTILE_TX_PATH=socket runs the bed on the sockets; the case's
// XDP check then fails too).
func attackXDPTxFlood(t *testing.T, h *hostileBed, a *attacker, tr *traffic) {
	worker0 := func() dataplane.WorkerStats {
		s, err := h.snapshot()
		if err != nil {
			t.Fatalf("vmqd stats: %v", err)
		}
		return s.Workers[0]
	}
	onXDP := os.Getenv("VMQ_HOSTILE_TX_PATH") != string(dataplane.TxPathSocket)
	testenv.Eventually(t, "worker 0 on the XDP transmit path", func() (bool, string) {
		w := worker0()
		return w.TxPath == "xdp" || !onXDP, fmt.Sprintf("tx path %q", w.TxPath)
	})
	if os.Getenv("VMQ_XDPFLOOD_NAPI") == "threaded" {
		threaded := "/sys/class/net/" + h.b.Peer.Name + "/threaded"
		h.b.Wire.Run(t, "sh", "-c", "echo 1 > "+threaded)
		t.Cleanup(func() { h.b.Wire.Run(t, "sh", "-c", "echo 0 > "+threaded) })
	}
	g := a.guest()
	before := worker0()
	floodFrom(t, h, g)
	rate := attackerWireRate(t, tr, xdpFloodWindow)
	after := worker0()
	xdp, sock := after.TxXDPFrames-before.TxXDPFrames, after.TxSocketFrames-before.TxSocketFrames
	t.Logf("attacker floods the wire at %.0f frames/s; worker 0: %d frames by XDP in %d calls, %d by socket, %d dropped by the driver and sent again, %d lost, %d calls fell back",
		rate, xdp, after.XDPTxCalls-before.XDPTxCalls, sock, after.XDPTxResent-before.XDPTxResent,
		after.XDPTxDrops-before.XDPTxDrops, after.XDPTxFallbacks-before.XDPTxFallbacks)
	if rate < 2*victimTxRate {
		t.Errorf("attacker sent only %.0f frames/s: not a flood", rate)
	}
	if onXDP && xdp < sock {
		t.Errorf("the flood went through the sockets (%d frames) more than through XDP (%d): not the XDP path", sock, xdp)
	}
}
