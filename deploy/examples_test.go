package deploy

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vmq/vmq/control"
)

// Every example config parses and validates with the code vmqd runs
// (`vmqd --check-config` does the same), and says what it claims to.
func TestExampleConfigs(t *testing.T) {
	want := map[string]struct {
		vms, queues, maxPairs int
		vlans                 int
	}{
		"one-nic.yaml":    {vms: 3, queues: 1, maxPairs: 1, vlans: 1},
		"multiqueue.yaml": {vms: 3, queues: 4, maxPairs: 4, vlans: 1},
		"vlan-trunk.yaml": {vms: 4, queues: 2, maxPairs: 1, vlans: 3},
	}
	files, err := filepath.Glob("config/examples/*.yaml")
	if err != nil || len(files) != len(want) {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := control.Parse(data)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		w := want[filepath.Base(f)]
		pairs, vlans := 0, map[int]bool{}
		for _, vm := range cfg.VMs {
			pairs = max(pairs, vm.QueuePairs)
			vlans[vm.VLAN] = true
		}
		if len(cfg.VMs) != w.vms || len(cfg.Queues) != w.queues || pairs != w.maxPairs || len(vlans) != w.vlans {
			t.Errorf("%s: %d VMs, %d queues, max %d pairs, %d VLANs; want %+v", f, len(cfg.VMs), len(cfg.Queues), pairs, len(vlans), w)
		}
	}
}
