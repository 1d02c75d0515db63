// Package captest checks that the capabilities vmqd.service keeps are the
// ones vmqd needs: a child process with exactly the unit's bounding set
// (and no-new-privs) does what vmqd does at start and at restart with the
// real bpf and xsk packages, and dropping any one of those capabilities
// makes it fail.
//
// It lives apart from package deploy so that a change in bpf or xsk
// breaks only this test.
package captest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmq/vmq/bpf"
	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/xsk"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
)

const (
	envIfindex = "VMQ_CAPTEST_IFINDEX"
	envPinDir  = "VMQ_CAPTEST_PINDIR"
)

func TestMain(m *testing.M) {
	if os.Getenv(envIfindex) != "" {
		if err := child(); err != nil {
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

// unitCaps reads CapabilityBoundingSet from the unit.
func unitCaps(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../systemd/vmqd.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapabilityBoundingSet="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatal("no CapabilityBoundingSet in vmqd.service")
	return nil
}

func TestUnitCapabilities(t *testing.T) {
	testenv.RequireRoot(t)
	setpriv := testenv.RequireCommand(t, "setpriv")
	nsenter := testenv.RequireCommand(t, "nsenter")
	prlimit := testenv.RequireCommand(t, "prlimit")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	nsA, nsB := netnstest.New(t), netnstest.New(t)
	a, _ := netnstest.NewVethPair(t, nsA, nsB, netnstest.VethOptions{Queues: 1, MTU: 1500})
	t.Logf("netns %s, %s; veth %s", nsA.Name, nsB.Name, a.Name)
	pinDir := filepath.Join("/sys/fs/bpf", netnstest.UniqueName("vmqtcap"))
	t.Cleanup(func() { os.RemoveAll(pinDir) })

	// memlock is small so that only CAP_IPC_LOCK lets the UMEM register
	// (the unit sets LimitMEMLOCK=infinity as well: belt and braces).
	runChild := func(caps []string) (string, error) {
		bset := "-all"
		for _, c := range caps {
			bset += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		}
		for attempt := 0; ; attempt++ {
			cmd := exec.Command(nsenter, "--net=/run/netns/"+nsA.Name, "--",
				prlimit, "--memlock=65536:65536", "--",
				setpriv, "--bounding-set="+bset, "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--",
				self, "-test.run=^$")
			cmd.Env = append(os.Environ(), envIfindex+"="+strconv.Itoa(a.Index), envPinDir+"="+pinDir)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			os.RemoveAll(pinDir) // a failed child may leave pins behind
			// The kernel unbinds a closed AF_XDP socket's UMEM from the queue
			// asynchronously; the previous child's may not be gone yet.
			if err != nil && strings.Contains(out.String(), "queue is busy") && attempt < 20 {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return out.String(), err
		}
	}

	caps := unitCaps(t)
	out, err := runChild(caps)
	if err != nil {
		t.Fatalf("with the unit's capabilities %v: %v\n%s", caps, err, out)
	}
	// Each capability is needed: without it the same work fails.
	for _, c := range caps {
		less := slices.DeleteFunc(slices.Clone(caps), func(s string) bool { return s == c })
		out, err := runChild(less)
		if err == nil {
			t.Errorf("vmqd's start and restart work without %s: drop it from the unit", c)
			continue
		}
		t.Logf("without %s: %s", c, firstLine(out))
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
