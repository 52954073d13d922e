//! `wasishim-image`: writes an OCI image layout tarball of a WASI program
//! for `ctr images import`.
//!
//! ```text
//! wasishim-image --name docker.io/library/hello:latest --wasm hello.wasm --out hello.tar
//! wasishim-image --artifact wasm-config-v0 --name 127.0.0.1:5000/hello:v1 --wasm hello.wasm --out hello-oci
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use wasishim_image::{parse_env, Artifact, ArtifactForm, Image};

const USAGE: &str = "\
usage: wasishim-image --name NAME --out IMAGE.tar [options]

  --name NAME            image name, e.g. docker.io/library/hello:latest
  --out FILE             where to write the OCI image layout tarball
  --wasm FILE            the program, put at the wasm path (mode 0755)
  --wasm-path PATH       where the program goes in the image (default /app.wasm)
  --file HOST:PATH       add HOST file at PATH (keeps HOST's mode); repeatable;
                         replaces the program if PATH is the wasm path
  --dir PATH             add an empty directory; repeatable
  --entrypoint ARG       config Entrypoint (default: the wasm path); repeatable
  --cmd ARG              config Cmd; repeatable
  --env K=V              config Env; repeatable
  --workdir DIR          config WorkingDir

Wasm OCI artifacts (raw wasm layers instead of a tar layer):
  --artifact FORM        write an artifact of FORM as an OCI image layout
                         directory at --out (for `skopeo copy oci:DIR ...`), or
                         as a tarball if --out ends in .tar (`ctr images import`):
                           wasm-config-v0  config application/vnd.wasm.config.v0+json,
                                           layers application/wasm (CNCF TAG-Runtime)
                           oci-component   OCI config, architecture wasm, layers
                                           application/vnd.bytecodealliance.wasm.component.layer.v0+wasm
                           oci-wasm        OCI config, architecture wasm, layers application/wasm
                           wasm-to-oci     config application/vnd.wasm.config.v1+json,
                                           layers application/vnd.wasm.content.layer.v1+wasm
                           spin            Spin's OCI artifact (spin registry push) of
                                           the app --spin-manifest, components from
                                           the manifest's directory or --spin-dir
                         --wasm is the first layer; --entrypoint, --cmd and --env
                         go into the config of oci-component and oci-wasm only
  --spin-manifest FILE   spin.toml of the app (--artifact spin)
  --spin-dir DIR         where its components' sources are (default: its directory)
  --layer TYPE:FILE      add FILE as a further layer of media type TYPE; repeatable
";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasishim-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let mut name = None;
    let mut out: Option<PathBuf> = None;
    let mut wasm = None;
    let mut wasm_path = None;
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut entrypoint = Vec::new();
    let mut cmd = Vec::new();
    let mut env = Vec::new();
    let mut workdir = None;
    let mut artifact = None;
    let mut layers = Vec::new();
    let mut spin_manifest: Option<PathBuf> = None;
    let mut spin_dir: Option<PathBuf> = None;

    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            print!("{USAGE}");
            return Ok(());
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))?;
        match flag.as_str() {
            "--name" => name = Some(value),
            "--out" => out = Some(PathBuf::from(value)),
            "--wasm" => wasm = Some(PathBuf::from(value)),
            "--wasm-path" => wasm_path = Some(value),
            "--file" => files.push(value),
            "--dir" => dirs.push(value),
            "--entrypoint" => entrypoint.push(value),
            "--cmd" => cmd.push(value),
            "--env" => env.push(value),
            "--workdir" => workdir = Some(value),
            "--artifact" => artifact = Some(ArtifactForm::parse(&value)?),
            "--layer" => layers.push(value),
            "--spin-manifest" => spin_manifest = Some(PathBuf::from(value)),
            "--spin-dir" => spin_dir = Some(PathBuf::from(value)),
            other => bail!("unknown option {other}\n\n{USAGE}"),
        }
    }
    let name = name.with_context(|| format!("--name is required\n\n{USAGE}"))?;
    let out = out.with_context(|| format!("--out is required\n\n{USAGE}"))?;

    if let Some(form) = artifact {
        if !files.is_empty() || !dirs.is_empty() || wasm_path.is_some() || workdir.is_some() {
            bail!("--file, --dir, --wasm-path and --workdir describe a file system, which an artifact has not: leave them out with --artifact");
        }
        let mut artifact = match (form, &spin_manifest) {
            (ArtifactForm::Spin, Some(manifest)) => {
                let text = std::fs::read_to_string(manifest)
                    .with_context(|| format!("reading --spin-manifest {}", manifest.display()))?;
                let dir = match (&spin_dir, manifest.parent()) {
                    (Some(dir), _) => dir.clone(),
                    (None, Some(parent)) => parent.to_path_buf(),
                    (None, None) => PathBuf::from("."),
                };
                wasishim_image::spin_artifact(&name, &text, &dir)?
            }
            (ArtifactForm::Spin, None) => bail!("--artifact spin needs --spin-manifest"),
            (_, Some(_)) => bail!("--spin-manifest needs --artifact spin"),
            _ => Artifact::new(&name, form),
        };
        if let Some(w) = wasm {
            let bytes =
                std::fs::read(&w).with_context(|| format!("reading --wasm {}", w.display()))?;
            artifact = artifact.wasm(bytes);
        }
        for l in layers {
            let (media_type, file) = l
                .rsplit_once(':')
                .with_context(|| format!("--layer takes MEDIATYPE:FILE, got '{l}'"))?;
            let bytes = std::fs::read(file).with_context(|| format!("reading --layer {file}"))?;
            let title = std::path::Path::new(file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            artifact = artifact.layer(media_type, bytes, title.as_deref());
        }
        if !entrypoint.is_empty() {
            artifact = artifact.entrypoint(entrypoint);
        }
        artifact = artifact.cmd(cmd);
        for kv in &env {
            let (k, v) = parse_env(kv)?;
            artifact = artifact.env(k, v);
        }
        let written = if out.extension().is_some_and(|e| e == "tar") {
            artifact.write_layout_tar(&out)?
        } else {
            artifact.write_layout_dir(&out)?
        };
        println!(
            "{} {} {}",
            artifact.name(),
            written.manifest_digest,
            out.display()
        );
        return Ok(());
    }
    if !layers.is_empty() {
        bail!("--layer needs --artifact: an image's single layer is a tar of its files");
    }

    let mut image = Image::new(&name);
    if let Some(p) = wasm_path {
        image = image.wasm_path(&p);
    }
    if let Some(w) = wasm {
        let bytes = std::fs::read(&w).with_context(|| format!("reading --wasm {}", w.display()))?;
        image = image.wasm(bytes);
    }
    for f in files {
        let (host, dst) = f
            .split_once(':')
            .with_context(|| format!("--file takes HOSTPATH:/image/path, got '{f}'"))?;
        let bytes = std::fs::read(host).with_context(|| format!("reading --file {host}"))?;
        let mode = file_mode(host)?;
        image = image.file(dst, bytes, mode);
    }
    for d in dirs {
        image = image.dir(&d);
    }
    if !entrypoint.is_empty() {
        image = image.entrypoint(entrypoint);
    }
    image = image.cmd(cmd);
    for kv in &env {
        let (k, v) = parse_env(kv)?;
        image = image.env(k, v);
    }
    if let Some(w) = workdir {
        image = image.workdir(&w);
    }
    let written = image.write_to(&out)?;
    println!(
        "{} {} {}",
        image.name(),
        written.manifest_digest,
        out.display()
    );
    Ok(())
}

fn file_mode(path: &str) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("reading --file {path}"))?;
    Ok(meta.permissions().mode() & 0o7777)
}
