package testbed

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmq/vmq/guest/qemu"
	"github.com/vmq/vmq/internal/testenv"
)

// LinuxGuest is a Linux guest under QEMU on the bed.
type LinuxGuest struct {
	Name  string
	MAC   string
	IP    string // eth0's address, a /24
	Pairs int    // virtio-net queue pairs
	CPUs  int
	MTU   int // QEMU's host_mtu (VIRTIO_NET_F_MTU); 0: not set
	// Packed boots the device with packed virtqueues (QEMU packed=on).
	Packed bool
}

// RequireLinuxGuest returns the guest kernel and a static busybox, or
// skips the test.
func RequireLinuxGuest(t testing.TB) (qemu.Kernel, string) {
	t.Helper()
	testenv.RequireCommand(t, "qemu-system-x86_64")
	bb := testenv.RequireCommand(t, "busybox")
	if err := qemu.CheckStatic(bb); err != nil {
		testenv.Skip(t, "%v", err)
	}
	k, err := qemu.FindKernel()
	if err != nil {
		testenv.Skip(t, "%v", err)
	}
	return k, bb
}

// LinuxInitrd builds the guest's initramfs in Dir: virtio-net modules,
// eth0 at spec.IP/24.
func (b *Bed) LinuxInitrd(spec LinuxGuest) string {
	t := b.T
	t.Helper()
	k, bb := RequireLinuxGuest(t)
	mods, err := k.Modules(qemu.NetModules...)
	if err != nil {
		t.Fatalf("guest modules: %v", err)
	}
	initrd := filepath.Join(b.Dir, spec.Name+".initrd")
	prefix := netip.PrefixFrom(netip.MustParseAddr(spec.IP), 24)
	if err := (qemu.Initramfs{Busybox: bb, Modules: mods, Init: qemu.InitScript(qemu.ModuleNames(mods), prefix)}).Write(initrd); err != nil {
		t.Fatal(err)
	}
	return initrd
}

// BootLinux starts QEMU on the VM's socket (Socket(spec.Name); server:
// QEMU listens) and waits up to 60 s for the guest's eth0. describe, if
// set, adds what the backend knows to a boot failure. The guest is
// killed at the end of the test.
func (b *Bed) BootLinux(spec LinuxGuest, initrd string, server bool, describe func() string) *qemu.Guest {
	t := b.T
	t.Helper()
	k, _ := RequireLinuxGuest(t)
	g, err := qemu.Start(qemu.Config{Kernel: k.Image, Initrd: initrd, Socket: b.Socket(spec.Name), Server: server,
		MAC: MustMAC(spec.MAC), QueuePairs: spec.Pairs, CPUs: spec.CPUs, MTU: spec.MTU, Packed: spec.Packed, QEMU: os.Getenv("VMQ_QEMU"),
		Extra: strings.Fields(os.Getenv("VMQ_QEMU_EXTRA")),
		Log:   func(line string) { t.Logf("%s console: %s", spec.Name, line) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("guest %s: %v", spec.Name, err)
		}
		if t.Failed() {
			t.Logf("%s qemu stderr: %s", spec.Name, g.Stderr())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	if err := g.WaitBoot(ctx); err != nil {
		var more string
		if describe != nil {
			more = describe()
		}
		t.Fatalf("%s: %v\n%s", spec.Name, err, more)
	}
	t.Logf("%s booted in %v", spec.Name, time.Since(start).Round(time.Millisecond))
	if out := g.Console(); strings.Contains(out, "VMQ-INSMOD-FAILED") {
		t.Fatalf("%s: a module did not load:\n%s", spec.Name, out)
	}
	return g
}

// GuestExec runs a command line in a Linux guest (30 s at most) and
// fails the test unless it exits 0.
func GuestExec(t testing.TB, g *qemu.Guest, cmd string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := g.Exec(ctx, cmd)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	return out
}

// PingFromWire runs iputils ping to dst in the wire namespace; "-cpu",
// "N" in args pins it to CPU N.
func (b *Bed) PingFromWire(dst string, args ...string) string {
	b.T.Helper()
	argv := []string{"ping"}
	for i := 0; i < len(args); i++ {
		if args[i] == "-cpu" && i+1 < len(args) {
			argv = append([]string{"taskset", "-c", args[i+1]}, argv...)
			i++
			continue
		}
		argv = append(argv, args[i])
	}
	out, err := b.Wire.Command(argv[0], append(argv[1:], dst)...).CombinedOutput()
	if err != nil {
		b.T.Fatalf("ping %s from the wire: %v\n%s", dst, err, out)
	}
	return string(out)
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)

// CheckPing parses a ping summary (iputils or busybox) and requires every
// one of want echoes answered.
func CheckPing(t testing.TB, who, out string, want int) {
	t.Helper()
	m := pingSummary.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%s: no ping summary in:\n%s", who, out)
	}
	sent, _ := strconv.Atoi(m[1])
	got, _ := strconv.Atoi(m[2])
	if sent != want || got != want {
		t.Fatalf("%s: %d sent, %d received, want %d of %d:\n%s", who, sent, got, want, want, out)
	}
}

var pingReply = regexp.MustCompile(`(?m)^\d+ bytes from .*icmp_seq=(\d+) `)

// CheckPingSeqs requires a reply to each of the echoes 1..want in the
// output of iputils' `ping -c want -w DEADLINE`. With a deadline ping
// waits for want replies (sending more if it must) instead of two round
// trips after the last send, which a TCG guest on a loaded host
// sometimes takes longer than to answer; an echo lost among the first
// want is still missing.
func CheckPingSeqs(t testing.TB, who, out string, want int) {
	t.Helper()
	seen := make(map[int]bool)
	for _, m := range pingReply.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		seen[n] = true
	}
	for i := 1; i <= want; i++ {
		if !seen[i] {
			t.Fatalf("%s: no reply to echo %d of %d:\n%s", who, i, want, out)
		}
	}
}

// LastLines is the last n lines of s on one line, for logs.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}
