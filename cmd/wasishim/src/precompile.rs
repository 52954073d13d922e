//! `wasishim precompile IMAGE`: compiles an image's Wasm into the node's
//! compiled-code cache, so that the first container of it starts from the
//! cache (see `wasishim_shim::precompile` for where the code is found).
//!
//! The engine is built as the shims build theirs, from the same environment
//! (`WASISHIM_CACHE_DIR`, the compile limits): the cache key covers
//! everything that changes the code, and the instance pool does not, so it
//! is left out here. Compilation runs in this binary's compile worker.

use anyhow::{bail, Context, Result};
use wasishim_engine::{Precompiled, WasmEngine, THIS_EXECUTABLE};
use wasishim_shim::precompile::{precompile_image, ImageRef};

/// The compile slots' tenant of an on-demand precompile.
const TENANT: &str = "wasishim/precompile";

/// What to precompile, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub image: String,
    pub namespace: String,
    pub address: String,
}

/// Precompiles the image and prints what was compiled.
pub fn precompile(options: &Options) -> Result<()> {
    let engine = WasmEngine::builder()
        .pooling(false)
        .compile_worker(Some(THIS_EXECUTABLE.into()))
        .from_env()
        .and_then(|builder| builder.build())
        .context("cannot create the wasmtime engine")?;
    let Some(dir) = engine.cache_dir().map(|d| d.display().to_string()) else {
        bail!(
            "the compiled-code cache is off ({} is empty, or its directory is unusable): there is nowhere to precompile into",
            wasishim_engine::CACHE_DIR_ENV
        );
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let image = ImageRef {
        address: options.address.clone(),
        namespace: options.namespace.clone(),
        name: options.image.clone(),
    };
    let report = runtime
        .block_on(precompile_image(&engine, &image, TENANT))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (code, done) in report.code {
        match done {
            Precompiled::Compiled => println!("compiled {code} into {dir}"),
            Precompiled::AlreadyCached => println!("{code} is compiled already (in {dir})"),
        }
    }
    Ok(())
}
