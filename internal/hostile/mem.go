package hostile

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/vhostuser"
)

// Default addresses of a Mem: guest physical and front-end ("user")
// addresses differ, so a back-end that mixes them up fails loudly.
const (
	DefaultGPA = 0x1_0000_0000
	DefaultUVA = 0x7e00_0000_0000
)

// ErrTruncated is returned by accesses to a Mem after Truncate.
var ErrTruncated = errors.New("hostile: memory truncated (own mapping dropped)")

// Mem is one memfd shared with the back-end as one memory region.
type Mem struct {
	FD   int
	GPA  uint64 // guest physical address of byte 0
	UVA  uint64 // front-end address of byte 0 (SET_VRING_ADDR uses these)
	Size uint64 // region size announced in the memory table
	// Offset is the region's mmap_offset in the memory table: where in
	// the file the region starts (0 for a Mem's own memory).
	Offset uint64
	data   []byte // our own mapping; nil once truncated or for sparse regions
	used   int    // bump allocator
}

// NewMem creates a memfd of size bytes (rounded to pages) and maps it.
func NewMem(size int) (*Mem, error) {
	size = (size + 4095) &^ 4095
	fd, err := unix.MemfdCreate("vmq-hostile", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("size memfd to %d bytes: %w", size, err)
	}
	b, err := mapShared(fd, size)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &Mem{FD: fd, GPA: DefaultGPA, UVA: DefaultUVA, Size: uint64(size), data: b}, nil
}

// NewSparse creates a memfd of size bytes that is never mapped here: a
// region that costs the back-end address space and the host nothing.
func NewSparse(size uint64) (*Mem, error) {
	fd, err := unix.MemfdCreate("vmq-hostile-sparse", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("size sparse memfd to %d bytes: %w", size, err)
	}
	return &Mem{FD: fd, GPA: DefaultGPA, UVA: DefaultUVA, Size: size}, nil
}

// Region is the memory table entry of m.
func (m *Mem) Region() vhostuser.MemRegion {
	return vhostuser.MemRegion{GuestPhysAddr: m.GPA, MemorySize: m.Size, UserspaceAddr: m.UVA, MmapOffset: m.Offset}
}

// Bytes is the mapped memory (nil after Truncate).
func (m *Mem) Bytes() []byte { return m.data }

// Alloc carves size bytes aligned to align and returns their offset.
func (m *Mem) Alloc(size, align int) (int, error) {
	if m.data == nil {
		return 0, ErrTruncated
	}
	off := (m.used + align - 1) &^ (align - 1)
	if off+size > len(m.data) {
		return 0, fmt.Errorf("hostile memory: %d bytes do not fit (%d of %d used)", size, off, len(m.data))
	}
	m.used = off + size
	return off, nil
}

// GPAOf and UVAOf translate an offset into the two address spaces.
func (m *Mem) GPAOf(off int) uint64 { return m.GPA + uint64(off) }
func (m *Mem) UVAOf(off int) uint64 { return m.UVA + uint64(off) }

// Truncate drops this process's mapping, then shrinks the memfd to size:
// from now on the back-end's mapping faults (SIGBUS) beyond size, and this
// process has nothing left to fault on.
func (m *Mem) Truncate(size int64) error {
	if m.data != nil {
		if err := unix.Munmap(m.data); err != nil {
			return fmt.Errorf("unmap own view before truncating: %w", err)
		}
		m.data = nil
	}
	if err := unix.Ftruncate(m.FD, size); err != nil {
		return fmt.Errorf("truncate memfd to %d bytes: %w", size, err)
	}
	return nil
}

// Close unmaps and closes the memfd (the back-end keeps its mapping).
func (m *Mem) Close() {
	if m.data != nil {
		_ = unix.Munmap(m.data)
		m.data = nil
	}
	if m.FD >= 0 {
		unix.Close(m.FD)
		m.FD = -1
	}
}

// AllocGPA carves n bytes (16-byte aligned, as descriptor tables need)
// and returns their guest physical address.
func (m *Mem) AllocGPA(n int) (uint64, error) {
	off, err := m.Alloc(n, 16)
	if err != nil {
		return 0, err
	}
	return m.GPAOf(off), nil
}

// At returns the n bytes at guest physical address gpa.
func (m *Mem) At(gpa uint64, n int) []byte {
	off := int(gpa - m.GPA)
	return m.data[off : off+n]
}

// NewDiskMem creates a file of size bytes off shared memory (in dir, or
// in the working directory if dir is on tmpfs) and returns it as a Mem
// that is not mapped here: guest memory whose page faults, on FUSE or NFS,
// could wait on someone else. The file is removed at once (the fd keeps
// it).
func NewDiskMem(dir string, size uint64) (*Mem, error) {
	for _, d := range []string{dir, "."} {
		f, err := os.CreateTemp(d, ".vmq-hostile-disk-*")
		if err != nil {
			return nil, fmt.Errorf("hostile disk memory: %w", err)
		}
		os.Remove(f.Name())
		fd, err := unix.Dup(int(f.Fd()))
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("hostile disk memory: dup: %w", err)
		}
		var fs unix.Statfs_t
		if err := unix.Fstatfs(fd, &fs); err != nil || fs.Type == unix.TMPFS_MAGIC || fs.Type == unix.RAMFS_MAGIC {
			unix.Close(fd)
			continue
		}
		if err := unix.Ftruncate(fd, int64(size)); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("hostile disk memory: size to %d bytes: %w", size, err)
		}
		return &Mem{FD: fd, GPA: DefaultGPA, UVA: DefaultUVA, Size: size}, nil
	}
	return nil, fmt.Errorf("hostile disk memory: %s and the working directory are both on shared memory", dir)
}
