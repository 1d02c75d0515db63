package dataplane

// The snapshot types below are the dataplane's report to the control plane
// (vmqctl stats, the API) and to the Prometheus collectors. A snapshot is
// taken on demand; counters are monotonic since the daemon started.

// DropReason says why a frame meant for (or coming from) a VM was dropped.
type DropReason int

const (
	DropVirtqueueFull DropReason = iota // the guest posted no RX buffer
	DropGuestNotReady                   // no guest connected, or its rings not enabled
	DropSpoofed                         // guest frame with a source MAC not its own
	DropNoUMEMFrame                     // no free UMEM frame for guest TX
	DropBroken                          // the guest's device is marked broken
	DropTxRingFull                      // the AF_XDP tx ring had no room
	DropMalformed                       // a guest frame too short or otherwise unusable
	DropRateLimited                     // over the VM's QoS limit (Limits)
	DropBudget                          // the VM used up its fair share of the worker's round
	DropOversize                        // a guest frame longer than the MTU allows
	DropBadOffload                      // a virtio-net header (checksum, TSO) that does not fit its frame
	DropStormControl                    // a broadcast or multicast frame over the VM's flood limit (Limits.FloodPPS)
	DropMailboxFull                     // the mailbox to the worker of the VM's receive queue had no room for the frame's source (mailbox.go)
	NumDropReasons
)

var dropReasonNames = [NumDropReasons]string{
	"virtqueue_full", "guest_not_ready", "spoofed", "no_umem_frame",
	"broken", "tx_ring_full", "malformed", "rate_limited", "budget",
	"oversize", "bad_offload", "storm_control", "mailbox_full",
}

// String is the reason's label value in metrics and the API.
func (r DropReason) String() string {
	if r < 0 || r >= NumDropReasons {
		return "unknown"
	}
	return dropReasonNames[r]
}

// Snapshot is the state of the whole dataplane at one moment.
type Snapshot struct {
	NIC     NICStatus     `json:"nic"`
	Filter  FilterStats   `json:"filter"`
	Workers []WorkerStats `json:"workers"`
	VMs     []VMStats     `json:"vms"`
	Sockets []SocketStats `json:"sockets"`
	Ports   []PortStats   `json:"ports"`
}

// NICStatus describes the NIC and how vmq attached to it.
type NICStatus struct {
	Name       string `json:"name"`
	Index      int    `json:"ifindex"`
	Driver     string `json:"driver"`
	MTU        int    `json:"mtu"`
	Queues     []int  `json:"queues"`
	Channels   int    `json:"channels"`    // combined or rx channels reported by ethtool
	AttachMode string `json:"attach_mode"` // "native", "generic" or "" when detached
	Attached   bool   `json:"attached"`
	FrameSize  int    `json:"frame_size"`
	// Notes explain fallbacks (generic XDP, copy mode) in words.
	Notes []string `json:"notes,omitempty"`
}

// FilterStats are the XDP filter's global counters, summed over CPUs.
type FilterStats struct {
	Redirected uint64 `json:"redirected"`
	Passed     uint64 `json:"passed"`
	Flooded    uint64 `json:"flooded"`
	Malformed  uint64 `json:"malformed"`
	NoSocket   uint64 `json:"no_socket"`
}

// WorkerStats describe one worker (one NIC queue).
type WorkerStats struct {
	Queue int `json:"queue"`
	// CPUs is where the worker's thread may run, as the kernel has it now
	// (kernel list format, e.g. "2"): one CPU when worker_cpus places it;
	// "" before the worker starts.
	CPUs        string `json:"cpus"`
	BusyNS      uint64 `json:"busy_ns"`
	IdleNS      uint64 `json:"idle_ns"`
	Batches     uint64 `json:"batches"`
	Wakeups     uint64 `json:"wakeups"` // sendto/poll calls made to wake the kernel
	Polls       uint64 `json:"polls"`   // times the worker slept in poll(2)
	VirtQueues  int    `json:"virtqueues"`
	XDPSockets  int    `json:"xdp_sockets"`
	FreeFrames  int    `json:"free_frames"`
	TotalFrames int    `json:"total_frames"`
	// InFlightFrames are the frames outside the allocator, counted from the
	// rings (fill, every socket's rx and tx, completion) and the worker's
	// stash, not from the allocator: once traffic stops,
	// FreeFrames + InFlightFrames == TotalFrames, or frames were lost.
	InFlightFrames int `json:"inflight_frames"`
	// Stalls counts the times the watchdog saw the worker stuck in one
	// round for longer than StallThreshold.
	Stalls uint64 `json:"stalls"`
	// KickMutes counts the times a guest's transmit kick fd left the
	// worker's sleep for a while: its kicks kept finding no frames.
	KickMutes uint64 `json:"kick_mutes"`
	// Frames are the frames the worker moved: taken from AF_XDP sockets,
	// popped from guest TX rings, taken from other workers' mailboxes.
	Frames uint64 `json:"frames"`
	// BusyRoundNS and BusyRoundFrames: the worker times one round in
	// eight (two clock reads); these are the summed time of the timed
	// rounds that moved frames and the frames they moved. Their ratio is
	// the worker's busy ns per frame (like DPDK's --record-core-cycles:
	// busy iterations only). Published every 1024 busy rounds and before
	// the worker sleeps.
	BusyRoundNS     uint64 `json:"busy_round_ns"`
	BusyRoundFrames uint64 `json:"busy_round_frames"`
	// MailboxDrops are the frames other workers could not hand to this
	// one: its mailboxes were full (or, for flooded copies, at their
	// share of them). The frame's VM counts it as a drop too.
	MailboxDrops uint64 `json:"mailbox_drops"`
	// TxPath is how the worker's wire frames leave now: "xdp" (rounds of
	// at least the threshold through one BPF_PROG_RUN, the rest through
	// the sockets) or "socket". TxXDPFrames and TxSocketFrames count the
	// frames sent each way, XDPTxCalls the calls, XDPTxFallbacks the
	// failed calls (their frames took the sockets) and calls the driver
	// dropped frames of. XDPTxResent are frames the NIC's driver refused
	// (tracepoints xdp:xdp_redirect_err and xdp:xdp_devmap_xmit on the
	// worker's thread say which) that the worker sent again through their
	// VM's socket (each VM's XDPTxResent); XDPTxDrops frames lost: refused
	// by the program as malformed, or by the driver where the tracepoints
	// could not say which frames (not in any VM's drops; never expected).
	TxPath         string `json:"tx_path"`
	TxXDPFrames    uint64 `json:"tx_xdp_frames"`
	TxSocketFrames uint64 `json:"tx_socket_frames"`
	XDPTxCalls     uint64 `json:"xdp_tx_calls"`
	XDPTxFallbacks uint64 `json:"xdp_tx_fallbacks"`
	XDPTxDrops     uint64 `json:"xdp_tx_drops"`
	XDPTxResent    uint64 `json:"xdp_tx_resent"`
}

// BusyNSPerFrame is the worker's busy cost per frame (BusyRoundNS /
// BusyRoundFrames), 0 before any timed round moved frames.
func (s WorkerStats) BusyNSPerFrame() float64 {
	if s.BusyRoundFrames == 0 {
		return 0
	}
	return float64(s.BusyRoundNS) / float64(s.BusyRoundFrames)
}

// VMStats are one VM's counters; RX is wire→guest, TX is guest→wire/VMs.
type VMStats struct {
	Name        string `json:"name"`
	Slot        uint32 `json:"slot"`
	MAC         string `json:"mac"`
	VLAN        uint16 `json:"vlan"`
	RxPackets   uint64 `json:"rx_packets"`
	RxBytes     uint64 `json:"rx_bytes"`
	TxPackets   uint64 `json:"tx_packets"`
	TxBytes     uint64 `json:"tx_bytes"`
	FloodCopies uint64 `json:"flood_copies"`
	// XDPTxResent are the VM's wire frames an XDP transmit call's driver
	// dropped, sent again through its socket (after frames of it that
	// followed them: the one reordering the XDP path makes).
	XDPTxResent uint64 `json:"xdp_tx_resent"`
	// RxCopiedBytes are the frame bytes the workers copied into the
	// guest's buffers; 0 for frames a dedicated queue wrote in place.
	RxCopiedBytes uint64 `json:"rx_copied_bytes"`
	// Dedicated is the VM's dedicated queue (nil: shared mode only).
	Dedicated     *DedicatedStats        `json:"dedicated,omitempty"`
	Drops         [NumDropReasons]uint64 `json:"-"`
	DropsByReason map[string]uint64      `json:"drops"`
	// Filter counters of the VM's slot in the XDP program.
	FilterPackets   uint64         `json:"filter_packets"`
	FilterBytes     uint64         `json:"filter_bytes"`
	FilterRedirErrs uint64         `json:"filter_redirect_errors"`
	Queues          []VMQueueStats `json:"queues,omitempty"`
	// Limits are the VM's QoS limits now (zero: unlimited).
	Limits Limits `json:"limits"`
	// Offloads: frames the guest sent with TSO or an open checksum that
	// went to a VM as they were, TSO frames cut in software and the
	// frames cut from them, checksums filled in software.
	Offload OffloadStats `json:"offload"`
}

// OffloadStats count the work the guest's offloads gave vmq (offload.go).
type OffloadStats struct {
	Passed    uint64 `json:"passed"`
	Segmented uint64 `json:"segmented"`
	Segments  uint64 `json:"segments"`
	CsumFills uint64 `json:"csum_fills"`
}

// VMQueueStats are a VM's counters on one NIC queue / virtqueue pair.
type VMQueueStats struct {
	Queue     int    `json:"queue"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
}

// SocketStats are one AF_XDP socket's kernel statistics (XDP_STATISTICS).
type SocketStats struct {
	VM            string `json:"vm"` // "" for the flood socket
	Queue         int    `json:"queue"`
	ZeroCopy      bool   `json:"zero_copy"`
	RxDropped     uint64 `json:"rx_dropped"`
	RxInvalid     uint64 `json:"rx_invalid"`
	TxInvalid     uint64 `json:"tx_invalid"`
	RxRingFull    uint64 `json:"rx_ring_full"`
	FillRingEmpty uint64 `json:"fill_ring_empty"`
	TxRingEmpty   uint64 `json:"tx_ring_empty"`
	// RxTooLong: multi-buffer frames dropped for having more descriptors
	// than the worker takes at once (longer than the MTU allows).
	RxTooLong uint64 `json:"rx_too_long,omitempty"`
}

// PortStats describe one VM's vhost-user port.
type PortStats struct {
	VM               string `json:"vm"`
	Path             string `json:"path"`
	Mode             string `json:"mode"` // "server" or "client"
	Connected        bool   `json:"connected"`
	Features         uint64 `json:"features"`
	ProtocolFeatures uint64 `json:"protocol_features"`
	QueuePairs       int    `json:"queue_pairs"`
	RingSizes        []int  `json:"ring_sizes,omitempty"`
	// RingsRunning counts the virtqueues a worker serves now (started by
	// their kick fd and enabled).
	RingsRunning int    `json:"rings_running"`
	Kicks        uint64 `json:"kicks"`
	Calls        uint64 `json:"calls"`
	Broken       string `json:"broken,omitempty"` // why the device was marked broken
	// Standby: a migration's standby port (the destination QEMU's).
	Standby bool `json:"standby,omitempty"`
	// Control connections closed because a message did not arrive whole,
	// or a reply was not read, within the port's message timeout.
	Timeouts uint64 `json:"timeouts"`
	// Connections refused because the peer's uid is not allowed.
	PeerRejected uint64 `json:"peer_rejected"`
	// Rings the front-end had started, and how many of those starts
	// waited for the port's ring-start limit (vhostuser.DefaultRingStarts).
	RingStarts      uint64 `json:"ring_starts"`
	RingStartsPaced uint64 `json:"ring_starts_paced"`
	// Messages (and connections) that waited for the port's limit on
	// messages (vhostuser.DefaultMessages).
	MessagesPaced uint64 `json:"messages_paced"`
}
