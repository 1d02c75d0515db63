package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
)

// xdpMd is struct xdp_md, the context of BPF_PROG_TEST_RUN.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// rig is a loaded Filter and a veth end with one bound AF_XDP socket per
// queue, all in a private netns.
type rig struct {
	f     *Filter
	ns    *netnstest.NS
	link  netnstest.Link
	socks []*testXSK
}

// newRig loads a Filter (not attached) and a veth with vethQueues queues.
func newRig(t testing.TB, cfg Config, vethQueues int) *rig {
	t.Helper()
	testenv.RequireRoot(t)
	ns, wire := netnstest.New(t), netnstest.New(t)
	a, _ := netnstest.NewVethPair(t, ns, wire, netnstest.VethOptions{Queues: vethQueues})
	f, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	r := &rig{f: f, ns: ns, link: a}
	err = ns.Do(func() error {
		for q := range min(vethQueues, cfg.MaxQueues) {
			x, err := openTestXSK(a.Index, q, nil)
			if err != nil {
				return err
			}
			r.socks = append(r.socks, x)
		}
		return nil
	})
	t.Cleanup(func() {
		for _, x := range r.socks {
			x.Close()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// run runs the program once over frame as if received on queue.
func (r *rig) run(frame []byte, queue uint32) (Verdict, error) {
	data := frame
	if len(data) == 0 {
		data = []byte{} // RunOptions wants non-nil data
	}
	var ret uint32
	err := r.ns.Do(func() error {
		var err error
		ret, err = r.f.Program().Run(&ebpf.RunOptions{
			Data:    data,
			Context: xdpMd{DataEnd: uint32(len(data)), IngressIfindex: uint32(r.link.Index), RxQueueIndex: queue},
		})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("test run (len %d queue %d): %w", len(frame), queue, err)
	}
	return Verdict(ret), nil
}

// clearSockets empties the XSKMAP.
func (r *rig) clearSockets(t testing.TB) {
	t.Helper()
	n := uint32((r.f.cfg.MaxVMs + 1) * r.f.cfg.MaxQueues)
	for i := range n {
		if err := r.f.objs.Xsks.Delete(i); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatal(err)
		}
	}
}

// setSockets makes exactly the given XSKMAP indices hold a socket.
func (r *rig) setSockets(t testing.TB, idx map[uint32]bool) {
	t.Helper()
	r.clearSockets(t)
	for i := range idx {
		x := r.socks[int(i)%len(r.socks)]
		if err := r.f.objs.Xsks.Put(i, uint32(x.fd)); err != nil {
			t.Fatalf("put socket at %d: %v", i, err)
		}
	}
}

type snapshot struct {
	g  GlobalCounters
	vm []VMCounters
}

func (r *rig) snap(t testing.TB) snapshot {
	t.Helper()
	g, err := r.f.GlobalCounters()
	if err != nil {
		t.Fatal(err)
	}
	vm, err := r.f.AllVMCounters()
	if err != nil {
		t.Fatal(err)
	}
	return snapshot{g, vm}
}

// expect returns the counters after one frame with decision d.
func (s snapshot) expect(d Decision, frameLen int) snapshot {
	g := s.g
	vm := append([]VMCounters(nil), s.vm...)
	g.Frames++
	switch d.Outcome {
	case OutcomeRedirected:
		g.Redirected++
		vm[d.Slot].Packets++
		vm[d.Slot].Bytes += uint64(frameLen)
	case OutcomePassed:
		g.Passed++
	case OutcomeFlooded:
		g.Flooded++
	case OutcomeFloodPassed:
		g.FloodPassed++
	case OutcomeMalformed:
		g.Malformed++
	case OutcomeNoSocket:
		g.NoSocket++
		vm[d.Slot].RedirectErrors++
	case OutcomeBadQueue:
		g.BadQueue++
		if d.Slot != 0 {
			vm[d.Slot].RedirectErrors++
		}
	case OutcomeBadSlot:
		g.BadSlot++
	}
	if d.Verdict == VerdictDrop {
		g.Dropped++
	}
	return snapshot{g, vm}
}

func (s snapshot) diff(o snapshot) string {
	if s.g != o.g {
		return fmt.Sprintf("global counters %+v, want %+v", o.g, s.g)
	}
	for i := range s.vm {
		if s.vm[i] != o.vm[i] {
			return fmt.Sprintf("slot %d counters %+v, want %+v", i, o.vm[i], s.vm[i])
		}
	}
	return ""
}

// frame builds an Ethernet frame: dst, src, then tags (TPID, TCI pairs),
// then an IPv4 ethertype and payload up to size bytes (at least the headers).
func frame(dst net.HardwareAddr, tags [][2]uint16, size int) []byte {
	b := append([]byte(nil), dst...)
	b = append(b, 0x02, 0xee, 0, 0, 0, 0x99)
	for _, tg := range tags {
		b = binary.BigEndian.AppendUint16(b, tg[0])
		b = binary.BigEndian.AppendUint16(b, tg[1])
	}
	b = binary.BigEndian.AppendUint16(b, 0x0800)
	for i := 0; len(b) < size; i++ {
		b = append(b, byte(i))
	}
	return b
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

var (
	macA  = mac("02:00:00:00:00:0a")
	macB  = mac("02:00:00:00:00:0b")
	macC  = mac("02:00:00:00:00:0c")
	bcast = mac("ff:ff:ff:ff:ff:ff")
	mcast = mac("01:00:5e:00:00:fb")
	v6mc  = mac("33:33:00:00:00:01")
)

func q(vid uint16) [2]uint16        { return [2]uint16{0x8100, vid} }
func ad(vid uint16) [2]uint16       { return [2]uint16{0x88a8, vid} }
func idx(slot, queue uint32) uint32 { return slot*testMaxQueues + queue }

const (
	testMaxVMs    = 3
	testMaxQueues = 4
)

// testModel is the filter table every table test installs.
func testModel(malformed, noSocket Action) *Model {
	return &Model{
		MaxVMs: testMaxVMs, MaxQueues: testMaxQueues,
		Malformed: malformed, NoSocket: noSocket,
		Filters: map[Key]uint32{
			{MAC: [6]byte(macA), VLAN: 0}:   1,
			{MAC: [6]byte(macA), VLAN: 100}: 2,
			{MAC: [6]byte(macB), VLAN: 200}: 3,
		},
	}
}

func installFilters(t testing.TB, f *Filter, m *Model) {
	t.Helper()
	for k, slot := range m.Filters {
		if err := f.SetFilter(k.MAC[:], k.VLAN, slot); err != nil {
			t.Fatal(err)
		}
	}
}

type tcase struct {
	name    string
	frame   []byte
	queue   uint32
	sockets map[uint32]bool // XSKMAP indices holding a socket
	want    Decision
}

func allBut(except ...uint32) map[uint32]bool {
	m := map[uint32]bool{}
	for i := range uint32((testMaxVMs + 1) * testMaxQueues) {
		m[i] = true
	}
	for _, e := range except {
		delete(m, e)
	}
	return m
}

func one(i uint32) map[uint32]bool { return map[uint32]bool{i: true} }

func redirect(slot, queue uint32) Decision {
	return Decision{Verdict: VerdictRedirect, Outcome: OutcomeRedirected, Slot: slot, Index: idx(slot, queue)}
}

var pass = Decision{Verdict: VerdictPass, Outcome: OutcomePassed}

func tableCases(noSocket Action) []tcase {
	nsv := VerdictDrop
	if noSocket == Pass {
		nsv = VerdictPass
	}
	cs := []tcase{
		// A socket sits only at the expected index, so XDP_REDIRECT proves
		// the program computed exactly slot*MaxQueues+queue.
		{"untagged q0", frame(macA, nil, 64), 0, one(idx(1, 0)), redirect(1, 0)},
		{"untagged q3", frame(macA, nil, 64), 3, one(idx(1, 3)), redirect(1, 3)},
		{"dot1q vlan100 q1", frame(macA, [][2]uint16{q(100)}, 64), 1, one(idx(2, 1)), redirect(2, 1)},
		{"dot1q vlan100 with PCP and DEI", frame(macA, [][2]uint16{q(0xf000 | 100)}, 64), 2, one(idx(2, 2)), redirect(2, 2)},
		{"priority tag is untagged", frame(macA, [][2]uint16{q(0xa000)}, 64), 0, one(idx(1, 0)), redirect(1, 0)},
		{"same MAC other VLAN", frame(macA, [][2]uint16{q(300)}, 64), 0, allBut(), pass},
		{"VLAN-only filter, frame untagged", frame(macB, nil, 64), 0, allBut(), pass},
		{"qinq outer 200", frame(macB, [][2]uint16{ad(200), q(7)}, 64), 1, one(idx(3, 1)), redirect(3, 1)},
		{"qinq inner 200 does not count", frame(macB, [][2]uint16{ad(7), q(200)}, 64), 1, allBut(), pass},
		{"802.1ad single tag", frame(macB, [][2]uint16{ad(200)}, 64), 3, one(idx(3, 3)), redirect(3, 3)},
		{"unknown MAC", frame(macC, nil, 64), 0, allBut(), pass},
		{"broadcast to flood q2", frame(bcast, nil, 60), 2, one(idx(0, 2)), Decision{Verdict: VerdictRedirect, Outcome: OutcomeFlooded, Index: 2}},
		{"broadcast no flood socket", frame(bcast, nil, 60), 2, allBut(idx(0, 2)), Decision{Verdict: VerdictPass, Outcome: OutcomeFloodPassed}},
		{"multicast to flood q1", frame(mcast, nil, 60), 1, one(idx(0, 1)), Decision{Verdict: VerdictRedirect, Outcome: OutcomeFlooded, Index: 1}},
		{"tagged IPv6 multicast to flood", frame(v6mc, [][2]uint16{q(100)}, 86), 0, one(idx(0, 0)), Decision{Verdict: VerdictRedirect, Outcome: OutcomeFlooded, Index: 0}},
		{"matched, no socket on that queue", frame(macA, nil, 64), 1, allBut(idx(1, 1)), Decision{Verdict: nsv, Outcome: OutcomeNoSocket, Slot: 1}},
		{"queue beyond MaxQueues", frame(macA, nil, 64), testMaxQueues, allBut(), Decision{Verdict: nsv, Outcome: OutcomeBadQueue, Slot: 1}},
		{"broadcast on queue beyond MaxQueues", frame(bcast, nil, 64), testMaxQueues, allBut(), Decision{Verdict: VerdictPass, Outcome: OutcomeBadQueue}},
		{"max size untagged", frame(macA, nil, 1518), 0, one(idx(1, 0)), redirect(1, 0)},
		{"max size tagged", frame(macA, [][2]uint16{q(100)}, 1522), 3, one(idx(2, 3)), redirect(2, 3)},
		{"jumbo 3000", frame(macA, nil, 3000), 0, one(idx(1, 0)), redirect(1, 0)},
		// Longer than a page: BPF_PROG_TEST_RUN hands a frags program the
		// rest as fragments, as a multi-buffer driver would; the VM's
		// byte counter counts them too.
		{"jumbo 9014 multi-buffer", frame(macA, nil, 9014), 1, one(idx(1, 1)), redirect(1, 1)},
		{"jumbo 9018 tagged multi-buffer", frame(macA, [][2]uint16{q(100)}, 9018), 2, one(idx(2, 2)), redirect(2, 2)},
		{"jumbo 9014 unknown MAC", frame(macC, nil, 9014), 0, allBut(), pass},
	}
	return cs
}

func runCase(t *testing.T, r *rig, m *Model, c tcase) {
	t.Helper()
	r.setSockets(t, c.sockets)
	m.Sockets = c.sockets
	if got := m.Classify(c.frame, c.queue); got != c.want {
		t.Fatalf("model: %+v, want %+v", got, c.want)
	}
	before := r.snap(t)
	v, err := r.run(c.frame, c.queue)
	if len(c.frame) < 14 && errors.Is(err, unix.EINVAL) {
		// BPF_PROG_TEST_RUN wants 14 bytes after the metadata, and
		// bpf_xdp_adjust_head/tail refuse to go below 14 too: no test
		// path can hand this kernel's XDP a shorter frame. The program
		// still checks (the verifier insists); the model is tested here.
		if d := before.diff(r.snap(t)); d != "" {
			t.Fatalf("refused run changed counters: %s", d)
		}
		t.Logf("kernel refuses a %d-byte frame: %v", len(c.frame), err)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if v != c.want.Verdict {
		t.Fatalf("verdict %v, want %v", v, c.want.Verdict)
	}
	if d := before.expect(c.want, len(c.frame)).diff(r.snap(t)); d != "" {
		t.Fatal(d)
	}
	// Exactly the bit of the socket redirected to is set, nothing else.
	wantWord, wantBit, marked := m.PendingBit(c.want, c.queue)
	for i := range r.f.objs.Pending.MaxEntries() {
		var got uint64
		if err := r.f.objs.Pending.Lookup(i, &got); err != nil {
			t.Fatal(err)
		}
		want := uint64(0)
		if marked && i == wantWord {
			want = wantBit
		}
		if got != want {
			t.Errorf("pending word %d: %#x, want %#x", i, got, want)
		}
		if err := r.f.objs.Pending.Put(i, uint64(0)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTable(t *testing.T) {
	for _, noSocket := range []Action{Drop, Pass} {
		t.Run("nosocket="+noSocket.String(), func(t *testing.T) {
			r := newRig(t, Config{MaxVMs: testMaxVMs, MaxQueues: testMaxQueues, NoSocket: noSocket}, testMaxQueues+1)
			m := testModel(Drop, noSocket)
			installFilters(t, r.f, m)
			for _, c := range tableCases(noSocket) {
				t.Run(c.name, func(t *testing.T) { runCase(t, r, m, c) })
			}
		})
	}
}

// Runt frames of every length below a full (tagged) header.
func TestRunts(t *testing.T) {
	for _, act := range []Action{Drop, Pass} {
		t.Run("malformed="+act.String(), func(t *testing.T) {
			r := newRig(t, Config{MaxVMs: testMaxVMs, MaxQueues: testMaxQueues, Malformed: act}, 1)
			m := testModel(act, Drop)
			installFilters(t, r.f, m)
			want := VerdictDrop
			if act == Pass {
				want = VerdictPass
			}
			malformed := Decision{Verdict: want, Outcome: OutcomeMalformed}
			tagged := frame(macA, [][2]uint16{q(100)}, 18)
			untagged := frame(macA, nil, 18)
			for n := 0; n <= 17; n++ {
				t.Run(fmt.Sprintf("tagged/%d", n), func(t *testing.T) {
					runCase(t, r, m, tcase{frame: tagged[:n], sockets: allBut(), want: malformed})
				})
				wantU := malformed
				if n >= 14 {
					wantU = Decision{Verdict: VerdictRedirect, Outcome: OutcomeRedirected, Slot: 1, Index: idx(1, 0)}
				}
				t.Run(fmt.Sprintf("untagged/%d", n), func(t *testing.T) {
					runCase(t, r, m, tcase{frame: untagged[:n], sockets: allBut(), want: wantU})
				})
			}
			// A full tagged header is enough.
			t.Run("tagged/18", func(t *testing.T) {
				runCase(t, r, m, tcase{frame: tagged, queue: 0, sockets: allBut(), want: redirect(2, 0)})
			})
		})
	}
}

// A filter naming a slot outside 1..MaxVMs (written behind the API's back)
// is counted, not followed.
func TestBadSlot(t *testing.T) {
	r := newRig(t, Config{MaxVMs: testMaxVMs, MaxQueues: testMaxQueues, NoSocket: Pass}, 1)
	m := testModel(Drop, Pass)
	for _, slot := range []uint32{0, testMaxVMs + 1, 1 << 31} {
		k := Key{MAC: [6]byte(macC)}
		if err := r.f.objs.Filters.Put(k.raw(), slot); err != nil {
			t.Fatal(err)
		}
		m.Filters = map[Key]uint32{k: slot}
		t.Run(fmt.Sprint(slot), func(t *testing.T) {
			runCase(t, r, m, tcase{frame: frame(macC, nil, 60), sockets: allBut(), want: Decision{Verdict: VerdictPass, Outcome: OutcomeBadSlot}})
		})
	}
}

func TestAPIValidation(t *testing.T) {
	testenv.RequireRoot(t)
	for _, cfg := range []Config{
		{MaxVMs: 0, MaxQueues: 1},
		{MaxVMs: 1, MaxQueues: 0},
		{MaxVMs: MaxVMsLimit + 1, MaxQueues: 1},
		{MaxVMs: 1, MaxQueues: 1, Malformed: 7},
		{MaxVMs: 1, MaxQueues: 1, NoSocket: 9},
		{MaxVMs: 2000, MaxQueues: 1024},
	} {
		if f, err := Load(cfg); err == nil {
			f.Close()
			t.Errorf("Load(%+v) succeeded", cfg)
		}
	}
	f, err := Load(Config{MaxVMs: 2, MaxQueues: 2, MaxFilters: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bad := []struct {
		mac  net.HardwareAddr
		vlan uint16
		slot uint32
	}{
		{bcast, 0, 1}, {mcast, 0, 1}, {macA[:5], 0, 1}, {macA, 4095, 1}, {macA, 0, 0}, {macA, 0, 3},
	}
	for _, b := range bad {
		if err := f.SetFilter(b.mac, b.vlan, b.slot); err == nil {
			t.Errorf("SetFilter(%s, %d, %d) succeeded", b.mac, b.vlan, b.slot)
		}
	}
	if err := f.SetFilter(macA, 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := f.SetFilter(macA, 0, 2); err != nil { // replace
		t.Fatal(err)
	}
	if err := f.SetFilter(macB, 4094, 1); err != nil {
		t.Fatal(err)
	}
	if err := f.SetFilter(macC, 1, 1); err == nil {
		t.Error("third filter in a table of 2 succeeded")
	}
	got, err := f.Filters()
	if err != nil {
		t.Fatal(err)
	}
	want := map[Key]uint32{{MAC: [6]byte(macA)}: 2, {MAC: [6]byte(macB), VLAN: 4094}: 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Filters() = %v, want %v", got, want)
	}
	if err := f.DeleteFilter(macA, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteFilter(macA, 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
	if err := f.RegisterSocket(0, 0, 0); err == nil {
		t.Error("RegisterSocket on slot 0 succeeded")
	}
	if err := f.RegisterSocket(3, 0, 0); err == nil {
		t.Error("RegisterSocket on slot 3 of 2 succeeded")
	}
	if err := f.RegisterFlood(2, 0); err == nil {
		t.Error("RegisterFlood on queue 2 of 2 succeeded")
	}
	// fd 0 is not an AF_XDP socket: the kernel refuses, the error says where.
	if err := f.RegisterSocket(1, 1, 0); err == nil {
		t.Error("RegisterSocket with a non-XSK fd succeeded")
	}
	if err := f.UnregisterSocket(1, 1); err != nil {
		t.Errorf("unregistering an absent socket: %v", err)
	}
	if _, err := f.VMCounters(0); err == nil {
		t.Error("VMCounters(0) succeeded")
	}
	if _, err := f.VMCounters(3); err == nil {
		t.Error("VMCounters(3) succeeded")
	}
}

// tempPinDir is a unique directory on the host's bpffs, removed at cleanup.
func tempPinDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join("/sys/fs/bpf", netnstest.UniqueName("vmqtest-"))
	if err := preparePinDir(dir); err != nil {
		testenv.Skip(t, "no bpffs: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestPinDirNotBPFFS(t *testing.T) {
	testenv.RequireRoot(t)
	_, err := Load(Config{MaxVMs: 1, MaxQueues: 1, PinDir: t.TempDir()})
	if err == nil {
		t.Fatal("Load with a pin dir outside bpffs succeeded")
	}
	t.Log(err)
}

// A multi-buffer frame whose linear part is shorter than the headers: the
// program copies them out of the fragments (bpf_xdp_load_bytes) and
// steers it like any other. BPF_PROG_TEST_RUN takes the linear size from
// the context's data_end.
func TestShortLinearPart(t *testing.T) {
	r := newRig(t, Config{MaxVMs: testMaxVMs, MaxQueues: testMaxQueues}, 1)
	m := testModel(Drop, Drop)
	installFilters(t, r.f, m)
	cases := []struct {
		frame []byte
		want  Decision
	}{
		{frame(macA, nil, 9014), redirect(1, 0)},
		{frame(macA, [][2]uint16{q(100)}, 9018), redirect(2, 0)},
		{frame(macC, nil, 9014), pass},
	}
	for _, c := range cases {
		for _, linear := range []int{14, 16, 17} {
			t.Run(fmt.Sprintf("%x/%d/linear%d", c.frame[:6], len(c.frame), linear), func(t *testing.T) {
				r.setSockets(t, allBut())
				before := r.snap(t)
				var ret uint32
				err := r.ns.Do(func() error {
					var err error
					ret, err = r.f.Program().Run(&ebpf.RunOptions{
						Data:    c.frame,
						Context: xdpMd{DataEnd: uint32(linear), IngressIfindex: uint32(r.link.Index)},
					})
					return err
				})
				if err != nil {
					t.Fatalf("test run with a %d-byte linear part: %v", linear, err)
				}
				if Verdict(ret) != c.want.Verdict {
					t.Fatalf("verdict %v, want %v", Verdict(ret), c.want.Verdict)
				}
				if d := before.expect(c.want, len(c.frame)).diff(r.snap(t)); d != "" {
					t.Fatal(d)
				}
			})
		}
	}
}
