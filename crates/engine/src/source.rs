//! Where a guest's code comes from: the one place `process.args[0]` is
//! looked up in the rootfs.
//!
//! The entrypoint is resolved once, as a chroot would, and the outcome says
//! what the caller may do next: prepare the file it found
//! ([`WasmEngine::prepare_file`](crate::WasmEngine::prepare_file)), or, when
//! the rootfs has no such file, look for the code elsewhere (an image layer:
//! [`WasmEngine::prepare_layer`](crate::WasmEngine::prepare_layer)) and,
//! failing that, report why the rootfs did not have it.
use std::fs::File;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Result;

use crate::cache_key::FileIdentity;
use crate::rootfs::{self, ResolveError};

/// What the rootfs holds at `process.args[0]`.
#[derive(Debug)]
pub enum RootfsEntrypoint {
    /// A regular file, opened: prepare it with
    /// [`WasmEngine::prepare_file`](crate::WasmEngine::prepare_file).
    Found(EntrypointFile),
    /// No regular file there (missing, a directory, outside the rootfs, a
    /// symlink loop, no rootfs at all). The error says which, in words for
    /// the user, e.g. "entrypoint /app.wasm not found in the image's rootfs";
    /// return it if the code is not found elsewhere either.
    Missing(anyhow::Error),
}

/// The entrypoint file of a guest, opened inside its rootfs without following
/// any link out of it. Holds the open file, not its bytes.
#[derive(Debug)]
pub struct EntrypointFile {
    pub(crate) file: File,
    pub(crate) identity: FileIdentity,
    /// `process.args[0]` as the user wrote it, for messages.
    pub(crate) shown: String,
    /// Taken before the file was opened: the compiled-code cache remembers
    /// only files that had not changed for a while by then.
    pub(crate) opened_at: SystemTime,
}

impl EntrypointFile {
    /// What the file is when it is not WebAssembly (binary or text), e.g.
    /// `Some("an ELF executable")`; `None` for WebAssembly. Reads its first
    /// bytes, without moving the file's position.
    pub fn not_webassembly(&self) -> Option<&'static str> {
        use std::os::unix::fs::FileExt;
        let mut head = [0u8; 256];
        let read = match self.file.read_at(&mut head, 0) {
            Ok(read) => read,
            Err(_) => return Some("a file that cannot be read"),
        };
        let head = &head[..read];
        if head.starts_with(b"\0asm") {
            return None;
        }
        // The head may end inside a UTF-8 character.
        let text = match std::str::from_utf8(head) {
            Ok(_) => head,
            Err(e) if e.error_len().is_none() => &head[..e.valid_up_to()],
            Err(_) => head,
        };
        crate::compile::not_wasm(text)
    }
}

/// Looks up the entrypoint an image declares, `arg0` (its config's first
/// `Entrypoint` or `Cmd` word, `path[#export]`) relative to `cwd` (its
/// `WorkingDir`), in `rootfs` (the image's filesystem, mounted), as
/// [`WorkloadSpec::find_entrypoint`](crate::WorkloadSpec::find_entrypoint)
/// does for a container's `process.args[0]`: for a caller with an image and
/// no container, such as a precompile
/// ([`WasmEngine::precompile_file`](crate::WasmEngine::precompile_file)).
///
/// # Errors
///
/// An `arg0` that is no entrypoint (empty, an empty export name), or a file
/// that is there but cannot be opened; a missing one is
/// [`RootfsEntrypoint::Missing`].
pub fn find_entrypoint_in(rootfs: &Path, arg0: &str, cwd: &str) -> Result<RootfsEntrypoint> {
    let entrypoint = crate::Entrypoint::parse(arg0, cwd)?;
    open_entrypoint(rootfs, &entrypoint.path)
}

/// Looks up the entrypoint `shown` (an absolute path inside the guest) in
/// `rootfs`, following symlinks as a chroot would and refusing any path that
/// leaves the rootfs, and opens it if it is a regular file.
///
/// # Errors
///
/// Only when the file is there but cannot be opened or examined (e.g.
/// permissions); everything else is [`RootfsEntrypoint::Missing`].
pub(crate) fn open_entrypoint(rootfs: &Path, shown: &str) -> Result<RootfsEntrypoint> {
    let opened_at = SystemTime::now();
    let missing = |e: anyhow::Error| Ok(RootfsEntrypoint::Missing(e));
    if !rootfs.is_dir() {
        return missing(anyhow::anyhow!(
            "the container's rootfs {} is not a directory: is the image's snapshot mounted?",
            rootfs.display()
        ));
    }
    let host = match rootfs::resolve(rootfs, shown) {
        Ok(host) => host,
        Err(ResolveError::NotFound) => {
            return missing(anyhow::anyhow!(
                "entrypoint {shown} not found in the image's rootfs"
            ))
        }
        Err(ResolveError::Escapes { link: None }) => return missing(anyhow::anyhow!(
            "entrypoint {shown} leaves the image's rootfs through '..': use a path inside the image"
        )),
        Err(ResolveError::Escapes {
            link: Some((link, target)),
        }) => return missing(anyhow::anyhow!(
            "entrypoint {shown} leaves the image's rootfs: symlink {link} points to {}, outside of it",
            target.display()
        )),
        Err(ResolveError::TooManySymlinks) => {
            return missing(anyhow::anyhow!(
                "entrypoint {shown} has too many levels of symlinks (a loop?)"
            ))
        }
        Err(ResolveError::Io(e)) => {
            return missing(anyhow::Error::from(e).context(format!(
                "cannot look up entrypoint {shown} in the image's rootfs"
            )))
        }
    };
    // The type is checked before opening: opening a FIFO would block.
    match std::fs::symlink_metadata(&host) {
        // A directory holding a Spin manifest is a Spin app (spin/mod.rs).
        Ok(meta) if meta.is_dir() => {
            let manifest = format!("{}/spin.toml", shown.trim_end_matches('/'));
            return match rootfs::resolve(rootfs, &manifest) {
                Ok(found) if found.is_file() => open_entrypoint(rootfs, &manifest),
                _ => missing(anyhow::anyhow!(
                    "entrypoint {shown} is a directory, not a WebAssembly file (nor a Spin app: it has no spin.toml)"
                )),
            };
        }
        Ok(meta) if !meta.is_file() => {
            return missing(anyhow::anyhow!(
                "entrypoint {shown} is {}, not a WebAssembly file: point process.args[0] at the .wasm file",
                rootfs::file_kind(&meta)
            ))
        }
        Ok(_) => {}
        Err(e) => {
            return missing(anyhow::Error::from(e).context(format!(
                "cannot look up entrypoint {shown} in the image's rootfs"
            )))
        }
    }
    // No final symlink, no FIFO, device or directory (should one have
    // replaced the file since), a bounded size.
    let (file, meta) = rootfs::open_entrypoint_file(&host, shown)?;
    Ok(RootfsEntrypoint::Found(EntrypointFile {
        file,
        identity: FileIdentity::of(&meta),
        shown: shown.to_string(),
        opened_at,
    }))
}

/// What a Linux executable entrypoint is, for a caller that runs such
/// containers another way (the shim hands them to runc): `Some("an ELF
/// executable")` or `Some("a script starting with #!")` when
/// `process.args[0]` names one in the bundle's rootfs, `None` for anything
/// else (WebAssembly, a missing file, code in an image layer), which the
/// engine then prepares or explains.
///
/// A name without `/` is looked up in the spec's `PATH`, as runc's exec
/// would. wasmtime's own precompiled code is ELF too, but never native: the
/// engine refuses it with its own message.
pub fn linux_executable(bundle: &crate::Bundle) -> Option<&'static str> {
    let arg0 = bundle.args.first()?;
    let candidates: Vec<String> = if arg0.contains('/') {
        vec![crate::Entrypoint::parse(arg0, &bundle.cwd).ok()?.path]
    } else {
        let path = bundle
            .env
            .iter()
            .find(|(name, _)| name == "PATH")
            .map(|(_, value)| value.as_str())
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|dir| dir.starts_with('/'))
            .map(|dir| format!("{}/{arg0}", dir.trim_end_matches('/')))
            .collect()
    };
    candidates.iter().find_map(|guest| {
        let host = rootfs::resolve(&bundle.rootfs, guest).ok()?;
        let (file, _) = rootfs::open_entrypoint_file(&host, guest).ok()?;
        let mut header = [0u8; 8];
        let read = std::io::Read::read(&mut &file, &mut header).ok()?;
        let header = &header[..read];
        // EI_OSABI 200 marks wasmtime's precompiled modules and components.
        if header.starts_with(b"\x7fELF") && header.get(7) != Some(&200) {
            Some("an ELF executable")
        } else if header.starts_with(b"#!") {
            Some("a script starting with #!")
        } else {
            None
        }
    })
}
