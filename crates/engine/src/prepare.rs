//! Preparing a guest once its code is found: compile (or take from the
//! cache), link, WASI context and stdio, giving a [`Workload`] ready to
//! start. [`WasmEngine`](crate::WasmEngine) is its public face.
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use wasmtime::component;
use wasmtime::Engine;

use crate::cache::{CodeCache, Compiled};
use crate::cache_key::FileIdentity;
use crate::cloud::{Cloud, CloudHost};
use crate::compile::{self, Code, ComponentEntry};
use crate::http::{HttpGuest, Single};
use crate::http_settings::HttpSettings;
use crate::http_state::{HttpState, Outgoing};
use crate::instance_state::InstanceState;
use crate::limits::GuestLimits;
use crate::link::{self, Linked};
use crate::pool::PoolShare;
use crate::run::{ComponentState, Guest, ModuleState, Workload};
use crate::source::EntrypointFile;
use crate::spin::SpinApp;
use crate::stdio::{GuestStdin, Stdio};
use crate::wasi;
use crate::worker::MAX_MODULE_BYTES_ENV;
use crate::WorkloadSpec;

/// Where a guest's bytes came from, which keys them in the code cache.
pub(crate) enum CodeOrigin<'a> {
    /// An image layer whose OCI digest (`sha256:<hex>`) was checked against
    /// the bytes.
    Layer { digest: &'a str },
    /// The entrypoint file `identity`, read after `read_at`.
    File {
        identity: FileIdentity,
        read_at: std::time::SystemTime,
    },
}

/// Prepares the guest whose entrypoint `file` was found in the rootfs.
/// Reads and hashes the file unless it was seen before and is unchanged.
pub(crate) fn prepare_file(
    engine: &Engine,
    cache: &CodeCache,
    share: PoolShare,
    spec: WorkloadSpec,
    entrypoint: EntrypointFile,
    stdio: Stdio,
) -> Result<Workload> {
    let EntrypointFile {
        mut file,
        identity,
        shown,
        opened_at,
    } = entrypoint;
    if crate::spin::is_manifest(&shown) {
        let app = crate::spin::load(engine, cache, share, &spec, file, &shown)?;
        let instance_state = app.instance_state;
        return finish(
            engine,
            share,
            instance_state,
            spec,
            Ready::Spin(app),
            &shown,
            stdio,
        );
    }
    // A file seen before: no need to read and hash it again.
    if let Some(compiled) = cache.get_known_file(&identity) {
        return prepare_compiled(engine, share, spec, compiled, &shown, stdio);
    }
    let bytes = read_entrypoint(cache, &mut file, &identity, &shown)?;
    drop(file);
    let origin = CodeOrigin::File {
        identity,
        read_at: opened_at,
    };
    prepare_code(engine, cache, share, spec, &bytes, origin, &shown, stdio)
}

/// The bytes of the entrypoint `file`, refused unread when larger than the
/// engine compiles.
fn read_entrypoint(
    cache: &CodeCache,
    file: &mut std::fs::File,
    identity: &FileIdentity,
    shown: &str,
) -> Result<Vec<u8>> {
    let max = cache.limits().max_module_bytes;
    check_size(identity.size(), max, shown)?;
    let mut bytes = Vec::with_capacity(usize::try_from(identity.size()).unwrap_or(0));
    // One byte more than allowed: a file that grew since is refused too.
    file.by_ref()
        .take(
            max.min(crate::rootfs::MAX_ENTRYPOINT_BYTES)
                .saturating_add(1),
        )
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read entrypoint {shown}"))?;
    Ok(bytes)
}

/// Compiles the guest in the rootfs file `entrypoint` into the cache (memory
/// and disk) without preparing a container, so that a later prepare of the
/// same bytes finds it compiled. `tenant` takes the compile slot's turn.
pub(crate) fn precompile_file(
    engine: &Engine,
    cache: &CodeCache,
    entrypoint: EntrypointFile,
    tenant: &str,
) -> Result<()> {
    let EntrypointFile {
        mut file,
        identity,
        shown,
        opened_at,
    } = entrypoint;
    if crate::spin::is_manifest(&shown) {
        anyhow::bail!(
            "entrypoint {shown} is a Spin manifest: a Spin app's components are compiled when its container is created, not before"
        );
    }
    if cache.get_known_file(&identity).is_some() {
        return Ok(());
    }
    let bytes = read_entrypoint(cache, &mut file, &identity, &shown)?;
    drop(file);
    check_size(bytes.len() as u64, cache.limits().max_module_bytes, &shown)?;
    compile::check_source(&bytes, &shown)?;
    cache.get_file(engine, identity, opened_at, &bytes, &shown, tenant)?;
    Ok(())
}

/// Compiles the wasm `bytes` of the image layer `digest` into the cache, as
/// [`precompile_file`] does for a file.
pub(crate) fn precompile_layer(
    engine: &Engine,
    cache: &CodeCache,
    bytes: &[u8],
    digest: &str,
    shown: &str,
    tenant: &str,
) -> Result<()> {
    check_size(bytes.len() as u64, cache.limits().max_module_bytes, shown)?;
    compile::check_source(bytes, shown)?;
    cache.get_by_digest(engine, digest, bytes, shown, tenant)?;
    Ok(())
}

/// Prepares the Spin app of Spin's OCI artifact: its locked `app`, its
/// components' code in `layers`.
pub(crate) fn prepare_spin_locked(
    engine: &Engine,
    cache: &CodeCache,
    share: PoolShare,
    spec: WorkloadSpec,
    app: &crate::SpinLockedApp,
    layers: &[crate::WasmLayer],
    stdio: Stdio,
) -> Result<Workload> {
    let loaded = crate::spin::load_locked(engine, cache, share, &spec, app, layers)?;
    let instance_state = loaded.instance_state;
    finish(
        engine,
        share,
        instance_state,
        spec,
        Ready::Spin(loaded),
        "spin",
        stdio,
    )
}

/// A prepare once the guest's `bytes` are read, from `origin`, which
/// decides how the cache finds them again. `shown` names the code in errors.
#[allow(
    clippy::too_many_arguments,
    reason = "the engine's parts, the container's, and the code's: each passed on"
)]
pub(crate) fn prepare_code(
    engine: &Engine,
    cache: &CodeCache,
    share: PoolShare,
    spec: WorkloadSpec,
    bytes: &[u8],
    origin: CodeOrigin<'_>,
    shown: &str,
    stdio: Stdio,
) -> Result<Workload> {
    check_size(bytes.len() as u64, cache.limits().max_module_bytes, shown)?;
    compile::check_source(bytes, shown)?;
    let compiled = match origin {
        CodeOrigin::Layer { digest } => {
            cache.get_by_digest(engine, digest, bytes, shown, &spec.tenant)
        }
        CodeOrigin::File { identity, read_at } => {
            cache.get_file(engine, identity, read_at, bytes, shown, &spec.tenant)
        }
    }?;
    prepare_compiled(engine, share, spec, compiled, shown, stdio)
}

/// Refuses a guest of `size` bytes above `max`, before it is read.
fn check_size(size: u64, max: u64, shown: &str) -> Result<()> {
    if size > max {
        anyhow::bail!(
            "entrypoint {shown} is {size} bytes, more than the {max} bytes of WebAssembly this shim compiles ({MAX_MODULE_BYTES_ENV}): build a smaller module, or raise the limit in containerd's environment"
        );
    }
    Ok(())
}

/// The rest of a prepare once the guest's code is compiled: link (once
/// per guest), WASI context, stdio.
fn prepare_compiled(
    engine: &Engine,
    share: PoolShare,
    spec: WorkloadSpec,
    compiled: Arc<Compiled>,
    shown: &str,
    stdio: Stdio,
) -> Result<Workload> {
    let export = spec.entrypoint.export.as_deref();
    share.check(&compiled.code, shown)?;

    let ready = match &compiled.code {
        Code::Module(module) => {
            let entry = compile::module_entry(module, shown, export)?;
            let pre = match compiled.linked.get() {
                Some(Linked::Module(pre)) => pre.clone(),
                _ => {
                    let pre = link::link_module(engine, module, shown)?;
                    let _ = compiled.linked.set(Linked::Module(pre.clone()));
                    pre
                }
            };
            Ready::Module(pre, entry)
        }
        Code::Component(c) => match compile::component_entry(engine, c, shown, export)? {
            ComponentEntry::Call(entry) => {
                let pre = match compiled.linked.get() {
                    Some(Linked::Component(pre)) => pre.clone(),
                    _ => {
                        let pre = link::link_component(engine, c, shown)?;
                        let _ = compiled.linked.set(Linked::Component(pre.clone()));
                        pre
                    }
                };
                Ready::Component(pre, entry)
            }
            ComponentEntry::Http => {
                let pre = match compiled.linked.get() {
                    Some(Linked::Http(pre)) => pre.clone(),
                    _ => {
                        let pre = link::link_http(engine, c, shown)?;
                        let _ = compiled.linked.set(Linked::Http(pre.clone()));
                        pre
                    }
                };
                Ready::Http(pre)
            }
        },
    };
    let instance_state = compiled.instance_state;
    drop(compiled);
    finish(engine, share, instance_state, spec, ready, shown, stdio)
}

/// A guest linked and ready to be given its container's parts.
pub(crate) enum Ready {
    Module(wasmtime::InstancePre<ModuleState>, compile::ModuleEntry),
    Component(
        component::InstancePre<ComponentState>,
        component::ComponentExportIndex,
    ),
    Http(wasmtime_wasi_http::p2::bindings::ProxyPre<HttpState<CloudHost>>),
    /// A Spin application: its components, linked, and their routes.
    Spin(SpinApp),
}

/// The end of every prepare: opens stdio and preopens, makes the WASI
/// context and the [`Workload`].
pub(crate) fn finish(
    engine: &Engine,
    share: PoolShare,
    instance_state: InstanceState,
    spec: WorkloadSpec,
    ready: Ready,
    shown: &str,
    stdio: Stdio,
) -> Result<Workload> {
    let opened = stdio.open()?;
    let stderr = opened
        .stderr
        .as_ref()
        .map(crate::output::GuestOutput::host_handle)
        .transpose()
        .context("cannot duplicate the container's stderr handle")?;
    let output_fifos = crate::stdio::fifo_handles(&opened)
        .context("cannot duplicate the container's output handles")?;
    let stdin = GuestStdin::new();
    let guest_stdin = opened.stdin.as_ref().map(|_| stdin.clone());
    // Opens every preopen once now: a missing mount fails task creation,
    // and nothing is opened by path later.
    let template = wasi::WasiTemplate::new(&spec)?;
    let confinement = template.confinement(&spec);
    let guest = match ready {
        Ready::Module(pre, entry) => Guest::Module {
            pre,
            wasi: template
                .builder(guest_stdin, opened.stdout, opened.stderr)?
                .build_p1(),
            entry,
        },
        Ready::Component(pre, entry) => Guest::Component {
            cloud: Cloud::new(&spec, &template)?,
            pre,
            wasi: template
                .builder(guest_stdin, opened.stdout, opened.stderr)?
                .build(),
            entry,
        },
        Ready::Http(pre) => {
            let settings = HttpSettings::from_env(&spec.env)?;
            drop(template.builder(None, None, None)?);
            let outgoing = match settings.outgoing {
                true => Outgoing::All,
                false => Outgoing::Refused {
                    why: "WASISHIM_HTTP_OUTGOING=off",
                },
            };
            let cloud = Cloud::new(&spec, &template)?;
            Guest::Http(Box::new(HttpGuest::new(
                Single {
                    pre,
                    outgoing,
                    cloud,
                },
                template,
                settings,
                opened.stdout,
                opened.stderr,
            )))
        }
        Ready::Spin(app) => {
            let settings = crate::spin::settings(&spec.env)?;
            drop(template.builder(None, None, None)?);
            Guest::Spin(Box::new(HttpGuest::new(
                app,
                template,
                settings,
                opened.stdout,
                opened.stderr,
            )))
        }
    };
    Ok(Workload {
        engine: engine.clone(),
        name: short_name(shown),
        guest,
        limits: GuestLimits {
            memory: spec.memory_limit,
            share,
            instance_state,
        },
        network: spec.network.clone(),
        stdin,
        stdin_file: opened.stdin,
        stderr,
        output_fifos,
        on_thread_start: None,
        confinement,
    })
}

/// The entrypoint's file stem, for thread names (Linux keeps 15 bytes).
fn short_name(shown: &str) -> String {
    let stem = Path::new(shown)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("guest");
    stem.chars().take(10).collect()
}
