#!/usr/bin/env bash
# The demo behind `make demo`: start a private containerd in a temporary
# directory, import a hello-world wasm image, run it through the shim with
# `ctr run --runtime io.containerd.wasmtime.v1`, show the output, stop.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=${CONTAINERD_VERSION:-1.6.20}
bin=$("$repo/test/containerd/install.sh" "$version" | tail -n 1)
shim_dir=${WASISHIM_SHIM_DIR:-$repo/target/debug}
dir=$(mktemp -d /tmp/wasishim-demo.XXXXXX)
config_version=2
[[ $version == 1.* ]] || config_version=3

cat >"$dir/config.toml" <<TOML
version = $config_version
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
TOML

ctr() { "$bin/ctr" --address "$dir/containerd.sock" --namespace demo "$@"; }
cleanup() {
    ctr task rm -f demo-hello >/dev/null 2>&1 || true
    ctr containers rm demo-hello >/dev/null 2>&1 || true
    [ -n "${containerd_pid:-}" ] && kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null || true
    grep -q " $dir" /proc/self/mountinfo && umount -R "$dir"/* 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

echo "== containerd $version in $dir"
PATH="$shim_dir:$bin:$PATH" "$bin/containerd" --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr version >/dev/null

echo "== building and importing docker.io/library/wasishim-hello:demo"
cargo run -q -p wasishim-image -- --name docker.io/library/wasishim-hello:demo \
    --wasm "$repo/test/fixtures/out/wasip1/hello.wasm" --out "$dir/hello.tar"
ctr images import "$dir/hello.tar" >/dev/null

echo "== ctr run --rm --runtime io.containerd.wasmtime.v1 docker.io/library/wasishim-hello:demo demo-hello"
ctr run --rm --runtime io.containerd.wasmtime.v1 docker.io/library/wasishim-hello:demo demo-hello
echo "== exit status $?; stopping containerd"
