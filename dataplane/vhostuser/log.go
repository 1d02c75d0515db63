package vhostuser

import (
	"encoding/binary"
	"fmt"
	"math"

	"golang.org/x/sys/unix"
)

// FeatureLogAll is VHOST_F_LOG_ALL: the back-end logs the guest pages it
// writes while the front-end migrates the guest. It is a vhost feature,
// not a virtio one: QEMU refuses to migrate a vhost-user guest without it.
const FeatureLogAll = 1 << 26

// LogPageShift: one log bit covers one 4 KiB page of guest physical
// address space (vhost-user spec, "Migration").
const LogPageShift = 12

// LogBaseLen is the size of the SET_LOG_BASE payload: mmap size, mmap
// offset (u64 each).
const LogBaseLen = 16

// maxLogSize bounds a dirty log's mapping: 64 MiB covers 2 TiB of guest
// physical addresses. A sparse file can claim any size; mapping it costs
// address space and page tables.
const maxLogSize = 64 << 20

// dirtyLog is the front-end's dirty-page bitmap (SET_LOG_BASE). The
// front-end reads and clears it with atomic exchanges of aligned words
// while the guest runs, so bits are set with atomic ORs only.
type dirtyLog struct {
	bits    []byte // mapping[offset:][:size], 8-byte aligned
	mapping []byte
	// afterMark, tests only, runs after every mark: a front-end that
	// syncs the log at the worst moment.
	afterMark func()
}

// DecodeLogBase reads a SET_LOG_BASE payload.
func DecodeLogBase(b []byte) (size, offset uint64, err error) {
	if len(b) != LogBaseLen {
		return 0, 0, fmt.Errorf("log base payload: %d bytes, want %d", len(b), LogBaseLen)
	}
	return binary.LittleEndian.Uint64(b[0:]), binary.LittleEndian.Uint64(b[8:]), nil
}

// EncodeLogBase writes a SET_LOG_BASE payload into b[:LogBaseLen].
func EncodeLogBase(b []byte, size, offset uint64) {
	binary.LittleEndian.PutUint64(b[0:], size)
	binary.LittleEndian.PutUint64(b[8:], offset)
}

// mapLog maps size bytes of fd at offset (MAP_SHARED; only that window,
// like the memory regions: an offset far into a sparse file must not
// cost address space). fd is not closed.
func mapLog(fd int, size, offset uint64) (*dirtyLog, error) {
	if size == 0 || size > maxLogSize {
		return nil, fmt.Errorf("log of %d bytes: want 1..%d", size, maxLogSize)
	}
	if offset%8 != 0 || offset > math.MaxInt/2 {
		return nil, fmt.Errorf("log offset %#x: want 8-byte aligned", offset)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("log fd: fstat: %w", err)
	}
	need := offset + size
	// A mapping past the end of the file is SIGBUS on first touch.
	if st.Size < 0 || uint64(st.Size) < need {
		return nil, fmt.Errorf("log offset %#x + size %#x beyond file size %#x", offset, size, st.Size)
	}
	m, bits, err := mapWindow(fd, offset, size, uint64(st.Blksize))
	if err != nil {
		return nil, fmt.Errorf("log: %w", err)
	}
	return &dirtyLog{bits: bits, mapping: m}, nil
}

func (l *dirtyLog) unmap() {
	if l == nil || l.mapping == nil {
		return
	}
	_ = unix.Munmap(l.mapping)
	l.mapping, l.bits = nil, nil
}

// mark sets the bit of every page in [gpa, gpa+n). Pages beyond the log
// are not logged (the front-end sized the log to its memory; a guest
// address beyond it was not checked against a region: a used-ring log
// address).
func (l *dirtyLog) mark(gpa, n uint64) {
	if n == 0 || gpa > math.MaxUint64-n {
		return
	}
	last := (gpa + n - 1) >> LogPageShift
	for pg := gpa >> LogPageShift; pg <= last; pg++ {
		off := pg / 32 * 4
		if off >= uint64(len(l.bits)) || len(l.bits)-int(off) < 4 {
			return
		}
		atomicOr32(l.bits, int(off), 1<<(pg%32))
	}
	if l.afterMark != nil {
		l.afterMark()
	}
}

// logBuf marks the n bytes written at gpa, frame bytes [from, from+n) of
// header||frame, and remembers where num_buffers (header bytes 10 and
// 11) went: Push writes it last, after the page was marked, and a
// front-end that synced and copied the page in between would migrate
// the header without it (logNumBuffers marks it again).
func (q *Queue) logBuf(gpa, n uint64, from int) {
	q.bufLog.mark(gpa, n)
	for i := range q.nbGPA {
		if pos := 10 + i; pos >= from && uint64(pos-from) < n {
			q.nbGPA[i] = gpa + uint64(pos-from)
		}
	}
}

// logNumBuffers marks the pages of num_buffers after Push wrote it.
func (q *Queue) logNumBuffers() {
	q.bufLog.mark(q.nbGPA[0], 1)
	if q.nbGPA[1]>>LogPageShift != q.nbGPA[0]>>LogPageShift {
		q.bufLog.mark(q.nbGPA[1], 1)
	}
}

// logUsed marks the used-ring bytes [off, off+n) at the ring's log
// address.
func (q *Queue) logUsed(off, n int) {
	q.usedLog.mark(q.usedLogAddr+uint64(off), uint64(n))
}

// logUsedEntries marks used.idx and the used elements from old up to new
// (the ring wraps).
func (q *Queue) logUsedEntries(old, new uint16) {
	q.logUsed(0, 4) // flags and idx: one aligned word
	n := int(new - old)
	if n == 0 {
		return
	}
	if n > int(q.num) {
		n = int(q.num)
	}
	first := int(old & q.mask)
	if first+n <= int(q.num) {
		q.logUsed(4+8*first, 8*n)
		return
	}
	q.logUsed(4+8*first, 8*(int(q.num)-first))
	q.logUsed(4, 8*(first+n-int(q.num)))
}
