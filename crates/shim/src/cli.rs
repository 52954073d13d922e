//! The shim binary's command line: what containerd runs and why.
//!
//! - `-v`: print the version.
//! - `-info`: describe the runtime (containerd 2.x asks before first use).
//! - `start`: find or launch the server, print its address.
//! - `delete`: clean up after a dead server, print a DeleteResponse.
//! - no action, with `-socket`: be the server.
//! - `--wasishim-compile-worker` (first, never from containerd): compile one
//!   guest for the server that started this process (see the engine's
//!   `run_compile_worker`).
//! - `--wasishim-pod-init` (first, never from containerd): hold a pod's
//!   shared PID namespace as its init (see [`crate::pod_namespaces`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::types::introspection::RuntimeInfo;

use crate::hosting::Runtime;
use crate::server::{serve_inherited, ServeOptions};
use crate::{cleanup, launch, pod_namespaces};

/// Runs the shim binary for `runtime` and returns the process exit code.
pub fn main(runtime: Runtime) -> i32 {
    // Before anything else: the worker is started by the server, with its
    // own limits and filter, and needs no logging or flags.
    if std::env::args_os().nth(1).as_deref() == Some(wasishim_engine::COMPILE_WORKER_ARG.as_ref()) {
        return wasishim_engine::run_compile_worker();
    }
    // Likewise first, with one thread: it forks.
    if std::env::args_os().nth(1).as_deref() == Some(pod_namespaces::POD_INIT_ARG.as_ref()) {
        return pod_namespaces::run_pod_init();
    }
    match run(runtime) {
        Ok(()) => 0,
        Err(err) => {
            log::error!("{err:#}");
            eprintln!("{}: {err:#}", runtime.binary);
            1
        }
    }
}

fn run(runtime: Runtime) -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = containerd_shim::parse(&args).map_err(|err| anyhow::anyhow!("{err}"))?;
    if flags.version {
        println!("{}:", runtime.binary);
        println!("  Runtime: {}", runtime.name);
        println!("  Version: {}", env!("CARGO_PKG_VERSION"));
        println!("  Engine: wasmtime 48");
        return Ok(());
    }
    if flags.info {
        let info = RuntimeInfo {
            name: runtime.name.to_string(),
            ..Default::default()
        };
        let mut stdout = std::io::stdout();
        stdout.write_all(&info.write_to_bytes()?)?;
        stdout.flush()?;
        return Ok(());
    }
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().context("cannot read the bundle directory")?
    } else {
        PathBuf::from(&flags.bundle)
    };
    match flags.action.as_str() {
        "start" => {
            let reply = launch::start(runtime, &flags, &bundle)?;
            let mut stdout = std::io::stdout();
            stdout.write_all(reply.as_bytes())?;
            stdout.flush()?;
            Ok(())
        }
        "delete" => {
            let reply = cleanup::delete(&bundle, &flags.namespace, &flags.id)?;
            let mut stdout = std::io::stdout();
            stdout.write_all(&reply)?;
            stdout.flush()?;
            Ok(())
        }
        "" if !flags.socket.is_empty() => {
            runtime.hosting.prepare_process();
            if let Err(err) = runtime.hosting.init_log(&flags.socket, flags.debug) {
                eprintln!("cannot open the shim log: {err}");
            }
            let runtime_threads = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Blocking work (creates) is occasional: an idle shim keeps no
                // pool thread, and its memory, for long.
                .thread_keep_alive(std::time::Duration::from_secs(1))
                .build()
                .context("cannot start the async runtime")?;
            runtime_threads.block_on(serve_inherited(ServeOptions {
                runtime,
                namespace: flags.namespace.clone(),
                socket_address: flags.socket.clone(),
                ttrpc_address: std::env::var("TTRPC_ADDRESS").ok(),
                containerd_address: flags.address.clone(),
            }))
        }
        other => anyhow::bail!(
            "unknown action '{other}': expected start or delete (this binary is run by containerd)"
        ),
    }
}
