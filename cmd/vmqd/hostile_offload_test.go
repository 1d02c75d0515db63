package main

import (
	"fmt"
	"testing"

	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/hostile"
	"github.com/vmq/vmq/internal/testenv"
)

// offloadFrame is a TCP frame from the attacker to dst after its
// virtio-net header: IPv4 (or IPv6 with an extra destination-options
// header of ext bytes), payload bytes of data.
func offloadFrame(dst []byte, v6 bool, ext, payload int, h virtio.NetHdr) []byte {
	b := make([]byte, virtio.NetHdrLen, virtio.NetHdrLen+14+40+ext+20+payload)
	b = append(b, dst...)
	b = append(b, mustMAC(attackerMAC)...)
	if v6 {
		nh := byte(6)
		if ext > 0 {
			nh = 60
		}
		b = append(b, 0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, nh, 64)
		b = append(b, make([]byte, 32)...)
		if ext > 0 {
			e := make([]byte, ext)
			e[0], e[1] = 6, byte(ext/8-1)
			b = append(b, e...)
		}
	} else {
		b = append(b, 0x08, 0x00, 0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 198, 18, 1, 1, 198, 18, 1, 2)
	}
	l4 := len(b) - virtio.NetHdrLen
	b = append(b, 0, 9, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0)
	b = append(b, make([]byte, payload)...)
	if h.Flags&virtio.NetHdrFNeedsCsum != 0 && h.CsumStart == 0 {
		h.CsumStart, h.CsumOffset = uint16(l4), 16
	}
	h.Encode(b[:virtio.NetHdrLen])
	return b
}

// An attacker that negotiated the checksum and TSO offloads sends
// headers vmqd must refuse (NEEDS_CSUM outside the frame, DATA_VALID on
// TX, UDP segmentation, gso_size 1, TSO4 on an IPv6 frame, csum_start not
// at TCP, headers leaving no room for a segment, a truncated TCP header),
// then a good 64 KiB TSO frame and an open checksum: each bad one is
// dropped and counted as bad_offload, the device stays up, the good ones
// reach the wire, and every UMEM frame comes back (checkFrames).
func attackBadOffloads(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	feat := uint64(hostile.DefaultFeatures | virtio.OffloadFeatures)
	d := a.device(hostile.Config{QueueSize: 64, NoBuffers: true, Features: feat, MemSize: 8 << 20})
	mustStart(t, h, d)
	if d.Features&(virtio.NetFHostTSO4|virtio.NetFCsum) != virtio.NetFHostTSO4|virtio.NetFCsum {
		t.Fatalf("attacker negotiated %#x: no offloads (offered %#x)", d.Features, d.Offered)
	}
	dst := h.b.Peer.MAC
	csum := virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum}
	tso4 := virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOTCPv4, GSOSize: 1448}
	tso6 := virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOTCPv6, GSOSize: 1428}
	bad := [][]byte{
		offloadFrame(dst, false, 0, 100, virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, CsumStart: 150, CsumOffset: 16}),
		offloadFrame(dst, false, 0, 100, virtio.NetHdr{Flags: virtio.NetHdrFDataValid}),
		offloadFrame(dst, false, 0, 3000, virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOUDP, GSOSize: 1400, CsumStart: 34, CsumOffset: 6}),
		offloadFrame(dst, false, 0, 3000, virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOTCPv4, GSOSize: 1}),
		offloadFrame(dst, true, 0, 3000, tso4),
		offloadFrame(dst, false, 0, 3000, virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOTCPv4, GSOSize: 1448, CsumStart: 30, CsumOffset: 16}),
		offloadFrame(dst, true, 1464, 3000, tso6),
		offloadFrame(dst, false, 0, 0, tso4)[:virtio.NetHdrLen+14+20+10],
	}
	good := [][]byte{offloadFrame(dst, false, 0, 65535-40, tso4), offloadFrame(dst, false, 0, 200, csum)}
	tx := d.TX()
	for _, f := range append(bad, good...) {
		gpa, err := d.Mem.AllocGPA(len(f))
		if err != nil {
			t.Fatal(err)
		}
		copy(d.Mem.At(gpa, len(f)), f)
		tx.Post(hostile.Desc{Addr: gpa, Len: uint32(len(f))})
	}
	d.KickRing(1)
	want := uint16(len(bad) + len(good))
	testenv.Eventually(t, "vmqd took the attacker's frames", func() (bool, string) {
		if !h.proc.alive() {
			t.Fatalf("vmqd died: %v\n%s", h.proc.waitErr, h.logTail())
		}
		return tx.UsedIdx() == want, fmt.Sprintf("used.idx %d of %d", tx.UsedIdx(), want)
	})
	var msg string
	testenv.Eventually(t, "bad headers counted", func() (bool, string) {
		s, err := h.snapshot()
		if err != nil {
			return false, err.Error()
		}
		v := vmOf(s, a.name)
		msg = fmt.Sprintf("drops %v, offload %+v", v.DropsByReason, v.Offload)
		return v.DropsByReason["bad_offload"] == uint64(len(bad)) && v.Offload.Segmented == 1 && v.Offload.CsumFills == 1, msg
	})
	s, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if p := portOf(s, a.name); p.Broken != "" {
		t.Fatalf("bad offload headers broke the device: %s", p.Broken)
	}
	if v := vmOf(s, a.name); v.Offload.Segments != (65535-40+1447)/1448 {
		t.Errorf("the 64 KiB frame gave %d segments: %s", v.Offload.Segments, msg)
	}
	t.Logf("attacker: %s", msg)
}

// TSO frames of 64 KiB with the smallest gso_size vmqd accepts (48): 1365
// segments each, 256 of them queued at once (349440 segments, each a
// UMEM frame on its way out). The segments are charged to the attacker's
// share, so a round carries at most about one such frame and the victim
// on the same worker stays exact; every frame is taken and counted.
func attackTSOMinMSS(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	const frames = 256
	feat := uint64(hostile.DefaultFeatures | virtio.OffloadFeatures)
	d := a.device(hostile.Config{QueueSize: frames, NoBuffers: true, Features: feat, MemSize: 4 << 20})
	mustStart(t, h, d)
	if d.Features&virtio.NetFHostTSO4 == 0 {
		t.Fatalf("attacker negotiated %#x: no TSO4 (offered %#x)", d.Features, d.Offered)
	}
	const payload = 65535 - 40
	f := offloadFrame(h.b.Peer.MAC, false, 0, payload,
		virtio.NetHdr{Flags: virtio.NetHdrFNeedsCsum, GSOType: virtio.GSOTCPv4, GSOSize: virtio.MinGSOSize})
	gpa := allocGPA(t, d, len(f))
	copy(d.Mem.At(gpa, len(f)), f)
	tx := d.TX()
	for range frames {
		tx.Post(hostile.Desc{Addr: gpa, Len: uint32(len(f))})
	}
	d.KickRing(1)
	testenv.Eventually(t, "vmqd took every TSO frame", func() (bool, string) {
		if !h.proc.alive() {
			t.Fatalf("vmqd died: %v\n%s", h.proc.waitErr, h.logTail())
		}
		return tx.UsedIdx() == frames, fmt.Sprintf("used.idx %d of %d", tx.UsedIdx(), frames)
	})
	s, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	v := vmOf(s, a.name)
	per := uint64((payload + virtio.MinGSOSize - 1) / virtio.MinGSOSize)
	if v.Offload.Segmented != frames || v.Offload.Segments != frames*per {
		t.Errorf("segmented %d frames into %d segments, want %d into %d (drops %v)", v.Offload.Segmented, v.Offload.Segments, frames, frames*per, v.DropsByReason)
	}
	t.Logf("%d segments; attacker drops %v", v.Offload.Segments, v.DropsByReason)
}
