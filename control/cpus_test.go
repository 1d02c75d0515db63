package control

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// fakeCPUs makes the host look like online CPUs 0-7 of which vmqd may
// use 0-5, for the test.
func fakeCPUs(t *testing.T) {
	on, al := onlineCPUs, allowedCPUs
	onlineCPUs = func() ([]int, error) { return []int{0, 1, 2, 3, 4, 5, 6, 7}, nil }
	allowedCPUs = func() ([]int, error) { return []int{0, 1, 2, 3, 4, 5}, nil }
	t.Cleanup(func() { onlineCPUs, allowedCPUs = on, al })
}

func cpuConfig(t *testing.T, keys string) string {
	return "nic: veth0\nqueues: 4\napi: {socket: " + os.TempDir() + "/vmq-cpus-test-api.sock}\n" + keys
}

func TestCPUPlacement(t *testing.T) {
	fakeCPUs(t)
	for _, c := range []struct {
		keys        string
		workers, hk []int
		notes       []string
	}{
		{keys: "", workers: nil, hk: nil},
		{keys: "worker_cpus: 2-5\nhousekeeping_cpus: 0-1\n", workers: []int{2, 3, 4, 5}, hk: []int{0, 1}},
		// The list form keeps its order: worker i on the i-th.
		{keys: "worker_cpus: [5, 4, 3, 2]\nhousekeeping_cpus: [0]\n", workers: []int{5, 4, 3, 2}, hk: []int{0}},
		// Housekeeping by default: the allowed CPUs no worker has.
		{keys: "worker_cpus: \"2,3\"\n", workers: []int{2, 3, 2, 3}, hk: []int{0, 1, 4, 5}, notes: []string{"4 workers share 2 CPUs"}},
		{keys: "worker_cpus: 1\n", workers: []int{1, 1, 1, 1}, hk: []int{0, 2, 3, 4, 5}, notes: []string{"share 1 CPUs"}},
		// Housekeeping alone: the workers stay where vmqd runs.
		{keys: "housekeeping_cpus: 0\n", workers: nil, hk: []int{0}},
		// A worker CPU in the housekeeping set: allowed, noted.
		{keys: "worker_cpus: 1-4\nhousekeeping_cpus: 0-1\n", workers: []int{1, 2, 3, 4}, hk: []int{0, 1}, notes: []string{"CPUs 1 are workers' and housekeeping's"}},
	} {
		cfg, err := Parse([]byte(cpuConfig(t, c.keys)))
		if err != nil {
			t.Errorf("%q: %v", c.keys, err)
			continue
		}
		p := cfg.CPUPlacement()
		if !slices.Equal(p.Workers, c.workers) || !slices.Equal(p.Housekeeping, c.hk) {
			t.Errorf("%q: workers %v housekeeping %v, want %v %v", c.keys, p.Workers, p.Housekeeping, c.workers, c.hk)
		}
		if len(p.Notes) != len(c.notes) {
			t.Errorf("%q: notes %q, want %d", c.keys, p.Notes, len(c.notes))
		}
		for i, n := range c.notes {
			if i < len(p.Notes) && !strings.Contains(p.Notes[i], n) {
				t.Errorf("%q: note %q, want %q in it", c.keys, p.Notes[i], n)
			}
		}
	}
}

func TestCPUPlacementNoHousekeepingLeft(t *testing.T) {
	fakeCPUs(t)
	allowedCPUs = func() ([]int, error) { return []int{2, 3}, nil }
	cfg, err := Parse([]byte(cpuConfig(t, "worker_cpus: 2-3\n")))
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.CPUPlacement()
	if !slices.Equal(p.Housekeeping, []int{2, 3}) || len(p.Notes) != 2 || !strings.Contains(p.Notes[1], "no CPU left for housekeeping") {
		t.Fatalf("placement %+v", p)
	}
}

func TestCPUConfigInvalid(t *testing.T) {
	fakeCPUs(t)
	for keys, want := range map[string]string{
		"worker_cpus: 6\n":                         "worker_cpus[0]: CPU 6 is not one vmqd may run on (allowed: 0-5",
		"worker_cpus: 9\n":                         "worker_cpus[0]: CPU 9 is not online (online: 0-7)",
		"housekeeping_cpus: [0, 7]\n":              "housekeeping_cpus[1]: CPU 7 is not one vmqd may run on",
		"worker_cpus: [1, 2, 1]\n":                 "worker_cpus[2]: CPU 1 is listed twice",
		"worker_cpus: 0-4\n":                       "worker_cpus: 5 CPUs for 4 queues",
		"worker_cpus: []\n":                        "worker_cpus: is empty",
		"housekeeping_cpus: []\n":                  "housekeeping_cpus: is empty",
		"worker_cpus: 3-1\n":                       "runs backwards",
		"worker_cpus: \"1,1\"\n":                   "listed twice",
		"worker_cpus: [a]\n":                       `"a" is not a CPU number`,
		"worker_cpus: {a: 1}\n":                    "a CPU list is a string",
		"worker_cpus: [-1]\n":                      "worker_cpus[0]: -1 is not a CPU number",
		"housekeeping_cpus: 0\nworker_cpus: 6-7\n": "worker_cpus[0]: CPU 6 is not one vmqd may run on",
	} {
		_, err := Parse([]byte(cpuConfig(t, keys)))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", keys, err, want)
		}
	}
}

func TestCPUReloadNeedsRestart(t *testing.T) {
	fakeCPUs(t)
	old, err := Parse([]byte(cpuConfig(t, "")))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse([]byte(cpuConfig(t, "worker_cpus: 2-3\nhousekeeping_cpus: 0\n")))
	if err != nil {
		t.Fatal(err)
	}
	p := DiffConfig(old, cfg)
	if got := strings.Join(p.Restart, "; "); got != `worker_cpus: "" → 2-3; housekeeping_cpus: "" → 0` {
		t.Fatalf("restart = %q", got)
	}
}
