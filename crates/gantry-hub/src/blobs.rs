//! Attachment contents, stored once each under their SHA-256 on disk:
//! `<dir>/ab/abcdef...`. A file is streamed in (hashed as it is written to
//! a new temporary file, refused past the limit, then renamed into place,
//! over an equal file if one is there) and streamed out; memory stays
//! bounded whatever the size. Files are 0600 in 0700 directories: no
//! other local user reads them. Nothing here knows what an item is.
//!
//! A temporary file never outlives its upload: it goes however the upload
//! ends (refused, failed, or its future dropped when the request runs out
//! of time or the hub stops), unless it was renamed into place. What a
//! killed hub left behind is swept by [`BlobDir::sweep_abandoned`]; a file
//! in place that no attachment names (an upload stopped before its row was
//! written) by the sweep of unnamed files, which lists them with
//! [`BlobDir::idle_files`] and removes them with [`BlobDir::remove_idle`].
//!
//! Files on disk rather than in the database (bytea on PostgreSQL): both
//! backends share one code path and its tests, a 25 MB file never sits
//! whole in memory (the blocking PostgreSQL client reads a bytea whole),
//! and the database and its backups stay small. The cost: several hubs on
//! one PostgreSQL database need one shared attachments directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_core::artifact::hex;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use crate::error::HubError;

/// How long an upload's temporary file, or a stored file no attachment
/// names, may lie untouched before it counts as abandoned: far longer than
/// a request may take (the hub reads a body and writes its row within its
/// request timeout), so an upload in flight on another hub sharing the
/// directory is never taken for one.
const ABANDONED: Duration = Duration::from_secs(3600);

/// A stored file's name and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub sha256: String,
    pub size: u64,
}

#[derive(Clone, Debug)]
pub struct BlobDir {
    root: PathBuf,
    /// Held shared from an upload's first byte until its row is written,
    /// and alone while a file no row names is removed: a file is never
    /// removed under an upload that found it there.
    gate: std::sync::Arc<tokio::sync::RwLock<()>>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> HubError {
    move |source| HubError::Io { what, source }
}

impl BlobDir {
    pub fn new(root: PathBuf) -> BlobDir {
        BlobDir {
            root,
            gate: std::sync::Arc::default(),
        }
    }

    /// Where the file of `sha256` lives; `None` unless it is 64 hex digits.
    fn path(&self, sha256: &str) -> Option<PathBuf> {
        let valid = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| self.root.join(&sha256[..2]).join(sha256))
    }

    /// Streams `body` into the store, at most `limit` bytes.
    pub async fn put(&self, body: axum::body::Body, limit: u64) -> Result<Blob, HubError> {
        create_private_dir(&self.root).await?;
        let tmp_dir = self.root.join("tmp");
        create_private_dir(&tmp_dir).await?;
        let (file, mut tmp) = new_upload(tmp_dir).await?;
        let blob = write(file, &tmp, body, limit).await?;
        let Some(path) = self.path(&blob.sha256) else {
            return Err(HubError::Internal("a digest is not hex".to_owned()));
        };
        // Over an equal file if one is there: the same bytes, and a file as
        // new as this upload, which no sweep of unnamed files takes while
        // its row is being written.
        if let Some(parent) = path.parent() {
            create_private_dir(parent).await?;
        }
        tokio::fs::rename(&tmp, &path).await.map_err(io(format!(
            "store an attachment in {}",
            self.root.display()
        )))?;
        // In place: nothing is left for the guard to remove.
        tmp.disable_cleanup(true);
        Ok(blob)
    }

    /// Removes the temporary files of uploads abandoned by a hub that was
    /// killed mid-way: those untouched for [`ABANDONED`].
    pub async fn sweep_abandoned(&self) -> Result<(), HubError> {
        let tmp_dir = self.root.join("tmp");
        let mut entries = match tokio::fs::read_dir(&tmp_dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(format!("read {}", tmp_dir.display()))(e)),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(io(format!("read {}", tmp_dir.display())))?
        {
            let upload = entry.file_name().to_string_lossy().starts_with("upload-");
            if upload && untouched(&entry.path()).await {
                match tokio::fs::remove_file(entry.path()).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io(format!("remove {}", entry.path().display()))(e));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The digests of the stored files untouched for [`ABANDONED`]; a newer
    /// one may be an upload's whose row is not written yet. Only names of
    /// the store's shape are listed (`ab/ab...`, 64 hex digits).
    pub async fn idle_files(&self) -> Result<Vec<String>, HubError> {
        let mut idle = Vec::new();
        let mut shards = match tokio::fs::read_dir(&self.root).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(idle),
            Err(e) => return Err(io(format!("read {}", self.root.display()))(e)),
        };
        while let Some(shard) = shards
            .next_entry()
            .await
            .map_err(io(format!("read {}", self.root.display())))?
        {
            let name = shard.file_name().to_string_lossy().into_owned();
            if name.len() != 2 || !shard.file_type().await.is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let mut files = tokio::fs::read_dir(shard.path())
                .await
                .map_err(io(format!("read {}", shard.path().display())))?;
            while let Some(file) = files
                .next_entry()
                .await
                .map_err(io(format!("read {}", shard.path().display())))?
            {
                let digest = file.file_name().to_string_lossy().into_owned();
                if self.path(&digest).is_some_and(|p| p == file.path())
                    && untouched(&file.path()).await
                {
                    idle.push(digest);
                }
            }
        }
        Ok(idle)
    }

    /// Removes the file of `sha256` if it is still untouched for
    /// [`ABANDONED`] (an upload of equal bytes since made it new); whether
    /// it was removed.
    pub async fn remove_idle(&self, sha256: &str) -> Result<bool, HubError> {
        let path = self
            .path(sha256)
            .ok_or_else(|| HubError::Internal(format!("stored digest `{sha256}` is not hex")))?;
        if !untouched(&path).await {
            return Ok(false);
        }
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(format!("remove attachment {sha256}"))(e)),
        }
    }

    /// The gate uploads hold shared and removals alone.
    pub fn gate(&self) -> std::sync::Arc<tokio::sync::RwLock<()>> {
        self.gate.clone()
    }

    /// Removes the file of `sha256` (once no attachment names it); one
    /// already gone is no error.
    pub async fn remove(&self, sha256: &str) -> Result<(), HubError> {
        let path = self
            .path(sha256)
            .ok_or_else(|| HubError::Internal(format!("stored digest `{sha256}` is not hex")))?;
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("remove attachment {sha256}"))(e))
            }
            _ => Ok(()),
        }
    }

    /// Opens the file of `sha256` for reading.
    pub async fn open(&self, sha256: &str) -> Result<tokio::fs::File, HubError> {
        let path = self
            .path(sha256)
            .ok_or_else(|| HubError::Internal(format!("stored digest `{sha256}` is not hex")))?;
        tokio::fs::File::open(&path)
            .await
            .map_err(io(format!("read attachment {sha256}")))
    }
}

/// Whether the file at `path` was last written [`ABANDONED`] ago or more;
/// one that cannot be read counts as in use.
async fn untouched(path: &Path) -> bool {
    let idle = match tokio::fs::symlink_metadata(path).await {
        Ok(metadata) => metadata.modified().ok().and_then(|t| t.elapsed().ok()),
        Err(_) => None,
    };
    idle.is_some_and(|idle| idle > ABANDONED)
}

/// Makes `dir` (and what is missing above it) 0700; an existing one that
/// others may enter (an older hub's, or one made by hand) is made 0700 too:
/// attachments are the items' private files, not the machine's.
async fn create_private_dir(dir: &Path) -> Result<(), HubError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder
        .create(dir)
        .await
        .map_err(io(format!("create {}", dir.display())))?;
    let mode = tokio::fs::metadata(dir)
        .await
        .map_err(io(format!("read {}", dir.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(io(format!("make {} private", dir.display())))?;
    }
    Ok(())
}

/// A new temporary file in `dir` only its owner may read (never a leftover
/// or a planted link), and the guard that removes it when dropped.
async fn new_upload(dir: PathBuf) -> Result<(tokio::fs::File, TempPath), HubError> {
    let what = format!("create an upload in {}", dir.display());
    let created = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::PermissionsExt as _;
        tempfile::Builder::new()
            .prefix("upload-")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(&dir)
    })
    .await
    .map_err(|e| HubError::Internal(format!("an upload's task failed: {e}")))?;
    let (file, path) = created.map_err(io(what))?.into_parts();
    Ok((tokio::fs::File::from_std(file), path))
}

/// Writes `body` to `file` (at `tmp`), hashing it; refuses more than
/// `limit` bytes.
async fn write(
    mut file: tokio::fs::File,
    tmp: &Path,
    body: axum::body::Body,
    limit: u64,
) -> Result<Blob, HubError> {
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| HubError::invalid(format!("cannot read the upload: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > limit {
            return Err(HubError::TooLarge {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            });
        }
        hasher.update(&data);
        file.write_all(&data)
            .await
            .map_err(io(format!("write {}", tmp.display())))?;
    }
    file.sync_all()
        .await
        .map_err(io(format!("write {}", tmp.display())))?;
    Ok(Blob {
        sha256: hex(&hasher.finalize()),
        size,
    })
}
