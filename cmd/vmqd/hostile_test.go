package main

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/guest/frontend"
	"github.com/vmq/vmq/internal/hostile"
	"github.com/vmq/vmq/internal/testenv"
)

// TestHostile attacks the real vmqd from a guest that shares the victim's
// worker, in both socket modes, and checks the isolation promised in
// DESIGN.md (trust boundaries): for every attack the victim's frames,
// both ways, are exact during and after it, vmqd lives, its CLI and
// metrics answer within a second, and no UMEM frame is lost.
//
// One vmqd per mode is shared by the attacks; an attack that kills or
// wedges it gets it restarted, so each attack is judged on its own.
func TestHostile(t *testing.T) {
	testenv.RequireRoot(t)
	vmqd, vmqctl := buildTool(t, ".", "vmqd"), buildTool(t, "../vmqctl", "vmqctl")
	for _, mode := range []string{control.ModeServer, control.ModeClient} {
		t.Run(mode, func(t *testing.T) {
			h := newHostileBed(t, mode, vmqd, vmqctl, 1)
			for _, atk := range hostileAttacks {
				t.Run(atk.name, func(t *testing.T) { h.runAttack(t, atk) })
			}
		})
		// Two NIC queues, two workers: the attacker transmits on worker
		// 1, the victim is served by worker 0 (hostile_floodstorm_test.go).
		t.Run(mode+"_cross_worker", func(t *testing.T) {
			h := newHostileBed(t, mode, vmqd, vmqctl, 2)
			for _, atk := range crossWorkerAttacks {
				t.Run(atk.name, func(t *testing.T) { h.runAttack(t, atk) })
			}
		})
	}
}

var hostileAttacks = []hostileAttack{
	{name: "call_saturated", run: attackCallSaturated},
	{name: "kick_blocking", run: attackKickBlocking},
	{name: "zero_len_rx_chains", run: attackZeroLenRxChains},
	{name: "indirect_32768_zero_len", run: attackIndirectZeroLen},
	{name: "truncate_before_start", run: attackTruncateBeforeStart},
	{name: "tx_faults_drain_umem", run: attackTxFaults},
	{name: "huge_sparse_region", run: attackHugeSparseRegion},
	{name: "half_message", run: attackHalfMessage},
	{name: "unread_replies", run: attackUnreadReplies},
	{name: "ring_cases", run: attackRingCases},
	{name: "flood", run: attackFlood},
	{name: "xdp_tx_flood", run: attackXDPTxFlood},
	{name: "qos_limit", run: attackQoS},
	{name: "bad_offloads", run: attackBadOffloads},
	{name: "sparse_offsets", run: attackSparseOffsets},
	{name: "memory_not_shared", run: attackMemoryNotShared},
	{name: "dirty_log", run: attackDirtyLog},
	{name: "log_flood", run: attackLogFlood},
	{name: "packed_ring_cases", run: attackPackedRingCases},
	{name: "packed_huge_chains", run: attackPackedHugeChains},
	{name: "control_fds", run: attackControlFDs},
	{name: "tiny_rx_buffers", run: attackTinyRxBuffers},
	{name: "one_byte_tx_chains", run: attackOneByteTxChains},
	{name: "tso_min_mss", run: attackTSOMinMSS},
	{name: "ring_churn", run: attackRingChurn},
	{name: "kick_storm", run: attackKickStorm},
	{name: "message_storm", run: attackMessageStorm},
	{name: "multicast_storm", run: attackMulticastStorm},
	{name: "broadcast_storm", run: attackBroadcastStorm, addArgs: []string{"--vlan", stormVLAN, "--flood-pps", "0"}},
}

// attackerFrames are n UDP frames from the attacker to the wire.
func attackerFrames(t *testing.T, dst net.HardwareAddr, n int) [][]byte {
	t.Helper()
	f, err := frontend.BuildUDP(frontend.UDPTemplate{Dst: dst, Src: mustMAC(attackerMAC),
		SrcIP: netip.MustParseAddr("198.18.1.1"), DstIP: netip.MustParseAddr("198.18.1.2"), SrcPort: 9, DstPort: 9, Size: 128})
	if err != nil {
		t.Fatal(err)
	}
	frames := make([][]byte, n)
	for i := range frames {
		frames[i] = f
	}
	return frames
}

// attackerFlow sends wire frames to the attacker for the rest of the
// attack: RX-side attacks need vmqd to deliver into the attacker's rings.
func (h *hostileBed) attackerFlow(t *testing.T, rate float64) {
	ctx, cancel := context.WithCancel(context.Background())
	wait := h.flow(ctx, attackerMAC, 77, rate)
	t.Cleanup(func() { cancel(); wait() })
}

// mustStart runs the whole handshake, failing fast if vmqd died.
func mustStart(t *testing.T, h *hostileBed, d *hostile.Device) {
	t.Helper()
	if err := d.Start(); err != nil {
		t.Fatalf("attacker handshake: %v (vmqd alive: %v)", err, h.proc.alive())
	}
}

// waitUsed waits until vmqd has consumed at least one entry of ring r.
func waitUsed(t *testing.T, h *hostileBed, r *hostile.Ring, what string) {
	t.Helper()
	testenv.Eventually(t, what, func() (bool, string) {
		if !h.proc.alive() {
			t.Fatalf("vmqd died: %v", h.proc.waitErr)
		}
		return r.UsedIdx() != 0, "used.idx still 0"
	})
}

// The guest makes its call eventfds blocking and fills their counters to
// the maximum: the next call write blocks whoever makes it. Only the
// guest's own notifier may wait; the worker must not.
func attackCallSaturated(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	d := a.device(hostile.Config{BlockingCall: true})
	mustStart(t, h, d)
	for _, c := range d.Call {
		if err := c.Saturate(); err != nil {
			t.Fatal(err)
		}
		if err := c.SetNonblock(false); err != nil {
			t.Fatal(err)
		}
	}
	d.RX().PostRX()
	d.KickRing(0)
	h.attackerFlow(t, 2000) // RX deliveries want calls too
	d.TX().SendFrames(attackerFrames(t, h.b.Peer.MAC, 64))
	d.KickRing(1)
	// Used entries are published before the call: once they move, the
	// call that cannot complete has been attempted.
	waitUsed(t, h, d.TX(), "vmqd takes the attacker's frames")
}

// vmqd makes the guest's kick fds non-blocking; the guest shares the
// file description and clears O_NONBLOCK again, so a plain read at
// counter 0 blocks the reader.
func attackKickBlocking(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	d := a.device(hostile.Config{})
	mustStart(t, h, d)
	d.RX().PostRX()
	for _, k := range d.Kick {
		if err := k.SetNonblock(false); err != nil {
			t.Fatal(err)
		}
	}
	// One frame and a kick: vmqd takes it, goes idle, and reads the kick
	// fd (now at 0) after its next sleep.
	d.TX().SendFrames(attackerFrames(t, h.b.Peer.MAC, 1))
	d.KickRing(1)
	waitUsed(t, h, d.TX(), "vmqd takes the attacker's frame")
}

// With MRG_RXBUF a frame may span chains; a ring of 32768 avail entries
// that all name one chain of 32768 zero-length writable descriptors makes
// one frame cost 2^30 descriptor visits unless the walk has a budget.
func attackZeroLenRxChains(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	const n = virtio.MaxQueueSize
	d := a.device(hostile.Config{QueueSize: n, NoBuffers: true})
	mustStart(t, h, d)
	if d.Features&virtio.NetFMrgRxbuf == 0 {
		t.Fatalf("MRG_RXBUF not negotiated (features %#x)", d.Features)
	}
	rx := d.RX()
	heads := make([]uint16, n)
	for i := range n {
		desc := hostile.Desc{Addr: d.Mem.GPA, Flags: virtio.DescFWrite}
		if i < n-1 {
			desc.Flags |= virtio.DescFNext
			desc.Next = uint16(i + 1)
		}
		rx.SetDesc(i, desc)
	}
	rx.Push(heads...) // every entry is head 0
	rx.Publish()
	d.KickRing(0)
	h.attackerFlow(t, 2000)
	testenv.Eventually(t, "frames steered to the attacker", func() (bool, string) {
		s, err := h.snapshot()
		if err != nil {
			return false, err.Error()
		}
		return vmOf(s, a.name).FilterPackets > 0, "none yet"
	})
}

// One TX ring of 32768 entries, each an indirect descriptor for the same
// table of 32768 zero-length descriptors: malformed frames all, and 2^30
// descriptor visits for the ring.
func attackIndirectZeroLen(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	const n = virtio.MaxQueueSize
	d := a.device(hostile.Config{QueueSize: n, NoBuffers: true})
	mustStart(t, h, d)
	if d.Features&virtio.RingFIndirectDesc == 0 {
		t.Fatalf("INDIRECT_DESC not negotiated (features %#x)", d.Features)
	}
	off, err := d.Mem.Alloc(n*virtio.DescSize, 16)
	if err != nil {
		t.Fatal(err)
	}
	table := make([]hostile.Desc, n)
	for i := range table {
		table[i] = hostile.Desc{Addr: d.Mem.GPA}
		if i < n-1 {
			table[i].Flags, table[i].Next = virtio.DescFNext, uint16(i+1)
		}
	}
	hostile.WriteDescs(d.Mem, off, table...)
	tx := d.TX()
	heads := make([]uint16, n)
	for i := range n {
		tx.SetDesc(i, hostile.Desc{Addr: d.Mem.GPAOf(off), Len: n * virtio.DescSize, Flags: virtio.DescFIndirect})
		heads[i] = uint16(i)
	}
	tx.Push(heads...)
	tx.Publish()
	d.KickRing(1)
	// A chain of 32769 descriptor visits is more than any round's budget:
	// dropped, and given back to the guest (used), not left in limbo.
	waitUsed(t, h, tx, "vmqd gives back the first chain")
}

// The guest hands over its memory table, shrinks the memfd to nothing,
// then starts the rings: starting reads used.idx on the port's goroutine,
// which then takes a SIGBUS. It must break this device only.
func attackTruncateBeforeStart(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	d := a.device(hostile.Config{})
	if err := d.Negotiate(); err != nil {
		t.Fatal(err)
	}
	if err := d.SendMemTable(); err != nil {
		t.Fatal(err)
	}
	if err := d.Mem.Truncate(0); err != nil {
		t.Fatal(err)
	}
	// Errors are expected (a refused or closed connection); the verdict
	// is vmqd's state.
	for i := range d.Rings {
		if err := d.StartRing(i); err != nil {
			t.Logf("ring %d start: %v", i, err)
			break
		}
	}
	if !h.proc.alive() {
		t.Fatalf("vmqd died: %v\n%s", h.proc.waitErr, h.logTail())
	}
	t.Logf("attacker device broken: %s", a.waitBroken(""))
}

// Each round: a device with 4096 frames queued for the wire, the memfd
// truncated while the worker pops them (64 a round, for milliseconds), a
// fault in the middle of a TX batch, a reconnect. Every UMEM frame held
// at a fault (the one being filled, the batch not yet on the tx ring)
// must come back.
func attackTxFaults(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	const rounds, queue = 150, 4096
	frames := attackerFrames(t, h.b.Peer.MAC, queue)
	start := time.Now()
	faults := 0
	for faults < rounds && time.Since(start) < 5*time.Second {
		d := a.device(hostile.Config{QueueSize: queue, BufSize: 256})
		mustStart(t, h, d)
		tx := d.TX()
		tx.SendFrames(frames)
		d.KickRing(1)
		// The first used entries mean the worker is popping; thousands
		// are still queued, so the truncation lands mid-batch.
		deadline := time.Now().Add(2 * time.Second)
		for tx.UsedIdx() == 0 && time.Now().Before(deadline) {
		}
		if err := d.Mem.Truncate(0); err != nil {
			t.Fatal(err)
		}
		if !waitNeedsReset(d, 2*time.Second) {
			if !h.proc.alive() {
				t.Fatalf("vmqd died after %d faults: %v", faults, h.proc.waitErr)
			}
			t.Fatalf("round %d: device not broken after its memory went away", faults)
		}
		faults++
		d.Close()
	}
	t.Logf("%d faults under guest TX in %v", faults, time.Since(start).Round(time.Millisecond))
}

// waitNeedsReset polls GET_STATUS on the attacker's own socket (a round
// trip, no sleep) until vmqd reports the device broken.
func waitNeedsReset(d *hostile.Device, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		st, err := d.Status()
		if err != nil {
			return false
		}
		if st&hostile.NeedsReset != 0 {
			return true
		}
	}
	return false
}

// A region of 64 TiB backed by a sparse memfd costs the guest nothing and
// vmqd 64 TiB of address space; max_guest_memory (64 GiB by default)
// must refuse it, naming the VM.
func attackHugeSparseRegion(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	d := a.device(hostile.Config{})
	if err := d.Negotiate(); err != nil {
		t.Fatal(err)
	}
	sparse, err := hostile.NewSparse(64 << 40)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sparse.Close)
	sparse.GPA, sparse.UVA = 1<<40, 0x1000_0000_0000 // clear of the real region
	before := vmSize(t, h)
	err = d.C.MemTable(d.Mem, sparse)
	grew := vmSize(t, h) - before
	if grew > 1<<30 {
		t.Errorf("vmqd's address space grew by %d GiB", grew>>30)
	}
	if err == nil {
		t.Fatalf("vmqd accepted a memory table of 64 TiB")
	}
	t.Logf("refused: %v", err)
	testenv.Eventually(t, "refusal logged with the VM and the limit", func() (bool, string) {
		l := h.logTail()
		return strings.Contains(l, "max_guest_memory") && strings.Contains(l, a.name), "no log line naming max_guest_memory and the VM"
	})
}

// vmSize is vmqd's virtual memory size in bytes.
func vmSize(t *testing.T, h *hostileBed) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.proc.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmSize:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmSize in /proc/PID/status")
	return 0
}

// messageTimeout is vhostuser's default MessageTimeout (Part A), plus
// slack for a loaded machine.
const messageTimeout = 5*time.Second + 2*time.Second

// Half a message, then silence: after the message timeout vmqd must drop
// the connection and serve a clean front-end on the same port.
func attackHalfMessage(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	c := a.conn()
	msg := hostile.Message(vhostuser.ReqSetVringAddr, vhostuser.FlagVersion, make([]byte, vhostuser.VringAddrLen))
	if err := c.WriteRaw(msg[:vhostuser.HeaderLen+vhostuser.VringAddrLen/2]); err != nil {
		t.Fatal(err)
	}
	expectFreedPort(t, h, a, c)
}

// Requests with replies, never reading one: vmqd's reply write must time
// out rather than hold the port for ever.
func attackUnreadReplies(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	c := a.conn()
	n, err := c.FloodUnread(vhostuser.ReqGetFeatures, 1<<20, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d GET_FEATURES sent before vmqd stopped reading", n)
	expectFreedPort(t, h, a, c)
}

// expectFreedPort: vmqd hangs up on c within the message timeout, and a
// clean front-end then gets the port.
func expectFreedPort(t *testing.T, h *hostileBed, a *attacker, c *hostile.Conn) {
	t.Helper()
	start := time.Now()
	if err := c.WaitHangup(messageTimeout); err != nil {
		t.Errorf("stuck connection: %v", err)
		return
	}
	t.Logf("vmqd hung up after %v", time.Since(start).Round(time.Millisecond))
	c.Close()
	d := a.device(hostile.Config{})
	if err := d.Start(); err != nil {
		t.Errorf("clean front-end after the hang-up: %v", err)
	}
}

// ringCase is one case of dataplane/vhostuser/hostile_test.go, as a live
// ring on vmqd.
type ringCase struct {
	name  string
	rx    bool
	feat  uint64
	build func(d *hostile.Device, r *hostile.Ring) error
	want  string
	// layout, if set, moves the rings before the handshake sends their
	// addresses.
	layout func(d *hostile.Device)
}

// allocGPA carves n bytes of d's memory and returns their guest address.
func allocGPA(t *testing.T, d *hostile.Device, n int) uint64 {
	t.Helper()
	g, err := d.Mem.AllocGPA(n)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// memEnd is the guest address just past d's memory.
func memEnd(d *hostile.Device) uint64 { return d.Mem.GPA + d.Mem.Size }

// runRingCases runs each case on a new attacker device (packed or split
// rings of num entries): the device breaks with the reason the case
// wants, nothing else does.
func runRingCases(t *testing.T, h *hostileBed, a *attacker, num int, packed bool, cases []ringCase) {
	h.attackerFlow(t, 2000) // the RX cases need frames for the attacker
	for _, tc := range cases {
		d := a.device(hostile.Config{QueueSize: num, NoBuffers: true, Features: tc.feat, Packed: packed})
		if tc.layout != nil {
			tc.layout(d)
		}
		mustStart(t, h, d)
		ring := 1
		if tc.rx {
			ring = 0
		}
		if tc.build != nil {
			if err := tc.build(d, d.Rings[ring]); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
		}
		d.KickRing(ring)
		reason := a.waitBroken(tc.want)
		t.Logf("%s: %s", tc.name, reason)
		d.Close() // the port resets and takes the next case
	}
}

// Every hostile ring of the vhostuser unit test, live: the attacker's
// device breaks with the reason the unit test expects, nothing else does.
func attackRingCases(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	const num = 8
	hdr := uint32(virtio.NetHdrLen)
	alloc := func(d *hostile.Device, n int) uint64 { return allocGPA(t, d, n) }
	table := func(d *hostile.Device, gpa uint64, ds ...hostile.Desc) {
		hostile.WriteDescs(d.Mem, int(gpa-d.Mem.GPA), ds...)
	}
	end := memEnd
	post := func(r *hostile.Ring, ds ...hostile.Desc) error { r.Post(ds...); return nil }
	cases := []ringCase{
		{name: "loop", build: func(d *hostile.Device, r *hostile.Ring) error {
			p := alloc(d, 64)
			r.SetDesc(0, hostile.Desc{Addr: p, Len: 64, Flags: virtio.DescFNext, Next: 1})
			r.SetDesc(1, hostile.Desc{Addr: p, Len: 64, Flags: virtio.DescFNext, Next: 0})
			r.Push(0)
			r.Publish()
			return nil
		}, want: "loop"},
		{name: "self_loop", build: func(d *hostile.Device, r *hostile.Ring) error {
			r.SetDesc(3, hostile.Desc{Addr: alloc(d, 64), Len: 64, Flags: virtio.DescFNext, Next: 3})
			r.Push(3)
			r.Publish()
			return nil
		}, want: "loop"},
		{name: "head_beyond_ring", build: func(d *hostile.Device, r *hostile.Ring) error {
			r.Push(num)
			r.Publish()
			return nil
		}, want: "beyond ring size"},
		{name: "next_beyond_ring", build: func(d *hostile.Device, r *hostile.Ring) error {
			r.SetDesc(0, hostile.Desc{Addr: alloc(d, 64), Len: 64, Flags: virtio.DescFNext, Next: 200})
			r.Push(0)
			r.Publish()
			return nil
		}, want: "beyond table size"},
		{name: "addr_out_of_range", build: func(d *hostile.Device, r *hostile.Ring) error {
			return post(r, hostile.Desc{Addr: 0x1000, Len: 64})
		}, want: "outside guest memory"},
		{name: "addr_past_end", build: func(d *hostile.Device, r *hostile.Ring) error {
			return post(r, hostile.Desc{Addr: end(d) - 20, Len: 64})
		}, want: "outside guest memory"},
		{name: "addr_overflow", build: func(d *hostile.Device, r *hostile.Ring) error {
			return post(r, hostile.Desc{Addr: alloc(d, 16), Len: hdr}, hostile.Desc{Addr: math.MaxUint64 - 8, Len: 0xffffffff})
		}, want: "outside guest memory"},
		{name: "length_overflows_region", build: func(d *hostile.Device, r *hostile.Ring) error {
			return post(r, hostile.Desc{Addr: alloc(d, 16), Len: hdr}, hostile.Desc{Addr: alloc(d, 16), Len: 0xfffffff0})
		}, want: "outside guest memory"},
		{name: "tx_writable", build: func(d *hostile.Device, r *hostile.Ring) error {
			return post(r, hostile.Desc{Addr: alloc(d, 64), Len: 64, Flags: virtio.DescFWrite})
		}, want: "device-writable"},
		{name: "rx_readonly", rx: true, build: func(d *hostile.Device, r *hostile.Ring) error {
			return post(r, hostile.Desc{Addr: alloc(d, 2048), Len: 2048})
		}, want: "not device-writable"},
		{name: "rx_out_of_range", rx: true, build: func(d *hostile.Device, r *hostile.Ring) error {
			return post(r, hostile.Desc{Addr: 0x10, Len: 2048, Flags: virtio.DescFWrite})
		}, want: "outside guest memory"},
		{name: "nested_indirect", build: func(d *hostile.Device, r *hostile.Ring) error {
			tbl := alloc(d, 32)
			table(d, tbl, hostile.Desc{Addr: tbl, Len: 32, Flags: virtio.DescFIndirect})
			return post(r, hostile.Desc{Addr: tbl, Len: 32, Flags: virtio.DescFIndirect})
		}, want: "nested"},
		{name: "indirect_bad_len", build: func(d *hostile.Device, r *hostile.Ring) error {
			return post(r, hostile.Desc{Addr: alloc(d, 32), Len: 17, Flags: virtio.DescFIndirect})
		}, want: "indirect table of 17 bytes"},
		{name: "indirect_zero_len", build: func(d *hostile.Device, r *hostile.Ring) error {
			return post(r, hostile.Desc{Addr: alloc(d, 32), Len: 0, Flags: virtio.DescFIndirect})
		}, want: "indirect table of 0 bytes"},
		{name: "indirect_out_of_range", build: func(d *hostile.Device, r *hostile.Ring) error {
			return post(r, hostile.Desc{Addr: end(d) - 16, Len: 64, Flags: virtio.DescFIndirect})
		}, want: "indirect table"},
		{name: "indirect_with_next", build: func(d *hostile.Device, r *hostile.Ring) error {
			return post(r, hostile.Desc{Addr: alloc(d, 32), Len: 32, Flags: virtio.DescFIndirect | virtio.DescFNext, Next: 1})
		}, want: "NEXT"},
		{name: "indirect_not_negotiated", feat: virtio.FVersion1, build: func(d *hostile.Device, r *hostile.Ring) error {
			return post(r, hostile.Desc{Addr: alloc(d, 32), Len: 32, Flags: virtio.DescFIndirect})
		}, want: "without INDIRECT_DESC"},
		{name: "indirect_loop", build: func(d *hostile.Device, r *hostile.Ring) error {
			tbl, p := alloc(d, 32), alloc(d, 64)
			table(d, tbl, hostile.Desc{Addr: p, Len: 64, Flags: virtio.DescFNext, Next: 1},
				hostile.Desc{Addr: p, Len: 64, Flags: virtio.DescFNext, Next: 0})
			return post(r, hostile.Desc{Addr: tbl, Len: 32, Flags: virtio.DescFIndirect})
		}, want: "loop"},
		{name: "avail_idx_jump", build: func(d *hostile.Device, r *hostile.Ring) error {
			r.SetAvailIdx(num + 1)
			return nil
		}, want: "jumped"},
		{name: "avail_idx_jump_rx", rx: true, build: func(d *hostile.Device, r *hostile.Ring) error {
			r.SetAvailIdx(0x8000)
			return nil
		}, want: "jumped"},
	}
	runRingCases(t, h, a, num, false, cases)
}

// A well-behaved guest that transmits as fast as vmqd takes its frames:
// the victim on the same worker still gets every frame, both ways.
func attackFlood(t *testing.T, h *hostileBed, a *attacker, tr *traffic) {
	g := a.guest()
	floodFrom(t, h, g) // until vmqd drops the attacker at the end
	rate := attackerWireRate(t, tr, time.Second)
	t.Logf("attacker floods the wire at %.0f frames/s", rate)
	if rate < 2*victimTxRate {
		t.Errorf("attacker sent only %.0f frames/s: not a flood", rate)
	}
}

// floodFrom makes g transmit to the wire at full speed until the test
// ends or the returned function is called.
func floodFrom(t *testing.T, h *hostileBed, g *frontend.Guest) func() {
	return floodTo(t, g, h.b.Peer.MAC)
}

// floodTo makes g transmit at full speed, to dsts[i] on its queue pair
// i (none if nil), until the test ends or the returned function is called.
func floodTo(t *testing.T, g *frontend.Guest, dsts ...net.HardwareAddr) func() {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for q, dst := range dsts {
		if dst == nil {
			continue // nothing on this pair
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.Generate(ctx, frontend.Traffic{Dst: dst, Stream: 9, Batch: 64, Queue: q})
		}()
	}
	stop := func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	return stop
}

// attackerWireRate is the attacker's frames per second on the wire over
// a window: everything the sink sees that is not the victim's stream.
func attackerWireRate(t *testing.T, tr *traffic, window time.Duration) float64 {
	t.Helper()
	sample := func() (uint64, time.Time) {
		st, err := tr.sink.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st.Frames - st.Tracked, time.Now()
	}
	n0, t0 := sample()
	<-time.After(window) // a measurement window, not synchronisation
	n1, t1 := sample()
	return float64(n1-n0) / t1.Sub(t0).Seconds()
}

// The attacker, limited to qosPPS each way with `vmqctl vm set`, floods
// both ways: what it gets through holds the limit within 5%.
func attackQoS(t *testing.T, h *hostileBed, a *attacker, tr *traffic) {
	const qosPPS = 5000
	pps := strconv.Itoa(qosPPS)
	out, _, err := h.ctl(5*time.Second, "vm", "set", a.name, "--tx-pps", pps, "--rx-pps", pps)
	if err != nil {
		t.Fatalf("vmqctl vm set: %v\n%s", err, out)
	}
	g := a.guest()
	floodFrom(t, h, g)
	h.attackerFlow(t, 4*qosPPS)
	// Let the token buckets settle before measuring (their burst is
	// vmqd's business, the steady rate is the contract).
	<-time.After(300 * time.Millisecond)
	// Above the limit is a failure in any window. Below it, on a loaded
	// machine, vmqd or the attacker may have been descheduled for part of
	// a window (measured: 4024 and 3746 frames/s in the same 2 s): up to
	// three windows, one of which must hold the limit within 5% both ways.
	held := false
	for try := 0; try < 3 && !held; try++ {
		rx0, t0 := streamReceived(g, 77), time.Now()
		txRate := attackerWireRate(t, tr, 2*time.Second)
		rxRate := float64(streamReceived(g, 77)-rx0) / time.Since(t0).Seconds()
		held = true
		for _, m := range []struct {
			dir  string
			rate float64
		}{{"tx", txRate}, {"rx", rxRate}} {
			switch {
			case m.rate > qosPPS*1.05:
				t.Errorf("%s limit %d frames/s: attacker got %.0f frames/s through", m.dir, qosPPS, m.rate)
			case m.rate < qosPPS*0.95:
				held = false
				t.Logf("%s limit %d frames/s: only %.0f in window %d (descheduled?)", m.dir, qosPPS, m.rate, try+1)
			default:
				t.Logf("%s limit %d frames/s: %.0f", m.dir, qosPPS, m.rate)
			}
		}
	}
	if !held {
		t.Errorf("limit %d frames/s: no window of three held it within 5%% both ways", qosPPS)
	}
	s, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if vmOf(s, a.name).DropsByReason["rate_limited"] == 0 {
		t.Errorf("no rate_limited drops counted: %v", vmOf(s, a.name).DropsByReason)
	}
}
