package bpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Limits on Config. The XSKMAP holds (MaxVMs+1)*MaxQueues entries.
const (
	MaxVMsLimit    = 65535
	MaxQueuesLimit = 1024
	maxSockets     = 1 << 20
	// MaxVLAN is the highest VLAN id a filter may name (4095 is reserved).
	MaxVLAN = 4094
)

// Pin names under Config.PinDir.
const (
	LinkPinName = "link"
)

var mapNames = []string{filterMapFilters, filterMapXsks, filterMapConfig, filterMapVmStats, filterMapGlobalStats, filterMapPending}

// ErrNotFound is returned (wrapped) when deleting a filter that does not exist.
var ErrNotFound = errors.New("not found")

// Action is what the program does with a frame it cannot steer.
type Action uint32

const (
	// Drop the frame (XDP_DROP). The zero value, so a zero Config is strict.
	Drop Action = iota
	// Pass the frame to the host stack (XDP_PASS).
	Pass
)

func (a Action) String() string {
	switch a {
	case Drop:
		return "drop"
	case Pass:
		return "pass"
	}
	return fmt.Sprintf("Action(%d)", uint32(a))
}

func (a Action) xdp() (uint32, error) {
	switch a {
	case Drop:
		return uint32(VerdictDrop), nil
	case Pass:
		return uint32(VerdictPass), nil
	}
	return 0, fmt.Errorf("invalid action %d (want Drop or Pass)", uint32(a))
}

// AttachMode is how the XDP program is attached to an interface.
type AttachMode int

const (
	// Auto tries native (driver) mode, then generic mode.
	Auto AttachMode = iota
	// Native is driver mode (XDP_FLAGS_DRV_MODE).
	Native
	// Generic is SKB mode (XDP_FLAGS_SKB_MODE), slower, works everywhere.
	Generic
)

func (m AttachMode) String() string {
	switch m {
	case Auto:
		return "auto"
	case Native:
		return "native"
	case Generic:
		return "generic"
	}
	return fmt.Sprintf("AttachMode(%d)", int(m))
}

// Config shapes a Filter. MaxVMs, MaxQueues and MaxFilters fix the sizes
// of the maps: a pinned set of maps is only reused by a Config of the same
// shape.
type Config struct {
	// MaxVMs is the number of VM slots; slots are 1..MaxVMs.
	MaxVMs int
	// MaxQueues is the number of NIC rx queues the XSKMAP has room for.
	// Frames arriving on a higher queue cannot be steered (BadQueue).
	MaxQueues int
	// MaxFilters is the size of the (MAC, VLAN) table; 0 means 4*MaxVMs
	// (at least 64).
	MaxFilters int
	// PinDir is a directory on bpffs where the maps and the XDP link are
	// pinned, typically DefaultPinDir(ifname). Empty means nothing is
	// pinned: the maps and the attachment live as long as the Filter.
	PinDir string
	// Malformed is the action for runt frames and truncated VLAN tags.
	Malformed Action
	// NoSocket is the action for a frame that matched a VM filter but has
	// no socket for its rx queue (also for BadQueue and BadSlot frames).
	NoSocket Action
}

// DefaultPinDir is the conventional pin directory for an interface.
func DefaultPinDir(ifname string) string {
	return filepath.Join("/sys/fs/bpf/vmq", ifname)
}

func (c *Config) validate() error {
	if c.MaxVMs < 1 || c.MaxVMs > MaxVMsLimit {
		return fmt.Errorf("MaxVMs %d out of range 1..%d", c.MaxVMs, MaxVMsLimit)
	}
	if c.MaxQueues < 1 || c.MaxQueues > MaxQueuesLimit {
		return fmt.Errorf("MaxQueues %d out of range 1..%d", c.MaxQueues, MaxQueuesLimit)
	}
	if (c.MaxVMs+1)*c.MaxQueues > maxSockets {
		return fmt.Errorf("(MaxVMs+1)*MaxQueues = %d exceeds %d XSKMAP entries", (c.MaxVMs+1)*c.MaxQueues, maxSockets)
	}
	if c.MaxFilters == 0 {
		c.MaxFilters = max(4*c.MaxVMs, 64)
	}
	if c.MaxFilters < 1 || c.MaxFilters > 1<<20 {
		return fmt.Errorf("MaxFilters %d out of range 1..%d", c.MaxFilters, 1<<20)
	}
	if _, err := c.Malformed.xdp(); err != nil {
		return fmt.Errorf("Malformed: %w", err)
	}
	if _, err := c.NoSocket.xdp(); err != nil {
		return fmt.Errorf("NoSocket: %w", err)
	}
	return nil
}

// Filter is a loaded VMQ filter program with its maps. Its methods may be
// called from several goroutines (each is one or a few bpf syscalls), but
// Attach, Detach, Close and Unpin must not race each other.
type Filter struct {
	cfg     Config
	objs    filterObjects
	link    link.Link // nil when not attached
	ifindex int
	mode    AttachMode
}

// Load loads the XDP program and creates its maps, or reuses the maps
// pinned in cfg.PinDir when their shape matches cfg. A link pinned there by
// an earlier Filter is picked up too: Attach on the same interface then
// replaces the program atomically, Detach removes it.
func Load(cfg Config) (*Filter, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("vmq filter config: %w", err)
	}
	spec, err := loadFilter()
	if err != nil {
		return nil, err
	}
	spec.Maps[filterMapFilters].MaxEntries = uint32(cfg.MaxFilters)
	spec.Maps[filterMapXsks].MaxEntries = uint32((cfg.MaxVMs + 1) * cfg.MaxQueues)
	spec.Maps[filterMapVmStats].MaxEntries = uint32(cfg.MaxVMs + 1)
	spec.Maps[filterMapPending].MaxEntries = uint32(PendingWords(cfg.MaxVMs) * cfg.MaxQueues)
	if err := spec.Variables[filterVarMaxQueues].Set(uint32(cfg.MaxQueues)); err != nil {
		return nil, fmt.Errorf("set max_queues: %w", err)
	}
	if err := spec.Variables[filterVarMaxVms].Set(uint32(cfg.MaxVMs)); err != nil {
		return nil, fmt.Errorf("set max_vms: %w", err)
	}
	opts := &ebpf.CollectionOptions{}
	if cfg.PinDir == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	} else {
		if err := preparePinDir(cfg.PinDir); err != nil {
			return nil, err
		}
		opts.Maps.PinPath = cfg.PinDir
	}

	f := &Filter{cfg: cfg}
	if err := spec.LoadAndAssign(&f.objs, opts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("maps pinned in %s do not match MaxVMs=%d MaxQueues=%d MaxFilters=%d (use the old shape, or Unpin them): %w",
				cfg.PinDir, cfg.MaxVMs, cfg.MaxQueues, cfg.MaxFilters, err)
		}
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load vmq filter: %+v", verr)
		}
		return nil, fmt.Errorf("load vmq filter: %w", err)
	}
	if err := f.SetActions(cfg.Malformed, cfg.NoSocket); err != nil {
		f.objs.Close()
		return nil, err
	}
	if cfg.PinDir != "" {
		if err := f.loadPinnedLink(); err != nil {
			f.objs.Close()
			return nil, err
		}
	}
	return f, nil
}

func preparePinDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin dir %s: %w", dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs pin dir %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin dir %s is not on bpffs (mount it: mount -t bpf bpf /sys/fs/bpf; note `ip netns exec` hides the host's /sys/fs/bpf)", dir)
	}
	return nil
}

func (f *Filter) loadPinnedLink() error {
	path := filepath.Join(f.cfg.PinDir, LinkPinName)
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load pinned XDP link %s: %w", path, err)
	}
	info, err := l.Info()
	if err != nil || info.XDP() == nil {
		l.Close()
		return fmt.Errorf("pinned link %s: not an XDP link (info: %v)", path, err)
	}
	f.link = l
	f.ifindex = int(info.XDP().Ifindex)
	f.mode = currentMode(f.ifindex)
	return nil
}

// currentMode asks netlink how XDP is attached to ifindex; Auto if unknown.
func currentMode(ifindex int) AttachMode {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil || l.Attrs().Xdp == nil {
		return Auto
	}
	switch l.Attrs().Xdp.AttachMode {
	case xdpAttachedDrv:
		return Native
	case xdpAttachedSKB:
		return Generic
	}
	return Auto
}

// Values of IFLA_XDP_ATTACHED.
const (
	xdpAttachedDrv = 1
	xdpAttachedSKB = 2
)

func ifDesc(ifindex int) string {
	if ifi, err := net.InterfaceByIndex(ifindex); err == nil {
		return fmt.Sprintf("%s (ifindex %d)", ifi.Name, ifindex)
	}
	return fmt.Sprintf("ifindex %d", ifindex)
}

// Config returns the configuration the Filter was loaded with (defaults
// filled in).
func (f *Filter) Config() Config { return f.cfg }

// Program is the XDP program, e.g. for BPF_PROG_RUN in tests and
// generators.
func (f *Filter) Program() *ebpf.Program { return f.objs.VmqFilter }

// Attached reports the interface the program is attached to (0 if none)
// and the mode (Auto when it was found pinned and netlink did not say).
func (f *Filter) Attached() (ifindex int, mode AttachMode) {
	if f.link == nil {
		return 0, Auto
	}
	return f.ifindex, f.mode
}

// Attach attaches the program to an interface of the calling thread's
// network namespace and returns the mode it got. If this Filter already
// holds a link on that interface (possibly a pinned one from an earlier
// daemon), the program is replaced in place without a gap in steering.
// With a PinDir the link is pinned, so the program stays attached after
// Close.
func (f *Filter) Attach(ifindex int, mode AttachMode) (AttachMode, error) {
	if f.link != nil {
		if f.ifindex != ifindex {
			return 0, fmt.Errorf("attach vmq filter to %s: already attached to %s, detach first", ifDesc(ifindex), ifDesc(f.ifindex))
		}
		if mode == Auto || mode == f.mode {
			if err := f.link.Update(f.objs.VmqFilter); err != nil {
				return 0, fmt.Errorf("replace vmq filter on %s: %w", ifDesc(ifindex), err)
			}
			return f.mode, nil
		}
		// A different mode needs a new attachment.
		if err := f.Detach(); err != nil {
			return 0, err
		}
	}
	var l link.Link
	var err error
	got := mode
	switch mode {
	case Native:
		l, err = f.attach(ifindex, link.XDPDriverMode)
	case Generic:
		l, err = f.attach(ifindex, link.XDPGenericMode)
	case Auto:
		got = Native
		l, err = f.attach(ifindex, link.XDPDriverMode)
		// Busy means another XDP program holds the interface: stacking a
		// generic one beside it would hide the conflict.
		if err != nil && !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.EEXIST) {
			nerr := err
			got = Generic
			l, err = f.attach(ifindex, link.XDPGenericMode)
			if err != nil {
				err = fmt.Errorf("native: %v; generic: %w", nerr, err)
			}
		}
	default:
		return 0, fmt.Errorf("attach vmq filter to %s: invalid mode %d", ifDesc(ifindex), int(mode))
	}
	if err != nil {
		return 0, fmt.Errorf("attach vmq filter to %s in %s mode: %w", ifDesc(ifindex), mode, err)
	}
	if f.cfg.PinDir != "" {
		path := filepath.Join(f.cfg.PinDir, LinkPinName)
		if err := l.Pin(path); err != nil {
			l.Close()
			return 0, fmt.Errorf("pin XDP link of %s at %s: %w", ifDesc(ifindex), path, err)
		}
	}
	f.link, f.ifindex, f.mode = l, ifindex, got
	return got, nil
}

func (f *Filter) attach(ifindex int, flags link.XDPAttachFlags) (link.Link, error) {
	return link.AttachXDP(link.XDPOptions{Program: f.objs.VmqFilter, Interface: ifindex, Flags: flags})
}

// Detach removes the program from its interface, pinned link included.
// It is a no-op when not attached.
func (f *Filter) Detach() error {
	if f.link == nil {
		return nil
	}
	l, ifindex := f.link, f.ifindex
	f.link, f.ifindex, f.mode = nil, 0, Auto
	if f.cfg.PinDir != "" {
		if err := l.Unpin(); err != nil {
			l.Close()
			return fmt.Errorf("unpin XDP link of %s: %w", ifDesc(ifindex), err)
		}
	}
	if err := l.Close(); err != nil {
		return fmt.Errorf("detach vmq filter from %s: %w", ifDesc(ifindex), err)
	}
	return nil
}

// Close releases the Filter's file descriptors. Pinned maps and a pinned
// link stay: the program keeps steering until a later Filter detaches it.
// Without a PinDir, Close detaches the program.
func (f *Filter) Close() error {
	var errs []error
	if f.link != nil {
		errs = append(errs, f.link.Close())
		f.link = nil
	}
	errs = append(errs, f.objs.Close())
	return errors.Join(errs...)
}

// Unpin removes the pinned maps and link and the pin directory if it is
// then empty. The program stays attached until the Filter is closed or
// detached.
func (f *Filter) Unpin() error {
	if f.cfg.PinDir == "" {
		return nil
	}
	var errs []error
	if f.link != nil {
		if err := f.link.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin XDP link: %w", err))
		}
	}
	ms := []*ebpf.Map{f.objs.Filters, f.objs.Xsks, f.objs.Config, f.objs.VmStats, f.objs.GlobalStats, f.objs.Pending}
	for i, m := range ms {
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin map %s: %w", mapNames[i], err))
		}
	}
	if err := os.Remove(f.cfg.PinDir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
		errs = append(errs, fmt.Errorf("remove pin dir %s: %w", f.cfg.PinDir, err))
	}
	return errors.Join(errs...)
}

// SetActions changes, at run time, what happens to malformed frames and to
// VM frames without a socket.
func (f *Filter) SetActions(malformed, noSocket Action) error {
	m, err := malformed.xdp()
	if err != nil {
		return fmt.Errorf("set malformed action: %w", err)
	}
	n, err := noSocket.xdp()
	if err != nil {
		return fmt.Errorf("set no-socket action: %w", err)
	}
	v := filterFilterConfig{MalformedAction: m, NoSocketAction: n}
	if err := f.objs.Config.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("write config map: %w", err)
	}
	f.cfg.Malformed, f.cfg.NoSocket = malformed, noSocket
	return nil
}

// Key is a filter key: a unicast destination MAC and a VLAN id
// (0 = untagged or priority-tagged).
type Key struct {
	MAC  [6]byte
	VLAN uint16
}

func (k Key) String() string {
	return fmt.Sprintf("%s vlan %d", net.HardwareAddr(k.MAC[:]), k.VLAN)
}

func makeKey(mac net.HardwareAddr, vlan uint16) (Key, error) {
	var k Key
	if len(mac) != 6 {
		return k, fmt.Errorf("MAC %q is not 6 bytes", mac)
	}
	if mac[0]&1 != 0 {
		return k, fmt.Errorf("MAC %s is a group address: broadcast and multicast go to the flood socket", mac)
	}
	if vlan > MaxVLAN {
		return k, fmt.Errorf("VLAN %d out of range 0..%d", vlan, MaxVLAN)
	}
	copy(k.MAC[:], mac)
	k.VLAN = vlan
	return k, nil
}

func (k Key) raw() filterFilterKey { return filterFilterKey{Mac: k.MAC, Vlan: k.VLAN} }

// SetFilter steers frames for (mac, vlan) to a VM slot (1..MaxVMs),
// replacing any earlier slot for that key.
func (f *Filter) SetFilter(mac net.HardwareAddr, vlan uint16, slot uint32) error {
	k, err := makeKey(mac, vlan)
	if err != nil {
		return fmt.Errorf("set filter: %w", err)
	}
	if slot < 1 || slot > uint32(f.cfg.MaxVMs) {
		return fmt.Errorf("set filter %s: slot %d out of range 1..%d", k, slot, f.cfg.MaxVMs)
	}
	if err := f.objs.Filters.Put(k.raw(), slot); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("set filter %s: table full (%d entries): %w", k, f.cfg.MaxFilters, err)
		}
		return fmt.Errorf("set filter %s: %w", k, err)
	}
	return nil
}

// DeleteFilter removes a filter; the error wraps ErrNotFound if there was none.
func (f *Filter) DeleteFilter(mac net.HardwareAddr, vlan uint16) error {
	k, err := makeKey(mac, vlan)
	if err != nil {
		return fmt.Errorf("delete filter: %w", err)
	}
	if err := f.objs.Filters.Delete(k.raw()); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete filter %s: %w", k, ErrNotFound)
		}
		return fmt.Errorf("delete filter %s: %w", k, err)
	}
	return nil
}

// Filters returns every filter and its slot.
func (f *Filter) Filters() (map[Key]uint32, error) {
	out := make(map[Key]uint32)
	var k filterFilterKey
	var slot uint32
	it := f.objs.Filters.Iterate()
	for it.Next(&k, &slot) {
		out[Key{MAC: k.Mac, VLAN: k.Vlan}] = slot
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list filters: %w", err)
	}
	return out, nil
}

// SocketIndex is the XSKMAP index of (slot, queue); slot 0 is the flood
// socket.
func (f *Filter) SocketIndex(slot, queue uint32) (uint32, error) {
	if slot > uint32(f.cfg.MaxVMs) {
		return 0, fmt.Errorf("slot %d out of range 0..%d", slot, f.cfg.MaxVMs)
	}
	if queue >= uint32(f.cfg.MaxQueues) {
		return 0, fmt.Errorf("queue %d out of range 0..%d", queue, f.cfg.MaxQueues-1)
	}
	return slot*uint32(f.cfg.MaxQueues) + queue, nil
}

// RegisterSocket puts a bound AF_XDP socket in the XSKMAP as VM slot's
// socket for NIC queue (the socket must be bound to that queue, or the
// kernel drops what is redirected to it). The map holds its own reference;
// closing the socket removes it from the map.
func (f *Filter) RegisterSocket(slot, queue uint32, fd int) error {
	if slot == 0 {
		return fmt.Errorf("register socket: slot 0 is the flood socket, use RegisterFlood")
	}
	return f.putSocket(slot, queue, fd)
}

// UnregisterSocket removes VM slot's socket for queue; no error if absent.
func (f *Filter) UnregisterSocket(slot, queue uint32) error {
	if slot == 0 {
		return fmt.Errorf("unregister socket: slot 0 is the flood socket, use UnregisterFlood")
	}
	return f.deleteSocket(slot, queue)
}

// RegisterFlood sets the switch's flood socket for queue: broadcast and
// multicast frames arriving on that queue are redirected to it.
func (f *Filter) RegisterFlood(queue uint32, fd int) error { return f.putSocket(0, queue, fd) }

// UnregisterFlood removes the flood socket of queue; no error if absent.
func (f *Filter) UnregisterFlood(queue uint32) error { return f.deleteSocket(0, queue) }

func (f *Filter) putSocket(slot, queue uint32, fd int) error {
	idx, err := f.SocketIndex(slot, queue)
	if err != nil {
		return fmt.Errorf("register socket: %w", err)
	}
	if fd < 0 {
		return fmt.Errorf("register socket for slot %d queue %d: bad fd %d", slot, queue, fd)
	}
	if err := f.objs.Xsks.Put(idx, uint32(fd)); err != nil {
		return fmt.Errorf("register socket fd %d for slot %d queue %d (xsks[%d]): %w", fd, slot, queue, idx, err)
	}
	return nil
}

func (f *Filter) deleteSocket(slot, queue uint32) error {
	idx, err := f.SocketIndex(slot, queue)
	if err != nil {
		return fmt.Errorf("unregister socket: %w", err)
	}
	if err := f.objs.Xsks.Delete(idx); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unregister socket for slot %d queue %d (xsks[%d]): %w", slot, queue, idx, err)
	}
	return nil
}

// VMCounters are one VM slot's counters, summed over CPUs.
type VMCounters struct {
	Packets        uint64 // redirected to the VM's socket
	Bytes          uint64 // bytes of those frames
	RedirectErrors uint64 // matched the VM but found no socket (or a bad queue)
}

// GlobalCounters are the program's counters, summed over CPUs. Frames is
// the sum of the outcome counters Redirected..BadSlot; Dropped counts the
// frames among them the program dropped.
type GlobalCounters struct {
	Frames      uint64 // every frame seen
	Redirected  uint64 // to a VM socket
	Passed      uint64 // unicast without a filter: host stack
	Flooded     uint64 // broadcast/multicast to the flood socket
	FloodPassed uint64 // broadcast/multicast, no flood socket: host stack
	Malformed   uint64 // runt or truncated VLAN tag (Config.Malformed)
	NoSocket    uint64 // matched a VM, no socket for the queue (Config.NoSocket)
	BadQueue    uint64 // rx queue >= MaxQueues: cannot be steered
	BadSlot     uint64 // filter names a slot outside 1..MaxVMs
	Dropped     uint64 // XDP_DROP verdicts
}

// VMCounters returns a VM slot's counters (slot 1..MaxVMs).
func (f *Filter) VMCounters(slot uint32) (VMCounters, error) {
	if slot < 1 || slot > uint32(f.cfg.MaxVMs) {
		return VMCounters{}, fmt.Errorf("vm counters: slot %d out of range 1..%d", slot, f.cfg.MaxVMs)
	}
	var per []filterVmCounters
	if err := f.objs.VmStats.Lookup(slot, &per); err != nil {
		return VMCounters{}, fmt.Errorf("read counters of slot %d: %w", slot, err)
	}
	return sumVM(per), nil
}

// AllVMCounters returns the counters of every slot, indexed by slot
// (index 0 is unused and zero), in one pass.
func (f *Filter) AllVMCounters() ([]VMCounters, error) {
	out := make([]VMCounters, f.cfg.MaxVMs+1)
	var slot uint32
	var per []filterVmCounters
	it := f.objs.VmStats.Iterate()
	for it.Next(&slot, &per) {
		if int(slot) < len(out) && slot != 0 {
			out[slot] = sumVM(per)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read vm counters: %w", err)
	}
	return out, nil
}

func sumVM(per []filterVmCounters) VMCounters {
	var c VMCounters
	for _, p := range per {
		c.Packets += p.Packets
		c.Bytes += p.Bytes
		c.RedirectErrors += p.RedirectErrors
	}
	return c
}

// GlobalCounters returns the global counters.
func (f *Filter) GlobalCounters() (GlobalCounters, error) {
	var per []filterGlobalCounters
	if err := f.objs.GlobalStats.Lookup(uint32(0), &per); err != nil {
		return GlobalCounters{}, fmt.Errorf("read global counters: %w", err)
	}
	var c GlobalCounters
	for _, p := range per {
		c.Redirected += p.Redirected
		c.Passed += p.Passed
		c.Flooded += p.Flooded
		c.FloodPassed += p.FloodPassed
		c.Malformed += p.Malformed
		c.NoSocket += p.NoSocket
		c.BadQueue += p.BadQueue
		c.BadSlot += p.BadSlot
		c.Dropped += p.Dropped
	}
	// The program counts one outcome per frame, not frames too.
	c.Frames = c.Redirected + c.Passed + c.Flooded + c.FloodPassed + c.Malformed + c.NoSocket + c.BadQueue + c.BadSlot
	return c, nil
}
