//! Artifact to directory: hard links from the blob store, renamed into place.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use gantry_core::agent_api::{Artifact, ArtifactFile};

use super::blobs::{BLOB_MODE, read_only, sync_dir};
use super::{ArtifactError, BlobStore, MARKER, artifact_digest, io_error};

/// Builds `artifact`'s tree at `dest` from the blob store: in a temporary
/// directory beside `dest`, renamed into place once complete, so `dest` is
/// either absent or whole. If `dest` already holds this artifact (its
/// [`MARKER`] names the digest) it is reused as is; if it holds anything
/// else, that is an error and it is left alone.
pub fn materialize(
    artifact: &Artifact,
    blobs: &BlobStore,
    dest: &Path,
) -> Result<(), ArtifactError> {
    let computed = artifact_digest(&artifact.files);
    if computed != artifact.digest {
        return Err(ArtifactError::ManifestMismatch {
            recorded: artifact.digest.clone(),
            computed,
        });
    }
    check_paths(&artifact.files)?;
    if holds(dest, &artifact.digest)? {
        return Ok(());
    }
    let missing = blobs.missing(artifact.files.iter().map(|f| f.digest.as_str()));
    if !missing.is_empty() {
        return Err(ArtifactError::MissingBlobs { digests: missing });
    }

    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempdir_in(parent)
        .map_err(io_error("create a directory in", parent))?;
    let tree = staging.path();
    for file in &artifact.files {
        let target = tree.join(&file.path);
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        }
        let source = blobs.linkable(&file.digest, file.mode)?;
        if fs::hard_link(&source, &target).is_err() {
            // Another filesystem, or too many links: a copy does as well.
            copy_read_only(&source, &target, read_only(file.mode))?;
        }
    }
    let marker = tree.join(MARKER);
    let mut marker_file = File::create(&marker).map_err(io_error("create", &marker))?;
    marker_file
        .write_all(artifact.digest.as_bytes())
        .and_then(|()| marker_file.set_permissions(fs::Permissions::from_mode(BLOB_MODE)))
        .and_then(|()| marker_file.sync_all())
        .map_err(io_error("write", &marker))?;
    // The staging directory is private (0700); the tree is for services to read.
    fs::set_permissions(tree, fs::Permissions::from_mode(0o755))
        .map_err(io_error("set the mode of", tree))?;

    match fs::rename(tree, dest) {
        Ok(()) => {
            // The staged path is gone (it is `dest` now): nothing to clean up.
            let _ = staging.keep();
            sync_dir(parent)
        }
        // Someone materialized the same artifact at the same time and won.
        Err(_) if holds(dest, &artifact.digest)? => Ok(()),
        Err(e) => match e.kind() {
            io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty => {
                Err(ArtifactError::DestinationExists {
                    path: dest.to_path_buf(),
                    expected: artifact.digest.clone(),
                    found: None,
                })
            }
            _ => Err(io_error("rename into", dest)(e)),
        },
    }
}

/// Whether `dest` holds the artifact `digest`: `Ok(false)` when `dest` is
/// absent, an error when it holds something else.
fn holds(dest: &Path, digest: &str) -> Result<bool, ArtifactError> {
    if !dest.exists() {
        return Ok(false);
    }
    let found = fs::read_to_string(dest.join(MARKER))
        .ok()
        .map(|text| text.trim().to_owned());
    if found.as_deref() == Some(digest) {
        return Ok(true);
    }
    Err(ArtifactError::DestinationExists {
        path: dest.to_path_buf(),
        expected: digest.to_owned(),
        found,
    })
}

fn copy_read_only(source: &Path, target: &Path, mode: u32) -> Result<(), ArtifactError> {
    fs::copy(source, target).map_err(io_error("copy to", target))?;
    let file = File::open(target).map_err(io_error("open", target))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", target))
}

/// File paths from the network: relative, `/`-separated, no `.` or `..`, no
/// empty components, unique, no file where another needs a directory, and
/// not the marker.
fn check_paths(files: &[ArtifactFile]) -> Result<(), ArtifactError> {
    let invalid = |path: &str, reason| ArtifactError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let mut paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    paths.sort_unstable();
    for path in &paths {
        if path.is_empty() || path.starts_with('/') {
            return Err(invalid(path, "must be a relative path"));
        }
        if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'))
        {
            return Err(invalid(path, "has an empty, `.` or `..` component"));
        }
        if *path == MARKER {
            return Err(invalid(path, "is reserved for the artifact marker"));
        }
    }
    for pair in paths.windows(2) {
        if pair[0] == pair[1] {
            return Err(invalid(pair[0], "is listed twice"));
        }
    }
    // A file `a` and a file `a/b` cannot both exist. Sorting puts `a` before
    // `a/b` but `a.txt` between them, so check every prefix.
    let set: std::collections::HashSet<&str> = paths.iter().copied().collect();
    for path in &paths {
        for (i, _) in path.match_indices('/') {
            if set.contains(&path[..i]) {
                return Err(invalid(path, "is inside a path that is a file"));
            }
        }
    }
    Ok(())
}
