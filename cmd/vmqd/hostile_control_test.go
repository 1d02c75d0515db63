package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/vmq/vmq/dataplane/vhostuser"
	"github.com/vmq/vmq/dataplane/virtio"
	"github.com/vmq/vmq/internal/hostile"
	"github.com/vmq/vmq/internal/testenv"
)

// Control messages as a hostile front-end sends them: fds attached to
// requests that take none, requests refused with fds attached (a ring
// size that is not a power of 2, on a packed device too, a call fd that
// is no eventfd, SET_LOG_BASE and SET_INFLIGHT_FD not negotiated), the
// memory table swapped between one region and eight 30 times while
// frames arrive, the ring layout switched between split and packed 10
// times under traffic, then messages that end the connection (GET_INFLIGHT_FD,
// more fds than a message may carry). Every fd, mapping and goroutine
// vmqd took for the attacker must be gone at the end, and the device must
// have gone on delivering through the memory swaps.
func attackControlFDs(t *testing.T, h *hostileBed, a *attacker, _ *traffic) {
	before := heldBy(t, h)
	newFD := func() int {
		e, err := hostile.NewEventFD(true)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		return e.FD
	}
	extra := []int{newFD(), newFD(), newFD()}
	d := a.device(hostile.Config{})
	c := d.C
	if _, err := c.Call(vhostuser.ReqGetFeatures, nil, extra...); err != nil {
		t.Fatalf("GET_FEATURES with fds: %v", err)
	}
	mustStart(t, h, d)
	fdsUp, mapsUp := fdCount(t, h), memfdMaps(t, h)
	state := func(index, num uint32) []byte {
		p := make([]byte, vhostuser.VringStateLen)
		vhostuser.VringState{Index: index, Num: num}.Encode(p)
		return p
	}
	for range 20 {
		for _, m := range []struct {
			req vhostuser.Request
			pl  []byte
		}{
			{vhostuser.ReqGetFeatures, nil},
			{vhostuser.ReqGetProtocolFeatures, nil},
			{vhostuser.ReqGetQueueNum, nil},
			{vhostuser.ReqGetStatus, nil},
			{vhostuser.ReqSetOwner, nil},
			{vhostuser.ReqSetVringEnable, state(0, 1)},
		} {
			if _, err := c.Call(m.req, m.pl, extra...); err != nil {
				t.Fatalf("%v with %d fds attached: %v", m.req, len(extra), err)
			}
		}
	}
	mem, err := hostile.NewMem(4096)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mem.Close)
	logBase := make([]byte, vhostuser.LogBaseLen)
	vhostuser.EncodeLogBase(logBase, 4096, 0)
	for _, m := range []struct {
		what string
		req  vhostuser.Request
		pl   []byte
		fds  []int
	}{
		{"ring size 100", vhostuser.ReqSetVringNum, state(0, 100), extra},
		{"ring size 0", vhostuser.ReqSetVringNum, state(1, 0), extra},
		{"ring size 65536", vhostuser.ReqSetVringNum, state(1, 65536), extra},
		{"call fd a memfd", vhostuser.ReqSetVringCall, u64(1), []int{mem.FD}},
		{"SET_LOG_BASE without LOG_SHMFD", vhostuser.ReqSetLogBase, logBase, []int{mem.FD}},
		{"SET_INFLIGHT_FD", vhostuser.ReqSetInflightFD, make([]byte, 24), []int{mem.FD}},
	} {
		if _, err := c.Call(m.req, m.pl, m.fds...); !errors.Is(err, hostile.ErrNack) {
			t.Errorf("%s: %v, want refused", m.what, err)
		}
	}
	if n := fdCount(t, h); n != fdsUp {
		t.Errorf("messages with fds attached left vmqd with %d fds, %d before them", n, fdsUp)
	}

	// The memory table swapped under traffic: one region, then eight.
	var regions []*hostile.Mem
	for i := range vhostuser.MaxMemRegions - 1 {
		m, err := hostile.NewMem(4096)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		m.GPA, m.UVA = 0x2_0000_0000+uint64(i)<<20, 0x7f00_0000_0000+uint64(i)<<20
		regions = append(regions, m)
	}
	h.attackerFlow(t, 2000)
	rx := d.RX()
	for i := range 30 {
		mems := []*hostile.Mem{d.Mem}
		if i%2 == 0 {
			mems = append(mems, regions...)
		}
		if err := c.MemTable(mems...); err != nil {
			t.Fatalf("memory table of %d regions: %v", len(mems), err)
		}
		rx.PostRX()
		d.KickRing(0)
	}
	from := rx.UsedIdx()
	testenv.Eventually(t, "frames delivered after 30 memory tables", func() (bool, string) {
		rx.PostRX()
		d.KickRing(0)
		if s, err := h.snapshot(); err == nil && portOf(s, a.name).Broken != "" {
			t.Fatalf("device broken: %s", portOf(s, a.name).Broken)
		}
		return rx.UsedIdx()-from >= 16, fmt.Sprintf("%d frames", rx.UsedIdx()-from)
	})
	if n, m := fdCount(t, h), memfdMaps(t, h); n != fdsUp || m != mapsUp {
		t.Errorf("after 30 memory tables vmqd has %d fds and %d attacker mappings, %d and %d before", n, m, fdsUp, mapsUp)
	}
	// The ring layout switched under traffic: the split rings in memory
	// read as packed ones and back (whatever vmqd makes of them, it may
	// break this device only).
	for i := range 10 {
		f := d.Features
		if i%2 == 0 {
			f |= virtio.FRingPacked
		}
		if _, err := c.U64(vhostuser.ReqSetFeatures, f); err != nil {
			t.Fatalf("SET_FEATURES %#x: %v", f, err)
		}
		rx.PostRX()
		d.KickRing(0)
		d.KickRing(1)
	}
	if s, err := h.snapshot(); err == nil {
		t.Logf("after 10 layout switches: broken %q", portOf(s, a.name).Broken)
	}
	d.Close()

	// Requests that end the connection; the next front-end gets the port.
	many := make([]int, 200)
	for i := range many {
		many[i] = newFD()
	}
	for _, m := range []struct {
		what string
		req  vhostuser.Request
		fds  []int
	}{
		{"GET_INFLIGHT_FD (not offered)", vhostuser.ReqGetInflightFD, nil},
		{"GET_FEATURES with 200 fds", vhostuser.ReqGetFeatures, many},
		{"SET_MEM_TABLE with 9 fds", vhostuser.ReqSetMemTable, many[:vhostuser.MaxMemRegions+1]},
	} {
		c := a.conn()
		if err := c.WriteRaw(hostile.Message(m.req, vhostuser.FlagVersion, make([]byte, 0)), m.fds...); err != nil {
			t.Fatalf("%s: %v", m.what, err)
		}
		if err := c.WaitHangup(messageTimeout); err != nil {
			t.Errorf("%s: %v", m.what, err)
		}
		c.Close()
	}

	// A packed device: ring sizes that are not powers of 2 are refused.
	p := a.device(hostile.Config{Packed: true, NoBuffers: true})
	if err := p.Negotiate(); err != nil {
		t.Fatal(err)
	}
	if p.Features&virtio.FRingPacked == 0 {
		t.Fatalf("RING_PACKED not negotiated (features %#x)", p.Features)
	}
	for _, num := range []uint32{100, 3, 32767} {
		if err := p.C.State(vhostuser.ReqSetVringNum, 0, num); !errors.Is(err, hostile.ErrNack) {
			t.Errorf("packed ring size %d: %v, want refused", num, err)
		}
	}
	expectReleased(t, h, p, before)
}

func u64(v uint64) []byte {
	b := make([]byte, vhostuser.U64Len)
	vhostuser.EncodeU64(b, v)
	return b
}
