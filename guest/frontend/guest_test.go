package frontend

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/pktgen"
)

// socketless builds a guest and its queues without a backend, so the rx
// loop can be driven by a testDev over the same memory.
func socketless(t *testing.T, cfg Config, features uint64) (*Guest, *device) {
	t.Helper()
	g, err := newGuest("test", cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := &device{features: features, hupFD: -1}
	if err := g.buildQueues(d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.release)
	return g, d
}

func TestGuestAnswersARPAndPingCountsStreams(t *testing.T) {
	var seen []int
	var g *Guest
	// The hook may read Stats (no self-deadlock on the stats lock).
	g, d := socketless(t, Config{MAC: guestMAC, IP: guestIP, QueuePairs: 2, QueueSize: 64, MemRegions: 3,
		OnFrame: func(q int, f []byte) { seen = append(seen, q); _ = g.Stats() }}, virtio.FVersion1|virtio.NetFMrgRxbuf)
	qp := d.qps[1]
	rx := newTestDev(&qp.rx.ring, d.mem)
	tx := newTestDev(&qp.tx.ring, d.mem)

	arp := unhex(t, `ffffffffffff 020000000001 0806
		0001 0800 06 04 0001 020000000001 0a000001 000000000000 0a00000a`)
	ping := unhex(t, `02000000000a 020000000001 0800
		4500 0020 0001 0000 4001 66d2 0a000001 0a00000a
		0800 32d9 0010 0050 6162 6364`)
	udp, _ := BuildUDP(UDPTemplate{Dst: guestMAC, Src: peerMAC, SrcIP: guestIP, DstIP: guestIP, Size: 1000})
	for _, f := range [][]byte{arp, ping} {
		if err := rx.deliver(f, true); err != nil {
			t.Fatal(err)
		}
	}
	for seq := range uint64(5) {
		if seq == 2 {
			continue // one lost
		}
		pktgen.Payload{Stream: 3, Seq: seq, TimestampNS: pktgen.MonotonicNS()}.Put(udp[PayloadOffset:])
		if err := rx.deliver(udp, true); err != nil {
			t.Fatal(err)
		}
	}
	rx.publish()
	if _, err := g.pollQueuePair(qp); err != nil {
		t.Fatal(err)
	}
	replies, err := tx.take()
	if err != nil {
		t.Fatal(err)
	}
	wantARP := unhex(t, `020000000001 02000000000a 0806
		0001 0800 06 04 0002 02000000000a 0a00000a 020000000001 0a000001`)
	wantPing := unhex(t, `020000000001 02000000000a 0800
		4500 0020 0001 0000 4001 66d2 0a00000a 0a000001
		0000 3ad9 0010 0050 6162 6364`)
	if len(replies) != 2 || !bytes.Equal(replies[0], wantARP) || !bytes.Equal(replies[1], wantPing) {
		t.Fatalf("replies on the tx ring:\n%x", replies)
	}
	s := g.Stats()
	if s.ARPReplies != 1 || s.ICMPReplies != 1 || s.RxFrames != 6 || s.TxFrames != 2 || s.Queues[1].RxFrames != 6 {
		t.Fatalf("stats %+v", s)
	}
	if len(s.Streams) != 1 || s.Streams[0].Received != 4 || s.Streams[0].Lost != 1 || s.Streams[0].MaxSeq != 4 {
		t.Fatalf("streams %+v", s.Streams)
	}
	if len(seen) != 6 || seen[0] != 1 {
		t.Fatalf("OnFrame saw queues %v", seen)
	}
	// The tx buffers come back on the next round.
	if _, err := g.pollQueuePair(qp); err != nil || len(qp.tx.free) != 64 {
		t.Fatalf("tx free %d err %v", len(qp.tx.free), err)
	}
}

func TestGuestBrokenDeviceIsAnError(t *testing.T) {
	g, d := socketless(t, Config{MAC: guestMAC, QueueSize: 16}, virtio.FVersion1)
	qp := d.qps[0]
	rx := newTestDev(&qp.rx.ring, d.mem)
	rx.used(99, 64)
	rx.publish()
	if _, err := g.pollQueuePair(qp); err == nil {
		t.Fatal("a used id out of range went unnoticed")
	}
}

func TestConfigValidation(t *testing.T) {
	for _, c := range []Config{
		{},
		{MAC: guestMAC, QueueSize: 100},
		{MAC: guestMAC, QueuePairs: -1},
		{MAC: guestMAC, MemRegions: 9},
		{MAC: guestMAC, IP: netipMust("::1")},
	} {
		if err := c.setDefaults(); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
}

func TestMemTableEncoding(t *testing.T) {
	mem := testMem(t, 2)
	regs, _ := mem.table()
	p := encodeMemTable(regs)
	if len(p) != 8+64 || binary.LittleEndian.Uint32(p) != 2 {
		t.Fatalf("payload %x", p[:8])
	}
	if binary.LittleEndian.Uint64(p[8+32:]) != regs[1].GuestPhysAddr || binary.LittleEndian.Uint64(p[8+32+16:]) != regs[1].UserspaceAddr {
		t.Fatalf("region 1 %x", p[40:72])
	}
}
