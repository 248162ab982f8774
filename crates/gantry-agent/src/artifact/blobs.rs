//! The blob store: file contents by sha256, written once, read-only.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::partial::Uploads;
use super::{ArtifactError, io_error};
use gantry_core::artifact::hex;

/// The mode of a blob in the store.
pub(super) const BLOB_MODE: u32 = 0o444;

/// Blobs by digest, at `root/sha256/<first 2 hex>/<hex>`, read-only. Copies
/// are staged in `root/tmp`, uploads in `root/partial` (same filesystem, so
/// renames are atomic). Clones share the store and its upload slots.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
    pub(super) uploads: Arc<Uploads>,
    /// When `missing` last found each blob present: a deploy about to come
    /// counts on it, so retention spares it a while.
    found: Arc<Mutex<HashMap<String, Instant>>>,
}

/// The most blobs [`BlobStore`] remembers as found before it forgets those
/// found longest ago.
const FOUND_MAX: usize = 100_000;

impl BlobStore {
    /// A store rooted at `root`; directories are created on first write.
    pub fn new(root: impl Into<PathBuf>) -> BlobStore {
        BlobStore {
            root: root.into(),
            uploads: Arc::default(),
            found: Arc::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives, whether or not it is there.
    pub fn path(&self, digest: &str) -> Result<PathBuf, ArtifactError> {
        check_digest(digest)?;
        Ok(self.root.join("sha256").join(&digest[..2]).join(digest))
    }

    /// Whether the store holds this blob. False for a malformed digest.
    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    /// Which of `digests` the store lacks, each once, in the order given. A
    /// malformed digest is reported missing (its upload will be refused).
    /// Each one present is remembered as found now (see
    /// [`BlobStore::found_within`]), for the deploy that asked.
    pub fn missing<I>(&self, digests: I) -> Vec<String>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut seen = HashSet::new();
        let mut present = Vec::new();
        let missing = digests
            .into_iter()
            .map(|d| d.as_ref().to_owned())
            .filter(|d| {
                let has = self.has(d);
                if has {
                    present.push(d.clone());
                }
                !has && seen.insert(d.clone())
            })
            .collect();
        let now = Instant::now();
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        if found.len() + present.len() > FOUND_MAX {
            let mut ages: Vec<Instant> = found.values().copied().collect();
            ages.sort_unstable();
            if let Some(cut) = ages.get(ages.len() / 2).copied() {
                found.retain(|_, at| *at > cut);
            }
        }
        found.extend(present.into_iter().map(|d| (d, now)));
        missing
    }

    /// Whether `missing` found this blob present within `grace`.
    pub fn found_within(&self, digest: &str, grace: Duration) -> bool {
        let found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        found.get(digest).is_some_and(|at| at.elapsed() < grace)
    }

    /// Stores the bytes `reader` yields under `expected`, after checking that
    /// they hash to it. On a mismatch or a read error nothing is left behind.
    /// Concurrent puts of one blob are safe: the first rename wins and the
    /// others, holding the same bytes, are dropped. (Uploads arrive through
    /// [`BlobStore::receive`]; tests fill a store with this.)
    #[cfg(test)]
    pub fn put(&self, reader: impl Read, expected: &str) -> Result<(), ArtifactError> {
        let target = self.path(expected)?;
        if target.is_file() {
            return Ok(());
        }
        let (staged, actual, _) = self.stage(reader)?;
        if actual != expected {
            return Err(ArtifactError::DigestMismatch {
                expected: expected.to_owned(),
                actual,
            });
        }
        install(staged, &target)
    }

    /// Stores a file's content and returns its digest and size. A file the
    /// store already holds is hashed but not copied.
    #[cfg(test)]
    pub fn put_file(&self, path: &Path) -> Result<(String, u64), ArtifactError> {
        let file = File::open(path).map_err(io_error("open", path))?;
        let (digest, size) = hash(file).map_err(io_error("read", path))?;
        if !self.has(&digest) {
            let file = File::open(path).map_err(io_error("open", path))?;
            // Checked again while copying: the file may change in between.
            self.put(file, &digest)?;
        }
        Ok((digest, size))
    }

    /// Copies `reader` into a read-only temporary file in `root/tmp`,
    /// returning it with the digest and size of what was written.
    fn stage(
        &self,
        mut reader: impl Read,
    ) -> Result<(tempfile::NamedTempFile, String, u64), ArtifactError> {
        let dir = self.root.join("tmp");
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let mut staged =
            tempfile::NamedTempFile::new_in(&dir).map_err(io_error("create a file in", &dir))?;
        let path = staged.path().to_path_buf();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error("read the upload for", &path)(e)),
            };
            let chunk = &buffer[..n];
            hasher.update(chunk);
            staged.write_all(chunk).map_err(io_error("write", &path))?;
            size += n as u64;
        }
        let file = staged.as_file();
        file.set_permissions(fs::Permissions::from_mode(BLOB_MODE))
            .map_err(io_error("set the mode of", &path))?;
        file.sync_all().map_err(io_error("sync", &path))?;
        Ok((staged, hex(&hasher.finalize()), size))
    }

    /// A path to hard-link for a file of this digest and mode: the blob
    /// itself, or a read-only copy with the mode's read and execute bits.
    pub(super) fn linkable(&self, digest: &str, mode: u32) -> Result<PathBuf, ArtifactError> {
        let blob = self.path(digest)?;
        let mode = read_only(mode);
        if mode == BLOB_MODE {
            return Ok(blob);
        }
        let variant = blob.with_file_name(format!("{digest}.{mode:o}"));
        if variant.is_file() {
            return Ok(variant);
        }
        let source = File::open(&blob).map_err(io_error("open", &blob))?;
        let (staged, actual, _) = self.stage(source)?;
        if actual != digest {
            return Err(ArtifactError::DigestMismatch {
                expected: digest.to_owned(),
                actual,
            });
        }
        staged
            .as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("set the mode of", staged.path()))?;
        install(staged, &variant)?;
        Ok(variant)
    }
}

/// Renames a staged file to `target` unless a file is already there (the same
/// bytes, put concurrently), then syncs the directory so the name survives.
fn install(staged: tempfile::NamedTempFile, target: &Path) -> Result<(), ArtifactError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    match staged.persist_noclobber(target) {
        Ok(_) => {}
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error("store", target)(e.error)),
    }
    sync_dir(dir)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), ArtifactError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync", dir))
}

/// The mode bits a materialized file gets: read and execute only.
pub(super) fn read_only(mode: u32) -> u32 {
    mode & 0o555
}

fn check_digest(digest: &str) -> Result<(), ArtifactError> {
    let valid = digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ArtifactError::InvalidDigest {
            digest: digest.to_owned(),
        })
    }
}

#[cfg(test)]
pub(super) fn hash(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buffer[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((hex(&hasher.finalize()), size))
}
