//! Uploads that survive a broken connection. The bytes of a blob being
//! uploaded go to `root/partial/<digest>` as they arrive, hashed on the way;
//! the file is renamed into the store only when the whole of it hashes to its
//! digest, and removed when it does not. An upload cut off halfway leaves the
//! partial file, and the next upload of that blob continues at its end
//! (`offset`): the bytes already there are hashed again first, so a resumed
//! blob is checked in full like any other.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::blobs::{BLOB_MODE, BlobStore, sync_dir};
use super::{ArtifactError, io_error};
use crate::disk;
use gantry_core::artifact::hex;

/// The digests being uploaded right now: one upload of a blob at a time, so
/// a retry never appends beside a request the agent is still reading. A
/// second upload of a digest is refused at once rather than kept waiting
/// (each waiting upload would hold a thread and a connection).
#[derive(Debug, Default)]
pub(super) struct Uploads {
    active: Mutex<HashSet<String>>,
}

/// Holds a digest's upload slot until dropped.
struct Slot<'a> {
    uploads: &'a Uploads,
    digest: String,
}

impl Uploads {
    fn is_active(&self, digest: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(digest)
    }

    /// The digest's slot, or None while another upload of it holds it.
    fn take(&self, digest: &str) -> Option<Slot<'_>> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.insert(digest.to_owned()).then(|| Slot {
            uploads: self,
            digest: digest.to_owned(),
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut active = self
            .uploads
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        active.remove(&self.digest);
    }
}

/// What an upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes read from this upload's body.
    pub received: u64,
    /// The blob's whole size, as stored.
    pub size: u64,
    /// The store held the blob already; the body was not read.
    pub already_stored: bool,
}

impl BlobStore {
    /// Where an interrupted upload of `digest` keeps the bytes that arrived.
    fn partial_path(&self, digest: &str) -> Result<PathBuf, ArtifactError> {
        // Checks the digest's form before it becomes part of a path.
        self.path(digest)?;
        Ok(self.root().join("partial").join(digest))
    }

    /// Whether an upload of `digest` is being received right now.
    pub fn uploading(&self, digest: &str) -> bool {
        self.uploads.is_active(digest)
    }

    /// How many bytes of `digest` an interrupted upload left (None: none, or
    /// the store holds the whole blob).
    pub fn partial(&self, digest: &str) -> Option<u64> {
        if self.has(digest) {
            return None;
        }
        let path = self.partial_path(digest).ok()?;
        fs::metadata(path)
            .ok()
            .filter(|m| m.is_file() && m.len() > 0)
            .map(|m| m.len())
    }

    /// Receives the bytes of blob `digest` from `offset` on, as `reader`
    /// yields them, after the `offset` bytes an earlier upload left; when the
    /// reader ends, checks the whole blob against its digest and stores it.
    ///
    /// - `offset` 0 starts afresh (whatever partial copy there was goes);
    ///   another offset must be exactly the size of the partial copy, else
    ///   `OffsetMismatch` says how much there is.
    /// - A reader that fails (the connection broke) keeps what arrived, for
    ///   the next upload to resume from: `Interrupted` says how much.
    /// - A blob that does not hash to its digest is removed: `DigestMismatch`.
    /// - Bytes that would leave the disk less free than [`disk::reserve`]
    ///   are not written, and what arrived is removed: `NoRoom`.
    ///
    /// One upload of a digest at a time (another is refused with
    /// `UploadInProgress`); other digests go in parallel.
    pub fn receive(
        &self,
        digest: &str,
        offset: u64,
        mut reader: impl Read,
    ) -> Result<Received, ArtifactError> {
        let target = self.path(digest)?;
        let path = self.partial_path(digest)?;
        if target.is_file() {
            return Ok(stored(&target));
        }
        let Some(_slot) = self.uploads.take(digest) else {
            return Err(ArtifactError::UploadInProgress {
                digest: digest.to_owned(),
            });
        };
        // The upload that held the slot may have just stored it.
        if target.is_file() {
            return Ok(stored(&target));
        }
        let dir = self.root().join("partial");
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let no_room = |source| ArtifactError::NoRoom {
            digest: digest.to_owned(),
            source,
        };
        disk::room_for(&dir, 0)
            .map_err(io_error("measure the free space of", &dir))?
            .map_err(no_room)?;
        let mut hasher = Sha256::new();
        let mut file = if offset == 0 {
            File::create(&path).map_err(io_error("create", &path))?
        } else {
            let held = fs::metadata(&path).map_or(0, |m| m.len());
            if held != offset {
                return Err(ArtifactError::OffsetMismatch {
                    digest: digest.to_owned(),
                    offset,
                    held,
                });
            }
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_error("open", &path))?;
            copy_hashing(&mut file, &mut hasher, None)
                .map_err(|e| io_error("read", &path)(e.into()))?;
            file.seek(SeekFrom::End(0))
                .map_err(io_error("read", &path))?;
            file
        };
        let mut room = |written| {
            disk::room_for(&dir, written)
                .map_err(io_error("measure the free space of", &dir))?
                .map_err(no_room)
        };
        let received = match copy_hashing(&mut reader, &mut hasher, Some((&mut file, &mut room))) {
            Ok(n) => n,
            Err(Copy::Read(source, n)) => {
                return Err(ArtifactError::Interrupted {
                    digest: digest.to_owned(),
                    held: offset + n,
                    source,
                });
            }
            Err(Copy::Write(e)) => {
                let _ = fs::remove_file(&path);
                return Err(io_error("write", &path)(e));
            }
            // The bytes could never all fit: keeping them would only hold
            // the space.
            Err(Copy::Full(e)) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        let actual = hex(&hasher.finalize());
        if actual != digest {
            let _ = fs::remove_file(&path);
            return Err(ArtifactError::DigestMismatch {
                expected: digest.to_owned(),
                actual,
            });
        }
        file.set_permissions(fs::Permissions::from_mode(BLOB_MODE))
            .map_err(io_error("set the mode of", &path))?;
        file.sync_all().map_err(io_error("sync", &path))?;
        drop(file);
        let blob_dir = target.parent().unwrap_or(self.root());
        fs::create_dir_all(blob_dir).map_err(io_error("create", blob_dir))?;
        // Same bytes as anything already there, so replacing is harmless.
        fs::rename(&path, &target).map_err(io_error("store", &target))?;
        sync_dir(blob_dir)?;
        Ok(Received {
            received,
            size: offset + received,
            already_stored: false,
        })
    }
}

/// The store's answer to an upload of a blob it holds.
fn stored(target: &std::path::Path) -> Received {
    Received {
        received: 0,
        size: fs::metadata(target).map_or(0, |m| m.len()),
        already_stored: true,
    }
}

enum Copy {
    /// The source failed after this many bytes went through.
    Read(io::Error, u64),
    Write(io::Error),
    /// Writing on would leave the disk less free than the agent keeps.
    Full(ArtifactError),
}

impl From<Copy> for io::Error {
    fn from(error: Copy) -> io::Error {
        match error {
            Copy::Read(e, _) | Copy::Write(e) => e,
            Copy::Full(e) => io::Error::other(e.to_string()),
        }
    }
}

/// How many bytes are written between two looks at the disk's free space.
const ROOM_EVERY: u64 = 8 * 1024 * 1024;

/// A file to write what is read into, and what says whether the disk has
/// room for the next bytes.
type Sink<'a> = (
    &'a mut File,
    &'a mut dyn FnMut(u64) -> Result<(), ArtifactError>,
);

/// Reads `reader` to its end into `hasher` (and `sink`, asking it for room
/// before each [`ROOM_EVERY`] bytes); the bytes read.
fn copy_hashing(
    reader: &mut impl Read,
    hasher: &mut Sha256,
    mut sink: Option<Sink<'_>>,
) -> Result<u64, Copy> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut room_until = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e, total)),
        };
        hasher.update(&buffer[..n]);
        if let Some((file, room)) = sink.as_mut() {
            if total + n as u64 > room_until {
                room(ROOM_EVERY).map_err(Copy::Full)?;
                room_until = total + ROOM_EVERY;
            }
            file.write_all(&buffer[..n]).map_err(Copy::Write)?;
        }
        total += n as u64;
    }
}
