//! Where the shim's own log lines go, and how much of them.
//!
//! - Per-pod: to the `log` FIFO containerd opened in the bundle, so the lines
//!   appear in containerd's log (as runc's shim does).
//! - Per-node: the server outlives every bundle, so it writes
//!   `/run/containerd/wasishim/<socket name>.log`. That directory is on tmpfs
//!   (memory), so the file is rotated at [`NODE_LOG_MAX_BYTES`] (one older
//!   file kept) and removed when the server exits cleanly.
//!
//! With containerd's `-debug`, only the shim's own crates log at debug level:
//! wasmtime and Cranelift would otherwise write dozens of lines per compiled
//! function.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use containerd_shim::logger::FifoLogger;
use log::{LevelFilter, Log, Metadata, Record};

/// Where per-node servers log.
pub const NODE_LOG_DIR: &str = "/run/containerd/wasishim";

/// Size at which a per-node log file is rotated.
pub const NODE_LOG_MAX_BYTES: u64 = 16 << 20;

/// Crates whose debug lines are the shim's own.
const OWN_CRATES: &[&str] = &["wasishim", "containerd_shim"];

/// The most other crates may log.
const OTHERS_MAX: LevelFilter = LevelFilter::Info;

/// Logs the per-pod shim to containerd's `log` FIFO in the working directory
/// (the bundle). `debug` is containerd's `-debug` flag.
pub fn init_per_pod(debug: bool) -> Result<(), String> {
    let sink = FifoLogger::with_path("log").map_err(|err| format!("log FIFO: {err}"))?;
    install(
        ShimLogger {
            sink: RwLock::new(sink),
            rotation: None,
        },
        debug,
    )
}

/// Logs the per-node server listening on `socket` to its file under
/// [`NODE_LOG_DIR`].
pub fn init_per_node(socket: &str, debug: bool) -> Result<(), String> {
    let path = node_log_path(socket);
    std::fs::create_dir_all(NODE_LOG_DIR).map_err(|err| format!("{NODE_LOG_DIR}: {err}"))?;
    let file = open_append(&path)?;
    install(
        ShimLogger {
            sink: RwLock::new(FifoLogger::with_file(file)),
            rotation: Some(Rotation {
                path,
                records: AtomicU64::new(0),
            }),
        },
        debug,
    )
}

/// The log file of the per-node server listening on `socket`.
pub fn node_log_path(socket: &str) -> PathBuf {
    let name = Path::new(socket.trim_start_matches("unix://"))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "node".to_string());
    Path::new(NODE_LOG_DIR).join(format!("{name}.log"))
}

/// Removes the log files of the per-node server listening on `socket`; for
/// a clean exit, which leaves nothing to investigate.
pub fn remove_node_log(socket: &str) {
    let path = node_log_path(socket);
    let _ = std::fs::remove_file(rotated(&path));
    let _ = std::fs::remove_file(&path);
}

fn install(logger: ShimLogger, debug: bool) -> Result<(), String> {
    log::set_boxed_logger(Box::new(logger)).map_err(|err| err.to_string())?;
    log::set_max_level(if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    });
    Ok(())
}

fn open_append(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| format!("{}: {err}", path.display()))
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

struct ShimLogger {
    sink: RwLock<FifoLogger>,
    rotation: Option<Rotation>,
}

struct Rotation {
    path: PathBuf,
    /// Records written; the file's size is checked every [`CHECK_EVERY`].
    records: AtomicU64,
}

const CHECK_EVERY: u64 = 256;

/// Whether a record from `target` at `level` is written, given the level
/// set for the process.
fn wanted(target: &str, level: log::Level, max: LevelFilter) -> bool {
    let own = OWN_CRATES.iter().any(|c| {
        target == *c
            || target.starts_with(&format!("{c}::"))
            || target.starts_with(&format!("{c}_"))
    });
    level <= max && (own || level <= OTHERS_MAX)
}

impl ShimLogger {
    fn rotate_if_large(&self, rotation: &Rotation) {
        if rotation.records.fetch_add(1, Ordering::Relaxed) % CHECK_EVERY != CHECK_EVERY - 1 {
            return;
        }
        let large = std::fs::metadata(&rotation.path)
            .map(|m| m.len() >= NODE_LOG_MAX_BYTES)
            .unwrap_or(false);
        if !large {
            return;
        }
        if std::fs::rename(&rotation.path, rotated(&rotation.path)).is_err() {
            return;
        }
        if let (Ok(file), Ok(mut sink)) = (open_append(&rotation.path), self.sink.write()) {
            *sink = FifoLogger::with_file(file);
        }
    }
}

impl Log for ShimLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        wanted(metadata.target(), metadata.level(), log::max_level())
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if let Ok(sink) = self.sink.read() {
            sink.log(record);
        }
        if let Some(rotation) = &self.rotation {
            self.rotate_if_large(rotation);
        }
    }

    fn flush(&self) {
        if let Ok(sink) = self.sink.read() {
            sink.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;

    #[test]
    fn other_crates_stay_at_info_under_debug() {
        assert!(wanted(
            "wasishim_shim::service",
            Level::Debug,
            LevelFilter::Debug
        ));
        assert!(wanted("wasishim_engine", Level::Debug, LevelFilter::Debug));
        assert!(wanted(
            "containerd_shim::asynchronous",
            Level::Debug,
            LevelFilter::Debug
        ));
        assert!(!wanted(
            "cranelift_codegen::timing",
            Level::Debug,
            LevelFilter::Debug
        ));
        assert!(!wanted(
            "wasmtime::runtime",
            Level::Debug,
            LevelFilter::Debug
        ));
        assert!(wanted("wasmtime::runtime", Level::Warn, LevelFilter::Debug));
        assert!(!wanted(
            "wasishim_shim::service",
            Level::Debug,
            LevelFilter::Info
        ));
    }

    #[test]
    fn rotated_name_appends_one() {
        assert_eq!(
            rotated(Path::new("/run/x/abc.log")),
            PathBuf::from("/run/x/abc.log.1")
        );
    }

    #[test]
    fn node_log_is_named_after_the_socket() {
        assert_eq!(
            node_log_path("unix:///run/containerd/s/abcd"),
            Path::new(NODE_LOG_DIR).join("abcd.log")
        );
    }
}
