//! Attachment contents, stored once each under their SHA-256 on disk:
//! `<dir>/ab/abcdef...`. A file is streamed in (hashed as it is written to
//! a new temporary file, refused past the limit, then renamed into place,
//! or dropped when an equal file is there already) and streamed out; memory
//! stays bounded whatever the size. Files are 0600 in 0700 directories:
//! no other local user reads them. Nothing here knows what an item is.
//!
//! Files on disk rather than in the database (bytea on PostgreSQL): both
//! backends share one code path and its tests, a 25 MB file never sits
//! whole in memory (the blocking PostgreSQL client reads a bytea whole),
//! and the database and its backups stay small. The cost: several hubs on
//! one PostgreSQL database need one shared attachments directory.

use std::path::{Path, PathBuf};

use gantry_core::artifact::hex;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::HubError;

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
        let tmp = tmp_dir.join(format!("upload-{}", hex(&rand::random::<[u8; 12]>())));
        let written = write(&tmp, body, limit).await;
        let blob = match written {
            Ok(blob) => blob,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let Some(path) = self.path(&blob.sha256) else {
            return Err(HubError::Internal("a digest is not hex".to_owned()));
        };
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Ok(blob);
        }
        if let Some(parent) = path.parent() {
            create_private_dir(parent).await?;
        }
        tokio::fs::rename(&tmp, &path).await.map_err(io(format!(
            "store an attachment in {}",
            self.root.display()
        )))?;
        Ok(blob)
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

/// Writes `body` to `tmp`, a new file only its owner may read (never a
/// leftover or a planted link), hashing it; refuses more than `limit` bytes.
async fn write(tmp: &Path, body: axum::body::Body, limit: u64) -> Result<Blob, HubError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .await
        .map_err(io(format!("create {}", tmp.display())))?;
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
