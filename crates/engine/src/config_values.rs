//! The values a plain component reads through `wasi:config/store`
//! (cloud.rs), gathered at create from the container's spec:
//!
//! - each file of the directory named by `WASISHIM_CONFIG_DIR` (a path in
//!   the container, e.g. a Kubernetes ConfigMap volume's mount path): the
//!   file's name is the key, its content the value (UTF-8). Names starting
//!   with `.` are skipped (a ConfigMap volume's `..data` and timestamped
//!   directories), and so are subdirectories; symlinks are followed inside
//!   the mount (a ConfigMap's keys are symlinks into `..data`), never out;
//! - each environment variable `WASI_CONFIG_<KEY>=<value>`: key `<KEY>` as
//!   written (case kept), which overrides a file of the same name.
//!
//! Bounded as a ConfigMap is: at most [`MAX_ENTRIES`] directory entries and
//! [`MAX_TOTAL_BYTES`] of values in all; a directory over either fails the
//! container's create, saying so. Read once: a later change of the files
//! is not seen by the container.
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, Context, Result};
use nix::libc;

use crate::rootfs::{self, ResolveError};
use crate::wasi::WasiTemplate;

/// Container environment variable: a directory whose files are config
/// values, e.g. `/config` where a ConfigMap is mounted.
pub const CONFIG_DIR_ENV: &str = "WASISHIM_CONFIG_DIR";
/// Prefix of the container environment variables that are config values.
pub const CONFIG_ENV_PREFIX: &str = "WASI_CONFIG_";
/// The most entries the config directory may hold (dot files included).
pub const MAX_ENTRIES: usize = 1024;
/// The most bytes of values, from the directory and the environment in
/// all: 1 MiB, as much as a Kubernetes ConfigMap holds.
pub const MAX_TOTAL_BYTES: usize = 1 << 20;

/// Reads the container's config values: the directory's files, then the
/// environment's `WASI_CONFIG_*` over them. An empty map if neither is set.
///
/// # Errors
///
/// `WASISHIM_CONFIG_DIR` is not an absolute path, does not exist in the
/// container, is not a directory or leaves it, holds more than the bounds,
/// or a file that cannot be read or is not UTF-8; each error names the path.
pub(crate) fn read(
    env: &[(String, String)],
    template: &WasiTemplate,
) -> Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    let mut total = 0usize;
    if let Some((_, dir)) = env.iter().rev().find(|(k, _)| k == CONFIG_DIR_ENV) {
        read_dir(dir.trim(), template, &mut values, &mut total)?;
    }
    for (name, value) in env {
        let Some(key) = name.strip_prefix(CONFIG_ENV_PREFIX) else {
            continue;
        };
        if key.is_empty() {
            continue;
        }
        if let Some(old) = values.insert(key.to_string(), value.clone()) {
            total -= old.len();
        }
        total += value.len();
    }
    if total > MAX_TOTAL_BYTES {
        bail!("the container's config values (the {CONFIG_DIR_ENV} files and {CONFIG_ENV_PREFIX}* variables) are {total} bytes, more than the {MAX_TOTAL_BYTES} wasishim reads: keep them under 1 MiB, as a ConfigMap is");
    }
    Ok(values)
}

fn read_dir(
    dir: &str,
    template: &WasiTemplate,
    values: &mut BTreeMap<String, String>,
    total: &mut usize,
) -> Result<()> {
    let what = format!("config directory {dir} ({CONFIG_DIR_ENV})");
    if !dir.starts_with('/') {
        bail!("{what} is not an absolute path: set {CONFIG_DIR_ENV} to where the config is mounted in the container, e.g. /config");
    }
    let Some((base, inner)) = template.locate(dir) else {
        bail!("{what} is not in the container");
    };
    let host = resolve(&base, &inner, &what)?;
    if !host.is_dir() {
        bail!("{what} is not a directory: mount the ConfigMap (or a directory of files) there");
    }
    let entries = std::fs::read_dir(&host).with_context(|| format!("cannot list {what}"))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {what}"))?;
        names.push(entry.file_name());
        if names.len() > MAX_ENTRIES {
            bail!("{what} has more than {MAX_ENTRIES} entries, more than wasishim reads: mount a directory of fewer config files");
        }
    }
    for name in names {
        let Some(name) = name.to_str() else {
            bail!("{what} has a file whose name is not UTF-8: config keys are text");
        };
        if name.starts_with('.') {
            continue;
        }
        let shown = format!("{dir}/{name}");
        let path = resolve(
            &base,
            &format!("{}/{name}", inner.trim_end_matches('/')),
            &shown,
        )?;
        let meta =
            std::fs::metadata(&path).with_context(|| format!("cannot read config file {shown}"))?;
        if meta.is_dir() {
            log::info!("config directory {dir}: skipping subdirectory {name}");
            continue;
        }
        if !meta.is_file() {
            bail!(
                "config file {shown} is {}, not a regular file",
                rootfs::file_kind(&meta)
            );
        }
        let left = MAX_TOTAL_BYTES - *total;
        if meta.len() > left as u64 {
            bail!("{what} holds more than {MAX_TOTAL_BYTES} bytes of config values (at {name}), more than wasishim reads: keep it under 1 MiB, as a ConfigMap is");
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("cannot open config file {shown}"))?;
        let mut bytes = Vec::new();
        // One byte more than allowed: a file that grew since is refused too.
        file.take(left as u64 + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read config file {shown}"))?;
        if bytes.len() > left {
            bail!("{what} holds more than {MAX_TOTAL_BYTES} bytes of config values (at {name}), more than wasishim reads: keep it under 1 MiB, as a ConfigMap is");
        }
        let Ok(value) = String::from_utf8(bytes) else {
            bail!("config file {shown} is not UTF-8 text: wasi:config values are strings");
        };
        *total += value.len();
        values.insert(name.to_string(), value);
    }
    Ok(())
}

/// `inner` resolved under `base` as in a chroot, for the error `shown`.
fn resolve(base: &std::path::Path, inner: &str, shown: &str) -> Result<std::path::PathBuf> {
    match rootfs::resolve(base, inner) {
        Ok(host) => Ok(host),
        Err(ResolveError::NotFound) => bail!("{shown} does not exist in the container"),
        Err(ResolveError::Escapes { .. }) => bail!("{shown} leads out of its mount"),
        Err(ResolveError::TooManySymlinks) => bail!("{shown} has a symlink loop"),
        Err(ResolveError::Io(e)) => Err(e).with_context(|| format!("cannot look up {shown}")),
    }
}
