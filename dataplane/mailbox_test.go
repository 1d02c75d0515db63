package dataplane

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
)

func TestMailboxFIFOAndFull(t *testing.T) {
	m := newMailbox(4, 64)
	for i := range 4 {
		if !m.put(uint32(i), []byte{byte(i)}) {
			t.Fatalf("put %d refused", i)
		}
	}
	if m.put(9, []byte{9}) {
		t.Fatal("put into a full mailbox succeeded")
	}
	if m.put(9, make([]byte, 65)) {
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
	if !m.put(5, []byte{5}) {
		t.Fatal("slots not released after drain")
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
		for i := 0; i < total; {
			buf := []byte(fmt.Sprintf("%08d", i))
			if m.put(uint32(i), buf) {
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
