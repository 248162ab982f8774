//! Opening a file beneath a site's root so that no request can reach
//! outside it. The proxy faces the internet and the files come from a
//! user's build, so both the URL and the directory are untrusted: a path
//! never names `..` (the caller checks its segments), and the kernel is
//! told to refuse any resolution that leaves the root, through `..` or
//! through a symbolic link, absolute or relative (`openat2` with
//! `RESOLVE_BENEATH`). Where `openat2` is missing (Linux before 5.6, or a
//! seccomp filter that refuses it), each segment is opened with
//! `O_NOFOLLOW` from the one before: no symbolic link is followed at all.
//!
//! Files are opened non-blocking and without a controlling terminal, so a
//! FIFO or a device planted in the directory cannot hang a worker or take
//! its terminal; only regular files and directories are served.
//!
//! Blocking calls: run it under `spawn_blocking`.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// What a path beneath the root names.
#[derive(Debug)]
pub(crate) enum Found {
    File(File, Metadata),
    Directory,
    /// Nothing, or something the proxy will not serve (a link out of the
    /// root, a FIFO, a socket): the same answer, so a client learns nothing
    /// about what is there.
    Nothing,
}

/// The site's root directory, opened once per request: a release switched
/// while a request runs does not change the files that request reads.
pub(crate) struct Root {
    fd: OwnedFd,
    /// `openat2` is not there: resolve segment by segment.
    walk: bool,
}

impl Root {
    /// `Err(NotFound)` when the directory does not exist (a release removed,
    /// or not yet in place).
    pub(crate) fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd, walk: false })
    }

    /// `relative` is made of `/`-separated segments, none empty, `.` or
    /// `..`; "" is the root itself.
    pub(crate) fn find(&mut self, relative: &str) -> io::Result<Found> {
        let opened = if self.walk {
            self.walk(relative)
        } else {
            match self.beneath(relative) {
                Err(e) if e.raw_os_error() == Some(libc_enosys()) || is_eperm(&e) => {
                    self.walk = true;
                    self.walk(relative)
                }
                other => other,
            }
        };
        let fd = match opened {
            Ok(fd) => fd,
            Err(e) if refused(&e) => return Ok(Found::Nothing),
            Err(e) => return Err(e),
        };
        let file = File::from(fd);
        let metadata = file.metadata()?;
        Ok(if metadata.is_file() {
            Found::File(file, metadata)
        } else if metadata.is_dir() {
            Found::Directory
        } else {
            Found::Nothing
        })
    }

    fn beneath(&self, relative: &str) -> io::Result<OwnedFd> {
        let path = if relative.is_empty() { "." } else { relative };
        Ok(rustix::fs::openat2(
            &self.fd,
            path,
            read_flags(),
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )?)
    }

    /// One segment at a time, refusing every symbolic link.
    fn walk(&self, relative: &str) -> io::Result<OwnedFd> {
        walk_nofollow(&self.fd, relative)
    }
}

fn walk_nofollow(root: &OwnedFd, relative: &str) -> io::Result<OwnedFd> {
    let segments: Vec<&str> = relative.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() {
        return Ok(rustix::fs::openat(root, ".", read_flags(), Mode::empty())?);
    }
    let mut dir: Option<OwnedFd> = None;
    let last = segments.len() - 1;
    for (i, segment) in segments.into_iter().enumerate() {
        if segment == ".." || segment == "." {
            return Err(io::ErrorKind::NotFound.into());
        }
        let flags = if i == last {
            read_flags() | OFlags::NOFOLLOW
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        let parent = dir.as_ref().unwrap_or(root);
        dir = Some(rustix::fs::openat(parent, segment, flags, Mode::empty())?);
    }
    dir.ok_or_else(|| io::ErrorKind::NotFound.into())
}

fn read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY
}

fn libc_enosys() -> i32 {
    rustix::io::Errno::NOSYS.raw_os_error()
}

fn is_eperm(error: &io::Error) -> bool {
    error.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error())
}

/// Errors that mean "nothing to serve here": missing, not a directory on
/// the way, a link out of the root (`EXDEV`), a link where none is followed
/// (`ELOOP`), a name too long.
fn refused(error: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = error.raw_os_error() else {
        return false;
    };
    [
        Errno::NOENT,
        Errno::NOTDIR,
        Errno::XDEV,
        Errno::LOOP,
        Errno::NAMETOOLONG,
    ]
    .iter()
    .any(|e| e.raw_os_error() == code)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::os::unix::fs::symlink;

    use super::*;

    fn site() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("assets")).expect("mkdir");
        std::fs::write(root.join("index.html"), "home").expect("write");
        std::fs::write(root.join("assets/app.js"), "js").expect("write");
        std::fs::write(dir.path().join("secret"), "outside").expect("write");
        symlink("../secret", root.join("escape")).expect("link");
        symlink("/etc/passwd", root.join("absolute")).expect("link");
        symlink("assets", root.join("inside")).expect("link");
        symlink("..", root.join("up")).expect("link");
        dir
    }

    fn text(found: Found) -> Option<String> {
        match found {
            Found::File(mut file, _) => {
                let mut text = String::new();
                file.read_to_string(&mut text).expect("reads");
                Some(text)
            }
            _ => None,
        }
    }

    fn check_both_ways(test: impl Fn(&mut Root)) {
        let dir = site();
        let mut beneath = Root::open(&dir.path().join("root")).expect("opens");
        test(&mut beneath);
        let mut walking = Root::open(&dir.path().join("root")).expect("opens");
        walking.walk = true;
        test(&mut walking);
    }

    #[test]
    fn files_inside_the_root_are_found() {
        check_both_ways(|root| {
            assert_eq!(
                text(root.find("index.html").expect("ok")).as_deref(),
                Some("home")
            );
            assert_eq!(
                text(root.find("assets/app.js").expect("ok")).as_deref(),
                Some("js")
            );
            assert!(matches!(root.find("assets").expect("ok"), Found::Directory));
            assert!(matches!(root.find("").expect("ok"), Found::Directory));
            assert!(matches!(root.find("missing").expect("ok"), Found::Nothing));
            assert!(matches!(
                root.find("index.html/x").expect("ok"),
                Found::Nothing
            ));
        });
    }

    #[test]
    fn no_link_leads_out_of_the_root() {
        check_both_ways(|root| {
            for path in [
                "escape",
                "absolute",
                "up/secret",
                "up",
                "inside/../../secret",
            ] {
                assert!(
                    text(root.find(path).expect("ok")).is_none(),
                    "{path} must not be served"
                );
            }
        });
    }

    #[test]
    fn a_link_that_stays_inside_is_followed_where_openat2_runs() {
        let dir = site();
        let mut root = Root::open(&dir.path().join("root")).expect("opens");
        assert_eq!(
            text(root.find("inside/app.js").expect("ok")).as_deref(),
            Some("js")
        );
    }

    #[test]
    fn a_missing_root_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = Root::open(&dir.path().join("gone")).err().expect("fails");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
