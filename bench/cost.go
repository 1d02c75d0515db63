package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// vmqStats is the part of GET /v1/stats the benchmark reads. It is
// decoded here rather than as dataplane.Snapshot so that the worker's
// busy-round counters are read when the vmqd under test has them.
type vmqStats struct {
	Workers []struct {
		BusyNS          uint64 `json:"busy_ns"`
		Frames          uint64 `json:"frames"`
		BusyRoundNS     uint64 `json:"busy_round_ns"`
		BusyRoundFrames uint64 `json:"busy_round_frames"`
		Polls           uint64 `json:"polls"` // sleeps
		HasRounds       bool   `json:"-"`
	} `json:"workers"`
	Sockets []struct {
		RxDropped     uint64 `json:"rx_dropped"`
		RxRingFull    uint64 `json:"rx_ring_full"` // the kernel's drop at a VM's own ring (frames held there overflowed)
		FillRingEmpty uint64 `json:"fill_ring_empty"`
	} `json:"sockets"`
	VMs []struct {
		RxPackets     uint64            `json:"rx_packets"`
		TxPackets     uint64            `json:"tx_packets"`
		RxCopiedBytes uint64            `json:"rx_copied_bytes"`
		Drops         map[string]uint64 `json:"drops"`
		// Dedicated is the VM's dedicated queue (nil: shared mode).
		Dedicated *struct {
			State     string `json:"state"`
			Reason    string `json:"reason"`
			Frames    uint64 `json:"frames"`
			Posted    int64  `json:"posted"`
			RxDropped uint64 `json:"rx_dropped"`
			FillEmpty uint64 `json:"fill_ring_empty"`
		} `json:"dedicated"`
	} `json:"vms"`
	// Ports: the guests' notifications each way (calls: vmq signalled a
	// guest; kicks: a guest signalled vmq), a cost the busy time hides
	// where it runs on another thread.
	Ports []struct {
		Kicks uint64 `json:"kicks"`
		Calls uint64 `json:"calls"`
	} `json:"ports"`
}

// parseVMQStats decodes GET /v1/stats, noting whether each worker has
// the busy-round counters.
func parseVMQStats(b []byte) (vmqStats, error) {
	var st vmqStats
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("GET /v1/stats: %w", err)
	}
	var probe struct {
		Workers []map[string]json.RawMessage `json:"workers"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return st, fmt.Errorf("GET /v1/stats: %w", err)
	}
	for i, w := range probe.Workers {
		_, st.Workers[i].HasRounds = w["busy_round_frames"]
	}
	return st, nil
}

// vmqBusyPerFrame is the worker's busy time per frame between two
// snapshots, by DPDK's rule where vmqd counts it (time of rounds that moved
// frames ÷ those frames); an older vmqd only has its busy time, idle
// spinning included, ÷ the frames its VMs moved: an upper bound.
func vmqBusyPerFrame(a, b vmqStats) (float64, string) {
	var rNS, rFrames, busy, frames uint64
	rounds := len(b.Workers) > 0
	for i, w := range b.Workers {
		if i >= len(a.Workers) {
			return -1, "worker count changed"
		}
		rounds = rounds && w.HasRounds
		rNS += w.BusyRoundNS - a.Workers[i].BusyRoundNS
		rFrames += w.BusyRoundFrames - a.Workers[i].BusyRoundFrames
		busy += w.BusyNS - a.Workers[i].BusyNS
	}
	if rounds {
		if rFrames == 0 {
			return -1, "busy_round_ns/busy_round_frames: no frames"
		}
		return float64(rNS) / float64(rFrames), "worker busy_round_ns/busy_round_frames"
	}
	for i, vm := range b.VMs {
		if i >= len(a.VMs) {
			return -1, "VM count changed"
		}
		frames += vm.RxPackets + vm.TxPackets - a.VMs[i].RxPackets - a.VMs[i].TxPackets
		for r, n := range vm.Drops {
			frames += n - a.VMs[i].Drops[r]
		}
	}
	if frames == 0 {
		return -1, "busy_ns/frames: no frames"
	}
	return float64(busy) / float64(frames), "worker busy_ns (idle spins too)/frames"
}

// vmqMoved is the frames vmq's workers moved between two snapshots: the
// frames their busy rounds count.
func vmqMoved(a, b vmqStats) uint64 {
	var n uint64
	for i, w := range b.Workers {
		if i < len(a.Workers) {
			n += w.Frames - a.Workers[i].Frames
		}
	}
	return n
}

// busyPerDelivered spreads a trial's busy time (busyNS per frame moved,
// over moved frames) over the frames the receiver got: where a guest
// starves, DPDK's forwarder moves frames it then drops at the guest's
// ring, while vmq's worker leaves them in the VM's socket ring; per
// delivered frame both count the same work. -1 when unknown.
func busyPerDelivered(busyNS float64, moved, received uint64) float64 {
	if busyNS < 0 || moved == 0 || received == 0 {
		return -1
	}
	return busyNS * float64(moved) / float64(received)
}

// vmqDrops says where vmq lost frames between two snapshots: the kernel
// (an AF_XDP socket's ring full, shared or a dedicated queue's) or the
// worker, by reason.
func vmqDrops(a, b vmqStats) string {
	var xsk, ring, fill, sleeps, calls, kicks uint64
	for i, w := range b.Workers {
		if i < len(a.Workers) {
			sleeps += w.Polls - a.Workers[i].Polls
		}
	}
	for i, p := range b.Ports {
		if i < len(a.Ports) {
			calls += p.Calls - a.Ports[i].Calls
			kicks += p.Kicks - a.Ports[i].Kicks
		}
	}
	for i, so := range b.Sockets {
		if i < len(a.Sockets) {
			xsk += so.RxDropped - a.Sockets[i].RxDropped
			ring += so.RxRingFull - a.Sockets[i].RxRingFull
			fill += so.FillRingEmpty - a.Sockets[i].FillRingEmpty
		}
	}
	drops := map[string]uint64{}
	for i, vm := range b.VMs {
		if d := vm.Dedicated; d != nil && i < len(a.VMs) && a.VMs[i].Dedicated != nil {
			xsk += d.RxDropped - a.VMs[i].Dedicated.RxDropped
			fill += d.FillEmpty - a.VMs[i].Dedicated.FillEmpty
		}
		for r, n := range vm.Drops {
			if i < len(a.VMs) && n > a.VMs[i].Drops[r] {
				drops[r] += n - a.VMs[i].Drops[r]
			}
		}
	}
	var parts []string
	for r, n := range drops {
		parts = append(parts, fmt.Sprintf("%s %d", r, n))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	return strings.TrimSpace(fmt.Sprintf("xsk rx_dropped %d, rx ring full %d, fill ring empty %d; worker drops: %s; worker sleeps %d; guest calls %d, kicks %d", xsk, ring, fill, strings.Join(parts, ", "), sleeps, calls, kicks))
}

// vmqCopied is the frame bytes vmq's workers copied into guests per frame
// they delivered between two snapshots (rx_copied_bytes ÷ rx_packets): the
// frame size on the shared path, 0 on a dedicated queue. -1 when no frame
// was delivered.
func vmqCopied(a, b vmqStats) float64 {
	var copied, frames uint64
	for i := range min(len(a.VMs), len(b.VMs)) {
		was, now := a.VMs[i], b.VMs[i]
		copied += now.RxCopiedBytes - was.RxCopiedBytes
		frames += now.RxPackets - was.RxPackets
	}
	if frames == 0 {
		return -1
	}
	return float64(copied) / float64(frames)
}

// vmqDirect checks that every VM of a snapshot is on a dedicated queue
// writing frames straight into guest memory ("direct"), and with posted
// set that guest buffers are on its fill ring (the queue is ready before
// a trial; during one the guest may be behind): a dedicated measurement
// of a VM that fell back to copying would measure the copy.
func vmqDirect(st vmqStats, posted bool) error {
	if len(st.VMs) == 0 {
		return errors.New("no VMs")
	}
	for i, vm := range st.VMs {
		switch d := vm.Dedicated; {
		case d == nil:
			return fmt.Errorf("VM %d has no dedicated queue", i)
		case d.State != "direct":
			return fmt.Errorf("VM %d's dedicated queue is %q, not direct: %s", i, d.State, d.Reason)
		case posted && d.Posted <= 0:
			return fmt.Errorf("VM %d's dedicated queue has no guest buffers posted", i)
		}
	}
	return nil
}

// parseEthtoolDrops reads the drop and error counters of `ethtool -S`
// (veth: rx_queue_N_drops, rx_queue_N_xdp_drops, tx_queue_N_xdp_xmit_errors,
// ...), where frames are lost on the wire before either switch sees them.
func parseEthtoolDrops(out string) map[string]uint64 {
	m := map[string]uint64{}
	for _, line := range strings.Split(out, "\n") {
		name, val, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !(strings.Contains(name, "drop") || strings.Contains(name, "error")) {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(val), 10, 64); err == nil {
			m[name] = n
		}
	}
	return m
}

// counterDeltas names the counters that grew from a to b, prefixed.
func counterDeltas(prefix string, a, b map[string]uint64) []string {
	var out []string
	for k, v := range b {
		if v > a[k] {
			out = append(out, fmt.Sprintf("%s%s %d", prefix, k, v-a[k]))
		}
	}
	sort.Strings(out)
	return out
}
