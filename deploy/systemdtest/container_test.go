package systemdtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
)

// container is a systemd booted as PID 1 by systemd-nspawn, in a network
// namespace of the test's.
type container struct {
	t       *testing.T
	name    string
	nsenter string
	// cgroups are the container's cgroup, one per host hierarchy; the
	// first is the one systemd tracks units in.
	cgroups []string
	console *testenv.SyncBuffer // nspawn's output: its messages, the boot's console
	exited  chan struct{}
	leader  int // the host's pid of the container's systemd
}

// bootOptions shape the container.
type bootOptions struct {
	netns *netnstest.NS
	// binds are nspawn --bind / --bind-ro arguments ("SRC:DST").
	binds, bindsRO []string
	// caps are added to nspawn's default bounding set.
	caps []string
	// syscalls are allowed on top of nspawn's own seccomp filter.
	syscalls []string
}

// bootContainer boots systemd in nspawn: a tmpfs root with the host's
// /usr (--volatile=yes: an empty /etc, so none of the host's enabled
// services start), multi-user.target. It waits until systemd reports
// running (or degraded: the failed units are logged) and powers the
// container off at the end of the test.
func bootContainer(t *testing.T, opts bootOptions) *container {
	t.Helper()
	nspawn := testenv.RequireCommand(t, "systemd-nspawn")
	c := &container{t: t, name: netnstest.UniqueName("vmqsysd-"), nsenter: testenv.RequireCommand(t, "nsenter"),
		console: &testenv.SyncBuffer{}, exited: make(chan struct{})}
	if _, err := os.Stat("/usr/lib/systemd/systemd"); err != nil {
		testenv.Skip(t, "no systemd to boot: %v", err)
	}
	c.cgroups = newCgroups(t, c.name)

	// A machine id: without one systemd boots as a first boot, and
	// systemd-firstboot.service would prompt on the console.
	dir := t.TempDir()
	machineID := filepath.Join(dir, "machine-id")
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(machineID, []byte(hex.EncodeToString(id[:])+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--directory=/", "--volatile=yes", "--boot",
		"--machine=" + c.name,
		// No machined and no systemd on the host to allocate a scope:
		// nspawn stays in the cgroup it was started in (newCgroups).
		"--register=no", "--keep-unit",
		"--network-namespace-path=/run/netns/" + opts.netns.Name,
		"--console=read-only", "--link-journal=no", "--resolv-conf=off", "--timezone=off",
		"--bind-ro=" + machineID + ":/etc/machine-id",
	}
	if len(opts.caps) > 0 {
		args = append(args, "--capability="+strings.Join(opts.caps, ","))
	}
	if len(opts.syscalls) > 0 {
		args = append(args, "--system-call-filter="+strings.Join(opts.syscalls, " "))
	}
	for _, b := range opts.binds {
		args = append(args, "--bind="+b)
	}
	for _, b := range opts.bindsRO {
		args = append(args, "--bind-ro="+b)
	}
	// The init's arguments: systemd reads its "kernel command line" from
	// them in a container. The bound machine id is not on a tmpfs, which
	// systemd-machine-id-commit.service would fail on.
	args = append(args, "systemd.unit=multi-user.target", "systemd.mask=systemd-machine-id-commit.service")

	// nspawn starts in its own cgroup (it then moves itself to
	// supervisor/ and the container to payload/ under it): the shell
	// moves itself there, then becomes nspawn.
	var procs []string
	for _, cg := range c.cgroups {
		procs = append(procs, filepath.Join(cg, "cgroup.procs"))
	}
	cmd := exec.Command("sh", append([]string{"-c", `for p in $VMQ_CGROUP_PROCS; do echo $$ >"$p" || exit 1; done; exec "$@"`, "sh", nspawn}, args...)...)
	cmd.Env = append(os.Environ(), "VMQ_CGROUP_PROCS="+strings.Join(procs, " "), "SYSTEMD_LOG_LEVEL=info")
	cmd.Stdout, cmd.Stderr = c.console, c.console
	t.Logf("systemd-nspawn %s", strings.Join(args, " "))
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start systemd-nspawn: %v", err)
	}
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() {
		// nspawn turns SIGTERM into SIGRTMIN+3 for the container's
		// systemd: an orderly poweroff.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
			t.Logf("container %s powered off (%v)", c.name, waitErr)
		case <-time.After(30 * time.Second):
			t.Errorf("container %s still running 30 s after SIGTERM: killed\n%s", c.name, c.console.String())
			if c.leader > 0 {
				syscall.Kill(c.leader, syscall.SIGKILL) // its PID namespace goes with it
			}
			cmd.Process.Kill()
			<-c.exited
		}
	})

	// On failure, the container's journal (before the poweroff above).
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		if c.leader > 0 {
			c.exec(20*time.Second, "journalctl", "--sync")
			out, _, err := c.exec(20*time.Second, "journalctl", "--no-pager", "-b", "-o", "short-monotonic")
			t.Logf("the container's journal (%v):\n%s", err, out)
		}
		t.Logf("nspawn's output:\n%s", c.console.String())
	})

	testenv.EventuallyWithin(t, 30*time.Second, "the container's systemd", func() (bool, string) {
		select {
		case <-c.exited:
			t.Fatalf("systemd-nspawn exited: %v\n%s", waitErr, c.console.String())
		default:
		}
		if c.leader == 0 {
			c.leader = c.findLeader()
			return false, "no PID 1 in the container's cgroup yet"
		}
		out, _, _ := c.exec(10*time.Second, "systemctl", "is-system-running")
		state := strings.TrimSpace(out)
		return state == "running" || state == "degraded", "systemctl is-system-running: " + state
	})
	t.Logf("container %s (PID 1 is %d on the host) booted in %v", c.name, c.leader, time.Since(start).Round(time.Millisecond))
	if out, _, _ := c.exec(10*time.Second, "systemctl", "--no-pager", "--no-legend", "--failed"); strings.TrimSpace(out) != "" {
		t.Logf("failed units in the container (not vmq's):\n%s", out)
	}
	return c
}

// exec runs a command in every namespace of the container (nsenter), not
// under the container's seccomp filter or bounding set.
func (c *container) exec(timeout time.Duration, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.nsenter, append([]string{"--target", strconv.Itoa(c.leader), "--all", "--"}, args...)...)
	cmd.Env = append(os.Environ(), "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err = cmd.Run(); err != nil {
		err = fmt.Errorf("%s in container %s: %w: %s", strings.Join(args, " "), c.name, err, strings.TrimSpace(e.String()))
	}
	return o.String(), e.String(), err
}

// systemctl runs systemctl in the container; an error fails the test.
func (c *container) systemctl(args ...string) string {
	c.t.Helper()
	out, _, err := c.exec(60*time.Second, append([]string{"systemctl", "--no-pager"}, args...)...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// show is systemctl show of a unit's properties.
func (c *container) show(unit string, props ...string) map[string]string {
	c.t.Helper()
	args := []string{"show", unit}
	for _, p := range props {
		args = append(args, "--property="+p)
	}
	m := map[string]string{}
	for _, l := range strings.Split(c.systemctl(args...), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// journal is the container's journal for this boot, as bare messages,
// with every message journald received before the call.
func (c *container) journal(match ...string) string {
	c.t.Helper()
	if _, _, err := c.exec(30*time.Second, "journalctl", "--sync"); err != nil {
		c.t.Fatal(err)
	}
	out, _, err := c.exec(30*time.Second, append([]string{"journalctl", "--no-pager", "-b", "-o", "cat"}, match...)...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// findLeader is the host's pid of the container's PID 1 (0: none yet),
// found in the container's cgroup.
func (c *container) findLeader() int {
	for _, pid := range cgroupPIDs(c.cgroups[0], "") {
		lines, _ := procLines(pid, "status") // nil: gone meanwhile
		for _, l := range lines {
			// NSpid: the pid in each PID namespace, the innermost last.
			if f := strings.Fields(l); len(f) > 2 && f[0] == "NSpid:" && f[len(f)-1] == "1" {
				return pid
			}
		}
	}
	return 0
}

// procLines is the file /proc/PID/NAME, a line each.
func procLines(pid int, name string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), name))
	return strings.Split(string(b), "\n"), err
}

// unitPIDs are the host's pids of a unit's processes in the container.
func (c *container) unitPIDs(unit string) []int {
	return cgroupPIDs(c.cgroups[0], unit)
}

// cgroupPIDs are the pids in the cgroups under root, only in those named
// name when it is not "".
func cgroupPIDs(root, name string) []int {
	var pids []int
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || name != "" && d.Name() != name {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// newCgroups makes a cgroup named name in each of the host's hierarchies
// that nspawn and the container's systemd track processes in: the
// unified one, and on a hybrid host (cgroup v1 controllers, the unified
// hierarchy at /sys/fs/cgroup/unified) the named systemd one too. They
// are removed, with what nspawn and the container made under them, at
// the end of the test.
func newCgroups(t *testing.T, name string) []string {
	t.Helper()
	var roots []string
	switch {
	case isCgroup2("/sys/fs/cgroup"):
		roots = []string{"/sys/fs/cgroup"}
	case isCgroup2("/sys/fs/cgroup/unified"):
		roots = []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"}
	default:
		roots = []string{"/sys/fs/cgroup/systemd"}
	}
	var dirs []string
	for _, r := range roots {
		d := filepath.Join(r, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			testenv.Skip(t, "no cgroup for the container: %v", err)
		}
		dirs = append(dirs, d)
	}
	t.Cleanup(func() {
		for _, d := range dirs {
			// The last processes may still be on their way out.
			if ok, why := testenv.PollWithin(10*time.Second, func() (bool, string) {
				err := removeCgroup(d)
				return err == nil, fmt.Sprint(err)
			}); !ok {
				t.Errorf("remove cgroup %s: %s", d, why)
			}
		}
	})
	return dirs
}

func isCgroup2(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// removeCgroup removes a cgroup and every cgroup under it.
func removeCgroup(dir string) error {
	var dirs []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	slices.Reverse(dirs) // children before their parent
	var errs []error
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
