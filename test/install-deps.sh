#!/usr/bin/env bash
# Install everything the fixtures and end-to-end tests need on a fresh
# Debian 12 machine. Idempotent, and quick when everything is present.
#
#   test/install-deps.sh          # fixtures and end-to-end tests
#   test/install-deps.sh --fuzz   # make fuzz: nightly toolchain and cargo-fuzz
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { echo "install-deps.sh: $*" >&2; }

# `--fuzz`: only what `make fuzz` needs, the nightly toolchain and cargo-fuzz.
if [ "${1:-}" = "--fuzz" ]; then
    if ! command -v rustup >/dev/null; then
        log "rustup not found: install the nightly toolchain and cargo-fuzz by hand"
        exit 1
    fi
    if ! rustup toolchain list | grep -q '^nightly'; then
        log "rustup toolchain install nightly"
        rustup toolchain install nightly --profile minimal
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        log "cargo install cargo-fuzz"
        cargo install cargo-fuzz --locked
    fi
    exit 0
fi

# protobuf-compiler: protoc, which the k8s-cri crate (CRI tests) needs to build.
# docker-registry, skopeo: the loopback registry and pushes of the artifact tests.
# wrk: the load generator of make bench's HTTP case.
# redis-server: the Redis key-value store of the Spin tests (started by the test).
apt_pkgs=(containerd runc wabt clang lld wasi-libc containernetworking-plugins skopeo docker-registry protobuf-compiler wrk redis-server)
missing=()
for p in "${apt_pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    # The package enables a registry on every interface (:5000); the tests
    # start their own on 127.0.0.1, so one installed here is switched off.
    if [[ " ${missing[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null \
        && systemctl is-enabled docker-registry.service >/dev/null 2>&1; then
        log "systemctl disable --now docker-registry (the tests run their own, on loopback)"
        systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
    fi
    # Likewise redis-server's own service: the Spin tests start theirs.
    if [[ " ${missing[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null \
        && systemctl is-enabled redis-server.service >/dev/null 2>&1; then
        log "systemctl disable --now redis-server (the tests run their own, on loopback)"
        systemctl disable --now redis-server.service >/dev/null 2>&1 || true
    fi
fi

if command -v rustup >/dev/null; then
    installed=$(rustup target list --installed)
    for t in wasm32-wasip1 wasm32-wasip2; do
        if ! grep -qx "$t" <<<"$installed"; then
            log "rustup target add $t"
            rustup target add "$t"
        fi
    done
else
    log "rustup not found: install the wasm32-wasip1 and wasm32-wasip2 targets by hand"
fi

for v in 1.6.20 1.7.24 2.1.9; do
    "$repo/test/containerd/install.sh" "$v" >/dev/null
done
log "done"
