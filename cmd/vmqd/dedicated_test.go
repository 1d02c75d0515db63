package main

import (
	"context"
	"strings"
	"testing"

	"github.com/vmq/vmq/control"
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
