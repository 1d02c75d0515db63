package control

import (
	"fmt"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/vmq/vmq/internal/cpuset"
)

// cpuList is a CPU list in the config: the kernel's format as a string
// ("2-3,6", as taskset -c and VPP's corelist-workers write it), a YAML
// list of CPU numbers ([2, 3]) or one number.
type cpuList struct{ cpus []int }

func (l *cpuList) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		cpus, err := cpuset.Parse(n.Value)
		if err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		l.cpus = cpus
		return nil
	case yaml.SequenceNode:
		l.cpus = []int{} // an empty list is set, not omitted: validation says so
		for _, c := range n.Content {
			v, err := strconv.Atoi(c.Value)
			if c.Kind != yaml.ScalarNode || err != nil {
				return fmt.Errorf("line %d: %q is not a CPU number", c.Line, c.Value)
			}
			l.cpus = append(l.cpus, v)
		}
		return nil
	}
	return fmt.Errorf("line %d: a CPU list is a string like \"2-3,6\" or a list of CPU numbers", n.Line)
}

// The host's CPUs, read when a config is validated: the CPUs online (for
// a clearer message) and those vmqd was started on (taskset, systemd's CPUAffinity=). Variables
// for the tests.
var (
	onlineCPUs  = cpuset.Online
	allowedCPUs = cpuset.Allowed
)

// validateCPUs checks worker_cpus and housekeeping_cpus: each CPU listed
// once, online, and one vmqd may run on; at most one worker CPU per queue.
// A CPU in both lists is allowed (CPUPlacement notes it): on a host of
// two or four CPUs the runtime's mostly idle threads may have to share a
// worker's CPU, as DPDK's main lcore may share a forwarding lcore's.
func (c *Config) validateCPUs() errList {
	var errs errList
	if c.WorkerCPUs == nil && c.HousekeepingCPUs == nil {
		return nil
	}
	online, oerr := onlineCPUs()
	allowed, aerr := allowedCPUs()
	check := func(field string, cpus []int) {
		if len(cpus) == 0 {
			errs.add(field, "is empty; omit the key to leave the threads where vmqd runs")
			return
		}
		seen := map[int]bool{}
		for i, cpu := range cpus {
			f := fmt.Sprintf("%s[%d]", field, i)
			switch {
			case cpu < 0 || cpu > cpuset.MaxCPU:
				errs.add(f, "%d is not a CPU number", cpu)
			case seen[cpu]:
				errs.add(f, "CPU %d is listed twice", cpu)
			case oerr == nil && !slices.Contains(online, cpu):
				errs.add(f, "CPU %d is not online (online: %s)", cpu, cpuset.Format(online))
			case aerr == nil && !slices.Contains(allowed, cpu):
				errs.add(f, "CPU %d is not one vmqd may run on (allowed: %s; see taskset, or CPUAffinity= in the unit)", cpu, cpuset.Format(allowed))
			}
			seen[cpu] = true
		}
	}
	if c.WorkerCPUs != nil {
		check("worker_cpus", c.WorkerCPUs)
		if len(c.WorkerCPUs) > len(c.Queues) && len(c.Queues) > 0 {
			errs.add("worker_cpus", "%d CPUs for %d queues: a worker per queue, worker i on the i-th CPU; list at most %d",
				len(c.WorkerCPUs), len(c.Queues), len(c.Queues))
		}
	}
	if c.HousekeepingCPUs != nil {
		check("housekeeping_cpus", c.HousekeepingCPUs)
	}
	// Without the online list the allowed one still decides (the kernel
	// reports only active CPUs in a mask); without that, nothing can.
	if aerr != nil {
		errs.add("worker_cpus", "cannot check the CPUs: %v", aerr)
	}
	return errs
}

// CPUPlacement is where vmqd's threads run, from a validated config.
type CPUPlacement struct {
	// Workers[i] is the CPU of worker i (queue Queues[i]); nil: the
	// workers are not placed.
	Workers []int
	// Housekeeping is every other thread's CPUs; nil: not placed.
	Housekeeping []int
	// Notes are what the operator should hear (logged as warnings).
	Notes []string
}

// CPUPlacement places worker i on worker_cpus[i mod len] and the other
// threads on housekeeping_cpus, by default the CPUs vmqd was started on
// that no worker has.
func (c *Config) CPUPlacement() CPUPlacement {
	var p CPUPlacement
	if c.WorkerCPUs == nil && c.HousekeepingCPUs == nil {
		return p
	}
	if n := len(c.WorkerCPUs); n > 0 {
		for i := range c.Queues {
			p.Workers = append(p.Workers, c.WorkerCPUs[i%n])
		}
		if n < len(c.Queues) {
			p.Notes = append(p.Notes, fmt.Sprintf("%d workers share %d CPUs (worker_cpus %s): busy workers on one CPU take turns",
				len(c.Queues), n, cpuset.Format(c.WorkerCPUs)))
		}
	}
	p.Housekeeping = slices.Clone(c.HousekeepingCPUs)
	if p.Housekeeping == nil {
		allowed, _ := allowedCPUs()
		for _, cpu := range allowed {
			if !slices.Contains(c.WorkerCPUs, cpu) {
				p.Housekeeping = append(p.Housekeeping, cpu)
			}
		}
		if len(p.Housekeeping) == 0 {
			p.Housekeeping = allowed
			p.Notes = append(p.Notes, fmt.Sprintf("no CPU left for housekeeping: vmqd may run on %s only, all of them workers'; "+
				"the Go runtime's threads and the control plane share the workers' CPUs", cpuset.Format(allowed)))
		}
	}
	var both []int
	for _, cpu := range p.Housekeeping {
		if slices.Contains(c.WorkerCPUs, cpu) {
			both = append(both, cpu)
		}
	}
	if len(both) > 0 && c.HousekeepingCPUs != nil {
		p.Notes = append(p.Notes, fmt.Sprintf("CPUs %s are workers' and housekeeping's: the Go runtime's threads and the control plane "+
			"will take those workers' CPU now and then (give housekeeping_cpus CPUs of their own where the host has them)", cpuset.Format(both)))
	}
	return p
}
