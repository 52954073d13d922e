//! containerd-shim-wasmtimed-v1: one shim process per node hosting every wasm pod.
fn main() {
    std::process::exit(wasishim_shim::cli::main(wasishim_shim::PER_NODE));
}
