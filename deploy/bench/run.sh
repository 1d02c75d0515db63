#!/bin/sh
# Run vmq's benchmark suite: vmqd and DPDK testpmd (io forwarding) as the
# switch on one veth pair, with the same generator (vmq-pktgen) and the same
# guests (testpmd virtio_user rxonly/txonly, vmq-guest), RX, TX and VM->VM,
# in every placement two CPUs allow, plus zero-loss searches. Needs root,
# two CPUs, dpdk-testpmd and hugepages (.ci/setup installs and mounts them).
# Results go to results/bench-<date>/ (results.md, results.json, readme.md);
# a failed measurement fails the run.
#
#   deploy/bench/run.sh                                   # everything (~17 minutes)
#   VMQ_BENCH_DIRS=rx VMQ_BENCH_ZL_SIZES=none deploy/bench/run.sh   # quicker
#
# Knobs: VMQ_BENCH_DIRS=rx,tx,vm2vm VMQ_BENCH_SIZES=64,512,1514
# VMQ_BENCH_DURATION=3s VMQ_BENCH_ZL_SIZES=64,1514 (or none) VMQ_BENCH_ZL_WINDOW=10s
# VMQ_BENCH_ZL_PRECISION=0.05 VMQ_BENCH_OUT=dir. The report records the load
# average and how much of each CPU other work took: run it on a quiet machine.
set -eu
cd "$(dirname "$0")/../.."
VMQ_BENCH_COMMAND="${VMQ_BENCH_COMMAND:-deploy/bench/run.sh}" \
	exec go test -run '^$' -bench '^BenchmarkSuite$' -benchtime 1x -count 1 -timeout 40m ./bench "$@"
