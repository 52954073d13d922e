//! Failures at task creation: each names the entrypoint and the problem.
mod common;

use std::os::unix::fs::symlink;

use common::{assert_contains, check, Bundle};

const START: &str = r#"(module (func (export "_start")))"#;

#[test]
fn missing_entrypoint() {
    let b = Bundle::new(&["/app.wasm"]);
    assert_eq!(
        b.prepare_error(),
        "entrypoint /app.wasm not found in the image's rootfs"
    );
}

#[test]
fn elf_is_not_wasm() {
    let b = Bundle::new(&["/app"]);
    b.file("app", b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    assert_eq!(
        b.prepare_error(),
        "entrypoint /app is not a WebAssembly module or component (found an ELF executable)"
    );
}

#[test]
fn text_is_not_wasm() {
    let b = Bundle::new(&["/run.sh"]);
    b.file("run.sh", "echo hello\n");
    assert_eq!(
        b.prepare_error(),
        "entrypoint /run.sh is not a WebAssembly module or component (found text)"
    );
}

#[test]
fn corrupt_wasm() {
    let b = Bundle::new(&["/app.wasm"]);
    b.file("app.wasm", b"\0asm\x01\0\0\0\x01\xff\xff");
    let e = b.prepare_error();
    assert!(
        e.starts_with("entrypoint /app.wasm is not valid WebAssembly: "),
        "{e}"
    );
}

#[test]
fn broken_wat() {
    let b = Bundle::new(&["/app.wat"]);
    b.file("app.wat", "(module (func (export \"_start\") (i32.bogus)))");
    let e = b.prepare_error();
    assert!(
        e.starts_with("entrypoint /app.wat is not valid WebAssembly text: "),
        "{e}"
    );
}

#[test]
fn unknown_export() {
    let b = Bundle::new(&["/app.wat#foo"]);
    b.file(
        "app.wat",
        r#"(module (memory (export "memory") 1) (func (export "a")) (func (export "b")) (func (export "_start")))"#,
    );
    assert_eq!(
        b.prepare_error(),
        "entrypoint /app.wat has no export named 'foo' (exports: a, b, _start)"
    );
}

#[test]
fn module_without_start() {
    let b = Bundle::new(&["/lib.wat"]);
    b.file("lib.wat", r#"(module (func (export "f")))"#);
    let e = b.prepare_error();
    assert!(
        e.starts_with("entrypoint /lib.wat has no export named '_start' (exports: f)"),
        "{e}"
    );
    assert_contains(&e, "/lib.wat#<export>");
}

#[test]
fn component_without_run() {
    let b = Bundle::new(&["/c.wat"]);
    b.file("c.wat", "(component)");
    let e = b.prepare_error();
    assert!(
        e.starts_with("entrypoint /c.wat has no export named 'wasi:cli/run' (exports: none)"),
        "{e}"
    );
}

#[test]
fn unknown_import_fails_at_prepare() {
    let b = Bundle::new(&["/app.wat"]);
    b.file(
        "app.wat",
        r#"(module (import "env" "magic" (func)) (func (export "_start")))"#,
    );
    let e = b.prepare_error();
    assert!(
        e.starts_with("entrypoint /app.wat cannot be linked: "),
        "{e}"
    );
    assert_contains(&e, "env::magic");
}

#[test]
fn wasi_module_without_memory_export() {
    let b = Bundle::new(&["/app.wat"]);
    b.file(
        "app.wat",
        r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))) (memory 1) (func (export "_start")))"#,
    );
    assert_contains(&b.prepare_error(), "exports no memory named 'memory'");
}

#[test]
fn dot_dot_escape_is_refused() {
    let b = Bundle::new(&["../../etc/passwd"]);
    let e = b.prepare_error();
    assert_eq!(
        e,
        "entrypoint /../../etc/passwd leaves the image's rootfs through '..': use a path inside the image"
    );
}

#[test]
fn symlink_escape_is_refused() {
    let b = Bundle::new(&["/app.wasm"]);
    // A real module outside the rootfs, which must not be run.
    check(
        "write outside",
        std::fs::write(b.dir.join("outside.wat"), START),
    );
    check(
        "symlink",
        symlink("../outside.wat", b.rootfs().join("app.wasm")),
    );
    assert_eq!(
        b.prepare_error(),
        "entrypoint /app.wasm leaves the image's rootfs: symlink /app.wasm points to ../outside.wat, outside of it"
    );

    // An absolute target is a path inside the rootfs, as in a chroot.
    let b = Bundle::new(&["/app.wasm"]);
    let outside = b.dir.join("outside.wat");
    check("write outside", std::fs::write(&outside, START));
    check("symlink", symlink(&outside, b.rootfs().join("app.wasm")));
    assert_eq!(
        b.prepare_error(),
        "entrypoint /app.wasm not found in the image's rootfs"
    );
}

#[test]
fn symlink_inside_the_rootfs_is_followed() {
    let b = Bundle::new(&["/bin/app"]);
    b.file("opt/app.wat", START);
    check("mkdir", std::fs::create_dir_all(b.rootfs().join("bin")));
    check(
        "symlink",
        symlink("/opt/app.wat", b.rootfs().join("bin/app")),
    );
    assert_eq!(b.run(), 0);
}

#[test]
fn missing_stdout_fifo_fails_at_prepare() {
    let b = Bundle::new(&["/app.wat"]);
    b.file("app.wat", START);
    let mut stdio = b.stdio();
    stdio.stdout = Some(b.dir.join("no-such-fifo"));
    let e = match common::engine().prepare(b.spec(), stdio) {
        Ok(_) => panic!("prepare succeeded with a missing stdout"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.starts_with("cannot open the container's stdout "), "{e}");
}

#[test]
fn null_stdio_is_fine() {
    let b = Bundle::new(&["/app.wat"]);
    b.file("app.wat", START);
    let workload = match common::engine().prepare(b.spec(), Default::default()) {
        Ok(w) => w,
        Err(e) => panic!("prepare: {e:#}"),
    };
    let running = common::start(workload);
    assert_eq!(running.wait(std::time::Duration::from_secs(5)).code, 0);
}

/// Which entrypoints `linux_executable` hands to a Linux runtime (the shim's
/// runc path): ELF and `#!` scripts, found by path or in `PATH`; never wasm,
/// WAT, wasmtime's precompiled code (EI_OSABI 200) or a missing file.
#[test]
fn linux_executables_are_told_from_wasm() {
    let kind = |args: &[&str], files: &[(&str, &[u8])]| {
        let b = Bundle::new(args);
        for (path, bytes) in files {
            b.file(path, bytes);
        }
        b.spec();
        let loaded = check("load", wasishim_engine::Bundle::load(&b.dir));
        wasishim_engine::linux_executable(&loaded)
    };
    let elf: &[u8] = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0";
    assert_eq!(kind(&["/app"], &[("app", elf)]), Some("an ELF executable"));
    assert_eq!(
        kind(&["/run.sh"], &[("run.sh", b"#!/bin/sh\necho hi\n")]),
        Some("a script starting with #!")
    );
    // A bare name is looked up in PATH (the default one here: no PATH in env).
    assert_eq!(
        kind(&["tool"], &[("usr/bin/tool", elf)]),
        Some("an ELF executable")
    );
    let cwasm: &[u8] = b"\x7fELF\x02\x01\x01\xc8\0\0\0\0\0\0\0\0";
    assert_eq!(kind(&["/app.cwasm"], &[("app.cwasm", cwasm)]), None);
    assert_eq!(
        kind(&["/app.wasm"], &[("app.wasm", b"\0asm\x01\0\0\0")]),
        None
    );
    assert_eq!(kind(&["/app.wat"], &[("app.wat", START.as_bytes())]), None);
    assert_eq!(kind(&["/missing"], &[]), None);
}
