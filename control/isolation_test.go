package control

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

func TestParseIsolationKeys(t *testing.T) {
	dir := t.TempDir()
	cfg, err := Parse([]byte(sprintf(`
nic: veth0
api: {socket: %[1]s/api.sock}
max_guest_memory: 4GiB
vms:
  - name: web
    mac: 02:00:00:00:00:01
    socket: %[1]s/web.sock
    limits: {rx_pps: 10000, tx_bps: 100000000, flood_pps: 500}
    max_guest_memory: 512MiB
    socket_owner: root
    socket_group: 0
    socket_mode: 0660
    allowed_uids: [0, 1000]
  - name: db
    mac: 02:00:00:00:00:02
    socket: %[1]s/db.sock
    max_guest_memory: 0
    limits: {flood_pps: 0}
  - name: plain
    mac: 02:00:00:00:00:03
    socket: %[1]s/plain.sock
`, dir)))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if cfg.MaxGuestMemory != 4<<30 {
		t.Errorf("global max_guest_memory = %d", cfg.MaxGuestMemory)
	}
	web, db, plain := cfg.VMs[0], cfg.VMs[1], cfg.VMs[2]
	flood := func(v uint64) *uint64 { return &v }
	if !web.Limits.Equal(Limits{RxPPS: 10000, TxBPS: 100000000, FloodPPS: flood(500)}) || web.MaxGuestMemory != 512<<20 ||
		web.SocketOwner != "root" || web.SocketGroup != "0" || web.SocketMode != 0o660 ||
		!reflect.DeepEqual(web.AllowedUIDs, []uint32{0, 1000}) {
		t.Errorf("web = %+v", web)
	}
	if uid, err := web.SocketOwner.UID(); uid != 0 || err != nil {
		t.Errorf("owner root = %d, %v", uid, err)
	}
	if gid, err := web.SocketGroup.GID(); gid != 0 || err != nil {
		t.Errorf("group 0 = %d, %v", gid, err)
	}
	if db.MaxGuestMemory != 0 {
		t.Errorf("db: explicit 0 (no limit) became %d", db.MaxGuestMemory)
	}
	// Storm control: omitted is the default, 0 none, a value itself.
	for _, c := range []struct {
		vm   VMConfig
		want uint64
	}{{web, 500}, {db, 0}, {plain, DefaultFloodPPS}} {
		if got := c.vm.Limits.Dataplane().FloodPPS; got != c.want {
			t.Errorf("%s: flood_pps in force %d, want %d", c.vm.Name, got, c.want)
		}
	}
	if db.Limits.Equal(plain.Limits) {
		t.Error("flood_pps 0 (none) equals an omitted one (the default)")
	}
	if plain.MaxGuestMemory != 4<<30 || plain.SocketMode != DefaultSocketMode || plain.AllowedUIDs != nil ||
		plain.Limits != (Limits{}) {
		t.Errorf("plain (defaults) = %+v", plain)
	}
	if uid, err := plain.SocketOwner.UID(); uid != -1 || err != nil {
		t.Errorf("unset owner = %d, %v; want -1", uid, err)
	}
	if d := Default("eth0"); d.MaxGuestMemory != 64<<30 {
		t.Errorf("built-in max_guest_memory = %v", d.MaxGuestMemory)
	}
}

func TestParseIsolationErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := Parse([]byte(sprintf(`
nic: veth0
api: {socket: %[1]s/api.sock}
vms:
  - name: a
    mac: 02:00:00:00:00:01
    socket: %[1]s/a.sock
    socket_owner: no-such-user-vmq
    socket_group: no-such-group-vmq
    socket_mode: 0400
    allowed_uids: []
  - name: b
    mac: 02:00:00:00:00:02
    socket: %[1]s/b.sock
    mode: client
    socket_owner: 0
`, dir)))
	if err == nil {
		t.Fatal("no error")
	}
	want := []string{"vms[0].socket_owner", "vms[0].socket_group", "vms[0].socket_mode", "vms[0].allowed_uids", "vms[1].mode"}
	var got []string
	for _, fe := range FieldErrors(err) {
		got = append(got, fe.Field)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("fields = %v, want %v\n%v", got, want, err)
	}
	for _, bad := range []string{"max_guest_memory: 4XB", "max_guest_memory: -1GiB", "max_guest_memory: [1]"} {
		_, err := Parse([]byte("nic: veth0\napi: {socket: " + dir + "/api.sock}\n" + bad + "\n"))
		if err == nil || !strings.Contains(err.Error(), "size") {
			t.Errorf("%s: %v", bad, err)
		}
	}
	_, err = Parse([]byte(sprintf("nic: veth0\napi: {socket: %[1]s/api.sock}\nvms: [{name: a, mac: '02:00:00:00:00:01', socket: %[1]s/a.sock, limits: {tx_mbps: 5}}]\n", dir)))
	if err == nil || !strings.Contains(err.Error(), `unknown key "tx_mbps" in a VM's limits`) {
		t.Errorf("unknown limits key: %v", err)
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{
		"4096": 4096, "4GiB": 4 << 30, "1.5GiB": 3 << 29, "512MiB": 512 << 20, "8GB": 8e9,
		"2 TiB": 2 << 40, "1kB": 1000, "3KiB": 3072, "7B": 7,
	} {
		if got, err := ParseByteSize(in); got != want || err != nil {
			t.Errorf("%q = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "GiB", "4 XB", "-1", "1e30TiB", "NaNGiB"} {
		if _, err := ParseByteSize(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	if s := ByteSize(64 << 30).String(); s != "64GiB" {
		t.Errorf("String = %s", s)
	}
	var b ByteSize
	if err := b.UnmarshalJSON([]byte(`"2GiB"`)); err != nil || b != 2<<30 {
		t.Errorf("JSON string: %d %v", b, err)
	}
	if err := b.UnmarshalJSON([]byte(`1024`)); err != nil || b != 1024 {
		t.Errorf("JSON number: %d %v", b, err)
	}
}

// A change of limits alone is applied live; any other new key re-adds.
func TestDiffConfigLimitsLive(t *testing.T) {
	dir := t.TempDir()
	old := testConfig(t, dir)
	n := cloneConfig(old)
	n.VMs[1].Limits = Limits{TxPPS: 5}
	p := DiffConfig(old, n)
	if len(p.Limits) != 1 || p.Limits[0].Name != "b" || len(p.Change)+len(p.Add)+len(p.Remove) != 0 || p.Empty() {
		t.Errorf("limits only: %+v", p)
	}
	for _, mut := range []func(*VMConfig){
		func(v *VMConfig) { v.MaxGuestMemory = 1 << 30 },
		func(v *VMConfig) { v.SocketOwner = "0" },
		func(v *VMConfig) { v.SocketGroup = "0" },
		func(v *VMConfig) { v.SocketMode = 0o660 },
		func(v *VMConfig) { v.AllowedUIDs = []uint32{0} },
	} {
		n := cloneConfig(old)
		mut(&n.VMs[1])
		n.VMs[1].Limits = Limits{RxPPS: 1}
		if p := DiffConfig(old, n); len(p.Change) != 1 || p.Change[0].Name != "b" || len(p.Limits) != 0 {
			t.Errorf("mutation not a change of b: %+v", p)
		}
	}
}

func TestReloadAppliesLimitsLive(t *testing.T) {
	e, _ := startedEnv(t)
	ctx := context.Background()
	next := cloneConfig(e.ctl.Config())
	next.VMs[0].Limits = Limits{RxPPS: 100, TxBPS: 1e6}
	calls := len(e.dp.calls)
	plan, err := e.ctl.Reload(ctx, next)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Limits) != 1 || len(plan.Change) != 0 {
		t.Errorf("plan = %+v", plan)
	}
	if got := e.dp.calls[calls:]; len(got) != 1 || got[0] != "limits a 100/0/0/1000000" {
		t.Errorf("dataplane calls = %v, want one live limits change", got)
	}
	if info, _ := e.ctl.VM("a"); info.Limits != next.VMs[0].Limits || info.State != StateRunning {
		t.Errorf("registry: %+v", info)
	}
}

func TestAPIPatchLimits(t *testing.T) {
	e, _ := startedEnv(t)
	c, _ := startAPI(t, e)
	ctx := context.Background()
	u := func(v uint64) *uint64 { return &v }
	info, err := c.PatchVM(ctx, "b", VMPatch{Limits: &LimitsPatch{TxPPS: u(1000), RxBPS: u(5e6)}})
	if err != nil {
		t.Fatal(err)
	}
	if info.Limits != (Limits{TxPPS: 1000, RxBPS: 5e6}) {
		t.Errorf("patched = %+v", info.Limits)
	}
	// Fields left out keep their value; 0 clears.
	info, err = c.PatchVM(ctx, "b", VMPatch{Limits: &LimitsPatch{TxPPS: u(0), RxPPS: u(7)}})
	if err != nil || info.Limits != (Limits{RxPPS: 7, RxBPS: 5e6}) {
		t.Errorf("second patch = %+v, %v", info.Limits, err)
	}
	// Storm control: the default until set; 0 turns it off.
	if info.Limits.Flood() != DefaultFloodPPS {
		t.Errorf("flood_pps in force %d, want the default %d", info.Limits.Flood(), DefaultFloodPPS)
	}
	info, err = c.PatchVM(ctx, "b", VMPatch{Limits: &LimitsPatch{FloodPPS: u(0)}})
	if err != nil || info.Limits.FloodPPS == nil || info.Limits.Flood() != 0 || info.Limits.RxPPS != 7 {
		t.Errorf("flood_pps 0 = %+v, %v", info.Limits, err)
	}
	info, err = c.PatchVM(ctx, "b", VMPatch{Limits: &LimitsPatch{FloodPPS: u(300)}})
	if err != nil || info.Limits.Flood() != 300 {
		t.Errorf("flood_pps 300 = %+v, %v", info.Limits, err)
	}
	d, err := c.GetVM(ctx, "b")
	if err != nil || !d.Limits.Equal(info.Limits) || d.Stats == nil || d.Stats.Limits.RxPPS != 7 || d.Stats.Limits.RxBPS != 5e6 {
		t.Errorf("show: %+v %+v, %v", d.VMInfo, d.Stats, err)
	}
	var ae *APIError
	if _, err := c.PatchVM(ctx, "nope", VMPatch{Limits: &LimitsPatch{}}); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("unknown VM: %v", err)
	}
	if _, err := c.PatchVM(ctx, "b", VMPatch{}); !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
		t.Errorf("empty patch: %v", err)
	}
}
