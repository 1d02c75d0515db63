package hostile

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// EventFD is a kick or call eventfd the test keeps its own copy of: the
// back-end shares the open file description, so flags and the counter
// set here are what the back-end sees.
type EventFD struct{ FD int }

// NewEventFD creates an eventfd, non-blocking or not.
func NewEventFD(nonblock bool) (*EventFD, error) {
	flags := unix.EFD_CLOEXEC
	if nonblock {
		flags |= unix.EFD_NONBLOCK
	}
	fd, err := unix.Eventfd(0, flags)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &EventFD{FD: fd}, nil
}

// SetNonblock sets or clears O_NONBLOCK on the shared file description:
// clearing it makes every holder's read (at 0) or write (at the maximum)
// block, the back-end's included.
func (e *EventFD) SetNonblock(on bool) error {
	if err := unix.SetNonblock(e.FD, on); err != nil {
		return fmt.Errorf("eventfd O_NONBLOCK=%v: %w", on, err)
	}
	return nil
}

// MaxCount is the largest value an eventfd counter holds; a write of 1 on
// top of it blocks (or fails with EAGAIN when non-blocking).
const MaxCount = 0xfffffffffffffffe

// Add writes v to the counter. It blocks if the fd is blocking and the
// counter has no room.
func (e *EventFD) Add(v uint64) error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], v)
	if _, err := unix.Write(e.FD, b[:]); err != nil {
		if errors.Is(err, unix.EAGAIN) {
			err = errAgain
		}
		return fmt.Errorf("eventfd write %#x: %w", v, err)
	}
	return nil
}

// Saturate fills the counter to MaxCount, whatever it held, so that the
// next write of 1 blocks (on a blocking description).
func (e *EventFD) Saturate() error {
	if err := e.SetNonblock(true); err != nil {
		return err
	}
	e.Drain()
	return e.Add(MaxCount)
}

// Drain reads the counter to 0 without blocking and returns what it held.
// It leaves O_NONBLOCK set.
func (e *EventFD) Drain() uint64 {
	if err := e.SetNonblock(true); err != nil {
		return 0
	}
	var b [8]byte
	if n, err := unix.Read(e.FD, b[:]); err == nil && n == 8 {
		return binary.NativeEndian.Uint64(b[:])
	}
	return 0
}

// Close closes our copy (the back-end's stays open until it drops it).
func (e *EventFD) Close() {
	if e != nil && e.FD >= 0 {
		unix.Close(e.FD)
		e.FD = -1
	}
}

// errAgain: a non-blocking eventfd write found the counter full.
var errAgain = errors.New("eventfd counter full")
