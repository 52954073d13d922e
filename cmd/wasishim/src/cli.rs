//! The command line: `wasishim install|uninstall|status [options]`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::flavor::Host;
use crate::restart::How;
use crate::{install, precompile, record, status};

/// The usage text.
pub const USAGE: &str = "\
usage: wasishim install   [--prefix DIR] [--config FILE] [--from DIR] [restart options]
       wasishim uninstall [restart options]
       wasishim status    [--prefix DIR] [--config FILE] [--address SOCKET]
       wasishim precompile IMAGE [--namespace NS] [--address SOCKET]

install    copies containerd-shim-wasmtime-v1 and containerd-shim-wasmtimed-v1 to
           PREFIX/bin, declares the runtimes `wasmtime` and `wasmtimed` in
           containerd's config, and restarts containerd; a second run changes nothing
uninstall  undoes what install did, as recorded in the install record
status     shows the shims, the config's runtimes, and what the running containerd loaded;
           exits with 3 when something is missing or not loaded
precompile compiles the Wasm of IMAGE (pulled or imported into containerd) into the
           shims' compiled-code cache, so that its first container starts from it;
           reads WASISHIM_CACHE_DIR and the compile limits as the shims do

  --prefix DIR       shims go to DIR/bin (default /usr/local)
  --config FILE      containerd's config (default: the first of /etc/containerd/config.toml,
                     k3s's, RKE2's and MicroK8s's that exists)
  --from DIR         where the shims to copy are (default: this binary's directory)
  --state FILE       the install record (default /var/lib/wasishim/install.json)
  --address SOCKET   containerd's socket, for status (default: the config flavor's)
                     and precompile (default /run/containerd/containerd.sock)
  --namespace NS     containerd namespace of IMAGE (default: $CONTAINERD_NAMESPACE,
                     else `default`; Kubernetes pulls into `k8s.io`)
  --host-root DIR    the host's / is mounted at DIR (in a container); all paths
                     above are host paths
restart options (containerd reads its config only at start; SIGHUP does not reload it):
  --no-restart       change files only and print what to do
  --pid PID          containerd is not run by systemd: stop it (SIGTERM) for its
                     supervisor to start again
  --pid-file FILE    same, with the PID read from FILE
  (default: `systemctl restart` containerd's unit, or print what to do)
";

/// A parsed command line.
#[derive(Debug)]
pub enum Command {
    /// `install`.
    Install(install::Options),
    /// `uninstall`.
    Uninstall(install::Options),
    /// `status`.
    Status(status::Options),
    /// `precompile`.
    Precompile(precompile::Options),
    /// `-h`, `--help`, or no arguments.
    Help,
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command> {
    let Some((verb, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    if verb == "precompile" {
        return parse_precompile(rest);
    }
    let mut prefix = PathBuf::from("/usr/local");
    let mut config = None;
    let mut from = None;
    let mut state = PathBuf::from(record::DEFAULT_PATH);
    let mut address = None;
    let mut host_root = PathBuf::from("/");
    let mut restart = How::Systemd;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value; see `wasishim --help`"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--prefix" => prefix = PathBuf::from(value()?),
            "--config" => config = Some(PathBuf::from(value()?)),
            "--from" => from = Some(PathBuf::from(value()?)),
            "--state" => state = PathBuf::from(value()?),
            "--address" => address = Some(PathBuf::from(value()?)),
            "--host-root" => host_root = PathBuf::from(value()?),
            "--no-restart" => restart = How::No,
            "--pid" => {
                let v = value()?;
                let pid = v
                    .parse::<i32>()
                    .ok()
                    .filter(|p| *p > 1)
                    .with_context(|| format!("--pid {v}: not the PID of a process"))?;
                restart = How::Pid(pid);
            }
            "--pid-file" => restart = How::PidFile(PathBuf::from(value()?)),
            other => bail!("unknown option {other} for `wasishim {verb}`; see `wasishim --help`"),
        }
    }
    for (name, p) in [
        ("--prefix", Some(&prefix)),
        ("--config", config.as_ref()),
        ("--state", Some(&state)),
    ] {
        if let Some(p) = p {
            if !p.is_absolute() {
                bail!("{name} {}: give an absolute path", p.display());
            }
        }
    }
    let host = Host::new(host_root);
    let opts = install::Options {
        host: host.clone(),
        prefix: prefix.clone(),
        config: config.clone(),
        from,
        state: state.clone(),
        restart,
    };
    match verb.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "install" => Ok(Command::Install(opts)),
        "uninstall" => Ok(Command::Uninstall(opts)),
        "status" => Ok(Command::Status(status::Options {
            host,
            prefix,
            config,
            address,
            state,
        })),
        other => bail!(
            "unknown command {other:?}; the commands are install, uninstall, status, precompile"
        ),
    }
}

/// `precompile IMAGE [--namespace NS] [--address SOCKET]`.
fn parse_precompile(args: &[String]) -> Result<Command> {
    let mut image = None;
    let mut namespace = std::env::var("CONTAINERD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let mut address = "/run/containerd/containerd.sock".to_string();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{arg} needs a value; see `wasishim --help`"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--namespace" | "-n" => namespace = value()?,
            "--address" | "-a" => address = value()?,
            flag if flag.starts_with('-') => {
                bail!("unknown option {flag} for `wasishim precompile`; see `wasishim --help`")
            }
            name if image.is_none() => image = Some(name.to_string()),
            extra => bail!("`wasishim precompile` takes one image, not also {extra:?}"),
        }
    }
    let image = image.context(
        "`wasishim precompile` needs an image name, e.g. `wasishim precompile docker.io/library/app:v1`",
    )?;
    Ok(Command::Precompile(precompile::Options {
        image,
        namespace,
        address,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_install() {
        let Command::Install(o) = parse(&args("install --prefix /opt/w --no-restart")).unwrap()
        else {
            panic!("not install");
        };
        assert_eq!(o.prefix, PathBuf::from("/opt/w"));
        assert_eq!(o.restart, How::No);
        assert!(matches!(parse(&[]).unwrap(), Command::Help));
        assert!(parse(&args("install --pid 1")).is_err());
        assert!(parse(&args("install --prefix rel")).is_err());
        assert!(parse(&args("install --bogus"))
            .unwrap_err()
            .to_string()
            .contains("--bogus"));
        assert!(parse(&args("frobnicate")).is_err());
    }

    #[test]
    fn parses_precompile() {
        let Command::Precompile(o) = parse(&args(
            "precompile example.com/app:v1 -n k8s.io --address /run/c.sock",
        ))
        .unwrap() else {
            panic!("not precompile");
        };
        assert_eq!(o.image, "example.com/app:v1");
        assert_eq!(o.namespace, "k8s.io");
        assert_eq!(o.address, "/run/c.sock");
        assert!(parse(&args("precompile")).is_err());
        assert!(parse(&args("precompile a b")).is_err());
        assert!(parse(&args("precompile a --bogus")).is_err());
    }
}
