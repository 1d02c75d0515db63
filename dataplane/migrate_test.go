package dataplane

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	tbed "github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// TestBuildRARP compares the announce frame with QEMU's
// (net/announce.c announce_self_create) for the same MAC.
func TestBuildRARP(t *testing.T) {
	mac := MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	want, _ := hex.DecodeString("ffffffffffff525400123456" + "8035" +
		"0001" + "0800" + "06" + "04" + "0003" +
		"525400123456" + "00000000" + "525400123456" + "00000000")
	want = append(want, make([]byte, rarpLen-len(want))...)
	got := bytes.Repeat([]byte{0xee}, rarpLen+8)
	buildRARP(got, mac)
	if !bytes.Equal(got[:rarpLen], want) {
		t.Fatalf("RARP\n got %x\nwant %x", got[:rarpLen], want)
	}
	if got[rarpLen] != 0xee {
		t.Fatal("wrote past the frame")
	}
}

// TestStandbyPortTakesOver drives a migration with two Go guests: the
// destination connects to the standby port while the source runs,
// traffic from the wire moves to it when its rings start, the source's
// leaving hands it the VM, and an announce leaves as a tagged RARP on the
// VM's VLAN (a MAC that is not the VM's is refused).
func TestStandbyPortTakesOver(t *testing.T) {
	tb := newTestbed(t, 1)
	const mac = "02:00:00:00:00:31"
	src := tb.addVM("vm1", 1, mac, 7, 1, "")
	capture := tb.Capture()
	dstSock := filepath.Join(tb.Dir, "vm1.dst.sock")
	if err := tb.dp.PrepareMigration(context.Background(), "vm1", dstSock, false); err != nil {
		t.Fatal(err)
	}
	if err := tb.dp.PrepareMigration(context.Background(), "vm1", dstSock+"2", false); err == nil {
		t.Fatal("a second standby port prepared")
	}
	flow := pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(mac), VLAN: 7}}, Size: 64, Stream: 1}
	tb.send(flow, 100)
	tbed.WaitRx(t, "source", src, 100)

	dst := tbed.DialGuest(t, "destination", dstSock, tbed.GuestConfig(mac, 1, ""))
	testenv.Eventually(t, "standby rings running", func() (bool, string) {
		p, ok := portOf(tb.dp.Snapshot(), "vm1", true)
		return ok && p.Connected && len(p.RingSizes) == 2 && p.RingSizes[0] > 0, fmt.Sprintf("%+v", p)
	})
	testenv.Eventually(t, "standby started", func() (bool, string) {
		tb.dp.mu.RLock()
		defer tb.dp.mu.RUnlock()
		m := tb.dp.vms["vm1"].mig
		return m != nil && m.h.started.Load(), "not yet"
	})
	tb.send(flow, 100)
	tbed.WaitRx(t, "destination", dst, 100)
	if got := src.Stats().RxFrames; got != 100 {
		t.Fatalf("source received %d frames after the switch-over, want 100 before it", got)
	}

	// The source leaves: the standby port becomes the VM's.
	src.Close()
	testenv.Eventually(t, "standby port promoted", func() (bool, string) {
		s := tb.dp.Snapshot()
		p, ok := portOf(s, "vm1", false)
		_, standby := portOf(s, "vm1", true)
		return ok && !standby && p.Path == dstSock, fmt.Sprintf("%+v", s.Ports)
	})

	h := &portHandler{dp: tb.dp, slot: 1, name: "vm1"}
	if err := h.Announce(nil, mustMAC("02:00:00:00:00:99")); err == nil {
		t.Fatal("announce for another MAC accepted")
	}
	if err := h.Announce(nil, mustMAC(mac)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "RARP on the wire", func() (bool, string) {
		rarps := capture.Matching(func(f []byte) bool {
			return len(f) >= 64 && bytes.Equal(f[6:12], mustMAC(mac)) && f[12] == 0x81 && f[13] == 0 &&
				binary.BigEndian.Uint16(f[14:])&0xfff == 7 && f[16] == 0x80 && f[17] == 0x35
		})
		return len(rarps) == 1, fmt.Sprintf("%d tagged RARPs", len(rarps))
	})
	if err := tb.dp.AbortMigration(context.Background(), "vm1"); !errors.Is(err, ErrNoMigration) {
		t.Fatalf("abort without a migration: %v", err)
	}
}
