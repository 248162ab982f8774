//! The free space the agent keeps on the disks it writes to. A write that
//! the agent makes on a request (an upload's bytes) stops before it would
//! leave less than [`reserve`] free, so that a large upload cannot take the
//! space the agent's own database, the services' logs and the services
//! themselves need to go on.

use std::io;
use std::path::Path;

/// At least this much stays free, however small the filesystem.
const RESERVE_MIN: u64 = 256 * 1024 * 1024;

/// And at least this share of the filesystem (1 in 100).
const RESERVE_SHARE: u64 = 100;

/// How much of the filesystem a writer leaves free: the larger of 256 MiB
/// and 1% of its size.
pub(crate) fn reserve(total: u64) -> u64 {
    RESERVE_MIN.max(total / RESERVE_SHARE)
}

/// The space an unprivileged writer may still use on the filesystem that
/// holds `path`, and that filesystem's size, in bytes. (What root alone may
/// use, a filesystem's own reserve, is not counted: it is the system's.)
pub(crate) fn space(path: &Path) -> io::Result<Space> {
    let stat = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(Space {
        available: stat.f_bavail.saturating_mul(stat.f_frsize),
        total: stat.f_blocks.saturating_mul(stat.f_frsize),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Space {
    pub available: u64,
    pub total: u64,
}

/// A write the agent stopped: going on would leave less than the reserve.
#[derive(Debug, thiserror::Error)]
#[error(
    "the disk would be left with less than the {} the agent keeps free ({} free of {})",
    mib(self.reserve), mib(self.available), mib(self.total)
)]
pub(crate) struct NoRoom {
    pub available: u64,
    pub total: u64,
    pub reserve: u64,
}

/// Whether `more` bytes can still be written where `path` is while leaving
/// the reserve free.
pub(crate) fn room_for(path: &Path, more: u64) -> io::Result<Result<(), NoRoom>> {
    let Space { available, total } = space(path)?;
    let reserve = reserve(total);
    Ok(if available.saturating_sub(more) < reserve {
        Err(NoRoom {
            available,
            total,
            reserve,
        })
    } else {
        Ok(())
    })
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_256_mib_or_one_percent_whichever_is_larger() {
        const GIB: u64 = 1024 * 1024 * 1024;
        assert_eq!(reserve(GIB), 256 * 1024 * 1024);
        assert_eq!(reserve(100 * GIB), GIB);
        assert_eq!(reserve(u64::MAX), u64::MAX / 100);
    }

    #[test]
    fn a_disk_with_room_says_so_and_one_asked_for_more_than_it_has_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Space { available, total } = space(dir.path()).expect("statvfs");
        assert!(total >= available, "{available} of {total}");
        assert!(room_for(dir.path(), available).expect("statvfs").is_err());
        let error = room_for(dir.path(), u64::MAX)
            .expect("statvfs")
            .expect_err("no disk has room for 16 EiB");
        assert!(
            error.to_string().contains("the agent keeps free"),
            "{error}"
        );
    }
}
