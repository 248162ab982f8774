//! Files replaced whole, for state that readers (another process, the next
//! start) must never see half written; and the error of a failed file
//! operation, which names the operation and the file.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// "cannot <action> <path>: <cause>": an I/O failure on a named file or
/// directory, its cause kept as the source. The error enums of gantry-core
/// and gantry-agent hold it as their `Io` variant.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// For `map_err`: the failure to `action` `path`, as any error that
    /// holds a `FileError`.
    pub fn of<E: From<FileError>>(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> E {
        let path = path.into();
        move |source| {
            E::from(FileError {
                action,
                path,
                source,
            })
        }
    }
}

/// Writes `contents` so that a reader sees the old file or the new one, never
/// half of it: a temporary file made with `mode` in the same directory,
/// synced, then renamed over `path`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_with(path, contents, mode, |_| Ok(()))
}

/// [`write_atomic`], with `prepare` run on the new, still empty temporary
/// file before any byte is written: to give it its owner, say.
pub fn write_atomic_with(
    path: &Path,
    contents: &[u8],
    mode: u32,
    prepare: impl FnOnce(&std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    // Unique within this process (a counter) and across restarts of the
    // same pid (the clock's nanoseconds).
    static WRITES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nth = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.{}.{nth}.{nanos}.tmp", std::process::id()));
    // A new file (never a leftover, never a planted link), so it has `mode`.
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            prepare(&f)?;
            f.write_all(contents)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_with_the_mode_asked_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"new", 0o600).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        write_atomic(&path, b"newer", 0o600).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "newer");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }
}
