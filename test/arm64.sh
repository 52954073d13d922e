#!/usr/bin/env bash
# Arm64 without Arm64 hardware (`make test-arm64`): cross-builds both shims
# for aarch64-unknown-linux-gnu with Debian's cross toolchain, then runs the
# engine's unit tests on qemu-user (Cranelift's aarch64 backend through the
# compile worker and cache, limits, bundles, slots), one test per process,
# each under a memory cap. Not part of `make test`: see README "Arm64".
#
# Not run under qemu:
# - the engine's integration tests (crates/engine/tests): each engine
#   reserves its instance pool (1000 slots of 4.3 GiB of address space), and
#   qemu-user keeps host memory for every page of a guest mapping: a test
#   was killed at a 3 GiB cap, the node-sized reservation reached 24 GB;
# - seccomp tests: qemu-user refuses a guest's PR_SET_SECCOMP (its system
#   calls are the host's x86_64 calls, which an aarch64 filter cannot match).
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
log() { echo "arm64.sh: $*" >&2; }

pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# Where qemu finds the aarch64 loader and libc, for the tests and for the
# compile workers they start (the test binary again, run through binfmt).
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    [ -e /proc/sys/fs/binfmt_misc/register ] ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    # Debian's qemu-user-binfmt line, written here so that no service is needed.
    printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64:' \
        >/proc/sys/fs/binfmt_misc/register
fi

log "cross-building the shims and the engine's tests for $target"
cargo build --target "$target" -p containerd-shim-wasmtime-v1 -p containerd-shim-wasmtimed-v1
for shim in containerd-shim-wasmtime-v1 containerd-shim-wasmtimed-v1; do
    file "${CARGO_TARGET_DIR:-target}/$target/debug/$shim" | grep -q "ARM aarch64" ||
        { log "${CARGO_TARGET_DIR:-target}/$target/debug/$shim is not an aarch64 executable"; exit 1; }
done
mapfile -t binaries < <(cargo test --target "$target" -p wasishim-engine --lib --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')

# One memory cgroup (v2 or v1) caps every test process at 4 GiB.
cap=$((4 << 30))
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
    cgroup=/sys/fs/cgroup/wasishim-arm64
    mkdir -p "$cgroup" && echo "$cap" >"$cgroup/memory.max"
else
    cgroup=/sys/fs/cgroup/memory/wasishim-arm64
    mkdir -p "$cgroup" && echo "$cap" >"$cgroup/memory.limit_in_bytes"
fi
skip='a_node_sized_pool_can_be_reserved|filter_allows_compiling'

passed=0 failed=0 skipped=0
cd crates/engine # the tests find their fixtures from here, as under cargo
for bin in "${binaries[@]}"; do
    while read -r name; do
        if [[ "$name" =~ $skip ]]; then
            skipped=$((skipped + 1))
            continue
        fi
        if out=$(sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec timeout 600 "$@"' \
            - "$cgroup" "$bin" --exact "$name" --test-threads=1 2>&1) &&
            grep -q "1 passed" <<<"$out"; then
            passed=$((passed + 1))
        elif grep -q "1 ignored" <<<"$out"; then
            skipped=$((skipped + 1))
        else
            failed=$((failed + 1))
            echo "FAILED on aarch64 (qemu): $(basename "$bin") $name"
            tail -20 <<<"$out" | sed 's/^/    /'
        fi
    done < <("$bin" --list 2>/dev/null | sed -n 's/: test$//p')
done
rmdir "$cgroup" 2>/dev/null || true
echo "arm64.sh: aarch64 shims built; engine tests on qemu-user: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
