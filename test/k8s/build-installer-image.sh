#!/bin/sh
# Builds the image test/k8s/installer-daemonset.yaml runs, without Docker: an
# OCI image layout tarball written by the project's image builder
# (test/image-builder), holding
#   /opt/wasishim/bin/{wasishim,containerd-shim-wasmtime-v1,containerd-shim-wasmtimed-v1}
# and the shared libraries `wasishim` needs to run in the container (found
# with ldd; the image has no distribution). The shims run on the node itself
# after the copy, against the node's own glibc: build on a system whose glibc
# is no newer than the nodes' (Debian 12: glibc 2.36).
#
#   test/k8s/build-installer-image.sh                # release build, then the image
#   BIN_DIR=target/debug test/k8s/build-installer-image.sh   # reuse a build
#
# Environment: NAME (image name, default registry.example.com/wasishim/installer:latest),
# OUT (default target/wasishim-installer.tar), BIN_DIR (skip the build, take
# the binaries from there). Then, e.g.:
#   skopeo copy oci-archive:target/wasishim-installer.tar docker://registry.example.com/wasishim/installer:latest
#   ctr -n k8s.io images import target/wasishim-installer.tar   # or straight onto a node
set -eu
cd "$(dirname "$0")/../.."

NAME=${NAME:-registry.example.com/wasishim/installer:latest}
OUT=${OUT:-target/wasishim-installer.tar}
BINS="wasishim containerd-shim-wasmtime-v1 containerd-shim-wasmtimed-v1"

if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release -p wasishim -p containerd-shim-wasmtime-v1 -p containerd-shim-wasmtimed-v1
    BIN_DIR=target/release
fi
cargo build -q -p wasishim-image
IMAGE_TOOL=target/debug/wasishim-image

set --
for b in $BINS; do
    [ -x "$BIN_DIR/$b" ] || { echo "$BIN_DIR/$b missing: build it or set BIN_DIR" >&2; exit 1; }
    set -- "$@" --file "$BIN_DIR/$b:/opt/wasishim/bin/$b"
done
# Each library at the path the dynamic loader looks for it, as a regular file.
libs=$(ldd "$BIN_DIR/wasishim" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
for lib in $libs; do
    set -- "$@" --file "$(readlink -f "$lib"):$lib"
done

mkdir -p "$(dirname "$OUT")"
"$IMAGE_TOOL" --name "$NAME" --out "$OUT" --entrypoint /opt/wasishim/bin/wasishim --cmd --help "$@"
echo "wrote $OUT ($NAME, $(sha256sum "$OUT" | cut -c1-16)...)"
