//! Content-addressed artifacts: the files a release runs from.
//!
//! A [`BlobStore`] keeps each file's bytes once, under the sha256 of those
//! bytes. An artifact (a sorted list of path, digest, size and mode, itself
//! named by a digest) is what the CLI's scan of a project sends
//! (`gantry_core::artifact::scan`); [`materialize`] turns one back into a
//! directory, atomically.
//!
//! It must never let a wrong byte in: a blob is renamed into place only after
//! its content hashed to the digest it was sent under, and a digest or a path
//! that came over the network is validated before it touches the filesystem
//! (no `..`, no absolute paths, no setuid bits).
//!
//! Choices a caller should know:
//!
//! - A digest is 64 lowercase hex characters, without an algorithm prefix.
//! - Blobs are stored read-only (0444) and materialized trees are read-only
//!   too: a file gets its recorded permission bits minus the write bits. Files
//!   are hard links to the blob store (as in the Nix store), so a service that
//!   could write to its own code would corrupt every release sharing the
//!   blob; read-only files make that an error instead (`EACCES`), though not
//!   for root, and not for an owner that chmods on purpose. A release tree is
//!   immutable; services write to their data directory. Where the mode is not
//!   0444 a per-mode read-only copy of the blob (`<digest>.<octal mode>`, say
//!   `.555` for an executable) is linked instead, since a mode belongs to the
//!   inode all its links share.
//! - Empty directories are not part of an artifact.

mod blobs;
mod materialize;
mod partial;

use std::io;
use std::path::{Path, PathBuf};

use gantry_core::agent_api::ArtifactFile;
use gantry_core::file::FileError;

pub use blobs::BlobStore;
pub use materialize::materialize;
pub use partial::Received;

/// The file in a materialized tree naming the artifact it holds; not part
/// of the artifact.
pub const MARKER: &str = ".gantry-artifact";

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(transparent)]
    Io(#[from] FileError),
    #[error("`{digest}` is not a sha256 digest (64 lowercase hex characters)")]
    InvalidDigest { digest: String },
    #[error("content hashes to {actual}, not the expected {expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error(
        "the upload of blob {digest} named offset {offset}, but the agent holds {held} bytes of it"
    )]
    OffsetMismatch {
        digest: String,
        offset: u64,
        held: u64,
    },
    #[error(
        "the upload of blob {digest} stopped after {held} bytes (kept, to resume from): {source}"
    )]
    Interrupted {
        digest: String,
        held: u64,
        #[source]
        source: io::Error,
    },
    #[error("blob {digest} is being uploaded by another request")]
    UploadInProgress { digest: String },
    #[error("the upload of blob {digest} was stopped: {source}")]
    NoRoom {
        digest: String,
        #[source]
        source: crate::disk::NoRoom,
    },
    #[error("artifact {recorded} does not match its file list, which hashes to {computed}")]
    ManifestMismatch { recorded: String, computed: String },
    #[error("{} blob(s) missing from the blob store: {}", digests.len(), digests.join(", "))]
    MissingBlobs { digests: Vec<String> },
    #[error("artifact path `{path}` {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{path} exists and does not hold artifact {expected}{}", found.as_ref().map(|f| format!(" (it holds {f})")).unwrap_or_default())]
    DestinationExists {
        path: PathBuf,
        expected: String,
        found: Option<String>,
    },
}

impl ArtifactError {
    /// What went wrong, as a short name for tests to match on.
    #[cfg(test)]
    pub fn code(&self) -> &'static str {
        match self {
            ArtifactError::Io(_) => "artifact.io_failed",
            ArtifactError::InvalidDigest { .. } => "artifact.invalid_digest",
            ArtifactError::DigestMismatch { .. } | ArtifactError::ManifestMismatch { .. } => {
                "artifact.digest_mismatch"
            }
            ArtifactError::MissingBlobs { .. } => "artifact.missing_blobs",
            ArtifactError::OffsetMismatch { .. } => "artifact.offset_mismatch",
            ArtifactError::Interrupted { .. } => "artifact.interrupted",
            ArtifactError::InvalidPath { .. } => "artifact.invalid_path",
            ArtifactError::DestinationExists { .. } => "artifact.destination_exists",
            ArtifactError::UploadInProgress { .. } => "artifact.upload_in_progress",
            ArtifactError::NoRoom { .. } => "artifact.no_room",
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            ArtifactError::DigestMismatch { .. } => {
                Some("the upload was corrupted or truncated; send it again".to_owned())
            }
            ArtifactError::MissingBlobs { .. } => {
                Some("upload the missing blobs, then retry".to_owned())
            }
            ArtifactError::OffsetMismatch { held, .. } => Some(format!(
                "resume from offset {held} (POST /v1/blobs/missing reports it), or send the whole blob"
            )),
            ArtifactError::Interrupted { held, .. } => Some(format!(
                "send the rest with PUT /v1/blobs/<digest>?offset={held}"
            )),
            ArtifactError::UploadInProgress { .. } => Some(
                "wait for it to end (POST /v1/blobs/missing lists it under `uploading`), then resume from what it left"
                    .to_owned(),
            ),
            ArtifactError::NoRoom { .. } => Some(
                "free space on the host's disk, or send a smaller artifact"
                    .to_owned(),
            ),
            ArtifactError::DestinationExists { path, .. } => Some(format!(
                "remove {} or materialize somewhere else",
                path.display()
            )),
            _ => None,
        }
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArtifactError {
    FileError::of(action, path)
}

/// An artifact's digest: the sha256 of its files sorted by path, one line
/// each of `path NUL digest NUL mode-in-octal LF`. The one definition; call
/// this rather than re-deriving it.
pub fn artifact_digest(files: &[ArtifactFile]) -> String {
    // One definition, shared with the CLI that computes it before uploading.
    gantry_core::artifact::tree_digest(files)
}

#[cfg(test)]
mod tests;
