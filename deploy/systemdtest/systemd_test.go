// Package systemdtest runs vmqd under deploy/systemd/vmqd.service and a
// real systemd: systemd-nspawn boots the host's systemd as PID 1 in a
// container whose network namespace holds a veth "NIC", deploy/install.sh
// installs vmqd and the unit with their default paths, and systemctl
// starts, restarts and stops it. So the unit's sandbox is the one
// systemd applies (capabilities, seccomp, the mount namespace), where
// deploy/captest emulates each part of it on its own.
package systemdtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

const (
	unit   = "vmqd.service"
	vmMAC  = "02:00:00:00:01:01"
	frames = 100 // sent to the guest after each start
)

// installVmqd builds vmqd and installs it with deploy/install.sh into a
// staging root (DESTDIR) with the default paths: the unit in
// /usr/local/lib/systemd/system names /usr/local/bin/vmqd and
// /etc/vmq/vmqd.yaml. The container binds root's /usr/local and /etc/vmq.
func installVmqd(t *testing.T) (root string) {
	t.Helper()
	bins := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bins, "vmqd"), "github.com/vmq/vmq/cmd/vmqd").CombinedOutput(); err != nil {
		t.Fatalf("build vmqd: %v\n%s", err, out)
	}
	// install.sh installs every command; only vmqd runs here.
	for _, c := range []string{"vmqctl", "vmq-pktgen", "vmq-guest", "vmq-cni"} {
		if err := os.WriteFile(filepath.Join(bins, c), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	root = t.TempDir()
	cmd := exec.Command("bash", "../install.sh", "install")
	cmd.Env = append(os.Environ(), "DESTDIR="+root, "SRCBIN="+bins,
		"PREFIX=/usr/local", "SYSCONFDIR=/etc", "UNITDIR=/usr/local/lib/systemd/system")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install.sh install: %v\n%s", err, out)
	}
	return root
}

// writeConfig is the admin's edit of the installed /etc/vmq/vmqd.yaml:
// the shipped one's paths (sockets in /run/vmq, state in /var/lib/vmq,
// steering kept across restarts), the bed's NIC, VM vm1 and then extra
// VMs vm2, vm3, ...
func writeConfig(t *testing.T, root, nic, pinDir string, extra int) {
	t.Helper()
	cfg := fmt.Sprintf(`nic: %s
attach_mode: auto
queues: 1
pin_dir: %s
keep_steering_on_exit: true
state_file: /var/lib/vmq/ports.json
api: {socket: /run/vmq/vmqd.sock, mode: "0600"}
metrics: {address: "127.0.0.1:9469"}
# Every guest frame through the XDP transmit (BPF_PROG_RUN under the unit's
# seccomp filter), and a failure to load it fatal.
tx: {path: xdp, xdp_min_batch: 1}
vms:
  - {name: vm1, mac: "%s", socket: /run/vmq/vm1.sock, mode: server}
`, nic, pinDir, vmMAC)
	for i := 2; i < 2+extra; i++ {
		cfg += fmt.Sprintf("  - {name: vm%d, mac: \"02:00:00:00:01:%02x\", socket: /run/vmq/vm%d.sock, mode: server}\n", i, i, i)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/vmq/vmqd.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestUnitUnderSystemd: under a real systemd (nspawn --boot), the shipped
// unit as install.sh installs it starts vmqd with the unit's sandbox as
// systemd applies it; vmqd attaches its filter, pins in bpffs, answers on
// its API socket, names the XDP transmit's driver drops (tracepoints:
// perf_event_open through the unit's seccomp filter) and serves a guest
// both ways (frames from the wire; frames to the wire through the XDP
// transmit); systemctl restart reconciles from the pins (the same pinned
// link), systemctl reload (ExecReload) adds a VM in the same process,
// systemctl stop ends it cleanly; systemd says nothing against the unit.
func TestUnitUnderSystemd(t *testing.T) {
	testenv.RequireRoot(t)
	root := installVmqd(t)
	// PeerXDP: a veth takes XDP frames only while its peer has a program.
	b := testbed.New(t, testbed.Options{PeerXDP: true})
	pinDir := filepath.Join("/sys/fs/bpf", netnstest.UniqueName("vmqsysd-"))
	t.Cleanup(func() { // after the container's poweroff: steering was kept
		if err := os.RemoveAll(pinDir); err != nil {
			t.Errorf("remove pins: %v", err)
		}
	})
	writeConfig(t, root, b.NIC.Name, pinDir, 0)
	linkPin := filepath.Join(pinDir, b.NIC.Name, bpf.LinkPinName)

	c := bootContainer(t, bootOptions{
		netns: b.Host,
		// The host's bpffs (nspawn gives the container none: systemd
		// would mount a private one), so the test sees the pins.
		binds: []string{"/sys/fs/bpf", root + "/etc/vmq:/etc/vmq"},
		bindsRO: []string{
			root + "/usr/local:/usr/local",
			// tracefs: the xdp tracepoints' ids (systemd mounts it only
			// with CAP_SYS_RAWIO, which nspawn does not grant).
			"/sys/kernel/tracing",
		},
		// nspawn's default bounding set lacks what the unit keeps, and
		// CAP_SYS_RESOURCE, without which systemd cannot raise the unit's
		// LimitMEMLOCK and LimitNOFILE above the hard limits nspawn was
		// started with (it silently sets the closest it may).
		caps: []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_IPC_LOCK", "CAP_SYS_RESOURCE"},
		// nspawn's own seccomp filter refuses both (bpffs and perf
		// events are not namespaced).
		syscalls: []string{"bpf", "perf_event_open"},
	})

	// What install.sh says to do.
	c.systemctl("daemon-reload")
	c.systemctl("enable", "--now", unit)
	api := control.NewClient(filepath.Join("/proc", strconv.Itoa(c.leader), "root/run/vmq/vmqd.sock"))
	defer api.Close()
	st1 := waitServing(t, c, api, time.Time{})
	pid := vmqdPID(t, c)
	checkSandbox(t, c, pid)

	// The data path: filter attached, pinned, a guest served.
	if out := b.Host.Run(t, "ip", "link", "show", b.NIC.Name); !strings.Contains(out, "prog/xdp") {
		t.Fatalf("no XDP program on %s:\n%s", b.NIC.Name, out)
	}
	linkID := pinnedLinkID(t, linkPin)
	capture := b.Capture()
	serveGuest(t, c, b, capture, api, 1, nil)

	// The start log says the XDP transmit's driver drops are named.
	log := c.journal("--unit=" + unit)
	if strings.Contains(log, "cannot name the frames a driver drops") || !strings.Contains(log, "frames a driver drops are named by the xdp tracepoints") {
		t.Errorf("vmqd's start log does not say the XDP transmit names a driver's drops:\n%s", log)
	}
	if !strings.Contains(log, "metrics listening") {
		t.Errorf("no metrics (AF_INET under RestrictAddressFamilies):\n%s", log)
	}

	// Restart: the new vmqd takes the pinned link over.
	start := time.Now()
	c.systemctl("restart", unit)
	waitServing(t, c, api, st1.StartedAt)
	t.Logf("systemctl restart: serving again after %v", time.Since(start).Round(time.Millisecond))
	if got := vmqdPID(t, c); got == pid {
		t.Fatalf("vmqd's pid %d unchanged by systemctl restart", got)
	}
	if got := pinnedLinkID(t, linkPin); got != linkID {
		t.Errorf("pinned XDP link %d after restart, want %d (the same link, reconciled from the pins)", got, linkID)
	}
	g := serveGuest(t, c, b, capture, api, 2, nil) // a new guest: the restart closed the connection

	// Reload (ExecReload: /bin/kill -HUP under the unit's sandbox): the
	// same vmqd takes a VM added to its config and opens its socket.
	pid = vmqdPID(t, c)
	writeConfig(t, root, b.NIC.Name, pinDir, 1)
	c.systemctl("reload", unit)
	vm2Sock := filepath.Join("/proc", strconv.Itoa(c.leader), "root/run/vmq/vm2.sock")
	testenv.Eventually(t, "vm2 added by systemctl reload", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		vms, err := api.ListVMs(ctx)
		if err != nil {
			return false, fmt.Sprintf("list VMs: %v", err)
		}
		names := make([]string, len(vms))
		for i, vm := range vms {
			names[i] = vm.Name
		}
		if !slices.Contains(names, "vm2") {
			return false, fmt.Sprintf("VMs %v", names)
		}
		if _, err := os.Stat(vm2Sock); err != nil {
			return false, fmt.Sprintf("vm2's socket: %v", err)
		}
		return true, ""
	})
	if got := vmqdPID(t, c); got != pid {
		t.Errorf("vmqd's pid %d after systemctl reload, was %d: reload restarted it", got, pid)
	}
	if p := c.show(unit, "ActiveState", "NRestarts"); p["ActiveState"] != "active" || p["NRestarts"] != "0" {
		t.Errorf("after systemctl reload: %v; want active, no automatic restart", p)
	}
	serveGuest(t, c, b, capture, api, 3, g) // vm1's guest, connected through the reload, still served

	// Stop: within TimeoutStopSec, exit 0, no failure state; steering kept.
	p := c.show(unit, "TimeoutStopUSec")
	timeout, err := time.ParseDuration(p["TimeoutStopUSec"])
	if err != nil {
		t.Fatalf("TimeoutStopUSec %q: %v", p["TimeoutStopUSec"], err)
	}
	start = time.Now()
	c.systemctl("stop", unit)
	took := time.Since(start)
	t.Logf("systemctl stop took %v (TimeoutStopSec %v)", took.Round(time.Millisecond), timeout)
	p = c.show(unit, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus", "NRestarts")
	if p["ActiveState"] != "inactive" || p["Result"] != "success" || p["ExecMainCode"] != "1" || p["ExecMainStatus"] != "0" || p["NRestarts"] != "0" || took >= timeout {
		t.Errorf("after systemctl stop (%v): %v; want inactive, success, exited (ExecMainCode 1, CLD_EXITED) with 0, no automatic restart, within %v", took, p, timeout)
	}
	if out := b.Host.Run(t, "ip", "link", "show", b.NIC.Name); !strings.Contains(out, "prog/xdp") {
		t.Errorf("keep_steering_on_exit: no XDP program on %s after stop:\n%s", b.NIC.Name, out)
	}
	if got := pinnedLinkID(t, linkPin); got != linkID {
		t.Errorf("pinned XDP link %d after stop, want %d", got, linkID)
	}

	checkJournal(t, c)
}

// waitServing waits until the unit is active and vmqd's API answers with
// its filter attached, started after since; it returns the status.
func waitServing(t *testing.T, c *container, api *control.Client, since time.Time) control.Status {
	t.Helper()
	var st control.Status
	testenv.EventuallyWithin(t, 20*time.Second, "vmqd serving under the unit", func() (bool, string) {
		p := c.show(unit, "ActiveState", "SubState", "Result", "NRestarts")
		if p["ActiveState"] == "failed" || p["NRestarts"] != "0" {
			t.Fatalf("vmqd failed under the unit: %v\n%s", p, c.journal("--unit="+unit))
		}
		if p["ActiveState"] != "active" {
			return false, fmt.Sprintf("unit %v", p)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		if st, err = api.Status(ctx); err != nil {
			return false, fmt.Sprintf("unit %v; API: %v", p, err)
		}
		return st.NIC.Attached && st.StartedAt.After(since), fmt.Sprintf("status %+v", st)
	})
	return st
}

// serveGuest connects a Go guest to the VM's vhost-user socket (or keeps
// g, connected already), sends it frames from the wire (the pktgen stream
// given) and requires each received, then has it send as many to the
// wire, which must each arrive, through the XDP transmit. It returns the
// guest.
func serveGuest(t *testing.T, c *container, b *testbed.Bed, capture *testbed.Capture, api *control.Client, stream uint32, g *frontend.Guest) *frontend.Guest {
	t.Helper()
	if g == nil {
		sock := filepath.Join("/proc", strconv.Itoa(c.leader), "root/run/vmq/vm1.sock")
		g = testbed.DialGuest(t, "vm1", sock, testbed.GuestConfig(vmMAC, 1, ""))
	}
	testenv.Eventually(t, "the guest's port running", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		snap, err := api.Stats(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, p := range snap.Ports {
			if p.VM == "vm1" && p.Connected && p.RingsRunning >= 2 {
				return true, ""
			}
		}
		return false, fmt.Sprintf("ports %+v", snap.Ports)
	})
	b.Send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: testbed.MustMAC(vmMAC)}}, Size: 64, Stream: stream}, frames)
	testbed.WaitStream(t, "vm1", g, stream, frames)

	beforeXDP, beforeSocket := txFrames(t, api)
	out := stream + 100 // the guest's stream to the wire
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if n, err := g.Generate(ctx, frontend.Traffic{Dst: b.Peer.MAC, Count: frames, Rate: 10000, Stream: out}); err != nil || n != frames {
		t.Fatalf("guest sent %d of %d frames to the wire: %v", n, frames, err)
	}
	src := testbed.MustMAC(vmMAC)
	capture.WaitFor(t, "the guest's frames on the wire", func(f []byte) bool {
		p, ok := pktgen.ParseFrame(f)
		return ok && bytes.Equal(f[6:12], src) && p.Stream == out
	}, frames)
	// Each sent once: by XDP, or (a frame the veth refused under load,
	// named by the tracepoints) again through the VM's socket; by XDP at
	// least once.
	var xdp, socket uint64
	testenv.Eventually(t, "the guest's frames counted as sent", func() (bool, string) {
		x, s := txFrames(t, api)
		xdp, socket = x-beforeXDP, s-beforeSocket
		return xdp+socket == frames && xdp > 0, fmt.Sprintf("%d frames by XDP and %d by the socket, want %d in all, by XDP at least one", xdp, socket, frames)
	})
	t.Logf("the guest's %d frames to the wire: %d by XDP, %d by the socket", frames, xdp, socket)
	return g
}

// txFrames are the frames vmqd's workers sent to the wire through the
// XDP transmit and through the VMs' sockets.
func txFrames(t *testing.T, api *control.Client) (xdp, socket uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	snap, err := api.Stats(ctx)
	if err != nil {
		t.Fatalf("API stats: %v", err)
	}
	for _, w := range snap.Workers {
		xdp += w.TxXDPFrames
		socket += w.TxSocketFrames
	}
	return xdp, socket
}

// vmqdPID is the host's pid of the unit's only process.
func vmqdPID(t *testing.T, c *container) int {
	t.Helper()
	pids := c.unitPIDs(unit)
	if len(pids) != 1 {
		t.Fatalf("%s has processes %v, want vmqd alone", unit, pids)
	}
	return pids[0]
}

// pinnedLinkID is the id of the XDP link pinned at path.
func pinnedLinkID(t *testing.T, path string) link.ID {
	t.Helper()
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		t.Fatalf("pinned link: %v", err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatalf("pinned link %s: %v", path, err)
	}
	return info.ID
}

// capBits are the capabilities a unit may keep, by systemd's names.
var capBits = map[string]uint{
	"cap_chown": unix.CAP_CHOWN, "cap_net_admin": unix.CAP_NET_ADMIN, "cap_net_raw": unix.CAP_NET_RAW,
	"cap_ipc_lock": unix.CAP_IPC_LOCK, "cap_perfmon": unix.CAP_PERFMON, "cap_bpf": unix.CAP_BPF,
	"cap_sys_admin": unix.CAP_SYS_ADMIN, "cap_sys_resource": unix.CAP_SYS_RESOURCE, "cap_sys_nice": unix.CAP_SYS_NICE,
}

// checkSandbox checks vmqd's process (host pid) against the unit as
// systemd parsed it: its capabilities are exactly the bounding set, no new
// privileges, seccomp filters on top of the container's, and the mount
// namespace: / read-only, the ReadOnlyPaths read-only, the ReadWritePaths
// and its runtime and state directories writable, the
// InaccessiblePaths hidden, a /tmp of its own.
func checkSandbox(t *testing.T, c *container, pid int) {
	t.Helper()
	p := c.show(unit, "CapabilityBoundingSet", "ProtectSystem", "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "PrivateTmp", "RuntimeDirectory", "StateDirectory", "LimitMEMLOCK", "LimitNOFILE")
	var want uint64
	for _, name := range strings.Fields(p["CapabilityBoundingSet"]) {
		bit, ok := capBits[name]
		if !ok {
			t.Fatalf("capability %s of the unit: add it to capBits", name)
		}
		want |= 1 << bit
	}
	if want == 0 {
		t.Fatalf("the unit keeps no capability: %v", p)
	}
	vmqd, leader := procStatus(t, pid), procStatus(t, c.leader)
	for _, k := range []string{"CapBnd", "CapPrm", "CapEff"} {
		got, err := strconv.ParseUint(vmqd[k], 16, 64)
		if err != nil || got != want {
			t.Errorf("vmqd's %s %s, want %016x (%s)", k, vmqd[k], want, p["CapabilityBoundingSet"])
		}
	}
	if vmqd["NoNewPrivs"] != "1" || vmqd["Seccomp"] != "2" {
		t.Errorf("vmqd: NoNewPrivs %s, Seccomp %s; want 1 and 2 (filter)", vmqd["NoNewPrivs"], vmqd["Seccomp"])
	}
	nv, _ := strconv.Atoi(vmqd["Seccomp_filters"])
	nl, _ := strconv.Atoi(leader["Seccomp_filters"])
	if nv <= nl {
		t.Errorf("vmqd has %d seccomp filters, the container's systemd %d: the unit's are missing", nv, nl)
	}

	checkLimits(t, p, pid)

	mounts := mountTable(t, pid)
	check := func(path, what string, ok func(m mount) bool) {
		path, optional := strings.CutPrefix(path, "-")
		m, found := mounts[path]
		switch {
		case !found && !optional:
			t.Errorf("%s: no mount at %s in vmqd's namespace", what, path)
		case found && !ok(m):
			t.Errorf("%s: %s is %+v in vmqd's namespace", what, path, m)
		}
	}
	ro := func(m mount) bool { return m.ro }
	rw := func(m mount) bool { return !m.ro }
	if p["ProtectSystem"] == "strict" {
		check("/", "ProtectSystem=strict", ro)
	}
	for _, path := range strings.Fields(p["ReadOnlyPaths"]) {
		check(path, "ReadOnlyPaths", ro)
	}
	for _, path := range strings.Fields(p["ReadWritePaths"]) {
		check(path, "ReadWritePaths", rw)
	}
	for _, d := range strings.Fields(p["RuntimeDirectory"]) {
		check("/run/"+d, "RuntimeDirectory", rw)
	}
	for _, d := range strings.Fields(p["StateDirectory"]) {
		check("/var/lib/"+d, "StateDirectory", rw)
	}
	for _, path := range strings.Fields(p["InaccessiblePaths"]) {
		check(path, "InaccessiblePaths", func(m mount) bool { return strings.Contains(m.root, "inaccessible") })
	}
	if p["PrivateTmp"] == "yes" {
		check("/tmp", "PrivateTmp", func(m mount) bool { return strings.Contains(m.root, "systemd-private-") && !m.ro })
	}
	t.Logf("vmqd (pid %d): CapBnd %s, %s seccomp filters (the container's systemd %s), %d mounts", pid, vmqd["CapBnd"], vmqd["Seccomp_filters"], leader["Seccomp_filters"], len(mounts))
}

// checkLimits: vmqd's resource limits (soft and hard) are the unit's
// LimitMEMLOCK (the UMEMs' locked memory) and LimitNOFILE (the vrings'
// eventfds), or as close as systemd may set them: without
// CAP_SYS_RESOURCE (which this test's, and so the container's, bounding
// set may lack) no more than the hard limits the container was started
// with.
func checkLimits(t *testing.T, unitProps map[string]string, pid int) {
	t.Helper()
	limits, err := procLines(pid, "limits")
	if err != nil {
		t.Fatal(err)
	}
	eff, err := strconv.ParseUint(procStatus(t, os.Getpid())["CapEff"], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []struct {
		prop, name string
		resource   int
	}{{"LimitMEMLOCK", "Max locked memory", unix.RLIMIT_MEMLOCK}, {"LimitNOFILE", "Max open files", unix.RLIMIT_NOFILE}} {
		unitValue, want := parseLimit(unitProps[l.prop]), parseLimit(unitProps[l.prop])
		if eff&(1<<unix.CAP_SYS_RESOURCE) == 0 {
			var own unix.Rlimit
			if err := unix.Getrlimit(l.resource, &own); err != nil {
				t.Fatal(err)
			}
			want = min(want, own.Max)
		}
		i := slices.IndexFunc(limits, func(s string) bool { return strings.HasPrefix(s, l.name+" ") })
		var f []string
		if i >= 0 {
			f = strings.Fields(strings.TrimPrefix(limits[i], l.name))
		}
		if len(f) < 2 || parseLimit(f[0]) != want || parseLimit(f[1]) != want {
			t.Errorf("vmqd's %s: %q, want %d (%s=%s)", l.name, f, want, l.prop, unitProps[l.prop])
		} else if want != unitValue {
			t.Logf("vmqd's %s: %d, not the unit's %s=%s: no CAP_SYS_RESOURCE here to raise it", l.name, want, l.prop, unitProps[l.prop])
		}
	}
}

// parseLimit reads a resource limit as systemd ("infinity") or
// /proc/PID/limits ("unlimited") writes it.
func parseLimit(s string) uint64 {
	if s == "infinity" || s == "unlimited" {
		return unix.RLIM_INFINITY
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// procStatus is /proc/PID/status as keys and values.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	lines, err := procLines(pid, "status")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range lines {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// mount is the topmost mount at a path, as mountinfo shows it.
type mount struct {
	ro     bool
	root   string // the path of the mount's source within its file system
	fstype string
}

// mountTable is a process's mounts by mount point (the topmost wins).
func mountTable(t *testing.T, pid int) map[string]mount {
	t.Helper()
	lines, err := procLines(pid, "mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]mount{}
	for _, l := range lines {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(l)
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if len(f) < 6 || sep < 0 || sep+1 >= len(f) {
			continue
		}
		opts := strings.Split(f[5], ",")
		m[unescape(f[4])] = mount{ro: opts[0] == "ro", root: unescape(f[3]), fstype: f[sep+1]}
	}
	return m
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				sb.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		sb.WriteByte(s[i])
	}
	return sb.String()
}

// checkJournal: the container's systemd says nothing against the unit
// (unknown directives, namespace or sandbox setup failures), and vmqd
// logged no error. vmqd's warnings are logged for the report.
func checkJournal(t *testing.T, c *container) {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(c.journal("_PID=1"), "\n") {
		if strings.Contains(l, "vmqd") {
			lines = append(lines, l)
		}
	}
	t.Logf("systemd (PID 1) about vmqd:\n%s", strings.Join(lines, "\n"))
	for _, l := range lines {
		for _, bad := range []string{"Unknown", "unknown", "Ignoring", "ignoring", "Failed", "failed", "Invalid", "not supported", "deprecated", "timed out"} {
			if strings.Contains(l, bad) {
				t.Errorf("systemd about the unit: %s", l)
				break
			}
		}
	}
	for _, l := range strings.Split(c.journal("--unit="+unit), "\n") {
		switch {
		case strings.Contains(l, "level=ERROR"):
			t.Errorf("vmqd: %s", l)
		case strings.Contains(l, "level=WARN"):
			t.Logf("vmqd warns: %s", l)
		}
	}
}
