// Package deploy holds no Go code: these tests check the deployment
// assets (Prometheus config and alerts, Grafana dashboard, systemd unit,
// service config, install.sh) against the tools that consume them and
// against what vmqd really exports.
package deploy

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/metrics"
)

func run(t *testing.T, env []string, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func TestPrometheusConfig(t *testing.T) {
	promtool := testenv.RequireCommand(t, "promtool")
	out, errOut, err := run(t, nil, promtool, "check", "config", "prometheus/prometheus.yml")
	if err != nil {
		t.Fatalf("promtool check config: %v\n%s%s", err, out, errOut)
	}
	// check config also checks the rule files it names.
	if !strings.Contains(out, "1 rule files found") {
		t.Fatalf("prometheus.yml does not load alerts.yml:\n%s", out)
	}
}

func TestAlertRules(t *testing.T) {
	promtool := testenv.RequireCommand(t, "promtool")
	if out, errOut, err := run(t, nil, promtool, "check", "rules", "prometheus/alerts.yml"); err != nil {
		t.Fatalf("promtool check rules: %v\n%s%s", err, out, errOut)
	}
	if out, errOut, err := run(t, nil, promtool, "test", "rules", "prometheus/alerts_test.yml"); err != nil {
		t.Fatalf("promtool test rules: %v\n%s%s", err, out, errOut)
	}
}

// The alerts named in the brief exist, and the unit tests cover each.
func TestAlertsCovered(t *testing.T) {
	rules := alertRules(t)
	tests, err := os.ReadFile("prometheus/alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"VMQVMDropping", "VMQFillRingEmpty", "VMQPortDisconnected", "VMQXDPDetached", "VMQDeviceBroken"} {
		if _, ok := rules[name]; !ok {
			t.Errorf("alerts.yml lacks %s", name)
		}
	}
	for name := range rules {
		if !bytes.Contains(tests, []byte("alertname: "+name+"\n")) {
			t.Errorf("alerts_test.yml never expects %s to fire", name)
		}
	}
}

func alertRules(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			m[r.Alert] = r.Expr
		}
	}
	return m
}

// exportedNames are the metric families vmqd's registry serves for a
// snapshot with one of everything.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	vm := dataplane.VMStats{Name: "a", Queues: []dataplane.VMQueueStats{{Queue: 0}}}
	snap := dataplane.Snapshot{
		NIC:     dataplane.NICStatus{Name: "eth0", Queues: []int{0}},
		Workers: []dataplane.WorkerStats{{Queue: 0}},
		VMs:     []dataplane.VMStats{vm},
		Sockets: []dataplane.SocketStats{{VM: "a"}},
		Ports:   []dataplane.PortStats{{VM: "a", RingSizes: []int{256}}},
	}
	reg := metrics.NewRegistry(metrics.SourceFunc(func() dataplane.Snapshot { return snap }))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{"up": true} // Prometheus adds up per target
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	return names
}

var (
	reString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	reNumber   = regexp.MustCompile(`\b[0-9][0-9.]*(?:[eE][+-]?[0-9]+)?[a-z]*`)
	reMatchers = regexp.MustCompile(`\{[^{}]*\}`)
	reRange    = regexp.MustCompile(`\[[^\]]*\]`)
	reGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	reIdent    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?`)
	keywords   = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}
)

// metricNames returns the metric names a PromQL expression selects:
// identifiers outside strings, label matchers, ranges and groupings that
// are not function calls or keywords.
func metricNames(expr string) []string {
	e := reString.ReplaceAllString(expr, `""`)
	e = reGrouping.ReplaceAllString(e, " ")
	e = reMatchers.ReplaceAllString(e, " ")
	e = reRange.ReplaceAllString(e, " ")
	e = reNumber.ReplaceAllString(e, " ")
	var names []string
	for _, m := range reIdent.FindAllStringSubmatch(e, -1) {
		if m[1] != "" || keywords[m[0]] {
			continue // a function call or a keyword
		}
		names = append(names, m[0])
	}
	return names
}

func TestMetricNamesParser(t *testing.T) {
	got := metricNames(`sum by (vm, queue) (rate(vmq_a_total{instance=~"$instance", vm="x{y}"}[$__rate_interval])) / on(vm) group_left(mac) vmq_b > bool 0 and up{job="vmqd"} offset 5m`)
	want := []string{"vmq_a_total", "vmq_b", "up"}
	if !slices.Equal(got, want) {
		t.Fatalf("metricNames = %q, want %q", got, want)
	}
}

// dashboard is the part of the Grafana model the tests read.
type dashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile("grafana/vmq-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var d dashboard
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	return d
}

// DashboardExprs returns every panel query of the dashboard.
func dashboardExprs(d dashboard) []string {
	var exprs []string
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return exprs
}

var reLabelValues = regexp.MustCompile(`^label_values\((.*),\s*[A-Za-z_]+\)$`)

func TestDashboardUsesExportedMetrics(t *testing.T) {
	names := exportedNames(t)
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Fatal("dashboard needs a uid and a title")
	}

	exprs := dashboardExprs(d)
	if len(exprs) < 15 {
		t.Fatalf("only %d panel queries", len(exprs))
	}
	for _, v := range d.Templating.List {
		var q struct {
			Query string `json:"query"`
		}
		if len(v.Query) == 0 || v.Query[0] != '{' {
			continue // the datasource variable
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatal(err)
		}
		m := reLabelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(selector, label)", v.Name, q.Query)
			continue
		}
		exprs = append(exprs, m[1])
	}

	used := map[string]bool{}
	for _, e := range exprs {
		ms := metricNames(e)
		if len(ms) == 0 {
			t.Errorf("expr selects no metric: %s", e)
		}
		for _, m := range ms {
			used[m] = true
			if !names[m] {
				t.Errorf("expr uses %s, which vmqd does not export: %s", m, e)
			}
		}
	}
	// The panels the brief asks for.
	for _, m := range []string{"vmq_vm_rx_packets_total", "vmq_vm_tx_packets_total", "vmq_vm_drops_total",
		"vmq_worker_busy_seconds_total", "vmq_vm_queue_rx_packets_total", "vmq_xsk_rx_dropped_total"} {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
}

func TestDashboardLayout(t *testing.T) {
	d := loadDashboard(t)
	ids := map[int]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel id %d used twice", p.ID)
			}
			ids[p.ID] = true
			if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("panel %q: missing or repeated refId %q", p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
			}
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
}

func TestAlertsUseExportedMetrics(t *testing.T) {
	names := exportedNames(t)
	for alert, e := range alertRules(t) {
		ms := metricNames(e)
		if len(ms) == 0 {
			t.Errorf("%s selects no metric: %s", alert, e)
		}
		for _, m := range ms {
			if !names[m] {
				t.Errorf("%s uses %s, which vmqd does not export", alert, m)
			}
		}
	}
}

// The shipped service config parses, and fits the unit's sandbox and the
// scrape config.
func TestServiceConfig(t *testing.T) {
	raw, err := os.ReadFile("config/vmqd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Validation wants socket directories to exist; /run/vmq exists only
	// while the unit runs, so it stands in a temporary directory here.
	runDir := t.TempDir() + "/"
	cfg, err := control.Parse(bytes.ReplaceAll(raw, []byte("/run/vmq/"), []byte(runDir)))
	if err != nil {
		t.Fatalf("config/vmqd.yaml: %v", err)
	}
	if !cfg.KeepSteeringOnExit {
		t.Error("keep_steering_on_exit must be true: the unit promises steering across restarts")
	}
	// ProtectSystem=strict: only RuntimeDirectory and ReadWritePaths are writable.
	if !strings.HasPrefix(cfg.API.Socket, runDir) {
		t.Errorf("api.socket %s is outside /run/vmq, which the unit cannot write", cfg.API.Socket)
	}
	for _, vm := range cfg.VMs {
		if vm.Mode == control.ModeServer && !strings.HasPrefix(vm.Socket, runDir) {
			t.Errorf("vm %s: server socket %s is outside /run/vmq", vm.Name, vm.Socket)
		}
	}
	if !strings.HasPrefix(cfg.PinDir, "/sys/fs/bpf/") {
		t.Errorf("pin_dir %s is outside /sys/fs/bpf", cfg.PinDir)
	}
	prom, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Metrics.Address == "" || !bytes.Contains(prom, []byte(strconv.Quote(cfg.Metrics.Address))) {
		t.Errorf("prometheus.yml does not scrape metrics.address %q", cfg.Metrics.Address)
	}
	if cfg.Metrics.Address != metrics.DefaultAddr {
		t.Errorf("metrics.address %s differs from metrics.DefaultAddr %s", cfg.Metrics.Address, metrics.DefaultAddr)
	}
}

// stubBins writes the binaries install.sh expects; vmqd is the real
// daemon when cmd/vmqd exists (so the unit is verified against it).
func stubBins(t *testing.T, realVMQD bool) string {
	t.Helper()
	dir := t.TempDir()
	for _, c := range []string{"vmqd", "vmqctl", "vmq-pktgen", "vmq-guest", "vmq-cni"} {
		if c == "vmqd" && realVMQD {
			continue // built below
		}
		if err := os.WriteFile(filepath.Join(dir, c), []byte("#!/bin/sh\necho "+c+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if realVMQD {
		if _, err := os.Stat("../cmd/vmqd"); err == nil {
			out, errOut, err := run(t, nil, "go", "build", "-o", filepath.Join(dir, "vmqd"), "../cmd/vmqd")
			if err != nil {
				t.Fatalf("go build ./cmd/vmqd: %v\n%s%s", err, out, errOut)
			}
		} else {
			t.Fatal("cmd/vmqd is missing")
		}
	}
	return dir
}

// walkFiles lists the regular files under root.
func walkFiles(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}

func lines(s string) []string {
	l := strings.Fields(s)
	slices.Sort(l)
	return l
}

func installSh(t *testing.T, env []string, verb string) (string, string, error) {
	t.Helper()
	return run(t, env, "bash", "install.sh", verb)
}

func TestInstallUninstall(t *testing.T) {
	bins := stubBins(t, false)
	dest := t.TempDir()
	env := []string{"DESTDIR=" + dest, "PREFIX=/opt/vmq", "SRCBIN=" + bins}

	out, errOut, err := installSh(t, env, "install")
	if err != nil {
		t.Fatalf("install: %v\n%s", err, errOut)
	}
	want := []string{
		"/etc/vmq/vmqd.example.yaml",
		"/etc/vmq/vmqd.yaml",
		"/opt/cni/bin/vmq-cni",
		"/opt/vmq/bin/vmq-guest",
		"/opt/vmq/bin/vmq-pktgen",
		"/opt/vmq/bin/vmqctl",
		"/opt/vmq/bin/vmqd",
		"/opt/vmq/lib/systemd/system/vmqd.service",
		"/opt/vmq/share/vmq/examples/multiqueue.yaml",
		"/opt/vmq/share/vmq/examples/one-nic.yaml",
		"/opt/vmq/share/vmq/examples/vlan-trunk.yaml",
		"/opt/vmq/share/vmq/grafana/vmq-dashboard.json",
		"/opt/vmq/share/vmq/install-manifest",
		"/opt/vmq/share/vmq/prometheus/alerts.yml",
		"/opt/vmq/share/vmq/prometheus/prometheus.yml",
	}
	for i := range want {
		want[i] = dest + want[i]
	}
	if got := lines(out); !slices.Equal(got, want) {
		t.Fatalf("install printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := walkFiles(t, dest); !slices.Equal(got, want) {
		t.Fatalf("DESTDIR holds\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Contents: binaries executable and intact, the unit rewritten for PREFIX.
	st, err := os.Stat(dest + "/opt/vmq/bin/vmqd")
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("vmqd: %v %v", st, err)
	}
	unit, err := os.ReadFile(dest + "/opt/vmq/lib/systemd/system/vmqd.service")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(unit, []byte("\nExecStart=/opt/vmq/bin/vmqd --config /etc/vmq/vmqd.yaml\n")) || bytes.Contains(unit, []byte("/usr/local")) {
		t.Fatalf("unit not rewritten for PREFIX=/opt/vmq:\n%s", unit)
	}
	for _, f := range []string{"prometheus/alerts.yml", "grafana/vmq-dashboard.json"} {
		a, _ := os.ReadFile(f)
		b, _ := os.ReadFile(dest + "/opt/vmq/share/vmq/" + f)
		if !bytes.Equal(a, b) {
			t.Errorf("%s installed differs from the source", f)
		}
	}

	// Reinstall over an untouched install: the same files.
	out, errOut, err = installSh(t, env, "install")
	if err != nil || !slices.Equal(lines(out), want) {
		t.Fatalf("reinstall: %v\n%s\n%s", err, out, errOut)
	}

	// The admin edits the config: a reinstall keeps it, uninstall keeps it.
	conf := dest + "/etc/vmq/vmqd.yaml"
	edited := []byte("nic: eth7\n")
	if err := os.WriteFile(conf, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = installSh(t, env, "install")
	if err != nil {
		t.Fatalf("install over an edited config: %v\n%s", err, errOut)
	}
	if slices.Contains(lines(out), conf) || !strings.Contains(errOut, "keeping existing") {
		t.Fatalf("install replaced the edited config:\n%s\n%s", out, errOut)
	}
	if b, _ := os.ReadFile(conf); !bytes.Equal(b, edited) {
		t.Fatalf("edited config overwritten: %q", b)
	}
	out, errOut, err = installSh(t, env, "uninstall")
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, errOut)
	}
	wantRemoved := slices.DeleteFunc(slices.Clone(want), func(s string) bool { return s == conf })
	if got := lines(out); !slices.Equal(got, wantRemoved) {
		t.Fatalf("uninstall printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantRemoved, "\n"))
	}
	if got := walkFiles(t, dest); !slices.Equal(got, []string{conf}) {
		t.Fatalf("after uninstall DESTDIR holds %q, want only the edited config", got)
	}
	if _, err := os.Stat(dest + "/opt/vmq/share/vmq"); !os.IsNotExist(err) {
		t.Errorf("share/vmq left behind: %v", err)
	}

	// Nothing installed: uninstall says so.
	if _, errOut, err := installSh(t, env, "uninstall"); err == nil || !strings.Contains(errOut, "nothing installed") {
		t.Fatalf("uninstall twice: %v %s", err, errOut)
	}
}

// A clean install into an empty root, then uninstall, leaves no file.
func TestInstallUninstallClean(t *testing.T) {
	bins := stubBins(t, false)
	dest := t.TempDir()
	env := []string{"DESTDIR=" + dest, "SRCBIN=" + bins}
	out, errOut, err := installSh(t, env, "install")
	if err != nil {
		t.Fatalf("install: %v\n%s", err, errOut)
	}
	if !slices.Contains(lines(out), dest+"/usr/local/bin/vmqd") || !slices.Contains(lines(out), dest+"/usr/local/lib/systemd/system/vmqd.service") {
		t.Fatalf("default PREFIX not /usr/local:\n%s", out)
	}
	removed, errOut, err := installSh(t, env, "uninstall")
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, errOut)
	}
	if !slices.Equal(lines(removed), lines(out)) {
		t.Fatalf("uninstall removed\n%s\ninstall had put\n%s", removed, out)
	}
	if got := walkFiles(t, dest); len(got) != 0 {
		t.Fatalf("files left: %q", got)
	}
}

func TestInstallRefusesMissingBinary(t *testing.T) {
	bins := stubBins(t, false)
	if err := os.Remove(filepath.Join(bins, "vmq-guest")); err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	_, errOut, err := installSh(t, []string{"DESTDIR=" + dest, "SRCBIN=" + bins}, "install")
	if err == nil || !strings.Contains(errOut, "vmq-guest") {
		t.Fatalf("install without vmq-guest: %v %s", err, errOut)
	}
	if got := walkFiles(t, dest); len(got) != 0 {
		t.Fatalf("a failed install left %q", got)
	}
	if _, errOut, err := installSh(t, []string{"PREFIX=relative"}, "install"); err == nil || !strings.Contains(errOut, "PREFIX") {
		t.Fatalf("relative PREFIX accepted: %s", errOut)
	}
}

// unitDirectives parses a unit file into key → values (in order).
func unitDirectives(t *testing.T, path string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]string{}
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || l[0] == '#' || l[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("%s: bad line %q", path, l)
		}
		m[k] = append(m[k], v)
	}
	return m
}

func TestUnitDirectives(t *testing.T) {
	d := unitDirectives(t, "systemd/vmqd.service")
	want := map[string]string{
		"After":                    "network-online.target",
		"Wants":                    "network-online.target",
		"ExecStart":                "/usr/local/bin/vmqd --config /etc/vmq/vmqd.yaml",
		"ExecReload":               "/bin/kill -HUP $MAINPID",
		"Restart":                  "on-failure",
		"RuntimeDirectory":         "vmq",
		"RuntimeDirectoryPreserve": "restart",
		"LimitMEMLOCK":             "infinity",
		"ProtectSystem":            "strict",
		"ReadWritePaths":           "/sys/fs/bpf",
		"PrivateTmp":               "yes",
		"NoNewPrivileges":          "yes",
		"CapabilityBoundingSet":    "CAP_BPF CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK CAP_PERFMON CAP_CHOWN",
	}
	for k, v := range want {
		if !slices.Equal(d[k], []string{v}) {
			t.Errorf("%s = %q, want %q", k, d[k], v)
		}
	}
	// Stop is SIGTERM: no ExecStop, no KillSignal override.
	for _, k := range []string{"ExecStop", "KillSignal", "User", "AmbientCapabilities"} {
		if _, ok := d[k]; ok {
			t.Errorf("unexpected %s=%q", k, d[k])
		}
	}
}

// systemd-analyze verify of the unit as install.sh installs it, pointing at
// an installed vmqd (the real one if cmd/vmqd exists): unknown directives,
// bad values and a missing binary all show up as output.
func TestUnitVerify(t *testing.T) {
	sa := testenv.RequireCommand(t, "systemd-analyze")
	root := t.TempDir()
	prefix, unitDir := filepath.Join(root, "usr"), filepath.Join(root, "unit")
	env := []string{"DESTDIR=", "PREFIX=" + prefix, "SYSCONFDIR=" + filepath.Join(root, "etc"),
		"UNITDIR=" + unitDir, "SRCBIN=" + stubBins(t, true)}
	if _, errOut, err := installSh(t, env, "install"); err != nil {
		t.Fatalf("install: %v\n%s", err, errOut)
	}
	unit := filepath.Join(unitDir, "vmqd.service")
	d := unitDirectives(t, unit)
	if want := prefix + "/bin/vmqd --config " + root + "/etc/vmq/vmqd.yaml"; !slices.Equal(d["ExecStart"], []string{want}) {
		t.Fatalf("installed ExecStart %q, want %q", d["ExecStart"], want)
	}

	verify := func(path string) string {
		out, errOut, err := run(t, nil, sa, "verify", path)
		var rel []string
		for _, l := range strings.Split(out+errOut, "\n") {
			// verify also loads the units this one names; their own
			// complaints are the host's business.
			if strings.Contains(l, "vmqd") {
				rel = append(rel, l)
			}
		}
		if err != nil {
			rel = append(rel, "exit: "+err.Error())
		}
		return strings.Join(rel, "\n")
	}
	if msg := verify(unit); msg != "" {
		t.Fatalf("systemd-analyze verify %s:\n%s", unit, msg)
	}

	// The check can fail: a typo and a missing binary are reported.
	b, _ := os.ReadFile(unit)
	bad := strings.Replace(string(b), "ProtectHome=yes", "ProtectHom=yes", 1)
	bad = strings.Replace(bad, prefix+"/bin/vmqd", prefix+"/bin/vmqd-missing", 1)
	badDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(badDir, "vmqd.service"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	msg := verify(filepath.Join(badDir, "vmqd.service"))
	if !strings.Contains(msg, "ProtectHom") || !strings.Contains(msg, "vmqd-missing") {
		t.Fatalf("verify missed a typo or a missing binary:\n%s", msg)
	}
}

// The sandbox stays tight: systemd's own exposure score of the unit.
func TestUnitSecurity(t *testing.T) {
	sa := testenv.RequireCommand(t, "systemd-analyze")
	out, errOut, err := run(t, nil, sa, "security", "--offline=yes", "--no-pager", "systemd/vmqd.service")
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, errOut)
	}
	m := regexp.MustCompile(`Overall exposure level for vmqd.service: ([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	score, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("exposure %.1f", score)
	// Low today even as root; above 4 means a protection was dropped.
	if score > 4.0 {
		t.Fatalf("exposure %.1f > 4.0:\n%s", score, out)
	}
}
