package vhostuser

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
)

const fuzzMemLen = 16 << 10

// fuzzRingSeeds are guest memories with valid rings (8 entries) of the
// layout, built by the test guest: TX frames (direct, chained, indirect)
// and RX buffers (direct, chained, indirect).
func fuzzRingSeeds(t testing.TB, l layout) [][]byte {
	var seeds [][]byte
	tx := l.guestMem(t, make([]byte, fuzzMemLen), 8, testFeatures, false)
	tx.sendFrame(frameOf(60, 1), 60)
	tx.sendFrame(frameOf(300, 2), 100)
	tx.post(tx.indirect(tdesc{addr: tx.alloc(virtio.NetHdrLen), len: virtio.NetHdrLen}, tdesc{addr: tx.alloc(64), len: 64}))
	seeds = append(seeds, tx.memUsed())
	rx := l.guestMem(t, make([]byte, fuzzMemLen), 8, testFeatures, true)
	rx.postRX(1024)
	rx.postRX(512)
	rx.post(tdesc{addr: rx.alloc(6), len: 6, flags: virtio.DescFWrite}, tdesc{addr: rx.alloc(256), len: 256, flags: virtio.DescFWrite})
	rx.post(rx.indirect(tdesc{addr: rx.alloc(300), len: 300, flags: virtio.DescFWrite}))
	seeds = append(seeds, rx.memUsed())
	return seeds
}

// fuzzTargets are the ring fuzz targets, one a layout, each with its
// seed corpus in testdata/fuzz/<name>.
var fuzzTargets = []struct {
	name string
	l    layout
}{{"FuzzDescriptorChain", splitLayout}, {"FuzzPackedRing", packedLayout}}

// FuzzDescriptorChain runs the device side over arbitrary guest memory
// holding a split ring and buffers (see fuzzRing).
func FuzzDescriptorChain(f *testing.F) { fuzzRing(f, splitLayout) }

// FuzzPackedRing runs the device side over arbitrary guest memory holding
// a packed ring, its event suppression areas and buffers (see fuzzRing).
func FuzzPackedRing(f *testing.F) { fuzzRing(f, packedLayout) }

// fuzzRing: no input may panic the device or make it write outside guest
// memory, a failure must be one of the queue's errors, and Flush must
// write every used descriptor.
func fuzzRing(f *testing.F, l layout) {
	for _, s := range fuzzRingSeeds(f, l) {
		f.Add(s, false, false)
		f.Add(s, true, true)
	}
	f.Fuzz(func(t *testing.T, ring []byte, rx, mrg bool) { runFuzzRing(t, l, ring, rx, mrg) })
}

func runFuzzRing(t *testing.T, l layout, ring []byte, rx, mrg bool) {
	mem := make([]byte, fuzzMemLen)
	copy(mem, ring)
	feat := uint64(testFeatures | virtio.RingFEventIdx)
	if mrg {
		feat |= virtio.NetFMrgRxbuf
	}
	// The test guest only lays the ring out over the fuzzed memory.
	q := l.guestMem(t, mem, 8, feat, rx).queue()
	q.usedLog = &dirtyLog{bits: make([]byte, 64)} // log every used write too
	q.SetBudget(64)
	dst := make([]byte, 1600)
	frame := frameOf(700, 3)
	for i := 0; i < 20; i++ {
		var err error
		if rx {
			err = q.Push(frame)
		} else {
			_, err = q.Pop(dst)
		}
		q.Flush()
		switch {
		case err == nil, errors.Is(err, ErrNoBuffers), errors.Is(err, ErrTooBig):
		case errors.Is(err, ErrBudget):
			q.SetBudget(64)
		case errors.Is(err, ErrEmpty), errors.Is(err, ErrBroken):
			return
		default:
			t.Fatalf("unexpected error %v", err)
		}
		if q.usedIdx != q.usedPub {
			t.Fatalf("Flush left used descriptors %d..%d unwritten", q.usedPub, q.usedIdx)
		}
		q.EnableNotify()
		q.DisableNotify()
	}
}

// fuzzHandler drives a queue that became ready over the fuzzed memory.
type fuzzHandler struct{ nopHandler }

func (fuzzHandler) QueueReady(q *Queue) {
	dst := make([]byte, 2048)
	for i := 0; i < 4; i++ {
		if q.IsRX() {
			q.Push(frameOf(100, 1))
		} else {
			q.Pop(dst)
		}
	}
	q.Flush()
}

// encodeMsgs concatenates messages as a front-end would send them.
func encodeMsgs(msgs ...[]byte) []byte {
	var out []byte
	for _, m := range msgs {
		out = append(out, m...)
	}
	return out
}

func msg(req Request, flags uint32, payload []byte) []byte {
	b := make([]byte, HeaderLen+len(payload))
	Header{Request: req, Flags: FlagVersion | flags, Size: uint32(len(payload))}.Encode(b)
	copy(b[HeaderLen:], payload)
	return b
}

func u64p(v uint64) []byte { b := make([]byte, 8); EncodeU64(b, v); return b }

func statep(i, n uint32) []byte {
	b := make([]byte, VringStateLen)
	VringState{Index: i, Num: n}.Encode(b)
	return b
}

func addrp(i uint32, d, a, u uint64) []byte {
	b := make([]byte, VringAddrLen)
	VringAddr{Index: i, DescUser: d, AvailUser: a, UsedUser: u}.Encode(b)
	return b
}

// fuzzMessageSeeds is a handshake that brings both queues of a pair up
// over a pre-installed memory table (fds cannot be fuzzed).
func fuzzMessageSeeds() [][]byte {
	g := layoutGuest(nil, nil, testBase, 8)
	d, a, u := g.addrs()
	pg := layoutPacked(nil, nil, testBase, 8)
	return [][]byte{
		encodeMsgs(setupMsgs(DefaultFeatures&^virtio.NetFMQ&^virtio.FRingPacked, d, a, u)...),
		msg(ReqSetMemTable, 0, make([]byte, MemTableLen(1))),
		msg(Request(99), FlagNeedReply, []byte{1, 2, 3}),
		msg(ReqSetVringKick, 0, u64p(0x7ff)),
		encodeMsgs(setupMsgs(DefaultFeatures&^virtio.NetFMQ, pg.descAddr, pg.drvAddr, pg.devAdr)...),
	}
}

// setupMsgs is a front-end's set-up of one queue pair of 8 entries at
// the given ring addresses, then GET_VRING_BASE and a reset.
func setupMsgs(features, d, a, u uint64) [][]byte {
	cfg := make([]byte, ConfigHeaderLen)
	ConfigRequest{Offset: 0, Size: NetConfigLen}.Encode(cfg)
	cfg = append(cfg, make([]byte, NetConfigLen)...)
	base := uint32(0)
	if features&virtio.FRingPacked != 0 {
		base = virtio.EventWrapBit | virtio.EventWrapBit<<16 // avail and used: slot 0, wrap counter 1
	}
	var setup [][]byte
	setup = append(setup,
		msg(ReqSetOwner, 0, nil),
		msg(ReqGetFeatures, 0, nil),
		msg(ReqGetProtocolFeatures, 0, nil),
		msg(ReqSetProtocolFeatures, 0, u64p(ProtocolFReplyAck|ProtocolFMQ|ProtocolFConfig|ProtocolFStatus)),
		msg(ReqSetFeatures, FlagNeedReply, u64p(features)),
		msg(ReqGetQueueNum, 0, nil),
		msg(ReqGetConfig, 0, cfg),
		msg(ReqSetStatus, 0, u64p(0xf)),
	)
	for i := uint32(0); i < 2; i++ {
		setup = append(setup,
			msg(ReqSetVringNum, 0, statep(i, 8)),
			msg(ReqSetVringBase, 0, statep(i, base)),
			msg(ReqSetVringAddr, 0, addrp(i, d, a, u)),
			msg(ReqSetVringCall, 0, u64p(uint64(i)|VringNoFD)),
			msg(ReqSetVringKick, 0, u64p(uint64(i)|VringNoFD)),
			msg(ReqSetVringEnable, FlagNeedReply, statep(i, 1)),
		)
	}
	return append(setup, msg(ReqGetVringBase, 0, statep(0, 0)), msg(ReqGetStatus, 0, nil), msg(ReqResetOwner, 0, nil))
}

// FuzzMessage feeds a stream of messages to a port's request handler
// (no socket): no input may panic it.
func FuzzMessage(f *testing.F) {
	for _, s := range fuzzMessageSeeds() {
		f.Add(s)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		// Ring starts unpaced: an input may start hundreds.
		p, err := newPort("fuzz", "server", Config{QueuePairs: 2, MAC: []byte{2, 0, 0, 0, 0, 1}, MTU: 1500, Handler: fuzzHandler{}, Logger: quiet,
			RingStarts: Pace{PerSecond: -1}})
		if err != nil {
			t.Fatal(err)
		}
		defer p.nt.close() // its eventfd: thousands of inputs a second outrun the finalizers
		mem := make([]byte, fuzzMemLen)
		for len(data) >= HeaderLen {
			p.dev.mem = orMem(p.dev.mem, mem)
			h, err := DecodeHeader(data)
			if err != nil {
				return
			}
			data = data[HeaderLen:]
			if int(h.Size) > len(data) {
				return
			}
			m := message{hdr: h, payload: data[:h.Size]}
			data = data[h.Size:]
			p.handle(&m)
			p.publishState()
		}
		p.resetDevice()
	})
}

// orMem installs a Go-slice memory table when the port has none, so the
// fuzzer reaches the queue code without passing fds.
func orMem(t *memTable, mem []byte) *memTable {
	if t != nil {
		return t
	}
	return &memTable{regions: []memRegion{{gpa: testBase, size: uint64(len(mem)), uva: testBase, data: mem}}}
}

// updateCorpus rewrites testdata/fuzz from the seeds (go generate runs
// it; see corpus.go) instead of checking it.
var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz from the seeds")

// TestFuzzCorpus checks that the committed corpus is what the seeds
// produce, so a changed seed cannot silently leave a stale corpus behind;
// with -update-corpus it writes the corpus instead.
func TestFuzzCorpus(t *testing.T) {
	files := map[string]string{}
	add := func(name string, i int, body string) {
		files[filepath.Join("testdata", "fuzz", name, fmt.Sprintf("seed%d", i))] = "go test fuzz v1\n" + body
	}
	for _, ft := range fuzzTargets {
		for i, s := range fuzzRingSeeds(t, ft.l) {
			add(ft.name, 2*i, fmt.Sprintf("[]byte(%q)\nbool(false)\nbool(false)\n", s))
			add(ft.name, 2*i+1, fmt.Sprintf("[]byte(%q)\nbool(true)\nbool(true)\n", s))
		}
	}
	for i, s := range fuzzMessageSeeds() {
		add("FuzzMessage", i, fmt.Sprintf("[]byte(%q)\n", s))
	}
	for path, body := range files {
		if *updateCorpus {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != body {
			t.Errorf("%s is not what its seed produces (%v): run go generate ./dataplane/vhostuser", path, err)
		}
	}
}
