package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/vmq/vmq/control"
)

// Plugin-specific CNI error codes (the spec reserves 100 and up).
const (
	ErrVmqdRejected   uint = 100 // vmqd refused the port for another reason
	ErrMACInUse       uint = 101 // another port has this MAC on this VLAN
	ErrVLANNotAllowed uint = 102 // the VLAN is outside the node's api.allowed_vlans (or 0..4094)
	ErrPortMismatch   uint = 103 // the sandbox's port exists but differs (CHECK, or ADD asking another MAC)
)

// Defaults for omitted network config keys.
const (
	defaultSocketDir  = "/run/vmq/ports"
	defaultSocketMode = "0660"
	defaultTimeout    = 10 * time.Second
)

// NetConf is the network config vmq-cni reads on stdin.
type NetConf struct {
	types.PluginConf
	// APISocket is vmqd's API socket.
	APISocket string `json:"apiSocket,omitempty"`
	// SocketDir is where port sockets go: a directory the VMM can reach
	// (KubeVirt and Kata mount it into the launcher).
	SocketDir   string          `json:"socketDir,omitempty"`
	SocketMode  string          `json:"socketMode,omitempty"`
	SocketOwner string          `json:"socketOwner,omitempty"`
	SocketGroup string          `json:"socketGroup,omitempty"`
	AllowedUIDs []uint32        `json:"allowedUIDs,omitempty"`
	VLAN        int             `json:"vlan,omitempty"`
	QueuePairs  int             `json:"queuePairs,omitempty"`
	Limits      control.Limits  `json:"limits,omitempty"`
	Timeout     string          `json:"timeout,omitempty"`
	Runtime     RuntimeConfig   `json:"runtimeConfig,omitempty"`
	Args        *conventionArgs `json:"args,omitempty"`
}

// RuntimeConfig holds the capabilities the runtime fills in.
type RuntimeConfig struct {
	MAC string `json:"mac,omitempty"`
}

type conventionArgs struct {
	CNI struct {
		MAC string `json:"mac,omitempty"`
	} `json:"cni,omitempty"`
}

// envArgs are CNI_ARGS (K=V;K=V).
type envArgs struct {
	types.CommonArgs
	MAC types.UnmarshallableString `json:"mac,omitempty"`
}

func loadConf(args *skel.CmdArgs) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(args.StdinData, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "vmq-cni: cannot decode the network config", err.Error())
	}
	if conf.APISocket == "" {
		conf.APISocket = control.DefaultAPISocket
	}
	if conf.SocketDir == "" {
		conf.SocketDir = defaultSocketDir
	}
	if conf.SocketMode == "" {
		conf.SocketMode = defaultSocketMode
	}
	if conf.QueuePairs == 0 {
		conf.QueuePairs = 1
	}
	bad := func(format string, a ...any) error {
		return types.NewError(types.ErrInvalidNetworkConfig, "vmq-cni: invalid network config: "+fmt.Sprintf(format, a...), "")
	}
	if !filepath.IsAbs(conf.APISocket) || !filepath.IsAbs(conf.SocketDir) {
		return nil, bad("apiSocket %q and socketDir %q must be absolute paths", conf.APISocket, conf.SocketDir)
	}
	if conf.VLAN < 0 || conf.VLAN > 4094 {
		return nil, types.NewError(ErrVLANNotAllowed, fmt.Sprintf("vmq-cni: VLAN %d not allowed: outside 0..4094", conf.VLAN), "")
	}
	if conf.Timeout != "" {
		if _, err := time.ParseDuration(conf.Timeout); err != nil {
			return nil, bad("timeout %q: %v", conf.Timeout, err)
		}
	}
	return conf, nil
}

func (c *NetConf) timeout() time.Duration {
	if d, err := time.ParseDuration(c.Timeout); err == nil && d > 0 {
		return d
	}
	return defaultTimeout
}

// dial is a client of vmqd's API and a context bounded by the timeout;
// done releases both.
func (c *NetConf) dial() (context.Context, *control.Client, func()) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout())
	cl := control.NewClient(c.APISocket)
	return ctx, cl, func() { cl.Close(); cancel() }
}

// portName is the sandbox's port name in vmqd: the same for every call
// about one (container id, interface), so ADD, CHECK and DEL find it.
func portName(containerID, ifname string) string {
	sum := sha256.Sum256([]byte(containerID))
	name := "cni-" + hex.EncodeToString(sum[:6]) + "-"
	if ifnameRE.MatchString(ifname) {
		return name + ifname
	}
	s := sha256.Sum256([]byte(ifname))
	return name + hex.EncodeToString(s[:4])
}

var ifnameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,15}$`)

// generatedMAC is stable for a (sandbox, interface): locally
// administered, unicast.
func generatedMAC(containerID, ifname string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("vmq-cni mac\x00" + containerID + "\x00" + ifname))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// wantMAC picks the MAC: runtimeConfig (the "mac" capability, which
// KubeVirt and Multus fill from the VM spec, so a migrating VM keeps it),
// then args.cni.mac, then CNI_ARGS MAC, then the generated one.
func wantMAC(conf *NetConf, args *skel.CmdArgs) (string, error) {
	var env envArgs
	if err := types.LoadArgs(args.Args, &env); err != nil {
		return "", types.NewError(types.ErrInvalidEnvironmentVariables, "vmq-cni: cannot parse CNI_ARGS", err.Error())
	}
	var convention string
	if conf.Args != nil {
		convention = conf.Args.CNI.MAC
	}
	for _, m := range []string{conf.Runtime.MAC, convention, string(env.MAC)} {
		if m == "" {
			continue
		}
		hw, err := net.ParseMAC(m)
		if err != nil || len(hw) != 6 || hw[0]&1 == 1 {
			return "", types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("vmq-cni: MAC %q is not a unicast Ethernet address", m), "")
		}
		return hw.String(), nil
	}
	return generatedMAC(args.ContainerID, args.IfName).String(), nil
}

func (c *NetConf) vm(name, mac string) (control.VMConfig, error) {
	mode, err := parseMode(c.SocketMode)
	if err != nil {
		return control.VMConfig{}, types.NewError(types.ErrInvalidNetworkConfig, "vmq-cni: invalid network config: socketMode: "+err.Error(), "")
	}
	return control.VMConfig{
		Name: name, MAC: mac, VLAN: c.VLAN, Mode: control.ModeServer, QueuePairs: c.QueuePairs,
		Socket: filepath.Join(c.SocketDir, name+".sock"), Limits: c.Limits,
		SocketOwner: control.IDSpec(c.SocketOwner), SocketGroup: control.IDSpec(c.SocketGroup),
		SocketMode: mode, AllowedUIDs: c.AllowedUIDs,
	}, nil
}

func parseMode(s string) (control.FileMode, error) {
	var m control.FileMode
	if err := m.UnmarshalJSON([]byte(`"` + s + `"`)); err != nil {
		return 0, err
	}
	return m, nil
}

// vmqdError turns an API failure into a CNI error naming the cause.
func vmqdError(conf *NetConf, what string, err error) error {
	var ae *control.APIError
	if !errors.As(err, &ae) {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("vmq-cni: %s: vmqd is down or not answering on %s", what, conf.APISocket), err.Error())
	}
	field := ""
	if len(ae.Fields) > 0 {
		field = ae.Fields[0].Field
	}
	switch {
	case ae.Status == http.StatusConflict && field == "vm.mac":
		return types.NewError(ErrMACInUse, fmt.Sprintf("vmq-cni: %s: MAC in use: %s", what, ae.Message), "")
	case ae.Status == http.StatusBadRequest && field == "vm.vlan":
		return types.NewError(ErrVLANNotAllowed, fmt.Sprintf("vmq-cni: %s: VLAN %d not allowed: %s", what, conf.VLAN, ae.Message), "")
	case ae.Status == http.StatusBadRequest:
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("vmq-cni: %s: vmqd rejects the port: %s", what, ae.Message), "")
	case ae.Status == http.StatusServiceUnavailable:
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("vmq-cni: %s: vmqd cannot take the port now: %s", what, ae.Message), "")
	}
	return types.NewError(ErrVmqdRejected, fmt.Sprintf("vmq-cni: %s: vmqd: %s", what, ae.Message), "")
}

func isNotFound(err error) bool {
	var ae *control.APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

func result(conf *NetConf, args *skel.CmdArgs, info control.VMInfo) error {
	r := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{{
			Name: args.IfName, Mac: info.MAC, Sandbox: args.Netns, SocketPath: info.Socket,
		}},
	}
	return types.PrintResult(r, conf.CNIVersion)
}

// sameSandboxPort: an existing port is this ADD's if it is an API port
// with the MAC and VLAN asked for.
func sameSandboxPort(info control.VMInfo, want control.VMConfig) error {
	if info.Source != control.SourceAPI {
		return types.NewError(ErrVmqdRejected, fmt.Sprintf("vmq-cni: port name %q belongs to vmqd's config, not to a CNI sandbox", info.Name), "")
	}
	if info.MAC != want.MAC || info.VLAN != want.VLAN {
		return types.NewError(ErrPortMismatch, fmt.Sprintf("vmq-cni: the sandbox already has port %q with MAC %s on VLAN %d; asked for MAC %s on VLAN %d",
			info.Name, info.MAC, info.VLAN, want.MAC, want.VLAN), "")
	}
	return nil
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := loadConf(args)
	if err != nil {
		return err
	}
	mac, err := wantMAC(conf, args)
	if err != nil {
		return err
	}
	name := portName(args.ContainerID, args.IfName)
	want, err := conf.vm(name, mac)
	if err != nil {
		return err
	}
	ctx, cl, done := conf.dial()
	defer done()

	// ADD again for the same sandbox (a runtime retry) returns its port.
	if d, err := cl.GetVM(ctx, name); err == nil {
		if err := sameSandboxPort(d.VMInfo, want); err != nil {
			return err
		}
		return result(conf, args, d.VMInfo)
	} else if !isNotFound(err) {
		return vmqdError(conf, "look up the sandbox's port", err)
	}
	if err := os.MkdirAll(conf.SocketDir, 0o755); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("vmq-cni: socket directory %s", conf.SocketDir), err.Error())
	}
	info, err := cl.AddVM(ctx, want)
	if err != nil {
		var ae *control.APIError
		if errors.As(err, &ae) && ae.Status == http.StatusConflict && len(ae.Fields) > 0 && ae.Fields[0].Field == "vm.name" {
			// A concurrent ADD for this sandbox won: return its port.
			d, gerr := cl.GetVM(ctx, name)
			if gerr != nil {
				return vmqdError(conf, "look up the sandbox's port", gerr)
			}
			if err := sameSandboxPort(d.VMInfo, want); err != nil {
				return err
			}
			return result(conf, args, d.VMInfo)
		}
		return vmqdError(conf, "add port "+name, err)
	}
	return result(conf, args, info)
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := loadConf(args)
	if err != nil {
		return err
	}
	name := portName(args.ContainerID, args.IfName)
	ctx, cl, done := conf.dial()
	defer done()
	d, err := cl.GetVM(ctx, name)
	if isNotFound(err) {
		return nil // already gone: DEL is idempotent
	}
	if err != nil {
		return vmqdError(conf, "look up the sandbox's port", err)
	}
	if d.Source != control.SourceAPI {
		return nil // not a port ADD made: leave it
	}
	if err := cl.RemoveVM(ctx, name); err != nil && !isNotFound(err) {
		return vmqdError(conf, "remove port "+name, err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := loadConf(args)
	if err != nil {
		return err
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "vmq-cni: cannot parse prevResult", err.Error())
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "vmq-cni: CHECK needs prevResult", "")
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "vmq-cni: cannot convert prevResult", err.Error())
	}
	var iface *types100.Interface
	for _, i := range prev.Interfaces {
		if i.Name == args.IfName {
			iface = i
		}
	}
	if iface == nil {
		return types.NewError(ErrPortMismatch, fmt.Sprintf("vmq-cni: prevResult has no interface %s", args.IfName), "")
	}
	name := portName(args.ContainerID, args.IfName)
	ctx, cl, done := conf.dial()
	defer done()
	d, err := cl.GetVM(ctx, name)
	if isNotFound(err) {
		return types.NewError(ErrPortMismatch, fmt.Sprintf("vmq-cni: the sandbox's port %q is gone from vmqd", name), "")
	}
	if err != nil {
		return vmqdError(conf, "look up the sandbox's port", err)
	}
	var problems []string
	if d.Source != control.SourceAPI {
		problems = append(problems, "it is a config VM, not a CNI port")
	}
	if !strings.EqualFold(d.MAC, iface.Mac) {
		problems = append(problems, fmt.Sprintf("MAC %s, the result says %s", d.MAC, iface.Mac))
	}
	if d.VLAN != conf.VLAN {
		problems = append(problems, fmt.Sprintf("VLAN %d, the network says %d", d.VLAN, conf.VLAN))
	}
	if d.Socket != iface.SocketPath {
		problems = append(problems, fmt.Sprintf("socket %s, the result says %s", d.Socket, iface.SocketPath))
	}
	if d.State != control.StateRunning {
		problems = append(problems, fmt.Sprintf("state %s", d.State))
	}
	if st, err := os.Stat(d.Socket); err != nil || st.Mode()&os.ModeSocket == 0 {
		problems = append(problems, fmt.Sprintf("no socket at %s", d.Socket))
	}
	if len(problems) > 0 {
		return types.NewError(ErrPortMismatch, fmt.Sprintf("vmq-cni: port %q does not match: %s", name, strings.Join(problems, "; ")), "")
	}
	return nil
}

// cmdStatus (CNI 1.1): ready for ADDs when vmqd answers with its filter
// attached.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := loadConf(args)
	if err != nil {
		return err
	}
	ctx, cl, done := conf.dial()
	defer done()
	st, err := cl.Status(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("vmq-cni: vmqd is down or not answering on %s", conf.APISocket), err.Error())
	}
	if !st.NIC.Attached {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("vmq-cni: vmqd's XDP filter is not attached to %s", st.NIC.Name), "")
	}
	return nil
}
