package frontend

import (
	"encoding/binary"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
)

// packedUsed is a used descriptor as a device writes it in a packed ring.
func packedUsed(id uint16, l uint32, wrap bool) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint32(b[8:], l)
	binary.LittleEndian.PutUint16(b[12:], id)
	if wrap {
		binary.LittleEndian.PutUint16(b[14:], virtio.DescFAvail|virtio.DescFUsed)
	}
	return b
}

// FuzzPackedUsed: whatever a device writes into a packed ring (used
// descriptors with any id, length and flags, in-order batches or not),
// the rx and tx queues return frames or an error, never panic, and never
// hand out more than a frame's worth.
func FuzzPackedUsed(f *testing.F) {
	f.Add(false, false, append(packedUsed(0, 100, true), packedUsed(1, 60, true)...))
	f.Add(true, true, append(packedUsed(3, 12+64, true), packedUsed(7, 0, true)...))
	f.Add(false, true, packedUsed(15, 2048, true))
	f.Fuzz(func(t *testing.T, mrg, inOrder bool, ring []byte) {
		feat := uint64(virtio.FRingPacked | virtio.RingFEventIdx)
		if inOrder {
			feat |= virtio.FInOrder
		}
		bufLen := 2048
		if mrg {
			bufLen = 128
		}
		mem := testMem(t, 1)
		rx, err := newRxQueue(mem, 16, bufLen, mrg, feat)
		if err != nil {
			t.Fatal(err)
		}
		for i := range rx.bufs {
			binary.LittleEndian.PutUint16(rx.bufs[i][10:], uint16(1+i%3))
		}
		copy(rx.desc, ring)
		for range 3 {
			if _, _, _, err := rx.poll(64, func(fr []byte) {
				if len(fr) > maxMergedFrame {
					t.Fatalf("frame of %d bytes", len(fr))
				}
			}); err != nil {
				break
			}
		}
		tx, err := newTxQueue(mem, 16, 2048, feat)
		if err != nil {
			t.Fatal(err)
		}
		if sent, _, err := tx.post([][]byte{make([]byte, 60), make([]byte, 60), make([]byte, 60)}); err != nil || sent != 3 {
			t.Fatalf("post: %d %v", sent, err)
		}
		copy(tx.desc, ring)
		for range 3 {
			if _, err := tx.reclaim(); err != nil {
				break
			}
			if len(tx.free) > tx.n {
				t.Fatalf("%d free buffers of %d", len(tx.free), tx.n)
			}
		}
	})
}
