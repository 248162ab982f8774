//! Service isolation: which user each project's services run as, and the
//! file modes that keep the agent's state from them.
//!
//! An agent that may switch users (root, or the systemd unit's CAP_SETUID,
//! CAP_SETGID, CAP_SETPCAP and CAP_CHOWN) runs each project's services as a
//! user of that project's own: uid = gid, a number from [`PROJECT_IDS`] with
//! no passwd entry, recorded as the group of `releases/<project>` (0750). All
//! services also carry [`SERVICES_GID`], the group of the state directory and
//! of `releases/` (both 0710): it lets them reach their own release and list
//! nothing. Everything else in the state directory is the agent's alone: the
//! agent's umask is 077, and group and other bits are taken off what an older
//! agent left. Secrets reach a service as environment variables from its relay,
//! never as a file it could read.
//!
//! An agent without that privilege runs services as itself: without root,
//! services cannot be kept from the agent's state.
//!
//! This module must never run a service as root unless it asked for it.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use sha2::Digest;

use crate::process::{Confinement, ServiceUser, can_switch_users};
use gantry_core::agent_dir::Paths;

/// The group every service belongs to: it may search the state directory
/// and `releases/`, nothing more.
pub const SERVICES_GID: u32 = 1_900_000_000;

/// Project users' ids: above the ranges distributions and systemd hand out
/// (systemd's container range ends at 1879048191), below 2^31.
pub const PROJECT_IDS: std::ops::Range<u32> = 1_900_000_001..1_900_000_001 + (1 << 24);

/// One allocation at a time, so two projects never take the same id.
static ALLOCATING: Mutex<()> = Mutex::new(());

/// How this agent runs services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// A user per project (the agent may switch users).
    ProjectUsers,
    /// As the agent's own user (the agent has no privilege to do better).
    AgentUser,
}

impl Isolation {
    pub fn detect() -> Isolation {
        if can_switch_users() {
            Isolation::ProjectUsers
        } else {
            Isolation::AgentUser
        }
    }

    /// Run once at start, under the agent's umask of 077 (see
    /// `daemon::run`): the layout above holds for what an older agent
    /// left too.
    pub fn prepare(self, paths: &Paths) -> io::Result<()> {
        if self == Isolation::AgentUser {
            return Ok(());
        }
        let releases = paths.releases_dir();
        std::fs::create_dir_all(&releases)?;
        // The state directory itself may be named through a link (`--state-dir`).
        set_group_and_mode(&paths.root.canonicalize()?, SERVICES_GID, 0o710)?;
        set_group_and_mode(&releases, SERVICES_GID, 0o710)?;
        for entry in std::fs::read_dir(&paths.root)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            if entry.path() != releases && !meta.is_symlink() && meta.mode() & 0o077 != 0 {
                std::fs::set_permissions(
                    entry.path(),
                    std::fs::Permissions::from_mode(meta.mode() & 0o7700),
                )?;
            }
        }
        Ok(())
    }

    /// How `project`'s services are confined; makes their release directory
    /// readable by their user. An error says why the service must not start.
    pub fn confinement(
        self,
        paths: &Paths,
        project: &str,
        service: &str,
        run_as_root: bool,
    ) -> Result<Confinement, String> {
        let root = rustix::process::geteuid().is_root();
        if run_as_root {
            return if root {
                Ok(Confinement {
                    user: None,
                    keep_capabilities: true,
                })
            } else {
                Err(format!(
                    "service `{service}` sets run_as_root, but the agent does not run as root"
                ))
            };
        }
        match self {
            Isolation::AgentUser if root => Err(format!(
                "refusing to run service `{service}` as root: the agent cannot switch users; set run_as_root = true on it if it must be root"
            )),
            Isolation::AgentUser => Ok(Confinement::default()),
            Isolation::ProjectUsers => {
                let id = project_user(paths, project)
                    .map_err(|e| format!("cannot prepare the user of project `{project}`: {e}"))?;
                reachable(&paths.root)?;
                Ok(Confinement {
                    user: Some(ServiceUser {
                        uid: id,
                        gid: id,
                        groups: vec![SERVICES_GID],
                    }),
                    keep_capabilities: false,
                })
            }
        }
    }
}

/// The id of `project`'s user, allocated on first use: `releases/<project>`
/// is given its group and made 0750, and every directory in its releases
/// searchable, so the user reads its releases and nothing else does.
fn project_user(paths: &Paths, project: &str) -> io::Result<u32> {
    let _one = ALLOCATING.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = paths.releases(project);
    std::fs::create_dir_all(&dir)?;
    let gid = std::fs::metadata(&dir)?.gid();
    let id = if PROJECT_IDS.contains(&gid) {
        gid
    } else {
        let taken = project_ids_taken(&paths.releases_dir());
        let id = free_id(&paths.root, project, &taken);
        set_group_and_mode(&dir, id, 0o750)?;
        id
    };
    // A release directory is opened once, then given the project's group to
    // say so; `.`-names are materializations still in progress.
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        let staging = entry.file_name().to_string_lossy().starts_with('.');
        if meta.is_dir() && !staging && meta.gid() != id {
            open_release_dirs(&entry.path())?;
            set_group_and_mode(&entry.path(), id, 0o755)?;
        }
    }
    Ok(id)
}

fn project_ids_taken(releases: &Path) -> BTreeSet<u32> {
    std::fs::read_dir(releases)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.gid())
        .filter(|gid| PROJECT_IDS.contains(gid))
        .collect()
}

/// A free id, the same for a project in a state directory each time it is
/// asked (two agents on a host rarely pick the same one for one name).
fn free_id(state_dir: &Path, project: &str, taken: &BTreeSet<u32>) -> u32 {
    use std::os::unix::ffi::OsStrExt;
    let mut hash = sha2::Sha256::new();
    hash.update(state_dir.as_os_str().as_bytes());
    hash.update([0]);
    hash.update(project.as_bytes());
    let digest = hash.finalize();
    let size = PROJECT_IDS.end - PROJECT_IDS.start;
    let start = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]) % size;
    (0..size)
        .map(|i| PROJECT_IDS.start + (start + i) % size)
        .find(|id| !taken.contains(id))
        .unwrap_or(PROJECT_IDS.start)
}

/// The agent creates release directories under its umask (077); the files in
/// them are read-only links to blobs (0444 or 0555). Directories the project's
/// user must search are opened to 0755 here (`releases/<project>` keeps others out).
fn open_release_dirs(release: &Path) -> io::Result<()> {
    let mut pending = vec![release.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            if !meta.is_dir() {
                continue;
            }
            if meta.mode() & 0o055 != 0o055 {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o755))?;
            }
            pending.push(entry.path());
        }
    }
    Ok(())
}

/// Never through a link: what a service left in its release (when services
/// ran as the agent's user) must not make the agent chown something else.
fn set_group_and_mode(path: &Path, gid: u32, mode: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory (a link?): refusing to change its owner",
            path.display()
        )));
    }
    if meta.gid() != gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// A service user must be able to search every directory above the state
/// directory; a state directory under /root cannot be reached.
fn reachable(state_dir: &Path) -> Result<(), String> {
    for dir in state_dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        if meta.mode() & 0o001 == 0 {
            return Err(format!(
                "services cannot reach their releases in {}: {} is not searchable by other users (mode {:o}); run the agent with its state where they can, like GANTRY_STATE_DIR=/var/lib/gantry",
                state_dir.display(),
                dir.display(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_ids_are_stable_distinct_and_in_range() {
        let state = Path::new("/var/lib/gantry");
        let shop = free_id(state, "shop", &BTreeSet::new());
        assert_eq!(shop, free_id(state, "shop", &BTreeSet::new()));
        assert!(PROJECT_IDS.contains(&shop));
        let next = free_id(state, "shop", &BTreeSet::from([shop]));
        assert_ne!(next, shop);
        assert!(PROJECT_IDS.contains(&next));
        assert_ne!(shop, SERVICES_GID);
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").mode() & 0o7777
    }

    #[test]
    fn the_state_directory_is_laid_out_for_project_users() {
        if Isolation::detect() != Isolation::ProjectUsers {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path().join("state"));
        let old_release = paths.releases("shop").join("abc");
        std::fs::create_dir_all(old_release.join("bin")).expect("mkdir");
        std::fs::set_permissions(
            old_release.join("bin"),
            std::fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");
        std::fs::write(paths.database(), "db").expect("write");
        std::fs::set_permissions(paths.database(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");

        let isolation = Isolation::ProjectUsers;
        isolation.prepare(&paths).expect("prepare");
        assert_eq!(mode(&paths.root), 0o710);
        assert_eq!(
            std::fs::metadata(&paths.root).expect("stat").gid(),
            SERVICES_GID
        );
        assert_eq!(mode(&paths.database()), 0o600, "what an older agent left");

        let confinement = isolation
            .confinement(&paths, "shop", "web", false)
            .expect("confinement");
        let user = confinement.user.expect("a user");
        assert!(PROJECT_IDS.contains(&user.uid));
        assert_eq!(user.groups, [SERVICES_GID]);
        let project_dir = paths.releases("shop");
        assert_eq!(mode(&project_dir), 0o750);
        assert_eq!(
            std::fs::metadata(&project_dir).expect("stat").gid(),
            user.gid
        );
        assert_eq!(mode(&old_release.join("bin")), 0o755);
        let again = isolation
            .confinement(&paths, "shop", "web", false)
            .expect("confinement");
        assert_eq!(again.user.map(|u| u.uid), Some(user.uid), "stable");
        let other = isolation
            .confinement(&paths, "blog", "web", false)
            .expect("confinement");
        assert_ne!(
            other.user.map(|u| u.uid),
            Some(user.uid),
            "one user per project"
        );
        let root = isolation
            .confinement(&paths, "shop", "admin", true)
            .expect("run_as_root on a root agent");
        assert!(root.user.is_none() && root.keep_capabilities);
    }

    #[test]
    fn a_state_directory_under_a_private_one_is_not_reachable() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let err = reachable(&dir.path().join("state")).expect_err("0700 parent");
        assert!(err.contains("GANTRY_STATE_DIR"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        assert!(reachable(&dir.path().join("state")).is_ok());
    }
}
