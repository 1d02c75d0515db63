package ntuple

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
)

// TestLayoutMatchesUAPI compiles a C program against the kernel's
// <linux/ethtool.h> and compares every size and offset the encoder uses.
func TestLayoutMatchesUAPI(t *testing.T) {
	cc := ""
	for _, c := range []string{"cc", "gcc", "clang"} {
		if p, err := exec.LookPath(c); err == nil {
			cc = p
			break
		}
	}
	if cc == "" {
		testenv.Skip(t, "no C compiler to read <linux/ethtool.h>")
	}
	bin := filepath.Join(t.TempDir(), "layout")
	if out, err := exec.Command(cc, "-o", bin, "testdata/layout.c").CombinedOutput(); err != nil {
		testenv.Skip(t, "compile against <linux/ethtool.h> (install linux-libc-dev): %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		v, _ := strconv.Atoi(f[1])
		got[f[0]] = v
	}
	want := map[string]int{
		"rxnfc_size": rxnfcSize, "off_flow_type": offFlowType, "off_data": offData, "off_fs": offFS,
		"off_rule_cnt": offRuleCnt, "off_rule_locs": offRuleLocs, "fs_size": fsSize,
		"fs_h_u": fsHU, "fs_h_ext": fsHExt, "fs_m_u": fsMU, "fs_m_ext": fsMExt,
		"fs_ring_cookie": fsRingCookie, "fs_location": fsLocation,
		"ext_vlan_tci": extVlanTCI, "ether_dst": etherDstOff,
		"ETHER_FLOW": etherFlow, "FLOW_EXT": flowExt,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s: kernel %d (present %v), ntuple %d", k, g, ok, v)
		}
	}
}

// TestEncode checks the bytes of one rule: dst MAC and its mask, VLAN in
// the extension with the VID mask, queue and location.
func TestEncode(t *testing.T) {
	mac := []byte{0x02, 0, 0, 0, 0, 0x0a}
	var b [rxnfcSize]byte
	r := Rule{MAC: mac, VLAN: 100, Queue: 3, Location: 517}
	if err := r.encode(&b); err != nil {
		t.Fatal(err)
	}
	ne := binary.NativeEndian
	fs := b[offFS:]
	if ne.Uint32(b[offCmd:]) != cmdInsert {
		t.Errorf("cmd %#x", ne.Uint32(b[offCmd:]))
	}
	if ft := ne.Uint32(fs[fsFlowType:]); ft != etherFlow|flowExt {
		t.Errorf("flow type %#x", ft)
	}
	if !bytes.Equal(fs[fsHU:fsHU+6], mac) || !bytes.Equal(fs[fsMU:fsMU+6], []byte{255, 255, 255, 255, 255, 255}) {
		t.Errorf("dst %x mask %x", fs[fsHU:fsHU+6], fs[fsMU:fsMU+6])
	}
	if !bytes.Equal(fs[fsHU+6:fsHExt], make([]byte, fsHExt-fsHU-6)) {
		t.Error("source MAC or ethertype set: the rule must match dst MAC only")
	}
	if v := binary.BigEndian.Uint16(fs[fsHExt+extVlanTCI:]); v != 100 {
		t.Errorf("vlan tci %d", v)
	}
	if m := binary.BigEndian.Uint16(fs[fsMExt+extVlanTCI:]); m != 0x0fff {
		t.Errorf("vlan mask %#x", m)
	}
	if q := ne.Uint64(fs[fsRingCookie:]); q != 3 {
		t.Errorf("ring cookie %d", q)
	}
	if l := ne.Uint32(fs[fsLocation:]); l != 517 {
		t.Errorf("location %d", l)
	}
	r.VLAN = 0
	r.encode(&b)
	if ft := ne.Uint32(fs[fsFlowType:]); ft != etherFlow {
		t.Errorf("untagged flow type %#x", ft)
	}
	if err := (Rule{MAC: mac[:5]}).encode(&b); err == nil {
		t.Error("5-byte MAC encoded")
	}
	if err := (Rule{MAC: mac, VLAN: 4095}).encode(&b); err == nil {
		t.Error("VLAN 4095 encoded")
	}
	if got := r.Command("eth0"); got != "ethtool -N eth0 flow-type ether dst 02:00:00:00:00:0a action 3 loc 517" {
		t.Errorf("command %q", got)
	}
}

func TestLocations(t *testing.T) {
	if l, err := LocationOf(5); err != nil || l != FirstLocation+5 || !Owned(l) {
		t.Errorf("slot 5: %d %v", l, err)
	}
	for _, s := range []uint32{0, NumLocations} {
		if _, err := LocationOf(s); err == nil {
			t.Errorf("slot %d has a location", s)
		}
	}
	if Owned(FirstLocation) || Owned(10) || Owned(FirstLocation+NumLocations) {
		t.Error("a location outside vmq's range is owned")
	}
}

// TestVethRefuses: veth has no flow rules; the error says so, typed.
func TestVethRefuses(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netnstest.New(t)
	other := netnstest.New(t)
	a, _ := netnstest.NewVethPair(t, ns, other, netnstest.VethOptions{Queues: 2})
	err := ns.Do(func() error {
		err := Insert(a.Name, Rule{MAC: []byte{2, 0, 0, 0, 0, 1}, Queue: 1, Location: FirstLocation + 1})
		if !errors.Is(err, ErrNotSupported) {
			t.Errorf("insert on veth: %v, want ErrNotSupported", err)
		}
		if _, err := Locations(a.Name); !errors.Is(err, ErrNotSupported) {
			t.Errorf("list on veth: %v, want ErrNotSupported", err)
		}
		if err := Delete(a.Name, FirstLocation+1); !errors.Is(err, ErrNotSupported) {
			t.Errorf("delete on veth: %v, want ErrNotSupported", err)
		}
		if err := Insert("nosuchdev0", Rule{MAC: []byte{2, 0, 0, 0, 0, 1}}); err == nil || errors.Is(err, ErrNotSupported) {
			t.Errorf("insert on a missing device: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
