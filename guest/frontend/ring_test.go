package frontend

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/testenv"
)

func testMem(t testing.TB, regions int) *guestMemory {
	t.Helper()
	sizes := make([]int, regions)
	for i := range sizes {
		sizes[i] = 4 << 20
	}
	m, err := newGuestMemory(sizes, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.close)
	return m
}

func pattern(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + seed)
	}
	return b
}

func collect(t *testing.T, q *rxQueue, max int) [][]byte {
	t.Helper()
	var got [][]byte
	_, _, _, err := q.poll(max, func(f []byte) { got = append(got, append([]byte(nil), f...)) })
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	return got
}

func TestRxSingleBuffers(t *testing.T) {
	mem := testMem(t, 2)
	q, err := newRxQueue(mem, 16, 2048, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	dev := newTestDev(&q.ring, mem)
	if got := dev.availIdx(); got != 16 {
		t.Fatalf("avail idx after setup = %d, want 16 posted buffers", got)
	}
	// Several laps around the ring, in batches of varying size.
	seq := 0
	for lap := range 10 {
		var want [][]byte
		for k := range 1 + lap%7 {
			f := pattern(60+k*200, seq)
			seq++
			if err := dev.deliver(f, false); err != nil {
				t.Fatal(err)
			}
			want = append(want, f)
		}
		if got := collect(t, q, 64); len(got) != 0 {
			t.Fatalf("poll saw %d frames before the device published", len(got))
		}
		dev.publish()
		got := collect(t, q, 64)
		if len(got) != len(want) {
			t.Fatalf("lap %d: got %d frames, want %d", lap, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("lap %d frame %d differs", lap, i)
			}
		}
		if avail := dev.availIdx(); avail != dev.lastAvail+16 {
			t.Fatalf("lap %d: %d buffers posted, want all 16 back", lap, avail-dev.lastAvail)
		}
	}
}

func TestRxBatchLimit(t *testing.T) {
	mem := testMem(t, 1)
	q, _ := newRxQueue(mem, 16, 2048, false, 0)
	dev := newTestDev(&q.ring, mem)
	for i := range 10 {
		dev.deliver(pattern(64, i), false)
	}
	dev.publish()
	if got := collect(t, q, 4); len(got) != 4 {
		t.Fatalf("first poll: %d frames, want 4", len(got))
	}
	if got := collect(t, q, 64); len(got) != 6 || !bytes.Equal(got[0], pattern(64, 4)) {
		t.Fatalf("second poll: %d frames, want the remaining 6 in order", len(got))
	}
}

func TestRxMergeable(t *testing.T) {
	mem := testMem(t, 3)
	const bufLen = 128
	q, err := newRxQueue(mem, 64, bufLen, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	dev := newTestDev(&q.ring, mem)
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		var want [][]byte
		used := 0
		for {
			f := pattern(1+rng.IntN(1500), round)
			need := (len(f) + virtio.NetHdrLen + bufLen - 1) / bufLen
			if used+need > 64 {
				break
			}
			used += need
			if err := dev.deliver(f, true); err != nil {
				t.Fatal(err)
			}
			want = append(want, f)
		}
		dev.publish()
		got := collect(t, q, 1000)
		if len(got) != len(want) {
			t.Fatalf("round %d: got %d frames, want %d", round, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("round %d frame %d (%d bytes) differs", round, i, len(want[i]))
			}
		}
	}
}

// A merged frame whose later buffers are not yet published waits.
func TestRxMergeablePartial(t *testing.T) {
	mem := testMem(t, 1)
	q, _ := newRxQueue(mem, 16, 128, true, 0)
	dev := newTestDev(&q.ring, mem)
	f := pattern(500, 3) // 4 buffers
	if err := dev.deliver(f, true); err != nil {
		t.Fatal(err)
	}
	full := dev.usedIdx
	dev.usedIdx = 2
	dev.publish()
	if got := collect(t, q, 64); len(got) != 0 {
		t.Fatalf("poll returned %d frames from half a merged frame", len(got))
	}
	dev.usedIdx = full
	dev.publish()
	got := collect(t, q, 64)
	if len(got) != 1 || !bytes.Equal(got[0], f) {
		t.Fatalf("got %d frames, want the merged frame", len(got))
	}
}

func TestRxBrokenDevice(t *testing.T) {
	cases := []struct {
		name string
		mrg  bool
		id   uint32
		l    uint32
		nbuf uint16
	}{
		{"id out of range", false, 16, 100, 1},
		{"huge id", false, 0xffffffff, 100, 1},
		{"len beyond buffer", false, 0, 2049, 1},
		{"len shorter than header", false, 0, 3, 1},
		{"num_buffers zero", true, 0, 100, 0},
		{"num_buffers beyond ring", true, 0, 100, 17},
		{"id used twice", false, 0, 100, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mem := testMem(t, 1)
			q, _ := newRxQueue(mem, 16, 2048, c.mrg, 0)
			dev := newTestDev(&q.ring, mem)
			binary16(q.bufs[0][10:], c.nbuf)
			dev.used(c.id, c.l)
			if c.name == "id used twice" {
				dev.used(c.id, c.l)
			}
			dev.publish()
			_, _, _, err := q.poll(64, func([]byte) {})
			if !errors.Is(err, ErrDeviceBroken) {
				t.Fatalf("poll error %v, want ErrDeviceBroken", err)
			}
		})
	}
}

func binary16(b []byte, v uint16) { b[0], b[1] = byte(v), byte(v>>8) }

func TestTxPostReclaim(t *testing.T) {
	mem := testMem(t, 2)
	q, err := newTxQueue(mem, 8, 2048, 0)
	if err != nil {
		t.Fatal(err)
	}
	dev := newTestDev(&q.ring, mem)
	var frames [][]byte
	for i := range 10 {
		frames = append(frames, pattern(60+i*100, i))
	}
	sent, bytes_, err := q.post(frames)
	if err != nil || sent != 8 {
		t.Fatalf("post: sent %d err %v, want 8 (ring size)", sent, err)
	}
	if bytes_ != sumLen(frames[:8]) {
		t.Fatalf("bytes %d", bytes_)
	}
	if n, _, _ := q.post(frames[8:]); n != 0 {
		t.Fatalf("posted %d on a full ring", n)
	}
	got, err := dev.take()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		if !bytes.Equal(got[i], frames[i]) {
			t.Fatalf("frame %d differs", i)
		}
	}
	if sent, _, err := q.post(frames[8:]); sent != 2 || err != nil {
		t.Fatalf("after device used all: sent %d err %v, want 2", sent, err)
	}
	got, _ = dev.take()
	if len(got) != 2 || !bytes.Equal(got[1], frames[9]) {
		t.Fatalf("device saw %d frames", len(got))
	}
	// The post above reclaimed the first 8 itself; 2 remain to reclaim.
	if n, err := q.reclaim(); n != 2 || err != nil || len(q.free) != 8 {
		t.Fatalf("reclaim %d err %v free %d", n, err, len(q.free))
	}
	if _, _, err := q.post([][]byte{make([]byte, 2048)}); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized frame: %v", err)
	}
}

func sumLen(fs [][]byte) int {
	n := 0
	for _, f := range fs {
		n += len(f)
	}
	return n
}

func TestTxBrokenDevice(t *testing.T) {
	mem := testMem(t, 1)
	q, _ := newTxQueue(mem, 8, 2048, 0)
	dev := newTestDev(&q.ring, mem)
	q.post([][]byte{pattern(64, 1)})
	dev.used(5, 0) // never posted
	dev.publish()
	if _, err := q.reclaim(); !errors.Is(err, ErrDeviceBroken) {
		t.Fatalf("reclaim: %v, want ErrDeviceBroken", err)
	}
}

// Kicks follow used.flags NO_NOTIFY, or avail_event with EVENT_IDX.
func TestKickSuppression(t *testing.T) {
	mem := testMem(t, 1)
	q, _ := newTxQueue(mem, 64, 2048, 0)
	dev := newTestDev(&q.ring, mem)
	f := [][]byte{pattern(64, 0)}
	q.post(f)
	if q.kicks != 1 {
		t.Fatalf("kicks %d, want 1 without NO_NOTIFY", q.kicks)
	}
	dev.setUsedFlags(virtio.UsedFNoNotify)
	q.post(f)
	q.post(f)
	if q.kicks != 1 {
		t.Fatalf("kicks %d, want none while NO_NOTIFY", q.kicks)
	}

	mem2 := testMem(t, 1)
	e, _ := newTxQueue(mem2, 64, 2048, virtio.RingFEventIdx)
	dev2 := newTestDev(&e.ring, mem2)
	dev2.setUsedFlags(virtio.UsedFNoNotify) // ignored with EVENT_IDX
	dev2.setAvailEvent(2)                   // wake me when avail idx passes 2
	for i := range 6 {
		e.post(f)
		want := uint64(0)
		if i >= 2 { // the post that moved idx from 2 to 3
			want = 1
		}
		if e.kicks != want {
			t.Fatalf("after %d posts: kicks %d, want %d", i+1, e.kicks, want)
		}
	}
	dev2.setAvailEvent(6)
	e.post([][]byte{f[0], f[0], f[0]}) // idx 6 -> 9 crosses 6
	if e.kicks != 2 {
		t.Fatalf("batch crossing avail_event: kicks %d, want 2", e.kicks)
	}
}

func TestInterruptControl(t *testing.T) {
	mem := testMem(t, 1)
	q, _ := newRxQueue(mem, 16, 2048, false, 0)
	q.disableInterrupts()
	if load32(q.avail, 0)&virtio.AvailFNoInterrupt == 0 {
		t.Fatal("NO_INTERRUPT not set")
	}
	if got := uint16(load32(q.avail, 0) >> 16); got != 16 {
		t.Fatalf("avail idx clobbered: %d", got)
	}
	q.enableInterrupts()
	if load32(q.avail, 0)&virtio.AvailFNoInterrupt != 0 {
		t.Fatal("NO_INTERRUPT still set")
	}
	e, _ := newRxQueue(mem, 16, 2048, false, virtio.RingFEventIdx)
	e.lastUsed = 7
	e.enableInterrupts()
	if got := uint16(load32(e.avail, 4+2*16)); got != 7 {
		t.Fatalf("used_event %d, want 7", got)
	}
}

func TestGuestMemoryBounds(t *testing.T) {
	mem := testMem(t, 2)
	r := mem.regions[1]
	if _, err := mem.translate(r.gpa+uint64(len(r.mem))-4, 8); err == nil {
		t.Fatal("translate across a region's end succeeded")
	}
	if _, err := mem.translate(r.gpa-1, 1); err == nil {
		t.Fatal("translate below a region succeeded")
	}
	if _, _, err := mem.alloc(0, 8<<20, 64); err == nil {
		t.Fatal("alloc beyond region succeeded")
	}
	regs, fds := mem.table()
	if len(regs) != 2 || len(fds) != 2 || regs[1].GuestPhysAddr != r.gpa || regs[1].UserspaceAddr != userAddr(r.mem) {
		t.Fatalf("table %+v", regs)
	}
	if _, err := newGuestMemory(make([]int, 9), false); err == nil {
		t.Fatal("9 regions accepted")
	}
}

// HugePages puts each region on a hugetlbfs memfd, rounded up to whole
// 2 MiB pages: what a backend maps is then backed by huge pages.
func TestGuestMemoryHugePages(t *testing.T) {
	testenv.RequireHugePages(t, 2)
	mem, err := newGuestMemory([]int{1 << 20, hugePageSize + 1}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.close()
	for i, want := range []int{hugePageSize, 2 * hugePageSize} {
		r := mem.regions[i]
		if len(r.mem) != want {
			t.Errorf("region %d: %d bytes, want %d", i, len(r.mem), want)
		}
		var st unix.Statfs_t
		if err := unix.Fstatfs(r.fd, &st); err != nil {
			t.Fatal(err)
		}
		if st.Type != unix.HUGETLBFS_MAGIC {
			t.Errorf("region %d: file system %#x, want hugetlbfs", i, st.Type)
		}
	}
}
