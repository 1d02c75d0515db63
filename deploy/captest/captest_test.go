// Package captest checks that the capabilities vmqd.service keeps are the
// ones vmqd needs: a child process with exactly the unit's bounding set
// (and no-new-privs) does what vmqd does at start and at restart with the
// real bpf and xsk packages, and dropping any one of those capabilities
// makes it fail. A second child does the worker's XDP transmit (one live
// frames call that sends a frame, one whose frame the driver drops, named
// by the xdp tracepoints) and a third only the tracepoint's perf event,
// each with the capabilities it needs and without each of them.
//
// It lives apart from package deploy so that a change in bpf or xsk
// breaks only this test.
package captest

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/xsk"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
)

const (
	envIfindex = "VMQ_CAPTEST_IFINDEX"
	envPinDir  = "VMQ_CAPTEST_PINDIR"
	// envMode: what the child does (modeStart when empty).
	envMode = "VMQ_CAPTEST_MODE"
	// envDropIfindex: the XDP transmit child's second interface, a veth
	// whose peer has no XDP (its driver refuses XDP frames).
	envDropIfindex = "VMQ_CAPTEST_DROP_IFINDEX"
	// envSandbox: the mounts of the sandbox stage (unitMounts), which
	// then runs its arguments.
	envSandbox = "VMQ_CAPTEST_SANDBOX"
)

const (
	modeStart      = "start"      // child: vmqd's start and restart
	modeXDPTx      = "xdptx"      // childXDPTx: the worker's XDP transmit
	modeTracepoint = "tracepoint" // childTracepoint: the tracepoint's perf event only
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(envSandbox); spec != "" {
		err := sandbox(spec)
		if err == nil {
			os.Unsetenv(envSandbox)
			err = syscall.Exec(os.Args[1], os.Args[1:], os.Environ())
		}
		fmt.Fprintln(os.Stderr, "FAIL: sandbox:", err)
		os.Exit(1)
	}
	if os.Getenv(envIfindex) != "" {
		run := child
		switch os.Getenv(envMode) {
		case modeXDPTx:
			run = childXDPTx
		case modeTracepoint:
			run = childTracepoint
		}
		if err := run(); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL:", err)
			os.Exit(1)
		}
		fmt.Println("ok")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child is vmqd's privileged work, start then restart: load the filter
// with pinned maps, attach it, open an AF_XDP queue and a VM socket,
// register the socket, read XDP_STATISTICS, give a VM's vhost-user socket
// to the user QEMU runs as (socket_owner); then drop everything but the
// pins, load again, find the pinned link and replace the program in place.
func child() error {
	ifindex, err := strconv.Atoi(os.Getenv(envIfindex))
	if err != nil {
		return err
	}
	sockDir, err := os.MkdirTemp("", "vmqcap")
	if err != nil {
		return err
	}
	defer os.RemoveAll(sockDir)
	// socket_owner: nobody (65534), as a config for an unprivileged QEMU would say.
	port, err := vhostuser.Listen(filepath.Join(sockDir, "vm.sock"), vhostuser.Config{Name: "cap", SocketOwner: 65534, SocketGroup: 65534})
	if err != nil {
		return fmt.Errorf("vhost-user socket with socket_owner: %w", err)
	}
	defer port.Close()
	cfg := bpf.Config{MaxVMs: 4, MaxQueues: 1, PinDir: os.Getenv(envPinDir)}
	f, err := bpf.Load(cfg)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	if _, err := f.Attach(ifindex, bpf.Generic); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	q, err := xsk.NewQueue(ifindex, 0, xsk.UMEMConfig{NumFrames: 512}, xsk.QueueConfig{})
	if err != nil {
		return fmt.Errorf("xsk queue: %w", err)
	}
	defer q.Close()
	s, err := q.NewSocket(xsk.SocketConfig{})
	if err != nil {
		return fmt.Errorf("xsk socket: %w", err)
	}
	if err := f.RegisterSocket(1, 0, s.FD()); err != nil {
		return fmt.Errorf("register socket: %w", err)
	}
	if _, err := s.KernelStats(); err != nil {
		return fmt.Errorf("XDP_STATISTICS: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}

	// Restart: the pins carry the attachment over.
	f, err = bpf.Load(cfg)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	defer f.Close()
	if got, _ := f.Attached(); got != ifindex {
		return fmt.Errorf("reload: pinned link not found (attached to %d)", got)
	}
	if _, err := f.Attach(ifindex, bpf.Generic); err != nil {
		return fmt.Errorf("replace program: %w", err)
	}
	if err := f.RegisterSocket(1, 0, s.FD()); err != nil {
		return fmt.Errorf("register socket after reload: %w", err)
	}
	if err := f.Detach(); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	if err := f.Unpin(); err != nil {
		return fmt.Errorf("unpin: %w", err)
	}
	return nil
}

// xdpTxFrame is the frame the XDP transmit child sends: broadcast, an
// experimental EtherType, 60 bytes.
func xdpTxFrame() []byte {
	f := make([]byte, 60)
	copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0xca, 0x9e, 0x88, 0xb5})
	return f
}

// childXDPTx is the worker's XDP transmit as vmqd sets it up
// (dataplane.openXDPTx, worker.openXDPTx): load xsk.XDPTx with its
// tracepoints, then on the queue's thread send one frame out of a veth
// whose peer takes XDP frames (the tracepoint counts it sent) and one out
// of a veth whose peer does not (the tracepoint names it dropped). It
// prints whether the dispatcher keeper held the program and how long a
// call took.
func childXDPTx() error {
	ifindex, err := strconv.Atoi(os.Getenv(envIfindex))
	if err != nil {
		return err
	}
	dropIfindex, err := strconv.Atoi(os.Getenv(envDropIfindex))
	if err != nil {
		return err
	}
	runtime.LockOSThread() // Queue registers the flushing thread
	defer runtime.UnlockOSThread()
	for _, c := range []struct {
		ifindex int
		drop    bool
	}{{ifindex, false}, {dropIfindex, true}} {
		if err := xdpTxOnce(c.ifindex, c.drop); err != nil {
			return err
		}
	}
	return nil
}

func xdpTxOnce(ifindex int, drop bool) error {
	x, err := xsk.NewXDPTx(ifindex, 1)
	if err != nil {
		return err
	}
	defer x.Close()
	if !x.XmitWatched() {
		return fmt.Errorf("XDP transmit: the driver's drops are not watched: %w", x.WatchErr())
	}
	tq, err := x.Queue(0)
	if err != nil {
		return err
	}
	// A few calls: without the keeper each one pays the dispatcher's update.
	calls := 1
	if !drop {
		calls = 3
	}
	var took time.Duration
	for range calls {
		tq.Add(xdpTxFrame())
		start := time.Now()
		done, err := tq.Flush()
		took += time.Since(start)
		st := tq.Stats()
		idx, complete := tq.Dropped()
		switch {
		case drop && (!errors.Is(err, xsk.ErrXmitDrops) || done != 1 || st.XmitDrops != 1 || !complete || !slices.Equal(idx, []uint16{0})):
			return fmt.Errorf("XDP transmit to a peer without XDP: done %d, %v, stats %+v, dropped %v (complete %v); want the frame named dropped", done, err, st, idx, complete)
		case !drop && (err != nil || done != 1 || st.XmitDrops != 0):
			return fmt.Errorf("XDP transmit: done %d, %v, stats %+v; want 1 frame sent", done, err, st)
		}
	}
	if !drop {
		if st := tq.Stats(); st.Sent != uint64(calls) || st.XmitSent != uint64(calls) {
			return fmt.Errorf("XDP transmit: stats %+v; want %d frames sent, each counted by xdp:xdp_devmap_xmit", st, calls)
		}
		fmt.Printf("xdptx keeper=%v call=%v\n", x.Keeper(), (took / time.Duration(calls)).Round(time.Microsecond))
	}
	return nil
}

// childTracepoint opens only the perf event the tracepoints are attached
// through, as cilium/ebpf's link.Tracepoint does: the event's id from
// tracefs, then perf_event_open(PERF_TYPE_TRACEPOINT, raw samples, every
// thread of CPU 0).
func childTracepoint() error {
	b, err := os.ReadFile("/sys/kernel/tracing/events/xdp/xdp_devmap_xmit/id")
	if err != nil {
		return fmt.Errorf("tracefs: %w", err)
	}
	id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return fmt.Errorf("tracepoint id: %w", err)
	}
	attr := unix.PerfEventAttr{Type: unix.PERF_TYPE_TRACEPOINT, Config: id, Sample_type: unix.PERF_SAMPLE_RAW, Sample: 1, Wakeup: 1}
	fd, err := unix.PerfEventOpen(&attr, -1, 0, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("perf_event_open of xdp:xdp_devmap_xmit: %w", err)
	}
	return unix.Close(fd)
}

// sandbox lays out the file system as spec says (unitMounts), in this
// process's own mount namespace (exec.Cmd Unshareflags: CLONE_NEWNS, made
// private): each line is "MODE:PATH", in path order, PATH with a "-" when
// it may be missing. ro and rw make the path and everything under it
// read-only or writable again (a path that is no mount point is first
// bound onto itself, as systemd does), no hides it (an empty file or
// directory without permissions: the child has no CAP_DAC_OVERRIDE), tmp
// mounts a new tmpfs.
func sandbox(spec string) error {
	// This binary, in a test's temporary directory under /tmp, stays where
	// it is when a tmpfs covers /tmp (vmqd's own is in /usr/local/bin).
	self, err := os.Executable()
	if err != nil {
		return err
	}
	selfFD, err := unix.Open(self, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", self, err)
	}
	keepSelf := func() error {
		if err := os.MkdirAll(filepath.Dir(self), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(self, nil, 0o755); err != nil {
			return err
		}
		return unix.Mount(fmt.Sprintf("/proc/self/fd/%d", selfFD), self, "", unix.MS_BIND, "")
	}
	// The hidden paths' stand-ins, in a tmpfs of their own (mounted over
	// /tmp; a tmp line mounts /tmp's own tmpfs over it).
	if err := unix.Mount("tmpfs", "/tmp", "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("tmpfs: %w", err)
	}
	noFile, noDir := "/tmp/inaccessible-file", "/tmp/inaccessible-dir"
	if err := os.WriteFile(noFile, nil, 0); err != nil {
		return err
	}
	if err := os.Mkdir(noDir, 0); err != nil {
		return err
	}
	if err := keepSelf(); err != nil {
		return fmt.Errorf("keep %s: %w", self, err)
	}
	for _, line := range strings.Split(spec, "\n") {
		mode, path, _ := strings.Cut(line, ":")
		path, optional := strings.CutPrefix(path, "-")
		st, err := os.Stat(path)
		if err != nil {
			if optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return err
		}
		switch mode {
		case "tmp":
			if err = unix.Mount("tmpfs", path, "tmpfs", 0, "mode=1777"); err == nil && strings.HasPrefix(self, path+"/") {
				err = keepSelf()
			}
		case "no":
			src := noFile
			if st.IsDir() {
				src = noDir
			}
			err = unix.Mount(src, path, "", unix.MS_BIND, "")
		case "ro", "rw":
			if path != "/" {
				if err := unix.Mount(path, path, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
					return fmt.Errorf("bind %s: %w", path, err)
				}
			}
			attr := unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY}
			if mode == "ro" {
				attr = unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
			}
			err = unix.MountSetattr(unix.AT_FDCWD, path, unix.AT_RECURSIVE, &attr)
		default:
			err = fmt.Errorf("bad mode %q", mode)
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", mode, path, err)
		}
	}
	return nil
}

// unitMounts is the file system the unit's processes see, for sandbox,
// as systemd (252, src/core/namespace.c) lays it out from the unit:
// ProtectSystem=strict: / read-only but /dev, /proc and /sys;
// ProtectKernelTunables=yes: /sys, /sys/fs/bpf, /sys/kernel/debug,
// /sys/kernel/tracing and /proc/sys read-only, /proc/kallsyms and
// /proc/kcore inaccessible; then ReadOnlyPaths=, ReadWritePaths=,
// InaccessiblePaths=; PrivateTmp=yes: a /tmp of its own. Two entries for
// one path: the more restrictive one wins (namespace.c drop_duplicates),
// so ReadWritePaths=/sys/fs/bpf does not undo ProtectKernelTunables's
// /sys/fs/bpf. Not laid out: PrivateDevices's /dev, ProtectHome's and the
// rest of /proc ProtectKernelTunables makes read-only (no child uses them).
func unitMounts(t *testing.T) string {
	t.Helper()
	type entry struct {
		mode     string
		optional bool
	}
	rank := map[string]int{"no": 0, "ro": 1, "tmp": 2, "rw": 3}
	entries := map[string]entry{}
	add := func(mode string, paths ...string) {
		for _, p := range paths {
			p, optional := strings.CutPrefix(p, "-")
			if e, ok := entries[p]; !ok || rank[mode] < rank[e.mode] {
				entries[p] = entry{mode, optional && (!ok || e.optional)}
			}
		}
	}
	if unitDirective(t, "ProtectSystem") == "strict" {
		add("ro", "/")
		add("rw", "/dev", "/proc", "/sys")
	}
	if unitDirective(t, "ProtectKernelTunables", "no") == "yes" {
		add("ro", "/sys", "-/sys/fs/bpf", "-/sys/kernel/debug", "-/sys/kernel/tracing", "-/proc/sys")
		add("no", "-/proc/kallsyms", "-/proc/kcore")
	}
	add("ro", strings.Fields(unitDirective(t, "ReadOnlyPaths", ""))...)
	add("rw", strings.Fields(unitDirective(t, "ReadWritePaths", ""))...)
	add("no", strings.Fields(unitDirective(t, "InaccessiblePaths", ""))...)
	if unitDirective(t, "PrivateTmp", "no") == "yes" {
		add("tmp", "/tmp")
	}
	paths := slices.Sorted(maps.Keys(entries)) // a path sorts before those under it
	var lines []string
	for _, p := range paths {
		e := entries[p]
		if e.optional {
			p = "-" + p
		}
		lines = append(lines, e.mode+":"+p)
	}
	return strings.Join(lines, "\n")
}

// unitCaps reads CapabilityBoundingSet from the unit.
func unitCaps(t *testing.T) []string {
	t.Helper()
	return strings.Fields(unitDirective(t, "CapabilityBoundingSet"))
}

// children runs this test binary as a child in a network namespace with
// a given bounding set, no-new-privs and a small memlock limit (so that
// only CAP_IPC_LOCK lets a UMEM register; the unit sets
// LimitMEMLOCK=infinity as well: belt and braces).
type children struct {
	setpriv, nsenter, prlimit, self string
	ns                              *netnstest.NS
	env                             []string
	pinDir                          string // removed after each run ("": none)
	// sandbox: the mounts the child runs under (unitMounts; "": the host's).
	sandbox string
}

func newChildren(t *testing.T, ns *netnstest.NS, env ...string) *children {
	t.Helper()
	testenv.RequireRoot(t)
	c := &children{
		setpriv: testenv.RequireCommand(t, "setpriv"),
		nsenter: testenv.RequireCommand(t, "nsenter"),
		prlimit: testenv.RequireCommand(t, "prlimit"),
		ns:      ns,
		env:     env,
	}
	var err error
	if c.self, err = os.Executable(); err != nil {
		t.Fatal(err)
	}
	return c
}

// run runs the child with the capabilities caps.
func (c *children) run(caps []string) (string, error) {
	return c.runTraced(caps, "", "")
}

// runTraced runs the child under strace (at strace, "": not traced),
// which writes every system call the child makes to traceFile.
func (c *children) runTraced(caps []string, strace, traceFile string) (string, error) {
	bset := "-all"
	for _, cp := range caps {
		bset += ",+" + strings.ToLower(strings.TrimPrefix(cp, "CAP_"))
	}
	child := []string{c.self, "-test.run=^$"}
	if strace != "" {
		child = append([]string{strace, "-f", "-qq", "-o", traceFile}, child...)
	}
	for attempt := 0; ; attempt++ {
		cmd := exec.Command(c.nsenter, append([]string{"--net=/run/netns/" + c.ns.Name, "--",
			c.prlimit, "--memlock=65536:65536", "--",
			c.setpriv, "--bounding-set=" + bset, "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--"},
			child...)...)
		cmd.Env = append(os.Environ(), c.env...)
		if c.sandbox != "" {
			// This binary's sandbox stage first, in a mount namespace of its own.
			cmd.Args = append([]string{c.self}, cmd.Args...)
			cmd.Path = c.self
			cmd.Env = append(cmd.Env, envSandbox+"="+c.sandbox)
			cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if c.pinDir != "" {
			os.RemoveAll(c.pinDir) // a failed child may leave pins behind
		}
		// The kernel unbinds a closed AF_XDP socket's UMEM from the queue
		// asynchronously; the previous child's may not be gone yet.
		if err != nil && strings.Contains(out.String(), "queue is busy") && attempt < 20 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		return out.String(), err
	}
}

// without is caps less c.
func without(caps []string, c string) []string {
	return slices.DeleteFunc(slices.Clone(caps), func(s string) bool { return s == c })
}

// startChildren: children that do vmqd's start and restart on a veth.
func startChildren(t *testing.T) *children {
	t.Helper()
	nsA, nsB := netnstest.New(t), netnstest.New(t)
	a, _ := netnstest.NewVethPair(t, nsA, nsB, netnstest.VethOptions{Queues: 1, MTU: 1500})
	t.Logf("netns %s, %s; veth %s", nsA.Name, nsB.Name, a.Name)
	pinDir := filepath.Join("/sys/fs/bpf", netnstest.UniqueName("vmqtcap"))
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	c := newChildren(t, nsA, envMode+"="+modeStart, envIfindex+"="+strconv.Itoa(a.Index), envPinDir+"="+pinDir)
	c.pinDir = pinDir
	return c
}

// xdpTxChildren: children that do the worker's XDP transmit, out of a
// veth whose peer takes XDP frames and out of one whose peer does not.
func xdpTxChildren(t *testing.T) *children {
	t.Helper()
	nsA, nsB := netnstest.New(t), netnstest.New(t)
	a, b := netnstest.NewVethPair(t, nsA, nsB, netnstest.VethOptions{Queues: 1, MTU: 1500})
	d, _ := netnstest.NewVethPair(t, nsA, nsB, netnstest.VethOptions{Queues: 1, MTU: 1500})
	netnstest.PassXDP(t, nsB, b.Index) // a's driver takes XDP frames, d's refuses them
	return newChildren(t, nsA, envMode+"="+modeXDPTx, envIfindex+"="+strconv.Itoa(a.Index), envDropIfindex+"="+strconv.Itoa(d.Index))
}

// requireEach runs the children with caps, which must work, then without
// each capability of caps: those in needs (nil: all) must fail, the
// others work.
func requireEach(t *testing.T, what string, c *children, caps []string, needs map[string]string) {
	t.Helper()
	out, err := c.run(caps)
	if err != nil {
		t.Fatalf("%s with the unit's capabilities %v: %v\n%s", what, caps, err, out)
	}
	t.Logf("with the unit's capabilities: %s", firstLine(out))
	for _, cp := range caps {
		out, err := c.run(without(caps, cp))
		why, needed := needs[cp]
		needed = needed || needs == nil
		switch {
		case needed && err == nil:
			t.Errorf("%s works without %s (%s): drop it from the unit, or from what captest says it needs", what, cp, why)
		case !needed && err != nil:
			t.Errorf("%s fails without %s: %v\n%s", what, cp, err, out)
		default:
			t.Logf("without %s: %s", cp, firstLine(out))
		}
	}
	for cp := range needs {
		if !slices.Contains(caps, cp) {
			t.Errorf("the unit lacks %s, which %s needs", cp, what)
		}
	}
}

// TestUnitCapabilities: vmqd's start and restart need each capability of
// the unit.
func TestUnitCapabilities(t *testing.T) {
	requireEach(t, "vmqd's start and restart", startChildren(t), unitCaps(t), nil)
}

// xdpTxNeeds: what the XDP transmit needs of the unit's set, and why.
// The others (CAP_NET_RAW, CAP_IPC_LOCK, CAP_CHOWN) it does not.
var xdpTxNeeds = map[string]string{
	"CAP_BPF":       "create the maps, load the programs",
	"CAP_NET_ADMIN": "load an XDP program (a networking program type)",
	"CAP_PERFMON":   "the verifier refuses vmq_xdp_tx's pointer arithmetic without it, as the filter's; the tracepoint programs and their perf events need it too",
}

// TestUnitCapabilitiesXDPTransmit: with the unit's capabilities the
// worker's XDP transmit sends a frame and its tracepoints name a frame
// the driver drops; without CAP_BPF, CAP_NET_ADMIN or CAP_PERFMON it
// fails, and it needs none of the unit's others.
func TestUnitCapabilitiesXDPTransmit(t *testing.T) {
	requireEach(t, "XDP transmit", xdpTxChildren(t), unitCaps(t), xdpTxNeeds)
}

// TestUnitCapabilitiesTracepoint: the perf event the tracepoint programs
// are attached through needs CAP_PERFMON on its own (perf_event_paranoid
// above 0 refuses a CPU-wide event, and raw tracepoint samples, without
// it), whatever loading the programs needs.
func TestUnitCapabilitiesTracepoint(t *testing.T) {
	ns := netnstest.New(t)
	c := newChildren(t, ns, envMode+"="+modeTracepoint, envIfindex+"=1")
	caps := unitCaps(t)
	if out, err := c.run(caps); err != nil {
		t.Fatalf("perf_event_open with the unit's capabilities %v: %v\n%s", caps, err, out)
	}
	if out, err := c.run(without(caps, "CAP_PERFMON")); err == nil {
		t.Error("perf_event_open of a tracepoint works without CAP_PERFMON")
	} else {
		t.Logf("without CAP_PERFMON: %s", firstLine(out))
	}
}

// unitDirective is the value of a directive of the unit (its last line);
// without it, the default if one is given, else the test fails.
func unitDirective(t *testing.T, key string, def ...string) string {
	t.Helper()
	b, err := os.ReadFile("../systemd/vmqd.service")
	if err != nil {
		t.Fatal(err)
	}
	v, found := "", false
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, key+"="); ok {
			v, found = rest, true
		}
	}
	if !found {
		if len(def) > 0 {
			return def[0]
		}
		t.Fatalf("no %s in vmqd.service", key)
	}
	return v
}

// allowedSyscalls expands an allow-list SystemCallFilter with systemd's
// own tables (systemd-analyze syscall-filter, groups within groups).
func allowedSyscalls(t *testing.T, sa string, filter []string) map[string]bool {
	t.Helper()
	allowed, seen := map[string]bool{}, map[string]bool{}
	var expand func(item string)
	expand = func(item string) {
		if !strings.HasPrefix(item, "@") {
			allowed[item] = true
			return
		}
		if seen[item] {
			return
		}
		seen[item] = true
		out, err := exec.Command(sa, "syscall-filter", "--no-pager", item).Output()
		if err != nil {
			t.Fatalf("systemd-analyze syscall-filter %s: %v", item, err)
		}
		lines := strings.Split(string(out), "\n")
		for _, l := range lines[1:] { // the first is the group's name
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				expand(l)
			}
		}
	}
	for _, f := range filter {
		if strings.HasPrefix(f, "~") {
			t.Fatalf("SystemCallFilter item %q: the check reads an allow list only", f)
		}
		expand(f)
	}
	if len(allowed) < 100 {
		t.Fatalf("SystemCallFilter %v expands to only %d system calls", filter, len(allowed))
	}
	return allowed
}

var (
	straceCall   = regexp.MustCompile(`^\d+\s+([a-z0-9_]+)\(`)
	straceSocket = regexp.MustCompile(`^\d+\s+socket\((AF_[A-Z0-9]+)`)
	straceResult = regexp.MustCompile(`\)\s+= (.*)$`)
)

// readTrace reads strace's output: every system call made, and every
// socket family asked for, each with the first line that shows it.
func readTrace(t *testing.T, file string) (calls, families map[string]string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	calls, families = map[string]string{}, map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if m := straceCall.FindStringSubmatch(l); m != nil && calls[m[1]] == "" {
			calls[m[1]] = l
		}
		if m := straceSocket.FindStringSubmatch(l); m != nil && families[m[1]] == "" {
			families[m[1]] = l
		}
	}
	if calls["execve"] == "" || calls["bpf"] == "" {
		t.Fatalf("strace's output has no execve or bpf call:\n%s", b)
	}
	return calls, families
}

// callResult is the result strace shows for the first call of name
// ("= -1 EPERM (...)"), also when the call was interrupted by another
// thread's and resumed.
func callResult(file, name string) string {
	b, _ := os.ReadFile(file)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, " "+name+"(") && !strings.HasSuffix(l, "<unfinished ...>") ||
			strings.Contains(l, "<... "+name+" resumed>") {
			if m := straceResult.FindStringSubmatch(l); m != nil {
				return m[1]
			}
		}
	}
	return "(no result)"
}

// TestUnitSystemCalls: the unit's seccomp filter (SystemCallFilter, as
// systemd expands its groups) and RestrictAddressFamilies let through
// every system call and socket family the children make with the unit's
// capabilities: vmqd's start and restart, and the XDP transmit with its
// tracepoints (perf_event_open is not in @system-service: it is @debug's).
// The unit's other sandboxing (read-only /sys and the rest, namespaces) is
// not applied here: no systemd runs the unit in this test.
func TestUnitSystemCalls(t *testing.T) {
	sa := testenv.RequireCommand(t, "systemd-analyze")
	strace := testenv.RequireCommand(t, "strace")
	allowed := allowedSyscalls(t, sa, strings.Fields(unitDirective(t, "SystemCallFilter")))
	families := strings.Fields(unitDirective(t, "RestrictAddressFamilies"))
	caps := unitCaps(t)
	for _, c := range []struct {
		what string
		ch   *children
	}{{"start and restart", startChildren(t)}, {"XDP transmit", xdpTxChildren(t)}} {
		file := filepath.Join(t.TempDir(), "strace")
		if out, err := c.ch.runTraced(caps, strace, file); err != nil {
			t.Fatalf("%s under strace: %v\n%s", c.what, err, out)
		}
		calls, fams := readTrace(t, file)
		for name, line := range calls {
			if !allowed[name] {
				t.Errorf("%s calls %s, which the unit's SystemCallFilter refuses: %s", c.what, name, line)
			}
		}
		for fam, line := range fams {
			if !slices.Contains(families, fam) {
				t.Errorf("%s opens an %s socket, which the unit's RestrictAddressFamilies refuses: %s", c.what, fam, line)
			}
		}
		if calls["unshare"] != "" {
			// xdplive.Keeper: without CAP_SYS_ADMIN (and under the unit's
			// RestrictNamespaces=yes) it is refused; XDP transmit goes on
			// without the keeper.
			t.Logf("%s: the dispatcher keeper's unshare: %s", c.what, callResult(file, "unshare"))
		}
		t.Logf("%s: %d system calls, socket families %v", c.what, len(calls), slices.Sorted(maps.Keys(fams)))
	}
}

// TestUnitFileSystem: under the file system the unit gives vmqd
// (unitMounts: read-only but for its ReadWritePaths, /sys read-only with
// tracefs in it), vmqd's start and restart pin in bpffs and the XDP
// transmit finds its tracepoints, with the unit's capabilities.
func TestUnitFileSystem(t *testing.T) {
	mounts := unitMounts(t)
	t.Logf("mounts:\n%s", mounts)
	caps := unitCaps(t)
	for _, c := range []struct {
		what string
		ch   *children
	}{{"start and restart", startChildren(t)}, {"XDP transmit", xdpTxChildren(t)}} {
		c.ch.sandbox = mounts
		if out, err := c.ch.run(caps); err != nil {
			t.Errorf("%s under the unit's file system: %v\n%s", c.what, err, out)
		}
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
