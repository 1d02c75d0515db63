package metrics

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/internal/testenv"
)

// fakeSnapshot is a dataplane with two VMs on two queues, known numbers
// everywhere.
func fakeSnapshot() dataplane.Snapshot {
	web := dataplane.VMStats{
		Name: "web", Slot: 1, MAC: "52:54:00:00:00:01", VLAN: 10,
		RxPackets: 1001, RxBytes: 1_500_000, TxPackets: 2002, TxBytes: 3_000_000,
		FloodCopies: 7, FilterPackets: 1005, FilterBytes: 1_506_000, FilterRedirErrs: 4,
		Queues: []dataplane.VMQueueStats{
			{Queue: 0, RxPackets: 600, RxBytes: 900_000, TxPackets: 1000, TxBytes: 1_500_000},
			{Queue: 1, RxPackets: 401, RxBytes: 600_000, TxPackets: 1002, TxBytes: 1_500_000},
		},
	}
	web.Drops[dataplane.DropVirtqueueFull] = 17
	web.Drops[dataplane.DropSpoofed] = 3
	web.Drops[dataplane.DropRateLimited] = 40
	web.Limits = dataplane.Limits{RxPPS: 10000, TxBPS: 1e9, FloodPPS: 500}
	db := dataplane.VMStats{
		Name: "db", Slot: 2, MAC: "52:54:00:00:00:02",
		RxPackets: 55, RxBytes: 5500, TxPackets: 66, TxBytes: 6600,
		// The API's form only, with a reason this build does not know.
		DropsByReason: map[string]uint64{"guest_not_ready": 9, "future_reason": 2},
		Queues:        []dataplane.VMQueueStats{{Queue: 1, RxPackets: 55, RxBytes: 5500, TxPackets: 66, TxBytes: 6600}},
	}
	return dataplane.Snapshot{
		NIC: dataplane.NICStatus{
			Name: "eth0", Index: 2, Driver: "veth", MTU: 1500, Queues: []int{0, 1}, Channels: 2,
			AttachMode: "generic", Attached: true, FrameSize: 4096,
		},
		Filter: dataplane.FilterStats{Redirected: 1060, Passed: 300, Flooded: 12, Malformed: 2, NoSocket: 1},
		Workers: []dataplane.WorkerStats{
			{Queue: 0, BusyNS: 1_500_000_000, IdleNS: 8_500_000_000, Batches: 40, Wakeups: 5, Polls: 30,
				VirtQueues: 2, XDPSockets: 2, FreeFrames: 3000, TotalFrames: 4096, InFlightFrames: 1096, Stalls: 2},
			{Queue: 1, BusyNS: 250_000_000, IdleNS: 9_750_000_000, Batches: 20, Wakeups: 1, Polls: 19,
				VirtQueues: 4, XDPSockets: 3, FreeFrames: 4000, TotalFrames: 4096},
		},
		VMs: []dataplane.VMStats{web, db},
		Sockets: []dataplane.SocketStats{
			{VM: "web", Queue: 0, RxDropped: 1, FillRingEmpty: 11},
			{VM: "web", Queue: 1, ZeroCopy: true, RxRingFull: 2},
			{VM: "db", Queue: 1, RxInvalid: 3, TxInvalid: 4, TxRingEmpty: 5},
			{VM: "", Queue: 0, FillRingEmpty: 6},
		},
		Ports: []dataplane.PortStats{
			{VM: "web", Path: "/run/vmq/web.sock", Mode: "server", Connected: true,
				Features: 1<<32 | 1<<15 | 1<<30, ProtocolFeatures: 0x8203, QueuePairs: 2,
				RingSizes: []int{256, 256, 1024, 1024}, Kicks: 77, Calls: 88},
			{VM: "db", Path: "/run/vmq/db.sock", Mode: "client", Broken: "descriptor loop",
				Timeouts: 3, PeerRejected: 2, RingStarts: 200, RingStartsPaced: 70, MessagesPaced: 9},
		},
	}
}

type countingSource struct {
	calls atomic.Int64
	snap  func() dataplane.Snapshot
}

func (s *countingSource) Snapshot() dataplane.Snapshot {
	s.calls.Add(1)
	return s.snap()
}

func TestCollectorExposition(t *testing.T) {
	c := NewCollector(SourceFunc(fakeSnapshot))
	want := `
# HELP vmq_vm_rx_packets_total Frames delivered to the VM (wire or other VMs to guest).
# TYPE vmq_vm_rx_packets_total counter
vmq_vm_rx_packets_total{vm="db"} 55
vmq_vm_rx_packets_total{vm="web"} 1001
# HELP vmq_vm_tx_bytes_total Bytes the VM sent.
# TYPE vmq_vm_tx_bytes_total counter
vmq_vm_tx_bytes_total{vm="db"} 6600
vmq_vm_tx_bytes_total{vm="web"} 3e+06
# HELP vmq_vm_drops_total Frames to or from the VM that vmq dropped, by reason.
# TYPE vmq_vm_drops_total counter
vmq_vm_drops_total{reason="bad_offload",vm="db"} 0
vmq_vm_drops_total{reason="bad_offload",vm="web"} 0
vmq_vm_drops_total{reason="broken",vm="db"} 0
vmq_vm_drops_total{reason="broken",vm="web"} 0
vmq_vm_drops_total{reason="budget",vm="db"} 0
vmq_vm_drops_total{reason="budget",vm="web"} 0
vmq_vm_drops_total{reason="future_reason",vm="db"} 2
vmq_vm_drops_total{reason="guest_not_ready",vm="db"} 9
vmq_vm_drops_total{reason="guest_not_ready",vm="web"} 0
vmq_vm_drops_total{reason="mailbox_full",vm="db"} 0
vmq_vm_drops_total{reason="mailbox_full",vm="web"} 0
vmq_vm_drops_total{reason="malformed",vm="db"} 0
vmq_vm_drops_total{reason="malformed",vm="web"} 0
vmq_vm_drops_total{reason="no_umem_frame",vm="db"} 0
vmq_vm_drops_total{reason="no_umem_frame",vm="web"} 0
vmq_vm_drops_total{reason="oversize",vm="db"} 0
vmq_vm_drops_total{reason="oversize",vm="web"} 0
vmq_vm_drops_total{reason="rate_limited",vm="db"} 0
vmq_vm_drops_total{reason="rate_limited",vm="web"} 40
vmq_vm_drops_total{reason="spoofed",vm="db"} 0
vmq_vm_drops_total{reason="spoofed",vm="web"} 3
vmq_vm_drops_total{reason="storm_control",vm="db"} 0
vmq_vm_drops_total{reason="storm_control",vm="web"} 0
vmq_vm_drops_total{reason="tx_ring_full",vm="db"} 0
vmq_vm_drops_total{reason="tx_ring_full",vm="web"} 0
vmq_vm_drops_total{reason="virtqueue_full",vm="db"} 0
vmq_vm_drops_total{reason="virtqueue_full",vm="web"} 17
# HELP vmq_vm_queue_rx_packets_total Frames delivered to the VM, by NIC queue.
# TYPE vmq_vm_queue_rx_packets_total counter
vmq_vm_queue_rx_packets_total{queue="0",vm="web"} 600
vmq_vm_queue_rx_packets_total{queue="1",vm="db"} 55
vmq_vm_queue_rx_packets_total{queue="1",vm="web"} 401
# HELP vmq_vm_info Always 1; a VM's steering key (MAC, VLAN) and filter slot.
# TYPE vmq_vm_info gauge
vmq_vm_info{mac="52:54:00:00:00:01",slot="1",vlan="10",vm="web"} 1
vmq_vm_info{mac="52:54:00:00:00:02",slot="2",vlan="0",vm="db"} 1
# HELP vmq_vm_filter_redirect_errors_total Frames matched to the VM whose bpf_redirect_map failed.
# TYPE vmq_vm_filter_redirect_errors_total counter
vmq_vm_filter_redirect_errors_total{vm="db"} 0
vmq_vm_filter_redirect_errors_total{vm="web"} 4
# HELP vmq_filter_redirected_packets_total Frames the XDP filter redirected into a VM's AF_XDP socket.
# TYPE vmq_filter_redirected_packets_total counter
vmq_filter_redirected_packets_total{nic="eth0"} 1060
# HELP vmq_filter_no_socket_packets_total Frames for a known VM that had no AF_XDP socket on the receiving queue.
# TYPE vmq_filter_no_socket_packets_total counter
vmq_filter_no_socket_packets_total{nic="eth0"} 1
# HELP vmq_xsk_fill_ring_empty_total XDP_STATISTICS rx_fill_ring_empty_descs: times the fill ring was empty.
# TYPE vmq_xsk_fill_ring_empty_total counter
vmq_xsk_fill_ring_empty_total{queue="0",vm="(flood)"} 6
vmq_xsk_fill_ring_empty_total{queue="0",vm="web"} 11
vmq_xsk_fill_ring_empty_total{queue="1",vm="db"} 0
vmq_xsk_fill_ring_empty_total{queue="1",vm="web"} 0
# HELP vmq_xsk_zero_copy 1 if the AF_XDP socket is bound in zero-copy mode, 0 for copy mode.
# TYPE vmq_xsk_zero_copy gauge
vmq_xsk_zero_copy{queue="0",vm="(flood)"} 0
vmq_xsk_zero_copy{queue="0",vm="web"} 0
vmq_xsk_zero_copy{queue="1",vm="db"} 0
vmq_xsk_zero_copy{queue="1",vm="web"} 1
# HELP vmq_worker_busy_seconds_total Time the queue's worker spent processing batches.
# TYPE vmq_worker_busy_seconds_total counter
vmq_worker_busy_seconds_total{queue="0"} 1.5
vmq_worker_busy_seconds_total{queue="1"} 0.25
# HELP vmq_vm_limit A VM's QoS limit: direction rx (to the guest) or tx (from it), unit packets or bits per second; direction flood: broadcast and multicast packets per second from the guest (storm control, dropped as storm_control). Absent: unlimited. Frames over an rx or tx limit are dropped as rate_limited.
# TYPE vmq_vm_limit gauge
vmq_vm_limit{direction="flood",unit="packets",vm="web"} 500
vmq_vm_limit{direction="rx",unit="packets",vm="web"} 10000
vmq_vm_limit{direction="tx",unit="bits",vm="web"} 1e+09
# HELP vmq_worker_stalls_total Times the queue's worker was awake without finishing a round for 100 ms (the watchdog logs the VM it was serving).
# TYPE vmq_worker_stalls_total counter
vmq_worker_stalls_total{queue="0"} 2
vmq_worker_stalls_total{queue="1"} 0
# HELP vmq_worker_inflight_frames UMEM frames of the queue outside its allocator, counted from the rings and the worker's stash; with no traffic, umem_free_frames + this = umem_frames, or frames were lost.
# TYPE vmq_worker_inflight_frames gauge
vmq_worker_inflight_frames{queue="0"} 1096
vmq_worker_inflight_frames{queue="1"} 0
# HELP vmq_umem_free_frames Free frames in the queue's UMEM.
# TYPE vmq_umem_free_frames gauge
vmq_umem_free_frames{queue="0"} 3000
vmq_umem_free_frames{queue="1"} 4000
# HELP vmq_nic_info Always 1; the NIC vmq serves, its driver and the XDP attach mode (native, generic, none).
# TYPE vmq_nic_info gauge
vmq_nic_info{attach_mode="generic",driver="veth",nic="eth0"} 1
# HELP vmq_xdp_attached 1 while the vmq XDP program is attached to the NIC, 0 when it is not.
# TYPE vmq_xdp_attached gauge
vmq_xdp_attached{nic="eth0"} 1
# HELP vmq_port_connected 1 while a vhost-user frontend is connected to the VM's port.
# TYPE vmq_port_connected gauge
vmq_port_connected{vm="db"} 0
vmq_port_connected{vm="web"} 1
# HELP vmq_port_broken 1 if the VM's device was marked broken (bad guest input); it stays so until the guest resets it.
# TYPE vmq_port_broken gauge
vmq_port_broken{vm="db"} 1
vmq_port_broken{vm="web"} 0
# HELP vmq_port_control_timeouts_total vhost-user connections closed because a message did not arrive whole, or a reply was not read, in time.
# TYPE vmq_port_control_timeouts_total counter
vmq_port_control_timeouts_total{vm="db"} 3
vmq_port_control_timeouts_total{vm="web"} 0
# HELP vmq_port_peer_rejected_total vhost-user connections refused because the peer's uid is not in allowed_uids.
# TYPE vmq_port_peer_rejected_total counter
vmq_port_peer_rejected_total{vm="db"} 2
vmq_port_peer_rejected_total{vm="web"} 0
# HELP vmq_port_ring_starts_total Virtqueues of the VM's device handed to a worker (each start follows a stop but the first).
# TYPE vmq_port_ring_starts_total counter
vmq_port_ring_starts_total{vm="db"} 200
vmq_port_ring_starts_total{vm="web"} 0
# HELP vmq_port_ring_starts_paced_total Ring starts that waited for the port's limit on ring starts (a guest stopping and starting its rings faster).
# TYPE vmq_port_ring_starts_paced_total counter
vmq_port_ring_starts_paced_total{vm="db"} 70
vmq_port_ring_starts_paced_total{vm="web"} 0
# HELP vmq_port_messages_paced_total vhost-user messages and connections that waited for the port's limit on messages (a front-end sending faster).
# TYPE vmq_port_messages_paced_total counter
vmq_port_messages_paced_total{vm="db"} 9
vmq_port_messages_paced_total{vm="web"} 0
# HELP vmq_port_features_info Always 1; the negotiated virtio and vhost-user protocol feature bits, in hex.
# TYPE vmq_port_features_info gauge
vmq_port_features_info{features="0x0",protocol_features="0x0",vm="db"} 1
vmq_port_features_info{features="0x140008000",protocol_features="0x8203",vm="web"} 1
# HELP vmq_port_ring_size Size of one vring of the VM's device.
# TYPE vmq_port_ring_size gauge
vmq_port_ring_size{vm="web",vring="0"} 256
vmq_port_ring_size{vm="web",vring="1"} 256
vmq_port_ring_size{vm="web",vring="2"} 1024
vmq_port_ring_size{vm="web",vring="3"} 1024
# HELP vmq_port_info Always 1; a VM's vhost-user socket path and mode (server, client).
# TYPE vmq_port_info gauge
vmq_port_info{mode="client",path="/run/vmq/db.sock",vm="db"} 1
vmq_port_info{mode="server",path="/run/vmq/web.sock",vm="web"} 1
`
	names := []string{
		"vmq_vm_rx_packets_total", "vmq_vm_tx_bytes_total", "vmq_vm_drops_total", "vmq_vm_queue_rx_packets_total",
		"vmq_vm_info", "vmq_vm_filter_redirect_errors_total",
		"vmq_filter_redirected_packets_total", "vmq_filter_no_socket_packets_total",
		"vmq_xsk_fill_ring_empty_total", "vmq_xsk_zero_copy",
		"vmq_worker_busy_seconds_total", "vmq_umem_free_frames",
		"vmq_vm_limit", "vmq_worker_stalls_total", "vmq_worker_inflight_frames",
		"vmq_nic_info", "vmq_xdp_attached",
		"vmq_port_connected", "vmq_port_broken", "vmq_port_features_info", "vmq_port_ring_size", "vmq_port_info",
		"vmq_port_control_timeouts_total", "vmq_port_peer_rejected_total",
		"vmq_port_ring_starts_total", "vmq_port_ring_starts_paced_total", "vmq_port_messages_paced_total",
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
}

// The exact set of families the collector exports for a full snapshot,
// and the count of series in each.
func TestCollectorFamilies(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(SourceFunc(fakeSnapshot)))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, mf := range mfs {
		got[mf.GetName()] = len(mf.GetMetric())
	}
	want := map[string]int{
		"vmq_nic_info": 1, "vmq_xdp_attached": 1, "vmq_nic_mtu_bytes": 1, "vmq_nic_channels": 1,
		"vmq_nic_queues": 1, "vmq_umem_frame_size_bytes": 1,
		"vmq_filter_redirected_packets_total": 1, "vmq_filter_passed_packets_total": 1,
		"vmq_filter_flooded_packets_total": 1, "vmq_filter_malformed_packets_total": 1,
		"vmq_filter_no_socket_packets_total": 1,
		"vmq_vm_info":                        2, "vmq_vm_rx_packets_total": 2, "vmq_vm_rx_bytes_total": 2,
		"vmq_vm_tx_packets_total": 2, "vmq_vm_tx_bytes_total": 2,
		"vmq_vm_drops_total": 2*int(dataplane.NumDropReasons) + 1, "vmq_vm_flood_copies_total": 2,
		"vmq_vm_offload_passed_total": 2, "vmq_vm_offload_segmented_total": 2, "vmq_vm_offload_segments_total": 2,
		"vmq_vm_offload_csum_fills_total": 2,
		"vmq_vm_filter_packets_total":     2, "vmq_vm_filter_bytes_total": 2, "vmq_vm_filter_redirect_errors_total": 2,
		"vmq_vm_rx_copied_bytes_total":  2,
		"vmq_vm_queue_rx_packets_total": 3, "vmq_vm_queue_rx_bytes_total": 3,
		"vmq_vm_queue_tx_packets_total": 3, "vmq_vm_queue_tx_bytes_total": 3,
		"vmq_xsk_zero_copy": 4, "vmq_xsk_rx_dropped_total": 4, "vmq_xsk_rx_invalid_descs_total": 4,
		"vmq_xsk_tx_invalid_descs_total": 4, "vmq_xsk_rx_ring_full_total": 4,
		"vmq_xsk_fill_ring_empty_total": 4, "vmq_xsk_tx_ring_empty_total": 4,
		"vmq_worker_busy_seconds_total": 2, "vmq_worker_idle_seconds_total": 2, "vmq_worker_batches_total": 2,
		"vmq_worker_wakeups_total": 2, "vmq_worker_polls_total": 2, "vmq_worker_virtqueues": 2,
		"vmq_worker_xdp_sockets": 2, "vmq_umem_free_frames": 2, "vmq_umem_frames": 2,
		"vmq_worker_stalls_total": 2, "vmq_worker_kick_mutes_total": 2, "vmq_worker_mailbox_drops_total": 2, "vmq_worker_inflight_frames": 2, "vmq_vm_limit": 3,
		"vmq_worker_tx_path_info": 2, "vmq_worker_tx_frames_total": 4, "vmq_worker_xdp_tx_calls_total": 2,
		"vmq_worker_xdp_tx_fallbacks_total": 2, "vmq_worker_xdp_tx_drops_total": 2,
		"vmq_worker_xdp_tx_resent_total": 2, "vmq_vm_xdp_tx_resent_total": 2,
		"vmq_port_info": 2, "vmq_port_connected": 2, "vmq_port_features_info": 2, "vmq_port_queue_pairs": 2,
		"vmq_port_ring_size": 4, "vmq_port_kicks_total": 2, "vmq_port_calls_total": 2, "vmq_port_broken": 2,
		"vmq_port_control_timeouts_total": 2, "vmq_port_peer_rejected_total": 2,
		"vmq_port_ring_starts_total": 2, "vmq_port_ring_starts_paced_total": 2, "vmq_port_messages_paced_total": 2,
	}
	for name, n := range want {
		if got[name] != n {
			t.Errorf("%s: %d series, want %d", name, got[name], n)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected family %s", name)
		}
	}
}

func TestCollectorDetachedAndEmpty(t *testing.T) {
	c := NewCollector(SourceFunc(func() dataplane.Snapshot {
		return dataplane.Snapshot{NIC: dataplane.NICStatus{Name: "eth1", Driver: "ixgbe", AttachMode: "native"}}
	}))
	want := `
# HELP vmq_xdp_attached 1 while the vmq XDP program is attached to the NIC, 0 when it is not.
# TYPE vmq_xdp_attached gauge
vmq_xdp_attached{nic="eth1"} 0
# HELP vmq_nic_info Always 1; the NIC vmq serves, its driver and the XDP attach mode (native, generic, none).
# TYPE vmq_nic_info gauge
vmq_nic_info{attach_mode="none",driver="ixgbe",nic="eth1"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "vmq_xdp_attached", "vmq_nic_info", "vmq_vm_rx_packets_total"); err != nil {
		t.Fatal(err)
	}
}

// A scrape is one Snapshot call and shows the dataplane as it is now.
func TestCollectorSnapshotPerScrape(t *testing.T) {
	var rx atomic.Uint64
	src := &countingSource{snap: func() dataplane.Snapshot {
		s := fakeSnapshot()
		s.VMs[0].RxPackets = rx.Load()
		return s
	}}
	reg := NewRegistry(src)
	for i, n := range []uint64{5, 5, 123456} {
		rx.Store(n)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		if got := src.calls.Load(); got != int64(i+1) {
			t.Fatalf("after %d scrapes Snapshot was called %d times", i+1, got)
		}
		var v float64 = -1
		for _, mf := range mfs {
			if mf.GetName() != "vmq_vm_rx_packets_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "web" {
					v = m.GetCounter().GetValue()
				}
			}
		}
		if v != float64(n) {
			t.Fatalf("scrape %d: web rx = %v, want %d", i, v, n)
		}
	}
}

func TestBuildInfo(t *testing.T) {
	old := Version
	Version = "1.2.3-test"
	t.Cleanup(func() { Version = old })
	want := `
# HELP vmq_build_info Always 1; the labels say which vmq build is running.
# TYPE vmq_build_info gauge
vmq_build_info{goversion="` + runtime.Version() + `",version="1.2.3-test"} 1
`
	if err := testutil.CollectAndCompare(BuildInfo(), strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// The registry carries the Go and process collectors too.
func TestRegistryHasRuntimeCollectors(t *testing.T) {
	reg := NewRegistry(SourceFunc(fakeSnapshot))
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "vmq_build_info"} {
		n, err := testutil.GatherAndCount(reg, name)
		if err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("%s: %d series, want 1", name, n)
		}
	}
}

func TestLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(NewCollector(SourceFunc(fakeSnapshot)))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// A VM name that is not UTF-8 spoils its own series only.
func TestBadLabelValue(t *testing.T) {
	src := SourceFunc(func() dataplane.Snapshot {
		s := fakeSnapshot()
		s.VMs[1].Name = "bad\xff"
		return s
	})
	reg := NewRegistry(src)
	if _, err := reg.Gather(); err == nil {
		t.Fatal("gather accepted a non-UTF-8 label value")
	}
	srv := httpServer(t, reg)
	body, code := get(t, srv+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	if !strings.Contains(body, `vmq_vm_rx_packets_total{vm="web"} 1001`) {
		t.Fatalf("the valid VM's series are missing:\n%s", body)
	}
	if strings.Contains(body, `vm="bad`) {
		t.Fatalf("the invalid series was served")
	}
}

// httpServer serves reg with ServeListener on a loopback port and returns
// its base URL; the server is shut down at cleanup and must return nil.
func httpServer(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- ServeListener(ctx, ln, reg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("ServeListener: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("ServeListener did not return after cancel")
		}
	})
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, url string) (string, int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), resp.StatusCode
}

func TestServeShutdown(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, "127.0.0.1:0", NewRegistry(SourceFunc(fakeSnapshot))) }()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

func TestServeListenError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = Serve(context.Background(), ln.Addr().String(), NewRegistry(SourceFunc(fakeSnapshot)))
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Serve on a busy port: %v", err)
	}
}

// A live scrape over HTTP passes promtool's checks.
func TestScrapePromtool(t *testing.T) {
	promtool := testenv.RequireCommand(t, "promtool")
	base := httpServer(t, NewRegistry(SourceFunc(fakeSnapshot)))

	body, code := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d", code)
	}
	for _, want := range []string{
		`vmq_vm_rx_packets_total{vm="web"} 1001`,
		`vmq_xdp_attached{nic="eth0"} 1`,
		"go_goroutines ",
		"process_cpu_seconds_total ",
		"vmq_build_info{",
		"promhttp_metric_handler_requests_total{",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}

	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || out.Len() != 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out.String())
	}

	idx, code := get(t, base+"/")
	if code != http.StatusOK || !strings.Contains(idx, "/metrics") {
		t.Fatalf("index: %d %q", code, idx)
	}
	if _, code := get(t, base+"/nope"); code != http.StatusNotFound {
		t.Fatalf("/nope: status %d", code)
	}
}

// Collecting 64 VMs on 4 queues: what one scrape costs the daemon.
func BenchmarkCollect(b *testing.B) {
	snap := fakeSnapshot()
	base := snap.VMs[0]
	snap.VMs = snap.VMs[:0]
	for i := range 64 {
		v := base
		v.Name = "vm" + queueLabel(i)
		v.Queues = append([]dataplane.VMQueueStats(nil), base.Queues...)
		v.Queues = append(v.Queues, dataplane.VMQueueStats{Queue: 2}, dataplane.VMQueueStats{Queue: 3})
		snap.VMs = append(snap.VMs, v)
		snap.Sockets = append(snap.Sockets, dataplane.SocketStats{VM: v.Name, Queue: i % 4})
		snap.Ports = append(snap.Ports, dataplane.PortStats{VM: v.Name, Path: "/run/vmq/" + v.Name, RingSizes: []int{256, 256}})
	}
	c := NewCollector(SourceFunc(func() dataplane.Snapshot { return snap }))
	ch := make(chan prometheus.Metric, 8192)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		c.Collect(ch)
		n = len(ch)
		for len(ch) > 0 {
			<-ch
		}
	}
	b.ReportMetric(float64(n), "series/op")
}
