package control

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// Errors the registry and controller return; the API maps them to HTTP
// statuses (404, 409, 503).
var (
	ErrNotFound  = errors.New("no such VM")
	ErrDuplicate = errors.New("already exists")
	ErrNoSlot    = errors.New("no free VM slot")
	ErrInvalid   = errors.New("invalid VM")
)

// DuplicateError is an ErrDuplicate that names what clashes (name, mac
// or socket), so an API client such as vmq-cni can tell "this sandbox's
// port exists" from "the MAC is in use".
type DuplicateError struct {
	Field  string
	Msg    string
	Suffix bool // "VM x already exists" rather than "...: already exists"
}

func (e *DuplicateError) Error() string {
	if e.Suffix {
		return e.Msg + " " + ErrDuplicate.Error()
	}
	return e.Msg + ": " + ErrDuplicate.Error()
}

func (e *DuplicateError) Unwrap() error { return ErrDuplicate }

// VMState is a VM's lifecycle state in the registry.
type VMState string

const (
	StateAdding   VMState = "adding"   // slot reserved, dataplane being set up
	StateRunning  VMState = "running"  // in the dataplane, filter set
	StateRemoving VMState = "removing" // filter deleted, dataplane tearing down
	StateFailed   VMState = "failed"   // removal failed; slot stays reserved
)

// Source says where a VM came from: the config file or the API.
type Source string

const (
	SourceConfig Source = "config"
	SourceAPI    Source = "api"
)

// VMInfo is a VM's registry entry.
type VMInfo struct {
	VMConfig
	Slot   uint32    `json:"slot"`
	State  VMState   `json:"state"`
	Source Source    `json:"source"`
	Error  string    `json:"error,omitempty"`
	Since  time.Time `json:"since"`
}

// Registry holds the VMs by name, with unique slots, (MAC, VLAN) keys
// and socket paths. Safe for concurrent use.
type Registry struct {
	mu      sync.RWMutex
	maxVMs  int
	byName  map[string]*VMInfo
	bySlot  map[uint32]string
	byKey   map[FilterKey]string
	bySock  map[string]string
	nowFunc func() time.Time
}

// NewRegistry makes an empty registry with slots 1..maxVMs.
func NewRegistry(maxVMs int) *Registry {
	return &Registry{
		maxVMs:  maxVMs,
		byName:  map[string]*VMInfo{},
		bySlot:  map[uint32]string{},
		byKey:   map[FilterKey]string{},
		bySock:  map[string]string{},
		nowFunc: time.Now,
	}
}

// Reserve adds a validated VM in state adding. It takes slot if nonzero
// and free (a pinned slot after restart), else the lowest free slot.
func (r *Registry) Reserve(vm VMConfig, src Source, slot uint32) (VMInfo, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.byName[vm.Name]; dup {
		return VMInfo{}, &DuplicateError{Field: "name", Msg: fmt.Sprintf("VM %q", vm.Name), Suffix: true}
	}
	k := vm.Key()
	if other, dup := r.byKey[k]; dup {
		return VMInfo{}, &DuplicateError{Field: "mac", Msg: fmt.Sprintf("MAC %s on VLAN %d is VM %q's", vm.MAC, vm.VLAN, other)}
	}
	sock := filepath.Clean(vm.Socket)
	if other, dup := r.bySock[sock]; dup {
		return VMInfo{}, &DuplicateError{Field: "socket", Msg: fmt.Sprintf("socket %s is VM %q's", vm.Socket, other)}
	}
	if slot == 0 || slot > uint32(r.maxVMs) || r.bySlot[slot] != "" {
		slot = 0
		for s := uint32(1); s <= uint32(r.maxVMs); s++ {
			if r.bySlot[s] == "" {
				slot = s
				break
			}
		}
		if slot == 0 {
			return VMInfo{}, fmt.Errorf("add VM %q: all %d slots in use: %w", vm.Name, r.maxVMs, ErrNoSlot)
		}
	}
	info := &VMInfo{VMConfig: vm, Slot: slot, State: StateAdding, Source: src, Since: r.nowFunc()}
	r.byName[vm.Name] = info
	r.bySlot[slot] = vm.Name
	r.byKey[k] = vm.Name
	r.bySock[sock] = vm.Name
	return *info, nil
}

// SetState records a VM's new state (and why, for failures).
func (r *Registry) SetState(name string, st VMState, why error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if info, ok := r.byName[name]; ok {
		info.State = st
		info.Since = r.nowFunc()
		info.Error = ""
		if why != nil {
			info.Error = why.Error()
		}
	}
}

// SetLimits records a VM's new QoS limits.
func (r *Registry) SetLimits(name string, l Limits) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if info, ok := r.byName[name]; ok {
		info.Limits = l
	}
}

// Release forgets a VM and frees its slot, key and socket.
func (r *Registry) Release(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	info, ok := r.byName[name]
	if !ok {
		return
	}
	delete(r.byName, name)
	delete(r.bySlot, info.Slot)
	delete(r.byKey, info.Key())
	delete(r.bySock, filepath.Clean(info.Socket))
}

// Get returns a VM's entry.
func (r *Registry) Get(name string) (VMInfo, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	info, ok := r.byName[name]
	if !ok {
		return VMInfo{}, false
	}
	return *info, true
}

// List returns every VM, sorted by name.
func (r *Registry) List() []VMInfo {
	r.mu.RLock()
	out := make([]VMInfo, 0, len(r.byName))
	for _, info := range r.byName {
		out = append(out, *info)
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Len is the number of VMs.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byName)
}
