package testpmd

import (
	"fmt"
	"regexp"
	"strconv"
	"sync"
)

var (
	rxPacketsRE   = regexp.MustCompile(`RX-packets:\s+(\d+)`)
	txPacketsRE   = regexp.MustCompile(`TX-packets:\s+(\d+)`)
	accumulatedRE = regexp.MustCompile(`(?s)Accumulated forward statistics.*?RX-packets: +(\d+).*?TX-packets: +(\d+)`)
	statRE        sync.Map // counter name → *regexp.Regexp
)

// ParsePortStats reads the first RX-packets and TX-packets of a
// "show port stats" output.
func ParsePortStats(out string) (rx, tx uint64, err error) {
	m1, m2 := rxPacketsRE.FindStringSubmatch(out), txPacketsRE.FindStringSubmatch(out)
	if m1 == nil || m2 == nil {
		return 0, 0, fmt.Errorf("port stats: no RX-packets/TX-packets in %q", Tail(out, 400))
	}
	if rx, err = strconv.ParseUint(m1[1], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("port stats: RX-packets: %w", err)
	}
	if tx, err = strconv.ParseUint(m2[1], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("port stats: TX-packets: %w", err)
	}
	return rx, tx, nil
}

// Stat returns the last "name: N" value in out: after "stop", the last
// TX-packets is the accumulated one of all ports.
func Stat(out, name string) (uint64, error) {
	re, ok := statRE.Load(name)
	if !ok {
		re, _ = statRE.LoadOrStore(name, regexp.MustCompile(regexp.QuoteMeta(name)+`:\s+(\d+)`))
	}
	m := re.(*regexp.Regexp).FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		return 0, fmt.Errorf("no %q in testpmd output", name)
	}
	v, err := strconv.ParseUint(m[len(m)-1][1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("testpmd %s: %w", name, err)
	}
	return v, nil
}

// ParseAccumulated reads RX-packets and TX-packets of the first
// "Accumulated forward statistics" block, which testpmd prints when
// forwarding stops (on "stop", or on SIGINT in the background).
func ParseAccumulated(out string) (rx, tx uint64, err error) {
	m := accumulatedRE.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, fmt.Errorf("no forward statistics in testpmd output")
	}
	if rx, err = strconv.ParseUint(m[1], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("accumulated RX-packets: %w", err)
	}
	if tx, err = strconv.ParseUint(m[2], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("accumulated TX-packets: %w", err)
	}
	return rx, tx, nil
}

// Stats returns the accumulated forward statistics testpmd printed when
// it stopped (call Stop first for a background one).
func (p *Proc) Stats() (rx, tx uint64, err error) {
	rx, tx, err = ParseAccumulated(p.Output())
	if err != nil {
		return 0, 0, fmt.Errorf("testpmd %s: %w", p.name, err)
	}
	return rx, tx, nil
}

// CoreCycles is what testpmd's --record-core-cycles prints when forwarding
// stops: the forwarding lcores' cycles spent in iterations that moved
// frames, the frames they moved (received; sent for txonly) and the TSC
// frequency DPDK measured.
type CoreCycles struct {
	PerPacket float64 // cycles per frame, as printed
	Cycles    uint64
	Packets   uint64
	MHz       uint64 // rte_get_tsc_hz() in MHz, rounded by testpmd
}

// NSPerPacket converts the cycles per frame to nanoseconds at the TSC
// frequency testpmd reported.
func (c CoreCycles) NSPerPacket() float64 {
	if c.MHz == 0 || c.Packets == 0 {
		return 0
	}
	return float64(c.Cycles) / float64(c.Packets) * 1e3 / float64(c.MHz)
}

// "CPU cycles/packet=41.44 (total cycles=3562569434 / total io packets=85965824) at 2450 MHz Clock"
// (22.11 says "total cycles", later releases "busy cycles": both count
// only iterations that moved frames.)
var coreCyclesRE = regexp.MustCompile(`CPU cycles/packet=([0-9.]+) \((?:total|busy) cycles=(\d+) / total \S+ packets=(\d+)\) at (\d+) MHz`)

// ParseCoreCycles reads the last --record-core-cycles line of out (the
// output of one "stop").
func ParseCoreCycles(out string) (CoreCycles, error) {
	m := coreCyclesRE.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		return CoreCycles{}, fmt.Errorf("no \"CPU cycles/packet\" in testpmd output (run with --record-core-cycles; nothing forwarded?)")
	}
	l := m[len(m)-1]
	var c CoreCycles
	var err error
	if c.PerPacket, err = strconv.ParseFloat(l[1], 64); err != nil {
		return c, fmt.Errorf("core cycles: %w", err)
	}
	if c.Cycles, err = strconv.ParseUint(l[2], 10, 64); err != nil {
		return c, fmt.Errorf("core cycles: %w", err)
	}
	if c.Packets, err = strconv.ParseUint(l[3], 10, 64); err != nil {
		return c, fmt.Errorf("core cycles: %w", err)
	}
	if c.MHz, err = strconv.ParseUint(l[4], 10, 64); err != nil {
		return c, fmt.Errorf("core cycles: %w", err)
	}
	return c, nil
}
