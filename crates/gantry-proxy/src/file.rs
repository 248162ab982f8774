//! Files replaced whole and durably: the saved route table and the ACME
//! state must survive a crash as the old file or the new one. And the error
//! of a failed file operation, which the proxy's error enums hold.
//!
//! gantry-core holds the same helper and error for the rest of Gantry
//! (without the directory sync, and with the cause in the message); the
//! proxy depends on no other Gantry crate, so it keeps its own.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// "cannot <action> <path>": what failed, on which path; the cause is
/// its source.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// For `map_err`: the failure to `action` `path`.
    pub(crate) fn at(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> FileError {
        let path = path.into();
        move |source| FileError {
            action,
            path,
            source,
        }
    }
}

/// Writes `bytes` to `path` through a temporary file made with `mode` in
/// the same directory, synced and renamed over `path`, then syncs the
/// directory so the rename is durable.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(FileError {
            action: "write",
            path: path.to_owned(),
            source,
        });
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| FileError {
            action: "sync",
            path: dir.to_owned(),
            source,
        })
}
