use std::os::unix::fs::PermissionsExt;

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gantry_core::agent_api::{Artifact, ArtifactFile};

use super::blobs::hash;
use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    blobs: BlobStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let blobs = BlobStore::new(root.join("blobs"));
    Fixture {
        _dir: dir,
        root,
        blobs,
    }
}

impl Fixture {
    /// Stores a file named and holding `name` (mode 644); answers its digest.
    fn put(&self, name: &str) -> String {
        let path = self.root.join(name);
        write(&path, name, 0o644);
        self.blobs.put_file(&path).expect("put").0
    }

    /// The snapshot of a tree `src` written with `files` (path, content,
    /// mode).
    fn snapshot_of(&self, files: &[(&str, &str, u32)]) -> Artifact {
        let src = self.root.join("src");
        for (path, content, mode) in files {
            write(&src.join(path), content, *mode);
        }
        snapshot(&src, &self.blobs).expect("snapshot")
    }
}

fn write(path: &Path, content: &str, mode: u32) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).expect("mkdir");
    }
    fs::write(path, content).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A directory as an artifact, its files stored in `blobs`: what the CLI's
/// scan and upload make of it. A materialized tree's marker is not a file of it.
fn snapshot(dir: &Path, blobs: &BlobStore) -> Result<Artifact, ArtifactError> {
    let mut files = Vec::new();
    for (path, _, mode) in tree(dir) {
        if path == MARKER {
            continue;
        }
        let (digest, size) = blobs.put_file(&dir.join(&path))?;
        files.push(ArtifactFile {
            path,
            digest,
            size,
            mode: mode & 0o777,
        });
    }
    files.sort();
    Ok(Artifact {
        digest: artifact_digest(&files),
        files,
    })
}

fn sha(content: &str) -> String {
    hash(content.as_bytes()).expect("hash").0
}

fn paths(artifact: &Artifact) -> Vec<&str> {
    artifact.files.iter().map(|f| f.path.as_str()).collect()
}

/// Every regular file under `dir` (relative path, bytes, permission bits).
fn tree(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("list") {
            let path = entry.expect("entry").path();
            let meta = fs::metadata(&path).expect("stat");
            if meta.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .expect("inside")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, fs::read(&path).expect("read"), meta.mode() & 0o7777));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn digest_is_sha256_in_lowercase_hex() {
    assert_eq!(
        sha("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn put_stores_a_read_only_blob_under_its_digest() {
    let f = fixture();
    let digest = sha("hello");
    assert!(!f.blobs.has(&digest));
    f.blobs.put("hello".as_bytes(), &digest).expect("put");
    assert!(f.blobs.has(&digest));
    let path = f.blobs.path(&digest).expect("path");
    assert_eq!(
        path,
        f.root.join("blobs/sha256").join(&digest[..2]).join(&digest)
    );
    assert_eq!(fs::read_to_string(&path).expect("read"), "hello");
    let mode = fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o444);
    f.blobs
        .put("hello".as_bytes(), &digest)
        .expect("a second put of the same blob is fine");
}

#[test]
fn a_corrupted_upload_is_rejected_and_leaves_no_blob() {
    let f = fixture();
    let expected = sha("the real content");
    let err = f
        .blobs
        .put("the real c0ntent".as_bytes(), &expected)
        .expect_err("wrong digest");
    assert!(matches!(err, ArtifactError::DigestMismatch { .. }), "{err}");
    assert_eq!(err.code(), "artifact.digest_mismatch");
    assert!(!f.blobs.has(&expected));
    let staged = fs::read_dir(f.root.join("blobs/tmp")).expect("tmp").count();
    assert_eq!(staged, 0, "the staged upload was removed");
}

#[test]
fn an_upload_that_fails_midway_leaves_nothing_behind() {
    struct Broken(usize);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "peer went away",
                ));
            }
            self.0 -= 1;
            buf[0] = b'x';
            Ok(1)
        }
    }
    let f = fixture();
    let digest = sha("xxxxxxxx");
    assert!(f.blobs.put(Broken(4), &digest).is_err());
    assert!(!f.blobs.has(&digest));
    assert_eq!(
        fs::read_dir(f.root.join("blobs/tmp")).expect("tmp").count(),
        0
    );
}

#[test]
fn malformed_digests_never_reach_the_filesystem() {
    let f = fixture();
    for bad in [
        "../../etc/passwd",
        "",
        "ABCDEF",
        &"g".repeat(64),
        &"a".repeat(63),
    ] {
        assert!(!f.blobs.has(bad));
        let err = f
            .blobs
            .put("x".as_bytes(), bad)
            .expect_err("invalid digest");
        assert_eq!(err.code(), "artifact.invalid_digest", "{bad}");
    }
}

#[test]
fn concurrent_puts_of_one_blob_all_succeed() {
    let f = fixture();
    let content = "same bytes ".repeat(10_000);
    let digest = sha(&content);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| f.blobs.put(content.as_bytes(), &digest).expect("put"));
        }
    });
    assert_eq!(
        fs::read_to_string(f.blobs.path(&digest).expect("path")).expect("read"),
        content
    );
}

#[test]
fn missing_lists_absent_blobs_once_in_order() {
    let f = fixture();
    let have = f.blobs.put_file(&{
        let p = f.root.join("a");
        write(&p, "a", 0o644);
        p
    });
    let (have, _) = have.expect("put_file");
    let b = sha("b");
    let c = sha("c");
    assert_eq!(
        f.blobs.missing([&b, &have, &c, &b]),
        vec![b.clone(), c.clone()]
    );
}

#[test]
fn identical_files_are_stored_once() {
    let f = fixture();
    let artifact = f.snapshot_of(&[
        ("a.txt", "same", 0o644),
        ("sub/b.txt", "same", 0o644),
        ("c.txt", "other", 0o644),
    ]);
    assert_eq!(paths(&artifact), ["a.txt", "c.txt", "sub/b.txt"]);
    assert_eq!(artifact.files[0].digest, artifact.files[2].digest);
    let stored = fs::read_dir(f.root.join("blobs/sha256"))
        .expect("blobs")
        .map(|d| {
            fs::read_dir(d.expect("dir").path())
                .expect("fan-out")
                .count()
        })
        .sum::<usize>();
    assert_eq!(stored, 2);
}

#[test]
fn artifact_digest_does_not_depend_on_walk_or_list_order() {
    let f = fixture();
    let one = f.root.join("one");
    let two = f.root.join("two");
    // The same tree, created in opposite orders.
    for (name, content) in [("z", "1"), ("a/b", "2"), ("m", "3"), ("a/a", "4")] {
        write(&one.join(name), content, 0o644);
    }
    for (name, content) in [("a/a", "4"), ("m", "3"), ("a/b", "2"), ("z", "1")] {
        write(&two.join(name), content, 0o644);
    }
    let a = snapshot(&one, &f.blobs).expect("snapshot");
    let b = snapshot(&two, &f.blobs).expect("snapshot");
    assert_eq!(a, b);
    let mut reversed = a.files.clone();
    reversed.reverse();
    assert_eq!(artifact_digest(&reversed), a.digest);

    write(&two.join("m"), "3", 0o755);
    let c = snapshot(&two, &f.blobs).expect("snapshot");
    assert_ne!(c.digest, a.digest, "a mode change is a different artifact");
}

#[test]
fn artifact_digest_follows_the_documented_formula() {
    let files = [ArtifactFile {
        path: "bin/web".to_owned(),
        digest: "d".repeat(64),
        size: 1,
        mode: 0o755,
    }];
    let line = format!("bin/web\0{}\0755\n", "d".repeat(64));
    assert_eq!(artifact_digest(&files), sha(&line));
}

#[test]
fn materialize_reproduces_files_and_read_modes_and_keeps_the_exec_bit() {
    let f = fixture();
    let artifact = f.snapshot_of(&[
        ("bin/web", "#!/bin/sh\necho hi\n", 0o755),
        ("static/index.html", "<h1>hi</h1>", 0o644),
        ("static/copy.html", "<h1>hi</h1>", 0o640),
        ("key.pem", "private", 0o600),
    ]);
    let src = f.root.join("src");

    let dest = f.root.join("releases/r1");
    materialize(&artifact, &f.blobs, &dest).expect("materialize");

    let expected: Vec<_> = tree(&src)
        .into_iter()
        .map(|(p, bytes, mode)| (p, bytes, mode & 0o555))
        .chain([(
            MARKER.to_owned(),
            artifact.digest.clone().into_bytes(),
            0o444,
        )])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(tree(&dest), expected);
    let web = fs::metadata(dest.join("bin/web")).expect("stat");
    assert_eq!(web.mode() & 0o111, 0o111, "the exec bit is kept");
    assert_eq!(fs::metadata(&dest).expect("stat").mode() & 0o777, 0o755);
    assert!(
        fs::OpenOptions::new()
            .append(true)
            .open(dest.join("static/index.html"))
            .is_err()
            || running_as_root(),
        "a service cannot write through its link into the blob store"
    );
    assert_eq!(
        snapshot(&dest, &f.blobs).expect("resnapshot").files,
        artifact
            .files
            .iter()
            .map(|file| ArtifactFile {
                mode: file.mode & 0o555,
                ..file.clone()
            })
            .collect::<Vec<_>>(),
        "a materialized tree is the artifact, read-only"
    );
    let blob = fs::metadata(f.blobs.path(&sha("<h1>hi</h1>")).expect("path")).expect("stat");
    assert_eq!(
        blob.mode() & 0o777,
        0o444,
        "linking never changes a blob's mode"
    );
}

/// Root ignores permission bits, so the read-only check means nothing there.
fn running_as_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[test]
fn materialize_reuses_a_tree_already_in_place_and_refuses_a_foreign_one() {
    let f = fixture();
    let src = f.root.join("src");
    write(&src.join("a"), "a", 0o644);
    let artifact = snapshot(&src, &f.blobs).expect("snapshot");
    let dest = f.root.join("releases/r1");
    materialize(&artifact, &f.blobs, &dest).expect("first");
    let before = fs::metadata(dest.join("a")).expect("stat").ino();
    materialize(&artifact, &f.blobs, &dest).expect("again");
    assert_eq!(fs::metadata(dest.join("a")).expect("stat").ino(), before);

    write(&src.join("b"), "b", 0o644);
    let other = snapshot(&src, &f.blobs).expect("snapshot");
    let err = materialize(&other, &f.blobs, &dest).expect_err("occupied");
    assert_eq!(err.code(), "artifact.destination_exists");
    assert!(!dest.join("b").exists());

    let leftovers = fs::read_dir(f.root.join("releases"))
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        })
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn materialize_refuses_missing_blobs_and_unsafe_paths_before_writing() {
    let f = fixture();
    let file = |path: &str, digest: &str| ArtifactFile {
        path: path.to_owned(),
        digest: digest.to_owned(),
        size: 1,
        mode: 0o644,
    };
    let dest = f.root.join("out");
    let artifact = |files: Vec<ArtifactFile>| Artifact {
        digest: artifact_digest(&files),
        files,
    };

    let absent = sha("never uploaded");
    let err = materialize(&artifact(vec![file("a", &absent)]), &f.blobs, &dest)
        .expect_err("missing blob");
    assert!(matches!(err, ArtifactError::MissingBlobs { ref digests } if digests == &[absent]));

    let present = f.put("x");
    for bad in [
        vec![file("../escape", &present)],
        vec![file("/etc/passwd", &present)],
        vec![file("a//b", &present)],
        vec![file("a/./b", &present)],
        vec![file(MARKER, &present)],
        vec![file("a", &present), file("a", &present)],
        vec![
            file("a", &present),
            file("a.txt", &present),
            file("a/b", &present),
        ],
    ] {
        let err = materialize(&artifact(bad.clone()), &f.blobs, &dest).expect_err("unsafe");
        assert_eq!(err.code(), "artifact.invalid_path", "{bad:?}: {err}");
    }

    let mut forged = artifact(vec![file("a", &present)]);
    forged.files[0].mode = 0o4755;
    let err = materialize(&forged, &f.blobs, &dest).expect_err("manifest mismatch");
    assert_eq!(err.code(), "artifact.digest_mismatch");
    assert!(!dest.exists());
}

#[test]
fn materialize_never_creates_setuid_files() {
    let f = fixture();
    let present = f.put("x");
    let files = vec![ArtifactFile {
        path: "suid".to_owned(),
        digest: present,
        size: 1,
        mode: 0o4755,
    }];
    let artifact = Artifact {
        digest: artifact_digest(&files),
        files,
    };
    let dest = f.root.join("out");
    materialize(&artifact, &f.blobs, &dest).expect("materialize");
    let mode = fs::metadata(dest.join("suid")).expect("stat").mode();
    assert_eq!(mode & 0o7777, 0o555);
}

#[test]
fn concurrent_materializations_of_one_artifact_all_succeed() {
    let f = fixture();
    let src = f.root.join("src");
    for n in 0..20 {
        write(
            &src.join(format!("dir{}/file{n}", n % 3)),
            &n.to_string(),
            0o644,
        );
    }
    let artifact = snapshot(&src, &f.blobs).expect("snapshot");
    let dest = f.root.join("releases/shop").join(&artifact.digest);
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| materialize(&artifact, &f.blobs, &dest).expect("materialize"));
        }
    });
    assert_eq!(tree(&dest).len(), 21);
    let entries = fs::read_dir(f.root.join("releases/shop"))
        .expect("list")
        .count();
    assert_eq!(entries, 1, "no staging directory is left behind");
}

/// A reader that yields `first`, then waits for `rest` from a channel.
struct Trickle {
    first: Option<Vec<u8>>,
    rest: std::sync::mpsc::Receiver<Vec<u8>>,
    current: io::Cursor<Vec<u8>>,
}

impl Read for Trickle {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.current.read(buffer)?;
            if n > 0 {
                return Ok(n);
            }
            let next = match self.first.take() {
                Some(first) => first,
                None => match self.rest.recv() {
                    Ok(next) => next,
                    Err(_) => return Ok(0),
                },
            };
            self.current = io::Cursor::new(next);
        }
    }
}

#[test]
fn a_second_upload_of_a_blob_being_received_is_refused_at_once_and_the_first_goes_on() {
    let f = fixture();
    let content = "uploaded once ".repeat(10_000);
    let digest = sha(&content);
    let (half, rest) = content.as_bytes().split_at(content.len() / 2);
    let (send, receive) = std::sync::mpsc::channel();
    let first = Trickle {
        first: Some(half.to_vec()),
        rest: receive,
        current: io::Cursor::new(Vec::new()),
    };
    std::thread::scope(|scope| {
        let uploading = scope.spawn(|| f.blobs.receive(&digest, 0, first));
        while !f.blobs.uploading(&digest) {
            assert!(!uploading.is_finished(), "the first upload ended early");
            std::thread::yield_now();
        }
        let second = f
            .blobs
            .receive(&digest, 0, content.as_bytes())
            .expect_err("a second upload beside the first");
        assert_eq!(second.code(), "artifact.upload_in_progress", "{second}");
        send.send(rest.to_vec()).expect("send the rest");
        drop(send);
        let first = uploading.join().expect("join").expect("the first upload");
        assert_eq!(first.size, content.len() as u64);
    });
    assert!(!f.blobs.uploading(&digest));
    assert_eq!(
        fs::read_to_string(f.blobs.path(&digest).expect("path")).expect("read"),
        content
    );
    let again = f
        .blobs
        .receive(&digest, 0, content.as_bytes())
        .expect("an upload of a stored blob");
    assert!(again.already_stored);
}

/// A tmpfs of `mib` MiB mounted on a new directory, unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a tmpfs on {}",
            dir.path().display()
        );
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn an_upload_that_would_eat_into_the_disks_reserve_stops_and_its_bytes_go() {
    if !running_as_root() {
        eprintln!("skipped: mounting a small filesystem needs root");
        return;
    }
    // 300 MiB, of which the agent keeps 256 MiB free: room for about 44.
    let disk = SmallDisk::mount(300);
    let blobs = BlobStore::new(disk.0.path().join("blobs"));
    let big = vec![7u8; 64 * 1024 * 1024];
    let big_digest = hash(&big[..]).expect("hash").0;
    let error = blobs
        .receive(&big_digest, 0, &big[..])
        .expect_err("64 MiB where 44 fit");
    assert_eq!(error.code(), "artifact.no_room", "{error}");
    assert!(
        error.to_string().contains("256 MiB the agent keeps free"),
        "{error}"
    );
    assert_eq!(blobs.partial(&big_digest), None, "what arrived went");
    assert!(!blobs.has(&big_digest));
    let free = crate::disk::space(disk.0.path())
        .expect("statvfs")
        .available;
    assert!(free > 299 * 1024 * 1024, "the space is given back: {free}");
    // What fits is stored.
    let small = vec![8u8; 16 * 1024 * 1024];
    let small_digest = hash(&small[..]).expect("hash").0;
    blobs
        .receive(&small_digest, 0, &small[..])
        .expect("16 MiB where 44 fit");
    assert!(blobs.has(&small_digest));
}
