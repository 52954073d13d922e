//! A container's `config.json` (written by whoever creates the container)
//! into the engine's typed bundle and workload spec, an HTTP guest's
//! settings from its environment, and the shim's cgroup path.
#![no_main]

use std::path::{Component, Path};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use wasishim_engine::fuzzing::{config_json, BUNDLE_DIR};
use wasishim_shim::fuzzing::cgroups_path;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = config_json(data) else {
        return;
    };
    let bundle = &parsed.bundle;
    assert!(bundle.cwd.starts_with('/'), "cwd {:?}", bundle.cwd);
    for m in &bundle.mounts {
        assert!(m.destination.starts_with('/'), "{m:?}");
    }
    assert!(bundle.resources.memory_limit.is_none_or(|l| l > 0));
    if let Ok(spec) = &parsed.workload {
        assert!(
            spec.entrypoint.path.starts_with('/'),
            "{:?}",
            spec.entrypoint
        );
        assert_ne!(spec.entrypoint.export.as_deref(), Some(""));
        assert_eq!(spec.args.len(), bundle.args.len());
        // argv[0] is the file, without the "#export" the entrypoint names.
        assert!(bundle.args[0].starts_with(spec.args[0].as_str()));
    }
    if let Ok(timeouts) = &parsed.http_timeouts {
        // The HTTP server adds each to the current time (hyper does for
        // the header timeout): a value that overflows would panic there.
        for t in timeouts {
            assert!(Instant::now().checked_add(*t).is_some(), "timeout {t:?}");
        }
    }
    if let Some(path) = &bundle.cgroups_path {
        if let Ok(relative) = cgroups_path(path) {
            // Joined under each hierarchy's root: it must stay below it and
            // must not be the root itself.
            assert!(relative.is_relative(), "{path:?} -> {relative:?}");
            assert!(
                relative
                    .components()
                    .any(|c| matches!(c, Component::Normal(_))),
                "{path:?} -> {relative:?} names the root cgroup"
            );
            assert!(
                !relative
                    .components()
                    .any(|c| matches!(c, Component::ParentDir)),
                "{path:?} -> {relative:?}"
            );
        }
    }
    assert!(bundle.dir == Path::new(BUNDLE_DIR));
});
