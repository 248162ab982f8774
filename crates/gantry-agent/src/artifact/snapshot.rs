//! Directory to artifact: walk, ignore, hash into the blob store.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gantry_core::agent_api::{Artifact, ArtifactFile};

use super::ignore::Ignore;
use super::{ALWAYS_IGNORED, ArtifactError, BlobStore, MARKER, artifact_digest, io_error};

/// Snapshots a directory into the blob store. See the module docs for what
/// is skipped and how symlinks are treated.
pub fn snapshot(dir: &Path, blobs: &BlobStore) -> Result<Artifact, ArtifactError> {
    let root = fs::canonicalize(dir).map_err(io_error("resolve", dir))?;
    let ignore = Ignore::load(&root)?;
    let mut files = Vec::new();
    walk(&root, &root, "", &ignore, blobs, &mut files)?;
    files.sort();
    Ok(Artifact {
        digest: artifact_digest(&files),
        files,
    })
}

/// Snapshots a declared artifact path: a directory as [`snapshot`] does, a
/// single file as an artifact of that one file under its own name.
pub fn snapshot_path(path: &Path, blobs: &BlobStore) -> Result<Artifact, ArtifactError> {
    let meta = fs::metadata(path).map_err(io_error("read", path))?;
    if meta.is_dir() {
        return snapshot(path, blobs);
    }
    if !meta.is_file() {
        return Err(ArtifactError::NotFileOrDirectory {
            path: path.to_path_buf(),
        });
    }
    let name =
        path.file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ArtifactError::NonUtf8Path {
                path: path.to_path_buf(),
            })?;
    let files = vec![file_entry(path, name.to_owned(), &meta, blobs)?];
    Ok(Artifact {
        digest: artifact_digest(&files),
        files,
    })
}

fn walk(
    root: &Path,
    dir: &Path,
    prefix: &str,
    ignore: &Ignore,
    blobs: &BlobStore,
    files: &mut Vec<ArtifactFile>,
) -> Result<(), ArtifactError> {
    let entries = fs::read_dir(dir).map_err(io_error("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("list", dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(ArtifactError::NonUtf8Path { path });
        };
        if ALWAYS_IGNORED.contains(&name.as_str()) || (prefix.is_empty() && name == MARKER) {
            continue;
        }
        let relative = format!("{prefix}{name}");
        let kind = entry.file_type().map_err(io_error("read", &path))?;
        if kind.is_dir() {
            if !ignore.matches(&relative, true) {
                walk(root, &path, &format!("{relative}/"), ignore, blobs, files)?;
            }
        } else if ignore.matches(&relative, false) {
            continue;
        } else if kind.is_file() {
            let meta = fs::metadata(&path).map_err(io_error("read", &path))?;
            files.push(file_entry(&path, relative, &meta, blobs)?);
        } else if kind.is_symlink() {
            let target = resolve_link(root, &path)?;
            let meta = fs::metadata(&target).map_err(io_error("read", &target))?;
            files.push(file_entry(&target, relative, &meta, blobs)?);
        }
    }
    Ok(())
}

/// The file a symlink stands for, if it is a file inside `root`.
fn resolve_link(root: &Path, link: &Path) -> Result<PathBuf, ArtifactError> {
    let problem = |problem| ArtifactError::Symlink {
        path: link.to_path_buf(),
        problem,
    };
    let target = fs::canonicalize(link).map_err(|_| problem("points to nothing"))?;
    if !target.starts_with(root) {
        return Err(problem("points outside the artifact"));
    }
    match fs::metadata(&target) {
        Ok(meta) if meta.is_file() => Ok(target),
        Ok(meta) if meta.is_dir() => Err(problem("points to a directory")),
        _ => Err(problem("points to neither a file nor a directory")),
    }
}

fn file_entry(
    path: &Path,
    relative: String,
    meta: &fs::Metadata,
    blobs: &BlobStore,
) -> Result<ArtifactFile, ArtifactError> {
    let (digest, size) = blobs.ingest(path)?;
    Ok(ArtifactFile {
        path: relative,
        digest,
        size,
        mode: meta.mode() & 0o777,
    })
}
