//! Guests prepared from an image layer's bytes (Wasm OCI artifacts): argv,
//! exports, errors naming the layer, and the cache keyed on the digest.
mod common;

use std::time::Duration;

use common::{assert_contains, check, Bundle};
use sha2::{Digest, Sha256};
use wasishim_engine::{CacheStats, WasmEngine, WasmLayer};

/// Exits with its number of arguments; the export `seven` exits with 7.
const ARGC_MODULE: &str = r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (call $exit (i32.load (i32.const 0))))
  (func (export "seven") (call $exit (i32.const 7))))"#;

fn layer(bytes: &[u8], name: &str) -> WasmLayer {
    let digest = format!("sha256:{:x}", Sha256::digest(bytes));
    check("layer", WasmLayer::new(bytes.to_vec(), &digest, name))
}

fn run(engine: &WasmEngine, b: &Bundle, l: WasmLayer) -> u32 {
    let workload = match engine.prepare_layer(b.spec(), l, b.stdio()) {
        Ok(w) => w,
        Err(e) => panic!("prepare_layer: {e:#}"),
    };
    common::start(workload).wait(Duration::from_secs(10)).code
}

fn engine_in(dir: &std::path::Path) -> WasmEngine {
    check(
        "engine",
        WasmEngine::builder()
            .cache_dir(Some(dir.to_path_buf()))
            .pooling(false)
            .build(),
    )
}

#[test]
fn args_zero_need_not_exist_and_export_suffix_selects() {
    let wasm = check("wat", wat::parse_str(ARGC_MODULE));
    // The rootfs is empty: args[0] names no file.
    let b = Bundle::new(&["anything", "a", "b"]);
    assert!(!b.spec().entrypoint_in_rootfs());
    assert_eq!(run(common::engine(), &b, layer(&wasm, "layer x")), 3);
    let b = Bundle::new(&["/app.wasm#seven"]);
    assert_eq!(run(common::engine(), &b, layer(&wasm, "layer x")), 7);
}

#[test]
fn entrypoint_in_rootfs_sees_only_regular_files() {
    let b = Bundle::new(&["/app.wasm"]);
    assert!(!b.spec().entrypoint_in_rootfs());
    b.file("app.wasm", b"\0asm\x01\0\0\0");
    assert!(b.spec().entrypoint_in_rootfs());
    let d = Bundle::new(&["/dir"]);
    check("mkdir", std::fs::create_dir_all(d.rootfs().join("dir")));
    assert!(!d.spec().entrypoint_in_rootfs());
}

#[test]
fn errors_name_the_layer() {
    let b = Bundle::new(&["/app.wasm"]);
    let e = match common::engine().prepare_layer(
        b.spec(),
        layer(b"hello world\n", "layer sha256:abc of image x"),
        b.stdio(),
    ) {
        Ok(_) => panic!("text was prepared"),
        Err(e) => format!("{e:#}"),
    };
    assert_contains(
        &e,
        "entrypoint layer sha256:abc of image x is not a WebAssembly module or component (found text)",
    );
}

#[test]
fn cache_is_keyed_on_the_digest() {
    let tmp = check("tempdir", tempfile::tempdir());
    let dir = tmp.path().join("cache");
    let wasm = check("wat", wat::parse_str(ARGC_MODULE));
    let b = Bundle::new(&["x"]);
    let first = engine_in(&dir);
    assert_eq!(run(&first, &b, layer(&wasm, "layer of image a")), 1);
    // The same layer in another image: the same code.
    assert_eq!(run(&first, &b, layer(&wasm, "layer of image b")), 1);
    let stats = |compiled, loaded_from_disk, memory_hits| CacheStats {
        compiled,
        loaded_from_disk,
        memory_hits,
    };
    assert_eq!(first.cache_stats(), stats(1, 0, 1));
    // Another shim on the node loads it.
    let second = engine_in(&dir);
    assert_eq!(run(&second, &b, layer(&wasm, "layer of image a")), 1);
    assert_eq!(second.cache_stats(), stats(0, 1, 0));
}
