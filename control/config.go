// Package control is vmq's NetVSP control plane: the declarative config,
// the VM registry and slot allocation, reconciliation of the pinned BPF
// filter table, config reload, and the HTTP+JSON API on a unix socket that
// vmqctl talks to.
//
// Ownership: control owns VM slots and the (MAC, VLAN) → slot filter table;
// the dataplane owns sockets, XSKMAP entries, vhost-user ports and rings.
package control

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"

	"github.com/vmq/vmq/dataplane"
)

// Limits shared with the XDP program: XSKMAP index = slot*MaxQueues + queue,
// VM slots are 1..MaxVMs, slot 0 is the flood (switch) slot.
const (
	MaxQueues = 64
	MaxVMs    = 255
)

// Defaults applied to omitted config keys.
const (
	DefaultAPISocket   = "/run/vmq/vmqd.sock"
	DefaultAPIMode     = FileMode(0o600)
	DefaultMetricsAddr = "127.0.0.1:9469"
	DefaultPinDir      = "/sys/fs/bpf/vmq"
	DefaultFrameSize   = 4096
	DefaultBusyPoll    = 50 * time.Microsecond
	// DefaultXDPMinBatch is dataplane.DefaultXDPTxMinBatch (measured
	// break-even of an XDP call against the socket on veth).
	DefaultXDPMinBatch = 16
	// DefaultStateFile is where the shipped configs (systemd, Kubernetes)
	// keep the VMs added over the API; a DaemonSet mounts /var/lib/vmq
	// from the host. The key has no implicit default so that a config
	// written for a test never touches the host's state.
	DefaultStateFile = "/var/lib/vmq/ports.json"
	// MaxConfigSize bounds what Parse reads; a config is a few KiB.
	MaxConfigSize = 1 << 20
	// maxSunPath is sizeof(sockaddr_un.sun_path) minus the NUL.
	maxSunPath = 107
)

// Attach modes of the XDP program.
const (
	AttachAuto    = "auto"
	AttachNative  = "native"
	AttachGeneric = "generic"
)

// vhost-user socket modes.
const (
	ModeServer = "server" // vmqd listens, the guest connects
	ModeClient = "client" // vmqd connects (and reconnects) to the guest's socket
)

// Config is vmqd's whole configuration after defaults and validation.
type Config struct {
	NIC        string `yaml:"nic" json:"nic"`
	AttachMode string `yaml:"attach_mode" json:"attach_mode"`
	// Queues are the NIC queue ids used, one worker each.
	Queues []int `yaml:"queues" json:"queues"`
	// WorkerCPUs: worker i (queue Queues[i]) runs on WorkerCPUs[i mod
	// len]; nil leaves the workers where vmqd runs. HousekeepingCPUs are
	// every other thread's (the Go runtime's, the API, the vhost-user
	// ports, the notifiers); nil: the allowed CPUs no worker has (cpus.go).
	WorkerCPUs         []int         `yaml:"worker_cpus,omitempty" json:"worker_cpus,omitempty"`
	HousekeepingCPUs   []int         `yaml:"housekeeping_cpus,omitempty" json:"housekeeping_cpus,omitempty"`
	FrameSize          int           `yaml:"frame_size" json:"frame_size"`
	PinDir             string        `yaml:"pin_dir" json:"pin_dir"`
	API                APIConfig     `yaml:"api" json:"api"`
	Metrics            MetricsConfig `yaml:"metrics" json:"metrics"`
	Polling            PollingConfig `yaml:"polling" json:"polling"`
	KeepSteeringOnExit bool          `yaml:"keep_steering_on_exit" json:"keep_steering_on_exit"`
	// StateFile is where the VMs added over the API are persisted ("" =
	// not persisted: they die with the daemon).
	StateFile string `yaml:"state_file" json:"state_file"`
	// MaxGuestMemory is the default max_guest_memory of every VM.
	MaxGuestMemory ByteSize `yaml:"max_guest_memory" json:"max_guest_memory"`
	// DedicatedSteering says who puts a dedicated VM's frames on its
	// queue: "ntuple" (default: vmqd adds the NIC's ethtool flow rules) or
	// "external" (the operator did, e.g. with tc or the switch; vmqd
	// only logs the rule it expects).
	DedicatedSteering string `yaml:"dedicated_steering,omitempty" json:"dedicated_steering,omitempty"`
	// Tx chooses how guest frames for the wire leave.
	Tx  TxConfig   `yaml:"tx" json:"tx"`
	VMs []VMConfig `yaml:"vms" json:"vms"`
}

// Transmit paths (TxConfig.Path).
const (
	TxPathAuto   = "auto"
	TxPathXDP    = "xdp"
	TxPathSocket = "socket"
)

// TxConfig: "auto" (default) sends a worker round's wire frames in one
// XDP call (BPF_PROG_RUN live frames, the NIC's ndo_xdp_xmit) when there
// are at least XDPMinBatch and the NIC takes XDP frames, else through
// each VM's AF_XDP socket; "xdp" skips the NIC feature check; "socket"
// never uses XDP.
type TxConfig struct {
	Path        string `yaml:"path" json:"path"`
	XDPMinBatch int    `yaml:"xdp_min_batch" json:"xdp_min_batch"`
}

// Steering of dedicated queues.
const (
	SteeringNtuple   = "ntuple"
	SteeringExternal = "external"
)

// APIConfig says where the control API listens.
type APIConfig struct {
	Socket string   `yaml:"socket" json:"socket"`
	Mode   FileMode `yaml:"mode" json:"mode"`
	// TCP is an optional host:port; empty means no TCP listener.
	TCP string `yaml:"tcp,omitempty" json:"tcp,omitempty"`
	// AllowedVLANs, if set, are the only VLANs a VM added over the API may
	// use: the node's operator, not the API's client (a CNI call), decides
	// which VLANs reach this host's VMs. Config-file VMs are not limited.
	AllowedVLANs []int `yaml:"allowed_vlans,omitempty" json:"allowed_vlans,omitempty"`
}

// MetricsConfig says where Prometheus metrics are served ("" = off).
type MetricsConfig struct {
	Address string `yaml:"address" json:"address"`
}

// PollingConfig tunes the workers' adaptive polling.
type PollingConfig struct {
	// BusyPoll is how long an idle worker spins before sleeping in poll(2).
	BusyPoll time.Duration `yaml:"busy_poll" json:"busy_poll"`
}

// VMConfig is one VM (one vhost-user port) as configured.
type VMConfig struct {
	Name string `yaml:"name" json:"name"`
	// MAC is normalized to lowercase colon form by validation.
	MAC  string `yaml:"mac" json:"mac"`
	VLAN int    `yaml:"vlan" json:"vlan"` // access VLAN, 0 = untagged
	// Socket is the vhost-user unix socket path.
	Socket        string `yaml:"socket" json:"socket"`
	Mode          string `yaml:"mode" json:"mode"`
	QueuePairs    int    `yaml:"queue_pairs" json:"queue_pairs"`
	AllowSpoofing bool   `yaml:"allow_spoofing" json:"allow_spoofing"`
	// Limits are the VM's QoS limits (0 = unlimited); they change live.
	Limits Limits `yaml:"limits,omitempty" json:"limits"`
	// MaxGuestMemory bounds the guest memory the VM's port maps (0 = no
	// limit); omitted, the global max_guest_memory.
	MaxGuestMemory ByteSize `yaml:"max_guest_memory" json:"max_guest_memory"`
	// SocketOwner and SocketGroup own a server socket (a name or a numeric
	// id; "" leaves vmqd's), SocketMode is its mode (default 0600).
	SocketOwner IDSpec   `yaml:"socket_owner,omitempty" json:"socket_owner,omitempty"`
	SocketGroup IDSpec   `yaml:"socket_group,omitempty" json:"socket_group,omitempty"`
	SocketMode  FileMode `yaml:"socket_mode" json:"socket_mode"`
	// AllowedUIDs, if set, are the only peer uids (SO_PEERCRED) accepted.
	AllowedUIDs []uint32 `yaml:"allowed_uids,omitempty" json:"allowed_uids,omitempty"`
	// NoOffloads: the VM's port offers no checksum or TSO offloads
	// (YAML "offloads: false"); by default it offers CSUM, GUEST_CSUM,
	// HOST_TSO4/6 and GUEST_TSO4/6 (dataplane/offload.go).
	NoOffloads bool `yaml:"-" json:"no_offloads,omitempty"`

	// Dedicated queue: "queue: dedicated" (or "dedicated: required" /
	// "dedicated: preferred" alone) gives the VM a NIC queue of its own,
	// QueueID or the lowest free one; frames land in guest memory with no
	// copy. Preferred (the default) falls back to shared mode when the NIC
	// cannot steer; required fails the VM instead.
	Queue     string `yaml:"queue,omitempty" json:"queue,omitempty"` // shared (default) | dedicated
	QueueID   *int   `yaml:"queue_id,omitempty" json:"queue_id,omitempty"`
	Dedicated string `yaml:"dedicated,omitempty" json:"dedicated,omitempty"` // preferred | required

	// Virtqueue formats: packed rings (VIRTIO_F_RING_PACKED) and IN_ORDER
	// are offered by default; these turn them off for a guest whose
	// driver mishandles them.
	NoPackedRing bool `yaml:"no_packed_ring,omitempty" json:"no_packed_ring,omitempty"`
	NoInOrder    bool `yaml:"no_in_order,omitempty" json:"no_in_order,omitempty"`
}

// Queue modes of a VM.
const (
	QueueShared    = "shared"
	QueueDedicated = "dedicated"
)

// DedicatedMode is what the dataplane is asked for ("" = shared only);
// valid only on a validated config.
func (vm VMConfig) DedicatedMode() dataplane.DedicatedMode {
	if vm.Queue != QueueDedicated {
		return dataplane.DedicatedOff
	}
	if vm.Dedicated == string(dataplane.DedicatedRequired) {
		return dataplane.DedicatedRequired
	}
	return dataplane.DedicatedPreferred
}

// DedicatedQueue is the configured queue_id, or -1 (pick one).
func (vm VMConfig) DedicatedQueue() int {
	if vm.QueueID == nil {
		return -1
	}
	return *vm.QueueID
}

// HardwareAddr is the VM's MAC; valid only on a validated config.
func (vm VMConfig) HardwareAddr() net.HardwareAddr {
	hw, _ := net.ParseMAC(vm.MAC)
	return hw
}

// Key is the VM's filter key; valid only on a validated config.
func (vm VMConfig) Key() FilterKey {
	k, _ := NewFilterKey(vm.HardwareAddr(), uint16(vm.VLAN))
	return k
}

// FileMode is a permission mode written in octal ("0600") in YAML and JSON.
type FileMode os.FileMode

func (m FileMode) String() string { return fmt.Sprintf("%04o", uint32(m)) }

// MarshalYAML writes the mode as an octal string.
func (m FileMode) MarshalYAML() (any, error) { return m.String(), nil }

// UnmarshalYAML reads the raw scalar as octal, so 0600 and "0600" agree
// whatever YAML's integer resolution thinks of a leading zero.
func (m *FileMode) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: mode must be an octal number like 0600", n.Line)
	}
	v, err := parseMode(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*m = v
	return nil
}

// MarshalJSON writes the mode as an octal string.
func (m FileMode) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(m.String())), nil }

// UnmarshalJSON reads an octal string.
func (m *FileMode) UnmarshalJSON(b []byte) error {
	s, err := strconv.Unquote(string(b))
	if err != nil {
		return fmt.Errorf("mode must be an octal string like \"0600\"")
	}
	v, err := parseMode(s)
	if err != nil {
		return err
	}
	*m = v
	return nil
}

func parseMode(s string) (FileMode, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	v, err := strconv.ParseUint(t, 8, 32)
	if err != nil || v > 0o777 {
		return 0, fmt.Errorf("mode %q is not an octal permission like 0600", s)
	}
	return FileMode(v), nil
}

// The file format: pointers tell an omitted key from an explicit zero, so
// "queue_pairs: 0" is an error while an omitted key gets the default.
type fileConfig struct {
	NIC                string         `yaml:"nic"`
	AttachMode         *string        `yaml:"attach_mode"`
	Queues             *queueSpec     `yaml:"queues"`
	WorkerCPUs         *cpuList       `yaml:"worker_cpus"`
	HousekeepingCPUs   *cpuList       `yaml:"housekeeping_cpus"`
	FrameSize          *int           `yaml:"frame_size"`
	PinDir             *string        `yaml:"pin_dir"`
	API                fileAPI        `yaml:"api"`
	Metrics            fileMetrics    `yaml:"metrics"`
	Polling            filePolling    `yaml:"polling"`
	KeepSteeringOnExit bool           `yaml:"keep_steering_on_exit"`
	StateFile          *string        `yaml:"state_file"`
	MaxGuestMemory     *ByteSize      `yaml:"max_guest_memory"`
	DedicatedSteering  string         `yaml:"dedicated_steering"`
	Tx                 fileTx         `yaml:"tx"`
	VMs                []fileVMConfig `yaml:"vms"`
}

type fileTx struct {
	Path        *string `yaml:"path"`
	XDPMinBatch *int    `yaml:"xdp_min_batch"`
}

type fileAPI struct {
	Socket       *string   `yaml:"socket"`
	Mode         *FileMode `yaml:"mode"`
	TCP          string    `yaml:"tcp"`
	AllowedVLANs []int     `yaml:"allowed_vlans"`
}

type fileMetrics struct {
	Address *string `yaml:"address"`
}

type filePolling struct {
	BusyPoll *time.Duration `yaml:"busy_poll"`
}

type fileVMConfig struct {
	Name          string  `yaml:"name"`
	MAC           string  `yaml:"mac"`
	VLAN          int     `yaml:"vlan"`
	Socket        string  `yaml:"socket"`
	Mode          *string `yaml:"mode"`
	QueuePairs    *int    `yaml:"queue_pairs"`
	AllowSpoofing bool    `yaml:"allow_spoofing"`

	Limits         Limits    `yaml:"limits"`
	MaxGuestMemory *ByteSize `yaml:"max_guest_memory"`
	SocketOwner    IDSpec    `yaml:"socket_owner"`
	SocketGroup    IDSpec    `yaml:"socket_group"`
	SocketMode     *FileMode `yaml:"socket_mode"`
	AllowedUIDs    []uint32  `yaml:"allowed_uids"`
	Queue          string    `yaml:"queue"`
	QueueID        *int      `yaml:"queue_id"`
	Dedicated      string    `yaml:"dedicated"`

	// Virtqueue formats (see VMConfig).
	NoPackedRing bool `yaml:"no_packed_ring"`
	NoInOrder    bool `yaml:"no_in_order"`

	// Offloads (default true) offers the guest checksum and TSO offloads.
	Offloads *bool `yaml:"offloads"`
}

// queueSpec is either a count ("queues: 4" = queues 0..3) or a list.
type queueSpec struct {
	count int
	list  []int
	isSeq bool
}

func (q *queueSpec) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		v, err := strconv.Atoi(n.Value)
		if err != nil {
			return fmt.Errorf("line %d: queues must be a count or a list of queue ids, not %q", n.Line, n.Value)
		}
		q.count = v
		return nil
	case yaml.SequenceNode:
		q.isSeq = true
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: queue ids must be integers", c.Line)
			}
			v, err := strconv.Atoi(c.Value)
			if err != nil {
				return fmt.Errorf("line %d: queue id %q is not an integer", c.Line, c.Value)
			}
			q.list = append(q.list, v)
		}
		return nil
	}
	return fmt.Errorf("line %d: queues must be a count or a list of queue ids", n.Line)
}

// FieldError is one validation error, naming the field by its path in the
// file (e.g. "vms[2].mac").
type FieldError struct {
	Field string `json:"field"`
	Msg   string `json:"message"`
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// FieldErrors lists the FieldErrors inside err (as returned by Parse,
// Validate or errors.Join of them).
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if fe, ok := e.(*FieldError); ok {
			out = append(out, fe)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, c := range j.Unwrap() {
				walk(c)
			}
			return
		}
		walk(errors.Unwrap(e))
	}
	walk(err)
	return out
}

type errList []error

func (l *errList) add(field, format string, args ...any) {
	*l = append(*l, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
}

//go:embed example.yaml
var exampleConfig []byte

// ExampleConfig is the commented example config (the netns lab's).
func ExampleConfig() []byte { return bytes.Clone(exampleConfig) }

// Default is a config with every default and no VMs, for the given NIC.
func Default(nic string) *Config {
	return &Config{
		NIC:        nic,
		AttachMode: AttachAuto,
		Queues:     []int{0},
		FrameSize:  DefaultFrameSize,
		PinDir:     DefaultPinDir,
		API:        APIConfig{Socket: DefaultAPISocket, Mode: DefaultAPIMode},
		Metrics:    MetricsConfig{Address: DefaultMetricsAddr},
		Polling:    PollingConfig{BusyPoll: DefaultBusyPoll},
		Tx:         TxConfig{Path: TxPathAuto, XDPMinBatch: DefaultXDPMinBatch},

		MaxGuestMemory: DefaultMaxGuestMemory,
	}
}

// Load reads and parses a config file.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes YAML (unknown keys are errors), applies defaults and
// validates. All problems are returned at once, joined.
func Parse(data []byte) (*Config, error) {
	if len(data) > MaxConfigSize {
		return nil, fmt.Errorf("config is larger than %d bytes", MaxConfigSize)
	}
	var fc fileConfig
	soft, err := decodeYAML(data, &fc)
	if err != nil {
		return nil, err
	}
	errs := errList(soft)
	cfg := fc.toConfig(&errs)
	errs = append(errs, cfg.validate()...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return cfg, nil
}

// decodeYAML decodes strictly. Type errors (unknown keys, wrong types)
// are returned as soft errors, so validation of the rest can still run
// and the user sees everything at once; anything else is fatal.
func decodeYAML(data []byte, out *fileConfig) (soft []error, fatal error) {
	// The YAML parser sees untrusted bytes; a parser bug must be an
	// error, not a crashed daemon (or a failed SIGHUP reload).
	defer func() {
		if r := recover(); r != nil {
			soft, fatal = nil, fmt.Errorf("parse config: yaml parser failed: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("parse config: the config is empty")
		}
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, fmt.Errorf("parse config: %w", err)
		}
		for _, m := range te.Errors {
			soft = append(soft, errors.New(rewriteYAMLError(m)))
		}
	}
	// A second document is most likely a mistake; don't ignore it silently.
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, errors.New("parse config: more than one YAML document")
	}
	return soft, nil
}

var unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type control\.(\w+)`)

// rewriteYAMLError names sections instead of Go types.
func rewriteYAMLError(m string) string {
	sections := map[string]string{
		"fileConfig": "at the top level", "fileAPI": "in api", "fileMetrics": "in metrics",
		"filePolling": "in polling", "fileVMConfig": "in a VM", "Limits": "in a VM's limits",
	}
	m = unknownFieldRE.ReplaceAllStringFunc(m, func(s string) string {
		sub := unknownFieldRE.FindStringSubmatch(s)
		return fmt.Sprintf("unknown key %q %s", sub[1], sections[sub[2]])
	})
	return strings.ReplaceAll(m, "control.file", "")
}

func (fc *fileConfig) toConfig(errs *errList) *Config {
	cfg := Default(fc.NIC)
	cfg.KeepSteeringOnExit = fc.KeepSteeringOnExit
	if fc.AttachMode != nil {
		cfg.AttachMode = *fc.AttachMode
	}
	if q := fc.Queues; q != nil {
		if q.isSeq {
			cfg.Queues = q.list
		} else if q.count < 1 || q.count > MaxQueues {
			errs.add("queues", "count %d is outside 1..%d", q.count, MaxQueues)
		} else {
			cfg.Queues = make([]int, q.count)
			for i := range cfg.Queues {
				cfg.Queues[i] = i
			}
		}
	}
	if fc.WorkerCPUs != nil {
		cfg.WorkerCPUs = fc.WorkerCPUs.cpus
	}
	if fc.HousekeepingCPUs != nil {
		cfg.HousekeepingCPUs = fc.HousekeepingCPUs.cpus
	}
	if fc.FrameSize != nil {
		cfg.FrameSize = *fc.FrameSize
	}
	if fc.PinDir != nil {
		cfg.PinDir = *fc.PinDir
	}
	if fc.API.Socket != nil {
		cfg.API.Socket = *fc.API.Socket
	}
	if fc.API.Mode != nil {
		cfg.API.Mode = *fc.API.Mode
	}
	cfg.API.TCP = fc.API.TCP
	cfg.API.AllowedVLANs = fc.API.AllowedVLANs
	if fc.StateFile != nil {
		cfg.StateFile = *fc.StateFile
	}
	if fc.Metrics.Address != nil {
		cfg.Metrics.Address = *fc.Metrics.Address
	}
	if fc.Polling.BusyPoll != nil {
		cfg.Polling.BusyPoll = *fc.Polling.BusyPoll
	}
	if fc.Tx.Path != nil {
		cfg.Tx.Path = *fc.Tx.Path
	}
	if fc.Tx.XDPMinBatch != nil {
		cfg.Tx.XDPMinBatch = *fc.Tx.XDPMinBatch
	}
	if fc.MaxGuestMemory != nil {
		cfg.MaxGuestMemory = *fc.MaxGuestMemory
	}
	cfg.DedicatedSteering = fc.DedicatedSteering
	for _, f := range fc.VMs {
		vm := VMConfig{
			Name: f.Name, MAC: f.MAC, VLAN: f.VLAN, Socket: f.Socket,
			Mode: ModeServer, QueuePairs: 1, AllowSpoofing: f.AllowSpoofing,
			Limits: f.Limits, MaxGuestMemory: cfg.MaxGuestMemory,
			SocketOwner: f.SocketOwner, SocketGroup: f.SocketGroup, SocketMode: DefaultSocketMode,
			AllowedUIDs: f.AllowedUIDs,
			Queue:       f.Queue, QueueID: f.QueueID, Dedicated: f.Dedicated,
			NoPackedRing: f.NoPackedRing, NoInOrder: f.NoInOrder,
		}
		if f.MaxGuestMemory != nil {
			vm.MaxGuestMemory = *f.MaxGuestMemory
		}
		if f.SocketMode != nil {
			vm.SocketMode = *f.SocketMode
		}
		if f.Mode != nil {
			vm.Mode = *f.Mode
		}
		if f.QueuePairs != nil {
			vm.QueuePairs = *f.QueuePairs
		}
		if f.Offloads != nil {
			vm.NoOffloads = !*f.Offloads
		}
		cfg.VMs = append(cfg.VMs, vm)
	}
	return cfg
}

// Validate checks a config (e.g. one built in Go) and normalizes its MACs.
func (c *Config) Validate() error {
	return errors.Join(c.validate()...)
}

var ifNameRE = regexp.MustCompile(`^[A-Za-z0-9_.:@-]{1,15}$`)

func (c *Config) validate() errList {
	var errs errList
	switch {
	case c.NIC == "":
		errs.add("nic", "is required (the interface to attach to)")
	case !ifNameRE.MatchString(c.NIC):
		errs.add("nic", "%q is not an interface name", c.NIC)
	}
	switch c.AttachMode {
	case AttachAuto, AttachNative, AttachGeneric:
	default:
		errs.add("attach_mode", "%q is not one of auto, native, generic", c.AttachMode)
	}
	if len(c.Queues) == 0 || len(c.Queues) > MaxQueues {
		errs.add("queues", "needs 1..%d queues, got %d", MaxQueues, len(c.Queues))
	}
	seenQ := map[int]bool{}
	for i, q := range c.Queues {
		if q < 0 || q >= MaxQueues {
			errs.add(fmt.Sprintf("queues[%d]", i), "queue id %d is outside 0..%d", q, MaxQueues-1)
		} else if seenQ[q] {
			errs.add(fmt.Sprintf("queues[%d]", i), "queue %d is listed twice", q)
		}
		seenQ[q] = true
	}
	errs = append(errs, c.validateCPUs()...)
	if c.FrameSize != 2048 && c.FrameSize != 4096 {
		errs.add("frame_size", "%d is not 2048 or 4096", c.FrameSize)
	}
	if !filepath.IsAbs(c.PinDir) {
		errs.add("pin_dir", "%q is not an absolute path", c.PinDir)
	}
	checkSocketPath(&errs, "api.socket", c.API.Socket, true)
	if c.API.Mode == 0 || c.API.Mode&0o600 != 0o600 {
		errs.add("api.mode", "%s must give the owner read and write", c.API.Mode)
	} else if c.API.Mode&^0o777 != 0 {
		errs.add("api.mode", "%s is not a permission mode", c.API.Mode)
	}
	if c.API.TCP != "" {
		checkHostPort(&errs, "api.tcp", c.API.TCP)
	}
	for i, v := range c.API.AllowedVLANs {
		if v < 0 || v > 4094 {
			errs.add(fmt.Sprintf("api.allowed_vlans[%d]", i), "%d is outside 0..4094 (0 = untagged)", v)
		}
	}
	if c.StateFile != "" && !filepath.IsAbs(c.StateFile) {
		errs.add("state_file", "%q is not an absolute path", c.StateFile)
	}
	if c.Metrics.Address != "" {
		checkHostPort(&errs, "metrics.address", c.Metrics.Address)
	}
	switch c.DedicatedSteering {
	case "", SteeringNtuple, SteeringExternal:
	default:
		errs.add("dedicated_steering", "%q is not ntuple or external", c.DedicatedSteering)
	}
	if c.Polling.BusyPoll < 0 || c.Polling.BusyPoll > time.Second {
		errs.add("polling.busy_poll", "%v is outside 0..1s", c.Polling.BusyPoll)
	}
	switch c.Tx.Path {
	case TxPathAuto, TxPathXDP, TxPathSocket:
	default:
		errs.add("tx.path", "%q is not auto, xdp or socket", c.Tx.Path)
	}
	if c.Tx.XDPMinBatch < 1 || c.Tx.XDPMinBatch > 1<<20 {
		errs.add("tx.xdp_min_batch", "%d is outside 1..%d", c.Tx.XDPMinBatch, 1<<20)
	}

	if len(c.VMs) > MaxVMs {
		errs.add("vms", "%d VMs configured, at most %d (the XDP program's slots)", len(c.VMs), MaxVMs)
	}
	names := map[string]int{}
	keys := map[FilterKey]int{}
	dedicated := map[int]int{} // queue_id -> VM
	sockets := map[string]string{filepath.Clean(c.API.Socket): "api.socket"}
	for i := range c.VMs {
		vm := &c.VMs[i]
		p := fmt.Sprintf("vms[%d]", i)
		errs = append(errs, validateVM(vm, p, len(c.Queues))...)
		if vm.Name != "" {
			if j, dup := names[vm.Name]; dup {
				errs.add(p+".name", "%q is already the name of vms[%d]", vm.Name, j)
			} else {
				names[vm.Name] = i
			}
		}
		if hw, err := parseVMMAC(vm.MAC); err == nil && vm.VLAN >= 0 && vm.VLAN <= 4094 {
			k, _ := NewFilterKey(hw, uint16(vm.VLAN))
			if j, dup := keys[k]; dup {
				errs.add(p+".mac", "%s on VLAN %d is already vms[%d]'s", vm.MAC, vm.VLAN, j)
			} else {
				keys[k] = i
			}
		}
		if vm.Queue == QueueDedicated && vm.QueueID != nil {
			q := *vm.QueueID
			if seenQ[q] {
				errs.add(p+".queue_id", "VM %q: queue %d is a shared queue (in queues); remove it from queues or pick another queue_id", vm.Name, q)
			} else if j, dup := dedicated[q]; dup {
				errs.add(p+".queue_id", "VM %q: queue %d is already vms[%d]'s dedicated queue; pick another queue_id or omit it", vm.Name, q, j)
			} else {
				dedicated[q] = i
			}
		}
		if vm.Socket != "" {
			s := filepath.Clean(vm.Socket)
			if other, dup := sockets[s]; dup {
				errs.add(p+".socket", "%q is already used by %s", vm.Socket, other)
			} else {
				sockets[s] = p
			}
		}
	}
	return errs
}

// validateVM checks one VM on its own (not against others) and normalizes
// its MAC. queues is the number of NIC queues in use.
func validateVM(vm *VMConfig, p string, queues int) errList {
	var errs errList
	if !vmNameRE.MatchString(vm.Name) {
		if vm.Name == "" {
			errs.add(p+".name", "is required")
		} else {
			errs.add(p+".name", "%q must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", vm.Name)
		}
	}
	if hw, err := parseVMMAC(vm.MAC); err != nil {
		errs.add(p+".mac", "%v", err)
	} else {
		vm.MAC = hw.String()
	}
	if vm.VLAN < 0 || vm.VLAN > 4094 {
		errs.add(p+".vlan", "%d is outside 0..4094 (0 = untagged)", vm.VLAN)
	}
	switch vm.Mode {
	case ModeServer, ModeClient:
	default:
		errs.add(p+".mode", "%q is not server or client", vm.Mode)
	}
	checkSocketPath(&errs, p+".socket", vm.Socket, vm.Mode != ModeClient)
	if vm.QueuePairs < 1 || vm.QueuePairs > queues {
		errs.add(p+".queue_pairs", "%d is outside 1..%d (the number of NIC queues)", vm.QueuePairs, queues)
	}
	validateIsolation(vm, p, &errs)
	validateDedicated(vm, p, &errs)
	return errs
}

// validateDedicated checks the queue keys and normalizes them: a
// dedicated VM ends with Queue "dedicated" and Dedicated set.
func validateDedicated(vm *VMConfig, p string, errs *errList) {
	switch vm.Dedicated {
	case "", string(dataplane.DedicatedPreferred), string(dataplane.DedicatedRequired):
	default:
		errs.add(p+".dedicated", "VM %q: %q is not required or preferred", vm.Name, vm.Dedicated)
		return
	}
	switch vm.Queue {
	case "":
		if vm.Dedicated != "" {
			vm.Queue = QueueDedicated
		}
	case QueueShared:
		if vm.Dedicated != "" {
			errs.add(p+".dedicated", "VM %q: dedicated: %s with queue: shared; set queue: dedicated or drop dedicated", vm.Name, vm.Dedicated)
		}
	case QueueDedicated:
	default:
		errs.add(p+".queue", "VM %q: %q is not shared or dedicated", vm.Name, vm.Queue)
		return
	}
	if vm.Queue == QueueDedicated && vm.Dedicated == "" {
		vm.Dedicated = string(dataplane.DedicatedPreferred)
	}
	if vm.QueueID != nil {
		if vm.Queue != QueueDedicated {
			errs.add(p+".queue_id", "VM %q: queue_id needs queue: dedicated", vm.Name)
		} else if q := *vm.QueueID; q < 0 || q >= MaxQueues {
			errs.add(p+".queue_id", "VM %q: queue %d is outside 0..%d", vm.Name, q, MaxQueues-1)
		}
	}
}

var vmNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func parseVMMAC(s string) (net.HardwareAddr, error) {
	if s == "" {
		return nil, errors.New("is required")
	}
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return nil, fmt.Errorf("%q is not a MAC address", s)
	}
	switch {
	case hw[0]&1 != 0:
		return nil, fmt.Errorf("%s is a multicast or broadcast address, not a VM's MAC", hw)
	case bytes.Equal(hw, make(net.HardwareAddr, 6)):
		return nil, fmt.Errorf("%s is the zero address, not a VM's MAC", hw)
	}
	return hw, nil
}

// checkSocketPath checks a unix socket path and its directory. A server
// socket's directory must be writable (vmqd creates the socket there), or
// missing with a writable parent (vmqd creates it).
func checkSocketPath(errs *errList, field, path string, server bool) {
	switch {
	case path == "":
		errs.add(field, "is required")
		return
	case !filepath.IsAbs(path):
		errs.add(field, "%q is not an absolute path", path)
		return
	case len(path) > maxSunPath:
		errs.add(field, "%q is longer than %d bytes, the unix socket limit", path, maxSunPath)
		return
	case strings.HasSuffix(path, "/"):
		errs.add(field, "%q names a directory, not a socket", path)
		return
	}
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if server && errors.Is(err, os.ErrNotExist) {
		// vmqd creates a missing last directory of its own sockets (as
		// systemd's RuntimeDirectory would): its parent must be usable.
		if pst, perr := os.Stat(filepath.Dir(dir)); perr == nil && pst.IsDir() && accessDir(filepath.Dir(dir), true) == nil {
			return
		}
	}
	switch {
	case err != nil:
		errs.add(field, "directory %s: %v", dir, unwrapPathErr(err))
	case !st.IsDir():
		errs.add(field, "%s is not a directory", dir)
	default:
		if err := accessDir(dir, server); err != nil {
			errs.add(field, "directory %s: %v", dir, err)
		}
	}
}

func unwrapPathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func checkHostPort(errs *errList, field, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		errs.add(field, "%q is not host:port", addr)
		return
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		errs.add(field, "%q has no valid port", addr)
		return
	}
	if host == "" {
		errs.add(field, "%q has no host; name the address to listen on (e.g. 127.0.0.1)", addr)
		return
	}
	if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
		errs.add(field, "%q: host must be an IP address or localhost", addr)
	}
}

// accessDir checks the daemon may create (server) or reach (client)
// sockets in dir.
func accessDir(dir string, server bool) error {
	mode := uint32(unix.R_OK | unix.X_OK)
	if server {
		mode = unix.W_OK | unix.X_OK
	}
	if err := unix.Access(dir, mode); err != nil {
		if server {
			return fmt.Errorf("not writable: %w", err)
		}
		return fmt.Errorf("not accessible: %w", err)
	}
	return nil
}
