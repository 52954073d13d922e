//! `wasishim install` and `wasishim uninstall`: the shims into PREFIX/bin,
//! the runtimes into containerd's config, a record of both, then a restart
//! of containerd; and the exact reverse.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::containerd_config;
use crate::files::{self, SHIMS};
use crate::flavor::{Flavor, Host};
use crate::record::{self, Binary, Record};
use crate::restart::{self, How};

/// What `install` and `uninstall` act on; host paths are absolute paths on
/// the host (see [`Host`]).
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the host's `/` is.
    pub host: Host,
    /// Host path; shims go to PREFIX/bin.
    pub prefix: PathBuf,
    /// Host path of containerd's config; probed when None.
    pub config: Option<PathBuf>,
    /// Local directory holding the shims; the running binary's when None.
    pub from: Option<PathBuf>,
    /// Host path of the install record.
    pub state: PathBuf,
    /// How to make containerd load the change.
    pub restart: How,
}

/// The config to edit: `--config`, else the first default path that exists.
pub fn find_config(host: &Host, config: Option<&Path>) -> Result<(Flavor, PathBuf)> {
    if let Some(config) = config {
        let local = host.path(config);
        if !local.is_file() {
            bail!(
                "--config {}: no such file; pass the path of containerd's config.toml \
                 (`containerd config dump` shows what containerd uses)",
                config.display()
            );
        }
        return Ok((Flavor::of_config(config), local));
    }
    host.probe().with_context(|| {
        format!(
            "no containerd config found at {}; create one (`containerd config default > \
             /etc/containerd/config.toml`) or pass --config PATH",
            Flavor::ALL.map(|f| f.config()).join(", ")
        )
    })
}

/// Copies the shims, declares the runtimes, records both and restarts
/// containerd if the config changed. A second run changes nothing.
pub fn install(opts: &Options) -> Result<()> {
    let (flavor, config) = find_config(&opts.host, opts.config.as_deref())?;
    let edited = flavor.edited_file(&config);
    let created = !edited.exists();
    let current = files::read_text(if created { &config } else { &edited })?;
    let state = opts.host.path(&opts.state);
    let previous = record::load(&state)?;
    let edited_on_host = opts.host.to_host(&edited);
    if let Some(r) = &previous {
        if r.config != edited_on_host {
            bail!(
                "the install record {} is of {}, not {}: run `wasishim uninstall` first, or \
                 pass another --state",
                state.display(),
                r.config.display(),
                edited_on_host.display()
            );
        }
    }
    // Everything that can fail for a reason the user can fix is checked
    // before the node is changed.
    let added = containerd_config::add_runtimes(&current, &edited)?;
    let sources = shim_sources(opts.from.as_deref())?;

    let bin = opts.host.path(&opts.prefix).join("bin");
    let mut binaries = previous
        .as_ref()
        .map(|r| r.binaries.clone())
        .unwrap_or_default();
    let mut copies = Vec::new();
    for (name, src) in SHIMS.iter().zip(&sources) {
        let bytes = std::fs::read(src).map_err(|e| files::explain(e, "reading", src))?;
        let dest = bin.join(name);
        let old = std::fs::read(&dest).ok();
        let dest_on_host = opts.host.to_host(&dest);
        if !binaries.iter().any(|b| b.path == dest_on_host) {
            binaries.push(Binary {
                path: dest_on_host,
                replaced: old.is_some(),
            });
        }
        if old.as_deref() != Some(&bytes[..]) {
            copies.push((dest, bytes));
        }
    }
    let after_sha256 = files::sha256(added.text.as_bytes());
    let record = match previous {
        Some(mut r) => {
            r.added.extend(added.added.iter().cloned());
            r.after_sha256 = after_sha256;
            r.binaries = binaries;
            r
        }
        None => Record {
            config: edited_on_host,
            created_config: created,
            before: if created { String::new() } else { current },
            after_sha256,
            added: added.added.clone(),
            binaries,
        },
    };
    // The record goes first: an install cut short is then still undone by
    // `uninstall` (a config not yet written no longer matches the record,
    // and only wasishim's tables, if any, are taken out of it).
    record::save(&state, &record)?;
    std::fs::create_dir_all(&bin).map_err(|e| files::explain(e, "creating", &bin))?;
    let mut copied = Vec::new();
    for (dest, bytes) in copies {
        files::write_atomic(&dest, &bytes, Some(0o755))?;
        copied.push(dest.display().to_string());
    }
    if created || !added.added.is_empty() {
        files::write_atomic(&edited, added.text.as_bytes(), None)?;
    }

    for c in &copied {
        println!("copied {c}");
    }
    if added.added.is_empty() && !created {
        println!(
            "already installed: {} declares runtimes wasmtime and wasmtimed; nothing to restart",
            edited.display()
        );
        return Ok(());
    }
    if created {
        println!(
            "created {} from {} ({} renders containerd's config from it at each start; \
             `wasishim uninstall` removes it)",
            edited.display(),
            config.display(),
            flavor.name()
        );
    }
    println!(
        "declared runtimes {} in {} (config version {})",
        added.added.join(", "),
        edited.display(),
        added.schema.number()
    );
    println!("{}", restart::restart(flavor, &opts.host, &opts.restart)?);
    Ok(())
}

/// Undoes what the record says the installs did: the config back to its
/// bytes before the first install (or, if it was edited since, only
/// wasishim's tables taken out), the shims the install put there removed.
pub fn uninstall(opts: &Options) -> Result<()> {
    let state = opts.host.path(&opts.state);
    let Some(record) = record::load(&state)? else {
        bail!(
            "no install record at {}: nothing to undo (if wasishim was installed with \
             --state, pass the same --state)",
            state.display()
        );
    };
    let mut changed = false;
    let config = opts.host.path(&record.config);
    match std::fs::read_to_string(&config) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("{} is gone; nothing to restore", config.display())
        }
        Err(e) => return Err(files::explain(e, "reading", &config)),
        Ok(text) if files::sha256(text.as_bytes()) == record.after_sha256 => {
            if record.created_config {
                files::remove(&config)?;
                println!("removed {}", config.display());
            } else {
                files::write_atomic(&config, record.before.as_bytes(), None)?;
                println!(
                    "restored {} to its bytes before the install",
                    config.display()
                );
            }
            changed = true;
        }
        Ok(text) => {
            let removed = containerd_config::remove_runtimes(&text, &record.added, &config)?;
            if removed.text != text {
                files::write_atomic(&config, removed.text.as_bytes(), None)?;
                changed = true;
            }
            println!(
                "{} was changed since the install: took out only the runtimes wasishim added \
                 ({}); the rest of the edits stay",
                config.display(),
                record.added.join(", ")
            );
            for k in removed.kept {
                println!("kept runtime {k}");
            }
        }
    }
    for b in &record.binaries {
        if b.replaced {
            println!(
                "kept {}: a file was there before the install",
                b.path.display()
            );
        } else {
            let local = opts.host.path(&b.path);
            files::remove(&local)?;
            println!("removed {}", local.display());
        }
    }
    files::remove(&state)?;
    if changed {
        let flavor = Flavor::of_config(&record.config);
        println!("{}", restart::restart(flavor, &opts.host, &opts.restart)?);
    }
    Ok(())
}

/// The shims to copy, from `from` or the running binary's directory.
fn shim_sources(from: Option<&Path>) -> Result<Vec<PathBuf>> {
    let dir = match from {
        Some(d) => d.to_path_buf(),
        // argv[0] when /proc is not mounted (a bare chroot).
        None => std::env::current_exe()
            .ok()
            .or_else(|| std::env::args_os().next().map(PathBuf::from))
            .filter(|p| p.is_absolute())
            .context("cannot tell the wasishim binary's directory; pass --from DIR")?
            .parent()
            .map(Path::to_path_buf)
            .context("the wasishim binary has no directory; pass --from DIR")?,
    };
    SHIMS
        .iter()
        .map(|name| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                bail!(
                    "{name} not found in {}: pass --from DIR with the directory holding \
                     both shims (built by `cargo build --release`)",
                    dir.display()
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    struct Node {
        dir: tempfile::TempDir,
        opts: Options,
    }

    /// A host under a temporary directory with a v2 config and built shims.
    fn node(config: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc/containerd");
        fs::create_dir_all(&etc).unwrap();
        fs::write(etc.join("config.toml"), config).unwrap();
        let from = dir.path().join("build");
        fs::create_dir_all(&from).unwrap();
        for s in SHIMS {
            fs::write(from.join(s), format!("#!/bin/sh\necho {s}\n")).unwrap();
        }
        let opts = Options {
            host: Host::new(dir.path()),
            prefix: "/usr/local".into(),
            config: None,
            from: Some(from),
            state: record::DEFAULT_PATH.into(),
            restart: How::No,
        };
        Node { dir, opts }
    }

    #[test]
    fn install_twice_then_uninstall() {
        let config = "# mine\nversion = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n";
        let n = node(config);
        let path = n.dir.path().join("etc/containerd/config.toml");
        install(&n.opts).unwrap();
        let once = fs::read(&path).unwrap();
        assert_ne!(once, config.as_bytes());
        let shim = n
            .dir
            .path()
            .join("usr/local/bin/containerd-shim-wasmtime-v1");
        assert!(shim.is_file());
        // The record keeps host paths, for an uninstall run on the host.
        let rec = record::load(&n.dir.path().join("var/lib/wasishim/install.json"))
            .unwrap()
            .unwrap();
        assert_eq!(rec.config, Path::new("/etc/containerd/config.toml"));
        assert_eq!(
            rec.binaries[0].path,
            Path::new("/usr/local/bin/containerd-shim-wasmtime-v1")
        );
        install(&n.opts).unwrap();
        assert_eq!(fs::read(&path).unwrap(), once);
        uninstall(&n.opts).unwrap();
        assert_eq!(fs::read(&path).unwrap(), config.as_bytes());
        assert!(!shim.exists());
        assert!(!n.dir.path().join("var/lib/wasishim/install.json").exists());
        let e = uninstall(&n.opts).unwrap_err().to_string();
        assert!(e.contains("no install record"), "{e}");
    }

    #[test]
    fn nothing_changes_when_a_shim_is_missing() {
        let n = node("version = 3\n");
        fs::remove_file(n.opts.from.as_ref().unwrap().join(SHIMS[1])).unwrap();
        let e = install(&n.opts).unwrap_err().to_string();
        assert!(e.contains("containerd-shim-wasmtimed-v1 not found"), "{e}");
        assert_eq!(
            fs::read_to_string(n.dir.path().join("etc/containerd/config.toml")).unwrap(),
            "version = 3\n"
        );
        assert!(!n.dir.path().join("usr/local/bin").exists());
    }

    #[test]
    fn no_config_says_what_to_do() {
        let n = node("version = 2\n");
        fs::remove_file(n.dir.path().join("etc/containerd/config.toml")).unwrap();
        let e = install(&n.opts).unwrap_err().to_string();
        assert!(
            e.contains("no containerd config found") && e.contains("--config"),
            "{e}"
        );
    }

    #[test]
    fn k3s_gets_a_template_that_uninstall_removes() {
        let n = node("version = 2\n");
        fs::remove_file(n.dir.path().join("etc/containerd/config.toml")).unwrap();
        let k3s = n.opts.host.path(Path::new(Flavor::K3s.config()));
        fs::create_dir_all(k3s.parent().unwrap()).unwrap();
        fs::write(&k3s, "version = 2\n").unwrap();
        install(&n.opts).unwrap();
        let tmpl = Flavor::K3s.edited_file(&k3s);
        assert!(fs::read_to_string(&tmpl)
            .unwrap()
            .contains("io.containerd.wasmtime.v1"));
        assert_eq!(fs::read_to_string(&k3s).unwrap(), "version = 2\n");
        install(&n.opts).unwrap();
        uninstall(&n.opts).unwrap();
        assert!(!tmpl.exists());
    }

    #[test]
    fn edits_after_install_survive_uninstall_and_replaced_shims_stay() {
        let n = node("version = 3\n");
        let bin = n.dir.path().join("usr/local/bin");
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join(SHIMS[0]), "older").unwrap();
        install(&n.opts).unwrap();
        let path = n.dir.path().join("etc/containerd/config.toml");
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("\n[debug]\n  level = \"debug\"\n");
        fs::write(&path, &text).unwrap();
        uninstall(&n.opts).unwrap();
        let after = fs::read_to_string(&path).unwrap();
        assert!(!after.contains("wasmtime"), "{after}");
        assert!(after.contains("level = \"debug\""));
        assert!(bin.join(SHIMS[0]).exists());
        assert!(!bin.join(SHIMS[1]).exists());
    }
}
