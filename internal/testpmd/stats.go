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
