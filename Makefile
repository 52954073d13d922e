# Developer entry points. `make help` lists the targets.

CARGO ?= cargo
FIXTURES := test/fixtures
OUT := $(FIXTURES)/out
RUST_FIXTURES := hello echo files exit trap spin sleep grow tcp-echo fib net chatty block
WAT_SRCS := $(wildcard $(FIXTURES)/wat/*.wat)
WASIP1 := $(RUST_FIXTURES:%=$(OUT)/wasip1/%.wasm)
WASIP2 := $(RUST_FIXTURES:%=$(OUT)/wasip2/%.wasm)
# wasi:http components (wasm32-wasip2 only): one package each under rust/<name>/.
HTTP_FIXTURES := http cloud cloudcmd
WASIP2_HTTP := $(HTTP_FIXTURES:%=$(OUT)/wasip2/%.wasm)
# Spin HTTP components (Spin's Rust SDK, wasm32-wasip2): rust/spin/<name>/,
# to out/spin/<name>.wasm; test/fixtures/spin/spin.toml is their app.
SPIN_FIXTURES := hello kv sqlite
SPIN := $(SPIN_FIXTURES:%=$(OUT)/spin/%.wasm)
SPIN_SRCS := $(FIXTURES)/rust/Cargo.toml $(foreach f,$(SPIN_FIXTURES),$(FIXTURES)/rust/spin/$(f)/Cargo.toml $(wildcard $(FIXTURES)/rust/spin/$(f)/src/*.rs))
WAT := $(WAT_SRCS:$(FIXTURES)/wat/%.wat=$(OUT)/wat/%.wasm) \
       $(WAT_SRCS:$(FIXTURES)/wat/%.wat=$(OUT)/wat/%.wat)
RUST_SRCS := $(FIXTURES)/rust/Cargo.toml $(wildcard $(FIXTURES)/rust/src/bin/*.rs)
HTTP_SRCS := $(FIXTURES)/rust/Cargo.toml $(foreach f,$(HTTP_FIXTURES),$(FIXTURES)/rust/$(f)/Cargo.toml $(wildcard $(FIXTURES)/rust/$(f)/src/*.rs))
FIXTURE_TARGET := $(FIXTURES)/rust/target

.PHONY: help deps build install demo test test-unit test-arm64 lint fixtures images test-e2e clean-fixtures bench soak fuzz

help:
	@echo "make demo       run a hello wasm image on a private containerd through the shim"
	@echo "make test       install what the tests need, then run unit and end-to-end tests"
	@echo "make install    build release binaries and copy them into $(PREFIX)/bin"
	@echo "make lint       cargo fmt --check and clippy -D warnings"
	@echo "make deps       install system packages, wasm targets and containerd versions"
	@echo "make fixtures   build the wasm fixtures into $(OUT)/{wasip1,wasip2,wat}"
	@echo "make images     build OCI image tarballs of the fixtures into $(OUT)/images"
	@echo "make test-e2e   run the end-to-end tests against every containerd version"
	@echo "make bench      benchmark the release shims against runc, write BENCHMARKS.md; fails on a missed goal (BENCH_ARGS=--quick, --explore)"
	@echo "make soak       2,000 task cycles through containerd against the per-node server; counts and RSS must come back (SOAK_CYCLES=...)"
	@echo "make test-arm64 cross-build the shims for aarch64 and run the engine's tests on qemu-user"
	@echo "make fuzz       fuzz what wasishim parses from untrusted input, FUZZ_SECONDS (600) per target (nightly, cargo-fuzz)"

PREFIX ?= /usr/local
SHIMS := containerd-shim-wasmtime-v1 containerd-shim-wasmtimed-v1

deps:
	test/install-deps.sh

# Every build goes through the whole workspace with all targets, so features
# unify the same way each time and nothing is compiled twice.
build:
	$(CARGO) build --workspace --all-targets

install:
	$(CARGO) build --release $(addprefix -p ,$(SHIMS)) -p wasishim
	install -d $(PREFIX)/bin
	install -m 0755 $(SHIMS:%=target/release/%) target/release/wasishim $(PREFIX)/bin/

demo: deps fixtures build
	test/demo.sh

# Unit tests, then the end-to-end suites (ctr, CRI, Wasm OCI artifacts from a
# local registry, and per-node, on containerd 1.6.20, 1.7.24 and 2.1.9) with
# the per-pod shim, then the ctr, CRI, artifact and wasi:http suites again with
# the per-node shim (and the Spin suite). One test at a time: each starts its own containerd.
test: deps fixtures build
	$(CARGO) test --workspace -- --test-threads=1
	WASISHIM_RUNTIME=io.containerd.wasmtimed.v1 $(CARGO) test -p wasishim-e2e --test ctr --test cri --test cgroups --test artifact --test http --test kill --test sandbox --test native --test metrics --test spin --test cloud --test precompile -- --test-threads=1

# Arm64 on an x86_64 machine (README "Arm64"); not part of `make test`.
test-arm64:
	test/arm64.sh

test-unit: build
	$(CARGO) test --workspace --exclude wasishim-e2e

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Static Linux programs for native containers (run by runc in Wasm pods).
NATIVE_FIXTURES := probe
NATIVE := $(NATIVE_FIXTURES:%=$(OUT)/native/%)

fixtures: $(WASIP1) $(WASIP2) $(WASIP2_HTTP) $(SPIN) $(WAT) $(NATIVE)

$(NATIVE): $(OUT)/native/%: $(FIXTURES)/native/%.c
	@mkdir -p $(@D)
	gcc -static -O2 -Wall -o $@ $<

# One cargo invocation per target builds every binary; the copies depend on it.
$(FIXTURE_TARGET)/wasm32-wasip1/release/.built: $(RUST_SRCS)
	$(CARGO) build --release --manifest-path $(FIXTURES)/rust/Cargo.toml --target-dir $(FIXTURE_TARGET) --target wasm32-wasip1
	touch $@

$(FIXTURE_TARGET)/wasm32-wasip2/release/.built: $(RUST_SRCS)
	$(CARGO) build --release --manifest-path $(FIXTURES)/rust/Cargo.toml --target-dir $(FIXTURE_TARGET) --target wasm32-wasip2
	touch $@

$(FIXTURE_TARGET)/wasm32-wasip2/release/.built-http: $(HTTP_SRCS)
	$(CARGO) build --release --manifest-path $(FIXTURES)/rust/Cargo.toml --target-dir $(FIXTURE_TARGET) --target wasm32-wasip2 $(HTTP_FIXTURES:%=-p wasishim-fixture-%)
	touch $@

$(WASIP2_HTTP): $(OUT)/wasip2/%.wasm: $(FIXTURE_TARGET)/wasm32-wasip2/release/.built-http
	@mkdir -p $(@D)
	cp $(FIXTURE_TARGET)/wasm32-wasip2/release/wasishim_fixture_$*.wasm $@

$(FIXTURE_TARGET)/wasm32-wasip2/release/.built-spin: $(SPIN_SRCS)
	$(CARGO) build --release --manifest-path $(FIXTURES)/rust/Cargo.toml --target-dir $(FIXTURE_TARGET) --target wasm32-wasip2 $(SPIN_FIXTURES:%=-p wasishim-fixture-spin-%)
	touch $@

$(SPIN): $(OUT)/spin/%.wasm: $(FIXTURE_TARGET)/wasm32-wasip2/release/.built-spin
	@mkdir -p $(@D)
	cp $(FIXTURE_TARGET)/wasm32-wasip2/release/wasishim_fixture_spin_$*.wasm $@

$(OUT)/wasip1/%.wasm: $(FIXTURE_TARGET)/wasm32-wasip1/release/.built
	@mkdir -p $(@D)
	cp $(FIXTURE_TARGET)/wasm32-wasip1/release/$*.wasm $@

$(OUT)/wasip2/%.wasm: $(FIXTURE_TARGET)/wasm32-wasip2/release/.built
	@mkdir -p $(@D)
	cp $(FIXTURE_TARGET)/wasm32-wasip2/release/$*.wasm $@

# The fib fixture built for the host too: the native baseline of `make bench`.
$(OUT)/native/fib: $(RUST_SRCS)
	$(CARGO) build --release --manifest-path $(FIXTURES)/rust/Cargo.toml --target-dir $(FIXTURE_TARGET) --bin fib
	@mkdir -p $(@D)
	cp $(FIXTURE_TARGET)/release/fib $@

$(OUT)/wat/%.wasm: $(FIXTURES)/wat/%.wat
	@mkdir -p $(@D)
	wat2wasm $< -o $@

$(OUT)/wat/%.wat: $(FIXTURES)/wat/%.wat
	@mkdir -p $(@D)
	cp $< $@

# One image per fixture: $(OUT)/images/<kind>-<name>.tar, named
# docker.io/library/wasishim-<kind>-<name>:test, the wasm at /app.wasm.
# (The e2e tests build the images they need themselves.)
images: fixtures
	$(CARGO) build -q -p wasishim-image
	@mkdir -p $(OUT)/images
	@set -e; for f in $(WASIP1) $(WASIP2) $(WASIP2_HTTP) $(filter %.wasm,$(WAT)); do \
		kind=$$(basename $$(dirname $$f)); name=$$(basename $$f .wasm); \
		$(CARGO) run -q -p wasishim-image -- \
			--name docker.io/library/wasishim-$$kind-$$name:test \
			--wasm $$f --out $(OUT)/images/$$kind-$$name.tar; \
	done
	$(CARGO) run -q -p wasishim-image -- --name docker.io/library/wasishim-spin-app:test \
		--file $(FIXTURES)/spin/spin.toml:/spin.toml $(foreach f,$(SPIN_FIXTURES),--file $(OUT)/spin/$(f).wasm:/$(f).wasm) \
		--entrypoint /spin.toml --out $(OUT)/images/spin-app.tar
	$(CARGO) run -q -p wasishim-image -- --artifact spin --name docker.io/library/wasishim-spin-artifact:test \
		--spin-manifest $(FIXTURES)/spin/spin.toml --spin-dir $(OUT)/spin --out $(OUT)/images/spin-artifact.tar

test-e2e: fixtures build
	$(CARGO) test -p wasishim-e2e -- --test-threads=1

# Benchmarks (see BENCHMARKS.md): the release shims against runc on a private
# containerd ($(BENCH_CONTAINERD)); the figures go to target/bench/latest.{md,json}
# and into BENCHMARKS.md. BENCH_ARGS=--quick for a smoke run (BENCHMARKS.md untouched).
# A missed goal fails the target (after the report is written); BENCH_ARGS=--explore
# reports missed goals without failing.
BENCH_CONTAINERD ?= 1.6.20
BENCH_ARGS ?=
bench: deps fixtures $(OUT)/native/fib build
	$(CARGO) build --release $(addprefix -p ,$(SHIMS)) -p wasishim -p wasishim-engine -p wasishim-shim --bins --example http_floor --example metrics_scrape
	WASISHIM_SHIM_DIR=$(CURDIR)/target/release WASISHIM_BENCH_CONTAINERD=$(BENCH_CONTAINERD) \
		target/debug/wasishim-bench $(if $(filter --quick,$(BENCH_ARGS)),,--benchmarks BENCHMARKS.md) $(BENCH_ARGS)
	@echo "metrics scrape at 500 pods (crates/shim/examples/metrics_scrape.rs):"
	target/release/examples/metrics_scrape 500

clean-fixtures:
	rm -rf $(OUT) $(FIXTURE_TARGET)

# Soak (not part of make test, which runs the same test with 200 cycles):
# SOAK_CYCLES task cycles through containerd $(SOAK_CONTAINERD) against the
# per-node server; prints its descriptors, threads, mounts, network
# namespaces, cgroups and RSS before and after, and the kill times.
SOAK_CYCLES ?= 2000
SOAK_CONTAINERD ?= 2.1.9
soak: deps fixtures build
	WASISHIM_SOAK_CYCLES=$(SOAK_CYCLES) WASISHIM_SOAK_CONTAINERD=$(SOAK_CONTAINERD) \
		$(CARGO) test --workspace --test soak -- --test-threads=1 --nocapture

# Fuzzing with cargo-fuzz (nightly toolchain) of everything parsed from
# untrusted input: fuzz/fuzz_targets/*.rs, FUZZ_SECONDS each, one after the
# other. New inputs go to fuzz/corpus/<target> (seeded from fuzz/seeds),
# crashes to fuzz/artifacts/<target>; a crash fails the target.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= config_json entrypoint image containerd_versions
# No sanitizer: the code fuzzed is safe Rust (panics and overflows are what
# is looked for; debug assertions and overflow checks are on); 16 codegen
# units keep the build of wasmtime, linked in, to minutes.
FUZZ_BUILD_FLAGS ?= --sanitizer none --codegen-units 16
fuzz:
	test/install-deps.sh --fuzz
	cd fuzz && cargo +nightly fuzz build $(FUZZ_BUILD_FLAGS)
	@set -e; cd fuzz; for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$t; \
		echo "make fuzz: $$t for $(FUZZ_SECONDS) s"; \
		cargo +nightly fuzz run $(FUZZ_BUILD_FLAGS) $$t corpus/$$t seeds/$$t -- \
			-dict=dict/$$t.dict -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 -print_final_stats=1; \
	done
