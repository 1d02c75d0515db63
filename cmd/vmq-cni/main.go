// Command vmq-cni is a CNI plugin (spec 1.0 and 1.1) that gives a VM
// sandbox a vmq port: on ADD it asks vmqd's API for a vhost-user port
// with the sandbox's MAC and the network's VLAN and limits, and returns
// the interface with its MAC and the socket path a VMM (KubeVirt, Kata,
// QEMU) connects to. DEL removes exactly that port and is idempotent;
// CHECK verifies it; STATUS says whether vmqd answers.
//
// A network config (Multus NetworkAttachmentDefinition or a .conflist):
//
//	{"cniVersion": "1.1.0", "name": "vmq-vlan100", "type": "vmq-cni",
//	 "vlan": 100, "limits": {"tx_pps": 200000},
//	 "socketDir": "/run/vmq/ports", "socketMode": "0660",
//	 "capabilities": {"mac": true}}
//
// The MAC comes from runtimeConfig.mac (the "mac" capability), else
// CNI_ARGS MAC=..., else it is generated from the sandbox id and
// interface name (stable for the sandbox, locally administered).
//
//	vmq-cni install --bin-dir /host/opt/cni/bin [--conf FILE --conf-dir DIR]
//
// copies the binary (and a network config) into place atomically.
package main

import (
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/vmq/vmq/metrics"
)

func main() {
	// "vmq-cni install" is the DaemonSet's init container: the image has
	// no shell, and the copy must be atomic for a runtime calling the
	// binary at that moment.
	if len(os.Args) > 1 && os.Args[1] == "install" {
		if err := install(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "vmq-cni install:", err)
			os.Exit(1)
		}
		return
	}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, Status: cmdStatus},
		version.PluginSupports("1.0.0", "1.1.0"), "vmq-cni "+metrics.Version+": vhost-user ports on vmq")
}
