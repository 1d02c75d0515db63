package bench

import (
	"fmt"
	"os"
	"strings"
)

// dumpThreads prints each thread's CPU time and allowed CPUs
// (VMQ_BENCH_DEBUG=1).
func dumpThreads(what string) {
	if os.Getenv("VMQ_BENCH_DEBUG") != "1" {
		return
	}
	ents, _ := os.ReadDir("/proc/self/task")
	for _, e := range ents {
		st, _ := os.ReadFile("/proc/self/task/" + e.Name() + "/stat")
		c, _ := ParseStat(st)
		status, _ := os.ReadFile("/proc/self/task/" + e.Name() + "/status")
		allowed := ""
		for _, l := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(l, "Cpus_allowed_list:") {
				allowed = strings.TrimSpace(strings.TrimPrefix(l, "Cpus_allowed_list:"))
			}
		}
		fmt.Fprintf(os.Stderr, "%s: thread %s cpus %s user %v sys %v\n", what, e.Name(), allowed, c.User, c.System)
	}
}
