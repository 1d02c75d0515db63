package control

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// validYAML is a complete valid config; %[1]s is a writable directory.
const validYAML = `
nic: veth0
attach_mode: native
queues: [0, 2]
frame_size: 2048
pin_dir: /sys/fs/bpf/vmqtest
api:
  socket: %[1]s/api.sock
  mode: "0660"
  tcp: 127.0.0.1:9470
metrics:
  address: 127.0.0.1:9469
polling:
  busy_poll: 20us
tx:
  path: socket
  xdp_min_batch: 32
keep_steering_on_exit: true
vms:
  - name: vm1
    mac: "02:00:00:00:00:0A"
    socket: %[1]s/vm1.sock
  - name: vm2
    mac: 02-00-00-00-00-0b
    vlan: 100
    socket: %[1]s/vm2.sock
    mode: client
    queue_pairs: 2
    allow_spoofing: true
    offloads: false
    no_packed_ring: true
    no_in_order: true
`

func sprintf(format, dir string) string { return strings.ReplaceAll(format, "%[1]s", dir) }

func TestParseValid(t *testing.T) {
	dir := t.TempDir()
	cfg, err := Parse([]byte(sprintf(validYAML, dir)))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if cfg.NIC != "veth0" || cfg.AttachMode != AttachNative || cfg.FrameSize != 2048 {
		t.Errorf("NIC fields: %+v", cfg)
	}
	if len(cfg.Queues) != 2 || cfg.Queues[0] != 0 || cfg.Queues[1] != 2 {
		t.Errorf("queues = %v, want [0 2]", cfg.Queues)
	}
	if cfg.API.Mode != 0o660 || cfg.API.TCP != "127.0.0.1:9470" || cfg.API.Socket != dir+"/api.sock" {
		t.Errorf("api = %+v", cfg.API)
	}
	if cfg.Polling.BusyPoll != 20*time.Microsecond || !cfg.KeepSteeringOnExit {
		t.Errorf("polling/keep = %v/%v", cfg.Polling.BusyPoll, cfg.KeepSteeringOnExit)
	}
	if cfg.Tx != (TxConfig{Path: TxPathSocket, XDPMinBatch: 32}) {
		t.Errorf("tx = %+v", cfg.Tx)
	}
	want1 := VMConfig{Name: "vm1", MAC: "02:00:00:00:00:0a", Socket: dir + "/vm1.sock", Mode: ModeServer, QueuePairs: 1,
		MaxGuestMemory: DefaultMaxGuestMemory, SocketMode: DefaultSocketMode}
	want2 := VMConfig{Name: "vm2", MAC: "02:00:00:00:00:0b", VLAN: 100, Socket: dir + "/vm2.sock", Mode: ModeClient, QueuePairs: 2, AllowSpoofing: true,
		MaxGuestMemory: DefaultMaxGuestMemory, SocketMode: DefaultSocketMode, NoPackedRing: true, NoInOrder: true, NoOffloads: true}
	if len(cfg.VMs) != 2 || !reflect.DeepEqual(cfg.VMs[0], want1) || !reflect.DeepEqual(cfg.VMs[1], want2) {
		t.Errorf("vms = %+v\nwant %+v, %+v", cfg.VMs, want1, want2)
	}
}

func TestParseDefaults(t *testing.T) {
	dir := t.TempDir()
	cfg, err := Parse([]byte("nic: eth0\napi: {socket: " + dir + "/a.sock}\nqueues: 3\n"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if cfg.AttachMode != AttachAuto || cfg.FrameSize != DefaultFrameSize || cfg.PinDir != DefaultPinDir ||
		cfg.API.Mode != 0o600 || cfg.API.TCP != "" || cfg.Metrics.Address != DefaultMetricsAddr ||
		cfg.Polling.BusyPoll != DefaultBusyPoll || cfg.KeepSteeringOnExit {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	if len(cfg.Queues) != 3 || cfg.Queues[2] != 2 {
		t.Errorf("queues: 3 gave %v", cfg.Queues)
	}
}

func TestExampleConfigParses(t *testing.T) {
	// The example's sockets live in /tmp and /run, which exist here.
	if _, err := Parse(ExampleConfig()); err != nil {
		t.Fatalf("example config: %v", err)
	}
}

func TestParseInvalid(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "afile")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const head = "nic: eth0\nqueues: 2\napi: {socket: %[1]s/api.sock}\n"
	vm := func(fields string) string {
		return head + "vms:\n  - {name: ok, mac: '02:00:00:00:00:01', socket: %[1]s/ok.sock}\n  - {" + fields + "}\n"
	}
	cases := []struct {
		name string
		yaml string
		want []string // substrings, each must appear
	}{
		{"bad MAC", vm("name: b, mac: '02:00:zz:00:00:01', socket: %[1]s/b.sock"), []string{`vms[1].mac: "02:00:zz:00:00:01" is not a MAC address`}},
		{"EUI-64 MAC", vm("name: b, mac: '02:00:00:00:00:00:00:01', socket: %[1]s/b.sock"), []string{"vms[1].mac:", "is not a MAC address"}},
		{"multicast MAC", vm("name: b, mac: '01:00:5e:00:00:01', socket: %[1]s/b.sock"), []string{"vms[1].mac: 01:00:5e:00:00:01 is a multicast or broadcast address"}},
		{"broadcast MAC", vm("name: b, mac: 'ff:ff:ff:ff:ff:ff', socket: %[1]s/b.sock"), []string{"vms[1].mac: ff:ff:ff:ff:ff:ff is a multicast or broadcast"}},
		{"zero MAC", vm("name: b, mac: '00:00:00:00:00:00', socket: %[1]s/b.sock"), []string{"vms[1].mac: 00:00:00:00:00:00 is the zero address"}},
		{"missing MAC", vm("name: b, socket: %[1]s/b.sock"), []string{"vms[1].mac: is required"}},
		{"duplicate name", vm("name: ok, mac: '02:00:00:00:00:02', socket: %[1]s/b.sock"), []string{`vms[1].name: "ok" is already the name of vms[0]`}},
		{"bad name", vm("name: 'a b', mac: '02:00:00:00:00:02', socket: %[1]s/b.sock"), []string{`vms[1].name: "a b" must be`}},
		{"missing name", vm("mac: '02:00:00:00:00:02', socket: %[1]s/b.sock"), []string{"vms[1].name: is required"}},
		{"duplicate MAC+VLAN", vm("name: b, mac: '02:00:00:00:00:01', socket: %[1]s/b.sock"), []string{"vms[1].mac: 02:00:00:00:00:01 on VLAN 0 is already vms[0]'s"}},
		{"VLAN too big", vm("name: b, mac: '02:00:00:00:00:02', vlan: 4095, socket: %[1]s/b.sock"), []string{"vms[1].vlan: 4095 is outside 0..4094"}},
		{"VLAN negative", vm("name: b, mac: '02:00:00:00:00:02', vlan: -1, socket: %[1]s/b.sock"), []string{"vms[1].vlan: -1 is outside 0..4094"}},
		{"queue pairs zero", vm("name: b, mac: '02:00:00:00:00:02', queue_pairs: 0, socket: %[1]s/b.sock"), []string{"vms[1].queue_pairs: 0 is outside 1..2"}},
		{"queue pairs above queues", vm("name: b, mac: '02:00:00:00:00:02', queue_pairs: 3, socket: %[1]s/b.sock"), []string{"vms[1].queue_pairs: 3 is outside 1..2"}},
		{"bad vhost mode", vm("name: b, mac: '02:00:00:00:00:02', mode: listen, socket: %[1]s/b.sock"), []string{`vms[1].mode: "listen" is not server or client`}},
		{"nonexistent socket dir", vm("name: b, mac: '02:00:00:00:00:02', socket: %[1]s/nodir/deeper/b.sock"), []string{"vms[1].socket: directory %[1]s/nodir/deeper: no such file or directory"}},
		{"socket dir is a file", vm("name: b, mac: '02:00:00:00:00:02', socket: %[1]s/afile/b.sock"), []string{"vms[1].socket: %[1]s/afile is not a directory"}},
		{"relative socket", vm("name: b, mac: '02:00:00:00:00:02', socket: b.sock"), []string{`vms[1].socket: "b.sock" is not an absolute path`}},
		{"missing socket", vm("name: b, mac: '02:00:00:00:00:02'"), []string{"vms[1].socket: is required"}},
		{"socket too long", vm("name: b, mac: '02:00:00:00:00:02', socket: /" + strings.Repeat("x", 120)), []string{"vms[1].socket:", "unix socket limit"}},
		{"duplicate socket", vm("name: b, mac: '02:00:00:00:00:02', socket: %[1]s/ok.sock"), []string{`vms[1].socket: "%[1]s/ok.sock" is already used by vms[0]`}},
		{"socket is API socket", vm("name: b, mac: '02:00:00:00:00:02', socket: %[1]s/api.sock"), []string{`vms[1].socket: "%[1]s/api.sock" is already used by api.socket`}},
		{"unknown VM key", vm("name: b, mac: '02:00:00:00:00:02', socket: %[1]s/b.sock, colour: red"), []string{`line 6: unknown key "colour" in a VM`}},
		{"unknown top key", head + "nics: eth1\n", []string{`unknown key "nics" at the top level`}},
		{"unknown nested key", "nic: eth0\napi: {socket: %[1]s/api.sock, sock_mode: '0600'}\n", []string{`unknown key "sock_mode" in api`}},
		{"bad attach mode", head + "attach_mode: offload\n", []string{`attach_mode: "offload" is not one of auto, native, generic`}},
		{"missing nic", "api: {socket: %[1]s/api.sock}\n", []string{"nic: is required"}},
		{"bad nic", "nic: 'eth0/../x'\napi: {socket: %[1]s/api.sock}\n", []string{`nic: "eth0/../x" is not an interface name`}},
		{"queue count zero", "nic: eth0\nqueues: 0\napi: {socket: %[1]s/api.sock}\n", []string{"queues: count 0 is outside 1..64"}},
		{"queue list dup", "nic: eth0\nqueues: [1, 1]\napi: {socket: %[1]s/api.sock}\n", []string{"queues[1]: queue 1 is listed twice"}},
		{"queue list range", "nic: eth0\nqueues: [0, 64]\napi: {socket: %[1]s/api.sock}\n", []string{"queues[1]: queue id 64 is outside 0..63"}},
		{"queue list empty", "nic: eth0\nqueues: []\napi: {socket: %[1]s/api.sock}\n", []string{"queues: needs 1..64 queues, got 0"}},
		{"queues not a number", "nic: eth0\nqueues: many\napi: {socket: %[1]s/api.sock}\n", []string{`queues must be a count or a list of queue ids, not "many"`}},
		{"frame size", head + "frame_size: 3000\n", []string{"frame_size: 3000 is not 2048 or 4096"}},
		{"pin dir relative", head + "pin_dir: bpf/vmq\n", []string{`pin_dir: "bpf/vmq" is not an absolute path`}},
		{"api mode not octal", "nic: eth0\napi: {socket: %[1]s/api.sock, mode: '0999'}\n", []string{`mode "0999" is not an octal permission`}},
		{"api mode owner cannot write", "nic: eth0\napi: {socket: %[1]s/api.sock, mode: '0400'}\n", []string{"api.mode: 0400 must give the owner read and write"}},
		{"api socket dir missing", "nic: eth0\napi: {socket: %[1]s/none/deeper/api.sock}\n", []string{"api.socket: directory %[1]s/none/deeper: no such file or directory"}},
		{"duplicate key", head + "api: {socket: %[1]s/api.sock, tcp: 'localhost'}\n", []string{"mapping key \"api\" already defined"}},
		{"api tcp no port", "nic: eth0\napi: {socket: %[1]s/api.sock, tcp: '127.0.0.1'}\n", []string{`api.tcp: "127.0.0.1" is not host:port`}},
		{"api tcp any host", "nic: eth0\napi: {socket: %[1]s/api.sock, tcp: ':9470'}\n", []string{`api.tcp: ":9470" has no host`}},
		{"metrics bad port", "nic: eth0\napi: {socket: %[1]s/api.sock}\nmetrics: {address: '127.0.0.1:99999'}\n", []string{`metrics.address: "127.0.0.1:99999" has no valid port`}},
		{"busy poll negative", "nic: eth0\napi: {socket: %[1]s/api.sock}\npolling: {busy_poll: -5us}\n", []string{"polling.busy_poll: -5µs is outside 0..1s"}},
		{"tx path", "nic: eth0\napi: {socket: %[1]s/api.sock}\ntx: {path: dpdk}\n", []string{`tx.path: "dpdk" is not auto, xdp or socket`}},
		{"tx min batch", "nic: eth0\napi: {socket: %[1]s/api.sock}\ntx: {xdp_min_batch: 0}\n", []string{"tx.xdp_min_batch: 0 is outside 1..1048576"}},
		{"busy poll not duration", "nic: eth0\napi: {socket: %[1]s/api.sock}\npolling: {busy_poll: fast}\n", []string{"cannot unmarshal", "fast"}},
		{"vlan not number", vm("name: b, mac: '02:00:00:00:00:02', vlan: ten, socket: %[1]s/b.sock"), []string{"cannot unmarshal", "ten"}},
		{"empty", "", []string{"the config is empty"}},
		{"not yaml", "nic: [unclosed\n", []string{"parse config"}},
		{"two documents", head + "---\nnic: eth1\n", []string{"more than one YAML document"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(sprintf(tc.yaml, dir)))
			if err == nil {
				t.Fatalf("Parse accepted:\n%s", sprintf(tc.yaml, dir))
			}
			for _, w := range tc.want {
				if w = sprintf(w, dir); !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseReportsAllErrors(t *testing.T) {
	dir := t.TempDir()
	y := sprintf(`nic: eth0
attach_mode: bogus
frame_size: 1
api: {socket: %[1]s/api.sock}
vms:
  - {name: a, mac: 'zz', socket: %[1]s/a.sock, vlan: 5000}
  - {name: a, mac: '02:00:00:00:00:01', socket: %[1]s/a.sock, queue_pairs: 9}
`, dir)
	_, err := Parse([]byte(y))
	if err == nil {
		t.Fatal("accepted")
	}
	fields := map[string]bool{}
	for _, fe := range FieldErrors(err) {
		fields[fe.Field] = true
	}
	for _, f := range []string{"attach_mode", "frame_size", "vms[0].mac", "vms[0].vlan", "vms[1].name", "vms[1].socket", "vms[1].queue_pairs"} {
		if !fields[f] {
			t.Errorf("no error for %s in %v", f, err)
		}
	}
}

func TestTooManyVMs(t *testing.T) {
	dir := t.TempDir()
	cfg := Default("eth0")
	cfg.API.Socket = dir + "/api.sock"
	for i := 0; i <= MaxVMs; i++ {
		cfg.VMs = append(cfg.VMs, testVM(dir, fmt.Sprintf("v%d", i), i+1))
	}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "vms: 256 VMs configured, at most 255") {
		t.Errorf("Validate = %v", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vmq.yaml")
	if err := os.WriteFile(p, []byte(sprintf(validYAML, dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load(missing) = %v", err)
	}
	big := filepath.Join(dir, "big.yaml")
	os.WriteFile(big, make([]byte, MaxConfigSize+10), 0o600)
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Load(big) = %v", err)
	}
}

func TestValidateGoConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := Default("eth0")
	cfg.API.Socket = dir + "/api.sock"
	cfg.VMs = []VMConfig{{Name: "x", MAC: "02:AA:00:00:00:01", Socket: dir + "/x.sock", Mode: ModeServer, QueuePairs: 1}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.VMs[0].MAC != "02:aa:00:00:00:01" {
		t.Errorf("MAC not normalized: %s", cfg.VMs[0].MAC)
	}
}

func TestNewLogger(t *testing.T) {
	var b strings.Builder
	l, err := NewLogger(&b, "json", "warn")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hidden")
	l.Warn("shown", "k", 1)
	if strings.Contains(b.String(), "hidden") || !strings.Contains(b.String(), `"msg":"shown"`) {
		t.Errorf("json/warn logger wrote %q", b.String())
	}
	b.Reset()
	l, _ = NewLogger(&b, "text", "DEBUG")
	l.Debug("dbg")
	if !strings.Contains(b.String(), "msg=dbg") {
		t.Errorf("text/debug logger wrote %q", b.String())
	}
	if _, err := NewLogger(&b, "xml", "info"); err == nil {
		t.Error("format xml accepted")
	}
	if _, err := NewLogger(&b, "json", "loud"); err == nil {
		t.Error("level loud accepted")
	}
}

func TestLogFlags(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	mk := LogFlags(fs)
	if err := fs.Parse([]string{"--log-format", "json", "--log-level", "error"}); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	l, err := mk(&b)
	if err != nil {
		t.Fatal(err)
	}
	l.Warn("no")
	l.Error("yes")
	if strings.Contains(b.String(), `"no"`) || !strings.Contains(b.String(), `"msg":"yes"`) {
		t.Errorf("logger wrote %q", b.String())
	}
}
