package dataplane

import (
	"context"
	"testing"
	"time"

	"github.com/vmq/vmq/guest/frontend"
	tbed "github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/pktgen"
)

// A quiet guest's transmit ring goes idle with its notifications on, and
// the worker learns of new frames from its kick; a guest that never kicks
// (poll mode, or misbehaving) must still be served, by the sweep over the
// idle queues, while the worker is busy with other VMs' traffic and while
// it sleeps. Every one of its frames arrives, in order.
func TestNonKickingGuestIsServed(t *testing.T) {
	tb := newTestbed(t, 1)
	cfg := tbed.GuestConfig(mac1, 1, "")
	cfg.NoTxKick = true
	quiet := tb.addVMConfig("quiet", 1, 0, cfg)
	receiver := tb.addVM("receiver", 2, mac2, 0, 1, "")
	witness := tb.addVM("witness", 3, mac3, 0, 1, "")
	busy := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac3)}}, Size: 64, Stream: 1}
	// Rounds with work: the quiet guest's empty ring backs off and goes
	// to the idle list (after 1+3+7+15 rounds).
	tb.send(busy, 2000)
	waitRx(t, "witness", witness, 2000)
	const n = 2000
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		_, err := quiet.Generate(ctx, frontend.Traffic{Dst: mustMAC(mac2), Count: n, Size: 64, Rate: 20000, Stream: 2})
		done <- err
	}()
	tb.send(busy, 2000)
	if err := <-done; err != nil {
		t.Fatalf("the guest's frames were not taken: %v; %+v", err, tb.vmStats("quiet"))
	}
	waitRx(t, "receiver", receiver, n)
	waitRx(t, "witness", witness, 4000)
	if vs := tb.vmStats("quiet"); vs.TxPackets != n {
		t.Errorf("quiet: tx %d, want %d", vs.TxPackets, n)
	}
	if k := quiet.Stats().Kicks; k == 0 {
		t.Errorf("the guest counted no kick it left out: %d", k)
	}
	if st := receiver.Stats().Streams; len(st) != 1 || st[0].Lost != 0 || st[0].Reordered != 0 || st[0].Duplicates != 0 {
		t.Errorf("receiver stream: %+v", st)
	}
	tb.checkFrames()
}

// A guest that kicks for every frame it sends, one at a time at a pace
// that lets the worker sleep between them, kicks for frames each time:
// its kicks are never taken for a storm (kickmute.go), so none is muted
// and every frame arrives in order.
func TestKickingGuestIsNotMuted(t *testing.T) {
	tb := newTestbed(t, 1)
	sender := tb.addVM("sender", 1, mac1, 0, 1, "")
	receiver := tb.addVM("receiver", 2, mac2, 0, 1, "")
	const n = 1500
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := sender.Generate(ctx, frontend.Traffic{Dst: mustMAC(mac2), Count: n, Size: 64, Rate: 1000, Batch: 1, Stream: 1}); err != nil {
		t.Fatal(err)
	}
	waitRx(t, "receiver", receiver, n)
	if k := tb.portStats("sender").Kicks; k < n/2 {
		t.Errorf("the sender's port took %d kicks for %d frames: the worker did not sleep between them", k, n)
	}
	if m := tb.dp.Snapshot().Workers[0].KickMutes; m != 0 {
		t.Errorf("a guest whose kicks carry frames was muted %d times", m)
	}
	if st := receiver.Stats().Streams; len(st) != 1 || st[0].Lost != 0 || st[0].Reordered != 0 {
		t.Errorf("receiver stream: %+v", st)
	}
}
