//! Running a prepared guest, ending it, and its exit status.
//!
//! Each guest runs on its own OS thread with a single-threaded tokio runtime.
//! The store yields to that runtime at every epoch tick (10 ms), which is
//! where a kill is noticed: the guest's future is dropped, which ends it
//! whether it is computing or waiting in a WASI call.
//!
//! An HTTP server guest (see http.rs) runs the same way, with one store per
//! request on that runtime; SIGTERM and SIGINT end it gracefully, any other
//! terminating signal (SIGKILL) at once.
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use wasmtime::component::{self, ComponentExportIndex, ResourceTable};
use wasmtime::{Engine, InstancePre, Store, Val};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::cloud::{Cloud, CloudHost};
use crate::compile::ModuleEntry;
use crate::confine::Confinement;
use crate::control::{ended_by, yield_on_epoch, Control, Ended};
use crate::http::HttpGuest;
use crate::limits::{GuestLimiter, GuestLimits, MemoryMeter};
use crate::metrics::HttpMetrics;
use crate::signal::{self, SignalAction};
use crate::spin::SpinApp;
use crate::stdio::GuestStdin;
use crate::NetworkNamespace;

/// Exit code of a guest that trapped or failed in the host, like a process
/// killed by SIGABRT.
const TRAP_EXIT_CODE: u32 = 134;

/// How a guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Returned normally -> 0; proc_exit(n) / wasi:cli/exit -> n (low 8 bits,
    /// as for a process); `wasi:cli/run` returned an error -> 1; trap -> 134;
    /// ended by signal N -> 128+N. An HTTP server that stopped gracefully
    /// after SIGTERM or SIGINT -> 0; one that could not listen -> 134.
    pub code: u32,
    /// When the guest ended and its stdout/stderr were closed.
    pub exited_at: SystemTime,
    /// The guest failed after its memory limit refused it memory: reported
    /// like the kernel's OOM killer would, with code 137.
    pub oom_killed: bool,
}

impl ExitStatus {
    /// An ordinary exit with `code`, now.
    pub fn now(code: u32) -> ExitStatus {
        ExitStatus {
            code,
            exited_at: SystemTime::now(),
            oom_killed: false,
        }
    }
}

/// Exit code of a guest that ran out of memory under its limit, like a
/// process the OOM killer ended with SIGKILL.
const OOM_EXIT_CODE: u32 = 128 + 9;

/// Store data of a core module guest (WASI preview 1).
pub(crate) struct ModuleState {
    pub(crate) wasi: WasiP1Ctx,
    limiter: GuestLimiter,
}

/// Store data of a component guest (WASI 0.2).
pub(crate) struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// `wasi:config` and `wasi:keyvalue` (cloud.rs).
    pub(crate) cloud: CloudHost,
    limiter: GuestLimiter,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The linked code and WASI context of a guest, one variant per kind.
pub(crate) enum Guest {
    Module {
        pre: InstancePre<ModuleState>,
        wasi: WasiP1Ctx,
        entry: ModuleEntry,
    },
    Component {
        pre: component::InstancePre<ComponentState>,
        wasi: WasiCtx,
        entry: ComponentExportIndex,
        cloud: Cloud,
    },
    /// A `wasi:http/incoming-handler` component, served per request.
    Http(Box<HttpGuest>),
    /// A Spin application: its HTTP trigger's components, served per request.
    Spin(Box<HttpGuest<SpinApp>>),
}

/// See [`Workload::on_thread_start`].
pub(crate) type ThreadStartHook = Arc<dyn Fn(i32) + Send + Sync>;

/// What a guest's threads tell its supervisor, the unconfined thread that
/// started them.
enum FromGuest {
    /// A thread of the guest started; its Linux thread id.
    Thread(i32),
    /// The guest ended: exit code and whether it ran out of memory.
    Ended(u32, bool),
}

/// A compiled, linked guest with its stdio open, ready to start.
///
/// Made by [`WasmEngine::prepare`](crate::WasmEngine::prepare). Dropping it
/// without starting closes its stdio; nothing ran.
pub struct Workload {
    pub(crate) engine: Engine,
    /// Short name for threads and logs (the entrypoint's file stem).
    pub(crate) name: String,
    pub(crate) guest: Guest,
    /// Memory limit (or the engine's default cap) and pool share.
    pub(crate) limits: GuestLimits,
    pub(crate) network: NetworkNamespace,
    pub(crate) stdin: GuestStdin,
    /// Read by a thread into `stdin` once started; `None` for a null stdin.
    pub(crate) stdin_file: Option<File>,
    /// A second handle on the guest's stderr, for the host's own messages
    /// (traps) after the guest's handles are closed.
    pub(crate) stderr: Option<File>,
    /// Second handles on stdout/stderr FIFOs, to see the client read them
    /// before the exit is reported.
    pub(crate) output_fifos: Vec<File>,
    /// Runs for each thread of the guest as it starts (see [`Workload::on_thread_start`]).
    pub(crate) on_thread_start: Option<ThreadStartHook>,
    /// What the kernel enforces on the guest's threads.
    pub(crate) confinement: Confinement,
}

impl Workload {
    /// Sets `hook` to be called with the Linux thread id of every thread
    /// that does this guest's work, as that thread starts: the guest's own
    /// thread and the helper threads its runtime starts for blocking I/O.
    /// E.g. to move those threads into the container's cgroup. Replaces an
    /// earlier hook.
    ///
    /// The hook runs on the guest's supervisor, an unconfined thread (the
    /// guest's own threads run with the container's credentials, Landlock
    /// and seccomp, see [`Confinement`]), one call at a time; the guest does
    /// not wait for it, so it may already run when the hook is called.
    pub fn on_thread_start(mut self, hook: impl Fn(i32) + Send + Sync + 'static) -> Workload {
        self.on_thread_start = Some(Arc::new(hook));
        self
    }

    /// Has an HTTP server guest record its requests, latencies and open
    /// connections into `metrics` (see [`WasmEngine::http_metrics`](crate::WasmEngine::http_metrics));
    /// a command guest ignores it. Its series appear once the server listens.
    pub fn with_http_metrics(mut self, metrics: HttpMetrics) -> Workload {
        if let Guest::Http(http) = &mut self.guest {
            http.metrics = Some(metrics);
        }
        self
    }

    /// The memory cap in bytes the guest runs under: its container's
    /// `linux.resources.memory.limit`, else the engine's default cap
    /// ([`WasmEngineBuilder::default_memory_limit`](crate::WasmEngineBuilder::default_memory_limit));
    /// `None` if neither applies. For an HTTP server, the cap of the sum
    /// over its requests in flight.
    pub fn memory_limit(&self) -> Option<u64> {
        self.limits.memory
    }

    /// Starts the guest on its own thread and returns at once. `on_exit` runs once,
    /// on the guest's unconfined supervisor thread, after the guest ended and
    /// its output was flushed.
    ///
    /// The guest's thread joins the container's network namespace, is
    /// confined (see [`Confinement`]) and only then instantiates the guest;
    /// if confining fails the guest never runs and exits with 134, the
    /// reason on its stderr.
    ///
    /// Costs three threads (the guest's, its supervisor and a stdin reader
    /// if there is a stdin);
    /// instantiation happens on the guest's thread, so its failures (e.g. an
    /// initial memory above the memory limit) come back as exit code 134 with
    /// the reason on the container's stderr, not as an error here.
    ///
    /// # Errors
    ///
    /// Fails only if a thread cannot be created; then `on_exit` is never called.
    pub fn start(
        self,
        on_exit: impl FnOnce(ExitStatus) + Send + 'static,
    ) -> Result<WorkloadHandle> {
        let Workload {
            engine,
            name,
            guest,
            limits,
            network,
            stdin,
            stdin_file,
            stderr,
            output_fifos,
            on_thread_start,
            confinement,
        } = self;
        let control = Arc::new(Control::new(stdin));
        // The in-memory key-value store counts into the same sum as the
        // stores' memories, against the same limit.
        let meter = MemoryMeter::new(control.memory.clone(), limits.memory);
        match &guest {
            Guest::Component { cloud, .. } => cloud.charge_to(meter),
            Guest::Http(http) => http.cloud().charge_to(meter),
            Guest::Spin(spin) => spin.handlers().charge_to(&meter),
            Guest::Module { .. } => {}
        }
        if let Some(file) = stdin_file {
            control
                .stdin
                .spawn_reader(file, &name)
                .context("cannot start a thread to read the container's stdin")?;
        }
        let thread_control = control.clone();
        // The guest's threads are confined and inherit that; the supervisor
        // is not, so it runs what the caller's hooks and `on_exit` do with
        // the shim's own rights.
        let spawned = std::thread::Builder::new()
            .name(format!("sup-{name}"))
            .spawn(move || {
                let (to_supervisor, from_guest) = mpsc::channel();
                let run = GuestRun {
                    engine,
                    guest,
                    limits,
                    network,
                    name: name.clone(),
                    stderr,
                    confinement,
                    supervisor: on_thread_start.is_some().then(|| to_supervisor.clone()),
                };
                let worker_control = thread_control.clone();
                let worker = std::thread::Builder::new()
                    .name(format!("wasm-{name}"))
                    .spawn(move || {
                        let tid = nix::unistd::gettid().as_raw();
                        worker_control.thread_id.store(tid, Ordering::SeqCst);
                        let _ = to_supervisor.send(FromGuest::Thread(tid));
                        let (code, oom_killed) = run_guest(run, &worker_control);
                        let _ = to_supervisor.send(FromGuest::Ended(code, oom_killed));
                    });
                let (code, oom_killed) = match worker {
                    Ok(_) => supervise(
                        &from_guest,
                        on_thread_start.as_deref(),
                        &thread_control,
                        &name,
                    ),
                    Err(e) => {
                        log::error!("cannot start a thread to run guest {name}: {e}");
                        (TRAP_EXIT_CODE, false)
                    }
                };
                thread_control.stdin.close();
                // The race `wait_until_read` closes is that of a guest that
                // ends by itself right after it started. A killed guest's
                // client is the one waiting for this exit, and a detached
                // one (`ctr run -d`, nobody reading) would add the whole
                // wait to every kill.
                if !thread_control.signalled() {
                    crate::stdio::wait_until_read(&output_fifos);
                }
                drop(output_fifos);
                let status = ExitStatus {
                    code,
                    exited_at: SystemTime::now(),
                    oom_killed,
                };
                // The caller's code: its panic must not take the process down.
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| on_exit(status))) {
                    log::error!(
                        "guest {name}: reporting its exit panicked (a bug in the shim, please report it): {}",
                        panic_message(panic.as_ref())
                    );
                }
            });
        if let Err(e) = spawned {
            control.stdin.close();
            return Err(e).context("cannot start a thread to run the guest");
        }
        Ok(WorkloadHandle { control })
    }
}

/// Runs `hook` for each thread the guest reports until it reports its end,
/// and returns its exit code and whether it ran out of memory.
///
/// A panicking hook (e.g. a thread that could not be placed in its cgroup)
/// would leave the task Running forever: instead the guest is killed and
/// exits 134, and the panic is logged.
fn supervise(
    from_guest: &mpsc::Receiver<FromGuest>,
    hook: Option<&(dyn Fn(i32) + Send + Sync)>,
    control: &Control,
    name: &str,
) -> (u32, bool) {
    let mut hook_failed = false;
    loop {
        match from_guest.recv() {
            Ok(FromGuest::Thread(tid)) => {
                let Some(hook) = hook else { continue };
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| hook(tid))) {
                    log::error!(
                        "guest {name}: setting up its thread {tid} panicked (a bug in the shim, please report it), so the guest is ended: {}",
                        panic_message(panic.as_ref())
                    );
                    hook_failed = true;
                    control.deliver(nix::sys::signal::Signal::SIGKILL as i32);
                }
            }
            Ok(FromGuest::Ended(_, _)) if hook_failed => return (TRAP_EXIT_CODE, false),
            Ok(FromGuest::Ended(code, oom_killed)) => return (code, oom_killed),
            // The guest's thread died without a word (cannot happen: it
            // catches panics); report it like a trap.
            Err(_) => return (TRAP_EXIT_CODE, false),
        }
    }
}

/// Controls a started guest. Cheap to clone; outlives the guest harmlessly.
#[derive(Clone)]
pub struct WorkloadHandle {
    control: Arc<Control>,
}

impl WorkloadHandle {
    /// Delivers `signal`: SIGKILL, SIGTERM, SIGINT (and other terminating signals)
    /// end the guest promptly with 128+signal, even inside a tight loop; signal 0
    /// and ignored-by-default signals (SIGCHLD, SIGWINCH, SIGURG, SIGCONT) do
    /// nothing.
    ///
    /// The guest ends within one epoch tick (about 10 ms) when it is running
    /// wasm code, and at once when it waits in a WASI call: writing to a
    /// stdout nobody reads, reading stdin, sleeping, on a socket, or in a
    /// file operation on a helper thread (which is interrupted, see
    /// [`interrupt_signal`](crate::interrupt_signal)).
    /// Only the first terminating signal counts, except that SIGKILL replaces
    /// an earlier one; after the guest ended, signals do nothing. Does not
    /// wait for the guest to end: `on_exit` tells.
    ///
    /// An HTTP server guest treats SIGTERM and SIGINT gracefully: it stops
    /// accepting connections, finishes the requests in flight, and exits 0;
    /// a SIGKILL meanwhile ends it at once with 137.
    ///
    /// # Errors
    ///
    /// Fails for stop signals (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU), which a
    /// guest cannot honour, and for numbers outside 0..=64.
    pub fn kill(&self, signal: i32) -> Result<()> {
        if signal::action(signal)? != SignalAction::Terminate {
            return Ok(());
        }
        self.control.deliver(signal);
        Ok(())
    }

    /// Closes the guest's stdin, as containerd's CloseIO asks once the
    /// client has written all its input: the guest reads what the client
    /// wrote, then end of file, also in a read already waiting. Idempotent.
    pub fn close_stdin(&self) {
        self.control.stdin.finish();
    }

    /// Bytes the guest holds now under its memory limit: all its linear
    /// memories and table elements together (for an HTTP server, summed over
    /// its requests in flight). A relaxed atomic read; stays at its last
    /// value after the guest ended.
    pub fn memory_bytes(&self) -> u64 {
        self.control.memory.load(Ordering::Relaxed)
    }

    /// Linux thread id of the thread running the guest (for cgroup placement
    /// and CPU accounting), `None` until that thread has started. Stays set
    /// after the guest ended; the id may then be reused by another thread.
    pub fn thread_id(&self) -> Option<i32> {
        Some(self.control.thread_id.load(Ordering::SeqCst)).filter(|&tid| tid > 0)
    }
}

/// What the guest's thread needs to run it.
struct GuestRun {
    engine: Engine,
    guest: Guest,
    limits: GuestLimits,
    network: NetworkNamespace,
    name: String,
    stderr: Option<File>,
    confinement: Confinement,
    /// Where the threads the guest's runtime starts report, if anyone wants
    /// to know.
    supervisor: Option<mpsc::Sender<FromGuest>>,
}

/// Runs the guest to its end and returns its exit code and whether it ran
/// out of memory. Never panics: a panic in wasmtime or a host function
/// becomes exit code 134.
fn run_guest(run: GuestRun, control: &Control) -> (u32, bool) {
    let GuestRun {
        engine,
        guest,
        limits,
        network,
        name,
        mut stderr,
        confinement,
        supervisor,
    } = run;
    // The namespace first: joining it is one of the calls the confinement
    // forbids afterwards.
    let ended = catch_unwind(AssertUnwindSafe(|| {
        match crate::netns::enter(&network).and_then(|()| {
            confinement
                .apply_to_current_thread()
                .map_err(|e| format!("cannot confine the guest, so it does not run: {e:#}"))
        }) {
            Ok(_) => run_on_runtime(&name, &engine, guest, limits, control, supervisor),
            Err(message) => Ended::Failed(message),
        }
    }));
    let mut message = match ended {
        Ok(Ended::Returned(code)) => return (code, false),
        Ok(Ended::Killed(signal)) => return (128 + signal.unsigned_abs(), false),
        Ok(Ended::Failed(message)) => message,
        Err(panic) => format!(
            "wasm host panic (a bug in the shim, please report it): {}",
            panic_message(panic.as_ref())
        ),
    };
    let oom_killed = control.limit_hit.load(Ordering::Relaxed);
    if oom_killed {
        message = format!(
            "out of memory: the guest failed after its memory limit of {} bytes refused it more\n{message}",
            limits.memory.unwrap_or_default()
        );
    }
    log::error!("guest {name} failed: {message}");
    if let Some(stderr) = stderr.as_mut() {
        // Best effort: the reader may be gone, and the exit code says it anyway.
        let _ = writeln!(stderr, "{message}");
    }
    if oom_killed {
        (OOM_EXIT_CODE, true)
    } else {
        (TRAP_EXIT_CODE, false)
    }
}

/// What a caught panic says.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

fn run_on_runtime(
    name: &str,
    engine: &Engine,
    guest: Guest,
    limits: GuestLimits,
    control: &Control,
    supervisor: Option<mpsc::Sender<FromGuest>>,
) -> Ended {
    // Threads for blocking I/O are started from the guest's thread, so
    // they share its network namespace and confinement.
    let hook = supervisor.map(|supervisor| {
        move || {
            let _ = supervisor.send(FromGuest::Thread(nix::unistd::gettid().as_raw()));
        }
    });
    let (rt, helpers) = match crate::interrupt::guest_runtime(hook) {
        Ok(built) => built,
        Err(e) => return Ended::Failed(format!("cannot start the guest's runtime: {e}")),
    };
    let limiter = || {
        let mut limiter =
            GuestLimiter::new(limits, control.memory.clone(), control.limit_hit.clone());
        if limiter.reserve_store() {
            Ok(limiter)
        } else {
            Err(Ended::Failed(format!(
                "the container's memory limit ({} bytes) is smaller than what the guest's store holds before it runs ({} bytes: its {} MiB stack and its instances' state): raise the limit",
                limits.memory.unwrap_or(0),
                limits.store_bytes(),
                crate::limits::STACK_BYTES >> 20
            )))
        }
    };
    let ended = match guest {
        Guest::Module { pre, wasi, entry } => {
            let limiter = match limiter() {
                Ok(limiter) => limiter,
                Err(ended) => return ended,
            };
            let mut store = Store::new(engine, ModuleState { wasi, limiter });
            store.limiter(|s| &mut s.limiter);
            yield_on_epoch(&mut store);
            rt.block_on(race(run_module(&mut store, &pre, &entry), control))
        }
        Guest::Component {
            pre,
            wasi,
            entry,
            cloud,
        } => {
            let limiter = match limiter() {
                Ok(limiter) => limiter,
                Err(ended) => return ended,
            };
            let state = ComponentState {
                wasi,
                table: ResourceTable::new(),
                cloud: cloud.host(),
                limiter,
            };
            let mut store = Store::new(engine, state);
            store.limiter(|s| &mut s.limiter);
            yield_on_epoch(&mut store);
            rt.block_on(race(run_component(&mut store, &pre, &entry), control))
        }
        Guest::Http(guest) => rt.block_on(crate::http::serve(engine, *guest, limits, control)),
        Guest::Spin(guest) => rt.block_on(crate::http::serve(engine, *guest, limits, control)),
    };
    // The store (and with it the guest's stdout/stderr) is dropped by now.
    // Blocking WASI work still in flight must not hold up the exit, nor
    // keep its thread (see interrupt.rs).
    rt.shutdown_background();
    helpers.interrupt(name);
    ended
}

/// Runs `guest` until it ends or a terminating signal arrives, whichever is first.
async fn race(guest: impl Future<Output = wasmtime::Result<u32>>, control: &Control) -> Ended {
    tokio::select! {
        biased;
        signal = control.killed() => Ended::Killed(signal),
        result = guest => match result {
            Ok(code) => Ended::Returned(code),
            Err(e) => ended_by(e),
        },
    }
}

async fn run_module(
    store: &mut Store<ModuleState>,
    pre: &InstancePre<ModuleState>,
    entry: &ModuleEntry,
) -> wasmtime::Result<u32> {
    let instance = pre.instantiate_async(&mut *store).await?;
    if entry.initialize {
        let init = instance.get_typed_func::<(), ()>(&mut *store, "_initialize")?;
        init.call_async(&mut *store, ()).await?;
    }
    let func = instance
        .get_func(&mut *store, &entry.export)
        .ok_or_else(|| wasmtime::format_err!("export '{}' is missing", entry.export))?;
    // Placeholders only: the call overwrites them, results are not used.
    let mut results: Vec<Val> = func
        .ty(&*store)
        .results()
        .map(|ty| Val::default_for_ty(&ty).unwrap_or(Val::I32(0)))
        .collect();
    func.call_async(&mut *store, &[], &mut results).await?;
    Ok(0)
}

async fn run_component(
    store: &mut Store<ComponentState>,
    pre: &component::InstancePre<ComponentState>,
    entry: &ComponentExportIndex,
) -> wasmtime::Result<u32> {
    let instance = pre.instantiate_async(&mut *store).await?;
    let func = instance
        .get_func(&mut *store, entry)
        .ok_or_else(|| wasmtime::format_err!("the entrypoint export is missing"))?;
    let mut results = vec![component::Val::Bool(false); func.ty(&*store).results().len()];
    func.call_async(&mut *store, &[], &mut results).await?;
    // `wasi:cli/run.run` returns `result`; its error case means exit code 1.
    Ok(match results.as_slice() {
        [component::Val::Result(Err(_))] => 1,
        _ => 0,
    })
}
