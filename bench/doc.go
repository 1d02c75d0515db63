// Package bench is vmq's benchmark suite: on one veth pair, with one
// generator and the same frame sizes, it measures
//
//   - the ceiling: an XDP_DROP sink on the NIC veth;
//   - vmq: NIC → VMQ filter → AF_XDP → dataplane worker → vhost-user → Go guest;
//   - DPDK: dpdk-testpmd forwarding net_af_xdp ↔ net_vhost to a
//     net_virtio_user testpmd guest;
//
// in both directions (wire → guest, guest → wire), and vmq's scaling with
// the number of VMs on one queue. BenchmarkSuite (suite_test.go) runs it;
// this file's siblings hold what the suite needs outside the test binary:
// CPU accounting from /proc, CPU pinning, and the report (markdown, JSON,
// PNG chart).
//
//	go test -run '^$' -bench Suite -benchtime 1x -timeout 20m ./bench
//
// The suite writes results/bench-<date>/ at the module root.
package bench
