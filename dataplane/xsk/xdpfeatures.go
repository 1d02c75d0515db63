package xsk

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The netdev generic netlink family (include/uapi/linux/netdev.h, Linux
// 6.3), which the system headers here lack.
const (
	netdevCmdDevGet        = 1
	netdevAttrIfindex      = 1
	netdevAttrXDPFeatures  = 3
	netdevXDPActNdoXmit    = 1 << 2
	genlHdrLen             = 4
	netdevFamilyName       = "netdev"
	genlCtrlVersion        = 1
	netdevFamilyVersion    = 1
	ctrlAttrFamilyIDLength = 2
)

// NdoXmit reports whether ifindex (in the calling thread's network
// namespace) takes XDP frames from other devices and BPF_PROG_RUN
// (NETDEV_XDP_ACT_NDO_XMIT in its xdp-features). A veth reports it only
// while its peer has an XDP program or GRO on. A kernel without the
// netdev family (before 6.3) is an error. It opens a netlink socket for
// the one question (~0.4 ms); NdoXmitChecker asks again cheaply.
func NdoXmit(ifindex int) (bool, error) {
	c, err := NewNdoXmitChecker(ifindex)
	if err != nil {
		return false, err
	}
	defer c.Close()
	return c.Check()
}

// NdoXmitChecker asks one interface's xdp-features again and again over
// one netlink socket. The socket is in the namespace of the thread that
// made it, so Check may run on any thread. Not safe for concurrent use.
type NdoXmitChecker struct {
	c       *netlink.Conn
	family  uint16
	ifindex int
	req     netlink.Message
}

// NewNdoXmitChecker opens the socket, in the calling thread's namespace.
func NewNdoXmitChecker(ifindex int) (*NdoXmitChecker, error) {
	c, err := netlink.Dial(unix.NETLINK_GENERIC, nil)
	if err != nil {
		return nil, fmt.Errorf("xdp-features: dial generic netlink: %w", err)
	}
	family, err := genlFamily(c, netdevFamilyName)
	if err != nil {
		c.Close()
		return nil, err
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(netdevAttrIfindex, uint32(ifindex))
	attrs, err := ae.Encode()
	if err != nil {
		c.Close()
		return nil, err
	}
	return &NdoXmitChecker{c: c, family: family, ifindex: ifindex, req: netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(family), Flags: netlink.Request},
		Data:   append([]byte{netdevCmdDevGet, netdevFamilyVersion, 0, 0}, attrs...),
	}}, nil
}

// Close closes the socket.
func (n *NdoXmitChecker) Close() error { return n.c.Close() }

// Check asks whether the interface takes XDP frames now.
func (n *NdoXmitChecker) Check() (bool, error) {
	msgs, err := n.c.Execute(n.req)
	if err != nil {
		return false, fmt.Errorf("xdp-features of ifindex %d: %w", n.ifindex, err)
	}
	for _, m := range msgs {
		if len(m.Data) < genlHdrLen {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[genlHdrLen:])
		if err != nil {
			return false, fmt.Errorf("xdp-features of ifindex %d: %w", n.ifindex, err)
		}
		for ad.Next() {
			if ad.Type() == netdevAttrXDPFeatures {
				return ad.Uint64()&netdevXDPActNdoXmit != 0, nil
			}
		}
	}
	return false, fmt.Errorf("xdp-features of ifindex %d: no features in the reply", n.ifindex)
}

// genlFamily resolves a generic netlink family's id.
func genlFamily(c *netlink.Conn, name string) (uint16, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.CTRL_ATTR_FAMILY_NAME, name)
	attrs, err := ae.Encode()
	if err != nil {
		return 0, err
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.GENL_ID_CTRL, Flags: netlink.Request},
		Data:   append([]byte{unix.CTRL_CMD_GETFAMILY, genlCtrlVersion, 0, 0}, attrs...),
	})
	if err != nil {
		return 0, fmt.Errorf("generic netlink family %q (kernel before 6.3?): %w", name, err)
	}
	for _, m := range msgs {
		if len(m.Data) < genlHdrLen {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[genlHdrLen:])
		if err != nil {
			return 0, err
		}
		for ad.Next() {
			if ad.Type() == unix.CTRL_ATTR_FAMILY_ID {
				b := ad.Bytes()
				if len(b) == ctrlAttrFamilyIDLength {
					return binary.NativeEndian.Uint16(b), nil
				}
			}
		}
	}
	return 0, fmt.Errorf("generic netlink family %q: no id in the reply", name)
}
