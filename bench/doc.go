// Package bench is vmq's benchmark suite: the same work on both systems.
// On one veth pair (the "NIC" in a host namespace, its peer as the wire)
// the switch under test is either
//
//   - vmq: the vmqd binary (XDP filter → AF_XDP → worker → vhost-user), or
//   - DPDK: dpdk-testpmd forwarding (io) net_af_xdp ↔ net_vhost, or
//     net_vhost ↔ net_vhost for VM → VM,
//
// each pinned to the same CPU, facing the same processes: vmq-pktgen on
// the wire, DPDK testpmd net_virtio_user guests (rxonly, txonly) and
// vmq-guest. It measures RX (wire → guest), TX (guest → wire) and VM → VM
// at each frame size in every placement two CPUs allow; the delivered
// rate at overload; the switch's busy time per frame (DPDK's
// --record-core-cycles, vmq's worker counters) and CPU time from /proc;
// and the zero-loss rate (RFC 2544 binary search). Its dedicated part
// measures RX on a NIC queue of the VM's own (a 2-queue veth, the VM's
// frames on queue 1) on three systems: vmq's shared, copying path on that
// queue, vmq's dedicated queue (guest memory as the UMEM) and DPDK's
// net_af_xdp on that queue.
//
// BenchmarkSuite (suite_test.go) runs it; this package's non-test files
// hold the logic that is unit-tested: the plan of cases, the search, the
// reading of vmq's cost, /proc accounting and the report (markdown, JSON
// and the README's table).
//
//	make bench
//	go test -run '^$' -bench '^BenchmarkSuite$' -benchtime 1x -timeout 40m ./bench
//
// The suite writes results/bench-<date>/ at the module root.
package bench
