package pktgen

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// sendmmsg sends msgs on fd in one system call (x/sys has no wrapper).
// The iovecs point into buffers the caller keeps alive; Go's heap does not
// move, so the kernel may read them for the duration of the call.
func sendmmsg(fd int, msgs []unix.Mmsghdr) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
	if errno != 0 {
		return int(n), errno
	}
	return int(n), nil
}
