package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/internal/cpuset"
)

// ErrNotStarted is returned by VM changes before Start has reconciled the
// pinned state (an early API call must not take a pinned VM's slot).
var ErrNotStarted = errors.New("control plane not started")

// Options tune a Controller.
type Options struct {
	Logger *slog.Logger // default slog.Default()
	MaxVMs int          // default MaxVMs
}

// Controller is the NetVSP: it owns the VM registry, slot allocation and
// the filter table, and drives the dataplane. Safe for concurrent use;
// changes are serialized, reads (List, Get, Status, Snapshot) never wait
// for a change in progress.
type Controller struct {
	opMu sync.Mutex // serializes Start, AddVM, RemoveVM, Reload, Shutdown

	mu             sync.RWMutex // guards the fields below
	cfg            *Config
	restartPending []string
	started        bool
	startedAt      time.Time

	reg    *Registry
	dp     Dataplane
	ft     FilterTable
	log    *slog.Logger
	maxVMs int
}

// NewController makes a controller for a validated config. Call Start
// before serving the API.
func NewController(cfg *Config, dp Dataplane, ft FilterTable, opts Options) (*Controller, error) {
	if cfg == nil || dp == nil || ft == nil {
		return nil, errors.New("new controller: config, dataplane and filter table are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new controller: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxVMs <= 0 {
		opts.MaxVMs = MaxVMs
	}
	return &Controller{
		cfg: cfg, reg: NewRegistry(opts.MaxVMs), dp: dp, ft: ft,
		log: opts.Logger, maxVMs: opts.MaxVMs,
	}, nil
}

// Start reconciles the pinned filter table with the config and adds the
// configured VMs: entries of configured VMs keep their slot, stale ones
// are deleted before any slot is reused, missing ones are set once their
// VM is in the dataplane. A VM that fails is logged, left out, and
// reported in the joined error; the others run.
func (c *Controller) Start(ctx context.Context) (*ReconcilePlan, error) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	c.mu.RLock()
	cfg, started := c.cfg, c.started
	c.mu.RUnlock()
	if started {
		return nil, errors.New("start: already started")
	}
	pinned, err := c.ft.Filters()
	if err != nil {
		return nil, fmt.Errorf("start: read pinned filter table: %w", err)
	}
	persisted, perr := c.loadPersisted(cfg)
	all := append(slices.Clone(cfg.VMs), persisted...)
	plan, err := PlanReconcile(all, pinned, c.maxVMs)
	if err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	if err := plan.deleteStale(c.ft); err != nil {
		return plan, fmt.Errorf("start: clear stale filters: %w", err)
	}
	c.log.Info("reconciled pinned filters", "kept", len(plan.Keep), "stale", len(plan.Stale),
		"moved", len(plan.Moved), "to_add", len(plan.Add))

	errs := []error{perr}
	for _, vm := range cfg.VMs {
		_, kept := plan.Keep[vm.Key()]
		if _, err := c.addLocked(ctx, vm, SourceConfig, plan.Slots[vm.Name], kept); err != nil {
			errs = append(errs, err)
		}
	}
	// The API's ports come back as they were: same slot, same filter.
	for _, vm := range persisted {
		_, kept := plan.Keep[vm.Key()]
		if _, err := c.addLocked(ctx, vm, SourceAPI, plan.Slots[vm.Name], kept); err != nil {
			errs = append(errs, err)
		}
	}
	if len(persisted) > 0 {
		c.log.Info("restored VMs added over the API", "vms", len(persisted), "state_file", cfg.StateFile)
	}
	c.mu.Lock()
	c.started, c.startedAt = true, time.Now()
	c.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return plan, fmt.Errorf("start: %w", err)
	}
	return plan, nil
}

// addLocked reserves a slot, adds the VM to the dataplane, then points
// its filter at the slot (skipped when the pinned entry is already
// right). On failure everything it did is undone.
func (c *Controller) addLocked(ctx context.Context, vm VMConfig, src Source, slot uint32, filterSet bool) (VMInfo, error) {
	info, err := c.reg.Reserve(vm, src, slot)
	if err != nil {
		return VMInfo{}, fmt.Errorf("add VM %q: %w", vm.Name, err)
	}
	hw := vm.HardwareAddr()
	vlan := uint16(vm.VLAN)
	fail := func(err error) (VMInfo, error) {
		if filterSet {
			// A pinned entry must not outlive its VM: the slot is free now.
			if derr := c.ft.DeleteFilter(hw, vlan); derr != nil {
				err = errors.Join(err, fmt.Errorf("delete filter %s: %w", vm.Key(), derr))
			}
		}
		c.reg.Release(vm.Name)
		c.log.Error("add VM failed", "vm", vm.Name, "slot", info.Slot, "err", err)
		return VMInfo{}, err
	}
	if err := c.dp.AddVM(ctx, VMSpec{VMConfig: vm, Slot: info.Slot}); err != nil {
		return fail(fmt.Errorf("add VM %q to the dataplane: %w", vm.Name, err))
	}
	if !filterSet {
		if err := c.ft.SetFilter(hw, vlan, info.Slot); err != nil {
			if rerr := c.dp.RemoveVM(ctx, vm.Name); rerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: remove from dataplane: %w", rerr))
			}
			return fail(fmt.Errorf("add VM %q: set filter %s → slot %d: %w", vm.Name, vm.Key(), info.Slot, err))
		}
	}
	c.reg.SetState(vm.Name, StateRunning, nil)
	c.log.Info("VM added", "vm", vm.Name, "slot", info.Slot, "mac", vm.MAC, "vlan", vm.VLAN,
		"socket", vm.Socket, "mode", vm.Mode, "queue_pairs", vm.QueuePairs, "source", src)
	info, _ = c.reg.Get(vm.Name)
	return info, nil
}

// removeLocked deletes the VM's filter (no new frame reaches the slot),
// removes it from the dataplane, and frees the slot. If the dataplane
// fails the VM stays registered as failed, its slot reserved.
func (c *Controller) removeLocked(ctx context.Context, name string) error {
	info, ok := c.reg.Get(name)
	if !ok {
		return fmt.Errorf("remove VM %q: %w", name, ErrNotFound)
	}
	c.reg.SetState(name, StateRemoving, nil)
	// A failed VM's filter went in the earlier attempt; bpf.Filter
	// reports a missing entry as an error, so don't delete twice.
	if info.State != StateFailed {
		if err := c.ft.DeleteFilter(info.HardwareAddr(), uint16(info.VLAN)); err != nil {
			err = fmt.Errorf("remove VM %q: delete filter %s: %w", name, info.Key(), err)
			c.reg.SetState(name, info.State, err)
			return err
		}
	}
	if err := c.dp.RemoveVM(ctx, name); err != nil {
		err = fmt.Errorf("remove VM %q from the dataplane: %w", name, err)
		c.reg.SetState(name, StateFailed, err)
		c.log.Error("remove VM failed", "vm", name, "slot", info.Slot, "err", err)
		return err
	}
	c.reg.Release(name)
	c.log.Info("VM removed", "vm", name, "slot", info.Slot)
	return nil
}

// checkNewVM validates a VM for the running config (NIC queues in use,
// the API socket).
func (c *Controller) checkNewVM(vm *VMConfig, field string) error {
	c.mu.RLock()
	queues, apiSock := len(c.cfg.Queues), c.cfg.API.Socket
	c.mu.RUnlock()
	errs := validateVM(vm, field, queues)
	if vm.Socket != "" && filepath.Clean(vm.Socket) == filepath.Clean(apiSock) {
		errs.add(field+".socket", "%q is the API socket", vm.Socket)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}

// AddVM validates and adds a VM at run time (the API). Other VMs are not
// touched. Empty Mode means server and zero QueuePairs means 1.
func (c *Controller) AddVM(ctx context.Context, vm VMConfig) (VMInfo, error) {
	if vm.Mode == "" {
		vm.Mode = ModeServer
	}
	if vm.QueuePairs == 0 {
		vm.QueuePairs = 1
	}
	if vm.SocketMode == 0 {
		vm.SocketMode = DefaultSocketMode
	}
	if vm.MaxGuestMemory == 0 {
		c.mu.RLock()
		vm.MaxGuestMemory = c.cfg.MaxGuestMemory
		c.mu.RUnlock()
	}
	if err := c.checkNewVM(&vm, "vm"); err != nil {
		return VMInfo{}, err
	}
	c.mu.RLock()
	allowed := c.cfg.API.AllowedVLANs
	c.mu.RUnlock()
	if err := checkAllowedVLAN(vm.VLAN, allowed, "vm.vlan"); err != nil {
		return VMInfo{}, err
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if !c.isStarted() {
		return VMInfo{}, ErrNotStarted
	}
	info, err := c.addLocked(ctx, vm, SourceAPI, 0, false)
	if err != nil {
		return VMInfo{}, err
	}
	// A port the caller was told exists must survive a restart: if it
	// cannot be persisted, it is not made.
	if err := c.persistLocked(); err != nil {
		if rerr := c.removeLocked(ctx, vm.Name); rerr != nil {
			err = errors.Join(err, fmt.Errorf("undo: %w", rerr))
		}
		return VMInfo{}, fmt.Errorf("add VM %q: %w", vm.Name, err)
	}
	return info, nil
}

// checkAllowedVLAN enforces api.allowed_vlans on a VM added over the API.
func checkAllowedVLAN(vlan int, allowed []int, field string) error {
	if len(allowed) == 0 || slices.Contains(allowed, vlan) {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalid, &FieldError{Field: field,
		Msg: fmt.Sprintf("VLAN %d is not allowed on this node (api.allowed_vlans: %v)", vlan, allowed)})
}

// persistLocked writes the VMs added over the API to the state file.
func (c *Controller) persistLocked() error {
	c.mu.RLock()
	path := c.cfg.StateFile
	c.mu.RUnlock()
	if path == "" {
		return nil
	}
	var vms []VMConfig
	for _, info := range c.reg.List() {
		if info.Source == SourceAPI {
			vms = append(vms, info.VMConfig)
		}
	}
	if err := SaveState(path, vms); err != nil {
		return fmt.Errorf("persist API VMs: %w", err)
	}
	return nil
}

// loadPersisted reads the state file and keeps the VMs that are still
// valid under cfg and clash with no config VM (the config wins). A file
// that cannot be read is moved aside, not overwritten by the next save.
func (c *Controller) loadPersisted(cfg *Config) ([]VMConfig, error) {
	if cfg.StateFile == "" {
		return nil, nil
	}
	vms, err := LoadState(cfg.StateFile)
	if err != nil {
		aside := cfg.StateFile + ".broken"
		if rerr := os.Rename(cfg.StateFile, aside); rerr != nil {
			err = errors.Join(err, fmt.Errorf("move it aside: %w", rerr))
		}
		c.log.Error("state file unreadable: moved aside, API VMs not restored", "state_file", cfg.StateFile, "moved_to", aside, "err", err)
		return nil, fmt.Errorf("restore API VMs: %w", err)
	}
	names, keys, socks := map[string]bool{}, map[FilterKey]bool{}, map[string]bool{filepath.Clean(cfg.API.Socket): true}
	for _, vm := range cfg.VMs {
		names[vm.Name], keys[vm.Key()], socks[filepath.Clean(vm.Socket)] = true, true, true
	}
	var out []VMConfig
	var errs []error
	for i, vm := range vms {
		f := fmt.Sprintf("state_file.vms[%d]", i)
		verrs := validateVM(&vm, f, len(cfg.Queues))
		if err := checkAllowedVLAN(vm.VLAN, cfg.API.AllowedVLANs, f+".vlan"); err != nil {
			verrs = append(verrs, &FieldError{Field: f + ".vlan", Msg: "not in api.allowed_vlans"})
		}
		if len(verrs) == 0 {
			switch {
			case names[vm.Name]:
				verrs.add(f+".name", "%q is taken (by the config or an earlier entry)", vm.Name)
			case keys[vm.Key()]:
				verrs.add(f+".mac", "%s on VLAN %d is taken", vm.MAC, vm.VLAN)
			case socks[filepath.Clean(vm.Socket)]:
				verrs.add(f+".socket", "%q is taken", vm.Socket)
			}
		}
		if len(verrs) > 0 {
			err := fmt.Errorf("restore API VM %q: %w", vm.Name, errors.Join(verrs...))
			c.log.Error("persisted VM not restored", "vm", vm.Name, "err", err)
			errs = append(errs, err)
			continue
		}
		names[vm.Name], keys[vm.Key()], socks[filepath.Clean(vm.Socket)] = true, true, true
		out = append(out, vm)
	}
	return out, errors.Join(errs...)
}

// SetLimits changes a running VM's QoS limits live (PATCH /v1/vms/{name}):
// the patch's fields replace the current ones, 0 clears a limit.
func (c *Controller) SetLimits(ctx context.Context, name string, patch LimitsPatch) (VMInfo, error) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if !c.isStarted() {
		return VMInfo{}, ErrNotStarted
	}
	info, err := c.setLimitsLocked(name, patch.Apply)
	if err != nil || info.Source != SourceAPI {
		return info, err
	}
	if err := c.persistLocked(); err != nil {
		return info, fmt.Errorf("set limits of VM %q: applied, but %w", name, err)
	}
	return info, nil
}

func (c *Controller) setLimitsLocked(name string, change func(Limits) Limits) (VMInfo, error) {
	info, ok := c.reg.Get(name)
	if !ok {
		return VMInfo{}, fmt.Errorf("set limits of VM %q: %w", name, ErrNotFound)
	}
	l := change(info.Limits)
	if err := c.dp.SetLimits(name, l.Dataplane()); err != nil {
		return VMInfo{}, fmt.Errorf("set limits of VM %q: %w", name, err)
	}
	c.reg.SetLimits(name, l)
	c.log.Info("VM limits set", "vm", name, "rx_pps", l.RxPPS, "rx_bps", l.RxBPS, "tx_pps", l.TxPPS, "tx_bps", l.TxBPS, "flood_pps", l.Flood())
	info, _ = c.reg.Get(name)
	return info, nil
}

// RemoveVM removes one VM; others are not touched.
func (c *Controller) RemoveVM(ctx context.Context, name string) error {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if !c.isStarted() {
		return ErrNotStarted
	}
	info, _ := c.reg.Get(name)
	if err := c.removeLocked(ctx, name); err != nil {
		return err
	}
	if info.Source == SourceAPI {
		if err := c.persistLocked(); err != nil {
			return fmt.Errorf("remove VM %q: removed, but it comes back after a restart: %w", name, err)
		}
	}
	return nil
}

func (c *Controller) isStarted() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.started
}

// VM returns one VM's registry entry.
func (c *Controller) VM(name string) (VMInfo, bool) { return c.reg.Get(name) }

// VMs lists the VMs sorted by name.
func (c *Controller) VMs() []VMInfo { return c.reg.List() }

// Snapshot is the dataplane's counters now.
func (c *Controller) Snapshot() dataplane.Snapshot { return c.dp.Snapshot() }

// Config returns the running config (NIC-level fields as started; VMs as
// last loaded). The caller must not modify it.
func (c *Controller) Config() *Config {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cfg
}

// Reload applies a new validated config: VMs removed, changed (remove +
// add, keeping the slot when possible) and added; NIC-level changes are
// reported in plan.Restart and not applied. The running state it diffs
// against is the config's NIC settings plus the registry's config VMs,
// so a config VM removed over the API comes back. VMs added over the API
// are left alone; a new config that clashes with one (name, MAC+VLAN,
// socket) or asks for more queue pairs than the running NIC queues is
// rejected and nothing changes.
func (c *Controller) Reload(ctx context.Context, next *Config) (*ReloadPlan, error) {
	if err := next.Validate(); err != nil {
		return nil, fmt.Errorf("reload: new config is invalid, nothing changed: %w", err)
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if !c.isStarted() {
		return nil, ErrNotStarted
	}
	c.mu.RLock()
	running := *c.cfg
	c.mu.RUnlock()

	running.VMs = nil
	oldSlots := map[string]uint32{}
	var clash []error
	apiVMs := map[string]VMInfo{}
	for _, info := range c.reg.List() {
		oldSlots[info.Name] = info.Slot
		if info.Source == SourceConfig {
			running.VMs = append(running.VMs, info.VMConfig)
		} else {
			apiVMs[info.Name] = info
		}
	}
	for i, vm := range next.VMs {
		f := fmt.Sprintf("vms[%d]", i)
		if vm.QueuePairs > len(running.Queues) {
			clash = append(clash, &FieldError{f + ".queue_pairs", fmt.Sprintf("%d is more than the %d NIC queues running (a queue change needs a restart)", vm.QueuePairs, len(running.Queues))})
		}
		for _, a := range apiVMs {
			switch {
			case a.Name == vm.Name:
				clash = append(clash, &FieldError{f + ".name", fmt.Sprintf("%q is a VM added over the API; remove it first", vm.Name)})
			case a.Key() == vm.Key():
				clash = append(clash, &FieldError{f + ".mac", fmt.Sprintf("%s on VLAN %d is VM %q's (added over the API)", vm.MAC, vm.VLAN, a.Name)})
			case filepath.Clean(a.Socket) == filepath.Clean(vm.Socket):
				clash = append(clash, &FieldError{f + ".socket", fmt.Sprintf("%q is VM %q's (added over the API)", vm.Socket, a.Name)})
			}
		}
		if filepath.Clean(vm.Socket) == filepath.Clean(running.API.Socket) {
			clash = append(clash, &FieldError{f + ".socket", fmt.Sprintf("%q is the running API socket", vm.Socket)})
		}
	}
	if err := errors.Join(clash...); err != nil {
		return nil, fmt.Errorf("reload: nothing changed: %w", err)
	}

	plan := DiffConfig(&running, next)
	var errs []error
	for _, name := range plan.Remove {
		errs = append(errs, c.removeLocked(ctx, name))
	}
	for _, vm := range plan.Change {
		errs = append(errs, c.removeLocked(ctx, vm.Name))
	}
	// Removals first, so a MAC or socket can move between VMs.
	for _, vm := range plan.Change {
		_, err := c.addLocked(ctx, vm, SourceConfig, oldSlots[vm.Name], false)
		errs = append(errs, err)
	}
	for _, vm := range plan.Add {
		_, err := c.addLocked(ctx, vm, SourceConfig, 0, false)
		errs = append(errs, err)
	}
	for _, vm := range plan.Limits {
		_, err := c.setLimitsLocked(vm.Name, func(Limits) Limits { return vm.Limits })
		errs = append(errs, err)
	}

	applied := *next
	applied.NIC, applied.AttachMode, applied.Queues = running.NIC, running.AttachMode, running.Queues
	applied.FrameSize, applied.PinDir, applied.API = running.FrameSize, running.PinDir, running.API
	applied.Metrics, applied.Polling = running.Metrics, running.Polling
	applied.StateFile = running.StateFile
	c.mu.Lock()
	c.cfg = &applied
	c.restartPending = plan.Restart
	c.mu.Unlock()
	for _, r := range plan.Restart {
		c.log.Warn("config change needs a restart", "change", r)
	}
	c.log.Info("config reloaded", "removed", len(plan.Remove), "changed", len(plan.Change),
		"added", len(plan.Add), "limits_changed", len(plan.Limits), "restart_pending", len(plan.Restart))
	if err := errors.Join(errs...); err != nil {
		return plan, fmt.Errorf("reload: %w", err)
	}
	return plan, nil
}

// Shutdown deletes the VMs' filter entries unless keep_steering_on_exit
// is set (then they stay pinned and the next start reuses their slots).
// Closing the dataplane is the daemon's job.
func (c *Controller) Shutdown(ctx context.Context) error {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	c.mu.RLock()
	keep := c.cfg.KeepSteeringOnExit
	c.mu.RUnlock()
	if keep {
		c.log.Info("keeping steering on exit", "vms", c.reg.Len())
		return nil
	}
	var errs []error
	for _, info := range c.reg.List() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := c.ft.DeleteFilter(info.HardwareAddr(), uint16(info.VLAN)); err != nil {
			errs = append(errs, fmt.Errorf("shutdown: delete filter of VM %q: %w", info.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Status is the daemon's state for `vmqctl status`.
type Status struct {
	NIC                dataplane.NICStatus     `json:"nic"`
	Workers            []dataplane.WorkerStats `json:"workers"`
	VMs                int                     `json:"vms"`
	VMsRunning         int                     `json:"vms_running"`
	SlotsMax           int                     `json:"slots_max"`
	StartedAt          time.Time               `json:"started_at"`
	KeepSteeringOnExit bool                    `json:"keep_steering_on_exit"`
	RestartPending     []string                `json:"restart_pending,omitempty"`
	// HousekeepingCPUs is where vmqd's threads other than the workers may
	// run (the answering thread's CPUs, as the kernel has them): the
	// housekeeping_cpus when placed. Each worker's are in Workers.
	HousekeepingCPUs string `json:"housekeeping_cpus"`
}

// Status reports the NIC, workers and VM counts.
func (c *Controller) Status() Status {
	snap := c.dp.Snapshot()
	vms := c.reg.List()
	running := 0
	for _, v := range vms {
		if v.State == StateRunning {
			running++
		}
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return Status{
		NIC: snap.NIC, Workers: snap.Workers, VMs: len(vms), VMsRunning: running,
		SlotsMax: c.maxVMs, StartedAt: c.startedAt,
		KeepSteeringOnExit: c.cfg.KeepSteeringOnExit,
		RestartPending:     append([]string(nil), c.restartPending...),
		HousekeepingCPUs:   housekeepingCPUs(),
	}
}

// housekeepingCPUs is the calling thread's CPUs: a goroutine other than a
// worker's never runs on a worker's locked thread, and every other thread
// has the housekeeping mask (dataplane.placeHousekeeping).
func housekeepingCPUs() string {
	cpus, err := cpuset.ThreadCPUs(0)
	if err != nil {
		return ""
	}
	return cpuset.Format(cpus)
}

// VMDetail is one VM with its counters, for `vmqctl vm show`.
type VMDetail struct {
	VMInfo
	Stats   *dataplane.VMStats      `json:"stats,omitempty"`
	Port    *dataplane.PortStats    `json:"port,omitempty"`
	Sockets []dataplane.SocketStats `json:"sockets,omitempty"`
}

// Detail returns a VM with its dataplane counters.
func (c *Controller) Detail(name string) (VMDetail, bool) {
	info, ok := c.reg.Get(name)
	if !ok {
		return VMDetail{}, false
	}
	d := VMDetail{VMInfo: info}
	snap := c.dp.Snapshot()
	for i := range snap.VMs {
		if snap.VMs[i].Name == name {
			d.Stats = &snap.VMs[i]
		}
	}
	for i := range snap.Ports {
		if snap.Ports[i].VM == name {
			d.Port = &snap.Ports[i]
		}
	}
	for _, s := range snap.Sockets {
		if s.VM == name {
			d.Sockets = append(d.Sockets, s)
		}
	}
	return d, true
}
