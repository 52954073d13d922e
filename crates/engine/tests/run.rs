//! Running guests: output, exit codes, traps, kills, limits, stdin, preopens.
mod common;

use std::time::{Duration, Instant};

use common::{assert_contains, check, Bundle, KILL_LIMIT};
use serde_json::json;

const HELLO: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

const EXIT_3: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))
"#;

const TRAP: &str = r#"
(module
  (memory (export "memory") 1)
  (func $deep unreachable)
  (func (export "_start") (call $deep)))
"#;

const SPIN: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $l (br $l))))
"#;

/// Sleeps 10 s in poll_oneoff (a WASI call, not wasm code).
const SLEEP: &str = r#"
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; subscription at 0: userdata 0, tag 0 (clock), clock id 1 (monotonic),
    ;; timeout 10 s, precision 0, flags 0 (relative).
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 10000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))
"#;

/// memory.grow within the limit succeeds, beyond it returns -1: exits 7 if so.
const GROW: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.ne (memory.grow (i32.const 1)) (i32.const 1)) (then (call $exit (i32.const 1))))
    (if (i32.ne (memory.grow (i32.const 1)) (i32.const -1)) (then (call $exit (i32.const 2))))
    (call $exit (i32.const 7))))
"#;

/// Copies stdin to stdout.
const CAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $l
      (i32.store (i32.const 0) (i32.const 64))
      (i32.store (i32.const 4) (i32.const 1024))
      (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
        (then unreachable))
      (if (i32.eqz (i32.load (i32.const 8))) (then return))
      (i32.store (i32.const 4) (i32.load (i32.const 8)))
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 12)))
      (br $l))))
"#;

/// Creates `out.txt` in the preopened directory with fd `FD` and writes
/// "written" to it; exits with the errno of a failed path_open.
fn write_file_in(fd: u32) -> String {
    format!(
        r#"
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "out.txt")
  (data (i32.const 200) "written")
  (func (export "_start") (local $err i32)
    ;; oflags: creat|trunc; rights: fd_write (1<<6)
    (local.set $err (call $open (i32.const {fd}) (i32.const 0) (i32.const 100) (i32.const 7)
      (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 0)))
    (if (local.get $err) (then (call $exit (local.get $err))))
    (i32.store (i32.const 16) (i32.const 200))
    (i32.store (i32.const 20) (i32.const 7))
    (drop (call $fd_write (i32.load (i32.const 0)) (i32.const 16) (i32.const 1) (i32.const 24)))))
"#
    )
}

/// A component exporting `wasi:cli/run@0.2.0` whose run returns ok (0) or
/// err (1), plus a plain function export `hello`.
fn component(run_result: u32) -> String {
    format!(
        r#"
(component
  (core module $m
    (func (export "run") (result i32) (i32.const {run_result}))
    (func (export "hello")))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (func $hello (canon lift (core func $i "hello")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli))
  (export "hello" (func $hello)))
"#
    )
}

#[test]
fn hello_world_writes_stdout() {
    let b = Bundle::new(&["/hello.wat"]);
    b.file("hello.wat", HELLO);
    assert_eq!(b.run(), 0);
    assert_eq!(b.stdout(), "hello\n");
    assert_eq!(b.stderr(), "");
}

/// Writes its environment (NUL-separated) to stdout and exits with argc.
const ENV: &str = r#"
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $env_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $env (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $env_sizes (i32.const 0) (i32.const 4)))
    (drop (call $env (i32.const 1024) (i32.const 2048)))
    (i32.store (i32.const 16) (i32.const 2048))
    (i32.store (i32.const 20) (i32.load (i32.const 4)))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    (drop (call $args_sizes (i32.const 8) (i32.const 12)))
    (call $exit (i32.load (i32.const 8)))))
"#;

#[test]
fn guest_sees_spec_args_and_env_only() {
    let b = Bundle::new(&["/env.wat", "a", "b"]);
    b.file("env.wat", ENV);
    assert_eq!(b.run(), 3);
    assert_eq!(b.stdout(), "GREETING=hi\0PWD=/\0");
}

#[test]
fn spec_pwd_is_kept() {
    let mut b = Bundle::new(&["/env.wat"]);
    b.file("env.wat", ENV);
    b.config(|c| c["process"]["env"] = json!(["PWD=/elsewhere"]));
    assert_eq!(b.run(), 1);
    assert_eq!(b.stdout(), "PWD=/elsewhere\0");
}

#[test]
fn output_to_a_fifo_is_complete_and_ends() {
    let b = Bundle::new(&["/hello.wat"]);
    b.file("hello.wat", HELLO);
    let fifo = b.dir.join("stdout.fifo");
    check(
        "mkfifo",
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU),
    );
    // Like containerd: a reader that reads until every writer is gone.
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || std::fs::read_to_string(reader_path));
    let mut stdio = b.stdio();
    stdio.stdout = Some(fifo);
    let workload = match common::engine().prepare(b.spec(), stdio) {
        Ok(w) => w,
        Err(e) => panic!("prepare: {e:#}"),
    };
    let running = common::start(workload);
    assert_eq!(running.wait(Duration::from_secs(5)).code, 0);
    let read = match reader.join() {
        Ok(r) => r,
        Err(_) => panic!("reader thread panicked"),
    };
    assert_eq!(check("read fifo", read), "hello\n");
}

#[test]
fn binary_module_runs() {
    // (module (func (export "_start")))
    let wasm: &[u8] = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x03\x02\x01\0\x07\x0a\x01\x06_start\0\0\x0a\x04\x01\x02\0\x0b";
    let b = Bundle::new(&["app.wasm"]);
    b.file("app.wasm", wasm);
    assert_eq!(b.run(), 0);
}

#[test]
fn proc_exit_sets_the_exit_code() {
    let b = Bundle::new(&["/exit.wat"]);
    b.file("exit.wat", EXIT_3);
    assert_eq!(b.run(), 3);
}

#[test]
fn trap_exits_134_with_message_on_stderr() {
    let b = Bundle::new(&["/trap.wat"]);
    b.file("trap.wat", TRAP);
    assert_eq!(b.run(), 134);
    let stderr = b.stderr();
    assert_contains(&stderr, "wasm trap:");
    assert_contains(&stderr, "unreachable");
}

#[test]
fn sigterm_ends_a_tight_loop() {
    let b = Bundle::new(&["/spin.wat"]);
    b.file("spin.wat", SPIN);
    let running = b.start();
    assert!(running.still_running_after(Duration::from_millis(100)));
    // Its linear memory, its store's 2 MiB stack and a few KiB of instance
    // state.
    let used = running.handle.memory_bytes();
    let floor = 64 * 1024 + (2 << 20);
    assert!((floor + 4096..floor + (32 << 10)).contains(&used), "{used}");
    assert_eq!(running.kill_and_wait(15), 143);
}

#[test]
fn sigkill_ends_a_tight_loop_and_first_signal_wins() {
    let b = Bundle::new(&["/spin.wat"]);
    b.file("spin.wat", SPIN);
    let running = b.start();
    assert!(running.still_running_after(Duration::from_millis(100)));
    let killed_at = Instant::now();
    check("kill", running.handle.kill(9));
    check("kill", running.handle.kill(15));
    assert_eq!(running.wait(Duration::from_secs(5)).code, 137);
    assert!(
        killed_at.elapsed() < KILL_LIMIT,
        "SIGKILL took {:?}",
        killed_at.elapsed()
    );
    // After the end, signals are harmless.
    check("kill after exit", running.handle.kill(9));
}

#[test]
fn ignored_and_unsupported_signals_do_not_end_the_guest() {
    let b = Bundle::new(&["/spin.wat"]);
    b.file("spin.wat", SPIN);
    let running = b.start();
    for sig in [0, 17, 18, 23, 28] {
        check("ignored signal", running.handle.kill(sig));
    }
    let stop = running.handle.kill(19).map(|_| ()).unwrap_err().to_string();
    assert_contains(&stop, "signal SIGSTOP is not supported");
    assert!(running.still_running_after(Duration::from_millis(100)));
    assert_eq!(running.kill_and_wait(2), 130);
}

#[test]
fn sigterm_ends_a_guest_sleeping_in_wasi() {
    let b = Bundle::new(&["/sleep.wat"]);
    b.file("sleep.wat", SLEEP);
    let running = b.start();
    assert!(running.still_running_after(Duration::from_millis(100)));
    assert_eq!(running.kill_and_wait(15), 143);
}

#[test]
fn memory_grow_beyond_the_limit_returns_minus_one() {
    let mut b = Bundle::new(&["/grow.wat"]);
    b.file("grow.wat", GROW);
    // Two pages beside the store's 2 MiB stack and its instance state
    // (under 32 KiB), not three.
    b.config(|c| {
        c["linux"] = json!({"resources": {"memory": {"limit": (2 << 20) + 2 * 65536 + (32 << 10)}}})
    });
    assert_eq!(b.run(), 7);
}

#[test]
fn initial_memory_beyond_the_limit_is_out_of_memory() {
    let mut b = Bundle::new(&["/hello.wat"]);
    b.file("hello.wat", HELLO);
    // Room for the store's 2 MiB stack and instance state (under 32 KiB),
    // not for the one page of memory.
    b.config(|c| c["linux"] = json!({"resources": {"memory": {"limit": (2 << 20) + (32 << 10)}}}));
    // Like a process that cannot even start within its limit: OOM-killed.
    assert_eq!(b.run(), 137);
    let stderr = b.stderr();
    assert_contains(&stderr, "out of memory");
    assert_contains(&stderr, "wasm error:");
    assert_contains(&stderr, "memory");

    // No room for the stack either: the guest never starts, saying why.
    let mut b = Bundle::new(&["/hello.wat"]);
    b.file("hello.wat", HELLO);
    b.config(|c| c["linux"] = json!({"resources": {"memory": {"limit": 1000}}}));
    assert_ne!(b.run(), 0);
    assert_contains(
        &b.stderr(),
        "its 2 MiB stack and its instances' state): raise the limit",
    );
}

#[test]
fn stdin_is_passed_through() {
    let b = Bundle::new(&["/cat.wat"]);
    b.file("cat.wat", CAT);
    check(
        "write stdin",
        std::fs::write(b.dir.join("stdin"), "from stdin\n"),
    );
    assert_eq!(b.run(), 0);
    assert_eq!(b.stdout(), "from stdin\n");
}

#[test]
fn close_stdin_ends_a_read_waiting_for_input() {
    let b = Bundle::new(&["/cat.wat"]);
    b.file("cat.wat", CAT);
    let fifo = b.dir.join("stdin.fifo");
    check(
        "mkfifo",
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU),
    );
    let mut stdio = b.stdio();
    stdio.stdin = Some(fifo);
    let workload = match common::engine().prepare(b.spec(), stdio) {
        Ok(w) => w,
        Err(e) => panic!("prepare: {e:#}"),
    };
    let running = common::start(workload);
    // Nobody ever writes: the guest must wait, not see end of file.
    assert!(running.still_running_after(Duration::from_millis(300)));
    running.handle.close_stdin();
    assert_eq!(running.wait(Duration::from_secs(2)).code, 0);
}

#[test]
fn rootfs_is_preopened_read_write() {
    let b = Bundle::new(&["/write.wat"]);
    b.file("write.wat", write_file_in(3));
    assert_eq!(b.run(), 0);
    let written = check(
        "read out.txt",
        std::fs::read_to_string(b.rootfs().join("out.txt")),
    );
    assert_eq!(written, "written");
}

#[test]
fn readonly_rootfs_refuses_writes() {
    let mut b = Bundle::new(&["/write.wat"]);
    b.file("write.wat", write_file_in(3));
    b.config(|c| c["root"]["readonly"] = json!(true));
    assert_ne!(b.run(), 0);
    assert!(!b.rootfs().join("out.txt").exists());
}

#[test]
fn bind_mounts_are_preopened_with_their_mode() {
    for (options, writable) in [
        (json!(["rbind", "rw"]), true),
        (json!(["rbind", "ro"]), false),
    ] {
        let mut b = Bundle::new(&["/write.wat"]);
        // fd 3 is the rootfs, fd 4 the first bind mount.
        b.file("write.wat", write_file_in(4));
        let data = b.dir.join("data");
        check("create mount source", std::fs::create_dir_all(&data));
        let source = data.to_string_lossy().into_owned();
        b.config(|c| {
            c["mounts"] = json!([
                {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "ro"]},
                {"destination": "/data", "type": "bind", "source": source, "options": options},
            ])
        });
        let code = b.run();
        assert_eq!(data.join("out.txt").exists(), writable, "exit code {code}");
        assert_eq!(code == 0, writable, "exit code {code}");
    }
}

#[test]
fn named_export_is_called() {
    let b = Bundle::new(&["/lib.wat#greet"]);
    b.file(
        "lib.wat",
        r#"(module
             (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
             (memory (export "memory") 1)
             (global $init (mut i32) (i32.const 0))
             (func (export "_initialize") (global.set $init (i32.const 1)))
             (func (export "greet") (result i32)
               (call $exit (i32.add (i32.const 40) (global.get $init)))
               (i32.const 0)))"#,
    );
    // 41: greet ran after _initialize.
    assert_eq!(b.run(), 41, "stderr: {}", b.stderr());
}

#[test]
fn component_run_ok_and_err() {
    let b = Bundle::new(&["/cmd.wat"]);
    b.file("cmd.wat", component(0));
    assert_eq!(b.run(), 0);
    let b = Bundle::new(&["/cmd.wat"]);
    b.file("cmd.wat", component(1));
    assert_eq!(b.run(), 1);
}

#[test]
fn component_named_export_is_called() {
    let b = Bundle::new(&["/cmd.wat#hello"]);
    b.file("cmd.wat", component(1));
    assert_eq!(b.run(), 0);
}

/// Pooling (on by default) must not refuse what on-demand allocation runs:
/// a 1 GiB memory growing to 2 GiB, two memories, and a table beyond
/// wasmtime's default pool table size of 20000 elements.
#[test]
fn large_memories_and_tables_run_with_and_without_the_pool() {
    let wat = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 16384)
  (memory $second 1)
  (table 100000 funcref)
  (func (export "_start")
    (if (i32.ne (memory.grow (i32.const 16384)) (i32.const 16384)) (then (call $exit (i32.const 1))))
    (i32.store (i32.const 2147483640) (i32.const 7))
    (if (i32.ne (memory.grow $second (i32.const 1)) (i32.const 1)) (then (call $exit (i32.const 2))))
    (if (i32.ne (table.grow (ref.null func) (i32.const 100000)) (i32.const 100000)) (then (call $exit (i32.const 3))))
    (call $exit (i32.load (i32.const 2147483640)))))
"#;
    assert!(common::engine().pooling(), "the pool could not be reserved");
    let b = Bundle::new(&["/big.wat"]);
    b.file("big.wat", wat);
    assert_eq!(b.run(), 7);
    let on_demand = check(
        "engine",
        wasishim_engine::WasmEngine::builder()
            .cache_dir(None)
            .pooling(false)
            .build(),
    );
    assert!(!on_demand.pooling());
    let workload = check("prepare", on_demand.prepare(b.spec(), b.stdio()));
    assert_eq!(
        common::start(workload).wait(Duration::from_secs(10)).code,
        7
    );
}

#[test]
fn workload_types_are_send() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<wasishim_engine::Workload>();
    send_sync::<wasishim_engine::WorkloadHandle>();
    send_sync::<wasishim_engine::WasmEngine>();
}

/// Tables count against the memory limit at 8 bytes per element: under
/// 64 MiB, beside a 64 KiB memory, seven tables of 2^20 funcrefs (8 MiB
/// each) fit and an eighth does not (`table.grow` returns -1: exits 7).
/// The guest's figure is that same sum.
#[test]
fn table_growth_counts_against_the_memory_limit() {
    let mut tables = String::new();
    let mut grows = String::new();
    for t in 0..8 {
        tables.push_str(&format!("  (table $t{t} 0 funcref)\n"));
        let expected = if t < 7 { 0 } else { -1 };
        grows.push_str(&format!(
            "    (if (i32.ne (table.grow $t{t} (ref.null func) (i32.const 1048576)) (i32.const {expected})) (then (call $exit (i32.const {}))))\n",
            t + 1
        ));
    }
    let wat = format!(
        r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
{tables}  (func (export "_start")
{grows}    (call $exit (i32.const 7))))
"#
    );
    let mut b = Bundle::new(&["/tables.wat"]);
    b.file("tables.wat", wat);
    b.config(|c| c["linux"] = json!({"resources": {"memory": {"limit": 64 << 20}}}));
    let running = b.start();
    assert_eq!(running.wait(Duration::from_secs(10)).code, 7);
    let used = running.handle.memory_bytes();
    let floor = (64 << 10) + 7 * (8 << 20) + (2 << 20);
    assert!((floor + 4096..floor + (64 << 10)).contains(&used), "{used}");
}

/// A shared pool is shared out: code declaring more tables than one
/// container's share fails to prepare, naming the limit, and other guests
/// still prepare and run on that engine.
#[test]
fn a_guest_declaring_more_than_its_pool_share_fails_to_prepare() {
    let engine = check(
        "engine",
        wasishim_engine::WasmEngine::builder()
            .cache_dir(None)
            .pool_capacity(100)
            .pool_containers(10)
            .build(),
    );
    assert!(engine.pooling(), "the pool could not be reserved");
    // 100 memories and 400 tables shared by 10: 40 tables each.
    let tables: String = (0..41).map(|_| "  (table 1 funcref)\n").collect();
    let greedy = format!("(module\n{tables}  (func (export \"_start\")))");
    let b = Bundle::new(&["/greedy.wat"]);
    b.file("greedy.wat", greedy);
    let error = match engine.prepare(b.spec(), b.stdio()) {
        Ok(_) => panic!("a guest declaring 41 tables prepared"),
        Err(e) => format!("{e:#}"),
    };
    assert_contains(
        &error,
        "entrypoint /greedy.wat declares 41 tables, more than the 40 one container may have",
    );
    assert_contains(&error, "WASISHIM_POOL_CAPACITY");

    let b = Bundle::new(&["/hello.wat"]);
    b.file("hello.wat", HELLO);
    let workload = check("prepare", engine.prepare(b.spec(), b.stdio()));
    assert_eq!(
        common::start(workload).wait(Duration::from_secs(10)).code,
        0
    );
    assert_eq!(b.stdout(), "hello\n");
}

/// A panic while a guest's thread is set up (the thread-start hook, e.g.
/// a cgroup placement) ends that guest with 134 instead of leaving it
/// running with no one to report its exit.
#[test]
fn a_panicking_thread_start_hook_ends_the_guest() {
    let b = Bundle::new(&["/spin.wat"]);
    b.file("spin.wat", SPIN);
    let workload = check("prepare", b.prepare()).on_thread_start(|_| panic!("cannot place thread"));
    let running = common::start(workload);
    assert_eq!(running.wait(Duration::from_secs(10)).code, 134);
}
