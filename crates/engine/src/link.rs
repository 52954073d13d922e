//! Linking a compiled guest against what wasishim provides: WASI preview 1
//! for modules, WASI 0.2 with `wasi:config` and `wasi:keyvalue` (cloud.rs)
//! for components, and `wasi:http` too for an HTTP component. Linking depends only on the code, never on the container, so
//! its result is kept with the code in the cache ([`Linked`]) and shared by
//! every container of the guest.
use anyhow::Result;
use wasmtime::component;
use wasmtime::{Engine, InstancePre, Linker, Module};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::cloud::CloudHost;
use crate::http_state::HttpState;
use crate::run::{ComponentState, ModuleState};

/// A guest linked against WASI, kept with its compiled code so that later
/// prepares of the same guest skip linking.
#[derive(Clone)]
pub(crate) enum Linked {
    Module(InstancePre<ModuleState>),
    Component(component::InstancePre<ComponentState>),
    Http(ProxyPre<HttpState<CloudHost>>),
}

/// Links a module against WASI preview 1.
///
/// # Errors
///
/// Fails, naming the entrypoint `shown`, if an import is not provided.
pub(crate) fn link_module(
    engine: &Engine,
    module: &Module,
    shown: &str,
) -> Result<InstancePre<ModuleState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut ModuleState| &mut s.wasi)
        .map_err(|e| anyhow::anyhow!("cannot set up WASI preview 1: {e:#}"))?;
    linker
        .instantiate_pre(module)
        .map_err(|e| link_error(shown, "WASI preview 1 (wasi_snapshot_preview1)", e))
}

/// Links a component against WASI 0.2, like [`link_module`].
pub(crate) fn link_component(
    engine: &Engine,
    c: &component::Component,
    shown: &str,
) -> Result<component::InstancePre<ComponentState>> {
    let mut linker = component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| anyhow::anyhow!("cannot set up WASI 0.2: {e:#}"))?;
    crate::cloud::add_to_linker(&mut linker, |s: &mut ComponentState| &mut s.cloud)
        .map_err(|e| anyhow::anyhow!("cannot set up wasi:config and wasi:keyvalue: {e:#}"))?;
    linker.instantiate_pre(c).map_err(|e| {
        link_error(
            shown,
            "WASI 0.2 (wasi:cli/command), wasi:config/store and wasi:keyvalue",
            e,
        )
    })
}

/// Links `component` against WASI 0.2 and `wasi:http` and checks that it
/// exports `wasi:http/incoming-handler`. Each request then only
/// instantiates.
///
/// # Errors
///
/// Fails, naming the entrypoint `shown`, if an import is not provided or
/// the handler export does not have the expected type.
pub(crate) fn link_http(
    engine: &Engine,
    component: &component::Component,
    shown: &str,
) -> Result<ProxyPre<HttpState<CloudHost>>> {
    let mut linker = component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| anyhow::anyhow!("cannot set up WASI 0.2: {e:#}"))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(|e| anyhow::anyhow!("cannot set up wasi:http: {e:#}"))?;
    crate::cloud::add_to_linker(&mut linker, |s: &mut HttpState<CloudHost>| &mut s.host)
        .map_err(|e| anyhow::anyhow!("cannot set up wasi:config and wasi:keyvalue: {e:#}"))?;
    let pre = linker.instantiate_pre(component).map_err(|e| {
        link_error(
            shown,
            "WASI 0.2 (wasi:cli/command and wasi:http/proxy), wasi:config/store and wasi:keyvalue",
            e,
        )
    })?;
    ProxyPre::new(pre).map_err(|e| {
        anyhow::anyhow!("entrypoint {shown} cannot be served as wasi:http/incoming-handler: {e:#}")
    })
}

/// The error of an import wasishim does not provide, for the user.
fn link_error(shown: &str, provided: &str, e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "entrypoint {shown} cannot be linked: {e:#} (wasishim provides {provided} only)"
    )
}
