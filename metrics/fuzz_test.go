package metrics

import (
	"testing"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vmq/vmq/dataplane"
)

// The strings in a snapshot come from the config and from guests' ports;
// whatever they are, a scrape never panics, and valid ones are served
// exactly.
func FuzzCollect(f *testing.F) {
	f.Add("web", "/run/vmq/web.sock", "server", "52:54:00:00:00:01", "veth", -1, uint64(1001))
	f.Add("bad\xff", "", "", "", "", 1<<30, uint64(1)<<63)
	f.Add(`a"b\c{d}`, "/tmp/\n", "client", "x", "mlx5_core", 255, uint64(0))
	f.Fuzz(func(t *testing.T, vm, path, mode, mac, driver string, queue int, n uint64) {
		s := fakeSnapshot()
		s.NIC.Driver = driver
		s.VMs[0].Name, s.VMs[0].MAC, s.VMs[0].RxPackets = vm, mac, n
		s.Ports[0].VM, s.Ports[0].Path, s.Ports[0].Mode = vm, path, mode
		s.Sockets[0].VM, s.Sockets[1].VM = vm, vm
		s.Workers = s.Workers[:1]
		s.Workers[0].Queue = queue
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(NewCollector(SourceFunc(func() dataplane.Snapshot { return s })))
		mfs, err := reg.Gather()

		valid := utf8.ValidString(vm) && utf8.ValidString(path) && utf8.ValidString(mode) &&
			utf8.ValidString(mac) && utf8.ValidString(driver) &&
			vm != "db" && vm != "" && vm != FloodVM // names the fake's other VM and flood socket use
		if !valid {
			return
		}
		if err != nil {
			t.Fatalf("valid snapshot: %v", err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "vmq_vm_rx_packets_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == vm && m.GetCounter().GetValue() != float64(n) {
					t.Fatalf("rx of %q = %v, want %v", vm, m.GetCounter().GetValue(), float64(n))
				}
			}
		}
	})
}
