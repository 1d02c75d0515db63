package control

import (
	"fmt"
	"slices"
	"sort"

	"github.com/vmq/vmq/internal/cpuset"
)

// ReloadPlan is the difference between the running config and a new one.
type ReloadPlan struct {
	// Remove are VMs only in the old config, by name.
	Remove []string `json:"remove,omitempty"`
	// Change are VMs in both whose settings differ: removed then re-added.
	Change []VMConfig `json:"change,omitempty"`
	// Add are VMs only in the new config.
	Add []VMConfig `json:"add,omitempty"`
	// Limits are VMs in both whose QoS limits alone differ: applied live,
	// without a reconnect.
	Limits []VMConfig `json:"limits,omitempty"`
	// Restart lists NIC-level changes that only take effect after a
	// restart; they are reported, not applied.
	Restart []string `json:"restart,omitempty"`
	// KeepSteeringOnExit changed (applied at once: it is read at exit).
	KeepSteeringOnExit *bool `json:"keep_steering_on_exit,omitempty"`
}

// Empty reports whether the reload changes nothing at all.
func (p *ReloadPlan) Empty() bool {
	return len(p.Remove) == 0 && len(p.Change) == 0 && len(p.Add) == 0 && len(p.Limits) == 0 &&
		len(p.Restart) == 0 && p.KeepSteeringOnExit == nil
}

// DiffConfig compares two validated configs. It is pure: nothing is
// applied. VMs are matched by name; lists are sorted by name.
func DiffConfig(old, new *Config) *ReloadPlan {
	p := &ReloadPlan{}
	restart := func(field string, a, b any) {
		p.Restart = append(p.Restart, fmt.Sprintf("%s: %v → %v", field, a, b))
	}
	if old.NIC != new.NIC {
		restart("nic", old.NIC, new.NIC)
	}
	if old.AttachMode != new.AttachMode {
		restart("attach_mode", old.AttachMode, new.AttachMode)
	}
	if !slices.Equal(old.Queues, new.Queues) {
		restart("queues", old.Queues, new.Queues)
	}
	if !slices.Equal(old.WorkerCPUs, new.WorkerCPUs) {
		restart("worker_cpus", quoteEmpty(cpuset.Format(old.WorkerCPUs)), quoteEmpty(cpuset.Format(new.WorkerCPUs)))
	}
	if !slices.Equal(old.HousekeepingCPUs, new.HousekeepingCPUs) {
		restart("housekeeping_cpus", quoteEmpty(cpuset.Format(old.HousekeepingCPUs)), quoteEmpty(cpuset.Format(new.HousekeepingCPUs)))
	}
	if old.FrameSize != new.FrameSize {
		restart("frame_size", old.FrameSize, new.FrameSize)
	}
	if old.PinDir != new.PinDir {
		restart("pin_dir", old.PinDir, new.PinDir)
	}
	if old.API.Socket != new.API.Socket {
		restart("api.socket", old.API.Socket, new.API.Socket)
	}
	if old.API.Mode != new.API.Mode {
		restart("api.mode", old.API.Mode, new.API.Mode)
	}
	if old.API.TCP != new.API.TCP {
		restart("api.tcp", quoteEmpty(old.API.TCP), quoteEmpty(new.API.TCP))
	}
	if !slices.Equal(old.API.AllowedVLANs, new.API.AllowedVLANs) {
		restart("api.allowed_vlans", old.API.AllowedVLANs, new.API.AllowedVLANs)
	}
	if old.StateFile != new.StateFile {
		restart("state_file", quoteEmpty(old.StateFile), quoteEmpty(new.StateFile))
	}
	if old.Metrics.Address != new.Metrics.Address {
		restart("metrics.address", quoteEmpty(old.Metrics.Address), quoteEmpty(new.Metrics.Address))
	}
	if old.Polling.BusyPoll != new.Polling.BusyPoll {
		restart("polling.busy_poll", old.Polling.BusyPoll, new.Polling.BusyPoll)
	}
	if old.Tx != new.Tx {
		restart("tx", fmt.Sprintf("%+v", old.Tx), fmt.Sprintf("%+v", new.Tx))
	}
	if old.DedicatedSteering != new.DedicatedSteering {
		restart("dedicated_steering", quoteEmpty(old.DedicatedSteering), quoteEmpty(new.DedicatedSteering))
	}
	if old.KeepSteeringOnExit != new.KeepSteeringOnExit {
		v := new.KeepSteeringOnExit
		p.KeepSteeringOnExit = &v
	}

	oldVMs := map[string]VMConfig{}
	for _, vm := range old.VMs {
		oldVMs[vm.Name] = vm
	}
	newVMs := map[string]bool{}
	for _, vm := range new.VMs {
		newVMs[vm.Name] = true
		o, ok := oldVMs[vm.Name]
		switch {
		case !ok:
			p.Add = append(p.Add, vm)
		case !sameVM(o, vm):
			p.Change = append(p.Change, vm)
		case !o.Limits.Equal(vm.Limits):
			p.Limits = append(p.Limits, vm)
		}
	}
	for _, vm := range old.VMs {
		if !newVMs[vm.Name] {
			p.Remove = append(p.Remove, vm.Name)
		}
	}
	sort.Strings(p.Remove)
	byName := func(s []VMConfig) {
		sort.Slice(s, func(i, j int) bool { return s[i].Name < s[j].Name })
	}
	byName(p.Change)
	byName(p.Add)
	byName(p.Limits)
	return p
}

func quoteEmpty(s string) string {
	if s == "" {
		return `""`
	}
	return s
}
