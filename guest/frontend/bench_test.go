package frontend

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/pktgen"
)

// deliverN refills the used ring with n single-buffer frames without
// allocating (the device side of the benchmarks).
func (d *testDev) deliverN(n int, frame []byte) {
	for range n {
		id, buf, _, _ := d.pop()
		clear(buf[:virtio.NetHdrLen])
		buf[10] = 1
		copy(buf[virtio.NetHdrLen:], frame)
		d.used(uint32(id), uint32(virtio.NetHdrLen+len(frame)))
	}
	d.publish()
}

// consumeAll uses every available tx descriptor without copying.
func (d *testDev) consumeAll() {
	for d.lastAvail != d.availIdx() {
		id, _, _, _ := d.pop()
		d.used(uint32(id), 0)
	}
	d.publish()
}

// BenchmarkGuestRx: the rx path per frame (used ring, OnFrame-free guest
// handling, pktgen stream accounting), device side included.
func BenchmarkGuestRx(b *testing.B) {
	for _, mrg := range []bool{false, true} {
		name := "mrg=off"
		if mrg {
			name = "mrg=on"
		}
		b.Run(name, func(b *testing.B) {
			feat := uint64(virtio.FVersion1)
			if mrg {
				feat |= virtio.NetFMrgRxbuf
			}
			g, err := newGuest("bench", Config{MAC: guestMAC, IP: guestIP, QueueSize: 256})
			if err != nil {
				b.Fatal(err)
			}
			d := &device{features: feat, hupFD: -1}
			if err := g.buildQueues(d); err != nil {
				b.Fatal(err)
			}
			defer d.release()
			qp := d.qps[0]
			dev := newTestDev(&qp.rx.ring, d.mem)
			frame, err := BuildUDP(UDPTemplate{Dst: guestMAC, Src: net.HardwareAddr{2, 0, 0, 0, 0, 1}, SrcIP: guestIP, DstIP: guestIP, Size: MinUDPFrame})
			if err != nil {
				b.Fatal(err)
			}
			pktgen.Payload{Stream: 1, TimestampNS: pktgen.MonotonicNS()}.Put(frame[PayloadOffset:])
			b.SetBytes(MinUDPFrame)
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(rxBatch, b.N-done)
				dev.deliverN(n, frame)
				got, err := g.pollQueuePair(qp)
				if err != nil || got != n {
					b.Fatalf("polled %d of %d: %v", got, n, err)
				}
				done += n
			}
		})
	}
}

// BenchmarkGuestTx: SendBatch of 32 frames per call, device side included.
func BenchmarkGuestTx(b *testing.B) {
	g, err := newGuest("bench", Config{MAC: guestMAC, QueueSize: 256})
	if err != nil {
		b.Fatal(err)
	}
	d := &device{features: virtio.FVersion1, hupFD: -1}
	if err := g.buildQueues(d); err != nil {
		b.Fatal(err)
	}
	defer d.release()
	g.dev.Store(d)
	dev := newTestDev(&d.qps[0].tx.ring, d.mem)
	frame, err := BuildUDP(UDPTemplate{Dst: guestMAC, Src: guestMAC, SrcIP: guestIP, DstIP: guestIP, Size: MinUDPFrame})
	if err != nil {
		b.Fatal(err)
	}
	batch := make([][]byte, 32)
	for i := range batch {
		batch[i] = frame
	}
	b.SetBytes(MinUDPFrame)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(len(batch), b.N-done)
		sent, err := g.SendBatch(0, batch[:n])
		if err != nil || sent != n {
			b.Fatalf("sent %d of %d: %v", sent, n, err)
		}
		dev.consumeAll()
		done += n
	}
}

// BenchmarkDPDKRx: frames per second the guest takes from testpmd txonly
// through DPDK's vhost backend (testpmd and the guest share 2 cores).
func BenchmarkDPDKRx(b *testing.B) {
	for _, c := range []interopCase{{queues: 1}, {queues: 1, mrg: true}, {queues: 2, mrg: true}} {
		b.Run(c.String(), func(b *testing.B) {
			g, p := startGuest(b, c, Config{QueueSize: 1024}, "txonly")
			start := g.Stats().RxFrames
			t0 := time.Now()
			for g.Stats().RxFrames-start < uint64(b.N) {
				time.Sleep(time.Millisecond)
			}
			el := time.Since(t0)
			b.ReportMetric(float64(b.N)/el.Seconds()/1e6, "Mpps")
			b.ReportMetric(0, "ns/op")
			p.kill()
		})
	}
}

// BenchmarkDPDKTx: frames per second the guest sends into testpmd rxonly.
func BenchmarkDPDKTx(b *testing.B) {
	for _, c := range []interopCase{{queues: 1}, {queues: 2}} {
		b.Run(c.String(), func(b *testing.B) {
			g, p := startGuest(b, c, Config{QueueSize: 1024}, "rxonly")
			t0 := time.Now()
			per := uint64(b.N/c.queues) + 1
			errs := make(chan error, c.queues)
			for q := range c.queues {
				go func() {
					_, err := g.Generate(context.Background(), Traffic{Dst: testMAC, Count: per, Queue: q, Stream: uint32(q), Batch: 64})
					errs <- err
				}()
			}
			for range c.queues {
				if err := <-errs; err != nil {
					b.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := g.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			el := time.Since(t0)
			b.ReportMetric(float64(per*uint64(c.queues))/el.Seconds()/1e6, "Mpps")
			b.ReportMetric(0, "ns/op")
			p.kill()
		})
	}
}
