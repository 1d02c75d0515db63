// Package kubernetes holds the manifests for running vmq on a cluster;
// this test decodes each of them strictly (an unknown field fails) and
// checks what they must say against what vmqd actually does.
package kubernetes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/metrics"
)

// The CRDs whose Go types the module proxy does not serve here
// (kubevirt.io/api, k8s.cni.cncf.io) are decoded into the subset of
// their upstream types these manifests use, with upstream's JSON names:
// a field not in the subset fails, so a typo cannot pass.
type objectMeta struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

type networkAttachmentDefinition struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		Config string `json:"config"`
	} `json:"spec"`
}

type virtualMachine struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       struct {
		RunStrategy string `json:"runStrategy"`
		Template    struct {
			Metadata struct {
				Labels map[string]string `json:"labels,omitempty"`
			} `json:"metadata"`
			Spec struct {
				NodeSelector map[string]string `json:"nodeSelector,omitempty"`
				Domain       struct {
					CPU struct {
						Cores int `json:"cores"`
					} `json:"cpu"`
					Memory struct {
						Guest     string `json:"guest"`
						Hugepages *struct {
							PageSize string `json:"pageSize"`
						} `json:"hugepages,omitempty"`
					} `json:"memory"`
					Devices struct {
						Disks []struct {
							Name string `json:"name"`
							Disk struct {
								Bus string `json:"bus"`
							} `json:"disk"`
						} `json:"disks"`
						Interfaces []struct {
							Name       string    `json:"name"`
							MacAddress string    `json:"macAddress,omitempty"`
							Masquerade *struct{} `json:"masquerade,omitempty"`
							Binding    *struct {
								Name string `json:"name"`
							} `json:"binding,omitempty"`
						} `json:"interfaces"`
					} `json:"devices"`
				} `json:"domain"`
				Networks []struct {
					Name   string    `json:"name"`
					Pod    *struct{} `json:"pod,omitempty"`
					Multus *struct {
						NetworkName string `json:"networkName"`
					} `json:"multus,omitempty"`
				} `json:"networks"`
				Volumes []struct {
					Name          string `json:"name"`
					ContainerDisk *struct {
						Image string `json:"image"`
					} `json:"containerDisk,omitempty"`
				} `json:"volumes"`
			} `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

// cniConf is vmq-cni's network config (cmd/vmq-cni NetConf), strictly.
type cniConf struct {
	CNIVersion   string          `json:"cniVersion"`
	Name         string          `json:"name"`
	Type         string          `json:"type"`
	APISocket    string          `json:"apiSocket"`
	SocketDir    string          `json:"socketDir"`
	SocketMode   string          `json:"socketMode"`
	SocketOwner  string          `json:"socketOwner"`
	VLAN         int             `json:"vlan"`
	QueuePairs   int             `json:"queuePairs"`
	Limits       control.Limits  `json:"limits"`
	Capabilities map[string]bool `json:"capabilities"`
}

// manifests decodes every YAML document of every file, strictly, by kind.
type manifests struct {
	ds   *appsv1.DaemonSet
	cm   *corev1.ConfigMap
	nads []networkAttachmentDefinition
	vms  []virtualMachine
	sms  []monitoringv1.ServiceMonitor
	svcs []corev1.Service
}

func load(t *testing.T) manifests {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var m manifests
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range bytes.Split(b, []byte("\n---\n")) {
			var head struct {
				Kind string `json:"kind"`
			}
			if err := yaml.Unmarshal(doc, &head); err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			strict := func(v any) {
				if err := yaml.UnmarshalStrict(doc, v); err != nil {
					t.Fatalf("%s document %d (%s): %v", f, i, head.Kind, err)
				}
			}
			switch head.Kind {
			case "Namespace":
				strict(&corev1.Namespace{})
			case "ServiceAccount":
				strict(&corev1.ServiceAccount{})
			case "DaemonSet":
				m.ds = &appsv1.DaemonSet{}
				strict(m.ds)
			case "ConfigMap":
				m.cm = &corev1.ConfigMap{}
				strict(m.cm)
			case "Service":
				var s corev1.Service
				strict(&s)
				m.svcs = append(m.svcs, s)
			case "ServiceMonitor":
				var s monitoringv1.ServiceMonitor
				strict(&s)
				m.sms = append(m.sms, s)
			case "NetworkAttachmentDefinition":
				var n networkAttachmentDefinition
				strict(&n)
				m.nads = append(m.nads, n)
			case "VirtualMachine":
				var v virtualMachine
				strict(&v)
				m.vms = append(m.vms, v)
			default:
				t.Fatalf("%s document %d: kind %q has no check", f, i, head.Kind)
			}
		}
	}
	if m.ds == nil || m.cm == nil || len(m.nads) == 0 || len(m.vms) == 0 || len(m.sms) == 0 {
		t.Fatalf("missing manifests: daemonset %v, configmap %v, %d NADs, %d VMs, %d ServiceMonitors",
			m.ds != nil, m.cm != nil, len(m.nads), len(m.vms), len(m.sms))
	}
	return m
}

// unitCaps is the bounding set of deploy/systemd/vmqd.service, the list
// deploy/captest proves necessary and sufficient.
func unitCaps(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../systemd/vmqd.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapabilityBoundingSet="); ok {
			var caps []string
			for _, c := range strings.Fields(v) {
				caps = append(caps, strings.TrimPrefix(c, "CAP_"))
			}
			slices.Sort(caps)
			return caps
		}
	}
	t.Fatal("no CapabilityBoundingSet in vmqd.service")
	return nil
}

func container(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

// mountedFrom is the host path behind a container path, if a hostPath
// volume is mounted over it.
func mountedFrom(ds *appsv1.DaemonSet, c corev1.Container, path string) string {
	for _, vm := range c.VolumeMounts {
		rel, err := filepath.Rel(vm.MountPath, path)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		for _, v := range ds.Spec.Template.Spec.Volumes {
			if v.Name == vm.Name && v.HostPath != nil {
				return filepath.Join(v.HostPath.Path, rel)
			}
		}
	}
	return ""
}

// tracefs is where the host mounts tracefs (cilium/ebpf also finds it
// through /proc/self/mountinfo wherever it is mounted).
const tracefs = "/sys/kernel/tracing"

// mountReadOnly: the volume mounted at path is read-only.
func mountReadOnly(c corev1.Container, path string) bool {
	for _, vm := range c.VolumeMounts {
		if vm.MountPath == path {
			return vm.ReadOnly
		}
	}
	return false
}

// The DaemonSet runs vmqd as the unit does: the captest capabilities and
// no others, host network, the host's bpffs, /run/vmq and /var/lib/vmq
// under the paths the ConfigMap's config uses, probes on the endpoints
// vmqd serves on its metrics port, a rolling update with steering kept.
func TestDaemonSet(t *testing.T) {
	m := load(t)
	cfg, err := control.Parse([]byte(m.cm.Data["vmqd.yaml"]))
	if err != nil {
		t.Fatalf("the ConfigMap's vmqd.yaml: %v", err)
	}
	spec := m.ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("vmqd must run in the host network: the NIC is the host's")
	}
	vmqd := container(t, spec.Containers, "vmqd")
	sc := vmqd.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("vmqd has no securityContext.capabilities")
	}
	var added []string
	for _, c := range sc.Capabilities.Add {
		added = append(added, string(c))
	}
	slices.Sort(added)
	if want := unitCaps(t); !slices.Equal(added, want) {
		t.Errorf("capabilities added %v, want exactly captest's %v", added, want)
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities dropped %v, want ALL", sc.Capabilities.Drop)
	}
	if sc.Privileged != nil && *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("vmqd must be unprivileged without privilege escalation (the unit's NoNewPrivileges)")
	}

	// The config file is the ConfigMap's, where vmqd is told to read it.
	var cfgFlag string
	for _, a := range vmqd.Command {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			cfgFlag = v
		}
	}
	if cfgFlag == "" || filepath.Base(cfgFlag) != "vmqd.yaml" || !mountsConfigMap(m, vmqd, filepath.Dir(cfgFlag)) {
		t.Errorf("vmqd reads %q, which is not the ConfigMap's vmqd.yaml", cfgFlag)
	}

	// State lives on the host, where the next pod finds it.
	for what, path := range map[string]string{
		"pin_dir":        cfg.PinDir,
		"api.socket":     cfg.API.Socket,
		"state_file":     cfg.StateFile,
		"vhost-user dir": "/run/vmq/ports",
	} {
		if host := mountedFrom(m.ds, vmqd, path); host != path {
			t.Errorf("%s %s is not on the host path %s (mounted from %q)", what, path, path, host)
		}
	}
	for _, p := range []string{"/sys/fs/bpf", "/run/vmq", "/var/lib/vmq"} {
		if mountedFrom(m.ds, vmqd, p) != p {
			t.Errorf("host path %s is not mounted at %s", p, p)
		}
	}
	// The XDP transmit's tracepoints (naming the frames a driver drops):
	// their ids are read from the host's tracefs, which a container's own
	// /sys does not hold; read-only is enough (deploy/captest
	// TestUnitFileSystem), and CAP_PERFMON (in the unit's set) opens them.
	if mountedFrom(m.ds, vmqd, tracefs) != tracefs || !mountReadOnly(vmqd, tracefs) {
		t.Errorf("the host's tracefs %s is not mounted read-only at %s: driver drops in the XDP transmit would be lost unseen", tracefs, tracefs)
	}
	if !slices.Contains(added, "PERFMON") {
		t.Error("without CAP_PERFMON the XDP transmit cannot attach its tracepoints")
	}
	if cfg.StateFile == "" || !cfg.KeepSteeringOnExit {
		t.Errorf("config: state_file %q, keep_steering_on_exit %v: a rolling update would lose ports or steering", cfg.StateFile, cfg.KeepSteeringOnExit)
	}

	// Probes hit what vmqd serves, on its metrics port.
	_, port, err := net.SplitHostPort(cfg.Metrics.Address)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", vmqd.LivenessProbe, metrics.HealthzPath}, {"readiness", vmqd.ReadinessProbe, metrics.ReadyzPath}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no %s httpGet probe", p.name)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path || g.Port.String() != port || (g.Host != "" && g.Host != "127.0.0.1") {
			t.Errorf("%s probe GET %s:%s%s, want %s on port %s (metrics.address %s)", p.name, g.Host, g.Port.String(), g.Path, p.path, port, cfg.Metrics.Address)
		}
	}
	if h, _, _ := net.SplitHostPort(cfg.Metrics.Address); h == "127.0.0.1" || h == "localhost" {
		t.Error("metrics on loopback: Prometheus in the cluster cannot scrape it")
	}

	// Rolling update: one node at a time, never two vmqd on a NIC, and
	// time for vmqd's 10 s shutdown.
	us := m.ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxSurge != nil && us.RollingUpdate.MaxSurge.IntValue() != 0 {
		t.Errorf("update strategy %+v: want RollingUpdate without surge", us)
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g <= 10 {
		t.Error("terminationGracePeriodSeconds must exceed vmqd's 10 s stop")
	}

	// The init container installs vmq-cni and the network config on the
	// host, with no capability at all.
	if len(spec.InitContainers) != 1 {
		t.Fatalf("%d init containers, want the CNI installer", len(spec.InitContainers))
	}
	ic := spec.InitContainers[0]
	args := strings.Join(ic.Command, " ")
	if !strings.HasPrefix(args, "/usr/local/bin/vmq-cni install ") {
		t.Errorf("init container runs %q, not vmq-cni install", args)
	}
	flags := map[string]string{}
	for _, a := range ic.Command[2:] {
		k, v, _ := strings.Cut(a, "=")
		flags[k] = v
	}
	if mountedFrom(m.ds, ic, flags["--bin-dir"]) != "/opt/cni/bin" {
		t.Errorf("vmq-cni goes to %s, not the host's /opt/cni/bin", flags["--bin-dir"])
	}
	if mountedFrom(m.ds, ic, flags["--conf-dir"]) != "/etc/cni/multus/net.d" {
		t.Errorf("the network config goes to %s, not the host's Multus conf dir", flags["--conf-dir"])
	}
	if c := flags["--conf"]; !mountsConfigMap(m, ic, filepath.Dir(c)) || m.cm.Data[filepath.Base(c)] == "" {
		t.Errorf("--conf %s is not a key of the ConfigMap", c)
	}
	if isc := ic.SecurityContext; isc == nil || isc.Capabilities == nil || len(isc.Capabilities.Add) != 0 ||
		!slices.Equal(isc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Error("the init container must drop every capability")
	}
	// Both network configs (ConfigMap and NAD) point at this vmqd.
	confs := map[string]string{"ConfigMap vmq-net.conf": m.cm.Data["vmq-net.conf"]}
	for _, n := range m.nads {
		confs["NetworkAttachmentDefinition "+n.Metadata.Name] = n.Spec.Config
	}
	for what, c := range confs {
		checkCNIConf(t, what, c, cfg)
	}
}

func mountsConfigMap(m manifests, c corev1.Container, dir string) bool {
	for _, vm := range c.VolumeMounts {
		if vm.MountPath != dir {
			continue
		}
		for _, v := range m.ds.Spec.Template.Spec.Volumes {
			if v.Name == vm.Name && v.ConfigMap != nil && v.ConfigMap.Name == m.cm.Name {
				return true
			}
		}
	}
	return false
}

func checkCNIConf(t *testing.T, what, conf string, cfg *control.Config) {
	t.Helper()
	var c cniConf
	dec := json.NewDecoder(strings.NewReader(conf))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	if c.Type != "vmq-cni" || (c.CNIVersion != "1.0.0" && c.CNIVersion != "1.1.0") || c.Name == "" {
		t.Errorf("%s: type %q, cniVersion %q, name %q", what, c.Type, c.CNIVersion, c.Name)
	}
	if c.APISocket != cfg.API.Socket {
		t.Errorf("%s: apiSocket %s, vmqd listens on %s", what, c.APISocket, cfg.API.Socket)
	}
	if !strings.HasPrefix(c.SocketDir, "/run/vmq/") {
		t.Errorf("%s: socketDir %s is not under the shared /run/vmq", what, c.SocketDir)
	}
	if len(cfg.API.AllowedVLANs) > 0 && !slices.Contains(cfg.API.AllowedVLANs, c.VLAN) {
		t.Errorf("%s: VLAN %d is not in the node's api.allowed_vlans %v", what, c.VLAN, cfg.API.AllowedVLANs)
	}
	if !c.Capabilities["mac"] {
		t.Errorf("%s: without the mac capability a VM cannot keep its MAC across nodes", what)
	}
}

// The VM example uses a vhost-user binding on a Multus network that is
// one of the NADs, with its own MAC; the ServiceMonitor scrapes the
// metrics port of a Service selecting the DaemonSet's pods.
func TestExamples(t *testing.T) {
	m := load(t)
	nads := map[string]bool{}
	for _, n := range m.nads {
		nads[n.Metadata.Namespace+"/"+n.Metadata.Name] = true
	}
	for _, vm := range m.vms {
		s := vm.Spec.Template.Spec
		found := false
		for _, i := range s.Domain.Devices.Interfaces {
			if i.Binding == nil || i.Binding.Name != "vhostuser" {
				continue
			}
			if _, err := net.ParseMAC(i.MacAddress); err != nil {
				t.Errorf("VM %s interface %s: MAC %q: %v", vm.Metadata.Name, i.Name, i.MacAddress, err)
			}
			for _, n := range s.Networks {
				if n.Name == i.Name && n.Multus != nil && nads[n.Multus.NetworkName] {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("VM %s has no vhost-user interface on a vmq NetworkAttachmentDefinition", vm.Metadata.Name)
		}
		if s.Domain.Memory.Hugepages == nil {
			t.Errorf("VM %s: vhost-user needs shared (hugepage) guest memory", vm.Metadata.Name)
		}
	}
	podLabels := m.ds.Spec.Template.Labels
	for _, sm := range m.sms {
		var svc *corev1.Service
		for i := range m.svcs {
			if selects(sm.Spec.Selector.MatchLabels, m.svcs[i].Labels) {
				svc = &m.svcs[i]
			}
		}
		if svc == nil || !selects(svc.Spec.Selector, podLabels) {
			t.Fatalf("ServiceMonitor %s selects no Service over vmqd's pods", sm.Name)
		}
		for _, ep := range sm.Spec.Endpoints {
			ok := false
			for _, p := range svc.Spec.Ports {
				if p.Name == ep.Port && p.TargetPort.String() == "metrics" && p.Port == 9469 {
					ok = true
				}
			}
			if !ok || ep.Path != metrics.Path {
				t.Errorf("ServiceMonitor endpoint %s%s is not vmqd's metrics port and %s", ep.Port, ep.Path, metrics.Path)
			}
		}
	}
	vmqd := container(t, m.ds.Spec.Template.Spec.Containers, "vmqd")
	if !slices.ContainsFunc(vmqd.Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" && p.ContainerPort == 9469 }) {
		t.Error("vmqd has no container port named metrics on 9469")
	}
}

func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// The Containerfile builds static binaries of what the manifests run
// onto an empty base.
func TestContainerfile(t *testing.T) {
	b, err := os.ReadFile("Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{"CGO_ENABLED=0", "FROM scratch", "/usr/local/bin/"} {
		if !strings.Contains(s, want) {
			t.Errorf("Containerfile lacks %q", want)
		}
	}
	m := load(t)
	for _, c := range append(m.ds.Spec.Template.Spec.InitContainers, m.ds.Spec.Template.Spec.Containers...) {
		bin := filepath.Base(c.Command[0])
		if !strings.Contains(s, fmt.Sprintf("/out/%s", bin)) {
			t.Errorf("container %s runs %s, which the Containerfile does not build", c.Name, bin)
		}
	}
}
