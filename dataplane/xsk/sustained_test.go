package xsk

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"
)

// TestSustainedEcho runs traffic for a bounded time through two VM
// sockets: a worker goroutine receives, copies each frame into a fresh
// UMEM frame and transmits it back (the guest-TX path), recycling frames
// by every route (fill ring, allocator, completion). The wire side keeps at
// most a window of frames in flight, so counts are exact: every frame
// comes back once, byte-exact, and afterwards every UMEM frame is
// accounted for.
func TestSustainedEcho(t *testing.T) {
	tb := newTestbed(t, 1)
	st := newSteering(t, tb, 2)
	u := newUMEM(t, UMEMConfig{NumFrames: 2048})
	q := openQueue(t, tb, u, 0, QueueConfig{FillSize: 512, CompSize: 1024, RxSize: 64, TxSize: 64})
	vms := []*Socket{
		newSocket(t, tb, q, SocketConfig{RxSize: 1024, TxSize: 512}),
		newSocket(t, tb, q, SocketConfig{RxSize: 1024, TxSize: 512}),
	}
	for i, s := range vms {
		st.setMAC(t, vmMAC(i), uint32(i+1))
		st.register(t, i+1, 0, s)
	}
	wire := openPacketSock(t, tb.wireNS, tb.wire.Index)

	var stop atomic.Bool
	type result struct {
		echoed, dropped int
		err             error
	}
	done := make(chan result, 1)
	ready := make(chan struct{})
	// Stop the worker before the queue closes, however the test ends.
	var final *result
	t.Cleanup(func() {
		stop.Store(true)
		if final == nil {
			<-done
		}
	})
	go func() {
		var r result
		descs := make([]Desc, 64)
		tx := make([]Desc, 64)
		addrs := make([]uint64, 64)
		comp := make([]uint64, 64)
		for batch := 0; ; batch++ {
			if stop.Load() {
				done <- r
				return
			}
			// Alternate the two ways of taking completions back.
			if batch%2 == 0 {
				q.Reap()
			} else if n := q.Complete(comp); n > 0 {
				q.Free(comp[:n])
			}
			q.Refill(0)
			if batch == 0 {
				close(ready) // the fill ring is stocked: traffic may start
			}
			idle := true
			for _, s := range vms {
				n := s.Receive(descs)
				if n == 0 {
					continue
				}
				idle = false
				k := q.Alloc(addrs[:n])
				for i := range k {
					src := q.Frame(descs[i])
					dst := q.Buffer(addrs[i])
					copy(dst, src)
					// Swap MACs: back to the wire.
					copy(dst[0:6], src[6:12])
					copy(dst[6:12], src[0:6])
					tx[i] = Desc{Addr: addrs[i], Len: descs[i].Len}
				}
				r.dropped += n - k
				sent := 0
				for sent < k {
					m, err := s.Transmit(tx[sent:k])
					if err != nil {
						r.err = err
						done <- r
						return
					}
					sent += m
					if m == 0 {
						q.Reap()
					}
				}
				r.echoed += k
				if batch%3 == 0 {
					q.FreeDescs(descs[:n])
				} else if used := q.FillDescs(descs[:n]); used < n {
					q.FreeDescs(descs[used:n])
				}
			}
			if idle {
				if _, err := q.Poll(time.Millisecond); err != nil {
					r.err = err
					done <- r
					return
				}
			}
		}
	}()

	<-ready
	const window, burst = 256, 32 // in flight at most 288 < fill ring 512
	buf := make([]byte, 2048)
	sent := map[uint64][]byte{}
	var seq uint64
	got := 0
	check := func(timeout time.Duration) bool {
		f, err := wire.recv(timeout)
		if err != nil {
			t.Fatal(err)
		}
		if f == nil {
			return false
		}
		p, ok := parseFrame(f)
		if !ok {
			return true // stack noise
		}
		want, ok := sent[p.Seq]
		if !ok {
			t.Fatalf("echo of seq %d: never sent or echoed twice", p.Seq)
		}
		if !bytes.Equal(f[12:], want[12:]) || !bytes.Equal(f[0:6], want[6:12]) || !bytes.Equal(f[6:12], want[0:6]) {
			t.Fatalf("echo of seq %d differs", p.Seq)
		}
		delete(sent, p.Seq)
		got++
		return true
	}
	end := time.Now().Add(2 * time.Second)
	for time.Now().Before(end) {
		for range burst {
			vm := int(seq % 2)
			f := buildFrame(buf, vmMAC(vm), tb.wire.MAC, uint16(3000+seq%7), 9, payload{Stream: uint32(vm), Seq: seq}, 64+int(seq%900))
			sent[seq] = append([]byte(nil), f...)
			if err := wire.send(f); err != nil {
				t.Fatal(err)
			}
			seq++
		}
		for len(sent) > window {
			if !check(10 * time.Second) {
				t.Fatalf("echoes stalled: %d outstanding", len(sent))
			}
		}
	}
	for len(sent) > 0 {
		if !check(10 * time.Second) {
			break
		}
	}
	stop.Store(true)
	r := <-done
	final = &r
	if r.err != nil {
		t.Fatalf("worker: %v", r.err)
	}
	t.Logf("sent %d frames, %d echoed", seq, got)
	if len(sent) != 0 || got != int(seq) || r.echoed != int(seq) || r.dropped != 0 {
		t.Fatalf("sent %d, echoes received %d, worker echoed %d dropped %d, missing %d", seq, got, r.echoed, r.dropped, len(sent))
	}
	if seq < 1000 {
		t.Errorf("only %d frames in 2s: too few to mean anything", seq)
	}

	// Quiesce: every tx frame completes, then every frame is accounted for.
	deadline := time.Now().Add(5 * time.Second)
	for q.Stats().InTx > 0 && time.Now().Before(deadline) {
		q.Reap()
		time.Sleep(time.Millisecond)
	}
	s := q.Stats()
	t.Logf("queue stats: %+v", s)
	if s.InTx != 0 || s.Held != 0 || s.InFill != s.FillRing || s.Free+s.FillRing != s.Total {
		t.Errorf("frames unaccounted for: %+v", s)
	}
	if s.DoubleFrees != 0 || s.BadAddrs != 0 || s.Rejected != 0 {
		t.Errorf("allocator refused frames: %+v", s)
	}
	if s.Received != seq || s.Completed != seq {
		t.Errorf("received %d completed %d, want %d each", s.Received, s.Completed, seq)
	}
	for i, v := range vms {
		ks, err := v.KernelStats()
		if err != nil {
			t.Fatal(err)
		}
		// TxRingEmpty counts kernel peeks that found the tx ring empty, a
		// normal end of every copy-mode send; the rest must be zero.
		ks.TxRingEmpty = 0
		if ks != (KernelStats{}) {
			t.Errorf("VM %d kernel stats %+v", i, ks)
		}
		t.Logf("VM %d: %+v", i, v.Stats())
	}
	// Closing a VM socket returns what its rx ring holds; none here.
	if err := vms[1].Close(); err != nil {
		t.Errorf("close VM socket: %v", err)
	}
	if len(q.Sockets()) != 2 {
		t.Errorf("queue has %d sockets after closing one of three", len(q.Sockets()))
	}
}
