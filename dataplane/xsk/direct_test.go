package xsk

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
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
