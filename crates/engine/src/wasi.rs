//! The WASI context of a guest, from its spec: argv, env, preopens, stdio.
//!
//! WASI has no current directory. A guest sees `process.cwd` three ways:
//! `PWD` in its environment (unless the spec sets `PWD` itself), the
//! `wasi:cli/environment.initial-cwd` of components, and a preopen of that
//! directory at `.`, which is what wasi-libc uses for relative paths.
//!
//! Every preopened directory is opened once, when the container is created
//! (see [`crate::confine::view`]: a private `nodev` copy of its mount), and
//! every later WASI context (an HTTP guest's, per request) is built from
//! those open handles, never from a path: replacing a directory by a
//! symlink after Create changes nothing a guest sees.
//!
//! Sockets are granted as a runc container has them: TCP, UDP and name
//! lookup, in whatever network namespace the guest's thread is in (see
//! [`NetworkNamespace`](crate::NetworkNamespace)).
use std::os::fd::OwnedFd;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::confine::{view, Confinement};
use crate::output::GuestOutput;
use crate::rootfs::{self, ResolveError};
use crate::stdio::GuestStdin;
use crate::WorkloadSpec;

/// What every WASI context of one container is made from: argv, env, cwd
/// and the preopened directories, checked and resolved once. An HTTP guest
/// gets a fresh context per request from it ([`WasiTemplate::builder`]).
pub(crate) struct WasiTemplate {
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    preopens: Vec<Preopen>,
}

/// A host directory the guest sees at `guest`.
struct Preopen {
    /// The directory, opened at Create (see [`view::open_view`]).
    dir: Arc<OwnedFd>,
    guest: String,
    readonly: bool,
    /// What it is, for the error when it cannot be opened.
    what: String,
}

impl WasiTemplate {
    /// Opens the spec's preopens, once: the rootfs and every bind mount
    /// whose source is a directory (others are skipped), each as a detached
    /// `nodev,nosuid,noexec` copy (read-only as the spec says), and
    /// `process.cwd` inside the one that holds it. Costs a few system calls
    /// per directory.
    ///
    /// # Errors
    ///
    /// Fails if the rootfs or a bind mount source cannot be opened, or if
    /// `process.cwd` leaves the rootfs.
    pub(crate) fn new(spec: &WorkloadSpec) -> Result<WasiTemplate> {
        let mut env = spec.env.clone();
        if !spec.env.iter().any(|(k, _)| k == "PWD") {
            env.push(("PWD".to_string(), spec.cwd.clone()));
        }
        let rootfs_what = format!("the container's rootfs {}", spec.rootfs.display());
        let mut preopens = vec![Preopen {
            dir: open(&spec.rootfs, spec.readonly_rootfs, &rootfs_what)?,
            guest: "/".to_string(),
            readonly: spec.readonly_rootfs,
            what: rootfs_what,
        }];
        for m in &spec.mounts {
            let meta = std::fs::metadata(&m.source).with_context(|| {
                format!(
                    "cannot use bind mount {} -> {}: the source is not accessible",
                    m.source.display(),
                    m.destination
                )
            })?;
            if !meta.is_dir() {
                // WASI can only preopen directories; Kubernetes adds file mounts
                // (/etc/hosts, /etc/resolv.conf, ...) to every container, so
                // skipping them must not fail the container.
                log::info!(
                    "bind mount {} -> {} is not a directory; WASI guests only see directory mounts, skipping it",
                    m.source.display(),
                    m.destination
                );
                continue;
            }
            let what = format!("bind mount {} -> {}", m.source.display(), m.destination);
            preopens.push(Preopen {
                dir: open(&m.source, m.readonly, &what)?,
                guest: m.destination.clone(),
                readonly: m.readonly,
                what,
            });
        }
        if !spec.cwd.trim_matches('/').is_empty() {
            if let Some((dir, readonly)) = cwd_in(spec, &preopens)? {
                preopens.push(Preopen {
                    dir,
                    guest: ".".to_string(),
                    readonly,
                    what: format!("the working directory {}", spec.cwd),
                });
            }
        }
        Ok(WasiTemplate {
            args: spec.args.clone(),
            env,
            cwd: spec.cwd.clone(),
            preopens,
        })
    }

    /// What the kernel enforces on the guest's threads: the container's
    /// credentials, Landlock limited to the directories opened here (read-only
    /// where the spec says so), and seccomp; the layers named in
    /// [`CONFINE_LAYERS_ENV`](crate::CONFINE_LAYERS_ENV) only, if set.
    pub(crate) fn confinement(&self, spec: &WorkloadSpec) -> Confinement {
        let mut confinement = Confinement::new()
            .credentials(spec.credentials.clone())
            .landlock()
            .seccomp(true);
        // The working directory lies inside another preopen.
        for p in self.preopens.iter().filter(|p| p.guest != ".") {
            confinement = confinement.allow_dir(p.dir.clone(), p.readonly);
        }
        confinement.with_layers_from_env()
    }

    /// Where the guest path `path` (absolute) is on the host: the opened
    /// preopen that holds it (the innermost; through `/proc/self/fd`) and
    /// the path below it, to be resolved in it with [`rootfs::resolve`]
    /// so that symlinks stay inside. `None` if no preopen holds it.
    pub(crate) fn locate(&self, path: &str) -> Option<(std::path::PathBuf, String)> {
        self.preopens
            .iter()
            .filter(|p| p.guest != ".")
            .filter_map(|p| below(path, &p.guest).map(|rest| (p, rest)))
            .max_by_key(|(p, _)| p.guest.len())
            .map(|(p, rest)| (view::proc_path(&*p.dir), format!("/{rest}")))
    }

    /// A WASI context builder with this template's argv, env, cwd and
    /// sockets, the given stdio (`None`: a null stream), and every preopened
    /// directory opened anew from the handles opened at Create (through
    /// `/proc/self/fd`, never by its path). Costs an `open` per preopen.
    ///
    /// # Errors
    ///
    /// Fails, naming it, if a preopened directory cannot be opened.
    pub(crate) fn builder(
        &self,
        stdin: Option<GuestStdin>,
        stdout: Option<GuestOutput>,
        stderr: Option<GuestOutput>,
    ) -> Result<WasiCtxBuilder> {
        let mut b = WasiCtxBuilder::new();
        b.args(&self.args);
        b.envs(&self.env);
        b.initial_cwd(&self.cwd);
        b.inherit_network();
        b.allow_tcp(true);
        b.allow_udp(true);
        b.allow_ip_name_lookup(true);

        match stdin {
            Some(stdin) => b.stdin(stdin),
            None => b.stdin(tokio::io::empty()),
        };
        match stdout {
            Some(out) => b.stdout(out),
            None => b.stdout(tokio::io::empty()),
        };
        match stderr {
            Some(out) => b.stderr(out),
            None => b.stderr(tokio::io::empty()),
        };

        for p in &self.preopens {
            b.preopened_dir(view::proc_path(&*p.dir), &p.guest, perms(p.readonly))
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot open {}", p.what))?;
        }
        Ok(b)
    }
}

fn perms(readonly: bool) -> FsPerms {
    if readonly {
        FsPerms::ReadOnly
    } else {
        FsPerms::ReadWrite
    }
}

/// Opens the directory `path` the guest sees, naming it (`what`) on failure.
fn open(path: &std::path::Path, readonly: bool, what: &str) -> Result<Arc<OwnedFd>> {
    view::open_view(path, readonly)
        .map(Arc::new)
        .with_context(|| format!("cannot open {what}"))
}

/// `process.cwd` opened inside the preopen that holds it (the bind mount
/// with the longest matching destination, else the rootfs), and whether it
/// is read-only. `None` (with a warning) if it does not exist, which runc
/// would paper over by creating it; a guest then simply has no `.` preopen.
fn cwd_in(spec: &WorkloadSpec, preopens: &[Preopen]) -> Result<Option<(Arc<OwnedFd>, bool)>> {
    let cwd = &spec.cwd;
    let holder = preopens
        .iter()
        .filter_map(|p| below(cwd, &p.guest).map(|rest| (p, rest)))
        .max_by_key(|(p, _)| p.guest.len());
    let Some((holder, rest)) = holder else {
        return Ok(None);
    };
    // Resolved in the opened copy, not on the host path: checks that the
    // path stays inside and gives the errors below; the open itself is
    // then done by the kernel, atomically, confined to the same root.
    let base = view::proc_path(&*holder.dir);
    match rootfs::resolve(&base, &format!("/{rest}")) {
        Ok(host) if host.is_dir() => {
            let dir = view::open_dir_in(&holder.dir, rest)
                .with_context(|| format!("cannot open working directory {cwd}"))?;
            Ok(Some((Arc::new(dir), holder.readonly)))
        }
        Ok(_) | Err(ResolveError::NotFound) => {
            log::warn!(
                "working directory {cwd} does not exist in the container; relative paths will not resolve"
            );
            Ok(None)
        }
        Err(ResolveError::Escapes { .. }) => {
            bail!("working directory {cwd} leaves the container's rootfs: set process.cwd to a directory inside the image")
        }
        Err(ResolveError::TooManySymlinks) => {
            bail!("working directory {cwd} has a symlink loop: set process.cwd to a real directory")
        }
        Err(ResolveError::Io(e)) => {
            Err(e).with_context(|| format!("cannot look up working directory {cwd}"))
        }
    }
}

/// `path` relative to the directory `dir` if it is inside it.
fn below<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    let dir = dir.trim_end_matches('/');
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_matches_whole_components() {
        assert_eq!(below("/data/x", "/data"), Some("x"));
        assert_eq!(below("/data", "/data/"), Some(""));
        assert_eq!(below("/database", "/data"), None);
        assert_eq!(below("/srv", "/"), Some("srv"));
    }
}
