package bench

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat.
// Linux has exported 100 to user space on every architecture for decades.
const clockTick = 100

// CPUTimes are the user and system CPU time of a process or thread.
type CPUTimes struct {
	User, System time.Duration
}

// Total is user + system time.
func (c CPUTimes) Total() time.Duration { return c.User + c.System }

// Sub is c - o.
func (c CPUTimes) Sub(o CPUTimes) CPUTimes {
	return CPUTimes{User: c.User - o.User, System: c.System - o.System}
}

// ParseStat reads utime and stime (fields 14 and 15) from the contents of
// /proc/PID/stat or /proc/PID/task/TID/stat. The command name (field 2)
// may hold spaces and parentheses, so fields are counted after its last ')'.
func ParseStat(b []byte) (CPUTimes, error) {
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return CPUTimes{}, errors.New("parse stat: no ')' after the command name")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): utime is field 14, f[11]; stime f[12].
	if len(f) < 13 {
		return CPUTimes{}, fmt.Errorf("parse stat: %d fields after the command name, want at least 13", len(f))
	}
	ut, err := strconv.ParseUint(f[11], 10, 63)
	if err != nil {
		return CPUTimes{}, fmt.Errorf("parse stat: utime %q: %w", f[11], err)
	}
	st, err := strconv.ParseUint(f[12], 10, 63)
	if err != nil {
		return CPUTimes{}, fmt.Errorf("parse stat: stime %q: %w", f[12], err)
	}
	const maxTicks = uint64(1<<63-1) / uint64(time.Second/clockTick)
	if ut > maxTicks || st > maxTicks {
		return CPUTimes{}, errors.New("parse stat: CPU time out of range")
	}
	tick := time.Second / clockTick
	return CPUTimes{User: time.Duration(ut) * tick, System: time.Duration(st) * tick}, nil
}

// ProcessCPU returns the CPU time of process pid (0 = this process).
func ProcessCPU(pid int) (CPUTimes, error) {
	path := "/proc/self/stat"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return CPUTimes{}, fmt.Errorf("cpu time of pid %d: %w", pid, err)
	}
	return ParseStat(b)
}

// SelfCPU is getrusage(RUSAGE_SELF): finer-grained than /proc (µs, not
// 10 ms ticks), for this process.
func SelfCPU() (CPUTimes, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return CPUTimes{}, fmt.Errorf("getrusage: %w", err)
	}
	return CPUTimes{User: time.Duration(ru.Utime.Nano()), System: time.Duration(ru.Stime.Nano())}, nil
}

// OnlineCPUs is the number of CPUs this thread may run on.
func OnlineCPUs() int {
	var s unix.CPUSet
	if err := unix.SchedGetaffinity(0, &s); err != nil {
		return 1
	}
	return s.Count()
}

// CPUBusy returns how long CPU cpu has been busy (everything but idle and
// iowait) since boot, from /proc/stat.
func CPUBusy(cpu int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("cpu %d busy time: %w", cpu, err)
	}
	return parseCPUBusy(b, cpu)
}

func parseCPUBusy(b []byte, cpu int) (time.Duration, error) {
	name := fmt.Sprintf("cpu%d", cpu)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != name {
			continue
		}
		var busy uint64
		for i, v := range f[1:] {
			if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest times are already in user
				continue
			}
			n, err := strconv.ParseUint(v, 10, 63)
			if err != nil {
				return 0, fmt.Errorf("cpu %d busy time: field %d %q: %w", cpu, i+1, v, err)
			}
			busy += n
		}
		if busy > uint64(1<<63-1)/uint64(time.Second/clockTick) {
			return 0, fmt.Errorf("cpu %d busy time out of range", cpu)
		}
		return time.Duration(busy) * (time.Second / clockTick), nil
	}
	return 0, fmt.Errorf("cpu %d busy time: no %s line in /proc/stat", cpu, name)
}
