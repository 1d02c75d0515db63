// Package cpuset places vmqd's threads on CPUs: CPU lists in the
// kernel's format ("0-3,8", as taskset -c, isolcpus and
// Cpus_allowed_list write them), the CPUs the process may use, and the
// affinity of each of the process's threads (cpuset_linux.go).
package cpuset

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// MaxCPU bounds a CPU number (the kernel's NR_CPUS is at most 8192).
const MaxCPU = 8191

// Parse reads a CPU list ("0-3,8"; spaces allowed around the commas) in
// the order written. A CPU listed twice is an error.
func Parse(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("empty CPU list")
	}
	var out []int
	seen := map[int]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		lo, hi, isRange := strings.Cut(f, "-")
		a, err := parseCPU(lo)
		if err != nil {
			return nil, fmt.Errorf("CPU list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = parseCPU(hi); err != nil {
				return nil, fmt.Errorf("CPU list %q: %w", s, err)
			}
			if b < a {
				return nil, fmt.Errorf("CPU list %q: range %s runs backwards", s, f)
			}
		}
		for c := a; c <= b; c++ {
			if seen[c] {
				return nil, fmt.Errorf("CPU list %q: CPU %d is listed twice", s, c)
			}
			seen[c] = true
			out = append(out, c)
		}
	}
	return out, nil
}

func parseCPU(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 || n > MaxCPU {
		return 0, fmt.Errorf("%q is not a CPU number (0..%d)", s, MaxCPU)
	}
	return n, nil
}

// Format writes cpus as a sorted CPU list with ranges ("0-3,8").
func Format(cpus []int) string {
	s := slices.Clone(cpus)
	slices.Sort(s)
	s = slices.Compact(s)
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(s[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(s[j]))
		}
		i = j + 1
	}
	return b.String()
}

// Thread is one thread of the process as /proc/self/task/TID/status
// shows it.
type Thread struct {
	TID  int
	Name string
	CPUs []int // Cpus_allowed_list
}

// ParseStatus reads Name and Cpus_allowed_list from the contents of
// /proc/PID/task/TID/status.
func ParseStatus(b []byte) (name string, cpus []int, err error) {
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch k {
		case "Name":
			name = strings.TrimSpace(v)
		case "Cpus_allowed_list":
			if cpus, err = Parse(v); err != nil {
				return "", nil, err
			}
			found = true
		}
	}
	if !found {
		return "", nil, errors.New("no Cpus_allowed_list in status")
	}
	return name, cpus, nil
}
