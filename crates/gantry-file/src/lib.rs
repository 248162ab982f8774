//! Files replaced whole and durably, for state that readers (another
//! process, the next start, the same process after a crash) must see as the
//! old file or the new one, never half of it; and the error of a failed file
//! operation, which names the operation and the file.
//!
//! The proxy depends on no other Gantry crate, and the agent and the CLI
//! write state too: this crate is the one home of both for all of them.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// "cannot <action> <path>: <cause>": an I/O failure on a named file or
/// directory. The cause is in the message, so it is not also given as the
/// error's source (a printer that walks sources would say it twice).
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {cause}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    pub cause: std::io::Error,
}

impl FileError {
    /// For `map_err`: the failure to `action` `path`.
    pub fn at(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> FileError {
        Self::of(action, path)
    }

    /// For `map_err`: the failure to `action` `path`, as any error that
    /// holds a `FileError` (or as the `FileError` itself).
    pub fn of<E: From<FileError>>(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> E {
        let path = path.into();
        move |cause| {
            E::from(FileError {
                action,
                path,
                cause,
            })
        }
    }
}

/// Writes `contents` so that a reader sees the old file or the new one, never
/// half of it: a new temporary file made with `mode` in the same directory,
/// synced, renamed over `path`, and the directory synced so that the rename
/// outlives a crash.
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
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    // Unique within this process (a counter), so two writers of one file
    // never share a temporary, and across restarts of the same pid (the
    // clock's nanoseconds).
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
    result?;
    std::fs::File::open(dir).and_then(|d| d.sync_all())
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

    /// Threads writing one file at once each write a whole file of their
    /// own: the last rename wins, and no write is mixed into another's.
    #[test]
    fn concurrent_writers_of_one_file_never_mix_their_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("routes.json");
        std::thread::scope(|scope| {
            for n in 0..8u8 {
                let path = &path;
                scope.spawn(move || {
                    let contents = vec![b'a' + n; 64 * 1024];
                    for _ in 0..20 {
                        write_atomic(path, &contents, 0o600).expect("write");
                    }
                });
            }
        });
        let written = std::fs::read(&path).expect("read");
        assert_eq!(written.len(), 64 * 1024);
        assert!(written.iter().all(|b| *b == written[0]), "mixed contents");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    #[test]
    fn a_failed_write_names_the_operation_and_the_file_and_leaves_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old", 0o600).expect("write");
        let missing = dir.path().join("no-such-dir").join("state.json");
        let error: FileError = write_atomic(&missing, b"new", 0o600)
            .map_err(FileError::of("write", &missing))
            .expect_err("no directory");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("cannot write {}: ", missing.display())),
            "{message}"
        );
        assert!(std::error::Error::source(&error).is_none());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "old");
    }
}
