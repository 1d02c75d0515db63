package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/dataplane"
)

// fakeDP and fakeFT are just enough dataplane for the CLI: counters are
// derived from the slot so the expected output is fixed.
type fakeDP struct {
	mu  sync.Mutex
	vms map[string]control.VMSpec
}

func (d *fakeDP) AddVM(_ context.Context, vm control.VMSpec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.vms[vm.Name] = vm
	return nil
}

func (d *fakeDP) RemoveVM(_ context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.vms, name)
	return nil
}

func (d *fakeDP) SetLimits(name string, l dataplane.Limits) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	vm, ok := d.vms[name]
	if !ok {
		return fmt.Errorf("fake: no VM %q", name)
	}
	vm.Limits = control.Limits{RxPPS: l.RxPPS, RxBPS: l.RxBPS, TxPPS: l.TxPPS, TxBPS: l.TxBPS}
	d.vms[name] = vm
	return nil
}

func (d *fakeDP) Snapshot() dataplane.Snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := dataplane.Snapshot{
		NIC:    dataplane.NICStatus{Name: "veth0", Index: 7, Driver: "veth", MTU: 1500, Queues: []int{0, 1}, Channels: 4, AttachMode: "native", Attached: true, FrameSize: 4096, Notes: []string{"copy mode: veth has no zero-copy"}},
		Filter: dataplane.FilterStats{Redirected: 1000, Passed: 20, Flooded: 3, Malformed: 1, NoSocket: 2},
		Workers: []dataplane.WorkerStats{
			{Queue: 0, CPUs: "3", BusyNS: 250, IdleNS: 750, Batches: 40, Wakeups: 5, Polls: 2, VirtQueues: 2, XDPSockets: 2, FreeFrames: 1900, TotalFrames: 2048, InFlightFrames: 148, Stalls: 1,
				TxPath: "xdp", TxXDPFrames: 300, TxSocketFrames: 12, XDPTxFallbacks: 1, XDPTxResent: 4},
			{Queue: 1, Batches: 0, TotalFrames: 2048, FreeFrames: 2048},
		},
		Sockets: []dataplane.SocketStats{{VM: "", Queue: 0}},
	}
	for _, name := range []string{"web", "db", "new", "ded"} {
		vm, ok := d.vms[name]
		if !ok {
			continue
		}
		n := uint64(vm.Slot)
		s.VMs = append(s.VMs, dataplane.VMStats{Name: name, Slot: vm.Slot, MAC: vm.MAC, VLAN: uint16(vm.VLAN),
			RxPackets: 100 * n, RxBytes: 6400 * n, TxPackets: 10 * n, TxBytes: 640 * n, FloodCopies: n,
			FilterPackets: 100 * n, FilterBytes: 6400 * n,
			DropsByReason: map[string]uint64{"virtqueue_full": n, "spoofed": 0, "guest_not_ready": 2}})
		if vm.Queue == control.QueueDedicated {
			s.VMs[len(s.VMs)-1].Dedicated = &dataplane.DedicatedStats{Mode: dataplane.DedicatedMode(vm.Dedicated),
				Queue: vm.DedicatedQueue(), State: "direct", Frames: 500, Steering: "flow rule at location 516"}
		}
		s.Ports = append(s.Ports, dataplane.PortStats{VM: name, Path: vm.Socket, Mode: vm.Mode, Connected: true, Features: 0x130000000, QueuePairs: vm.QueuePairs})
		s.Sockets = append(s.Sockets, dataplane.SocketStats{VM: name, Queue: 0, RxDropped: n})
	}
	return s
}

type fakeFT struct{}

func (fakeFT) Filters() (map[control.FilterKey]uint32, error)   { return nil, nil }
func (fakeFT) SetFilter(net.HardwareAddr, uint16, uint32) error { return nil }
func (fakeFT) DeleteFilter(net.HardwareAddr, uint16) error      { return nil }

// server starts vmqd's API with VMs web (slot 1) and db (slot 2, VLAN 20).
func server(t *testing.T) (apiSock, dir string) {
	t.Helper()
	dir = t.TempDir()
	cfg := control.Default("veth0")
	cfg.Queues = []int{0, 1}
	cfg.API.Socket = filepath.Join(dir, "api.sock")
	cfg.VMs = []control.VMConfig{
		{Name: "web", MAC: "02:00:00:00:00:01", Socket: dir + "/web.sock", Mode: "server", QueuePairs: 1},
		{Name: "db", MAC: "02:00:00:00:00:02", VLAN: 20, Socket: dir + "/db.sock", Mode: "client", QueuePairs: 2},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctl, err := control.NewController(cfg, &fakeDP{vms: map[string]control.VMSpec{}}, fakeFT{}, control.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	l, err := control.ListenUnix(cfg.API.Socket, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	srv := control.NewServer(ctl, log)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return cfg.API.Socket, dir
}

func vmqctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

func expect(t *testing.T, args []string, wantCode int, want string) string {
	t.Helper()
	code, out, errOut := vmqctl(t, args...)
	if code != wantCode {
		t.Fatalf("vmqctl %v: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", args, code, wantCode, out, errOut)
	}
	if want != "" && out != want {
		t.Errorf("vmqctl %v output:\n%s\nwant:\n%s", args, out, want)
	}
	return out + errOut
}

func TestVMListTable(t *testing.T) {
	sock, dir := server(t)
	want := strings.ReplaceAll(`NAME  SLOT  STATE    MAC                VLAN  MODE    QP  SOCKET         SOURCE
db    2     running  02:00:00:00:00:02  20    client  2   DIR/db.sock    config
web   1     running  02:00:00:00:00:01  -     server  1   DIR/web.sock  config
`, "DIR", dir)
	// tabwriter pads to the widest cell; rebuild the expectation from
	// its columns so the temp dir's length doesn't matter.
	want = retab(want)
	expect(t, []string{"--socket", sock, "vm", "list"}, 0, want)
}

// retab re-aligns a space-separated table like tabwriter does.
func retab(s string) string {
	var b bytes.Buffer
	tw := newTab(&b)
	for _, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		fmt.Fprintln(tw, strings.Join(strings.Fields(line), "\t"))
	}
	tw.Flush()
	return b.String()
}

func TestVMListJSON(t *testing.T) {
	sock, dir := server(t)
	out := expect(t, []string{"--socket", sock, "vm", "list", "-o", "json"}, 0, "")
	var vms []control.VMInfo
	if err := json.Unmarshal([]byte(out), &vms); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if len(vms) != 2 || vms[0].Name != "db" || vms[0].Slot != 2 || vms[0].VLAN != 20 || vms[0].Socket != dir+"/db.sock" || vms[1].State != control.StateRunning {
		t.Errorf("vms = %+v", vms)
	}
	// -o before the command works too.
	out2 := expect(t, []string{"--socket", sock, "-o", "json", "vm", "list"}, 0, "")
	if out2 != out {
		t.Errorf("-o before the command gave\n%s", out2)
	}
}

func TestVMAddShowRemove(t *testing.T) {
	sock, dir := server(t)
	expect(t, []string{"--socket", sock, "vm", "add", "new", "--mac", "02:00:00:00:00:AA", "--vlan", "5",
		"--socket", dir + "/new.sock", "--mode", "client", "--queue-pairs", "2", "--allow-spoofing"}, 0,
		"added VM new on slot 3\n")

	want := strings.ReplaceAll(`Name:            new
Slot:            3
State:           running
Source:          api
MAC:             02:00:00:00:00:aa
VLAN:            5
Socket:          DIR/new.sock (client)
Queue pairs:     2
Allow spoofing:  true
Offloads:        true
Limits:          flood_pps=10000 (default)
Connected:       true
Features:        0x130000000 (protocol 0x0)
RX:              300 packets, 19200 bytes
TX:              30 packets, 1920 bytes
Flood copies:    3
RX copied:       0 bytes
Filter:          300 packets, 19200 bytes, 0 redirect errors
Drops:           guest_not_ready=2 virtqueue_full=3
`, "DIR", dir)
	expect(t, []string{"--socket", sock, "vm", "show", "new"}, 0, want)

	out := expect(t, []string{"--socket", sock, "-o", "json", "vm", "show", "new"}, 0, "")
	var d control.VMDetail
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatal(err)
	}
	if d.Name != "new" || !d.AllowSpoofing || d.Stats == nil || d.Stats.RxPackets != 300 || d.Stats.DropsByReason["virtqueue_full"] != 3 || d.Port == nil {
		t.Errorf("show json = %+v", d)
	}

	expect(t, []string{"--socket", sock, "vm", "rm", "new"}, 0, "removed VM new\n")
	out = expect(t, []string{"--socket", sock, "vm", "show", "new"}, 1, "")
	if !strings.Contains(out, `vmqctl: VM "new": no such VM (HTTP 404)`) {
		t.Errorf("show removed VM: %q", out)
	}
	// The others are still there.
	out = expect(t, []string{"--socket", sock, "-o", "json", "vm", "list"}, 0, "")
	if !strings.Contains(out, `"web"`) || !strings.Contains(out, `"db"`) || strings.Contains(out, `"new"`) {
		t.Errorf("list after rm:\n%s", out)
	}
}

func TestVMAddErrors(t *testing.T) {
	sock, dir := server(t)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"vm", "add", "x", "--mac", "nonsense", "--socket", dir + "/x.sock"}, 1, `vm.mac: \"nonsense\" is not a MAC address`},
		{[]string{"vm", "add", "web", "--mac", "02:00:00:00:00:09", "--socket", dir + "/x.sock"}, 1, "already exists (HTTP 409)"},
		{[]string{"vm", "add", "x", "--socket", dir + "/x.sock"}, 2, "vm add needs --mac and --socket"},
		{[]string{"vm", "add", "--mac", "02:00:00:00:00:09", "--socket", dir + "/x.sock"}, 2, "needs exactly one VM name"},
		{[]string{"vm", "add", "x", "--mac", "02:00:00:00:00:09", "--socket", dir + "/x.sock", "--vlan", "ten"}, 2, "invalid value"},
		{[]string{"vm", "rm", "ghost"}, 1, "no such VM"},
		{[]string{"vm", "frobnicate"}, 2, `unknown command "vm frobnicate"`},
		{[]string{"launch"}, 2, `unknown command "launch"`},
		{[]string{"vm"}, 2, "vm needs list"},
		{[]string{}, 2, "no command"},
		{[]string{"status", "extra"}, 2, "takes no arguments"},
		{[]string{"-o", "yaml", "status"}, 2, `-o "yaml"`},
		{[]string{"--bogus", "status"}, 2, "flag provided but not defined"},
	} {
		code, out, errOut := vmqctl(t, append([]string{"--socket", sock}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, strings.ReplaceAll(tc.want, `\"`, `"`)) {
			t.Errorf("vmqctl %v: exit %d stderr %q stdout %q; want exit %d containing %q", tc.args, code, errOut, out, tc.code, tc.want)
		}
	}
	if code, _, errOut := vmqctl(t, "--socket", filepath.Join(dir, "none.sock"), "status"); code != 1 || !strings.Contains(errOut, "none.sock") {
		t.Errorf("no daemon: exit %d %q", code, errOut)
	}
	if code, out, _ := vmqctl(t, "-h"); code != 0 || !strings.Contains(out, "usage: vmqctl") {
		t.Errorf("-h: %d %q", code, out)
	}
}

func TestStatus(t *testing.T) {
	sock, _ := server(t)
	out := expect(t, []string{"--socket", sock, "status"}, 0, "")
	lines := strings.SplitN(out, "\n", 5)
	if lines[0] != "NIC veth0 (ifindex 7, veth, mtu 1500): XDP native, queues [0 1] of 4, frame size 4096" ||
		lines[1] != "  note: copy mode: veth has no zero-copy" ||
		!strings.HasPrefix(lines[2], "VMs: 2 (2 running), slots max 255; up since ") ||
		!strings.HasPrefix(lines[3], "Threads other than the workers run on CPUs ") {
		t.Errorf("status header:\n%s", out)
	}
	wantTable := retab(`QUEUE CPUS BUSY BATCHES WAKEUPS POLLS VQS XSKS FREE/FRAMES INFLIGHT STALLS TX_PATH TX_XDP TX_SOCKET XDP_FAILS XDP_RESENT
0 3 25.0% 40 5 2 2 2 1900/2048 148 1 xdp 300 12 1 4
1 - - 0 0 0 0 0 2048/2048 0 0 - 0 0 0 0
`)
	if !strings.HasSuffix(out, "\n\n"+wantTable) {
		t.Errorf("status table:\n%s\nwant suffix:\n%s", out, wantTable)
	}
	out = expect(t, []string{"--socket", sock, "status", "-o", "json"}, 0, "")
	var st control.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.NIC.Name != "veth0" || len(st.Workers) != 2 || st.Workers[0].Batches != 40 || st.Workers[0].CPUs != "3" || st.VMs != 2 || st.HousekeepingCPUs == "" {
		t.Errorf("status json = %+v", st)
	}
}

func TestStats(t *testing.T) {
	sock, _ := server(t)
	want := "filter: redirected 1000, passed 20, flooded 3, malformed 1, no socket 2\n\n" +
		retab(`VM SLOT RX_PKTS RX_BYTES TX_PKTS TX_BYTES FLOOD DROPS
web 1 100 6400 10 640 1 3
db 2 200 12800 20 1280 2 4
`) + "\n" + retab(`SOCKET_VM QUEUE ZC RX_DROP RX_INVAL TX_INVAL RX_FULL FILL_EMPTY TX_EMPTY
(flood) 0 false 0 0 0 0 0 0
web 0 false 1 0 0 0 0 0
db 0 false 2 0 0 0 0 0
`)
	expect(t, []string{"--socket", sock, "stats"}, 0, want)
	out := expect(t, []string{"--socket", sock, "-o", "json", "stats"}, 0, "")
	var s dataplane.Snapshot
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	if s.Filter.Redirected != 1000 || len(s.VMs) != 2 || s.VMs[1].RxBytes != 12800 || s.VMs[1].DropsByReason["virtqueue_full"] != 2 {
		t.Errorf("stats json = %+v", s)
	}
}

func TestVMSetLimits(t *testing.T) {
	sock, dir := server(t)
	expect(t, []string{"--socket", sock, "vm", "set", "web", "--tx-pps", "1000", "--rx-bps", "50000000"}, 0,
		"VM web limits: rx_bps=50000000 tx_pps=1000 flood_pps=10000 (default)\n")
	// Flags not given keep their value; 0 clears.
	expect(t, []string{"--socket", sock, "vm", "set", "web", "--tx-pps", "0", "--rx-pps", "7"}, 0,
		"VM web limits: rx_pps=7 rx_bps=50000000 flood_pps=10000 (default)\n")
	out := expect(t, []string{"--socket", sock, "vm", "show", "web"}, 0, "")
	if !strings.Contains(out, "Limits:          rx_pps=7 rx_bps=50000000 flood_pps=10000 (default)\n") {
		t.Errorf("show:\n%s", out)
	}
	out = expect(t, []string{"--socket", sock, "-o", "json", "vm", "set", "web", "--rx-bps", "0"}, 0, "")
	var info control.VMInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil || !info.Limits.Equal(control.Limits{RxPPS: 7}) {
		t.Errorf("json: %+v %v\n%s", info.Limits, err, out)
	}
	// Storm control: 0 turns the default off, a value replaces it.
	expect(t, []string{"--socket", sock, "vm", "set", "web", "--flood-pps", "0"}, 0,
		"VM web limits: rx_pps=7 flood_pps=unlimited\n")
	expect(t, []string{"--socket", sock, "vm", "set", "web", "--flood-pps", "250"}, 0,
		"VM web limits: rx_pps=7 flood_pps=250\n")
	// Limits on add.
	expect(t, []string{"--socket", sock, "vm", "add", "lim", "--mac", "02:00:00:00:00:0c", "--socket", dir + "/lim.sock", "--tx-bps", "1000000"}, 0, "added VM lim on slot 3\n")
	out = expect(t, []string{"--socket", sock, "vm", "show", "lim"}, 0, "")
	if !strings.Contains(out, "Limits:          tx_bps=1000000 flood_pps=10000 (default)\n") {
		t.Errorf("show after add:\n%s", out)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"vm", "set", "web"}, 2, "vm set needs at least one of"},
		{[]string{"vm", "set", "--tx-pps", "5"}, 2, "needs exactly one VM name"},
		{[]string{"vm", "set", "web", "--tx-pps", "-5"}, 2, "invalid value"},
		{[]string{"vm", "set", "ghost", "--tx-pps", "5"}, 1, "no such VM (HTTP 404)"},
	} {
		code, out, errOut := vmqctl(t, append([]string{"--socket", sock}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("vmqctl %v: exit %d stderr %q stdout %q; want exit %d containing %q", tc.args, code, errOut, out, tc.code, tc.want)
		}
	}
}

// TestStatusDedicated: a VM added with --queue dedicated shows in the
// status's dedicated table (queue, direct or fallback, copy or zero-copy).
func TestStatusDedicated(t *testing.T) {
	sock, dir := server(t)
	expect(t, []string{"--socket", sock, "vm", "add", "ded", "--mac", "02:00:00:00:00:dd", "--socket", dir + "/ded.sock",
		"--queue", "dedicated", "--queue-id", "3", "--dedicated", "required"}, 0, "")
	out := expect(t, []string{"--socket", sock, "status"}, 0, "")
	want := retab(`DEDICATED_VM QUEUE MODE STATE XSK IN_PLACE COPIED_BYTES FALLBACK
ded 3 required direct copy 500 0 -
`)
	if !strings.HasSuffix(out, "\n\n"+want) {
		t.Errorf("status:\n%s\nwant suffix:\n%s", out, want)
	}
	expect(t, []string{"--socket", sock, "vm", "add", "bad", "--mac", "02:00:00:00:00:de", "--socket", dir + "/bad.sock",
		"--queue", "dedicated", "--queue-id", "x"}, 2, "")
}
