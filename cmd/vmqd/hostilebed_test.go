package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/hostile"
	"github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// The hostile suite runs the real vmqd binary (a crash must not take the
// test down with it) with one victim VM, and adds an attacker VM per
// attack. On one NIC queue both VMs share one worker. On two (the
// cross-worker attacks) the victim, one queue pair, is served by worker
// 0, and its wire frames are sent on NIC queue 1: worker 1 takes them
// from the victim's socket there and hands them to worker 0 through its
// mailbox, the path an attacker on worker 1 floods.

const (
	victimMAC   = "02:00:00:00:03:01"
	attackerMAC = "02:00:00:00:03:02"
	// Fixed victim rates a busy, shared 2-core machine sustains: the
	// victim's 256-entry AF_XDP rx ring then rides out 85 ms of its
	// worker being descheduled, so a loss is the attacker's doing.
	victimRxRate = 3000 // wire → victim, frames/s
	victimTxRate = 3000 // victim → wire, frames/s
	// afterAttack is how long the victim's traffic goes on once the
	// attack has landed: exactness is checked during and after.
	afterAttack = 500 * time.Millisecond
	// answerWithin bounds `vmqctl vm rm`, `vmqctl stats` and /metrics.
	answerWithin = time.Second
)

// vmqdProc is one running vmqd process.
type vmqdProc struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	metrics string // host:port of /metrics
}

func (p *vmqdProc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill ends the process at once: after an attack that wedged a worker a
// clean stop never finishes.
func (p *vmqdProc) kill() {
	if p.alive() {
		p.cmd.Process.Kill()
	}
	<-p.exited
}

// stop asks for a clean stop and kills after 5 s.
func (p *vmqdProc) stop() {
	if p.alive() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
		}
	}
	p.kill()
}

// hostileBed is vmqd (one socket mode) with its victim.
type hostileBed struct {
	t      *testing.T
	b      *bed
	mode   string
	vmqd   string
	vmqctl string
	cfg    string // config file
	log    string // vmqd's log file, appended to across restarts
	proc   *vmqdProc
	victim *frontend.Guest
	api    *control.Client

	queues int // NIC queues, one worker each
	// wireCPU is the CPU the victim's wire frames are sent from, which
	// picks their NIC queue (cpu mod queues); -1: any.
	wireCPU int

	seq         int  // per attack: socket names and stream ids
	needRestart bool // the last attack left vmqd dead or wedged
	restarts    int
}

// newHostileBed starts vmqd serving queues NIC queues (1 or 2) with the
// victim.
func newHostileBed(t *testing.T, mode, vmqd, vmqctl string, queues int) *hostileBed {
	t.Helper()
	h := &hostileBed{t: t, b: newBedQueues(t, queues), mode: mode, vmqd: vmqd, vmqctl: vmqctl, queues: queues, wireCPU: -1}
	if queues > 1 {
		h.wireCPU = 1
	}
	h.cfg = filepath.Join(h.b.Dir, "vmqd.yaml")
	h.log = filepath.Join(h.b.Dir, "vmqd.log")
	cfg := fmt.Sprintf("nic: %s\nqueues: %d\npin_dir: %s\napi: {socket: %s}\nmetrics: {address: \"\"}\nvms:\n  - {name: victim, mac: %q, socket: %s, mode: %s}\n",
		h.b.cfg.NIC, queues, h.b.cfg.PinDir, h.b.cfg.API.Socket, victimMAC, h.sock("victim"), mode)
	if p := os.Getenv("VMQ_HOSTILE_TX_PATH"); p != "" {
		cfg += "tx: {path: " + p + "}\n" // measurements: the same attacks on another transmit path
	}
	if err := os.WriteFile(h.cfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	h.api = control.NewClient(h.b.cfg.API.Socket)
	t.Cleanup(h.api.Close)

	vcfg := testbed.GuestConfig(victimMAC, 1, "")
	vcfg.Reconnect = true
	if mode == control.ModeClient {
		// vmqd dials the victim: it listens before vmqd starts.
		h.victim = testbed.ListenGuest(t, "victim", h.sock("victim"), vcfg)
	}
	h.proc = h.start()
	if mode == control.ModeServer {
		var g *frontend.Guest
		testenv.Eventually(t, "victim connects to vmqd", func() (bool, string) {
			var err error
			g, err = frontend.Dial(h.sock("victim"), vcfg)
			return err == nil, fmt.Sprint(err)
		})
		h.victim = g
		testbed.RunGuest(t, "victim", g)
	}
	testenv.Eventually(t, "victim up", func() (bool, string) {
		return h.victim.Connected(), "victim not connected"
	})
	t.Cleanup(func() { h.proc.stop() })
	return h
}

func (h *hostileBed) sock(name string) string { return h.b.Socket(name) }

// start runs vmqd and waits for its API and metrics.
func (h *hostileBed) start() *vmqdProc {
	t := h.t
	t.Helper()
	logf, err := os.OpenFile(h.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	off, _ := logf.Seek(0, io.SeekEnd)
	cmd := exec.Command(h.vmqd, "--config", h.cfg, "--netns", h.b.Host.Name,
		"--metrics-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "info")
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &vmqdProc{cmd: cmd, exited: make(chan struct{})}
	go func() { p.waitErr = cmd.Wait(); close(p.exited) }()
	testenv.Eventually(t, "vmqd up", func() (bool, string) {
		if !p.alive() {
			t.Fatalf("vmqd exited at start: %v\n%s", p.waitErr, h.logTail())
		}
		if p.metrics == "" {
			p.metrics = metricsAddrFromLog(h.log, off)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := h.api.Stats(ctx)
		return err == nil && p.metrics != "", fmt.Sprintf("API: %v, metrics at %q", err, p.metrics)
	})
	return p
}

// metricsAddrFromLog finds the "metrics listening" line written after
// offset off of the JSON log.
func metricsAddrFromLog(path string, off int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return ""
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Msg     string `json:"msg"`
			Address string `json:"address"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "metrics listening" {
			a := strings.TrimPrefix(l.Address, "http://")
			return strings.TrimSuffix(a, "/metrics")
		}
	}
	return ""
}

// logTail is the end of vmqd's log, for failure messages.
func (h *hostileBed) logTail() string {
	b, _ := os.ReadFile(h.log)
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

// ensureUp restarts vmqd if the previous attack killed or wedged it, so
// that each attack is judged on a daemon in good health.
func (h *hostileBed) ensureUp(t *testing.T) {
	t.Helper()
	if !h.proc.alive() {
		h.needRestart = true
	}
	if !h.needRestart {
		return
	}
	h.restarts++
	t.Logf("restarting vmqd after the previous attack (restart %d)", h.restarts)
	h.proc.kill()
	before := h.victim.Stats().Connects
	h.proc = h.start()
	testenv.Eventually(t, "victim back after the restart", func() (bool, string) {
		return h.victim.Stats().Connects > before && h.victim.Connected(), "victim not reconnected"
	})
	h.needRestart = false
}

// ctl runs vmqctl with a deadline and reports how long it took.
func (h *hostileBed) ctl(within time.Duration, args ...string) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, h.vmqctl, append([]string{"--socket", h.b.cfg.API.Socket}, args...)...).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("no answer within %v", within)
	}
	return string(out), time.Since(start), err
}

// snapshot is the API's snapshot (nil and the error if it does not answer).
func (h *hostileBed) snapshot() (*dataplane.Snapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), answerWithin)
	defer cancel()
	s, err := h.api.Stats(ctx)
	if err != nil {
		return nil, err
	}
	return &s, nil
}

func vmOf(s *dataplane.Snapshot, name string) dataplane.VMStats {
	for _, v := range s.VMs {
		if v.Name == name {
			return v
		}
	}
	return dataplane.VMStats{}
}

func portOf(s *dataplane.Snapshot, name string) dataplane.PortStats {
	for _, p := range s.Ports {
		if p.VM == name {
			return p
		}
	}
	return dataplane.PortStats{}
}

// attacker is the attacker VM of one attack.
type attacker struct {
	h     *hostileBed
	t     *testing.T
	name  string
	sock  string
	pairs int
	ln    *hostile.Listener // client mode: vmqd dials this
}

// addAttacker adds the attacker VM through the real CLI, with the
// attack's own `vmqctl vm add` flags (addArgs).
func (h *hostileBed) addAttacker(t *testing.T, atk hostileAttack) *attacker {
	t.Helper()
	a := &attacker{h: h, t: t, name: "attacker", sock: h.sock(fmt.Sprintf("attacker-%d", h.seq)), pairs: max(atk.pairs, 1)}
	if h.mode == control.ModeClient {
		ln, err := hostile.Listen(a.sock)
		if err != nil {
			t.Fatal(err)
		}
		a.ln = ln
		t.Cleanup(func() { ln.Close() })
	}
	args := atk.addArgs
	if a.pairs > 1 {
		args = append([]string{"--queue-pairs", fmt.Sprint(a.pairs)}, args...)
	}
	h.vmAdd(t, a.name, attackerMAC, a.sock, args...)
	return a
}

// vmAdd adds a VM through the real CLI (in the bed's socket mode) and
// removes it when the test ends: an attack that stops early leaves no VM
// for the next one (checkDaemon removes the attacker on the normal path;
// this then finds none).
func (h *hostileBed) vmAdd(t *testing.T, name, mac, sock string, args ...string) {
	t.Helper()
	add := append([]string{"vm", "add", name, "--mac", mac, "--socket", sock, "--mode", h.mode}, args...)
	if out, _, err := h.ctl(5*time.Second, add...); err != nil {
		t.Fatalf("vmqctl vm add %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() { h.ctl(2*time.Second, "vm", "rm", name) })
}

// addBystander adds a well-behaved VM with a Go guest, for attacks that
// need more VMs on a VLAN.
func (h *hostileBed) addBystander(t *testing.T, name, mac string, args ...string) *frontend.Guest {
	t.Helper()
	sock := h.sock(fmt.Sprintf("%s-%d", name, h.seq))
	h.vmAdd(t, name, mac, sock, args...)
	return h.goGuest(t, name, sock, testbed.GuestConfig(mac, 1, ""))
}

// goGuest connects a Go guest to the port at sock once the VM is added:
// it dials vmqd (server mode) or listens for vmqd, which redials until
// it answers (client mode).
func (h *hostileBed) goGuest(t *testing.T, name, sock string, cfg frontend.Config) *frontend.Guest {
	t.Helper()
	var g *frontend.Guest
	if h.mode == control.ModeClient {
		g = testbed.ListenGuest(t, name, sock, cfg)
	} else {
		testenv.Eventually(t, name+" guest connects", func() (bool, string) {
			var err error
			g, err = frontend.Dial(sock, cfg)
			return err == nil, fmt.Sprint(err)
		})
		testbed.RunGuest(t, name, g)
	}
	testenv.Eventually(t, name+" guest up", func() (bool, string) { return g.Connected(), "not connected" })
	return g
}

// conn opens a new front-end connection for the attacker: dialled in
// server mode, accepted from vmqd (which redials after every hang-up) in
// client mode.
func (a *attacker) conn() *hostile.Conn {
	a.t.Helper()
	var c *hostile.Conn
	var err error
	if a.ln != nil {
		c, err = a.ln.Accept(5 * time.Second)
	} else {
		testenv.Eventually(a.t, "attacker connects", func() (bool, string) {
			c, err = hostile.Dial(a.sock, time.Second)
			return err == nil, fmt.Sprint(err)
		})
	}
	if err != nil {
		a.t.Fatalf("attacker connection: %v", err)
	}
	a.t.Cleanup(func() { c.Close() })
	return c
}

// device opens a connection and allocates a device on it (nothing sent).
func (a *attacker) device(cfg hostile.Config) *hostile.Device {
	a.t.Helper()
	d, err := hostile.NewDevice(a.conn(), cfg)
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(d.Close)
	return d
}

// guest connects a well-behaved Go guest as the attacker VM (for floods,
// where the attack is volume, not protocol abuse).
func (a *attacker) guest() *frontend.Guest {
	a.t.Helper()
	if a.ln != nil {
		a.ln.Close() // the hostile listener holds the path: hand it to a Go guest
	}
	return a.h.goGuest(a.t, a.name, a.sock, testbed.GuestConfig(attackerMAC, a.pairs, ""))
}

// waitBroken waits until vmqd reports the attacker's device broken with a
// reason containing want, and returns the reason.
func (a *attacker) waitBroken(want string) string {
	a.t.Helper()
	var reason string
	testenv.Eventually(a.t, "attacker device broken ("+want+")", func() (bool, string) {
		if !a.h.proc.alive() {
			a.t.Fatalf("vmqd died: %v\n%s", a.h.proc.waitErr, a.h.logTail())
		}
		s, err := a.h.snapshot()
		if err != nil {
			return false, err.Error()
		}
		reason = portOf(s, a.name).Broken
		return reason != "" && strings.Contains(reason, want), fmt.Sprintf("broken %q", reason)
	})
	return reason
}

// flow sends frames from the wire to mac at rate until ctx ends, in the
// background (AF_PACKET, paced in small bursts: a live-frames run costs
// tens of milliseconds a call); the returned function waits for it and
// returns its totals.
func (h *hostileBed) flow(ctx context.Context, mac string, stream uint32, rate float64) func() (pktgen.Stats, error) {
	return h.b.FlowOnCPU(ctx, h.wireCPU, pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac)}}, Size: 64, Stream: stream}, rate)
}

// traffic is the victim's fixed-rate traffic of one attack, both ways.
type traffic struct {
	cancel           context.CancelFunc
	rxStream         uint32
	txStream         uint32
	waitRx           func() (pktgen.Stats, error)
	txDone           chan struct{}
	txSent           uint64
	txErr            error
	sink             *pktgen.Sink
	rxSent, txQueued uint64
}

// startTraffic starts wire→victim and victim→wire traffic and returns
// once frames flow both ways.
func (h *hostileBed) startTraffic(t *testing.T) *traffic {
	t.Helper()
	tr := &traffic{rxStream: uint32(1000 + 2*h.seq), txStream: uint32(1001 + 2*h.seq), txDone: make(chan struct{})}
	err := h.b.Wire.Do(func() error {
		var err error
		// Counts the victim's frames on the wire (one tracked stream).
		tr.sink, err = pktgen.AttachSink(h.b.Peer.Index, pktgen.SinkOptions{Stream: tr.txStream})
		return err
	})
	if err != nil {
		t.Fatalf("wire sink: %v", err)
	}
	t.Cleanup(func() { tr.sink.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	tr.cancel = cancel
	tr.waitRx = h.flow(ctx, victimMAC, tr.rxStream, victimRxRate)
	go func() {
		defer close(tr.txDone)
		tr.txSent, tr.txErr = h.victim.Generate(ctx, frontend.Traffic{Dst: h.b.Peer.MAC, Rate: victimTxRate, Stream: tr.txStream})
	}()
	t.Cleanup(func() { tr.stop() })
	testenv.Eventually(t, "victim traffic flows both ways before the attack", func() (bool, string) {
		st, err := tr.sink.Stats()
		rx := streamReceived(h.victim, tr.rxStream)
		return err == nil && st.Tracked > 0 && rx > 0, fmt.Sprintf("victim received %d, wire got %d of its frames (%v)", rx, st.Tracked, err)
	})
	return tr
}

// stop ends the victim's traffic and records what was sent.
func (tr *traffic) stop() {
	if tr.cancel == nil {
		return
	}
	tr.cancel()
	tr.cancel = nil
	st, _ := tr.waitRx()
	<-tr.txDone
	tr.rxSent, tr.txQueued = st.Sent, tr.txSent
}

// checkVictim: every frame sent to the victim arrived exactly once, and
// every frame it queued reached the wire exactly once.
func (h *hostileBed) checkVictim(t *testing.T, tr *traffic) {
	t.Helper()
	tr.stop()
	if tr.txErr != nil {
		t.Errorf("victim transmit: %v", tr.txErr)
	}
	if tr.rxSent == 0 || tr.txQueued == 0 {
		t.Fatalf("no victim traffic: %d to it, %d from it", tr.rxSent, tr.txQueued)
	}
	ok, last := testenv.Poll(func() (bool, string) {
		rx := streamReceived(h.victim, tr.rxStream)
		st, err := tr.sink.Stats()
		last := fmt.Sprintf("wire→victim %d of %d, victim→wire %d of %d (sink %+v, %v)", rx, tr.rxSent, st.Tracked, tr.txQueued, st, err)
		return rx >= tr.rxSent && st.Tracked >= tr.txQueued, last
	})
	if !ok {
		t.Errorf("victim not exact: %s; %s", last, h.victimReport())
		return
	}
	for _, s := range h.victim.Stats().Streams {
		if s.Stream == tr.rxStream && (s.Received != tr.rxSent || s.Duplicates != 0) {
			t.Errorf("wire→victim: %+v, want exactly %d", s, tr.rxSent)
		}
	}
	if st, _ := tr.sink.Stats(); st.Tracked != tr.txQueued || st.Dups != 0 {
		t.Errorf("victim→wire: %+v, want exactly %d", st, tr.txQueued)
	}
}

// checkDaemon: vmqd is alive, `vmqctl stats` and /metrics answer within
// a second, and `vmqctl vm rm attacker` answers within a second.
func (h *hostileBed) checkDaemon(t *testing.T, a *attacker) {
	t.Helper()
	if !h.proc.alive() {
		t.Errorf("vmqd died: %v\n%s", h.proc.waitErr, h.logTail())
		return
	}
	if out, took, err := h.ctl(answerWithin, "stats", "-o", "json"); err != nil {
		t.Errorf("vmqctl stats: %v after %v\n%s", err, took.Round(time.Millisecond), out)
	}
	hc := http.Client{Timeout: answerWithin}
	if resp, err := hc.Get("http://" + h.proc.metrics + "/metrics"); err != nil {
		t.Errorf("/metrics: %v", err)
	} else {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("/metrics: %s", resp.Status)
		}
	}
	if out, took, err := h.ctl(answerWithin, "vm", "rm", a.name); err != nil {
		t.Errorf("vmqctl vm rm %s: %v after %v\n%s", a.name, err, took.Round(time.Millisecond), out)
	}
}

// idleFree is worker 0's free UMEM frames with no traffic.
func (h *hostileBed) idleFree(t *testing.T) int {
	t.Helper()
	s, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	return s.Workers[0].FreeFrames
}

// stashSlack is how many UMEM frames a worker may hold in its TX stash
// while idle: free counts taken at two idle moments may differ by it.
const stashSlack = 64

// checkFrames: no UMEM frame went missing. Every worker's free frames
// plus the frames in its rings and stash (counted from the rings, not
// from the allocator) add up to its UMEM once traffic has stopped, and
// worker 0's free frames at idle did not fall by more than a stash.
func (h *hostileBed) checkFrames(t *testing.T, freeBefore int) {
	t.Helper()
	var free int
	ok, why := testenv.Poll(func() (bool, string) {
		s, err := h.snapshot()
		if err != nil {
			return false, err.Error()
		}
		free = s.Workers[0].FreeFrames
		for _, w := range s.Workers {
			if w.FreeFrames+w.InFlightFrames != w.TotalFrames {
				return false, fmt.Sprintf("queue %d: free %d + in flight %d != total %d", w.Queue, w.FreeFrames, w.InFlightFrames, w.TotalFrames)
			}
		}
		return true, ""
	})
	if !ok {
		t.Errorf("UMEM invariant: %s", why)
		return
	}
	if lost := freeBefore - free; lost > stashSlack {
		t.Errorf("UMEM frames lost: %d free at idle before the attack, %d after (more than a stash of %d apart)", freeBefore, free, stashSlack)
	}
}

// hostileAttack is one attack of the suite.
type hostileAttack struct {
	name string
	// run carries the attack out and returns once it has landed (the
	// victim's traffic is flowing meanwhile). It may check what vmqd must
	// say about it (a refusal, a broken device).
	run func(t *testing.T, h *hostileBed, a *attacker, tr *traffic)
	// addArgs are more `vmqctl vm add` flags for the attacker VM.
	addArgs []string
	// pairs are the attacker's queue pairs (0: one); pair p is served by
	// worker p mod queues.
	pairs int
}

// runAttack runs one attack against a healthy vmqd: victim traffic both
// ways, the attack, more traffic, then every pass criterion.
func (h *hostileBed) runAttack(t *testing.T, atk hostileAttack) {
	h.ensureUp(t)
	h.seq++
	defer func() {
		if t.Failed() {
			h.needRestart = true
		}
	}()
	freeBefore := h.idleFree(t)
	a := h.addAttacker(t, atk)
	tr := h.startTraffic(t)
	start := time.Now()
	atk.run(t, h, a, tr)
	t.Logf("attack landed after %v", time.Since(start).Round(time.Millisecond))
	// Not synchronisation: how long the victim's traffic goes on after
	// the attack, so exactness covers the time after it too.
	<-time.After(afterAttack)
	h.checkVictim(t, tr)
	h.checkDaemon(t, a)
	if t.Failed() {
		return // the UMEM counters of a wedged worker say nothing more
	}
	h.checkFrames(t, freeBefore)
}

// victimReport is what vmqd knows about the victim's losses: its drops
// and its AF_XDP socket's kernel counters (a full rx ring drops before
// vmqd sees the frame).
func (h *hostileBed) victimReport() string {
	s, err := h.snapshot()
	if err != nil {
		return "vmqd stats: " + err.Error()
	}
	r := fmt.Sprintf("vmqd's victim drops %v", vmOf(s, "victim").DropsByReason)
	for _, so := range s.Sockets {
		if so.VM == "victim" {
			r += fmt.Sprintf("; its XDP socket on queue %d: rx_dropped %d, rx_ring_full %d, fill_ring_empty %d",
				so.Queue, so.RxDropped, so.RxRingFull, so.FillRingEmpty)
		}
	}
	return r
}
