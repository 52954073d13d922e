//! The WASI context of a guest, from its spec: argv, env, preopens, stdio.
//!
//! WASI has no current directory. A guest sees `process.cwd` three ways:
//! `PWD` in its environment (unless the spec sets `PWD` itself), the
//! `wasi:cli/environment.initial-cwd` of components, and a preopen of that
//! directory at `.`, which is what wasi-libc uses for relative paths.
//!
//! Sockets are granted as a runc container has them: TCP, UDP and name
//! lookup, in whatever network namespace the guest's thread is in (see
//! [`NetworkNamespace`](crate::NetworkNamespace)).
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::output::GuestOutput;
use crate::rootfs::{self, ResolveError};
use crate::stdio::GuestStdin;
use crate::WorkloadSpec;

/// Builds the WASI context, opening every preopened directory now so that a
/// missing mount source fails task creation.
///
/// # Errors
///
/// Fails if the rootfs or a bind-mounted directory cannot be opened, or if
/// `process.cwd` leaves the rootfs.
pub(crate) fn context(
    spec: &WorkloadSpec,
    stdin: Option<GuestStdin>,
    stdout: Option<GuestOutput>,
    stderr: Option<GuestOutput>,
) -> Result<WasiCtxBuilder> {
    WasiTemplate::new(spec)?.builder(stdin, stdout, stderr)
}

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
    host: PathBuf,
    guest: String,
    readonly: bool,
    /// What it is, for the error when it cannot be opened.
    what: String,
}

impl WasiTemplate {
    /// Resolves the spec's preopens: checks that bind mount sources exist
    /// (skipping those that are not directories) and finds `process.cwd` on
    /// the host. Opens nothing; costs a `stat` per mount.
    ///
    /// # Errors
    ///
    /// Fails if a bind mount source is not accessible, or if `process.cwd`
    /// leaves the rootfs.
    pub(crate) fn new(spec: &WorkloadSpec) -> Result<WasiTemplate> {
        let mut env = spec.env.clone();
        if !spec.env.iter().any(|(k, _)| k == "PWD") {
            env.push(("PWD".to_string(), spec.cwd.clone()));
        }
        let mut preopens = vec![Preopen {
            host: spec.rootfs.clone(),
            guest: "/".to_string(),
            readonly: spec.readonly_rootfs,
            what: format!("the container's rootfs {}", spec.rootfs.display()),
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
            preopens.push(Preopen {
                host: m.source.clone(),
                guest: m.destination.clone(),
                readonly: m.readonly,
                what: format!("bind mount {} -> {}", m.source.display(), m.destination),
            });
        }
        if !spec.cwd.trim_matches('/').is_empty() {
            if let Some((host, readonly)) = cwd_on_host(spec)? {
                preopens.push(Preopen {
                    host,
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

    /// A WASI context builder with this template's argv, env, cwd and
    /// sockets, the given stdio (`None`: a null stream), and every preopened
    /// directory opened now. Costs an `open` per preopen.
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
            b.preopened_dir(&p.host, &p.guest, perms(p.readonly))
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

/// Where `process.cwd` is on the host, and whether it is read-only: inside
/// the bind mount with the longest matching destination, else in the
/// rootfs. `None` (with a warning) if it does not exist, which runc would
/// paper over by creating it; a guest then simply has no `.` preopen.
fn cwd_on_host(spec: &WorkloadSpec) -> Result<Option<(PathBuf, bool)>> {
    let cwd = &spec.cwd;
    let mount = spec
        .mounts
        .iter()
        .filter_map(|m| below(cwd, &m.destination).map(|rest| (m, rest)))
        .max_by_key(|(m, _)| m.destination.len());
    let (base, rest, readonly) = match mount {
        Some((m, rest)) => (m.source.as_path(), rest, m.readonly),
        None => (spec.rootfs.as_path(), cwd.as_str(), spec.readonly_rootfs),
    };
    match rootfs::resolve(base, &format!("/{rest}")) {
        Ok(host) if host.is_dir() => Ok(Some((host, readonly))),
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
