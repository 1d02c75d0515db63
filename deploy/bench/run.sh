#!/bin/sh
# Run vmq's benchmark suite: the XDP_DROP ceiling, vmq and DPDK testpmd on
# one veth pair, RX and TX, frame sizes, VM scaling. Needs root, two CPUs,
# dpdk-testpmd and hugepages (.ci/setup installs and mounts them). Results
# go to results/bench-<date>/ (results.md, results.json, results.png).
#
#   deploy/bench/run.sh                      # the whole suite (~6-8 minutes)
#   VMQ_BENCH_ROUNDS=1 VMQ_BENCH_SKIP=scale deploy/bench/run.sh   # quicker
#
# Other knobs: VMQ_BENCH_SIZES=64,512,1514 VMQ_BENCH_VMS=1,8,64,256
# VMQ_BENCH_WINDOW=3s VMQ_BENCH_WARMUP=1s VMQ_BENCH_OUT=dir
# VMQ_BENCH_SKIP=ceiling,vmq,dpdk,tx,scale. The machine should be otherwise
# idle: the report shows how much of the measured CPU others used.
set -eu
cd "$(dirname "$0")/../.."
exec go test -run '^$' -bench '^BenchmarkSuite$' -benchtime 1x -count 1 -timeout 30m ./bench "$@"
