//! Case 9: start of a mixed pod through CRI (issue 16): a pod with a Wasm
//! container and a native sidecar under the wasmtime handler (the sidecar
//! runs under runc inside the shim), against the same two containers under
//! runc alone (a pod of the runc handler: pause sandbox, the native
//! counterpart of the Wasm container, the same sidecar), in the same run,
//! the two alternating. Timed as kubelet starts a pod: `RunPodSandbox`,
//! then `CreateContainer` and `StartContainer` of each container, until the
//! last start returns; the pod's removal is not timed.

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use wasishim_e2e::cri::{self, Client};
use wasishim_e2e::{Image, PrivateContainerd};

use crate::report::{median, ms, quantile, Row};
use crate::Config;

/// The runc runtime handler of the CRI configuration.
const RUNC_HANDLER: &str = "runc";

pub fn mixed_pod(
    version: &str,
    cfg: &Config,
    native_dir: &Path,
    wasm_sleep: &[u8],
) -> Result<Vec<Row>> {
    println!(
        "== 9. mixed pod start through CRI: Wasm + native sidecar (wasmtime) vs two native containers (runc), {} runs after {} warm-up",
        cfg.runs, cfg.warmup
    );
    // Its own instance: CRI, and nothing of the other cases' containers.
    let cd = PrivateContainerd::start_with_cri(version)?;
    let cri = Client::connect(&cd)?;
    let pause = fs::read(native_dir.join("pause")).context("reading the native pause")?;
    // A real pause for runc's sandboxes (the wasmtime handler never runs it).
    cri::import(
        &cd,
        &Image::new(cri::PAUSE_IMAGE)
            .file("/pause", pause.clone(), 0o755)
            .entrypoint(["/pause"]),
    )?;
    let native = cri::import(
        &cd,
        &Image::new("docker.io/library/wasishim-bench-native-pause:latest")
            .file("/pause", pause, 0o755)
            .entrypoint(["/pause"]),
    )?;
    let wasm = cri::import(
        &cd,
        &Image::new("docker.io/library/wasishim-bench-sleep:latest").wasm(wasm_sleep.to_vec()),
    )?;
    let mut mixed = Vec::new();
    let mut runc = Vec::new();
    for i in 0..cfg.warmup + cfg.runs {
        for handler in [cri::HANDLER, RUNC_HANDLER] {
            let name = format!("c9-{handler}-{i}");
            let mut app = if handler == RUNC_HANDLER {
                cri.container_config("app", &native)
            } else {
                cri.container_config("app", &wasm)
            };
            if handler != RUNC_HANDLER {
                app.command = vec!["/app.wasm".into(), "3600".into()];
            }
            let sidecar = cri.container_config("sidecar", &native);
            let started = Instant::now();
            let pod = cri.run_pod_with_handler(cri.pod_config(&name), handler)?;
            cri.run_container(&pod, app)?;
            cri.run_container(&pod, sidecar)?;
            let took = ms(started.elapsed());
            cri.remove_pod(&pod.id)?;
            if i >= cfg.warmup {
                if handler == RUNC_HANDLER {
                    runc.push(took);
                } else {
                    mixed.push(took);
                }
            }
        }
    }
    println!(
        "   wasmtime (Wasm + native): median {:.1} ms p90 {:.1} ms; runc (two native): median {:.1} ms p90 {:.1} ms",
        median(&mixed),
        quantile(&mixed, 0.9),
        median(&runc),
        quantile(&runc, 0.9)
    );
    drop(cri);
    drop(cd);
    Ok(vec![Row::new(
        "9 mixed pod",
        "CRI pod start (sandbox + Wasm container + native sidecar), per-pod (median)",
        median(&mixed),
        "ms",
    )
    .baseline(
        "runc: pause sandbox + two native containers",
        median(&runc),
    )])
}
