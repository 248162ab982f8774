//! Work on files a service owns, done with the service's own ids. The
//! agent runs as root and a service's data lies in directories the service
//! writes: opened as root by path, a link the service plants there would
//! send a backup or a restore to any file of the host (`/etc/ld.so.preload`,
//! `authorized_keys`). Done as the service's user, it can reach only what
//! the service itself could.
//!
//! Must never: let the ids of a service leak to other work of the agent
//! (the work runs on a thread of its own, which ends with it).
//!
//! The first switch makes the kernel mark the agent's process not
//! dumpable: no core dumps, and its `/proc/<pid>` entries are root's.

use std::io;

use gantry_core::agent_api::ServiceUser;
use rustix::process::{Gid, Uid};

/// Runs `work` as `user`, on a thread of its own that takes the user's ids
/// (Linux keeps them per thread), so that every path it opens, creates or
/// follows is one `user` could and what it creates is `user`'s; `None`
/// runs it here, as the agent.
pub(crate) fn run_as<T: Send>(
    user: Option<&ServiceUser>,
    work: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let Some(user) = user else {
        return work();
    };
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("as-service-user".to_owned())
            .spawn_scoped(scope, || {
                become_user(user)?;
                work()
            })?;
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the work on the service's files panicked")))
    })
}

/// Takes `user`'s groups, gid and uid on this thread, all three of each,
/// then drops every capability the thread still has (an agent that is not
/// root keeps its own, like `gantry configure`'s unit's CAP_CHOWN, across
/// the switch): the thread can do what `user` can, and cannot go back.
fn become_user(user: &ServiceUser) -> io::Result<()> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    let groups: Vec<Gid> = user.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    let gid = Gid::from_raw(user.gid);
    let uid = Uid::from_raw(user.uid);
    rustix::thread::set_thread_groups(&groups)?;
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)?;
    rustix::thread::clear_ambient_capability_set()?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// As another user, a file that user cannot write is refused, what it
    /// creates is its own, and the agent's own ids are untouched after.
    /// Needs root (CI runs as root); elsewhere it says so and passes.
    #[test]
    fn work_as_a_user_can_do_only_what_that_user_can() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to switch users");
            return;
        }
        let dir = tempfile::tempdir().expect("a directory");
        let root_only = dir.path().join("root-only");
        std::fs::write(&root_only, "agent's").expect("write");
        let open = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o777);
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, open.clone()).expect("chmod");
        std::fs::set_permissions(dir.path(), open).expect("chmod");
        let user = ServiceUser {
            uid: 64_123,
            gid: 64_123,
            groups: Vec::new(),
        };
        let refused = run_as(Some(&user), || std::fs::write(&root_only, "service's"));
        assert_eq!(
            refused.expect_err("a root file").kind(),
            io::ErrorKind::PermissionDenied
        );
        let capabilities = run_as(Some(&user), || {
            rustix::thread::capabilities(None).map_err(io::Error::from)
        })
        .expect("its capabilities");
        assert!(
            capabilities.effective.is_empty() && capabilities.permitted.is_empty(),
            "{capabilities:?}"
        );
        let made = shared.join("made");
        run_as(Some(&user), || std::fs::write(&made, "service's")).expect("its own directory");
        let meta = std::fs::metadata(&made).expect("made");
        assert_eq!((meta.uid(), meta.gid()), (64_123, 64_123));
        assert!(
            rustix::process::geteuid().is_root(),
            "the agent is still root"
        );
        std::fs::write(&root_only, "agent's again").expect("root writes as before");
    }
}
