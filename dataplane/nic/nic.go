// Package nic inspects a network interface (driver, channels, MTU, XDP
// features) and checks it against what vmq's configuration asks of it, so
// that vmqd can report the NIC at start and refuse a configuration the NIC
// cannot carry with an error an operator can act on.
//
// Everything here runs at start-up or on a status request; nothing is on
// the packet path.
package nic

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// XDPFeatures is the netdev netlink family's xdp-features bitmask
// (enum netdev_xdp_act in include/uapi/linux/netdev.h).
type XDPFeatures uint64

// XDP feature bits.
const (
	XDPBasic        XDPFeatures = 1 << 0 // native XDP: PASS, DROP, TX, ABORTED
	XDPRedirect     XDPFeatures = 1 << 1 // XDP_REDIRECT out of the driver's rx path
	XDPNdoXmit      XDPFeatures = 1 << 2 // can be a redirect target
	XDPXSKZeroCopy  XDPFeatures = 1 << 3 // AF_XDP zero-copy
	XDPHWOffload    XDPFeatures = 1 << 4
	XDPRxSG         XDPFeatures = 1 << 5 // multi-buffer (frags) on rx
	XDPNdoXmitSG    XDPFeatures = 1 << 6
	xdpFeatureCount             = 7
)

var xdpFeatureNames = [xdpFeatureCount]string{
	"basic", "redirect", "ndo-xmit", "xsk-zerocopy", "hw-offload", "rx-sg", "ndo-xmit-sg",
}

// Has reports whether all bits of f2 are set in f.
func (f XDPFeatures) Has(f2 XDPFeatures) bool { return f&f2 == f2 }

// String lists the set features by their kernel names, e.g. "basic,redirect".
func (f XDPFeatures) String() string {
	if f == 0 {
		return "none"
	}
	var names []string
	for i, n := range xdpFeatureNames {
		if f&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	if rest := f &^ (1<<xdpFeatureCount - 1); rest != 0 {
		names = append(names, fmt.Sprintf("0x%x", uint64(rest)))
	}
	return strings.Join(names, ",")
}

// Info describes one interface as the kernel reports it.
type Info struct {
	Name  string
	Index int
	// Driver is the kernel driver ("ixgbe", "mlx5_core", "veth", ...).
	Driver                                  string
	DriverVersion, FirmwareVersion, BusInfo string
	MTU                                     int
	MAC                                     net.HardwareAddr
	// Channels as `ethtool -l` shows them: current counts and maximums.
	// Drivers use either combined channels (most NICs) or separate rx/tx
	// channels (veth); the unused kind is 0.
	RxChannels, TxChannels, CombinedChannels int
	MaxRx, MaxTx, MaxCombined                int
	// ChannelsKnown is false when the driver does not report channels
	// (ethtool -l gives EOPNOTSUPP); Queues then assumes one queue.
	ChannelsKnown bool
	// Up is the administrative state (IFF_UP).
	Up bool
	// XDPFeatures is valid when XDPFeaturesKnown: kernels before 6.3 have
	// no netdev netlink family.
	XDPFeatures      XDPFeatures
	XDPFeaturesKnown bool
}

// Queues is the number of usable rx queues (combined plus rx-only
// channels), at least 1: AF_XDP sockets bind to queues 0..Queues()-1.
func (i Info) Queues() int {
	return max(i.CombinedChannels+i.RxChannels, 1)
}

// IsVeth reports whether the interface is a veth (lab setups), whose
// native XDP and AF_XDP modes have their own limits.
func (i Info) IsVeth() bool { return i.Driver == "veth" }

// LogValue lets vmqd log an Info as one structured group.
func (i Info) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("name", i.Name),
		slog.Int("index", i.Index),
		slog.String("driver", i.Driver),
		slog.Int("mtu", i.MTU),
		slog.String("mac", i.MAC.String()),
		slog.Bool("up", i.Up),
		slog.Int("queues", i.Queues()),
	}
	if i.DriverVersion != "" {
		attrs = append(attrs, slog.String("driver_version", i.DriverVersion))
	}
	if i.FirmwareVersion != "" {
		attrs = append(attrs, slog.String("firmware", i.FirmwareVersion))
	}
	if i.BusInfo != "" {
		attrs = append(attrs, slog.String("bus", i.BusInfo))
	}
	if i.ChannelsKnown {
		attrs = append(attrs, slog.String("channels", fmt.Sprintf("combined %d/%d rx %d/%d tx %d/%d",
			i.CombinedChannels, i.MaxCombined, i.RxChannels, i.MaxRx, i.TxChannels, i.MaxTx)))
	} else {
		attrs = append(attrs, slog.String("channels", "not reported"))
	}
	if i.XDPFeaturesKnown {
		attrs = append(attrs, slog.String("xdp_features", i.XDPFeatures.String()))
	}
	return slog.GroupValue(attrs...)
}

// ErrNotFound is wrapped by Inspect when the interface does not exist in
// the calling thread's network namespace.
var ErrNotFound = errors.New("no such interface")

// Inspect reads the interface's link attributes, driver info (ethtool
// GDRVINFO ioctl: veth has no sysfs device link), channels (ethtool
// netlink) and XDP features (netdev netlink) in the calling thread's
// network namespace. Callers that inspect another namespace must run it
// on a thread locked into that namespace.
func Inspect(ifname string) (Info, error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return Info{}, fmt.Errorf("inspect %q: %w in this network namespace (list them with \"ip link\")", ifname, ErrNotFound)
		}
		return Info{}, fmt.Errorf("inspect %q: %w", ifname, err)
	}
	attrs := link.Attrs()
	info := Info{
		Name:  attrs.Name,
		Index: attrs.Index,
		MTU:   attrs.MTU,
		MAC:   attrs.HardwareAddr,
		Up:    attrs.Flags&net.FlagUp != 0,
	}
	if err := readDrvinfo(&info); err != nil {
		return Info{}, err
	}
	if err := readChannels(&info); err != nil {
		return Info{}, err
	}
	if err := readXDPFeatures(&info); err != nil {
		return Info{}, err
	}
	return info, nil
}

func readDrvinfo(info *Info) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("inspect %s: socket for ethtool ioctl: %w", info.Name, err)
	}
	defer unix.Close(fd)
	d, err := unix.IoctlGetEthtoolDrvinfo(fd, info.Name)
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			// Loopback and a few virtual devices have no ethtool driver info.
			info.Driver = "unknown"
			return nil
		}
		return fmt.Errorf("inspect %s: ethtool driver info (ETHTOOL_GDRVINFO): %w", info.Name, err)
	}
	info.Driver = cstring(d.Driver[:])
	info.DriverVersion = cstring(d.Version[:])
	info.FirmwareVersion = cstring(d.Fw_version[:])
	info.BusInfo = cstring(d.Bus_info[:])
	return nil
}

func cstring(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// netdev netlink family (include/uapi/linux/netdev.h); x/sys has no
// constants for it yet.
const (
	netdevFamily          = "netdev"
	netdevCmdDevGet       = 1
	netdevADevIfindex     = 1
	netdevADevXDPFeatures = 3
)

func readChannels(info *Info) error {
	fam, err := netlink.GenlFamilyGet(unix.ETHTOOL_GENL_NAME)
	if err != nil {
		return fmt.Errorf("inspect %s: ethtool netlink family: %w", info.Name, err)
	}
	hdr := nl.NewRtAttr(unix.ETHTOOL_A_CHANNELS_HEADER|unix.NLA_F_NESTED, nil)
	hdr.AddRtAttr(unix.ETHTOOL_A_HEADER_DEV_INDEX, nl.Uint32Attr(uint32(info.Index)))
	attrs, err := genlRequest(fam, unix.ETHTOOL_MSG_CHANNELS_GET, hdr)
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return nil // the driver has no get_channels: ChannelsKnown stays false
		}
		return fmt.Errorf("inspect %s: ethtool channels: %w", info.Name, err)
	}
	for _, a := range attrs {
		v, ok := attrUint32(a.Value)
		if !ok {
			continue
		}
		switch a.Attr.Type {
		case unix.ETHTOOL_A_CHANNELS_RX_MAX:
			info.MaxRx = v
		case unix.ETHTOOL_A_CHANNELS_TX_MAX:
			info.MaxTx = v
		case unix.ETHTOOL_A_CHANNELS_COMBINED_MAX:
			info.MaxCombined = v
		case unix.ETHTOOL_A_CHANNELS_RX_COUNT:
			info.RxChannels = v
		case unix.ETHTOOL_A_CHANNELS_TX_COUNT:
			info.TxChannels = v
		case unix.ETHTOOL_A_CHANNELS_COMBINED_COUNT:
			info.CombinedChannels = v
		}
	}
	info.ChannelsKnown = true
	return nil
}

func readXDPFeatures(info *Info) error {
	fam, err := netlink.GenlFamilyGet(netdevFamily)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil // kernel before 6.3: XDPFeaturesKnown stays false
		}
		return fmt.Errorf("inspect %s: netdev netlink family: %w", info.Name, err)
	}
	attrs, err := genlRequest(fam, netdevCmdDevGet,
		nl.NewRtAttr(netdevADevIfindex, nl.Uint32Attr(uint32(info.Index))))
	if err != nil {
		return fmt.Errorf("inspect %s: netdev dev-get (xdp features): %w", info.Name, err)
	}
	for _, a := range attrs {
		if a.Attr.Type == netdevADevXDPFeatures && len(a.Value) == 8 {
			info.XDPFeatures = XDPFeatures(binary.NativeEndian.Uint64(a.Value))
			info.XDPFeaturesKnown = true
		}
	}
	return nil
}

// genlRequest sends one generic netlink request on a socket opened in the
// calling thread's netns and returns the attributes of its single reply.
func genlRequest(fam *netlink.GenlFamily, cmd uint8, attr *nl.RtAttr) ([]syscall.NetlinkRouteAttr, error) {
	req := nl.NewNetlinkRequest(int(fam.ID), 0)
	req.AddData(&nl.Genlmsg{Command: cmd, Version: uint8(fam.Version)})
	req.AddData(attr)
	msgs, err := req.Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("%d replies, want 1", len(msgs))
	}
	if len(msgs[0]) < nl.SizeofGenlmsg {
		return nil, fmt.Errorf("short reply (%d bytes)", len(msgs[0]))
	}
	attrs, err := nl.ParseRouteAttr(msgs[0][nl.SizeofGenlmsg:])
	if err != nil {
		return nil, fmt.Errorf("decode reply: %w", err)
	}
	return attrs, nil
}

func attrUint32(b []byte) (int, bool) {
	if len(b) != 4 {
		return 0, false
	}
	return int(binary.NativeEndian.Uint32(b)), true
}
