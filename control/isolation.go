package control

import (
	"encoding/json"
	"fmt"
	"math"
	"os/user"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/vmq/vmq/dataplane"
)

// DefaultMaxGuestMemory is the built-in max_guest_memory: a SET_MEM_TABLE
// above it is refused, so a guest cannot make vmqd map (and reserve
// address space for) more than that.
const DefaultMaxGuestMemory = ByteSize(64 << 30)

// DefaultSocketMode is a server socket's mode when socket_mode is omitted.
const DefaultSocketMode = FileMode(0o600)

// DefaultFloodPPS is a VM's storm control when its flood_pps is omitted:
// the broadcast and multicast frames per second its guest may send. Each
// such frame is copied to every VM of its VLAN, whose guests must all
// take it; 10000 a second is a hundred times what ARP, IPv6 ND, DHCP and
// mDNS need, and little enough that a neighbour's guest absorbs it
// (a same-VLAN guest lost 13% of its own traffic to an unlimited one).
const DefaultFloodPPS = 10000

// Limits are a VM's QoS limits as configured (0 = unlimited): frames and
// bits per second, RX (to the guest) and TX (from the guest), and the
// broadcast and multicast frames per second from the guest (flood_pps;
// omitted: DefaultFloodPPS). See dataplane.Limits for how they are
// enforced.
type Limits struct {
	RxPPS    uint64  `yaml:"rx_pps,omitempty" json:"rx_pps"`
	RxBPS    uint64  `yaml:"rx_bps,omitempty" json:"rx_bps"`
	TxPPS    uint64  `yaml:"tx_pps,omitempty" json:"tx_pps"`
	TxBPS    uint64  `yaml:"tx_bps,omitempty" json:"tx_bps"`
	FloodPPS *uint64 `yaml:"flood_pps,omitempty" json:"flood_pps,omitempty"`
}

// Flood is the storm control in force: flood_pps, or DefaultFloodPPS
// when it is omitted (0 = unlimited).
func (l Limits) Flood() uint64 {
	if l.FloodPPS == nil {
		return DefaultFloodPPS
	}
	return *l.FloodPPS
}

// Equal reports whether two limits are the same (an omitted flood_pps
// is not the same as its default written out: a later default may differ).
func (l Limits) Equal(m Limits) bool {
	if (l.FloodPPS == nil) != (m.FloodPPS == nil) || l.FloodPPS != nil && *l.FloodPPS != *m.FloodPPS {
		return false
	}
	l.FloodPPS, m.FloodPPS = nil, nil
	return l == m
}

// Dataplane converts the limits for the dataplane.
func (l Limits) Dataplane() dataplane.Limits {
	return dataplane.Limits{RxPPS: l.RxPPS, RxBPS: l.RxBPS, TxPPS: l.TxPPS, TxBPS: l.TxBPS, FloodPPS: l.Flood()}
}

// LimitsPatch changes some limits: nil fields keep their value, 0 clears
// (for flood_pps: no storm control at all).
type LimitsPatch struct {
	RxPPS    *uint64 `json:"rx_pps,omitempty"`
	RxBPS    *uint64 `json:"rx_bps,omitempty"`
	TxPPS    *uint64 `json:"tx_pps,omitempty"`
	TxBPS    *uint64 `json:"tx_bps,omitempty"`
	FloodPPS *uint64 `json:"flood_pps,omitempty"`
}

// Apply returns l with the patch's fields set.
func (p LimitsPatch) Apply(l Limits) Limits {
	for _, f := range []struct {
		v   *uint64
		dst *uint64
	}{{p.RxPPS, &l.RxPPS}, {p.RxBPS, &l.RxBPS}, {p.TxPPS, &l.TxPPS}, {p.TxBPS, &l.TxBPS}} {
		if f.v != nil {
			*f.dst = *f.v
		}
	}
	if p.FloodPPS != nil {
		v := *p.FloodPPS // l must not share the patch's memory
		l.FloodPPS = &v
	}
	return l
}

// VMPatch is the body of PATCH /v1/vms/{name}: the settings a running VM
// can change without a reconnect.
type VMPatch struct {
	Limits *LimitsPatch `json:"limits,omitempty"`
}

// ByteSize is a size in bytes, written as a number or a string with a
// unit: "4GiB", "512MiB", "1.5GiB", "8GB" (KiB..TiB are powers of 1024,
// kB..TB powers of 1000).
type ByteSize uint64

var byteUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

// ParseByteSize reads a size: bytes, or a number with a unit.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	if v, err := strconv.ParseUint(t, 10, 64); err == nil {
		return ByteSize(v), nil
	}
	for _, u := range byteUnits {
		num, ok := strings.CutSuffix(t, u.suffix)
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || f < 0 || math.IsNaN(f) || f*u.mult >= math.MaxUint64 {
			break
		}
		return ByteSize(f * u.mult), nil
	}
	return 0, fmt.Errorf("%q is not a size (bytes, or a number with KiB, MiB, GiB, TiB, kB, MB, GB or TB)", s)
}

// String writes the size with the largest binary unit that divides it.
func (b ByteSize) String() string {
	for _, u := range []struct {
		s string
		m uint64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && uint64(b)%u.m == 0 {
			return fmt.Sprintf("%d%s", uint64(b)/u.m, u.s)
		}
	}
	return strconv.FormatUint(uint64(b), 10)
}

// MarshalYAML writes the size as String does.
func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }

// UnmarshalYAML reads a number or a string with a unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a size must be a number of bytes or a string like \"4GiB\"", n.Line)
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// MarshalJSON writes the size as a number of bytes.
func (b ByteSize) MarshalJSON() ([]byte, error) { return strconv.AppendUint(nil, uint64(b), 10), nil }

// UnmarshalJSON reads a number of bytes or a string with a unit.
func (b *ByteSize) UnmarshalJSON(data []byte) error {
	s := string(data)
	if uq, err := strconv.Unquote(s); err == nil {
		s = uq
	}
	v, err := ParseByteSize(s)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// IDSpec is a user or group: a name, or a numeric id ("" = not set).
type IDSpec string

// UnmarshalYAML takes the scalar as written (a name or a number).
func (s *IDSpec) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: expected a name or a numeric id", n.Line)
	}
	*s = IDSpec(n.Value)
	return nil
}

// UnmarshalJSON takes a string or a number.
func (s *IDSpec) UnmarshalJSON(data []byte) error {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case string:
		*s = IDSpec(x)
	case float64:
		*s = IDSpec(strconv.FormatFloat(x, 'f', -1, 64))
	case nil:
		*s = ""
	default:
		return fmt.Errorf("expected a name or a numeric id, not %s", data)
	}
	return nil
}

// UID resolves a user: -1 when not set.
func (s IDSpec) UID() (int, error) { return s.resolve(false) }

// GID resolves a group: -1 when not set.
func (s IDSpec) GID() (int, error) { return s.resolve(true) }

func (s IDSpec) resolve(group bool) (int, error) {
	if s == "" {
		return -1, nil
	}
	if v, err := strconv.ParseUint(string(s), 10, 31); err == nil {
		return int(v), nil
	}
	if group {
		g, err := user.LookupGroup(string(s))
		if err != nil {
			return 0, fmt.Errorf("no group %q: %w", string(s), err)
		}
		return strconv.Atoi(g.Gid)
	}
	u, err := user.Lookup(string(s))
	if err != nil {
		return 0, fmt.Errorf("no user %q: %w", string(s), err)
	}
	return strconv.Atoi(u.Uid)
}

// validateIsolation checks a VM's limits and port hardening keys.
func validateIsolation(vm *VMConfig, p string, errs *errList) {
	if vm.SocketOwner != "" {
		if _, err := vm.SocketOwner.UID(); err != nil {
			errs.add(p+".socket_owner", "%v", err)
		}
	}
	if vm.SocketGroup != "" {
		if _, err := vm.SocketGroup.GID(); err != nil {
			errs.add(p+".socket_group", "%v", err)
		}
	}
	if vm.Mode == ModeClient && (vm.SocketOwner != "" || vm.SocketGroup != "" || (vm.SocketMode != 0 && vm.SocketMode != DefaultSocketMode)) {
		errs.add(p+".mode", "socket_owner, socket_group and socket_mode apply to a socket vmqd listens on (mode server), not to a client")
	}
	if vm.SocketMode == 0 {
		vm.SocketMode = DefaultSocketMode
	}
	switch {
	case vm.SocketMode&^0o777 != 0:
		errs.add(p+".socket_mode", "%s is not a permission mode", vm.SocketMode)
	case vm.SocketMode&0o600 != 0o600:
		errs.add(p+".socket_mode", "%s must give the owner read and write (vmqd owns the socket)", vm.SocketMode)
	}
	if vm.AllowedUIDs != nil && len(vm.AllowedUIDs) == 0 {
		errs.add(p+".allowed_uids", "is empty: it would refuse every guest; omit it to accept any uid")
	}
}

// sameVM reports whether two VMs are configured alike, limits aside (a
// limit changes live, anything else needs the VM re-added).
func sameVM(a, b VMConfig) bool {
	a.Limits, b.Limits = Limits{}, Limits{}
	return reflect.DeepEqual(a, b) // nil and empty allowed_uids differ, as they should
}
