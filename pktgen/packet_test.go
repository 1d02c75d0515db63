package pktgen

import (
	"context"
	"testing"

	"github.com/vmq/vmq/internal/netnstest"
)

func TestPacketSender(t *testing.T) {
	nsA, nsB := netnstest.New(t), netnstest.New(t)
	a, b := netnstest.NewVethPair(t, nsA, nsB, netnstest.VethOptions{})
	var sink *Sink
	if err := nsB.Do(func() (err error) {
		sink, err = AttachSink(b.Index, SinkOptions{Stream: 3})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	tm, err := NewTemplate(FlowSpec{SrcMAC: a.MAC, Dests: []Dest{{MAC: b.MAC, VLAN: 12}}, OuterVLAN: 34,
		Stream: 3, Size: 200, UDPChecksum: true})
	if err != nil {
		t.Fatal(err)
	}
	var ps *PacketSender
	if err := nsA.Do(func() (err error) {
		ps, err = NewPacketSender(tm, PacketOptions{Ifindex: a.Index, Batch: 32})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	// The socket keeps its namespace: Run from this thread.
	const count = 2000
	st, err := Run(context.Background(), ps, RunOptions{Count: count, Rate: 20000, Burst: 32})
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent+st.Errors != count || st.Sent == 0 || ps.Next() != count {
		t.Fatalf("stats %+v, next %d", st, ps.Next())
	}
	got := waitFrames(t, sink, st.Sent)
	if got.Payloads != st.Sent || got.Tracked != st.Sent || got.Dups != 0 || got.TSBack != 0 {
		t.Fatalf("sink %+v after sending %+v", got, st)
	}
	if seen, err := sink.Seen(count); err != nil || seen != st.Sent {
		t.Fatalf("distinct seqs %d, %v; sent %d", seen, err, st.Sent)
	}
	if st.Errors > 0 {
		t.Logf("%d frames refused by a full queue (counted, not sent)", st.Errors)
	}
}

func TestXSKSender(t *testing.T) {
	nsA, nsB := netnstest.New(t), netnstest.New(t)
	a, b := netnstest.NewVethPair(t, nsA, nsB, netnstest.VethOptions{})
	var sink *Sink
	if err := nsB.Do(func() (err error) {
		sink, err = AttachSink(b.Index, SinkOptions{Stream: 4})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	tm, err := NewTemplate(FlowSpec{SrcMAC: a.MAC, Dests: []Dest{{MAC: b.MAC}}, Stream: 4, Size: 1514, UDPChecksum: true})
	if err != nil {
		t.Fatal(err)
	}
	var xs *XSKSender
	if err := nsA.Do(func() (err error) {
		xs, err = NewXSKSender(tm, XSKOptions{Ifindex: a.Index})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	const count = 3000
	st, err := Run(context.Background(), xs, RunOptions{Count: count, Rate: 30000, Burst: 64})
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent != count || xs.Next() != count {
		t.Fatalf("stats %+v, next %d", st, xs.Next())
	}
	got := waitFrames(t, sink, count)
	if got.Payloads != count || got.Tracked != count || got.Dups != 0 || got.TSBack != 0 {
		t.Fatalf("sink %+v", got)
	}
}
