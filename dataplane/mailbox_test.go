package dataplane

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
)

func TestMailboxFIFOAndFull(t *testing.T) {
	m := newMailbox(4, 64)
	srcs := make([]mailSource, 5)
	for i := range 4 {
		if !m.put(&srcs[i], uint32(i), []byte{byte(i)}) {
			t.Fatalf("put %d refused", i)
		}
	}
	if m.put(&srcs[4], 9, []byte{9}) {
		t.Fatal("put into a full mailbox succeeded")
	}
	if m.put(&srcs[4], 9, make([]byte, 65)) {
		t.Fatal("oversized frame accepted")
	}
	if got := m.dropped.Load(); got != 2 {
		t.Fatalf("dropped = %d, want 2", got)
	}
	if m.drain(func(uint32, []byte) {}) != 0 {
		t.Fatal("unpublished frames were drained")
	}
	if !m.publish() || !m.pending() {
		t.Fatal("publish reported nothing")
	}
	var got []uint32
	m.drain(func(slot uint32, f []byte) {
		if f[0] != byte(slot) {
			t.Errorf("slot %d carried % x", slot, f)
		}
		got = append(got, slot)
	})
	if fmt.Sprint(got) != "[0 1 2 3]" {
		t.Fatalf("order %v", got)
	}
	if !m.put(&srcs[4], 5, []byte{5}) {
		t.Fatal("slots not released after drain")
	}
}

// One source holds at most as many slots as are free: alone, half the
// mailbox; the frames of another source still find room; the slots go
// back to their source once the consumer has taken them.
func TestMailboxShare(t *testing.T) {
	m := newMailbox(16, 64)
	var storm, other, third mailSource
	n := 0
	for m.put(&storm, 1, []byte{1}) {
		n++
	}
	if n != 8 || storm.held[0] != 8 {
		t.Fatalf("one source put %d frames (holds %v), want half of 16", n, storm.held)
	}
	// Another source gets in, up to what the first leaves free, and the
	// first may take no more while the other holds slots.
	k := 0
	for m.put(&other, 2, []byte{2}) {
		k++
	}
	if k != 4 || m.put(&storm, 1, []byte{1}) {
		t.Fatalf("a second source put %d frames (want 4), or the first got one more", k)
	}
	if !m.put(&third, 3, []byte{3}) {
		t.Fatal("a third source found no room")
	}
	if d := m.dropped.Load(); d != 3 {
		t.Errorf("dropped %d, want the 3 refusals", d)
	}
	m.publish()
	if got := m.drain(func(uint32, []byte) {}); got != 13 {
		t.Fatalf("drained %d, want 13", got)
	}
	// Released on the producer's next look: the storm gets its half back.
	n = 0
	for m.put(&storm, 1, []byte{1}) {
		n++
	}
	if n != 8 || other.held[0] != 0 || third.held[0] != 0 {
		t.Errorf("after the drain the first source put %d (want 8); the others hold %v, %v", n, other.held, third.held)
	}
}

// One producer and one consumer goroutine: every frame arrives once, in order.
func TestMailboxConcurrent(t *testing.T) {
	const total = 200000
	m := newMailbox(256, 16)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var src mailSource
		for i := 0; i < total; {
			buf := []byte(fmt.Sprintf("%08d", i))
			if m.put(&src, uint32(i), buf) {
				i++
			} else {
				m.publish()
			}
			if i%32 == 0 {
				m.publish()
			}
		}
		m.publish()
	}()
	next := 0
	for next < total {
		m.drain(func(slot uint32, f []byte) {
			if int(slot) != next || !bytes.Equal(f, []byte(fmt.Sprintf("%08d", next))) {
				t.Fatalf("got slot %d %q, want %d", slot, f, next)
			}
			next++
		})
	}
	wg.Wait()
}
