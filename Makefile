# tandem: the two commands of the README and a few helpers.
#   make demo   the main job: the lab, live traffic through tandemd
#   make test   the whole test suite (what CI runs)
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: deps build build-release build-next demo test fuzz bench lint clean-lab

deps:
	@./scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins

# The next version (the same tree as 0.2.0, K2K 3) for the upgrade tests.
build-next: deps
	./scripts/build-next.sh

build-release: deps
	$(CARGO) build --workspace --bins --release

demo: build-release
	./target/release/tandem-lab demo

# Unit and DPDK tests first, then the end-to-end tests, one lab at a time
# (on 2 cores parallel labs only starve each other).
test: build-next build
	$(CARGO) test --workspace --exclude tandem-tests
	$(CARGO) test -p tandem-tests -- --test-threads=1
	./scripts/fuzz.sh $(FUZZ_SECONDS)

# Every fuzz target for a bounded time (the corpus in fuzz/corpus grows).
FUZZ_SECONDS ?= 30
fuzz:
	./scripts/fuzz.sh $(FUZZ_SECONDS)

# The benchmark suite: every figure into results/bench.json (stable keys,
# units, baselines of the same run) and plots into results/plots/.
# BENCH_ARGS=--quick for a shorter run.
bench: build-release
	./perf/scripts/bench-all.sh $(BENCH_ARGS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean-lab:
	./target/debug/tandem-lab cleanup || ./target/release/tandem-lab cleanup
