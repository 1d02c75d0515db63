package ntuple

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ifreq for SIOCETHTOOL: the name, then a pointer to the request.
type ifreq struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - 8]byte
}

// ioctl sends one ethtool request (b, read back in place) for dev.
func ioctl(dev string, b []byte) error {
	if len(dev) >= unix.IFNAMSIZ || dev == "" {
		return fmt.Errorf("interface name %q", dev)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for SIOCETHTOOL: %w", err)
	}
	defer unix.Close(fd)
	var ifr ifreq
	copy(ifr.name[:], dev)
	ifr.data = unsafe.Pointer(&b[0])
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	if e != 0 {
		return e
	}
	return nil
}
