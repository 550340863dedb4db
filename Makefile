# The two set-up commands of the README are `make demo` and `make test`. Both install any
# missing build dependency first (scripts/install-build-deps reads packaging/deb/control).
PRESET ?= dev
JOBS ?= $(shell nproc)
BUILD := build/$(PRESET)

.PHONY: all deps configure build demo test test-asan schema bench fuzz deb test-packages deps-arm64 deb-arm64 test-arm64 test-packages-arm64 clean

all: build

deps:
	@./scripts/install-build-deps

configure: deps
	@test -f $(BUILD)/build.ninja || cmake --preset $(PRESET)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	./scripts/demo $(BUILD)

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# Unit tests under AddressSanitizer and UndefinedBehaviorSanitizer (the asan preset leaves out the
# benchmarks: no test runs them, and their links were a tenth of the CI run).
test-asan: deps
	@test -f build/asan/build.ninja || cmake --preset asan
	cmake --build build/asan -j $(JOBS)
	ctest --test-dir build/asan --output-on-failure -j $(JOBS) -L unit

# Regenerates the JSON Schema and the site file reference from the plugins' declarations.
schema: build
	$(BUILD)/bin/pilectl config schema -o configs/schema/site.schema.json
	$(BUILD)/bin/pilectl config reference -o docs/config-reference.md

# The benchmarks of docs/performance.md, on the release build (a few minutes; they print their
# figures and the load average: compare with the document's, which say how they were taken).
bench: deps
	@test -f build/release/build.ninja || cmake --preset release
	cmake --build build/release -j $(JOBS) --target bench_startup bench_ledger bench_session bench_strand bench_isolation bench_face bench_routing bench_risk bench_flood bench_lorawan bench_estop
	build/release/bin/bench_startup --runs 20
	build/release/bin/bench_ledger
	build/release/bin/bench_session
	build/release/bin/bench_strand
	build/release/bin/bench_isolation
	build/release/bin/bench_face
	build/release/bin/bench_routing
	build/release/bin/bench_risk
	build/release/bin/bench_flood
	build/release/bin/bench_lorawan
	build/release/bin/bench_estop

# Builds the libFuzzer targets with clang and runs each for FUZZ_SECONDS (fuzz_frame: the uplink
# wire protocol's decoder, seeded with docs/protocol.md's examples; fuzz_wallet_answers: the e-CNY
# wallet's APDU answers; fuzz_rui3_lines: what a LoRaWAN module writes on its serial port).
FUZZ_SECONDS ?= 60
fuzz: deps
	@test -f build/fuzz/build.ninja || cmake --preset fuzz
	cmake --build build/fuzz -j $(JOBS) --target fuzz_site_config fuzz_frame fuzz_wallet_answers fuzz_rui3_lines
	mkdir -p build/fuzz/corpus build/fuzz/corpus-frames build/fuzz/corpus-wallet build/fuzz/corpus-rui3
	build/fuzz/tests/fuzz/fuzz_site_config -max_total_time=$(FUZZ_SECONDS) build/fuzz/corpus tests/corpus/site
	build/fuzz/tests/fuzz/fuzz_frame -max_total_time=$(FUZZ_SECONDS) build/fuzz/corpus-frames tests/corpus/frames
	build/fuzz/tests/fuzz/fuzz_wallet_answers -max_total_time=$(FUZZ_SECONDS) build/fuzz/corpus-wallet
	build/fuzz/tests/fuzz/fuzz_rui3_lines -max_total_time=$(FUZZ_SECONDS) build/fuzz/corpus-rui3

# Debian packages (pilecore, pilecore-sim, pilecore-dev) from a clean export of the tree, in
# build/deb/, checked by lintian. See docs/packaging.md.
deb: deps
	JOBS=$(JOBS) ./packaging/build-debs --out build/deb

# Installs the packages into a throwaway Debian 12 root and checks install, start, the SDK,
# upgrade with an edited conffile and remove (root; several minutes, so not part of `make test`).
test-packages: deb
	JOBS=$(JOBS) ./tests/packaging/run build/deb

# arm64, the pile's board, cross-built with Debian multiarch and run under qemu-user (binfmt).
# See docs/packaging.md. Slow on two cores, so not part of `make test`: run it before resolving
# a change to the build, the packaging or byte-level code.
deps-arm64:
	@./scripts/install-build-deps --arch arm64

# The four packages for arm64, in build/deb-arm64/, checked by lintian.
deb-arm64: deps-arm64
	JOBS=$(JOBS) ./packaging/build-debs --arch arm64 --out build/deb-arm64

# The unit tests and the crash-injection test (both in slow motion: PILECORE_TIME_SCALE, set by
# the arm64 build's CMake) and `pilectl demo`, as arm64 programs under qemu. Tests labelled
# no_emulation (each with its reason where it is labelled) are left out.
test-arm64: deps-arm64
	@test -f build/arm64/build.ninja || cmake --preset arm64
	cmake --build build/arm64 -j $(JOBS)
	ctest --test-dir build/arm64 --output-on-failure -j $(JOBS) -L unit -LE no_emulation
	ctest --test-dir build/arm64 --output-on-failure -R '^crash_injection$$'
	DEMO_SPEED=300 ./scripts/demo build/arm64

# The package test of `make test-packages` on the arm64 packages, in an arm64 Debian 12 root
# run by qemu-user (root; tens of minutes).
test-packages-arm64: deb-arm64
	JOBS=$(JOBS) ./tests/packaging/run --arch arm64 build/deb-arm64

clean:
	rm -rf build
