package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime/debug"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmq/vmq/dataplane/virtio"
)

// pagesChanged lists the guest pages (guest physical page numbers) whose
// bytes differ between before and after.
func pagesChanged(before, after []byte, base uint64) []uint64 {
	var out []uint64
	for off := 0; off < len(after); off += 1 << LogPageShift {
		end := min(off+1<<LogPageShift, len(after))
		if string(before[off:end]) != string(after[off:end]) {
			out = append(out, (base+uint64(off))>>LogPageShift)
		}
	}
	return out
}

// pagesMarked lists the pages whose bit is set in a dirty log.
func pagesMarked(bits []byte) []uint64 {
	var out []uint64
	for i, b := range bits {
		for j := 0; j < 8; j++ {
			if b&(1<<j) != 0 {
				out = append(out, uint64(i*8+j))
			}
		}
	}
	return out
}

// TestDirtyLogPageDiff pushes frames (single buffers, merged buffers,
// buffers that cross pages) and pops frames with logging on, then
// compares the log with a page-level diff of guest memory: every page
// written is marked and no other page is.
func TestDirtyLogPageDiff(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		t.Run(fmt.Sprintf("event_idx=%v", eventIdx), func(t *testing.T) {
			features := uint64(testFeatures | virtio.NetFMrgRxbuf)
			if eventIdx {
				features |= virtio.RingFEventIdx
			}
			mem := make([]byte, 1<<20)
			rx := newTestGuestMem(t, mem, 64, features, true)
			// A second ring (TX) in the same memory, after the RX buffers.
			txMem := mem[512<<10:]
			tx := layoutGuest(t, txMem, testBase+512<<10, 64)
			tx.features = features
			tx.q = &Queue{index: 1, kickFD: -1, callFD: -1}
			d, a, u := tx.addrs()
			if err := tx.q.ringLayout(rx.q.mem, features, 64, d, a, u); err != nil {
				t.Fatal(err)
			}
			tx.q.start(0)

			// A pattern no header or frame byte repeats everywhere, so a
			// write shows in the diff, away from the rings.
			for i := rx.bufOff; i < 512<<10; i++ {
				mem[i] = 0xa5
			}
			for i := 0; i < 64; i++ { // used elements of both rings
				binary.LittleEndian.PutUint64(mem[rx.usedOff+4+8*i:], 0xa5a5a5a5a5a5a5a5)
				binary.LittleEndian.PutUint64(txMem[tx.usedOff+4+8*i:], 0xa5a5a5a5a5a5a5a5)
			}
			// Buffers: one per page stride, some crossing a page boundary,
			// and pages in between that nobody writes.
			rx.bufOff = (rx.bufOff + 4095) &^ 4095
			for i := 0; i < 8; i++ {
				rx.bufOff += 3000 // leaves gaps; some buffers straddle pages
				rx.postRX(2048)
			}
			// TX frames to pop: the device writes only the used ring.
			for i := 0; i < 4; i++ {
				tx.sendFrame(frameOf(200, byte(i)), 2048)
			}

			log := &dirtyLog{bits: make([]byte, 128)} // pages 0..1023 cover the memory
			for _, q := range []*Queue{rx.q, tx.q} {
				_, _, used := map[bool]*testGuest{true: rx, false: tx}[q.IsRX()].addrs()
				q.usedLog, q.usedLogAddr = log, used
			}
			rx.q.bufLog = log
			before := slices.Clone(mem)

			for _, size := range []int{60, 1514, 3000, 200} { // 3000: two merged buffers
				if err := rx.q.Push(frameOf(size, 0x11)); err != nil {
					t.Fatalf("push %d: %v", size, err)
				}
			}
			rx.q.Flush()
			dst := make([]byte, 2048)
			for i := 0; i < 4; i++ {
				if _, err := tx.q.Pop(dst); err != nil {
					t.Fatal(err)
				}
			}
			tx.q.Flush()
			if _, err := tx.q.EnableNotify(); err != nil { // avail_event with EVENT_IDX
				t.Fatal(err)
			}
			if eventIdx {
				tx.q.DisableNotify()
			}

			changed := pagesChanged(before, mem, testBase)
			marked := pagesMarked(log.bits)
			if len(changed) < 4 {
				t.Fatalf("only %d pages changed: the test writes too little", len(changed))
			}
			if !slices.Equal(changed, marked) {
				t.Fatalf("pages written %v\npages marked  %v", changed, marked)
			}
		})
	}
}

// TestDirtyLogSyncAfterEveryMark is a front-end that syncs the log at the
// worst moments: right after every mark it takes the marked pages (clears
// their bits) and copies them to the destination, as QEMU's migration
// thread may at any time. After a final sync the destination must equal
// the guest's memory: a byte written after its page's last mark was lost
// on the way (num_buffers was, before it got its own mark).
func TestDirtyLogSyncAfterEveryMark(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run(fmt.Sprintf("header_split=%v", split), func(t *testing.T) {
			features := uint64(testFeatures | virtio.NetFMrgRxbuf | virtio.RingFEventIdx)
			mem := make([]byte, 1<<20)
			g := newTestGuestMem(t, mem, 64, features, true)
			g.bufOff = (g.bufOff + 4095) &^ 4095
			for i := 0; i < 12; i++ {
				if split { // num_buffers in a descriptor of its own, on another page
					a, b := g.alloc(10), g.alloc(2)
					g.bufOff = (g.bufOff + 4095) &^ 4095
					c := g.alloc(1500)
					g.post(tdesc{addr: a, len: 10, flags: virtio.DescFWrite},
						tdesc{addr: b, len: 2, flags: virtio.DescFWrite},
						tdesc{addr: c, len: 1500, flags: virtio.DescFWrite})
					continue
				}
				g.bufOff += 1000 // buffers straddle pages
				g.postRX(1536)
			}
			log := &dirtyLog{bits: make([]byte, 128)}
			_, _, used := g.addrs()
			g.q.usedLog, g.q.usedLogAddr, g.q.bufLog = log, used, log
			dst := slices.Clone(mem) // the destination has everything so far
			syncs := 0
			sync := func() {
				syncs++
				for _, pg := range pagesMarked(log.bits) {
					log.bits[pg/8] &^= 1 << (pg % 8)
					off := int(pg<<LogPageShift - testBase)
					copy(dst[off:off+1<<LogPageShift], mem[off:])
				}
			}
			log.afterMark = sync
			for _, size := range []int{60, 1514, 3000, 200, 4000} { // 3000, 4000: merged buffers
				if err := g.q.Push(frameOf(size, byte(size))); err != nil {
					t.Fatalf("push %d: %v", size, err)
				}
				g.q.Flush()
			}
			log.afterMark = nil
			sync() // the last one, with the device stopped
			if syncs < 10 {
				t.Fatalf("only %d syncs", syncs)
			}
			if lost := pagesChanged(dst, mem, testBase); len(lost) != 0 {
				t.Fatalf("pages written after their last mark (the destination has old bytes): %v", lost)
			}
		})
	}
}

// TestDirtyLogOff checks that nothing is marked without logging and that
// a log cannot be written beyond its end.
func TestDirtyLogOff(t *testing.T) {
	g := newTestGuest(t, 64, testFeatures, true)
	g.postRX(2048)
	if err := g.q.Push(frameOf(100, 1)); err != nil {
		t.Fatal(err)
	}
	g.q.Flush()
	if g.q.bufLog != nil || g.q.usedLog != nil {
		t.Fatal("logging on by default")
	}
	l := &dirtyLog{bits: make([]byte, 8)} // pages 0..63
	l.mark(63<<LogPageShift, 2<<LogPageShift)
	l.mark(^uint64(0)-10, 100)
	if got := pagesMarked(l.bits); !slices.Equal(got, []uint64{63}) {
		t.Fatalf("marked %v, want [63]", got)
	}
}

// TestPortDirtyLog drives logging over the protocol: LOG_SHMFD and
// LOG_ALL offered, SET_LOG_BASE answered, the queues restarted with the
// log, the used ring logged at its log address, the log unmapped on
// disconnect.
func TestPortDirtyLog(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vm.sock")
	h := newRecHandler()
	p, err := Listen(path, Config{MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Handler: h, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	gm := newGuestMem(t, feMemSize)
	defer gm.close()
	kick := [2]int{eventfd(t), eventfd(t)}
	call := [2]int{eventfd(t), eventfd(t)}
	f := dialFE(t, path)

	if off := f.getU64(ReqGetFeatures); off&FeatureLogAll == 0 {
		t.Fatalf("features %#x without LOG_ALL", off)
	}
	pf := f.getU64(ReqGetProtocolFeatures)
	if pf&ProtocolFLogShmfd == 0 || pf&ProtocolFRARP == 0 {
		t.Fatalf("protocol features %#x without LOG_SHMFD or RARP", pf)
	}
	features := uint64(virtio.FVersion1 | virtio.NetFMrgRxbuf | virtio.FProtocolFeatures)
	gs := f.handshake(gm, features, kick, call)
	f.send(ReqSetProtocolFeatures, 0, u64p(pf&(ProtocolFReplyAck|ProtocolFMQ|ProtocolFLogShmfd)))
	for i := 0; i < 2; i++ {
		recv(t, h.ready, "QueueReady")
	}

	// The log: QEMU's size for 1 MiB at testBase (one u64 per 64 pages).
	logSize := uint64((testBase+feMemSize)>>(LogPageShift+6)) * 8
	lfd, err := unix.MemfdCreate("vmq-test-log", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	if err := unix.Ftruncate(lfd, int64(logSize)); err != nil {
		t.Fatal(err)
	}
	logMem, err := unix.Mmap(lfd, 0, int(logSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(logMem)
	pl := make([]byte, LogBaseLen)
	EncodeLogBase(pl, logSize, 0)
	// Each step stops both rings (or one) and starts them again before
	// the reply: play the worker first.
	restart := func(n int) (rxq *Queue) {
		for i := 0; i < n; i++ {
			recv(t, h.stopped, "QueueStopped")
		}
		for i := 0; i < n; i++ {
			if q := recv(t, h.ready, "QueueReady"); q.IsRX() {
				rxq = q
			}
		}
		return rxq
	}
	f.send(ReqSetLogBase, 0, pl, lfd)
	restart(2)
	if r := f.recv(ReqSetLogBase); len(r) != 0 {
		t.Fatalf("SET_LOG_BASE reply of %d bytes", len(r))
	}
	// QEMU's order: LOG_ALL in the features, then each ring's log flag.
	f.send(ReqSetFeatures, FlagNeedReply, u64p(features|FeatureLogAll))
	restart(2)
	if v, _ := DecodeU64(f.recv(ReqSetFeatures)); v != 0 {
		t.Fatalf("SET_FEATURES with LOG_ALL: ack %d", v)
	}
	d, a, used := gs[0].addrs()
	ap := make([]byte, VringAddrLen)
	VringAddr{Index: 0, Flags: VringFlagLog, DescUser: d, AvailUser: a, UsedUser: used, Log: used}.Encode(ap)
	f.send(ReqSetVringAddr, FlagNeedReply, ap)
	rxq := restart(1)
	if v, _ := DecodeU64(f.recv(ReqSetVringAddr)); v != 0 {
		t.Fatalf("SET_VRING_ADDR with LOG: ack %d", v)
	}

	buf := gs[0].postRX(2048)
	if err := rxq.Push(frameOf(100, 3)); err != nil {
		t.Fatal(err)
	}
	rxq.Flush()
	want := []uint64{buf >> LogPageShift, used >> LogPageShift}
	slices.Sort(want)
	want = slices.Compact(want)
	if got := pagesMarked(logMem); !slices.Equal(got, want) {
		t.Fatalf("marked pages %v, want %v (buffer %#x, used ring %#x)", got, want, buf, used)
	}

	// A log offset that is not 8-aligned, or a size beyond the file: the
	// connection ends (the front-end waits for a reply it cannot get).
	h.drain() // the disconnect stops the rings
	EncodeLogBase(pl, logSize*2, 0)
	f.send(ReqSetLogBase, 0, pl, lfd)
	if !f.eof() {
		t.Fatal("SET_LOG_BASE beyond the file accepted")
	}
}

// TestDirtyLogFault shrinks the log's file under a running queue (QEMU
// seals its log; a hostile front-end need not): the worker's write is a
// memory fault that breaks the device instead of crashing vmq.
func TestDirtyLogFault(t *testing.T) {
	g := newTestGuest(t, 64, testFeatures, true)
	lfd, err := unix.MemfdCreate("vmq-test-log", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	if err := unix.Ftruncate(lfd, 1<<16); err != nil {
		t.Fatal(err)
	}
	log, err := mapLog(lfd, 1<<16, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer log.unmap()
	g.q.bufLog = log
	g.postRX(2048)
	if err := unix.Ftruncate(lfd, 0); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		var perr error = errors.New("no fault")
		func() {
			defer g.q.RecoverFault()
			perr = g.q.Push(frameOf(100, 1))
		}()
		done <- perr
	}()
	<-done
	if !g.q.isBroken() {
		t.Fatal("queue not broken after a fault in the dirty log")
	}
}

// BenchmarkPushLogged is BenchmarkPush with dirty logging on (a guest
// being migrated): the buffer and used-ring pages are marked.
func BenchmarkPushLogged(b *testing.B) {
	for _, size := range []int{64, 1514} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			g := newTestGuest(b, 256, testFeatures|virtio.NetFMrgRxbuf, true)
			for i := 0; i < 256; i++ {
				g.postRX(2048)
			}
			log := &dirtyLog{bits: make([]byte, 128)}
			_, _, used := g.addrs()
			g.q.bufLog, g.q.usedLog, g.q.usedLogAddr = log, log, used
			f := frameOf(size, 1)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := g.q.Push(f); err != nil {
					b.Fatal(err)
				}
				if i%32 == 31 {
					g.q.Flush()
				}
				g.publish(uint16(i) % 256)
			}
			g.q.Flush()
		})
	}
}

// announceRec is a handler that records announcements.
type announceRec struct {
	*recHandler
	macs chan net.HardwareAddr
}

func (a announceRec) Announce(_ *Port, mac net.HardwareAddr) error {
	a.macs <- mac
	return nil
}

// TestSendRARPBurst: QEMU may send two SEND_RARPs at once (a destination
// started paused announces when it resumes and from its timer). The
// second is dropped and counted; the connection stays up (it used to be
// closed: an error on a message without a reply ends the connection).
func TestSendRARPBurst(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.sock")
	h := announceRec{newRecHandler(), make(chan net.HardwareAddr, 8)}
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	p, err := Listen(path, Config{MAC: mac, Handler: h, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	f := dialFE(t, path)
	pf := f.getU64(ReqGetProtocolFeatures)
	f.send(ReqSetProtocolFeatures, 0, u64p(pf&(ProtocolFRARP|ProtocolFReplyAck)))
	var b [8]byte
	copy(b[:], mac)
	rarp := u64p(binary.LittleEndian.Uint64(b[:]))
	f.send(ReqSendRARP, 0, rarp)
	f.send(ReqSendRARP, 0, rarp) // within announceEvery
	// A request with a reply: the connection is still served.
	if got := f.getU64(ReqGetFeatures); got == 0 {
		t.Fatal("no features")
	}
	if got := <-h.macs; !slices.Equal(got, mac) {
		t.Fatalf("announced %v, want %v", got, mac)
	}
	select {
	case m := <-h.macs:
		t.Fatalf("second announcement %v within %v passed", m, announceEvery)
	default:
	}
	if st := p.State(); !st.Connected || st.AnnouncesDropped != 1 {
		t.Fatalf("state %+v: want connected, 1 announce dropped", st)
	}
}
