// Package qemu boots a Linux guest under QEMU whose virtio-net device
// is a vhost-user netdev, so vmq's backend can be tested against the
// kernel's virtio-net driver (which negotiates EVENT_IDX, unlike DPDK's
// virtio_user). The guest is a kernel plus a busybox initramfs built on
// the fly; the test drives it through its serial console.
//
// Knobs for the tests: VMQ_GUEST_KERNEL (a vmlinuz whose modules are in
// /lib/modules/VERSION), VMQ_QEMU_ACCEL (default tcg), VMQ_QEMU (the
// binary, e.g. a wrapper running it under gdb) and VMQ_QEMU_EXTRA (more
// arguments, e.g. "-trace vhost_user_write -trace vhost_user_read").
package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// NetModules are the modules a Debian kernel needs for virtio-net over
// virtio-pci (those compiled in are skipped by Kernel.Modules).
var NetModules = []string{"virtio_pci", "virtio_net"}

// Marker is printed on the console once the guest's eth0 is configured.
const Marker = "VMQ-GUEST-UP"

// InitScript returns an /init for busybox: mount the pseudo filesystems,
// load modules (names without .ko, in order), give eth0 addr and bring it
// up, print Marker, then read commands from the console.
func InitScript(modules []string, addr netip.Prefix) string {
	var b strings.Builder
	b.WriteString(`#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6 2>/dev/null
`)
	fmt.Fprintf(&b, "for m in %s; do insmod /lib/modules/$m.ko || echo VMQ-INSMOD-FAILED $m; done\n", strings.Join(modules, " "))
	fmt.Fprintf(&b, `ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
ip addr add %s dev eth0
ip link set eth0 up
stty -echo 2>/dev/null
echo %s
exec sh
`, addr, Marker)
	return b.String()
}

// Config describes a guest.
type Config struct {
	QEMU   string // qemu-system-x86_64; "" looks it up in PATH
	Kernel string // bzImage
	Initrd string
	// Socket is the vhost-user socket. QEMU connects to it once, at
	// start, so the backend must be listening; with Server, QEMU listens
	// and waits (in its startup) for the backend to connect.
	Socket string
	Server bool
	// Reconnect, with Server off, makes QEMU reconnect to a backend that
	// went away (the chardev's reconnect=SECONDS), e.g. a restarted vmqd.
	Reconnect int
	// Reboot lets a guest reset (system_reset, reboot) restart the
	// guest; by default QEMU exits on a reset (-no-reboot).
	Reboot     bool
	MAC        net.HardwareAddr
	QueuePairs int // virtio-net queue pairs (mq when > 1)
	// MTU, if set, is the device's host_mtu: QEMU offers VIRTIO_NET_F_MTU
	// (the backend must offer it too) and the guest's eth0 takes it.
	MTU      int
	CPUs     int // guest vCPUs (Linux uses min(pairs, CPUs) pairs)
	MemoryMB int // default 256
	// Accel is QEMU's accelerator list; "" means $VMQ_QEMU_ACCEL, else
	// "tcg" (see DefaultAccel).
	Accel   string
	Cmdline string // extra kernel command line
	// MSIX gives the device MSI-X vectors (2 per pair + 2). Off, it
	// uses INTx: QEMU 7.2 under TCG (no irqfd) segfaults in
	// vhost_net_start -> msix_set_vector_notifiers when the guest driver
	// starts a vhost-user device with MSI-X, whichever the backend (DPDK's
	// net_vhost crashes it the same way).
	MSIX bool
	// Packed gives the device packed virtqueues (packed=on): the guest's
	// driver uses them when the backend offers VIRTIO_F_RING_PACKED.
	Packed bool
	// Extra are more QEMU arguments (e.g. "-trace", "vhost_user_*").
	Extra []string
	// Log, if set, gets every console line as it arrives.
	Log func(line string)
}

// DefaultAccel is "tcg": on hosts where /dev/kvm exists without usable
// nesting, "kvm:tcg" picks KVM and then fails (-cpu max sets MSRs the
// host KVM refuses) or hangs, instead of falling back.
const DefaultAccel = "tcg"

// Args are the QEMU arguments for cfg.
func (cfg Config) Args() []string {
	pairs := max(cfg.QueuePairs, 1)
	mem := cfg.MemoryMB
	if mem == 0 {
		mem = 256
	}
	accel := cfg.Accel
	if accel == "" {
		accel = os.Getenv("VMQ_QEMU_ACCEL")
	}
	if accel == "" {
		accel = DefaultAccel
	}
	dev := fmt.Sprintf("virtio-net-pci,netdev=net0,mac=%s", cfg.MAC)
	if pairs > 1 {
		dev += ",mq=on"
	}
	if cfg.MTU > 0 {
		dev += fmt.Sprintf(",host_mtu=%d", cfg.MTU)
	}
	if cfg.Packed {
		dev += ",packed=on"
	}
	vectors := 0
	if cfg.MSIX {
		vectors = 2*pairs + 2
	}
	dev += fmt.Sprintf(",vectors=%d", vectors)
	cmdline := "console=ttyS0 quiet panic=-1 " + cfg.Cmdline
	chardev := "socket,id=chr0,path=" + cfg.Socket
	if cfg.Server {
		chardev += ",server=on,wait=off"
	} else if cfg.Reconnect > 0 {
		chardev += fmt.Sprintf(",reconnect=%d", cfg.Reconnect)
	}
	args := []string{
		"-name", "vmq-guest", "-nodefaults", "-no-user-config", "-no-reboot",
		"-machine", "q35,accel=" + accel, "-cpu", "max", "-smp", strconv.Itoa(max(cfg.CPUs, 1)),
		"-m", strconv.Itoa(mem),
		// vhost-user needs the guest memory shared with the backend.
		"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", mem),
		"-numa", "node,memdev=mem",
		"-chardev", chardev,
		"-netdev", fmt.Sprintf("type=vhost-user,id=net0,chardev=chr0,queues=%d", pairs),
		"-device", dev,
		"-kernel", cfg.Kernel, "-initrd", cfg.Initrd, "-append", strings.TrimSpace(cmdline),
		"-display", "none", "-serial", "stdio",
	}
	if cfg.Reboot {
		args = slices.DeleteFunc(args, func(a string) bool { return a == "-no-reboot" })
	}
	return append(args, cfg.Extra...)
}

// Guest is a running QEMU.
type Guest struct {
	cfg   Config
	cmd   *exec.Cmd
	stdin *os.File
	done  chan struct{} // closed when QEMU has exited
	werr  error         // QEMU's exit, valid after done

	mu      sync.Mutex
	console bytes.Buffer // everything the serial port printed, \r removed
	stderr  bytes.Buffer
	changed chan struct{} // closed and replaced on every console write

	execMu sync.Mutex
	seq    int
	closed sync.Once
}

// Start starts QEMU. Close kills it; QEMU also dies with the process that
// started it (PR_SET_PDEATHSIG).
func Start(cfg Config) (*Guest, error) {
	bin := cfg.QEMU
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("qemu-system-x86_64"); err != nil {
			return nil, fmt.Errorf("start guest: %w", err)
		}
	}
	g := &Guest{cfg: cfg, done: make(chan struct{}), changed: make(chan struct{})}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start guest: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("start guest: %w", err)
	}
	cmd := exec.Command(bin, cfg.Args()...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, &lockedWriter{mu: &g.mu, w: &g.stderr}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	// Pdeathsig fires when the forking thread exits, so the thread stays
	// locked (and alive) for as long as QEMU runs.
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		g.werr = cmd.Wait()
		close(g.done)
	}()
	err = <-started
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	g.cmd, g.stdin = cmd, inW
	go g.readConsole(outR)
	return g, nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (g *Guest) readConsole(r *os.File) {
	defer r.Close()
	buf := make([]byte, 4096)
	var line []byte
	for {
		n, err := r.Read(buf)
		chunk := bytes.ReplaceAll(buf[:n], []byte("\r"), nil)
		g.mu.Lock()
		g.console.Write(chunk)
		close(g.changed)
		g.changed = make(chan struct{})
		g.mu.Unlock()
		if g.cfg.Log != nil {
			line = append(line, chunk...)
			for {
				i := bytes.IndexByte(line, '\n')
				if i < 0 {
					break
				}
				g.cfg.Log(string(line[:i]))
				line = line[i+1:]
			}
		}
		if err != nil {
			if len(line) > 0 && g.cfg.Log != nil {
				g.cfg.Log(string(line))
			}
			return
		}
	}
}

// Console returns everything the guest printed so far.
func (g *Guest) Console() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.console.String()
}

// Stderr returns QEMU's own diagnostics.
func (g *Guest) Stderr() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stderr.String()
}

// ErrExited means QEMU exited while a caller waited for the guest.
var ErrExited = errors.New("qemu exited")

// WaitFor waits until the console output from offset on contains s and
// returns the offset just past it.
func (g *Guest) WaitFor(ctx context.Context, offset int, s string) (int, error) {
	for {
		g.mu.Lock()
		out := g.console.Bytes()
		ch := g.changed
		if offset > len(out) {
			offset = len(out)
		}
		i := bytes.Index(out[offset:], []byte(s))
		g.mu.Unlock()
		if i >= 0 {
			return offset + i + len(s), nil
		}
		select {
		case <-ch:
		case <-g.done:
			// The reader may still hold the last output: look once more.
			time.Sleep(50 * time.Millisecond)
			if strings.Contains(g.Console()[offset:], s) {
				continue
			}
			return 0, fmt.Errorf("waiting for %q: %w (%v); stderr: %s", s, ErrExited, g.werr, strings.TrimSpace(g.Stderr()))
		case <-ctx.Done():
			return 0, fmt.Errorf("waiting for %q on the guest console: %w", s, ctx.Err())
		}
	}
}

// WaitBoot waits for the init script's Marker.
func (g *Guest) WaitBoot(ctx context.Context) error {
	_, err := g.WaitFor(ctx, 0, Marker)
	if err != nil {
		return fmt.Errorf("guest boot: %w", err)
	}
	return nil
}

// ExitError is a guest command's non-zero exit status.
type ExitError struct {
	Cmd    string
	Status int
	Output string
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("guest command %q exited with %d: %s", e.Cmd, e.Status, strings.TrimSpace(e.Output))
}

// Exec runs a shell command line in the guest (after WaitBoot) and
// returns its output (stdout and stderr). A non-zero exit is an
// *ExitError carrying the output. Commands run one at a time.
func (g *Guest) Exec(ctx context.Context, cmdline string) (string, error) {
	if strings.ContainsAny(cmdline, "\n") {
		return "", fmt.Errorf("guest command %q: one line only", cmdline)
	}
	g.execMu.Lock()
	defer g.execMu.Unlock()
	g.seq++
	// The quotes keep the markers out of an echoed command line.
	begin, end := fmt.Sprintf("VMQ-BEGIN-%d\n", g.seq), fmt.Sprintf("VMQ-END-%d ", g.seq)
	start := len(g.Console())
	line := fmt.Sprintf("echo VMQ\"\"-BEGIN-%d; { %s ; } 2>&1; echo VMQ\"\"-END-%d $?\n", g.seq, cmdline, g.seq)
	if _, err := g.stdin.WriteString(line); err != nil {
		return "", fmt.Errorf("guest command %q: write console: %w", cmdline, err)
	}
	from, err := g.WaitFor(ctx, start, begin)
	if err != nil {
		return "", fmt.Errorf("guest command %q: %w", cmdline, err)
	}
	to, err := g.WaitFor(ctx, from, end)
	if err != nil {
		return "", fmt.Errorf("guest command %q: %w; output so far: %s", cmdline, err, g.Console()[from:])
	}
	statusEnd, err := g.WaitFor(ctx, to, "\n")
	if err != nil {
		return "", fmt.Errorf("guest command %q: %w", cmdline, err)
	}
	con := g.Console()
	out := con[from : to-len(end)]
	status, err := strconv.Atoi(strings.TrimSpace(con[to:statusEnd]))
	if err != nil {
		return out, fmt.Errorf("guest command %q: bad exit status %q", cmdline, con[to:statusEnd])
	}
	if status != 0 {
		return out, &ExitError{Cmd: cmdline, Status: status, Output: out}
	}
	return out, nil
}

// Close kills QEMU and waits for it to exit.
func (g *Guest) Close() error {
	var err error
	g.closed.Do(func() {
		g.stdin.Close()
		// SIGKILL straight away: the guest has nothing to save.
		if kerr := g.cmd.Process.Kill(); kerr != nil && !errors.Is(kerr, os.ErrProcessDone) {
			err = fmt.Errorf("kill qemu: %w", kerr)
		}
		select {
		case <-g.done:
		case <-time.After(10 * time.Second):
			err = errors.Join(err, fmt.Errorf("qemu pid %d did not exit after SIGKILL", g.cmd.Process.Pid))
		}
	})
	return err
}

// Exited is closed when QEMU has exited.
func (g *Guest) Exited() <-chan struct{} { return g.done }
