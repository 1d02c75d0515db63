package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vmq/vmq/dataplane"
)

// FloodVM is the vm label of the flood socket's XDP statistics (the
// socket with SocketStats.VM == ""). The parentheses keep it apart from
// any real VM name.
const FloodVM = "(flood)"

// DetachedMode is the attach_mode label of vmq_nic_info while no XDP
// program is attached.
const DetachedMode = "none"

type collector struct {
	src Source

	nicInfo, xdpAttached, nicMTU, nicChannels, nicQueues, frameSize *prometheus.Desc

	filterRedirected, filterPassed, filterFlooded, filterMalformed, filterNoSocket *prometheus.Desc

	vmInfo, vmRxPackets, vmRxBytes, vmTxPackets, vmTxBytes, vmDrops, vmFlood, vmXDPResent *prometheus.Desc
	// Checksum and TSO offloads (dataplane/offload.go).
	vmOflPassed, vmOflSegmented, vmOflSegments, vmOflCsum *prometheus.Desc
	vmFilterPackets, vmFilterBytes, vmFilterRedirErrs     *prometheus.Desc
	vmqRxPackets, vmqRxBytes, vmqTxPackets, vmqTxBytes    *prometheus.Desc
	vmLimit                                               *prometheus.Desc
	// Dedicated queues.
	vmRxCopied, dedInfo, dedFrames, dedBytes, dedFallbacks, dedPosted *prometheus.Desc

	xskZeroCopy, xskRxDropped, xskRxInvalid, xskTxInvalid, xskRxRingFull, xskFillEmpty, xskTxEmpty *prometheus.Desc

	wBusy, wIdle, wBatches, wWakeups, wPolls, wVirtqueues, wSockets, umemFree, umemFrames                                 *prometheus.Desc
	wStalls, wKickMutes, umemInFlight, wMailboxDrops, wTxPath, wTxFrames, wXDPCalls, wXDPFallbacks, wXDPDrops, wXDPResent *prometheus.Desc

	portInfo, portConnected, portFeatures, portQueuePairs, portRingSize, portKicks, portCalls, portBroken, portTimeouts, portPeerRejected, portRingStarts, portRingStartsPaced, portMessagesPaced *prometheus.Desc
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(Namespace+"_"+name, help, labels, nil)
}

// NewCollector returns the collector of every vmq_* dataplane metric. It
// takes one snapshot from src per scrape.
func NewCollector(src Source) prometheus.Collector {
	vm := []string{"vm"}
	vmq := []string{"vm", "queue"}
	q := []string{"queue"}
	return &collector{
		src: src,

		nicInfo:     desc("nic_info", "Always 1; the NIC vmq serves, its driver and the XDP attach mode (native, generic, none).", "nic", "driver", "attach_mode"),
		xdpAttached: desc("xdp_attached", "1 while the vmq XDP program is attached to the NIC, 0 when it is not.", "nic"),
		nicMTU:      desc("nic_mtu_bytes", "MTU of the NIC.", "nic"),
		nicChannels: desc("nic_channels", "Combined or rx channels the NIC reports (ethtool).", "nic"),
		nicQueues:   desc("nic_queues", "NIC queues vmq serves (one worker each).", "nic"),
		frameSize:   desc("umem_frame_size_bytes", "Size of one UMEM frame.", "nic"),

		filterRedirected: desc("filter_redirected_packets_total", "Frames the XDP filter redirected into a VM's AF_XDP socket.", "nic"),
		filterPassed:     desc("filter_passed_packets_total", "Frames the XDP filter passed to the host stack.", "nic"),
		filterFlooded:    desc("filter_flooded_packets_total", "Broadcast/multicast frames the XDP filter sent to the flood socket.", "nic"),
		filterMalformed:  desc("filter_malformed_packets_total", "Frames the XDP filter could not parse.", "nic"),
		filterNoSocket:   desc("filter_no_socket_packets_total", "Frames for a known VM that had no AF_XDP socket on the receiving queue.", "nic"),

		vmInfo:            desc("vm_info", "Always 1; a VM's steering key (MAC, VLAN) and filter slot.", "vm", "mac", "vlan", "slot"),
		vmRxPackets:       desc("vm_rx_packets_total", "Frames delivered to the VM (wire or other VMs to guest).", vm...),
		vmRxBytes:         desc("vm_rx_bytes_total", "Bytes delivered to the VM.", vm...),
		vmTxPackets:       desc("vm_tx_packets_total", "Frames the VM sent (guest to wire or other VMs).", vm...),
		vmTxBytes:         desc("vm_tx_bytes_total", "Bytes the VM sent.", vm...),
		vmDrops:           desc("vm_drops_total", "Frames to or from the VM that vmq dropped, by reason.", "vm", "reason"),
		vmFlood:           desc("vm_flood_copies_total", "Broadcast/multicast copies delivered to the VM.", vm...),
		vmXDPResent:       desc("vm_xdp_tx_resent_total", "The VM's wire frames the NIC's driver dropped from an XDP transmit call, sent again through the VM's socket.", vm...),
		vmOflPassed:       desc("vm_offload_passed_total", "TSO or open-checksum frames the VM sent that went to a VM as they were.", vm...),
		vmOflSegmented:    desc("vm_offload_segmented_total", "TSO frames the VM sent that vmq cut into MTU-sized frames.", vm...),
		vmOflSegments:     desc("vm_offload_segments_total", "Frames vmq cut from the VM's TSO frames.", vm...),
		vmOflCsum:         desc("vm_offload_csum_fills_total", "Checksums vmq filled in for the VM's frames.", vm...),
		vmFilterPackets:   desc("vm_filter_packets_total", "Frames the XDP filter matched to the VM's slot.", vm...),
		vmFilterBytes:     desc("vm_filter_bytes_total", "Bytes the XDP filter matched to the VM's slot.", vm...),
		vmFilterRedirErrs: desc("vm_filter_redirect_errors_total", "Frames matched to the VM whose bpf_redirect_map failed.", vm...),
		vmqRxPackets:      desc("vm_queue_rx_packets_total", "Frames delivered to the VM, by NIC queue.", vmq...),
		vmqRxBytes:        desc("vm_queue_rx_bytes_total", "Bytes delivered to the VM, by NIC queue.", vmq...),
		vmqTxPackets:      desc("vm_queue_tx_packets_total", "Frames the VM sent, by NIC queue.", vmq...),
		vmqTxBytes:        desc("vm_queue_tx_bytes_total", "Bytes the VM sent, by NIC queue.", vmq...),
		vmLimit:           desc("vm_limit", "A VM's QoS limit: direction rx (to the guest) or tx (from it), unit packets or bits per second; direction flood: broadcast and multicast packets per second from the guest (storm control, dropped as storm_control). Absent: unlimited. Frames over an rx or tx limit are dropped as rate_limited.", "vm", "direction", "unit"),

		vmRxCopied:    desc("vm_rx_copied_bytes_total", "Frame bytes the workers copied into the VM's receive buffers; frames a dedicated queue wrote in place are not copied.", vm...),
		dedInfo:       desc("vm_dedicated_queue_info", "Always 1 for a VM that asked for a dedicated queue: the queue, its state (direct, waiting for the guest, copy (fallback), shared (fallback)) and whether it is zero-copy (1) or copy mode (0).", "vm", "queue", "state", "zero_copy"),
		dedFrames:     desc("vm_dedicated_frames_total", "Frames the kernel or NIC wrote straight into the VM's buffers on its dedicated queue.", vm...),
		dedBytes:      desc("vm_dedicated_bytes_total", "Bytes of those frames.", vm...),
		dedFallbacks:  desc("vm_dedicated_fallbacks_total", "Times the VM's dedicated queue fell back (to copying or to shared mode); the log and vmqctl vm show say why.", vm...),
		dedPosted:     desc("vm_dedicated_posted_buffers", "Guest receive buffers on the dedicated queue's fill ring now.", vm...),
		xskZeroCopy:   desc("xsk_zero_copy", "1 if the AF_XDP socket is bound in zero-copy mode, 0 for copy mode.", vmq...),
		xskRxDropped:  desc("xsk_rx_dropped_total", "XDP_STATISTICS rx_dropped: frames the kernel dropped for the socket.", vmq...),
		xskRxInvalid:  desc("xsk_rx_invalid_descs_total", "XDP_STATISTICS rx_invalid_descs.", vmq...),
		xskTxInvalid:  desc("xsk_tx_invalid_descs_total", "XDP_STATISTICS tx_invalid_descs.", vmq...),
		xskRxRingFull: desc("xsk_rx_ring_full_total", "XDP_STATISTICS rx_ring_full: frames dropped because the socket's rx ring was full.", vmq...),
		xskFillEmpty:  desc("xsk_fill_ring_empty_total", "XDP_STATISTICS rx_fill_ring_empty_descs: times the fill ring was empty.", vmq...),
		xskTxEmpty:    desc("xsk_tx_ring_empty_total", "XDP_STATISTICS tx_ring_empty_descs: times the tx ring was empty.", vmq...),

		wBusy:       desc("worker_busy_seconds_total", "Time the queue's worker spent processing batches.", q...),
		wIdle:       desc("worker_idle_seconds_total", "Time the queue's worker spent waiting for work.", q...),
		wBatches:    desc("worker_batches_total", "Batches the queue's worker processed.", q...),
		wWakeups:    desc("worker_wakeups_total", "Syscalls the worker made to wake the kernel (need_wakeup).", q...),
		wPolls:      desc("worker_polls_total", "Times the worker slept in poll(2).", q...),
		wVirtqueues: desc("worker_virtqueues", "Guest virtqueues the queue's worker owns.", q...),
		wSockets:    desc("worker_xdp_sockets", "AF_XDP sockets bound to the queue.", q...),
		umemFree:    desc("umem_free_frames", "Free frames in the queue's UMEM.", q...),
		umemFrames:  desc("umem_frames", "Frames in the queue's UMEM.", q...),
		wStalls:     desc("worker_stalls_total", "Times the queue's worker was awake without finishing a round for 100 ms (the watchdog logs the VM it was serving).", q...),
		wKickMutes:  desc("worker_kick_mutes_total", "Times a guest's transmit kicks kept finding no frames and its kick fd left the worker's sleep for 1-8 ms (a kick storm).", q...),
		wMailboxDrops: desc("worker_mailbox_drops_total", "Frames other workers could not hand to the queue's worker: the mailbox had no room for the frame's source "+
			"(a VM, or the wire's broadcasts, holds at most as many slots as are free); counted on the frame's VM as mailbox_full too.", q...),
		wTxPath:       desc("worker_tx_path_info", "Always 1; how the queue's worker sends guest frames to the wire now: xdp (rounds of at least tx.xdp_min_batch frames in one BPF_PROG_RUN call) or socket.", "queue", "path"),
		wTxFrames:     desc("worker_tx_frames_total", "Guest frames the queue's worker sent to the wire, by path (xdp, socket).", "queue", "path"),
		wXDPCalls:     desc("worker_xdp_tx_calls_total", "BPF_PROG_RUN calls of the XDP transmit.", q...),
		wXDPFallbacks: desc("worker_xdp_tx_fallbacks_total", "XDP transmit calls that failed (their frames left went through the sockets) or lost frames in the driver; the worker then stays on the sockets until its next check of the NIC (1 s).", q...),
		wXDPDrops:     desc("worker_xdp_tx_drops_total", "Frames of the XDP transmit that were lost: refused by the program as malformed, or by the NIC's driver where the xdp tracepoints could not say which frames (never expected).", q...),
		wXDPResent:    desc("worker_xdp_tx_resent_total", "Frames the NIC's driver dropped from the worker's XDP transmit calls (named by the xdp tracepoints), sent again through their VMs' sockets.", q...),
		umemInFlight: desc("worker_inflight_frames", "UMEM frames of the queue outside its allocator, counted from the rings and the worker's stash; "+
			"with no traffic, umem_free_frames + this = umem_frames, or frames were lost.", q...),

		portInfo:            desc("port_info", "Always 1; a VM's vhost-user socket path and mode (server, client).", "vm", "path", "mode"),
		portConnected:       desc("port_connected", "1 while a vhost-user frontend is connected to the VM's port.", vm...),
		portFeatures:        desc("port_features_info", "Always 1; the negotiated virtio and vhost-user protocol feature bits, in hex.", "vm", "features", "protocol_features"),
		portQueuePairs:      desc("port_queue_pairs", "Virtqueue pairs of the VM's device.", vm...),
		portRingSize:        desc("port_ring_size", "Size of one vring of the VM's device.", "vm", "vring"),
		portKicks:           desc("port_kicks_total", "Kicks (guest notifications) received on the VM's port.", vm...),
		portCalls:           desc("port_calls_total", "Calls (interrupts) vmq signalled to the guest.", vm...),
		portBroken:          desc("port_broken", "1 if the VM's device was marked broken (bad guest input); it stays so until the guest resets it.", vm...),
		portTimeouts:        desc("port_control_timeouts_total", "vhost-user connections closed because a message did not arrive whole, or a reply was not read, in time.", vm...),
		portPeerRejected:    desc("port_peer_rejected_total", "vhost-user connections refused because the peer's uid is not in allowed_uids.", vm...),
		portRingStarts:      desc("port_ring_starts_total", "Virtqueues of the VM's device handed to a worker (each start follows a stop but the first).", vm...),
		portMessagesPaced:   desc("port_messages_paced_total", "vhost-user messages and connections that waited for the port's limit on messages (a front-end sending faster).", vm...),
		portRingStartsPaced: desc("port_ring_starts_paced_total", "Ring starts that waited for the port's limit on ring starts (a guest stopping and starting its rings faster).", vm...),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.nicInfo, c.xdpAttached, c.nicMTU, c.nicChannels, c.nicQueues, c.frameSize,
		c.filterRedirected, c.filterPassed, c.filterFlooded, c.filterMalformed, c.filterNoSocket,
		c.vmInfo, c.vmRxPackets, c.vmRxBytes, c.vmTxPackets, c.vmTxBytes, c.vmDrops, c.vmFlood, c.vmXDPResent,
		c.vmOflPassed, c.vmOflSegmented, c.vmOflSegments, c.vmOflCsum,
		c.vmFilterPackets, c.vmFilterBytes, c.vmFilterRedirErrs,
		c.vmqRxPackets, c.vmqRxBytes, c.vmqTxPackets, c.vmqTxBytes, c.vmLimit,
		c.vmRxCopied, c.dedInfo, c.dedFrames, c.dedBytes, c.dedFallbacks, c.dedPosted,
		c.xskZeroCopy, c.xskRxDropped, c.xskRxInvalid, c.xskTxInvalid, c.xskRxRingFull, c.xskFillEmpty, c.xskTxEmpty,
		c.wBusy, c.wIdle, c.wBatches, c.wWakeups, c.wPolls, c.wVirtqueues, c.wSockets, c.umemFree, c.umemFrames,
		c.wStalls, c.wKickMutes, c.umemInFlight, c.wMailboxDrops, c.wTxPath, c.wTxFrames, c.wXDPCalls, c.wXDPFallbacks, c.wXDPDrops, c.wXDPResent,
		c.portInfo, c.portConnected, c.portFeatures, c.portQueuePairs, c.portRingSize, c.portKicks, c.portCalls, c.portBroken, c.portTimeouts, c.portPeerRejected, c.portRingStarts, c.portRingStartsPaced, c.portMessagesPaced,
	} {
		ch <- d
	}
}

// emit sends one const metric. A label value Prometheus rejects (a VM name
// or socket path that is not UTF-8) becomes an invalid metric: the scrape
// reports it and still serves every other metric.
func emit(ch chan<- prometheus.Metric, d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v uint64, labels ...string) {
	emit(ch, d, prometheus.CounterValue, float64(v), labels...)
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	emit(ch, d, prometheus.GaugeValue, v, labels...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Queue numbers are small; their label strings are made once.
var queueLabels = func() (s [256]string) {
	for i := range s {
		s[i] = strconv.Itoa(i)
	}
	return s
}()

func queueLabel(q int) string {
	if q >= 0 && q < len(queueLabels) {
		return queueLabels[q]
	}
	return strconv.Itoa(q)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Snapshot()

	nic := s.NIC.Name
	mode := s.NIC.AttachMode
	if mode == "" || !s.NIC.Attached {
		mode = DetachedMode
	}
	gauge(ch, c.nicInfo, 1, nic, s.NIC.Driver, mode)
	gauge(ch, c.xdpAttached, b2f(s.NIC.Attached), nic)
	gauge(ch, c.nicMTU, float64(s.NIC.MTU), nic)
	gauge(ch, c.nicChannels, float64(s.NIC.Channels), nic)
	gauge(ch, c.nicQueues, float64(len(s.NIC.Queues)), nic)
	gauge(ch, c.frameSize, float64(s.NIC.FrameSize), nic)

	f := &s.Filter
	counter(ch, c.filterRedirected, f.Redirected, nic)
	counter(ch, c.filterPassed, f.Passed, nic)
	counter(ch, c.filterFlooded, f.Flooded, nic)
	counter(ch, c.filterMalformed, f.Malformed, nic)
	counter(ch, c.filterNoSocket, f.NoSocket, nic)

	for i := range s.VMs {
		c.collectVM(ch, &s.VMs[i])
	}

	for i := range s.Sockets {
		k := &s.Sockets[i]
		vm := k.VM
		if vm == "" {
			vm = FloodVM
		}
		ql := queueLabel(k.Queue)
		gauge(ch, c.xskZeroCopy, b2f(k.ZeroCopy), vm, ql)
		counter(ch, c.xskRxDropped, k.RxDropped, vm, ql)
		counter(ch, c.xskRxInvalid, k.RxInvalid, vm, ql)
		counter(ch, c.xskTxInvalid, k.TxInvalid, vm, ql)
		counter(ch, c.xskRxRingFull, k.RxRingFull, vm, ql)
		counter(ch, c.xskFillEmpty, k.FillRingEmpty, vm, ql)
		counter(ch, c.xskTxEmpty, k.TxRingEmpty, vm, ql)
	}

	for i := range s.Workers {
		w := &s.Workers[i]
		ql := queueLabel(w.Queue)
		emit(ch, c.wBusy, prometheus.CounterValue, float64(w.BusyNS)/1e9, ql)
		emit(ch, c.wIdle, prometheus.CounterValue, float64(w.IdleNS)/1e9, ql)
		counter(ch, c.wBatches, w.Batches, ql)
		counter(ch, c.wWakeups, w.Wakeups, ql)
		counter(ch, c.wPolls, w.Polls, ql)
		gauge(ch, c.wVirtqueues, float64(w.VirtQueues), ql)
		gauge(ch, c.wSockets, float64(w.XDPSockets), ql)
		gauge(ch, c.umemFree, float64(w.FreeFrames), ql)
		gauge(ch, c.umemFrames, float64(w.TotalFrames), ql)
		counter(ch, c.wStalls, w.Stalls, ql)
		counter(ch, c.wKickMutes, w.KickMutes, ql)
		counter(ch, c.wMailboxDrops, w.MailboxDrops, ql)
		gauge(ch, c.umemInFlight, float64(w.InFlightFrames), ql)
		gauge(ch, c.wTxPath, 1, ql, w.TxPath)
		counter(ch, c.wTxFrames, w.TxXDPFrames, ql, "xdp")
		counter(ch, c.wTxFrames, w.TxSocketFrames, ql, "socket")
		counter(ch, c.wXDPCalls, w.XDPTxCalls, ql)
		counter(ch, c.wXDPFallbacks, w.XDPTxFallbacks, ql)
		counter(ch, c.wXDPDrops, w.XDPTxDrops, ql)
		counter(ch, c.wXDPResent, w.XDPTxResent, ql)
	}

	for i := range s.Ports {
		p := &s.Ports[i]
		gauge(ch, c.portInfo, 1, p.VM, p.Path, p.Mode)
		gauge(ch, c.portConnected, b2f(p.Connected), p.VM)
		gauge(ch, c.portFeatures, 1, p.VM, hex(p.Features), hex(p.ProtocolFeatures))
		gauge(ch, c.portQueuePairs, float64(p.QueuePairs), p.VM)
		for r, n := range p.RingSizes {
			gauge(ch, c.portRingSize, float64(n), p.VM, queueLabel(r))
		}
		counter(ch, c.portKicks, p.Kicks, p.VM)
		counter(ch, c.portCalls, p.Calls, p.VM)
		gauge(ch, c.portBroken, b2f(p.Broken != ""), p.VM)
		counter(ch, c.portTimeouts, p.Timeouts, p.VM)
		counter(ch, c.portPeerRejected, p.PeerRejected, p.VM)
		counter(ch, c.portRingStarts, p.RingStarts, p.VM)
		counter(ch, c.portRingStartsPaced, p.RingStartsPaced, p.VM)
		counter(ch, c.portMessagesPaced, p.MessagesPaced, p.VM)
	}
}

func (c *collector) collectVM(ch chan<- prometheus.Metric, v *dataplane.VMStats) {
	gauge(ch, c.vmInfo, 1, v.Name, v.MAC, strconv.Itoa(int(v.VLAN)), strconv.FormatUint(uint64(v.Slot), 10))
	counter(ch, c.vmRxPackets, v.RxPackets, v.Name)
	counter(ch, c.vmRxBytes, v.RxBytes, v.Name)
	counter(ch, c.vmTxPackets, v.TxPackets, v.Name)
	counter(ch, c.vmTxBytes, v.TxBytes, v.Name)
	counter(ch, c.vmFlood, v.FloodCopies, v.Name)
	counter(ch, c.vmXDPResent, v.XDPTxResent, v.Name)
	counter(ch, c.vmOflPassed, v.Offload.Passed, v.Name)
	counter(ch, c.vmOflSegmented, v.Offload.Segmented, v.Name)
	counter(ch, c.vmOflSegments, v.Offload.Segments, v.Name)
	counter(ch, c.vmOflCsum, v.Offload.CsumFills, v.Name)
	counter(ch, c.vmFilterPackets, v.FilterPackets, v.Name)
	counter(ch, c.vmFilterBytes, v.FilterBytes, v.Name)
	counter(ch, c.vmFilterRedirErrs, v.FilterRedirErrs, v.Name)
	counter(ch, c.vmRxCopied, v.RxCopiedBytes, v.Name)
	if d := v.Dedicated; d != nil {
		gauge(ch, c.dedInfo, 1, v.Name, strconv.Itoa(d.Queue), d.State, strconv.Itoa(int(b2f(d.ZeroCopy))))
		counter(ch, c.dedFrames, d.Frames, v.Name)
		counter(ch, c.dedBytes, d.Bytes, v.Name)
		counter(ch, c.dedFallbacks, d.Fallbacks, v.Name)
		gauge(ch, c.dedPosted, float64(d.Posted), v.Name)
	}

	// Every known reason is exported, zero or not, so rate() and alerts
	// see a series from the VM's first scrape. The dataplane fills the
	// Drops array; DropsByReason (the API's form) is honoured too, and
	// a reason only it knows is exported as is.
	for r := dataplane.DropReason(0); r < dataplane.NumDropReasons; r++ {
		n := v.Drops[r]
		if m, ok := v.DropsByReason[r.String()]; ok && m > n {
			n = m
		}
		counter(ch, c.vmDrops, n, v.Name, r.String())
	}
	for reason, n := range v.DropsByReason {
		if !knownReason(reason) {
			counter(ch, c.vmDrops, n, v.Name, reason)
		}
	}

	for _, l := range []struct {
		dir, unit string
		v         uint64
	}{{"rx", "packets", v.Limits.RxPPS}, {"rx", "bits", v.Limits.RxBPS}, {"tx", "packets", v.Limits.TxPPS}, {"tx", "bits", v.Limits.TxBPS}, {"flood", "packets", v.Limits.FloodPPS}} {
		if l.v > 0 {
			gauge(ch, c.vmLimit, float64(l.v), v.Name, l.dir, l.unit)
		}
	}

	for i := range v.Queues {
		q := &v.Queues[i]
		ql := queueLabel(q.Queue)
		counter(ch, c.vmqRxPackets, q.RxPackets, v.Name, ql)
		counter(ch, c.vmqRxBytes, q.RxBytes, v.Name, ql)
		counter(ch, c.vmqTxPackets, q.TxPackets, v.Name, ql)
		counter(ch, c.vmqTxBytes, q.TxBytes, v.Name, ql)
	}
}

func knownReason(s string) bool {
	for r := dataplane.DropReason(0); r < dataplane.NumDropReasons; r++ {
		if r.String() == s {
			return true
		}
	}
	return false
}

func hex(v uint64) string { return "0x" + strconv.FormatUint(v, 16) }
