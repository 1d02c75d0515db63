package vhostuser

import (
	"os"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane/virtio"
)

// packedCases run DPDK's virtio_user on packed rings, with and without
// IN_ORDER, in both socket modes (and multiqueue once).
var packedCases = []interopCase{
	{false, 1, 1, ",packed_vq=1,in_order=1"}, {true, 1, 1, ",packed_vq=1,in_order=1"},
	{false, 0, 1, ",packed_vq=1,in_order=0"}, {true, 0, 1, ",packed_vq=1,in_order=0"},
	{false, 1, 2, ",packed_vq=1,in_order=1"},
}

// checkPacked fails unless the port negotiated the packed layout (and
// IN_ORDER when the case asked for it).
func checkPacked(t *testing.T, p *Port, c interopCase) {
	t.Helper()
	f := p.State().Features
	if f&virtio.FRingPacked == 0 {
		t.Fatalf("features %#x: RING_PACKED not negotiated", f)
	}
	if wantIO := c.vdev == ",packed_vq=1,in_order=1"; (f&virtio.FInOrder != 0) != wantIO {
		t.Fatalf("features %#x: IN_ORDER negotiated %v, want %v", f, f&virtio.FInOrder != 0, wantIO)
	}
}

// TestDPDKPackedGuestTx: testpmd txonly on packed rings; the backend
// pops exactly what testpmd counts as sent, frames of the right length.
func TestDPDKPackedGuestTx(t *testing.T) {
	for _, c := range packedCases {
		t.Run(c.String(), func(t *testing.T) {
			w := newTestWorker(t, nil)
			w.wantLen = 64
			p, pmd := startVirtioUser(t, c, w, "txonly", "--txpkts=64")
			checkPacked(t, p, c)
			sent := guestTx(t, pmd, w, 50000)
			if b := w.badLen.Load(); b != 0 {
				t.Fatalf("%d frames of the wrong length", b)
			}
			for i := 0; i < c.queues; i++ {
				if w.popped[i].Load() == 0 {
					t.Errorf("queue pair %d carried nothing", i)
				}
			}
			st := p.State()
			t.Logf("sent %d, all popped; kicks %d calls %d; features %#x", sent, st.Kicks, st.Calls, st.Features)
			if st.Broken != "" {
				t.Fatalf("device broken: %s", st.Broken)
			}
		})
	}
}

// TestDPDKPackedGuestRx: the backend pushes a known number of frames per
// queue into packed rings; testpmd rxonly receives exactly that many
// bytes and frames.
func TestDPDKPackedGuestRx(t *testing.T) {
	for _, c := range packedCases {
		t.Run(c.String(), func(t *testing.T) {
			frame := make([]byte, 1514)
			copy(frame, []byte{2, 0, 0, 0, 0, 0x0a, 2, 0, 0, 0, 0, 0x0b, 0x08, 0x00})
			w := newTestWorker(t, frame)
			p, pmd := startVirtioUser(t, c, w, "rxonly")
			checkPacked(t, p, c)
			pmd.command("start", startDone)
			const perQueue = 20000
			for sent := 0; sent < perQueue; sent += 500 {
				for i := 0; i < c.queues; i++ {
					w.toPush[i].Add(500)
				}
				waitFor(t, func() bool {
					for i := 0; i < c.queues; i++ {
						if w.toPush[i].Load() > 0 {
							return false
						}
					}
					return true
				}, "pushes")
			}
			want := uint64(perQueue * c.queues)
			var got uint64
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				if got = pmd.portStat("RX-packets"); got >= want {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if got != want || w.total(&w.pushed) != want {
				t.Fatalf("pushed %d, testpmd received %d, want %d", w.total(&w.pushed), got, want)
			}
			if bytes := pmd.portStat("RX-bytes"); bytes != want*uint64(len(frame)) {
				t.Fatalf("testpmd received %d bytes, want %d", bytes, want*uint64(len(frame)))
			}
			st := p.State()
			t.Logf("pushed %d, testpmd RX %d; calls %d; features %#x", want, got, st.Calls, st.Features)
			if st.Broken != "" {
				t.Fatalf("device broken: %s", st.Broken)
			}
		})
	}
}

// TestDPDKPackedReconnect: a packed-ring guest is killed and restarted;
// the port serves the new one from its own ring base (slot 0, wrap 1),
// and frames flow again, exactly, in both socket modes.
func TestDPDKPackedReconnect(t *testing.T) {
	for _, client := range []bool{false, true} {
		c := interopCase{client, 1, 1, ",packed_vq=1,in_order=1"}
		t.Run(c.String(), func(t *testing.T) {
			w := newTestWorker(t, nil)
			p, pmd := startVirtioUser(t, c, w, "txonly", "--txpkts=64")
			checkPacked(t, p, c)
			guestTx(t, pmd, w, 10000)
			pmd.Kill()
			waitFor(t, func() bool { return !p.State().Connected }, "disconnect")
			waitRunning(t, p, 0)
			sock := p.Path()
			if client {
				os.Remove(sock)
			}
			pmd2 := startVirtioUserPMD(t, sock, c, "txonly", "--txpkts=64")
			pmd2.waitPrompt(60 * time.Second)
			waitRunning(t, p, 2)
			sent := guestTx(t, pmd2, w, 10000)
			if st := p.State(); st.Connects != 2 || st.Broken != "" {
				t.Fatalf("state after reconnect: %+v", st)
			}
			t.Logf("second guest sent %d, all popped", sent)
		})
	}
}
