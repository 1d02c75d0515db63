package main

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/vmq/vmq/control"
	"github.com/vmq/vmq/dataplane"
	"github.com/vmq/vmq/internal/testbed"
	"github.com/vmq/vmq/internal/testenv"
	"github.com/vmq/vmq/pktgen"
)

// TestDaemonDedicatedOnVeth: a config asking for dedicated queues on a
// NIC without flow rules (veth): the preferred VM runs shared, and says
// why in the API and /metrics; a VM added over the API that requires one
// is refused with the reason.
func TestDaemonDedicatedOnVeth(t *testing.T) {
	vm := control.VMConfig{Name: "ded", MAC: "02:00:00:00:01:0d", Queue: control.QueueDedicated}
	b := newBedQueues(t, 2, vm)
	b.cfg.Queues = []int{0} // queue 1 is free for a dedicated VM
	if err := b.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := b.start()
	c := control.NewClient(b.cfg.API.Socket)
	defer c.Close()
	snap, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.VMs) != 1 || snap.VMs[0].Dedicated == nil {
		t.Fatalf("stats: %+v", snap.VMs)
	}
	ded := snap.VMs[0].Dedicated
	if ded.Mode != "preferred" || ded.State != "shared (fallback)" || !strings.Contains(ded.Reason, "no ntuple flow steering") {
		t.Fatalf("dedicated: %+v", *ded)
	}
	if v := scrapeMetric(t, d.metricsAddr, "vmq_vm_dedicated_fallbacks_total", `vm="ded"`); v != 1 {
		t.Fatalf("fallbacks metric %v", v)
	}
	scrapeMetric(t, d.metricsAddr, "vmq_vm_dedicated_queue_info", `state="shared (fallback)"`)

	req := control.VMConfig{Name: "req", MAC: "02:00:00:00:01:0e", Socket: b.Socket("req"), Dedicated: "required"}
	if _, err := c.AddVM(context.Background(), req); err == nil || !strings.Contains(err.Error(), "requires a dedicated queue") {
		t.Fatalf("required VM on veth: %v", err)
	}
}

// TestDaemonDedicatedExternal: with dedicated_steering: external (the
// operator steers; here the test's wire sends on the peer's queue 1) the
// VM's frames land in its memory: exact, 0 bytes copied, in the API and
// in /metrics.
func TestDaemonDedicatedExternal(t *testing.T) {
	if runtime.NumCPU() < 2 {
		testenv.Skip(t, "needs 2 CPUs to place frames on 2 veth queues")
	}
	// No queue_id: the lowest free queue, 1.
	vm := control.VMConfig{Name: "ded", MAC: "02:00:00:00:01:0d", Queue: control.QueueDedicated, Dedicated: "required"}
	b := newBedQueues(t, 2, vm)
	b.cfg.Queues = []int{0}
	b.cfg.DedicatedSteering = control.SteeringExternal
	if err := b.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := b.start()
	g := b.guest("ded", vm.MAC, "", false)
	c := control.NewClient(b.cfg.API.Socket)
	defer c.Close()
	dedStats := func() (*dataplane.DedicatedStats, uint64) {
		snap, err := c.Stats(context.Background())
		if err != nil || len(snap.VMs) != 1 || snap.VMs[0].Dedicated == nil {
			t.Fatalf("stats: %v %+v", err, snap.VMs)
		}
		return snap.VMs[0].Dedicated, snap.VMs[0].RxCopiedBytes
	}
	testenv.Eventually(t, "direct", func() (bool, string) {
		s, _ := dedStats()
		return s.State == "direct" && s.Posted > 0, fmt.Sprintf("%+v", *s)
	})
	const n = 2000
	b.SendOnCPU(1, pktgen.FlowSpec{Dests: []pktgen.Dest{{MAC: testbed.MustMAC(vm.MAC)}}, Size: 1514, Stream: 3}, n)
	testbed.WaitRx(t, "ded", g, n)
	s, copied := dedStats()
	if s.Frames != n || copied != 0 || s.Queue != 1 || s.Steering != "external" {
		t.Fatalf("dedicated %+v, copied %d", *s, copied)
	}
	if v := scrapeMetric(t, d.metricsAddr, "vmq_vm_dedicated_frames_total", `vm="ded"`); v != n {
		t.Fatalf("frames metric %v", v)
	}
	if v := scrapeMetric(t, d.metricsAddr, "vmq_vm_rx_copied_bytes_total", `vm="ded"`); v != 0 {
		t.Fatalf("copied metric %v", v)
	}
}
