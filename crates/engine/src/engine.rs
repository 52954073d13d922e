//! The one `wasmtime::Engine` of a shim process, and preparing guests with it.
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use wasmtime::component;
use wasmtime::{Config, Engine, Linker};

use crate::compile::{self, Code};
use crate::rootfs::{self, ResolveError};
use crate::run::{ComponentState, Guest, ModuleState};
use crate::stdio::GuestStdin;
use crate::{wasi, Stdio, Workload, WorkloadSpec};

/// How often the epoch advances: the time slice after which a running guest
/// yields, and so how late a kill can take effect.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// One per process, shared by all containers (cheap to clone).
///
/// Holds the `wasmtime::Engine` (compiler settings and code memory) and a
/// thread that advances its epoch every 10 ms, which lets every guest be
/// interrupted. The thread ends once the last clone is dropped.
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
}

impl WasmEngine {
    /// Creates the engine: epoch interruption on, component model on, the
    /// default wasm features. Guests run with wasmtime's async support, which
    /// needs no engine setting since wasmtime 48.
    ///
    /// Costs one thread. Create one per process and clone it.
    ///
    /// # Errors
    ///
    /// Fails if wasmtime rejects its configuration for this host, or the
    /// epoch thread cannot be started.
    pub fn new() -> Result<WasmEngine> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine =
            Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot set up wasmtime: {e:#}"))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".to_string())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            })
            .context("cannot start the wasm epoch thread")?;
        Ok(WasmEngine { engine })
    }

    /// Resolves the entrypoint, compiles and links the guest and opens its stdio.
    /// Blocking (compilation). Errors are meant for the user.
    ///
    /// In order, this:
    /// 1. resolves the entrypoint inside the rootfs, following symlinks as a
    ///    chroot would and refusing any path that leaves the rootfs;
    /// 2. compiles it as a module or component (decided by its header; WAT
    ///    text is accepted too);
    /// 3. checks that the export to call exists (`_start`, `wasi:cli/run`, or
    ///    the `#name` of the entrypoint) and links it against WASI (preview 1
    ///    for modules, 0.2 for components), so unknown imports fail here;
    /// 4. opens stdio and the preopened directories.
    ///
    /// Costs a full compilation of the guest (no cache yet): from milliseconds
    /// to seconds for large guests.
    ///
    /// # Errors
    ///
    /// Each step's failure names the entrypoint and the problem, e.g.
    /// "entrypoint /app.wasm not found in the image's rootfs", "entrypoint
    /// /app.wasm is not a WebAssembly module or component (found an ELF
    /// executable)", "entrypoint /app.wasm has no export named 'foo'
    /// (exports: _start)", or "cannot open the container's stdout ...".
    pub fn prepare(&self, spec: WorkloadSpec, stdio: Stdio) -> Result<Workload> {
        let shown = spec.entrypoint.path.as_str();
        let export = spec.entrypoint.export.as_deref();
        let bytes = read_entrypoint(&spec.rootfs, shown)?;
        let code = compile::compile(&self.engine, &bytes, shown)?;
        drop(bytes);

        enum Linked {
            Module(wasmtime::InstancePre<ModuleState>, compile::ModuleEntry),
            Component(
                component::InstancePre<ComponentState>,
                component::ComponentExportIndex,
            ),
        }
        let linked = match code {
            Code::Module(module) => {
                let entry = compile::module_entry(&module, shown, export)?;
                let mut linker = Linker::new(&self.engine);
                wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut ModuleState| {
                    &mut s.wasi
                })
                .map_err(|e| anyhow::anyhow!("cannot set up WASI preview 1: {e:#}"))?;
                let pre = linker
                    .instantiate_pre(&module)
                    .map_err(|e| link_error(shown, "WASI preview 1 (wasi_snapshot_preview1)", e))?;
                Linked::Module(pre, entry)
            }
            Code::Component(c) => {
                let entry = compile::component_entry(&self.engine, &c, shown, export)?;
                let mut linker = component::Linker::new(&self.engine);
                wasmtime_wasi::p2::add_to_linker_async(&mut linker)
                    .map_err(|e| anyhow::anyhow!("cannot set up WASI 0.2: {e:#}"))?;
                let pre = linker
                    .instantiate_pre(&c)
                    .map_err(|e| link_error(shown, "WASI 0.2 (wasi:cli/command)", e))?;
                Linked::Component(pre, entry)
            }
        };

        let opened = stdio.open()?;
        let stderr = opened
            .stderr
            .as_ref()
            .map(File::try_clone)
            .transpose()
            .context("cannot duplicate the container's stderr handle")?;
        let stdin = GuestStdin::new();
        let guest_stdin = opened.stdin.as_ref().map(|_| stdin.clone());
        let mut ctx = wasi::context(&spec, guest_stdin, opened.stdout, opened.stderr)?;
        let guest = match linked {
            Linked::Module(pre, entry) => Guest::Module {
                pre,
                wasi: ctx.build_p1(),
                entry,
            },
            Linked::Component(pre, entry) => Guest::Component {
                pre,
                wasi: ctx.build(),
                entry,
            },
        };
        Ok(Workload {
            engine: self.engine.clone(),
            name: short_name(shown),
            guest,
            memory_limit: spec.memory_limit,
            stdin,
            stdin_file: opened.stdin,
            stderr,
        })
    }
}

fn link_error(shown: &str, provided: &str, e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "entrypoint {shown} cannot be linked: {e:#} (io.containerd.wasmtime.v1 provides {provided} only)"
    )
}

/// Finds the entrypoint in the rootfs and reads it, without following any
/// link out of the rootfs.
fn read_entrypoint(rootfs: &Path, shown: &str) -> Result<Vec<u8>> {
    if !rootfs.is_dir() {
        bail!(
            "the container's rootfs {} is not a directory: is the image's snapshot mounted?",
            rootfs.display()
        );
    }
    let host: PathBuf = match rootfs::resolve(rootfs, shown) {
        Ok(host) => host,
        Err(ResolveError::NotFound) => bail!("entrypoint {shown} not found in the image's rootfs"),
        Err(ResolveError::Escapes { link: None }) => bail!(
            "entrypoint {shown} leaves the image's rootfs through '..': use a path inside the image"
        ),
        Err(ResolveError::Escapes {
            link: Some((link, target)),
        }) => bail!(
            "entrypoint {shown} leaves the image's rootfs: symlink {link} points to {}, outside of it",
            target.display()
        ),
        Err(ResolveError::TooManySymlinks) => {
            bail!("entrypoint {shown} has too many levels of symlinks (a loop?)")
        }
        Err(ResolveError::Io(e)) => {
            return Err(e)
                .with_context(|| format!("cannot look up entrypoint {shown} in the image's rootfs"))
        }
    };
    // O_NOFOLLOW: the resolved path has no symlinks; refuse one appearing now.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(&host)
        .with_context(|| format!("cannot open entrypoint {shown}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read entrypoint {shown}"))?;
    if meta.is_dir() {
        bail!("entrypoint {shown} is a directory, not a WebAssembly file");
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .with_context(|| format!("cannot read entrypoint {shown}"))?;
    Ok(bytes)
}

/// The entrypoint's file stem, for thread names (Linux keeps 15 bytes).
fn short_name(shown: &str) -> String {
    let stem = Path::new(shown)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("guest");
    stem.chars().take(10).collect()
}
