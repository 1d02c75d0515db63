package control

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startAPI serves a started controller's API on a unix socket in a temp
// dir and returns a client for it.
func startAPI(t *testing.T, e *env) (*Client, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := ListenUnix(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(e.ctl, slog.New(slog.NewTextHandler(io.Discard, nil)))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	c := NewClient(sock)
	t.Cleanup(c.Close)
	return c, sock
}

func startedEnv(t *testing.T) (*env, string) {
	dir := t.TempDir()
	e := newEnv(t, testConfig(t, dir), nil)
	if _, err := e.ctl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return e, dir
}

func TestAPISocketMode(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []os.FileMode{0o600, 0o660} {
		sock := filepath.Join(dir, "m.sock")
		l, err := ListenUnix(sock, mode)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != mode {
			t.Errorf("socket mode = %v, want %v", st.Mode(), mode)
		}
		l.Close()
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket file left after Close: %v", err)
		}
	}
}

func TestListenUnixStaleAndLive(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	// A stale socket (its listener gone without unlinking) is replaced.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, err := ListenUnix(sock, 0o600)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l2.Close()
	// A live one is not.
	go func() {
		for {
			c, err := l2.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, err := ListenUnix(sock, 0o600); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second listener on a live socket: %v", err)
	}
	// A regular file is never removed.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep"), 0o600)
	if _, err := ListenUnix(file, 0o600); err == nil {
		t.Error("listened over a regular file")
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Error("regular file clobbered")
	}
}

func TestAPIListShowStatusStats(t *testing.T) {
	e, _ := startedEnv(t)
	c, _ := startAPI(t, e)
	ctx := context.Background()
	vms, err := c.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 3 || vms[0].Name != "a" || vms[0].Slot != 1 || vms[2].MAC != "02:00:00:00:00:03" || vms[1].State != StateRunning {
		t.Errorf("list = %+v", vms)
	}
	d, err := c.GetVM(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "b" || d.Stats == nil || d.Stats.RxPackets != 20 || d.Port == nil || !d.Port.Connected || len(d.Sockets) != 1 {
		t.Errorf("show b = %+v", d)
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.NIC.Name != "veth0" || len(st.Workers) != 2 || st.VMs != 3 || st.VMsRunning != 3 || st.SlotsMax != MaxVMs {
		t.Errorf("status = %+v", st)
	}
	snap, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Filter.Redirected != 100 || len(snap.VMs) != 3 || snap.VMs[2].DropsByReason["virtqueue_full"] != 1 {
		t.Errorf("stats = %+v", snap)
	}
}

func TestAPIAddRemoveLeavesOthers(t *testing.T) {
	e, dir := startedEnv(t)
	c, _ := startAPI(t, e)
	ctx := context.Background()
	before := e.ft.snapshot()
	calls := len(e.dp.calls)

	info, err := c.AddVM(ctx, VMConfig{Name: "new", MAC: "02:00:00:00:AA:01", VLAN: 12, Socket: dir + "/new.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if info.Slot != 4 || info.MAC != "02:00:00:00:aa:01" || info.Mode != ModeServer || info.QueuePairs != 1 || info.Source != SourceAPI || info.State != StateRunning {
		t.Errorf("added = %+v", info)
	}
	kNew := info.Key()
	after := e.ft.snapshot()
	if after[kNew] != 4 || len(after) != len(before)+1 {
		t.Errorf("table after add = %v", after)
	}
	for k, s := range before {
		if after[k] != s {
			t.Errorf("add changed %s: %d → %d", k, s, after[k])
		}
	}
	if err := c.RemoveVM(ctx, "new"); err != nil {
		t.Fatal(err)
	}
	if got := e.ft.snapshot(); len(got) != len(before) {
		t.Errorf("table after remove = %v", got)
	}
	if got := e.dp.calls[calls:]; len(got) != 2 || got[0] != "add new slot 4" || got[1] != "remove new" {
		t.Errorf("dataplane calls = %v, want only the new VM's", got)
	}
	if err := c.RemoveVM(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	// b's slot 2 is reused by the next VM.
	info, err = c.AddVM(ctx, VMConfig{Name: "new2", MAC: "02:00:00:00:AA:02", Socket: dir + "/new2.sock"})
	if err != nil || info.Slot != 2 {
		t.Errorf("reuse: %+v %v", info, err)
	}
	vms, _ := c.ListVMs(ctx)
	if len(vms) != 3 {
		t.Errorf("list = %+v", vms)
	}
}

func TestAPIBadInput(t *testing.T) {
	e, dir := startedEnv(t)
	c, sock := startAPI(t, e)
	ctx := context.Background()
	raw := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	t.Cleanup(raw.CloseIdleConnections)
	post := func(body string) (int, string) {
		resp, err := raw.Post("http://vmqd/v1/vms", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("content type %q", ct)
		}
		return resp.StatusCode, string(b)
	}
	ok := `{"name":"n","mac":"02:00:00:00:aa:01","socket":"` + dir + `/n.sock"}`
	for _, tc := range []struct {
		body   string
		status int
		want   string
	}{
		{`{"name":`, 400, "bad JSON"},
		{`[1,2]`, 400, "bad JSON"},
		{`{"name":"n","colour":"red"}`, 400, `unknown field \"colour\"`},
		{ok + `{}`, 400, "trailing data"},
		{`{"name":"n","mac":"02:00:zz:00:00:01","socket":"` + dir + `/n.sock"}`, 400, `vm.mac: \"02:00:zz:00:00:01\" is not a MAC address`},
		{`{"name":"n","mac":"ff:ff:ff:ff:ff:ff","vlan":5000,"socket":"rel.sock","queue_pairs":9}`, 400, `vm.vlan: 5000`},
		{`{"name":"n","mac":"02:00:00:00:aa:01","socket":"` + dir + `/api.sock"}`, 400, "is the API socket"},
		{`{"name":"a","mac":"02:00:00:00:aa:01","socket":"` + dir + `/n.sock"}`, 409, `VM \"a\" already exists`},
		{`{"name":"n","mac":"02:00:00:00:00:01","socket":"` + dir + `/n.sock"}`, 409, `is VM \"a\"'s`},
		{`{"name":"n","mac":"02:00:00:00:aa:01","socket":"` + dir + `/b.sock"}`, 409, `is VM \"b\"'s`},
		{`{"name":"n","mac":"02:00:00:00:aa:01","socket":"` + dir + `/n.sock","x":"` + strings.Repeat("x", 70000) + `"}`, 413, "larger than"},
	} {
		status, body := post(tc.body)
		if status != tc.status || !strings.Contains(body, tc.want) || !strings.Contains(body, `"error"`) {
			t.Errorf("POST %.80s → %d %s\nwant %d containing %s", tc.body, status, body, tc.status, tc.want)
		}
	}
	// The multi-error case lists each field.
	_, err := c.AddVM(ctx, VMConfig{Name: "n", MAC: "ff:ff:ff:ff:ff:ff", VLAN: 5000, Socket: "rel.sock", QueuePairs: 9})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 400 || len(ae.Fields) != 4 {
		t.Fatalf("AddVM invalid = %#v", err)
	}
	for i, f := range []string{"vm.mac", "vm.vlan", "vm.socket", "vm.queue_pairs"} {
		if ae.Fields[i].Field != f {
			t.Errorf("fields[%d] = %+v, want %s", i, ae.Fields[i], f)
		}
	}
	if err := c.RemoveVM(ctx, "nope"); !errors.As(err, &ae) || ae.Status != 404 || !strings.Contains(ae.Message, "no such VM") {
		t.Errorf("remove unknown = %v", err)
	}
	if _, err := c.GetVM(ctx, "nope"); !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("show unknown = %v", err)
	}
	resp, err := raw.Get("http://vmqd/v2/whatever")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("unknown path → %d", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodPut, "http://vmqd/v1/vms", nil)
	resp, err = raw.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("PUT /v1/vms → %d", resp.StatusCode)
	}
	// None of that touched the running VMs.
	if vms := e.ctl.VMs(); len(vms) != 3 || len(e.ft.snapshot()) != 3 {
		t.Errorf("bad input changed state: %v", vms)
	}
}

func TestAPIDataplaneFailure(t *testing.T) {
	e, dir := startedEnv(t)
	c, _ := startAPI(t, e)
	ctx := context.Background()
	e.dp.failAdd["x"] = errBoom
	var ae *APIError
	_, err := c.AddVM(ctx, testVM(dir, "x", 9))
	if !errors.As(err, &ae) || ae.Status != 500 || !strings.Contains(ae.Message, "boom") {
		t.Errorf("dataplane add failure = %v", err)
	}
	if _, ok := e.ctl.VM("x"); ok {
		t.Error("failed VM registered")
	}
	// Filter set failure undoes the dataplane add.
	e.ft.failSet = errBoom
	_, err = c.AddVM(ctx, testVM(dir, "y", 10))
	if !errors.As(err, &ae) || ae.Status != 500 {
		t.Errorf("filter failure = %v", err)
	}
	e.ft.failSet = nil
	if _, ok := e.dp.vms["y"]; ok {
		t.Error("y left in the dataplane")
	}
	if _, ok := e.ctl.VM("y"); ok {
		t.Error("y registered")
	}
	// A failed removal keeps the VM (failed) and its slot reserved.
	e.dp.failRemove["a"] = errBoom
	if err := c.RemoveVM(ctx, "a"); err == nil {
		t.Fatal("remove succeeded")
	}
	if a := mustVM(t, e.ctl, "a"); a.State != StateFailed || !strings.Contains(a.Error, "boom") {
		t.Errorf("a after failed removal = %+v", a)
	}
	if info, err := c.AddVM(ctx, testVM(dir, "z", 11)); err != nil || info.Slot == 1 {
		t.Errorf("z = %+v %v; must not get failed a's slot 1", info, err)
	}
	delete(e.dp.failRemove, "a")
	// bpf.Filter fails deleting a missing entry: the retry must not try.
	e.ft.failDel = errBoom
	if err := c.RemoveVM(ctx, "a"); err != nil {
		t.Errorf("retry remove: %v", err)
	}
}

func TestAPIBeforeStart(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, testConfig(t, dir), nil)
	c, _ := startAPI(t, e)
	var ae *APIError
	if _, err := c.AddVM(context.Background(), testVM(dir, "x", 9)); !errors.As(err, &ae) || ae.Status != 503 {
		t.Errorf("add before start = %v", err)
	}
}
