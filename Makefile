# vmq — run `make help` for the targets.
GO      ?= go
PREFIX  ?= /usr/local
DESTDIR ?=
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/vmq/vmq/metrics.Version=$(VERSION)
CMDS    := vmqd vmqctl vmq-pktgen vmq-guest vmq-cni
# Kernel tests share two cores: one package at a time keeps exact frame
# counts honest under load.
TESTFLAGS ?= -count=1 -p 1 -timeout 25m

.PHONY: help generate generate-check build test bench bench-layers bench-readme lint lab install uninstall clean

help:
	@echo "make lab        run the self-contained lab (root): a veth NIC, vmqd, three guests, traffic, live counters"
	@echo "make test       install test dependencies and run every test (root)"
	@echo "make bench      vmq vs DPDK, same generator and guests, every placement, dedicated queues (root, ~25 min)"
	@echo "make bench-readme  put the newest results/bench-*/readme.md into the README"
	@echo "make bench-layers  per-layer benchmarks (root)"
	@echo "make build      build $(CMDS) into bin/"
	@echo "make generate   rebuild the BPF objects with clang (bpf2go)"
	@echo "make lint       gofmt and go vet"
	@echo "make install    install binaries, unit, configs (DESTDIR, PREFIX)"

generate:
	$(GO) generate ./...

# The committed BPF objects must be what their source builds to.
generate-check: generate
	@git diff --exit-code --stat -- '*.o' '*_bpfel.go' '*_bpfeb.go' || \
		(echo "generated BPF objects differ from the committed ones: run make generate and commit" && exit 1)

build:
	@mkdir -p bin
	for c in $(CMDS); do \
		[ ! -d cmd/$$c ] || $(GO) build -ldflags "$(LDFLAGS)" -o bin/$$c ./cmd/$$c || exit 1; \
	done

test:
	bash .ci/setup
	$(GO) test $(TESTFLAGS) ./...

# The suite (bench/, 24 minutes in the quiet run of 2026-11-30): vmq and
# DPDK on one veth with the same generator and guests, RX/TX/VM→VM, every 2-CPU placement, zero-loss
# searches, and RX on a dedicated queue (vmq shared, vmq dedicated, DPDK
# on queue 1 of a 2-queue veth, ~2 minutes of it; VMQ_BENCH_DIRS=dedicated
# runs only that); tables in results/bench-<date>/ (results.md, results.json,
# readme.md). Then, in the same run, the worker benchmarks the suite cannot
# express (256 VMs on a queue, dedicated vs shared queues inside vmq, MTU 9000, offloads
# on/off between Linux guests) into that directory's features.txt (80 s
# in the same run). Fails when any measurement fails.
FEATURE_BENCH := BenchmarkWorkerRX$$|BenchmarkDedicatedRX$$|BenchmarkWorkerJumbo$$|BenchmarkLinuxGuestTCP$$
bench:
	bash .ci/setup
	VMQ_REQUIRE_ALL=1 VMQ_BENCH_COMMAND="make bench" $(GO) test -run '^$$' -bench '^BenchmarkSuite$$' -benchtime 1x -count 1 -timeout 40m ./bench
	dir=$$(ls -d results/bench-* | sort | tail -1); \
	VMQ_REQUIRE_ALL=1 taskset -c 0,1 $(GO) test -run '^$$' -bench '$(FEATURE_BENCH)' -benchtime 5x -benchmem -count 1 -timeout 30m ./dataplane > "$$dir/features.txt"; \
	rc=$$?; cat "$$dir/features.txt"; exit $$rc

# Per-layer benchmarks, one package at a time (not part of make bench's
# time budget).
bench-layers:
	$(GO) test -p 1 -run '^$$' -bench . -benchmem -count 1 -timeout 30m \
		./bpf ./dataplane/xsk ./dataplane/vhostuser ./pktgen ./metrics ./control
	$(GO) test -run '^$$' -bench . -benchtime 3000000x -benchmem -count 1 -timeout 30m ./guest/frontend
	$(GO) test -run '^$$' -bench 'Segment64K|FillCsum' -benchmem -count 1 ./dataplane

# Put the newest run's table (or RESULTS=results/bench-...) into the
# README between its bench markers.
RESULTS ?= $(lastword $(sort $(wildcard results/bench-*)))
bench-readme:
	@test -f "$(RESULTS)/readme.md" || (echo "no $(RESULTS)/readme.md: run make bench" && exit 1)
	awk -v f="$(RESULTS)/readme.md" '/<!-- bench:begin -->/{print; while ((getline l < f) > 0) print l; skip=1; next} /<!-- bench:end -->/{skip=0} !skip' README.md > README.md.new
	mv README.md.new README.md

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

lab: build
	./bin/vmqd lab

install: build
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" bash deploy/install.sh install

uninstall:
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" bash deploy/install.sh uninstall

clean:
	rm -rf bin results
