package vhostuser

import (
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/testenv"
)

// Each case builds a hostile ring and expects the queue to refuse it
// with ErrBroken (and stay broken), never panicking or touching memory
// outside the guest's region.
func TestHostileGuest(t *testing.T) {
	const num = 8
	hdr := uint32(virtio.NetHdrLen)
	cases := []struct {
		name  string
		rx    bool
		feat  uint64
		build func(g *testGuest)
		want  string // in the error
	}{
		{name: "loop", build: func(g *testGuest) {
			tbl := g.mem[g.descOff:]
			a := g.alloc(64)
			g.writeDesc(tbl, 0, tdesc{addr: a, len: 64, flags: virtio.DescFNext, next: 1})
			g.writeDesc(tbl, 1, tdesc{addr: a, len: 64, flags: virtio.DescFNext, next: 0})
			g.publish(0)
		}, want: "loop"},
		{name: "self_loop", build: func(g *testGuest) {
			g.writeDesc(g.mem[g.descOff:], 3, tdesc{addr: g.alloc(64), len: 64, flags: virtio.DescFNext, next: 3})
			g.publish(3)
		}, want: "loop"},
		{name: "head_beyond_ring", build: func(g *testGuest) { g.publish(num) }, want: "beyond ring size"},
		{name: "next_beyond_ring", build: func(g *testGuest) {
			g.writeDesc(g.mem[g.descOff:], 0, tdesc{addr: g.alloc(64), len: 64, flags: virtio.DescFNext, next: 200})
			g.publish(0)
		}, want: "beyond table size"},
		{name: "addr_out_of_range", build: func(g *testGuest) {
			g.post(tdesc{addr: 0x1000, len: 64})
		}, want: "outside guest memory"},
		{name: "addr_past_end", build: func(g *testGuest) {
			g.post(tdesc{addr: g.base + uint64(len(g.mem)) - 20, len: 64})
		}, want: "outside guest memory"},
		{name: "addr_overflow", build: func(g *testGuest) {
			g.post(tdesc{addr: g.alloc(16), len: hdr}, tdesc{addr: ^uint64(0) - 8, len: 0xffffffff})
		}, want: "outside guest memory"},
		{name: "length_overflows_region", build: func(g *testGuest) {
			g.post(tdesc{addr: g.alloc(16), len: hdr}, tdesc{addr: g.alloc(16), len: 0xfffffff0})
		}, want: "outside guest memory"},
		{name: "tx_writable", build: func(g *testGuest) {
			g.post(tdesc{addr: g.alloc(64), len: 64, flags: virtio.DescFWrite})
		}, want: "device-writable"},
		{name: "rx_readonly", rx: true, build: func(g *testGuest) {
			g.post(tdesc{addr: g.alloc(2048), len: 2048})
		}, want: "not device-writable"},
		{name: "rx_out_of_range", rx: true, build: func(g *testGuest) {
			g.post(tdesc{addr: 0x10, len: 2048, flags: virtio.DescFWrite})
		}, want: "outside guest memory"},
		{name: "nested_indirect", build: func(g *testGuest) {
			tbl := g.alloc(32)
			g.writeDesc(g.at(tbl, 32), 0, tdesc{addr: tbl, len: 32, flags: virtio.DescFIndirect})
			g.post(tdesc{addr: tbl, len: 32, flags: virtio.DescFIndirect})
		}, want: "nested"},
		{name: "indirect_bad_len", build: func(g *testGuest) {
			g.post(tdesc{addr: g.alloc(32), len: 17, flags: virtio.DescFIndirect})
		}, want: "indirect table of 17 bytes"},
		{name: "indirect_zero_len", build: func(g *testGuest) {
			g.post(tdesc{addr: g.alloc(32), len: 0, flags: virtio.DescFIndirect})
		}, want: "indirect table of 0 bytes"},
		{name: "indirect_out_of_range", build: func(g *testGuest) {
			g.post(tdesc{addr: g.base + uint64(len(g.mem)) - 16, len: 64, flags: virtio.DescFIndirect})
		}, want: "indirect table"},
		{name: "indirect_with_next", build: func(g *testGuest) {
			g.post(tdesc{addr: g.alloc(32), len: 32, flags: virtio.DescFIndirect | virtio.DescFNext, next: 1})
		}, want: "NEXT"},
		{name: "indirect_not_negotiated", feat: virtio.FVersion1, build: func(g *testGuest) {
			g.post(tdesc{addr: g.alloc(32), len: 32, flags: virtio.DescFIndirect})
		}, want: "without INDIRECT_DESC"},
		{name: "indirect_loop", build: func(g *testGuest) {
			tbl := g.alloc(32)
			a := g.alloc(64)
			g.writeDesc(g.at(tbl, 32), 0, tdesc{addr: a, len: 64, flags: virtio.DescFNext, next: 1})
			g.writeDesc(g.at(tbl, 32), 1, tdesc{addr: a, len: 64, flags: virtio.DescFNext, next: 0})
			g.post(tdesc{addr: tbl, len: 32, flags: virtio.DescFIndirect})
		}, want: "loop"},
		{name: "avail_idx_jump", build: func(g *testGuest) {
			binary.LittleEndian.PutUint16(g.mem[g.availOff+2:], num+1)
		}, want: "jumped"},
		{name: "avail_idx_jump_rx", rx: true, build: func(g *testGuest) {
			binary.LittleEndian.PutUint16(g.mem[g.availOff+2:], 0x8000)
		}, want: "jumped"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			feat := tc.feat
			if feat == 0 {
				feat = testFeatures
			}
			g := newTestGuest(t, num, feat, tc.rx)
			tc.build(g)
			var err error
			if tc.rx {
				err = g.q.Push(frameOf(1000, 1))
			} else {
				_, err = g.q.Pop(make([]byte, 2048))
			}
			if !errors.Is(err, ErrBroken) {
				t.Fatalf("got %v, want ErrBroken", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			// Broken stays broken.
			if tc.rx {
				err = g.q.Push(frameOf(10, 1))
			} else {
				_, err = g.q.Pop(make([]byte, 2048))
			}
			if !errors.Is(err, ErrBroken) {
				t.Fatalf("second call: %v, want ErrBroken", err)
			}
		})
	}
}

// TestHostileRingLayout: ring addresses outside memory or misaligned are
// refused before any worker sees the queue.
func TestHostileRingLayout(t *testing.T) {
	mem := make([]byte, 1<<16)
	mt := &memTable{regions: []memRegion{{gpa: testBase, size: uint64(len(mem)), uva: testBase, data: mem}}}
	q := &Queue{}
	for _, tc := range []struct {
		name              string
		num               uint32
		desc, avail, used uint64
	}{
		{"desc_outside", 256, 0x10, testBase + 0x1000, testBase + 0x2000},
		{"used_past_end", 256, testBase, testBase + 0x1000, testBase + uint64(len(mem)) - 100},
		{"misaligned_used", 256, testBase, testBase + 0x1000, testBase + 0x2002},
		{"misaligned_desc", 256, testBase + 8, testBase + 0x1000, testBase + 0x2000},
		{"not_pow2", 100, testBase, testBase + 0x1000, testBase + 0x2000},
		{"zero", 0, testBase, testBase + 0x1000, testBase + 0x2000},
		{"huge", 65536, testBase, testBase + 0x1000, testBase + 0x2000},
	} {
		if err := q.ringLayout(mt, testFeatures, tc.num, tc.desc, tc.avail, tc.used); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

func TestCheckRegions(t *testing.T) {
	for _, tc := range []struct {
		name string
		rs   []MemRegion
		ok   bool
	}{
		{"one", []MemRegion{{GuestPhysAddr: 0, MemorySize: 4096, UserspaceAddr: 0x10000}}, true},
		{"two", []MemRegion{{0, 4096, 0x10000, 0}, {4096, 4096, 0x20000, 0}}, true},
		{"gpa_overlap", []MemRegion{{0, 8192, 0x10000, 0}, {4096, 4096, 0x20000, 0}}, false},
		{"uva_overlap", []MemRegion{{0, 4096, 0x10000, 0}, {8192, 4096, 0x10800, 0}}, false},
		{"zero_size", []MemRegion{{0, 0, 0x10000, 0}}, false},
		{"gpa_overflow", []MemRegion{{^uint64(0) - 10, 4096, 0x10000, 0}}, false},
		{"offset_overflow", []MemRegion{{0, 4096, 0x10000, ^uint64(0) - 10}}, false},
	} {
		if err := checkRegions(tc.rs); (err == nil) != tc.ok {
			t.Errorf("%s: err=%v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestMapWindow: a region or log maps its own window of the file (and a
// page before it), not the file from 0: its bytes are the file's at the
// offset, unaligned offsets included, and a window 1 TiB into a sparse
// file costs a few pages of address space.
func TestMapWindow(t *testing.T) {
	fd, err := unix.MemfdCreate("vmq-test-window", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	const far = 1 << 40
	if err := unix.Ftruncate(fd, far+3*4096); err != nil {
		t.Fatal(err)
	}
	mark := []byte("the window's first bytes")
	for _, off := range []uint64{0, 16, 4096 + 24, 3*4096 - 8, far + 4096 + 8} {
		if _, err := unix.Pwrite(fd, mark, int64(off)); err != nil {
			t.Fatal(err)
		}
		m, data, err := mapWindow(fd, off, 100, 4096)
		if err != nil {
			t.Fatalf("offset %#x: %v", off, err)
		}
		if len(data) != 100 || string(data[:len(mark)]) != string(mark) {
			t.Errorf("offset %#x: window %q", off, data[:len(mark)])
		}
		if len(m) > 3*4096 {
			t.Errorf("offset %#x: mapped %d bytes for a 100-byte window", off, len(m))
		}
		unix.Munmap(m)
	}
}

// TestMapNotSharedMemory: guest memory or a log in a file on a disk
// filesystem (FUSE and NFS alike) is refused: its page faults can wait on
// another process, and a worker shared with other VMs touches it.
func TestMapNotSharedMemory(t *testing.T) {
	var f *os.File
	var fs unix.Statfs_t
	// The temporary directory, or this package's if that is shared memory.
	for _, dir := range []string{t.TempDir(), "."} {
		var err error
		if f, err = os.CreateTemp(dir, ".vmq-test-ram-*"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close(); os.Remove(f.Name()) })
		if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
			t.Fatal(err)
		}
		if fs.Type != unix.TMPFS_MAGIC && fs.Type != unix.RAMFS_MAGIC {
			break
		}
	}
	if fs.Type == unix.TMPFS_MAGIC || fs.Type == unix.RAMFS_MAGIC {
		testenv.Skip(t, "no directory off shared memory for the test file")
	}
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := mapRegions([]MemRegion{{GuestPhysAddr: 0, MemorySize: 1 << 20, UserspaceAddr: 0x10000}}, []int{int(f.Fd())}); err == nil || !strings.Contains(err.Error(), "shared memory") {
		t.Errorf("memory in a file on %#x: %v, want refused", fs.Type, err)
	}
	if _, err := mapLog(int(f.Fd()), 4096, 0); err == nil || !strings.Contains(err.Error(), "shared memory") {
		t.Errorf("log in a file on %#x: %v, want refused", fs.Type, err)
	}
}
