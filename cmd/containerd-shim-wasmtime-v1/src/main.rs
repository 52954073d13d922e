//! containerd-shim-wasmtime-v1: one shim process per pod.
fn main() {
    std::process::exit(wasishim_shim::cli::main(wasishim_shim::PER_POD));
}
