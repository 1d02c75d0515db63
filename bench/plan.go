package bench

import (
	"fmt"
	"slices"
	"strconv"
)

// Directions of a measurement.
const (
	RX    = "rx"    // wire → guest
	TX    = "tx"    // guest → wire
	VM2VM = "vm2vm" // guest → guest through the switch
	// Dedicated is not a direction but the plan's part (VMQ_BENCH_DIRS)
	// that measures RX on a NIC queue of the VM's own: wire → guest on
	// queue DedicatedQueue, three systems (vmq shared, vmq dedicated, DPDK).
	Dedicated = "dedicated"
)

// DedicatedQueue is the NIC queue the dedicated part's frames arrive on.
// On veth a frame lands on the rx queue of the CPU that sent it, so the
// generator runs on CPU DedicatedQueue (the way a NIC's flow rule would
// place the VM's MAC on its queue).
const DedicatedQueue = 1

// Systems under test.
const (
	VMQ  = "vmq"  // vmqd: XDP filter → AF_XDP → worker → vhost-user
	DPDK = "dpdk" // testpmd io forwarding: net_af_xdp (or net_vhost) ↔ net_vhost
	// VMQDedicated is vmqd with the VM on a dedicated queue: the queue's
	// AF_XDP socket has the guest's memory as its UMEM, so the kernel
	// writes each frame into the guest's buffer and the worker copies
	// nothing. (VMQ on a Case with a Queue is the shared, copying path on
	// that queue.)
	VMQDedicated = "vmq-dedicated"
	// VMQB is another vmqd binary (VMQ_BENCH_VMQD_B) in the zero-loss
	// searches, interleaved with the others: an A/B of two vmqd builds
	// under the same drift of the machine.
	VMQB = "vmq-b"
)

// Endpoints: who sends and who receives. The same binaries face both
// systems.
const (
	Pktgen    = "vmq-pktgen"     // vmq-pktgen --mode xdp on the wire end
	WireSink  = "wire"           // an XDP_DROP counter on the wire end
	TestpmdRx = "testpmd-rxonly" // DPDK testpmd net_virtio_user, rxonly
	TestpmdTx = "testpmd-txonly" // DPDK testpmd net_virtio_user, txonly
	GoGuest   = "vmq-guest"      // the vmq-guest binary (receives, or sends with --rate)
	// The same testpmd guests on packed virtqueues (packed_vq=1), for
	// packed against split rings on both systems.
	TestpmdRxPacked = "testpmd-rxonly-packed"
	TestpmdTxPacked = "testpmd-txonly-packed"
	NoCPU           = -1
)

// Placement puts the traffic source (generator or sending guest), the
// switch and the receiving guest on CPUs. Dst is NoCPU when the receiver
// is the wire sink: its XDP program runs where the switch transmits.
//
// Split puts the switch's control part on the source's CPU and only its
// forwarding on SUT, the two systems alike: vmqd's housekeeping_cpus
// (the Go runtime's threads, API, ports) and DPDK's main lcore on Src,
// vmqd's worker (worker_cpus) and DPDK's forwarding lcore on SUT. Written
// "0/1+0/wire": forwarding on 1, control on 0. Without it both parts of
// both systems share SUT.
type Placement struct {
	Src, SUT, Dst int
	Split         bool `json:"split,omitempty"`
}

func (p Placement) String() string {
	d := "wire"
	if p.Dst != NoCPU {
		d = strconv.Itoa(p.Dst)
	}
	sut := strconv.Itoa(p.SUT)
	if p.Split {
		sut += "+" + strconv.Itoa(p.Src)
	}
	return fmt.Sprintf("%d/%s/%s", p.Src, sut, d)
}

// Ctl is the CPU of the switch's control part (vmqd's housekeeping
// threads, DPDK's main lcore).
func (p Placement) Ctl() int {
	if p.Split {
		return p.Src
	}
	return p.SUT
}

// Alone reports whether the switch has its CPU to itself.
func (p Placement) Alone() bool { return p.SUT != p.Src && p.SUT != p.Dst }

// Placements are every way two CPUs hold a direction's three parties,
// up to swapping the CPUs, except all on one CPU.
func Placements(dir string) []Placement {
	if dir == TX {
		return []Placement{{Src: 0, SUT: 1, Dst: NoCPU}, {Src: 0, SUT: 0, Dst: NoCPU}}
	}
	// switch alone; switch with the source; switch with the receiver.
	return []Placement{{Src: 0, SUT: 1, Dst: 0}, {Src: 0, SUT: 0, Dst: 1}, {Src: 0, SUT: 1, Dst: 1}}
}

// Case is one shape of work, measured on both systems with the same
// processes on the same CPUs.
type Case struct {
	Dir       string    `json:"dir"`
	Placement Placement `json:"placement"`
	Source    string    `json:"source"`
	Receiver  string    `json:"receiver"`
	// Queue is the NIC queue the wire's frames arrive on (0 for every
	// case but the dedicated part's, which runs on a veth with
	// DedicatedQueue+1 queues).
	Queue int `json:"queue,omitempty"`
}

// Key names a case without its frame size.
func (c Case) Key() string {
	q := ""
	if c.Queue != 0 {
		q = fmt.Sprintf(" q%d", c.Queue)
	}
	return fmt.Sprintf("%s%s %s %s→%s", c.Dir, q, c.Placement, c.Source, c.Receiver)
}

// Systems are the systems a case is measured on, in order: a case on a
// queue of its own has vmq twice (shared and dedicated).
func (c Case) Systems() []string {
	if c.Queue != 0 {
		return []string{VMQ, VMQDedicated, DPDK}
	}
	return []string{VMQ, DPDK}
}

// Rated reports whether the case's source can send at a given rate, which
// the zero-loss search needs (testpmd txonly sends as fast as it can).
func (c Case) Rated() bool { return c.Source != TestpmdTx && c.Source != TestpmdTxPacked }

// Plan is every case of a run, in order: RX, TX, VM→VM, the dedicated
// part (as dirs lists them); within each, the placements, then the guests.
func Plan(dirs []string) []Case {
	var cases []Case
	for _, dir := range dirs {
		if dir == Dedicated {
			cases = append(cases, DedicatedCases()...)
			continue
		}
		for _, pl := range Placements(dir) {
			switch dir {
			case RX:
				cases = append(cases, Case{Dir: dir, Placement: pl, Source: Pktgen, Receiver: TestpmdRx}, Case{Dir: dir, Placement: pl, Source: Pktgen, Receiver: GoGuest})
			case TX:
				cases = append(cases, Case{Dir: dir, Placement: pl, Source: TestpmdTx, Receiver: WireSink}, Case{Dir: dir, Placement: pl, Source: GoGuest, Receiver: WireSink})
			case VM2VM:
				// The receiver is testpmd for both senders: its counters
				// are live, so one receiver serves every trial.
				cases = append(cases, Case{Dir: dir, Placement: pl, Source: TestpmdTx, Receiver: TestpmdRx}, Case{Dir: dir, Placement: pl, Source: GoGuest, Receiver: TestpmdRx})
			}
		}
		// Packed rings, with the switch alone on its CPU: the split ring's
		// testpmd case again with the guest on packed rings.
		pl := Placements(dir)[0]
		switch dir {
		case RX:
			cases = append(cases, Case{Dir: dir, Placement: pl, Source: Pktgen, Receiver: TestpmdRxPacked})
		case TX:
			cases = append(cases, Case{Dir: dir, Placement: pl, Source: TestpmdTxPacked, Receiver: WireSink})
		}
	}
	return cases
}

// WithSplit adds, right after (or, first, right before) each case of
// dirs whose switch is alone on its CPU (queue 0, split rings), the same
// case with the switch's control part on the source's CPU
// (Placement.Split), so the two run in turn.
func WithSplit(cases []Case, dirs []string, first bool) []Case {
	var out []Case
	for _, c := range cases {
		out = append(out, c)
		if slices.Contains(dirs, c.Dir) && c.Placement.Alone() && !c.Placement.Split && c.Queue == 0 &&
			c.Source != TestpmdTxPacked && c.Receiver != TestpmdRxPacked {
			c.Placement.Split = true
			out = append(out, c)
			if first {
				out[len(out)-1], out[len(out)-2] = out[len(out)-2], out[len(out)-1]
			}
		}
	}
	return out
}

// DedicatedCases are RX into the testpmd rxonly guest with the frames on
// DedicatedQueue: RX's placements with the two CPUs swapped, so that the
// generator is on CPU 1 and its frames land on queue 1.
func DedicatedCases() []Case {
	var cases []Case
	swap := func(cpu int) int { return 1 - cpu }
	for _, pl := range Placements(RX) {
		cases = append(cases, Case{Dir: RX, Placement: Placement{Src: swap(pl.Src), SUT: swap(pl.SUT), Dst: swap(pl.Dst)},
			Source: Pktgen, Receiver: TestpmdRx, Queue: DedicatedQueue})
	}
	return cases
}

// ZeroLossCase is the case each direction's zero-loss search runs in: the
// switch alone on its CPU, a source that takes a rate.
func ZeroLossCase(dir string) Case {
	for _, c := range Plan([]string{dir}) {
		if c.Placement.Alone() && c.Rated() {
			return c
		}
	}
	panic("no zero-loss case for " + dir)
}
