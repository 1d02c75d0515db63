// Package ntuple steers a VM's frames to a NIC queue of its own with the
// NIC's flow rules (ethtool ntuple, `ethtool -N DEV flow-type ether dst
// MAC [vlan TCI m 0xf000] action Q loc L`), through the SIOCETHTOOL ioctl
// (ETHTOOL_SRXCLSRLINS / ETHTOOL_SRXCLSRLDEL / ETHTOOL_GRXCLSRLALL).
//
// vmq owns a range of rule locations (FirstLocation + slot): after a
// restart it finds its rules there and deletes those no VM wants, so a
// rule never outlives its VM. Rules at other locations are the operator's
// and are never touched.
package ntuple

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// The rule locations vmq owns: FirstLocation+slot for slots 1..NumLocations-1.
// 512..767 fits every driver documented here (mlx5 allows 0..1023, ice and
// i40e far more).
const (
	FirstLocation = 512
	NumLocations  = 256
)

// Kernel uapi constants (include/uapi/linux/ethtool.h).
const (
	etherFlow   = 0x12       // ETHER_FLOW
	flowExt     = 0x80000000 // FLOW_EXT: h_ext/m_ext are valid
	vlanVIDMask = 0x0fff
)

// Layout of struct ethtool_rxnfc and its struct ethtool_rx_flow_spec fs
// (x86_64 and arm64 alike: naturally aligned). rxnfc_test.go checks them
// against the kernel's headers.
const (
	offCmd       = 0
	offFlowType  = 4
	offData      = 8
	offFS        = 16 // struct ethtool_rx_flow_spec
	fsFlowType   = 0
	fsHU         = 4   // union ethtool_flow_union h_u (52 bytes)
	fsHExt       = 56  // struct ethtool_flow_ext h_ext (20 bytes)
	fsMU         = 76  // m_u
	fsMExt       = 128 // m_ext
	fsRingCookie = 152
	fsLocation   = 160
	fsSize       = 168
	offRuleCnt   = offFS + fsSize // 184
	offRuleLocs  = 188
	rxnfcSize    = 192
	extVlanTCI   = 2 + 6 + 2 // h_ext.vlan_tci: after padding[2], h_dest[6], vlan_etype
	etherDstOff  = 0         // h_u.ether_spec.h_dest
	cmdInsert    = unix.ETHTOOL_SRXCLSRLINS
	cmdDelete    = unix.ETHTOOL_SRXCLSRLDEL
	cmdGetAll    = unix.ETHTOOL_GRXCLSRLALL
	cmdGetCount  = unix.ETHTOOL_GRXCLSRLCNT
)

// ErrNotSupported: the NIC (its driver) has no ntuple flow rules, e.g.
// veth, or ntuple filters are off (`ethtool -K DEV ntuple on`).
var ErrNotSupported = errors.New("NIC has no ntuple flow steering")

// Rule steers frames to MAC (and VLAN, 0 = any untagged or tagged) to
// Queue. Location is where the NIC keeps it.
type Rule struct {
	MAC      net.HardwareAddr
	VLAN     uint16
	Queue    uint32
	Location uint32
}

// LocationOf is the rule location of a VM slot.
func LocationOf(slot uint32) (uint32, error) {
	if slot == 0 || slot >= NumLocations {
		return 0, fmt.Errorf("slot %d has no rule location (1..%d)", slot, NumLocations-1)
	}
	return FirstLocation + slot, nil
}

// Owned reports whether a rule location is in vmq's range.
func Owned(loc uint32) bool { return loc > FirstLocation && loc < FirstLocation+NumLocations }

// Command says how to set this rule by hand (and `ethtool -n DEV` lists it).
func (r Rule) Command(dev string) string {
	s := fmt.Sprintf("ethtool -N %s flow-type ether dst %s", dev, r.MAC)
	if r.VLAN != 0 {
		s += fmt.Sprintf(" vlan %d m 0xf000", r.VLAN)
	}
	return s + fmt.Sprintf(" action %d loc %d", r.Queue, r.Location)
}

// encode writes the ETHTOOL_SRXCLSRLINS request for r into b.
func (r Rule) encode(b *[rxnfcSize]byte) error {
	if len(r.MAC) != 6 {
		return fmt.Errorf("rule MAC %q is not 6 bytes", r.MAC)
	}
	if r.VLAN > 4094 {
		return fmt.Errorf("rule VLAN %d is outside 0..4094", r.VLAN)
	}
	*b = [rxnfcSize]byte{}
	le := binary.NativeEndian
	le.PutUint32(b[offCmd:], cmdInsert)
	fs := b[offFS : offFS+fsSize]
	ft := uint32(etherFlow)
	copy(fs[fsHU+etherDstOff:], r.MAC)
	for i := range 6 {
		fs[fsMU+etherDstOff+i] = 0xff
	}
	if r.VLAN != 0 {
		ft |= flowExt
		binary.BigEndian.PutUint16(fs[fsHExt+extVlanTCI:], r.VLAN)
		binary.BigEndian.PutUint16(fs[fsMExt+extVlanTCI:], vlanVIDMask)
	}
	le.PutUint32(fs[fsFlowType:], ft)
	le.PutUint64(fs[fsRingCookie:], uint64(r.Queue))
	le.PutUint32(fs[fsLocation:], r.Location)
	return nil
}

// Insert adds (or replaces) the rule on dev.
func Insert(dev string, r Rule) error {
	var b [rxnfcSize]byte
	if err := r.encode(&b); err != nil {
		return err
	}
	if err := ioctl(dev, b[:]); err != nil {
		return fmt.Errorf("add flow rule on %s (%s): %w", dev, r.Command(dev), wrap(err))
	}
	return nil
}

// Delete removes the rule at loc on dev; a missing rule is not an error.
func Delete(dev string, loc uint32) error {
	var b [rxnfcSize]byte
	binary.NativeEndian.PutUint32(b[offCmd:], cmdDelete)
	binary.NativeEndian.PutUint32(b[offFS+fsLocation:], loc)
	if err := ioctl(dev, b[:]); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete flow rule %d on %s (ethtool -N %s delete %d): %w", loc, dev, dev, loc, wrap(err))
	}
	return nil
}

// Locations lists the locations of every rule on dev.
func Locations(dev string) ([]uint32, error) {
	var b [rxnfcSize]byte
	binary.NativeEndian.PutUint32(b[offCmd:], cmdGetCount)
	if err := ioctl(dev, b[:]); err != nil {
		return nil, fmt.Errorf("count flow rules on %s: %w", dev, wrap(err))
	}
	n := binary.NativeEndian.Uint32(b[offRuleCnt:])
	if n > 1<<16 {
		return nil, fmt.Errorf("count flow rules on %s: driver reports %d", dev, n)
	}
	buf := make([]byte, offRuleLocs+4*int(n)+4)
	binary.NativeEndian.PutUint32(buf[offCmd:], cmdGetAll)
	binary.NativeEndian.PutUint32(buf[offRuleCnt:], n)
	if err := ioctl(dev, buf); err != nil {
		return nil, fmt.Errorf("list flow rules on %s: %w", dev, wrap(err))
	}
	n = min(n, binary.NativeEndian.Uint32(buf[offRuleCnt:]))
	locs := make([]uint32, n)
	for i := range locs {
		locs[i] = binary.NativeEndian.Uint32(buf[offRuleLocs+4*i:])
	}
	return locs, nil
}

// Reconcile deletes every rule in vmq's range on dev whose location is
// not in keep: rules a previous vmqd left for VMs that are gone.
func Reconcile(dev string, keep map[uint32]bool) (deleted []uint32, err error) {
	locs, err := Locations(dev)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, l := range locs {
		if Owned(l) && !keep[l] {
			if err := Delete(dev, l); err != nil {
				errs = append(errs, err)
				continue
			}
			deleted = append(deleted, l)
		}
	}
	return deleted, errors.Join(errs...)
}

func wrap(err error) error {
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) {
		return fmt.Errorf("%w: %w", ErrNotSupported, err)
	}
	return err
}
