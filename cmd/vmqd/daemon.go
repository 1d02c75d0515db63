package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/dataplane/nic"
	"github.com/vmq/vmq/dataplane/xsk"
	"github.com/vmq/vmq/metrics"
)

// daemon is a running vmqd: the XDP filter on the NIC, the dataplane, the
// control plane with its API, and the metrics endpoint.
type daemon struct {
	cfg    *control.Config
	log    *slog.Logger
	filter *bpf.Filter
	dp     *dataplane.Dataplane
	ctl    *control.Controller
	api    *control.Server
	apiLn  net.Listener
	nic    dataplane.NICStatus
	health *health

	metricsAddr  string // where /metrics listens, once started
	stopMetrics  context.CancelFunc
	metricsDone  chan struct{}
	servingAPI   chan struct{}
	stopped      bool
	keepSteering bool
}

type daemonOptions struct {
	cfg *control.Config
	log *slog.Logger
	// netns is the NIC's network namespace (nil: the daemon's own).
	netns *netns.NsHandle
	// metricsAddr overrides the config's metrics address ("-": off).
	metricsAddr string
}

// inNetns runs fn on a thread in the given namespace (or the current one).
func inNetns(h *netns.NsHandle, fn func() error) error {
	if h == nil {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread dies with the goroutine: never unlocked, never reused
		// in the wrong namespace.
		if err := netns.Set(*h); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func attachMode(s string) bpf.AttachMode {
	switch s {
	case control.AttachNative:
		return bpf.Native
	case control.AttachGeneric:
		return bpf.Generic
	}
	return bpf.Auto
}

// startDaemon brings vmqd up: filter loaded (reusing pinned maps) and
// attached, dataplane workers running, pinned steering reconciled with
// the config, the API and metrics serving. On error it undoes what it did.
func startDaemon(ctx context.Context, o daemonOptions) (_ *daemon, err error) {
	cfg := o.cfg
	d := &daemon{cfg: cfg, log: o.log, keepSteering: cfg.KeepSteeringOnExit,
		servingAPI: make(chan struct{})}
	defer func() {
		if err != nil {
			d.stop(context.Background())
		}
	}()

	var ifindex int
	err = inNetns(o.netns, func() error {
		ifc, err := net.InterfaceByName(cfg.NIC)
		if err != nil {
			return fmt.Errorf("find NIC %s: %w", cfg.NIC, err)
		}
		ifindex = ifc.Index
		d.nic = dataplane.NICStatus{Name: cfg.NIC, Index: ifc.Index, MTU: ifc.MTU, FrameSize: cfg.FrameSize}
		info, err := nic.Inspect(cfg.NIC)
		if err != nil {
			return err
		}
		d.nic.Driver, d.nic.Channels = info.Driver, info.Queues()
		problems := nic.Check(info, nic.Requirements{Queues: cfg.Queues, FrameSize: cfg.FrameSize,
			AttachMode: cfg.AttachMode, XSKMode: nic.ModeAuto, MultiBuffer: xsk.ProbeMultiBuffer() == nil})
		d.log.Info("NIC", "nic", info)
		for _, p := range problems {
			if p.Fatal {
				d.log.Error("NIC cannot do what the config asks", "field", p.Field, "problem", p.Message)
			} else {
				d.log.Info("NIC note", "field", p.Field, "note", p.Message)
				d.nic.Notes = append(d.nic.Notes, p.Message)
			}
		}
		if err := nic.Err(problems); err != nil {
			return fmt.Errorf("NIC %s: %w", cfg.NIC, err)
		}
		d.filter, err = bpf.Load(bpf.Config{
			MaxVMs: control.MaxVMs, MaxQueues: control.MaxQueues,
			PinDir: filepath.Join(cfg.PinDir, cfg.NIC),
		})
		if err != nil {
			return fmt.Errorf("load XDP filter for %s: %w", cfg.NIC, err)
		}
		mode, err := d.filter.Attach(ifc.Index, attachMode(cfg.AttachMode))
		if err != nil {
			return fmt.Errorf("attach XDP filter to %s: %w", cfg.NIC, err)
		}
		d.nic.AttachMode, d.nic.Attached = mode.String(), true
		if cfg.AttachMode == control.AttachAuto && mode == bpf.Generic {
			d.nic.Notes = append(d.nic.Notes, "native XDP failed on "+cfg.NIC+": running generic (slower, copies every frame)")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	d.log.Info("XDP filter attached", "nic", cfg.NIC, "ifindex", ifindex, "mode", d.nic.AttachMode,
		"pin_dir", filepath.Join(cfg.PinDir, cfg.NIC))

	var steer dataplane.Steerer // nil: the NIC's ntuple rules
	if cfg.DedicatedSteering == control.SteeringExternal {
		steer = dataplane.ExternalSteering{Log: d.log.Info}
	}
	place := cfg.CPUPlacement()
	for _, n := range place.Notes {
		d.log.Warn("CPU placement", "note", n)
	}
	d.dp, err = dataplane.New(dataplane.Config{
		WorkerCPUs: place.Workers, HousekeepingCPUs: place.Housekeeping,
		Ifindex: ifindex, Queues: cfg.Queues, Filter: d.filter,
		FrameSize: cfg.FrameSize, MTU: d.nic.MTU, XSKMode: xsk.ModeAuto, BusyPoll: cfg.Polling.BusyPoll,
		Netns: o.netns, NIC: d.nic, Logger: d.log, Steer: steer,
		TxPath: dataplane.TxPath(cfg.Tx.Path), XDPTxMinBatch: cfg.Tx.XDPMinBatch,
		Migrated: func(vm, socket string, client bool) {
			if d.ctl != nil {
				d.ctl.MigrationDone(vm, socket, client)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	d.log.Info("dataplane running", "queues", cfg.Queues, "frame_size", cfg.FrameSize)
	if d.health, err = newHealth(d, o.netns); err != nil {
		return nil, err
	}
	if cfg.StateFile == "" {
		d.log.Info("no state_file: VMs added over the API (CNI ports) will not survive a restart")
	}

	ft := filterTable{d.filter}
	d.ctl, err = control.NewController(cfg, dpAdapter{d}, ft, control.Options{Logger: d.log, MaxVMs: control.MaxVMs})
	if err != nil {
		return nil, err
	}
	if _, err := d.ctl.Start(ctx); err != nil {
		// Some VMs failed; the others run. Report, don't die.
		d.log.Error("not every configured VM started", "err", err)
	}
	// Flow rules a previous vmqd left for VMs that are gone.
	if err := d.dp.ReconcileSteering(); err != nil {
		d.log.Warn("reconcile dedicated-queue flow rules", "err", err)
	}

	if err := os.MkdirAll(filepath.Dir(cfg.API.Socket), 0o755); err != nil {
		return nil, fmt.Errorf("API socket directory: %w", err)
	}
	d.apiLn, err = control.ListenUnix(cfg.API.Socket, os.FileMode(cfg.API.Mode))
	if err != nil {
		return nil, fmt.Errorf("API on %s: %w", cfg.API.Socket, err)
	}
	d.api = control.NewServer(d.ctl, d.log)
	go func() {
		close(d.servingAPI)
		if err := d.api.Serve(d.apiLn); err != nil {
			d.log.Error("API server", "err", err)
		}
	}()
	d.log.Info("API listening", "socket", cfg.API.Socket)

	addr := cfg.Metrics.Address
	if o.metricsAddr != "" {
		addr = o.metricsAddr
	}
	if addr != "" && addr != "-" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("metrics on %s: %w", addr, err)
		}
		d.metricsAddr = ln.Addr().String()
		mctx, cancel := context.WithCancel(context.Background())
		d.stopMetrics, d.metricsDone = cancel, make(chan struct{})
		reg := metrics.NewRegistry(metrics.SourceFunc(d.snapshot))
		go func() {
			defer close(d.metricsDone)
			if err := metrics.ServeHandler(mctx, ln, metrics.MuxWithHealth(reg, d.health)); err != nil {
				d.log.Error("metrics server", "err", err)
			}
		}()
		d.log.Info("metrics listening", "address", "http://"+d.metricsAddr+metrics.Path,
			"healthz", metrics.HealthzPath, "readyz", metrics.ReadyzPath)
	}
	return d, nil
}

// snapshot is the dataplane's snapshot with the filter's live attach state.
func (d *daemon) snapshot() dataplane.Snapshot {
	s := d.dp.Snapshot()
	if ifindex, mode := d.filter.Attached(); ifindex == 0 {
		s.NIC.Attached, s.NIC.AttachMode = false, ""
	} else {
		s.NIC.Attached, s.NIC.AttachMode = true, mode.String()
	}
	return s
}

// reload applies a new config file (SIGHUP).
func (d *daemon) reload(ctx context.Context, path string) error {
	next, err := control.Load(path)
	if err != nil {
		return fmt.Errorf("reload %s: %w", path, err)
	}
	plan, err := d.ctl.Reload(ctx, next)
	if err != nil {
		return fmt.Errorf("reload %s: %w", path, err)
	}
	d.log.Info("config reloaded", "plan", plan)
	return nil
}

// stop shuts vmqd down. With keep-steering the XDP program and the pinned
// filters stay: VM frames wait for the next vmqd instead of reaching the
// host stack.
func (d *daemon) stop(ctx context.Context) error {
	if d.stopped {
		return nil
	}
	d.stopped = true
	var errs []error
	if d.api != nil {
		d.api.Shutdown(ctx)
	}
	if d.ctl != nil {
		if err := d.ctl.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if d.health != nil {
		d.health.stopSampling()
	}
	if d.dp != nil {
		if err := d.dp.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if d.stopMetrics != nil {
		d.stopMetrics()
		<-d.metricsDone
	}
	if d.health != nil {
		d.health.release()
	}
	if d.filter != nil {
		if !d.keepSteering {
			if err := d.filter.Detach(); err != nil {
				errs = append(errs, fmt.Errorf("detach XDP filter: %w", err))
			}
		}
		if err := d.filter.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	d.log.Info("vmqd stopped", "keep_steering", d.keepSteering)
	return errors.Join(errs...)
}

// dpAdapter is the dataplane as the control plane sees it.
type dpAdapter struct{ d *daemon }

func (a dpAdapter) AddVM(ctx context.Context, vm control.VMSpec) error {
	if vm.Mode != control.ModeClient {
		if err := os.MkdirAll(filepath.Dir(vm.Socket), 0o750); err != nil {
			return fmt.Errorf("socket directory of VM %q: %w", vm.Name, err)
		}
	}
	uid, err := vm.SocketOwner.UID()
	if err != nil {
		return fmt.Errorf("VM %q: socket_owner: %w", vm.Name, err)
	}
	gid, err := vm.SocketGroup.GID()
	if err != nil {
		return fmt.Errorf("VM %q: socket_group: %w", vm.Name, err)
	}
	return a.d.dp.AddVM(ctx, dataplane.VM{
		Name: vm.Name, Slot: vm.Slot, MAC: vm.HardwareAddr(), VLAN: uint16(vm.VLAN),
		Socket: vm.Socket, Client: vm.Mode == control.ModeClient,
		QueuePairs: vm.QueuePairs, AllowSpoofing: vm.AllowSpoofing, MTU: a.d.nic.MTU, NoOffloads: vm.NoOffloads,
		Limits: vm.Limits.Dataplane(), MaxMemory: uint64(vm.MaxGuestMemory),
		SocketOwner: uid, SocketGroup: gid, SocketMode: os.FileMode(vm.SocketMode),
		AllowedUIDs: vm.AllowedUIDs,
		Dedicated:   vm.DedicatedMode(), DedicatedQueue: vm.DedicatedQueue(),
		NoPackedRing: vm.NoPackedRing, NoInOrder: vm.NoInOrder,
	})
}

func (a dpAdapter) SetLimits(name string, l dataplane.Limits) error {
	return a.d.dp.SetLimits(name, l)
}

func (a dpAdapter) RemoveVM(ctx context.Context, name string) error {
	return a.d.dp.RemoveVM(ctx, name)
}

func (a dpAdapter) Snapshot() dataplane.Snapshot { return a.d.snapshot() }

func (a dpAdapter) PrepareMigration(ctx context.Context, name, socket string, client bool) error {
	if !client {
		if err := os.MkdirAll(filepath.Dir(socket), 0o750); err != nil {
			return fmt.Errorf("socket directory of VM %q: %w", name, err)
		}
	}
	return a.d.dp.PrepareMigration(ctx, name, socket, client)
}

func (a dpAdapter) AbortMigration(ctx context.Context, name string) error {
	return a.d.dp.AbortMigration(ctx, name)
}

// filterTable is the BPF filter as the control plane's filter table.
type filterTable struct{ f *bpf.Filter }

func (t filterTable) Filters() (map[control.FilterKey]uint32, error) {
	m, err := t.f.Filters()
	if err != nil {
		return nil, err
	}
	out := make(map[control.FilterKey]uint32, len(m))
	for k, v := range m {
		out[control.FilterKey(k)] = v
	}
	return out, nil
}

func (t filterTable) SetFilter(mac net.HardwareAddr, vlan uint16, slot uint32) error {
	return t.f.SetFilter(mac, vlan, slot)
}

// DeleteFilter treats a missing entry as deleted: reconciliation may race
// a manual clean-up, and the result is the same.
func (t filterTable) DeleteFilter(mac net.HardwareAddr, vlan uint16) error {
	if err := t.f.DeleteFilter(mac, vlan); err != nil && !errors.Is(err, bpf.ErrNotFound) {
		return err
	}
	return nil
}
