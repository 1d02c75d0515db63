package dataplane

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// A guest floods broadcasts on all four of its transmit queues to a VLAN
// of five other VMs, on the worker of a victim on another VLAN. Each
// copy costs the sender a unit of its quantum, so the copies the worker
// makes per round stay within one quantum: without that, the sender paid
// only its pops and the worker made 1196 copies a round (64 frames per
// queue, 4 queues, 5 copies each). The victim stays exact, and no VM of
// the VLAN loses its own frames for want of credit (budget).
func TestBroadcastStormSenderPays(t *testing.T) {
	const vlan, victimVLAN, pairs, nby = 10, 20, 4, 4
	tb := newTestbed(t, 1)
	witness := tb.addVM("witness", 1, mac1, vlan, 1, "")
	for i := range nby {
		tb.addVM(fmt.Sprintf("by%d", i), uint32(3+i), fmt.Sprintf("02:00:00:00:01:%02x", i), vlan, 1, "")
	}
	victim := tb.addVM("victim", 12, mac3, victimVLAN, 1, "")
	flooder := tb.addVM("flooder", 2, mac2, vlan, pairs, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	for q := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			flooder.Generate(ctx, frontend.Traffic{Dst: broadcastMAC[:], Size: 64, Stream: 9, Batch: 64, Queue: q})
		}()
	}
	testenv.Eventually(t, "flood running", func() (bool, string) {
		n := tb.vmStats("flooder").TxPackets
		return n > 20000, fmt.Sprintf("flooder sent %d", n)
	})
	s0, t0 := tb.dp.Snapshot(), time.Now()
	const n = 3000 // to each of the witness and the victim
	tb.sendSteady(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac1), VLAN: vlan}, {MAC: mustMAC(mac3), VLAN: victimVLAN}}, Size: 64, Stream: 1}, 2*n, 32, 6400*time.Microsecond)
	s1, el := tb.dp.Snapshot(), time.Since(t0)
	cancel()
	wg.Wait()

	copies := uint64(0)
	for _, v := range s1.VMs {
		copies += v.FloodCopies - vmOfSnap(s0, v.Name).FloodCopies
	}
	rounds := s1.Workers[0].Batches - s0.Workers[0].Batches
	busy := float64(s1.Workers[0].BusyNS-s0.Workers[0].BusyNS) / float64(el.Nanoseconds())
	t.Logf("%d flood copies in %v (%.0f/s), %d rounds with work: %.0f copies a round; worker busy %.0f%%",
		copies, el.Round(time.Millisecond), float64(copies)/el.Seconds(), rounds, float64(copies)/float64(max(rounds, 1)), 100*busy)
	if rounds < 100 || copies < 10000 {
		t.Fatalf("%d copies in %d rounds: not a storm", copies, rounds)
	}
	// The sender's credit is at most a quantum a round on average (it
	// carries at most one; the batch counter is published every few
	// rounds: a quantum's slack).
	if most := fairQuantum * (rounds + 1); copies > most {
		t.Errorf("%d flood copies in %d rounds: more than the sender's quantum of %d a round", copies, rounds, fairQuantum)
	}
	waitRx(t, "victim", victim, n)
	if vs := tb.vmStats("victim"); vs.RxPackets != n || len(vs.DropsByReason) != 0 {
		t.Errorf("victim: rx %d drops %v; want %d, no drop", vs.RxPackets, vs.DropsByReason, n)
	}
	if st := victim.Stats().Streams; len(st) != 1 || st[0].Lost != 0 || st[0].Duplicates != 0 {
		t.Errorf("victim stream: %+v", st)
	}
	for _, name := range []string{"witness", "by0", "by1", "by2", "by3"} {
		if d := tb.vmStats(name).DropsByReason["budget"]; d != 0 {
			t.Errorf("%s: %d frames dropped as budget (its credit went to the flooder's copies)", name, d)
		}
	}
	t.Logf("witness (same VLAN): %d of its %d frames, drops %v", streamReceived(witness, 1), n, tb.vmStats("witness").DropsByReason)
	tb.checkFrames()
}

func vmOfSnap(s Snapshot, name string) VMStats {
	for _, v := range s.VMs {
		if v.Name == name {
			return v
		}
	}
	return VMStats{}
}
