package xsk

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
)

// TestOpenDirectRefusesMemory: memory that cannot be a UMEM is refused
// before any socket exists, with ErrMemory.
func TestOpenDirectRefusesMemory(t *testing.T) {
	mem, err := unix.Mmap(-1, 0, 3*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	for name, c := range map[string]DirectConfig{
		"not page-aligned":     {Ifindex: 1, Mem: mem[64:], ChunkSize: 2048},
		"smaller than a chunk": {Ifindex: 1, Mem: mem[:1024], ChunkSize: 2048},
	} {
		if _, err := OpenDirect(c); !errors.Is(err, ErrMemory) {
			t.Errorf("%s: %v, want ErrMemory", name, err)
		}
	}
	if _, err := OpenDirect(DirectConfig{Ifindex: 1, Mem: mem, ChunkSize: 1024}); err == nil {
		t.Error("1024-byte chunks accepted")
	}
	if _, err := OpenDirect(DirectConfig{Ifindex: 1, Mem: mem, ChunkSize: 2048, Headroom: 1800}); err == nil {
		t.Error("a headroom that leaves no frame accepted")
	}
}

func TestDirectAddr(t *testing.T) {
	fill, off := DirectAddr(0x1234 | 530<<48)
	if fill != 0x1234 || off != 530 {
		t.Fatalf("DirectAddr: %#x %d", fill, off)
	}
}

// TestWaitReleased: while a socket holds a queue the probe gets EBUSY;
// after close the queue is free again within the kernel's deferred
// release.
func TestWaitReleased(t *testing.T) {
	testenv.RequireRoot(t)
	ns, other := netnstest.New(t), netnstest.New(t)
	a, _ := netnstest.NewVethPair(t, ns, other, netnstest.VethOptions{Queues: 2})
	err := ns.Do(func() error {
		mem, err := unix.Mmap(-1, 0, 64*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
		if err != nil {
			return err
		}
		defer unix.Munmap(mem)
		d, err := OpenDirect(DirectConfig{Ifindex: a.Index, QueueID: 1, Mem: mem, ChunkSize: 2048, Mode: ModeCopy})
		if err != nil {
			return err
		}
		if err := WaitReleased(a.Index, 1, 20*time.Millisecond); !errors.Is(err, unix.EBUSY) {
			t.Errorf("queue held: %v, want EBUSY", err)
		}
		if d.ZeroCopy() || d.MaxFrame() != 2048-256 || d.FrameOffset() != 256 {
			t.Errorf("zero-copy %v max frame %d offset %d", d.ZeroCopy(), d.MaxFrame(), d.FrameOffset())
		}
		if err := d.Close(); err != nil {
			return err
		}
		if _, err := d.KernelStats(); err == nil {
			t.Error("stats of a closed socket")
		}
		return WaitReleased(a.Index, 1, 2*time.Second)
	})
	if err != nil {
		t.Fatal(err)
	}
}
