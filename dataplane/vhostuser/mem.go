package vhostuser

import (
	"errors"
	"fmt"
	"math"

	"golang.org/x/sys/unix"
)

// memRegion is one mapped region of the front-end's memory.
type memRegion struct {
	gpa, size, uva uint64
	data           []byte // the region itself: mapping[mmapOffset:][:size]
	mapping        []byte // what was mmapped; nil for memory not owned (tests)
}

// memTable translates guest physical addresses (descriptors) and
// front-end virtual addresses (ring addresses) into slices of the mapped
// regions. It is immutable once built: a new SET_MEM_TABLE builds a new
// one after every queue using the old one has stopped.
type memTable struct {
	regions []memRegion
}

var errAddr = errors.New("address outside guest memory")

// checkRegions rejects empty, overflowing or overlapping regions (in both
// address spaces): each guest address must translate one way only.
func checkRegions(rs []MemRegion) error {
	for i, r := range rs {
		if r.MemorySize == 0 {
			return fmt.Errorf("region %d: size 0", i)
		}
		if r.GuestPhysAddr > math.MaxUint64-r.MemorySize || r.UserspaceAddr > math.MaxUint64-r.MemorySize ||
			r.MmapOffset > math.MaxUint64-r.MemorySize {
			return fmt.Errorf("region %d: gpa %#x uva %#x offset %#x + size %#x overflows", i, r.GuestPhysAddr, r.UserspaceAddr, r.MmapOffset, r.MemorySize)
		}
		if r.MemorySize > math.MaxInt/2 || r.MmapOffset > math.MaxInt/2 {
			return fmt.Errorf("region %d: size %#x or offset %#x too large", i, r.MemorySize, r.MmapOffset)
		}
		for j := 0; j < i; j++ {
			o := rs[j]
			if overlap(r.GuestPhysAddr, r.MemorySize, o.GuestPhysAddr, o.MemorySize) {
				return fmt.Errorf("region %d overlaps region %d in guest physical addresses", i, j)
			}
			if overlap(r.UserspaceAddr, r.MemorySize, o.UserspaceAddr, o.MemorySize) {
				return fmt.Errorf("region %d overlaps region %d in front-end addresses", i, j)
			}
		}
	}
	return nil
}

func overlap(a, alen, b, blen uint64) bool { return a < b+blen && b < a+alen }

// mapRegions mmaps each region's fd (MAP_SHARED, only the region's
// window of the file: see mapWindow). The fds are not closed here.
func mapRegions(rs []MemRegion, fds []int) (*memTable, error) {
	if len(rs) != len(fds) {
		return nil, fmt.Errorf("memory table: %d regions but %d fds", len(rs), len(fds))
	}
	if err := checkRegions(rs); err != nil {
		return nil, fmt.Errorf("memory table: %w", err)
	}
	t := &memTable{regions: make([]memRegion, 0, len(rs))}
	for i, r := range rs {
		var st unix.Stat_t
		if err := unix.Fstat(fds[i], &st); err != nil {
			t.unmap()
			return nil, fmt.Errorf("memory region %d: fstat: %w", i, err)
		}
		need := r.MmapOffset + r.MemorySize
		// Touching a mapping past the end of its file is SIGBUS, not an
		// error: refuse regions the file does not back.
		if st.Size < 0 || uint64(st.Size) < need {
			t.unmap()
			return nil, fmt.Errorf("memory region %d: offset %#x + size %#x beyond file size %#x", i, r.MmapOffset, r.MemorySize, st.Size)
		}
		m, data, err := mapWindow(fds[i], r.MmapOffset, r.MemorySize, uint64(st.Blksize))
		if err != nil {
			t.unmap()
			return nil, fmt.Errorf("memory region %d: %w", i, err)
		}
		t.regions = append(t.regions, memRegion{
			gpa: r.GuestPhysAddr, size: r.MemorySize, uva: r.UserspaceAddr,
			data: data, mapping: m,
		})
	}
	return t, nil
}

// checkSharedMemory refuses a file that is not shared memory (memfd,
// tmpfs, hugetlbfs, ramfs): a page fault in a file on FUSE or NFS waits
// for another process or a server, and vmq touches guest memory on a
// worker thread that serves other VMs too (a guest's FUSE server that
// never answers a read would stall them all, as a blocking eventfd would).
func checkSharedMemory(fd int) error {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return fmt.Errorf("fstatfs: %w", err)
	}
	switch fs.Type {
	case unix.TMPFS_MAGIC, unix.HUGETLBFS_MAGIC, unix.RAMFS_MAGIC:
		return nil
	}
	return fmt.Errorf("file on a filesystem of type %#x: guest memory must be shared memory (memfd, tmpfs, hugetlbfs)", fs.Type)
}

// mapWindow mmaps (MAP_SHARED) the size bytes of fd at offset: the
// mapping starts at offset rounded down to the page (blksize when it is
// a power of 2 above it: hugetlbfs needs huge-page multiples), one page
// earlier if the file has it, so data, the window itself, needs no
// alignment, and a huge offset into a sparse file costs no more address
// space than size and two pages. The page before is headroom that a
// dedicated queue's UMEM (the whole mapping) needs to take a frame in a
// buffer at the region's first byte; it is the guest's file, never
// guest memory.
func mapWindow(fd int, offset, size, blksize uint64) (mapping, data []byte, err error) {
	if err := checkSharedMemory(fd); err != nil {
		return nil, nil, err
	}
	align := uint64(unix.Getpagesize())
	if blksize > align && blksize&(blksize-1) == 0 {
		align = blksize
	}
	start := offset &^ (align - 1)
	if start >= align {
		start -= align
	}
	length := (offset - start + size + align - 1) &^ (align - 1)
	m, err := unix.Mmap(fd, int64(start), int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("mmap %d bytes at %#x: %w", length, start, err)
	}
	lo := offset - start
	return m, m[lo : lo+size : lo+size], nil
}

func (t *memTable) unmap() {
	if t == nil {
		return
	}
	for i := range t.regions {
		if t.regions[i].mapping != nil {
			_ = unix.Munmap(t.regions[i].mapping)
		}
		t.regions[i] = memRegion{}
	}
	t.regions = nil
}

// guest returns the longest prefix (at most n bytes) of guest physical
// memory at gpa that lies in one region, or errAddr.
func (t *memTable) guest(gpa uint64, n uint32) ([]byte, error) {
	for i := range t.regions {
		r := &t.regions[i]
		if gpa-r.gpa < r.size && gpa >= r.gpa {
			off := gpa - r.gpa
			end := off + uint64(n)
			if end > r.size {
				end = r.size
			}
			return r.data[off:end:end], nil
		}
	}
	return nil, errAddr
}

// guestAll returns n bytes at gpa that lie wholly in one region.
func (t *memTable) guestAll(gpa uint64, n uint32) ([]byte, error) {
	b, err := t.guest(gpa, n)
	if err != nil {
		return nil, err
	}
	if uint32(len(b)) != n {
		return nil, errAddr
	}
	return b, nil
}

// user returns n bytes at front-end virtual address uva, wholly in one
// region (rings must be contiguous).
func (t *memTable) user(uva uint64, n uint64) ([]byte, error) {
	for i := range t.regions {
		r := &t.regions[i]
		if uva >= r.uva && uva-r.uva < r.size {
			off := uva - r.uva
			if n > r.size-off {
				return nil, errAddr
			}
			return r.data[off : off+n : off+n], nil
		}
	}
	return nil, errAddr
}
