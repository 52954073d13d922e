//! The floor of a wasi:http request under bare wasmtime: what one `GET /`
//! costs with the engine settings the shims use (pool, epochs, copy-on-write
//! images) when there is no socket, no HTTP parsing and no shim around it:
//! a store with an empty WASI context, a fresh instance, `handle`, reading
//! the response body, dropping the store. `make bench` case 7 runs it next
//! to the shims.
//!
//! usage: http_floor COMPONENT.wasm [REQUESTS]
//! prints: `us_per_request <total> store <a> instantiate <b> handle <c> drop <d>`
use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use wasishim_engine::WasmEngine;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Requests before the measured ones: the pool's slots and the allocator warm up.
const WARM_UP: usize = 1000;

struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("http_floor: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        bail!("usage: http_floor COMPONENT.wasm [REQUESTS]");
    };
    let requests: usize = match args.get(2) {
        Some(n) => n.parse().context("REQUESTS is not a number")?,
        None => 20_000,
    };
    let engine = WasmEngine::builder()
        .cache_dir(None)
        .pool_capacity(100)
        .build()?;
    let engine = engine.wasmtime().clone();
    let component = Component::from_file(&engine, path)
        .map_err(|e| anyhow::anyhow!("compiling {path}: {e:#}"))?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut phases = [Duration::ZERO; 4];
    runtime.block_on(async {
        for i in 0..WARM_UP + requests {
            let started = Instant::now();
            let mut store = Store::new(
                &engine,
                State {
                    wasi: WasiCtx::builder().build(),
                    http: WasiHttpCtx::new(),
                    table: ResourceTable::new(),
                },
            );
            store.set_epoch_deadline(u64::MAX / 2);
            let request = hyper::Request::builder()
                .uri("http://localhost/")
                .body(Empty::<Bytes>::new().map_err(
                    |never: Infallible| -> wasmtime_wasi_http::Error { match never {} },
                ))?;
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let incoming = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, request)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            let stored = Instant::now();
            let proxy = pre.instantiate_async(&mut store).await?;
            let instantiated = Instant::now();
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, out)
                .await?;
            let body = receiver.await??.into_body().collect().await?.to_bytes();
            let handled = Instant::now();
            drop(store);
            let dropped = Instant::now();
            if body.is_empty() {
                bail!("the component answered GET / with an empty body");
            }
            if i >= WARM_UP {
                phases[0] += stored - started;
                phases[1] += instantiated - stored;
                phases[2] += handled - instantiated;
                phases[3] += dropped - handled;
            }
        }
        Ok(())
    })?;
    let us = |d: Duration| d.as_secs_f64() * 1e6 / requests as f64;
    println!(
        "us_per_request {:.2} store {:.2} instantiate {:.2} handle {:.2} drop {:.2}",
        us(phases.iter().sum()),
        us(phases[0]),
        us(phases[1]),
        us(phases[2]),
        us(phases[3])
    );
    Ok(())
}
