package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/promtest"
	"github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// bed is vmqd on the shared test bed: a veth NIC in a host namespace,
// the peer in a wire namespace (10.0.0.1/24), with pins in a private
// bpffs directory.
type bed struct {
	*testbed.Bed
	t   *testing.T
	cfg *control.Config
}

func newBed(t *testing.T, vms ...control.VMConfig) *bed {
	t.Helper()
	return newBedQueues(t, 1, vms...)
}

// newBedQueues is newBed with a NIC of several queues, all served.
func newBedQueues(t *testing.T, queues int, vms ...control.VMConfig) *bed {
	t.Helper()
	return newBedOpts(t, testbed.Options{Queues: queues}, vms...)
}

// newBedOpts is newBed on a bed shaped by opts (the wire address is set).
func newBedOpts(t *testing.T, opts testbed.Options, vms ...control.VMConfig) *bed {
	t.Helper()
	opts.WireAddr = "10.0.0.1/24"
	b := &bed{Bed: testbed.New(t, opts), t: t}
	pinRoot := b.PinDir()

	cfg := control.Default(b.NIC.Name)
	cfg.Queues = b.QueueIDs()
	cfg.PinDir = pinRoot
	cfg.API.Socket = filepath.Join(b.Dir, "api.sock")
	cfg.Metrics.Address = "" // start() serves metrics on a free port
	for _, vm := range vms {
		vm.Socket = b.Socket(vm.Name)
		vm.Mode, vm.QueuePairs = control.ModeServer, 1
		cfg.VMs = append(cfg.VMs, vm)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	b.cfg = cfg
	return b
}

func (b *bed) start() *daemon {
	b.t.Helper()
	h := b.Host.Handle()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := startDaemon(context.Background(), daemonOptions{cfg: b.cfg, log: log, netns: &h, metricsAddr: "127.0.0.1:0"})
	if err != nil {
		b.t.Fatalf("start vmqd: %v", err)
	}
	b.t.Cleanup(func() { d.stop(context.Background()) })
	return d
}

// guest connects a Go guest to a VM's socket; with reconnect it comes back
// after the daemon restarts.
func (b *bed) guest(name, mac, ip string, reconnect bool) *frontend.Guest {
	b.t.Helper()
	cfg := testbed.GuestConfig(mac, 1, ip)
	cfg.Reconnect = reconnect
	return testbed.DialGuest(b.t, name, b.Socket(name), cfg)
}

// waitPorts waits until every VM's port runs both virtqueues.
func waitPorts(t *testing.T, d *daemon, n int) {
	t.Helper()
	if err := waitGuestsRunning(d, n, 15*time.Second); err != nil {
		t.Fatal(err)
	}
}

var (
	streamReceived = testbed.StreamReceived
	waitStream     = testbed.WaitStream
)

// scrapeMetric reads one sample from vmqd's /metrics.
func scrapeMetric(t *testing.T, addr, name string, labels string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	want := name + "{" + labels + "}"
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, labels) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no %s in /metrics", want)
	return 0
}

var vm1 = control.VMConfig{Name: "vm1", MAC: "02:00:00:00:01:01"}

// One vmqd, two guests (one on VLAN 100): exact delivery, the same count
// in the guest, in `vmqctl stats`, in /metrics and in a real Prometheus;
// the real ping reaches a guest through the flood path (ARP) and back.
func TestDaemonEndToEnd(t *testing.T) {
	vm2 := control.VMConfig{Name: "vm2", MAC: "02:00:00:00:01:02", VLAN: 100}
	b := newBed(t, vm1, vm2)
	d := b.start()
	g1 := b.guest("vm1", vm1.MAC, "10.0.0.11", false)
	g2 := b.guest("vm2", vm2.MAC, "", false)
	waitPorts(t, d, 2)

	const n = 2500
	b.Send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(vm1.MAC)}}, Size: 128, Stream: 1}, n)
	b.Send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(vm2.MAC), VLAN: 100}}, Size: 128, Stream: 2}, n)
	waitStream(t, "vm1", g1, 1, n)
	waitStream(t, "vm2", g2, 2, n)

	// vmqctl, the real CLI, over the API socket.
	vmqctl := buildTool(t, "../vmqctl", "vmqctl")
	out, err := exec.Command(vmqctl, "--socket", b.cfg.API.Socket, "stats", "-o", "json").Output()
	if err != nil {
		t.Fatalf("vmqctl stats: %v", err)
	}
	var snap dataplane.Snapshot
	if err := json.Unmarshal(out, &snap); err != nil {
		t.Fatalf("vmqctl stats -o json: %v\n%s", err, out)
	}
	p := promtest.Start(t, d.metricsAddr)
	for _, v := range snap.VMs {
		if v.RxPackets != n {
			t.Errorf("vmqctl: %s rx_packets %d, want %d", v.Name, v.RxPackets, n)
		}
		label := fmt.Sprintf(`vm=%q`, v.Name)
		if got := scrapeMetric(t, d.metricsAddr, "vmq_vm_rx_packets_total", label); got != n {
			t.Errorf("/metrics: %s rx %v, want %d", v.Name, got, n)
		}
		got := p.WaitQuery(t, `vmq_vm_rx_packets_total{`+label+`}`, 1)
		if got[0].Value[1] != strconv.Itoa(n) {
			t.Errorf("Prometheus: vmq_vm_rx_packets_total{%s} = %v, want %d", label, got[0].Value[1], n)
		}
	}
	if len(snap.VMs) != 2 {
		t.Fatalf("vmqctl stats shows %d VMs", len(snap.VMs))
	}

	// A real tool on the wire: ping resolves the guest by ARP (broadcast,
	// through the flood socket) and gets its echo replies.
	testenv.RequireCommand(t, "ping")
	pout, err := b.Wire.Command("ping", "-c", "10", "-i", "0.05", "-W", "2", "10.0.0.11").CombinedOutput()
	if err != nil || !strings.Contains(string(pout), " 0% packet loss") {
		t.Fatalf("ping 10.0.0.11 from the wire: %v\n%s", err, pout)
	}
	if st := g1.Stats(); st.ICMPReplies < 10 || st.ARPReplies < 1 {
		t.Fatalf("vm1 answered %d pings and %d ARPs", st.ICMPReplies, st.ARPReplies)
	}
}

// With keep_steering_on_exit the XDP program and the pinned filters stay
// while vmqd is down: frames for a VM are dropped as "no socket", never
// leaked to the host stack; the next vmqd reconciles the pins and the
// guest, reconnecting, receives again.
func TestDaemonRestartKeepsSteering(t *testing.T) {
	b := newBed(t, vm1)
	b.cfg.KeepSteeringOnExit = true
	d := b.start()
	g := b.guest("vm1", vm1.MAC, "", true)
	waitPorts(t, d, 1)
	b.Send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(vm1.MAC)}}, Size: 64, Stream: 1}, 500)
	waitStream(t, "vm1 before restart", g, 1, 500)

	if err := d.stop(context.Background()); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if out := b.Host.Run(t, "ip", "link", "show", b.NIC.Name); !strings.Contains(out, "xdp") {
		t.Fatalf("XDP program gone after a keep-steering stop:\n%s", out)
	}
	pinned := openPinned(t, b)
	before, err := pinned.GlobalCounters()
	if err != nil {
		t.Fatal(err)
	}
	b.Send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(vm1.MAC)}}, Size: 64, Stream: 2}, 300)
	after, err := pinned.GlobalCounters()
	if err != nil {
		t.Fatal(err)
	}
	if after.NoSocket-before.NoSocket != 300 || after.Passed != before.Passed {
		t.Fatalf("while down: no_socket +%d, passed +%d; want +300 and +0",
			after.NoSocket-before.NoSocket, after.Passed-before.Passed)
	}
	if f, err := pinned.Filters(); err != nil || len(f) != 1 {
		t.Fatalf("pinned filters while down: %v, %v", f, err)
	}
	pinned.Close()

	d2 := b.start()
	waitPorts(t, d2, 1)
	b.Send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(vm1.MAC)}}, Size: 64, Stream: 3}, 500)
	waitStream(t, "vm1 after restart", g, 3, 500)
	if got := streamReceived(g, 2); got != 0 {
		t.Fatalf("guest got %d frames sent while vmqd was down", got)
	}

	// A plain stop (no keep-steering) takes the program off the NIC.
	d2.keepSteering = false
	if err := d2.stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out := b.Host.Run(t, "ip", "link", "show", b.NIC.Name); strings.Contains(out, "xdp") {
		t.Fatalf("XDP program still attached after stop:\n%s", out)
	}
}

func openPinned(t *testing.T, b *bed) *bpf.Filter {
	t.Helper()
	var f *bpf.Filter
	err := b.Host.Do(func() error {
		var err error
		f, err = bpf.Load(bpf.Config{MaxVMs: control.MaxVMs, MaxQueues: control.MaxQueues,
			PinDir: filepath.Join(b.cfg.PinDir, b.cfg.NIC)})
		return err
	})
	if err != nil {
		t.Fatalf("open pinned maps: %v", err)
	}
	return f
}

// SIGHUP's reload adds a VM from the file; a broken file changes nothing.
func TestDaemonReload(t *testing.T) {
	b := newBed(t, vm1)
	d := b.start()
	path := filepath.Join(b.Dir, "vmqd.yaml")
	write := func(extra string) {
		var sb strings.Builder
		fmt.Fprintf(&sb, "nic: %s\npin_dir: %s\napi: {socket: %s}\nmetrics: {address: \"\"}\nvms:\n", b.cfg.NIC, b.cfg.PinDir, b.cfg.API.Socket)
		fmt.Fprintf(&sb, "  - {name: vm1, mac: %q, socket: %s}\n", vm1.MAC, filepath.Join(b.Dir, "vm1.sock"))
		sb.WriteString(extra)
		if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(fmt.Sprintf("  - {name: vm2, mac: \"02:00:00:00:01:02\", socket: %s}\n", filepath.Join(b.Dir, "vm2.sock")))
	if err := d.reload(context.Background(), path); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if names := vmNames(d); names != "vm1,vm2" {
		t.Fatalf("after reload: VMs %s", names)
	}
	g2 := b.guest("vm2", "02:00:00:00:01:02", "", false)
	waitPorts(t, d, 1) // vm2's guest; vm1 has none
	b.Send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC("02:00:00:00:01:02")}}, Size: 64, Stream: 5}, 200)
	waitStream(t, "vm2 added by reload", g2, 5, 200)

	write("  - {name: vm3, mac: \"not-a-mac\", socket: /x.sock}\n")
	err := d.reload(context.Background(), path)
	if err == nil || !strings.Contains(err.Error(), "vms[1].mac") {
		t.Fatalf("reload of a broken config: %v", err)
	}
	if names := vmNames(d); names != "vm1,vm2" {
		t.Fatalf("a broken reload changed the VMs: %s", names)
	}
}

func vmNames(d *daemon) string {
	var names []string
	for _, v := range d.ctl.VMs() {
		names = append(names, v.Name)
	}
	return strings.Join(names, ",")
}

// vmqctl status tells the operator what vmqd found and chose: the driver,
// the channels, native or generic XDP, copy or zero-copy sockets, per
// worker; on one queue and on four.
func TestDaemonReportsNIC(t *testing.T) {
	for _, queues := range []int{1, 4} {
		t.Run(fmt.Sprintf("queues=%d", queues), func(t *testing.T) {
			b := newBedQueues(t, queues, vm1)
			b.start()
			c := control.NewClient(b.cfg.API.Socket)
			defer c.Close()
			st, err := c.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			nic := st.NIC
			if nic.Name != b.NIC.Name || nic.Driver != "veth" || nic.Channels != queues || nic.MTU != 1500 ||
				nic.AttachMode != "native" || !nic.Attached || nic.FrameSize != 4096 || len(nic.Queues) != queues {
				t.Fatalf("status NIC: %+v", nic)
			}
			if !slices.ContainsFunc(nic.Notes, func(n string) bool { return strings.Contains(n, "copy mode") }) {
				t.Errorf("no note on copy mode: %q", nic.Notes)
			}
			if len(st.Workers) != queues {
				t.Fatalf("%d workers, want %d", len(st.Workers), queues)
			}
			for i, w := range st.Workers {
				// vm1's receive and transmit sockets and the flood socket on every queue.
				if w.Queue != i || w.XDPSockets != 3 || w.TotalFrames == 0 {
					t.Errorf("worker %d: %+v", i, w)
				}
			}
			snap, err := c.Stats(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			// vm1's socket and the flood socket on every queue.
			if len(snap.Sockets) != 2*queues {
				t.Fatalf("%d sockets, want two per queue: %+v", len(snap.Sockets), snap.Sockets)
			}
			for _, s := range snap.Sockets {
				if (s.VM != "vm1" && s.VM != "") || s.ZeroCopy {
					t.Errorf("socket %+v: want vm1's or the flood socket, in copy mode (veth)", s)
				}
			}
		})
	}
}
