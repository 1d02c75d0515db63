package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/internal/netnstest"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// cniRuntime invokes the built vmq-cni the way a container runtime does:
// CNI_* in the environment, the network config on stdin, the result or
// the error as JSON on stdout.
type cniRuntime struct {
	t     *testing.T
	bin   string
	netns string // a real network namespace's path
}

type cniCall struct {
	cmd, containerID, ifname, args string
	conf                           map[string]any
}

type cniOut struct {
	code   int // exit status
	stdout []byte
	err    struct {
		Code uint   `json:"code"`
		Msg  string `json:"msg"`
	}
}

func (r *cniRuntime) call(c cniCall) cniOut {
	r.t.Helper()
	conf, err := json.Marshal(c.conf)
	if err != nil {
		r.t.Fatal(err)
	}
	cmd := exec.Command(r.bin)
	cmd.Env = []string{"CNI_COMMAND=" + c.cmd, "CNI_CONTAINERID=" + c.containerID, "CNI_NETNS=" + r.netns,
		"CNI_IFNAME=" + c.ifname, "CNI_PATH=" + filepath.Dir(r.bin), "CNI_ARGS=" + c.args, "PATH=/usr/bin:/bin"}
	cmd.Stdin = strings.NewReader(string(conf))
	var out cniOut
	out.stdout, err = cmd.Output()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		out.code = ee.ExitCode()
		if jerr := json.Unmarshal(out.stdout, &out.err); jerr != nil {
			r.t.Fatalf("vmq-cni %s exit %d with no CNI error on stdout: %q, stderr %q", c.cmd, out.code, out.stdout, ee.Stderr)
		}
	case err != nil:
		r.t.Fatalf("vmq-cni %s: %v", c.cmd, err)
	}
	return out
}

type cniResult struct {
	CNIVersion string `json:"cniVersion"`
	Interfaces []struct {
		Name       string `json:"name"`
		Mac        string `json:"mac"`
		Sandbox    string `json:"sandbox"`
		SocketPath string `json:"socketPath"`
	} `json:"interfaces"`
}

// mustOK fails unless the call succeeded; it returns the parsed result.
func (o cniOut) mustOK(t *testing.T, what string) cniResult {
	t.Helper()
	if o.code != 0 {
		t.Fatalf("%s: exit %d, CNI error %d %q", what, o.code, o.err.Code, o.err.Msg)
	}
	var res cniResult
	if len(o.stdout) > 0 {
		if err := json.Unmarshal(o.stdout, &res); err != nil {
			t.Fatalf("%s: result %q: %v", what, o.stdout, err)
		}
	}
	return res
}

// mustFail fails unless the call failed with code and a message naming want.
func (o cniOut) mustFail(t *testing.T, what string, code uint, want string) {
	t.Helper()
	if o.code == 0 || o.err.Code != code || !strings.Contains(o.err.Msg, want) {
		t.Fatalf("%s: exit %d, CNI error %d %q; want code %d naming %q", what, o.code, o.err.Code, o.err.Msg, code, want)
	}
}

// vmq-cni against a running vmqd, called as a runtime calls it: ADD makes
// a port a guest attaches to and exchanges traffic through with the wire
// (exact counts both ways); ADD again returns the same port; CHECK
// passes; the port survives a vmqd restart (state file) and a DEL after
// it removes it and only it; DEL again succeeds; CHECK after DEL fails;
// MAC in use, VLAN not allowed and vmqd down are CNI errors naming the
// cause, and a failed ADD leaves nothing behind.
func TestCNIPluginAgainstVmqd(t *testing.T) {
	b := newBed(t)
	b.cfg.StateFile = filepath.Join(b.Dir, "state", "ports.json")
	b.cfg.API.AllowedVLANs = []int{0, 100}
	b.cfg.KeepSteeringOnExit = true
	d := b.start()
	sandbox := netnstest.New(t)
	rt := &cniRuntime{t: t, bin: buildTool(t, "../vmq-cni", "vmq-cni"), netns: filepath.Join("/run/netns", sandbox.Name)}
	netconf := func(version string, vlan int) map[string]any {
		return map[string]any{"cniVersion": version, "name": "vmq-test", "type": "vmq-cni",
			"apiSocket": b.cfg.API.Socket, "socketDir": b.Dir, "socketMode": "0600", "vlan": vlan,
			"limits": map[string]any{"rx_pps": 5000000}}
	}
	ctl := control.NewClient(b.cfg.API.Socket)
	defer ctl.Close()
	ctx := context.Background()

	// VERSION and STATUS.
	out := rt.call(cniCall{cmd: "VERSION", conf: map[string]any{"cniVersion": "1.1.0"}})
	out.mustOK(t, "VERSION")
	if s := string(out.stdout); !strings.Contains(s, `"1.0.0"`) || !strings.Contains(s, `"1.1.0"`) {
		t.Fatalf("VERSION: %s", s)
	}
	rt.call(cniCall{cmd: "STATUS", conf: netconf("1.1.0", 0)}).mustOK(t, "STATUS with vmqd up")

	// ADD, twice: one port, the same answer.
	add := cniCall{cmd: "ADD", containerID: "sandbox-a", ifname: "net1", conf: netconf("1.1.0", 0)}
	res := rt.call(add).mustOK(t, "ADD")
	if len(res.Interfaces) != 1 {
		t.Fatalf("ADD result: %+v", res)
	}
	iface := res.Interfaces[0]
	if iface.Name != "net1" || iface.Sandbox != rt.netns || filepath.Dir(iface.SocketPath) != b.Dir || res.CNIVersion != "1.1.0" {
		t.Fatalf("ADD result interface: %+v (version %s)", iface, res.CNIVersion)
	}
	if again := rt.call(add).mustOK(t, "ADD again"); again.Interfaces[0] != iface {
		t.Fatalf("ADD again returned %+v, first %+v", again.Interfaces[0], iface)
	}
	name := strings.TrimSuffix(filepath.Base(iface.SocketPath), ".sock")
	vms, err := ctl.ListVMs(ctx)
	if err != nil || len(vms) != 1 || vms[0].Name != name || vms[0].MAC != iface.Mac || vms[0].Source != control.SourceAPI ||
		vms[0].Limits.RxPPS != 5000000 {
		t.Fatalf("vmqd's VMs after two ADDs: %+v, %v", vms, err)
	}
	if hw := mustMAC(iface.Mac); hw[0]&0x02 == 0 || hw[0]&0x01 != 0 {
		t.Fatalf("generated MAC %s is not locally administered unicast", iface.Mac)
	}

	// A guest on the returned socket: exact counts from the wire, and a
	// real ping answered through the port (ARP and ICMP both ways).
	g := b.guest(name, iface.Mac, "10.0.0.21", true)
	waitPorts(t, d, 1)
	b.Send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(iface.Mac)}}, Size: 128, Stream: 1}, 700)
	waitStream(t, "CNI port", g, 1, 700)
	testenv.RequireCommand(t, "ping")
	pout, err := b.Wire.Command("ping", "-c", "5", "-i", "0.05", "-W", "2", "10.0.0.21").CombinedOutput()
	if err != nil || !strings.Contains(string(pout), " 0% packet loss") {
		t.Fatalf("ping the CNI port's guest: %v\n%s", err, pout)
	}
	if st := g.Stats(); st.ICMPReplies != 5 {
		t.Fatalf("guest answered %d pings, want 5", st.ICMPReplies)
	}

	check := cniCall{cmd: "CHECK", containerID: "sandbox-a", ifname: "net1", conf: netconf("1.1.0", 0)}
	check.conf["prevResult"] = json.RawMessage(rt.call(add).stdout)
	rt.call(check).mustOK(t, "CHECK")

	// Errors naming their cause, and nothing made.
	other := cniCall{cmd: "ADD", containerID: "sandbox-b", ifname: "net1", args: "IgnoreUnknown=1;MAC=" + iface.Mac, conf: netconf("1.1.0", 0)}
	rt.call(other).mustFail(t, "ADD with a MAC in use", 101, "MAC in use")
	rt.call(cniCall{cmd: "ADD", containerID: "sandbox-b", ifname: "net1", conf: netconf("1.1.0", 300)}).
		mustFail(t, "ADD on VLAN 300", 102, "VLAN 300 not allowed")
	// A second sandbox on VLAN 100 with the MAC from CNI_ARGS, over CNI 1.0.
	other.conf, other.args = netconf("1.0.0", 100), "IgnoreUnknown=1;MAC=02:aa:00:00:00:01"
	resB := rt.call(other).mustOK(t, "ADD sandbox-b")
	if resB.Interfaces[0].Mac != "02:aa:00:00:00:01" || resB.CNIVersion != "1.0.0" {
		t.Fatalf("sandbox-b: %+v", resB)
	}

	// vmqd restarts between ADD and DEL: the ports come back from the
	// state file with their slots, the guest reconnects and receives.
	before, _ := ctl.GetVM(ctx, name)
	if err := d.stop(ctx); err != nil {
		t.Fatal(err)
	}
	down := rt.call(cniCall{cmd: "ADD", containerID: "sandbox-c", ifname: "net1", conf: netconf("1.1.0", 0)})
	down.mustFail(t, "ADD with vmqd down", 11, "vmqd is down")
	rt.call(cniCall{cmd: "STATUS", conf: netconf("1.1.0", 0)}).mustFail(t, "STATUS with vmqd down", 50, "vmqd is down")
	rt.call(cniCall{cmd: "DEL", containerID: "sandbox-a", ifname: "net1", conf: netconf("1.1.0", 0)}).
		mustFail(t, "DEL with vmqd down", 11, "vmqd is down")
	d = b.start()
	after, err := ctl.GetVM(ctx, name)
	if err != nil || after.Slot != before.Slot || after.Source != control.SourceAPI || after.MAC != iface.Mac {
		t.Fatalf("after restart: %+v, %v; before %+v", after.VMInfo, err, before.VMInfo)
	}
	vms, _ = ctl.ListVMs(ctx)
	if len(vms) != 2 {
		t.Fatalf("after restart: %d VMs, want the two CNI ports (nothing from the failed ADD)", len(vms))
	}
	waitPorts(t, d, 1)
	b.Send(pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: mustMAC(iface.Mac)}}, Size: 128, Stream: 2}, 400)
	waitStream(t, "CNI port after restart", g, 2, 400)
	rt.call(check).mustOK(t, "CHECK after restart")

	// DEL removes exactly sandbox-a's port; again is fine; CHECK fails.
	del := cniCall{cmd: "DEL", containerID: "sandbox-a", ifname: "net1", conf: netconf("1.1.0", 0)}
	rt.call(del).mustOK(t, "DEL")
	vms, _ = ctl.ListVMs(ctx)
	if len(vms) != 1 || vms[0].MAC != "02:aa:00:00:00:01" {
		t.Fatalf("after DEL: %+v, want only sandbox-b's port", vms)
	}
	if _, err := os.Stat(iface.SocketPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket %s after DEL: %v", iface.SocketPath, err)
	}
	rt.call(del).mustOK(t, "DEL again")
	rt.call(check).mustFail(t, "CHECK after DEL", 103, "gone")
	saved, err := control.LoadState(b.cfg.StateFile)
	if err != nil || len(saved) != 1 || saved[0].MAC != "02:aa:00:00:00:01" {
		t.Fatalf("state file after DEL: %+v, %v", saved, err)
	}
	// Neither the failed ADDs nor the DEL left a socket behind.
	if ents, _ := filepath.Glob(filepath.Join(b.Dir, "cni-*.sock")); len(ents) != 1 || ents[0] != resB.Interfaces[0].SocketPath {
		t.Fatalf("port sockets left: %v, want only sandbox-b's", ents)
	}

	// The generated MAC is the sandbox's: a new ADD for it gets it back.
	if res := rt.call(add).mustOK(t, "ADD after DEL"); res.Interfaces[0].Mac != iface.Mac {
		t.Fatalf("ADD after DEL: MAC %s, first %s", res.Interfaces[0].Mac, iface.Mac)
	}
}
