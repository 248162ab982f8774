//! The tar + zstd archive of a `volumes` or `files` backup: each directory
//! under its name, and put back into the same directories. A restore must
//! never write outside them, whatever the archive holds: it is read whole
//! and refused before anything is touched when an entry climbs out (`..`,
//! an absolute path), lies under a symlink the archive made, or hard-links
//! to a file the archive did not put there; then each write checks again
//! that no directory on its way is a symlink.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

/// zstd's level: its default, fast with a fair ratio.
pub(crate) const ZSTD_LEVEL: i32 = 3;

/// Archives each source directory under its name, as tar + zstd, into
/// `out` (opened by the caller, who may read the sources as another user).
pub(crate) fn archive(sources: &[(String, PathBuf)], out: std::fs::File) -> std::io::Result<()> {
    let encoder = zstd::Encoder::new(out, ZSTD_LEVEL)?;
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    for (name, dir) in sources {
        builder.append_dir_all(name, dir)?;
    }
    let file = builder.into_inner()?.finish()?;
    file.sync_all()
}

fn refused(what: &Path, why: &str) -> std::io::Error {
    std::io::Error::other(format!(
        "the archive holds `{}`, {why}: refused, nothing restored",
        what.display()
    ))
}

/// The path's parts when every one is a plain name; `None` for `..`, `.`,
/// a root or an empty path.
fn names(path: &Path) -> Option<Vec<&std::ffi::OsStr>> {
    let parts: Option<Vec<_>> = path
        .components()
        .map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    parts.filter(|p| !p.is_empty())
}

/// Whether `path` is, or lies under, one of `links`.
fn under_link(path: &Path, links: &HashSet<PathBuf>) -> bool {
    path.ancestors().skip(1).any(|a| links.contains(a))
}

/// Reads the whole archive and says why it must not be restored into
/// `targets`, if it must not: an entry outside the archive's directories,
/// one under a symlink, a hard link to anything but a file archived before
/// it, or a top directory that is not a directory.
fn check(archive: &std::fs::File, targets: &[(String, PathBuf)]) -> std::io::Result<()> {
    let decoder = zstd::Decoder::new(archive)?;
    let mut tar = tar::Archive::new(decoder);
    let (mut links, mut files) = (HashSet::new(), HashSet::new());
    for entry in tar.entries()? {
        let entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(parts) = names(&path) else {
            return Err(refused(&path, "outside its directories"));
        };
        if !targets.iter().any(|(name, _)| parts[0] == name.as_str()) {
            // A directory this service no longer has: not restored.
            continue;
        }
        let kind = entry.header().entry_type();
        if parts.len() == 1 && !kind.is_dir() {
            return Err(refused(&path, "where its directory should be"));
        }
        if under_link(&path, &links) {
            return Err(refused(&path, "under a symlink"));
        }
        if kind.is_symlink() {
            links.insert(path);
        } else if kind.is_hard_link() {
            let to = entry
                .link_name()?
                .map(|l| l.into_owned())
                .unwrap_or_default();
            if !files.contains(&to) {
                return Err(refused(
                    &path,
                    &format!(
                        "a hard link to `{}`, which is no file archived before it",
                        to.display()
                    ),
                ));
            }
        } else if !kind.is_dir() {
            files.insert(path);
        }
    }
    Ok(())
}

/// Makes the directories from `dir` down to `target`'s parent, refusing
/// any that is already there as something else (a symlink above all).
fn make_parents(dir: &Path, target: &Path) -> std::io::Result<()> {
    let Ok(rest) = target.strip_prefix(dir) else {
        return Err(refused(target, "outside its directories"));
    };
    let mut at = dir.to_path_buf();
    let parts: Vec<_> = rest.components().collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(refused(&at, "where a directory should be")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&at)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether everything below `dir` can be removed by whoever restores (a
/// service's user may not own all of it): every directory in it writable
/// and searchable, checked before anything is removed, so a restore that
/// cannot finish fails with the directory as it was.
fn emptiable(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::{Access, AtFlags, CWD};
    // Root may remove anything: no walk over a volume's every directory.
    if rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        rustix::fs::accessat(
            CWD,
            &at,
            Access::WRITE_OK | Access::EXEC_OK,
            AtFlags::EACCESS,
        )
        .map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!(
                    "cannot empty {} to restore into it: {e}; nothing was restored",
                    at.display()
                ),
            )
        })?;
        for entry in std::fs::read_dir(&at)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Where an archived path goes: its directory's target joined with the rest.
fn destination<'a>(path: &Path, targets: &'a [(String, PathBuf)]) -> Option<(&'a Path, PathBuf)> {
    let parts = names(path)?;
    let (_, dir) = targets.iter().find(|(name, _)| parts[0] == name.as_str())?;
    let rest: PathBuf = parts[1..].iter().collect();
    Some((dir, dir.join(rest)))
}

/// Puts an archive's directories back: the archive (opened by the caller,
/// who may write the targets as another user) checked whole first, and
/// that each target can be emptied; then each emptied and filled with its
/// entries, owners (as root) and modes as archived.
pub(crate) fn unarchive(
    mut archive: std::fs::File,
    targets: &[(String, PathBuf)],
) -> std::io::Result<()> {
    use std::io::Seek;
    check(&archive, targets)?;
    archive.rewind()?;
    for (_, dir) in targets {
        std::fs::create_dir_all(dir)?;
        emptiable(dir)?;
    }
    for (_, dir) in targets {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            match std::fs::symlink_metadata(&path)?.is_dir() {
                true => std::fs::remove_dir_all(&path)?,
                false => std::fs::remove_file(&path)?,
            }
        }
    }
    let decoder = zstd::Decoder::new(archive)?;
    let mut tar = tar::Archive::new(decoder);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(rustix::process::geteuid().is_root());
    tar.set_preserve_mtime(true);
    let mut directories = Vec::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some((dir, target)) = destination(&path, targets) else {
            continue;
        };
        make_parents(dir, &target)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            // The target itself is the service's, as configured (a
            // `files` path may be a symlink); below it, only directories.
            // Restored as the service's user, it keeps its owner and mode
            // (it was emptied, not made again); as root, it gets the
            // archived ones back (a volume made anew is root's).
            match std::fs::symlink_metadata(&target) {
                _ if target == dir && !rustix::process::geteuid().is_root() => continue,
                _ if target == dir => {}
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(refused(&path, "where a directory should be")),
                Err(_) => std::fs::create_dir(&target)?,
            }
            // Modes last: a read-only directory would refuse its own files.
            directories.push((
                target,
                entry.header().mode()?,
                entry.header().uid()?,
                entry.header().gid()?,
            ));
            continue;
        }
        if kind.is_hard_link() {
            // Named from the archive's root, which the tar crate would
            // read from the agent's working directory.
            let to = entry
                .link_name()?
                .map(|l| l.into_owned())
                .unwrap_or_default();
            let Some((from_dir, source)) = destination(&to, targets) else {
                return Err(refused(&path, "a hard link outside its directories"));
            };
            make_parents(from_dir, &source)?;
            if !std::fs::symlink_metadata(&source)?.is_file() {
                return Err(refused(&path, "a hard link to no file"));
            }
            std::fs::hard_link(&source, &target)?;
            continue;
        }
        entry.unpack(&target)?;
    }
    for (dir, mode, uid, gid) in directories.into_iter().rev() {
        use std::os::unix::fs::PermissionsExt;
        if rustix::process::geteuid().is_root() {
            let (uid, gid) = (u32::try_from(uid).ok(), u32::try_from(gid).ok());
            std::os::unix::fs::lchown(&dir, uid, gid)?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive of `entries` as a hand-made tar writes them, names and
    /// link names taken as given (`..` and `/` included).
    fn crafted(out: &Path, entries: &[(&str, tar::EntryType, &str, &[u8])]) {
        let file = std::fs::File::create(out).expect("create the archive");
        let encoder = zstd::Encoder::new(file, ZSTD_LEVEL).expect("zstd");
        let mut builder = tar::Builder::new(encoder);
        for (name, kind, link, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            header.set_size(data.len() as u64);
            header.set_uid(u64::from(rustix::process::geteuid().as_raw()));
            header.set_gid(u64::from(rustix::process::getegid().as_raw()));
            header.set_mtime(1);
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).expect("append");
        }
        builder
            .into_inner()
            .expect("finish tar")
            .finish()
            .expect("finish zstd");
    }

    struct Scene {
        _root: tempfile::TempDir,
        archive: PathBuf,
        target: PathBuf,
        outside: PathBuf,
    }

    /// A target holding `kept.txt`, and a directory beside it with `secret`.
    fn scene() -> Scene {
        let root = tempfile::tempdir().expect("a directory");
        let target = root.path().join("volume");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&target).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(target.join("kept.txt"), "before\n").expect("write");
        std::fs::write(outside.join("secret"), "outside\n").expect("write");
        Scene {
            archive: root.path().join("backup.tar.zst"),
            _root: root,
            target,
            outside,
        }
    }

    impl Scene {
        fn restore(&self) -> std::io::Result<()> {
            let archive = std::fs::File::open(&self.archive)?;
            unarchive(archive, &[("data".to_owned(), self.target.clone())])
        }

        /// What the directory beside the target holds, by name and bytes.
        fn outside_files(&self) -> Vec<(String, String)> {
            let mut found: Vec<(String, String)> = std::fs::read_dir(&self.outside)
                .expect("list")
                .flatten()
                .map(|e| {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), text)
                })
                .collect();
            found.sort();
            found
        }

        /// Refused, with nothing written outside and the target untouched.
        fn assert_refused(&self, why: &str) {
            let Err(e) = self.restore() else {
                panic!("restored an archive holding {why}");
            };
            assert!(e.to_string().contains("refused"), "{why}: {e}");
            assert_eq!(
                self.outside_files(),
                [("secret".to_owned(), "outside\n".to_owned())],
                "{why}"
            );
            assert_eq!(
                std::fs::read_to_string(self.target.join("kept.txt")).expect("kept"),
                "before\n",
                "{why}: the target was touched"
            );
        }
    }

    use tar::EntryType::{Directory, Link, Regular, Symlink};

    #[test]
    fn an_entry_climbing_out_with_dot_dot_is_refused() {
        let s = scene();
        let escape = "data/../outside/evil";
        crafted(
            &s.archive,
            &[
                ("data", Directory, "", b""),
                (escape, Regular, "", b"evil\n"),
            ],
        );
        s.assert_refused("`..`");
    }

    #[test]
    fn an_absolute_entry_is_refused() {
        let s = scene();
        let absolute = s.outside.join("evil").display().to_string();
        crafted(
            &s.archive,
            &[
                ("data", Directory, "", b""),
                (&absolute, Regular, "", b"evil\n"),
            ],
        );
        s.assert_refused("an absolute path");
    }

    #[test]
    fn a_file_written_through_a_symlink_out_of_the_target_is_refused() {
        let s = scene();
        let outside = s.outside.display().to_string();
        crafted(
            &s.archive,
            &[
                ("data", Directory, "", b""),
                ("data/link", Symlink, &outside, b""),
                ("data/link/evil", Regular, "", b"evil\n"),
                ("data/link/secret", Regular, "", b"overwritten\n"),
            ],
        );
        s.assert_refused("a file under a symlink");
    }

    #[test]
    fn a_hard_link_to_a_file_outside_the_target_is_refused() {
        let s = scene();
        let secret = s.outside.join("secret").display().to_string();
        for link in [secret.as_str(), "data/../outside/secret", "other/secret"] {
            crafted(
                &s.archive,
                &[("data", Directory, "", b""), ("data/hard", Link, link, b"")],
            );
            s.assert_refused(&format!("a hard link to {link}"));
            assert!(!s.target.join("hard").exists(), "{link}");
        }
    }

    #[test]
    fn links_inside_the_target_are_restored_as_archived() {
        let s = scene();
        crafted(
            &s.archive,
            &[
                ("data", Directory, "", b""),
                ("data/a.txt", Regular, "", b"a\n"),
                ("data/hard", Link, "data/a.txt", b""),
                // A symlink out of the volume is kept as a link: the
                // container reads it in its own filesystem.
                ("data/etc", Symlink, "/etc", b""),
                ("data/rel", Symlink, "a.txt", b""),
            ],
        );
        s.restore().expect("restored");
        let read = |name: &str| std::fs::read_to_string(s.target.join(name)).expect(name);
        assert_eq!(read("hard"), "a\n");
        assert_eq!(read("rel"), "a\n");
        assert_eq!(
            std::fs::read_link(s.target.join("etc")).expect("a link"),
            Path::new("/etc")
        );
        assert!(!s.target.join("kept.txt").exists(), "emptied first");
    }

    #[test]
    fn a_directory_archived_is_restored_identical() {
        let root = tempfile::tempdir().expect("a directory");
        let source = root.path().join("source");
        std::fs::create_dir_all(source.join("a/b")).expect("mkdir");
        std::fs::write(source.join("a/b/c.txt"), "deep\n").expect("write");
        std::os::unix::fs::symlink("a/b/c.txt", source.join("link")).expect("symlink");
        let out = root.path().join("backup.tar.zst");
        let file = std::fs::File::create(&out).expect("create");
        archive(&[("data".to_owned(), source.clone())], file).expect("archived");
        let target = root.path().join("target");
        let file = std::fs::File::open(&out).expect("open");
        unarchive(file, &[("data".to_owned(), target.clone())]).expect("restored");
        assert_eq!(
            std::fs::read_to_string(target.join("link")).expect("through the link"),
            "deep\n"
        );
    }
}
