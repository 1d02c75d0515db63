package frontend

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/vhostuser"
)

// region is one memfd shared with the backend. Its guest physical
// addresses (what descriptors carry) differ from its user address (what
// vring addresses carry) so a backend that confuses the two fails loudly.
type region struct {
	fd   int
	gpa  uint64
	mem  []byte
	used int // bump allocator
}

// guestMemory is the guest's RAM: up to MaxMemRegions memfds.
type guestMemory struct {
	regions []*region
}

// regionGPAStride spaces regions apart in guest physical address space.
const regionGPAStride = 1 << 32

const (
	pageSize     = 4096
	hugePageSize = 2 << 20
)

// newGuestMemory makes one region of each size (rounded up to the page
// size), on 2 MiB huge pages if huge.
func newGuestMemory(sizes []int, huge bool) (*guestMemory, error) {
	if len(sizes) == 0 || len(sizes) > vhostuser.MaxMemRegions {
		return nil, fmt.Errorf("guest memory: %d regions, want 1..%d", len(sizes), vhostuser.MaxMemRegions)
	}
	page, flags := pageSize, unix.MFD_CLOEXEC
	if huge {
		page, flags = hugePageSize, flags|unix.MFD_HUGETLB|unix.MFD_HUGE_2MB
	}
	m := &guestMemory{}
	for i, size := range sizes {
		size = alignUp(size, page)
		fd, err := unix.MemfdCreate(fmt.Sprintf("vmq-guest-%d", i), flags)
		if err != nil {
			m.close()
			return nil, fmt.Errorf("memfd_create region %d (huge pages %v): %w", i, huge, err)
		}
		if err := unix.Ftruncate(fd, int64(size)); err != nil {
			unix.Close(fd)
			m.close()
			return nil, fmt.Errorf("size region %d to %d bytes: %w", i, size, err)
		}
		b, err := mapShared(fd, size)
		if err != nil {
			unix.Close(fd)
			m.close()
			if huge {
				err = fmt.Errorf("%w (free 2 MiB huge pages: see HugePages_Free in /proc/meminfo)", err)
			}
			return nil, fmt.Errorf("region %d: %w", i, err)
		}
		m.regions = append(m.regions, &region{fd: fd, gpa: uint64(i+1) * regionGPAStride, mem: b})
	}
	return m, nil
}

// alloc carves size bytes aligned to align out of region r.
func (m *guestMemory) alloc(r, size, align int) ([]byte, uint64, error) {
	reg := m.regions[r]
	off := alignUp(reg.used, align)
	if off+size > len(reg.mem) {
		return nil, 0, fmt.Errorf("guest memory region %d: %d bytes do not fit (%d of %d used)", r, size, off, len(reg.mem))
	}
	reg.used = off + size
	return reg.mem[off : off+size : off+size], reg.gpa + uint64(off), nil
}

var errBadGPA = errors.New("guest physical address out of range")

// translate returns the n bytes at guest physical address gpa. Used by the
// in-test device; the driver never needs it.
func (m *guestMemory) translate(gpa uint64, n uint32) ([]byte, error) {
	for _, r := range m.regions {
		if gpa >= r.gpa && gpa-r.gpa < uint64(len(r.mem)) && uint64(n) <= uint64(len(r.mem))-(gpa-r.gpa) {
			off := gpa - r.gpa
			return r.mem[off : off+uint64(n)], nil
		}
	}
	return nil, fmt.Errorf("%w: %#x+%d", errBadGPA, gpa, n)
}

// table is the SET_MEM_TABLE payload and its fds.
func (m *guestMemory) table() ([]vhostuser.MemRegion, []int) {
	regs := make([]vhostuser.MemRegion, len(m.regions))
	fds := make([]int, len(m.regions))
	for i, r := range m.regions {
		regs[i] = vhostuser.MemRegion{
			GuestPhysAddr: r.gpa,
			MemorySize:    uint64(len(r.mem)),
			UserspaceAddr: userAddr(r.mem),
			MmapOffset:    0,
		}
		fds[i] = r.fd
	}
	return regs, fds
}

func (m *guestMemory) close() {
	for _, r := range m.regions {
		if r.mem != nil {
			_ = unix.Munmap(r.mem)
		}
		unix.Close(r.fd)
	}
	m.regions = nil
}

func alignUp(n, a int) int { return (n + a - 1) &^ (a - 1) }
