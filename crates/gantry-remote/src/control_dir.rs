//! Where multiplexed SSH connections keep their sockets (ControlPath).
//!
//! Whoever can put a socket at that path receives the next command's
//! connection: the agent API's traffic, deploy secrets included. So the
//! directory must be one only this user (and root) could have made: every
//! component of its path, symlinks resolved, is owned by root or this user
//! and writable by no one else (unless sticky, like /tmp), and the directory
//! itself is this user's, mode 0700, created without following links. When
//! no candidate qualifies, connections are not shared at all.
//!
//! Only directories made here are given a mode; one found (the user's
//! runtime directory, or one made before) is used only if it is already
//! 0700, and otherwise left as it is.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A socket path must fit `sun_path` (108 bytes with its NUL). OpenSSH
/// binds `<dir>/<%C: 40 hex>.<16 random>` and renames it: 58 bytes after
/// the directory's name.
const MAX_DIR_LEN: usize = 108 - 1 - 58;

/// The first of the user's own runtime directory, `~/.cache/gantry/ssh` and
/// `$TMPDIR/gantry-<uid>/gantry-ssh` that is safe; else why none is.
pub fn choose() -> Result<PathBuf, String> {
    let uid = nix::unistd::geteuid().as_raw();
    let mut refused = Vec::new();
    let candidates = [
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| (PathBuf::from(d), vec!["gantry-ssh".to_owned()], true)),
        std::env::var_os("HOME").map(|h| {
            let below = [".cache", "gantry", "ssh"].map(str::to_owned).to_vec();
            (PathBuf::from(h), below, false)
        }),
        Some((
            std::env::temp_dir(),
            vec![format!("gantry-{uid}"), "gantry-ssh".to_owned()],
            false,
        )),
    ];
    for (base, below, private_base) in candidates.into_iter().flatten() {
        match secure(&base, &below, private_base, uid) {
            Ok(dir) => return Ok(dir),
            Err(why) => refused.push(why),
        }
    }
    Err(refused.join("; "))
}

/// `base/below...`, made and checked; `private_base`: `base` itself must be
/// this user's alone (a runtime directory).
fn secure(base: &Path, below: &[String], private_base: bool, uid: u32) -> Result<PathBuf, String> {
    let base = base
        .canonicalize()
        .map_err(|e| format!("{}: {e}", base.display()))?;
    for ancestor in base.ancestors().collect::<Vec<_>>().into_iter().rev() {
        trusted(ancestor, uid)?;
    }
    if private_base {
        own_private(&base, uid, false)?;
    }
    let dir = below.iter().fold(base.clone(), |dir, name| dir.join(name));
    if dir.as_os_str().len() > MAX_DIR_LEN {
        return Err(format!(
            "{}: longer than the {MAX_DIR_LEN} bytes a socket path leaves",
            dir.display()
        ));
    }
    let mut dir = base;
    for (i, name) in below.iter().enumerate() {
        dir.push(name);
        let made = match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        if i + 1 == below.len() {
            own_private(&dir, uid, made)?;
        } else {
            trusted(&dir, uid)?;
        }
    }
    Ok(dir)
}

/// A directory on the way: root's or this user's, not a symlink, and
/// writable by no one else unless sticky (others cannot remove or rename
/// what is ours in it).
fn trusted(path: &Path, uid: u32) -> Result<(), String> {
    let meta = lstat(path)?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(format!("{}: not a directory", path.display()));
    }
    if meta.uid() != 0 && meta.uid() != uid {
        return Err(format!(
            "{}: owned by uid {}, not by this user",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "{}: others may write to it (mode {:o})",
            path.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// This user's directory, 0700. `made`: this process just made it, and
/// gives it exactly 0700 (a umask may have taken bits away); one found
/// with another mode is refused and left as it is.
fn own_private(path: &Path, uid: u32, made: bool) -> Result<(), String> {
    let meta = lstat(path)?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(format!("{}: not a directory", path.display()));
    }
    if meta.uid() != uid {
        return Err(format!(
            "{}: owned by uid {}, not by this user",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if made {
        if mode != 0o700 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        return Ok(());
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{}: others may write to it (mode {mode:o}): a socket may be planted in it, remove it",
            path.display()
        ));
    }
    if mode != 0o700 {
        return Err(format!(
            "{}: mode {mode:o}, not 0700: others may reach what is in it (make it 0700 or remove it)",
            path.display()
        ));
    }
    Ok(())
}

fn lstat(path: &Path) -> Result<std::fs::Metadata, String> {
    std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn short_tempdir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("gt")
            .tempdir_in("/tmp")
            .unwrap()
    }

    #[test]
    fn a_directory_is_made_0700_below_a_trusted_base() {
        let base = short_tempdir();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let dir = secure(base.path(), &names(&["a", "ssh"]), true, uid()).unwrap();
        assert_eq!(dir, base.path().canonicalize().unwrap().join("a/ssh"));
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn symlinks_and_writable_directories_are_refused() {
        let base = short_tempdir();
        let elsewhere = short_tempdir();
        std::os::unix::fs::symlink(elsewhere.path(), base.path().join("ssh")).unwrap();
        let said = secure(base.path(), &names(&["ssh"]), false, uid()).unwrap_err();
        assert!(said.contains("not a directory"), "{said}");

        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let said = secure(base.path(), &names(&["open"]), false, uid()).unwrap_err();
        assert!(said.contains("others may write"), "{said}");
        // A group- or world-writable base, not sticky, is refused too.
        let said = secure(&open, &names(&["ssh"]), false, uid()).unwrap_err();
        assert!(said.contains("others may write"), "{said}");
    }

    #[test]
    fn a_path_too_long_for_a_socket_is_refused_before_anything_is_made() {
        let base = short_tempdir();
        let below = ["a".to_owned(), "d".repeat(60)];
        let said = secure(base.path(), &below, false, uid()).unwrap_err();
        assert!(said.contains("longer than"), "{said}");
        assert!(!base.path().join("a").exists(), "a directory was made");
    }

    #[test]
    fn a_runtime_directory_not_0700_is_refused_and_left_as_it_is() {
        let base = short_tempdir();
        for mode in [0o750, 0o755] {
            std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let said = secure(base.path(), &names(&["ssh"]), true, uid()).unwrap_err();
            assert!(said.contains("not 0700"), "{said}");
            let now = std::fs::metadata(base.path()).unwrap().permissions().mode() & 0o7777;
            assert_eq!(now, mode, "its mode was changed");
            assert!(!base.path().join("ssh").exists());
        }
    }

    #[test]
    fn a_directory_found_with_a_looser_mode_is_refused_and_left_as_it_is() {
        let base = short_tempdir();
        let found = base.path().join("ssh");
        std::fs::create_dir(&found).unwrap();
        std::fs::set_permissions(&found, std::fs::Permissions::from_mode(0o750)).unwrap();
        let said = secure(base.path(), &names(&["ssh"]), false, uid()).unwrap_err();
        assert!(said.contains("not 0700"), "{said}");
        let mode = std::fs::metadata(&found).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750);
    }
}
