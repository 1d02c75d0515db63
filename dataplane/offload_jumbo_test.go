package dataplane

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/hostile"
	"github.com/vmq/vmq/internal/testenv"
)

// TestJumboTSO: at MTU 9000 (multi-buffer queues) a guest's TSO frames,
// IPv4 and IPv6, are cut into frames of up to 9014 bytes, each spread
// over several UMEM frames: on the wire every frame is a valid TCP/IP
// frame within the MTU, and their payloads are the guest's, in order.
// The guest is a driver written in the test (internal/hostile), which
// negotiates HOST_TSO4/6 and sends what Linux would.
func TestJumboTSO(t *testing.T) {
	tb := newJumboBed(t, 1)
	const name, mac = "tso", "52:54:00:00:00:01" // tsoFrame's source MAC
	sock := tb.Socket(name)
	tb.addPort(VM{Name: name, Slot: 7, MAC: mustMAC(mac), Socket: sock, QueuePairs: 1, MTU: jumboMTU})
	c, err := hostile.Dial(sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d, err := hostile.NewDevice(c, hostile.Config{Features: hostile.DefaultFeatures | virtio.OffloadFeatures,
		QueueSize: 64, NoBuffers: true, MemSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	if d.Features&(virtio.NetFHostTSO4|virtio.NetFHostTSO6) != virtio.NetFHostTSO4|virtio.NetFHostTSO6 {
		t.Fatalf("negotiated %#x: no TSO", d.Features)
	}
	tb.waitRunning(name, 2)
	sn := tb.sniffMTU(jumboMTU, true)

	var want []byte
	var segs int
	for _, spec := range []tsoSpec{
		{payload: 60000, tcpOpts: 12, mss: 8948, flags: 0x18},
		{v6: true, payload: 50000, tcpOpts: 12, mss: 8928, flags: 0x19},
	} {
		frame, h := tsoFrame(spec)
		p, _ := parseTCP(frame)
		want = append(want, frame[p.hdrEnd:]...)
		segs += (spec.payload + spec.mss - 1) / spec.mss
		gpa, err := d.Mem.AllocGPA(virtio.NetHdrLen + len(frame))
		if err != nil {
			t.Fatal(err)
		}
		h.Encode(d.Mem.At(gpa, virtio.NetHdrLen))
		copy(d.Mem.At(gpa+virtio.NetHdrLen, len(frame)), frame)
		d.TX().Post(hostile.Desc{Addr: gpa, Len: uint32(virtio.NetHdrLen + len(frame))})
	}
	d.KickRing(1)
	testenv.Eventually(t, "segments on the wire", func() (bool, string) {
		n := len(sn.kept())
		return n >= segs, fmt.Sprintf("%d of %d segments", n, segs)
	})
	sn.check(t, uint64(segs))
	var got []byte
	big := 0
	for _, f := range sn.kept() {
		p, _ := parseTCP(f)
		got = append(got, f[p.hdrEnd:]...)
		if len(f) > 4096 {
			big++
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("wire payloads (%d bytes) differ from the guest's (%d)", len(got), len(want))
	}
	if big < segs-2 {
		t.Fatalf("%d of %d segments longer than one UMEM frame", big, segs)
	}
	v := tb.vmStats(name)
	if v.Offload.Segmented != 2 || v.Offload.Segments != uint64(segs) {
		t.Fatalf("offload counters %+v, want 2 frames cut into %d", v.Offload, segs)
	}
	checkNoDrops(t, v)
	checkFramesBack(t, tb)
}
