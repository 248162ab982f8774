//! Secrets for a container without their values in `docker inspect`: each
//! secret is a file in the agent's state (a directory only the agent can
//! enter), mode 0400 and owned by the user the container runs as (0444
//! when the agent is not root and cannot give it away), bound
//! read-only at `/run/secrets/NAME`; the container's environment names the
//! file (`NAME_FILE`), the convention PostgreSQL's, MariaDB's and many
//! other images read. Docker records the mount's path, never its content.
//!
//! The container's user is a name in the image (`USER postgres`), so its
//! uid comes from the image's own /etc/passwd, read from the created (not
//! yet started) container. Parsing that is pure and tested here.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ContainerError;

/// The longest secret value a container gets (a key, a password, a URL).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// A secret's value; its `Debug` never shows it.
#[derive(Clone)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> SecretValue {
        SecretValue(value.into())
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(..)")
    }
}

/// A numeric user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// What the image's `USER` (or the spec's) asks for, before the image's
/// passwd and group files resolve names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    Id(u32),
    Name(String),
}

/// Splits `user[:group]` as Docker reads it; empty means root.
pub fn parse_user(spec: &str) -> (UserRef, Option<UserRef>) {
    let reference = |s: &str| match s.parse::<u32>() {
        Ok(id) => UserRef::Id(id),
        Err(_) => UserRef::Name(s.to_owned()),
    };
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let user = if user.is_empty() {
        UserRef::Id(0)
    } else {
        reference(user)
    };
    (user, group.filter(|g| !g.is_empty()).map(reference))
}

/// Resolves `user[:group]` against the image's /etc/passwd and /etc/group
/// (either may be empty when the image has none: then only ids resolve).
pub fn resolve_owner(spec: &str, passwd: &str, group: &str) -> Result<Owner, ContainerError> {
    let (user, group_ref) = parse_user(spec);
    let unknown = |what: &str| ContainerError::UnknownUser {
        user: spec.to_owned(),
        why: what.to_owned(),
    };
    let (uid, primary_gid) = match user {
        UserRef::Id(uid) => (
            uid,
            passwd_entries(passwd)
                .find(|e| e.1 == uid)
                .map(|e| e.2)
                .unwrap_or(uid),
        ),
        UserRef::Name(name) => passwd_entries(passwd)
            .find(|e| e.0 == name)
            .map(|e| (e.1, e.2))
            .ok_or_else(|| unknown("the image's /etc/passwd has no such user"))?,
    };
    let gid = match group_ref {
        None => primary_gid,
        Some(UserRef::Id(gid)) => gid,
        Some(UserRef::Name(name)) => group
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(':');
                let group_name = fields.next()?;
                let gid = fields.nth(1)?.parse::<u32>().ok()?;
                (group_name == name).then_some(gid)
            })
            .next()
            .ok_or_else(|| unknown("the image's /etc/group has no such group"))?,
    };
    Ok(Owner { uid, gid })
}

/// `(name, uid, gid)` of each well-formed passwd line.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    passwd.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((name, uid, gid))
    })
}

/// The directory of one container's secret files: `root/CONTAINER`, mode
/// 0700 (root is the agent's, only it enters).
pub fn directory(root: &Path, container_name: &str) -> PathBuf {
    root.join(container_name)
}

/// Makes the directory and an empty placeholder per secret (a bind mount's
/// source must exist when the container is created); returns NAME → file.
pub fn prepare(
    dir: &Path,
    names: &[String],
) -> Result<std::collections::BTreeMap<String, PathBuf>, ContainerError> {
    let io = |source| ContainerError::SecretFile {
        path: dir.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    let mut files = std::collections::BTreeMap::new();
    for name in names {
        let file = dir.join(name);
        if !file.exists() {
            write_owned(&file, b"", None)?;
        }
        files.insert(name.clone(), file);
    }
    Ok(files)
}

/// Writes each secret's value into its file, 0400 and owned by `owner`,
/// replacing the placeholder atomically (before the container starts, so
/// the bind mount takes the new file). A secret without a value is refused.
pub fn fill(
    files: &std::collections::BTreeMap<String, PathBuf>,
    values: &std::collections::BTreeMap<String, SecretValue>,
    owner: Owner,
) -> Result<(), ContainerError> {
    for (name, file) in files {
        let value = values
            .get(name)
            .ok_or_else(|| ContainerError::MissingSecret { name: name.clone() })?;
        if value.0.len() > MAX_SECRET_BYTES {
            return Err(ContainerError::SecretTooLarge { name: name.clone() });
        }
        write_owned(file, value.0.as_bytes(), Some(owner))?;
    }
    Ok(())
}

/// The mode and owner a secret file for a container running as `owner`
/// gets from an agent running as `agent_uid`, which `may_chown` files
/// away (root, or `gantry configure`'s unit with `CAP_CHOWN`): 0400 and
/// `owner`'s where the agent may give it away or already runs as it;
/// otherwise (an agent in the `docker` group without the capability) 0444
/// and the agent's, as Docker's own swarm secrets are, still in a
/// directory only the agent enters on the host.
pub fn file_mode(owner: Owner, agent_uid: u32, may_chown: bool) -> (u32, Option<Owner>) {
    if agent_uid == 0 || (may_chown && owner.uid != agent_uid) {
        (0o400, Some(owner))
    } else if owner.uid == agent_uid {
        (0o400, None)
    } else {
        (0o444, None)
    }
}

/// Writes `contents` to `path` atomically, mode 0400, chowned to `owner`
/// before any byte is written (see [`file_mode`] when the agent cannot).
fn write_owned(path: &Path, contents: &[u8], owner: Option<Owner>) -> Result<(), ContainerError> {
    let (mode, owner) = match owner {
        Some(owner) => file_mode(owner, nix::unistd::geteuid().as_raw(), may_chown()),
        None => (0o400, None),
    };
    gantry_core::file::write_atomic_with(path, contents, mode, |file| {
        // The mode itself, whatever the agent's umask (0444 would be
        // 0400); first, while the file is the agent's: an agent with
        // CAP_CHOWN but not CAP_FOWNER cannot change it once given away.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(owner) = owner {
            nix::unistd::fchown(
                file,
                Some(nix::unistd::Uid::from_raw(owner.uid)),
                Some(nix::unistd::Gid::from_raw(owner.gid)),
            )
            .map_err(std::io::Error::from)?;
        }
        Ok(())
    })
    .map_err(|source| ContainerError::SecretFile {
        path: path.to_owned(),
        source,
    })
}

/// Whether this agent may give files away: `CAP_CHOWN` in its effective
/// set (root has it; so does the unit `gantry configure` writes).
fn may_chown() -> bool {
    rustix::thread::capabilities(None).is_ok_and(|sets| {
        sets.effective
            .contains(rustix::thread::CapabilitySet::CHOWN)
    })
}

/// Removes a container's secret files (after the container is removed).
pub fn remove(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\npostgres:x:104:109:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\nbroken line\n";
    const GROUP: &str = "root:x:0:\nssl-cert:x:108:postgres\npostgres:x:109:\n";

    #[test]
    fn a_named_user_resolves_through_the_images_passwd() {
        assert_eq!(
            resolve_owner("postgres", PASSWD, GROUP).expect("resolves"),
            Owner { uid: 104, gid: 109 }
        );
        assert_eq!(
            resolve_owner("postgres:ssl-cert", PASSWD, GROUP).expect("resolves"),
            Owner { uid: 104, gid: 108 }
        );
    }

    #[test]
    fn ids_need_no_passwd_and_empty_is_root() {
        assert_eq!(
            resolve_owner("1000:1001", "", "").expect("resolves"),
            Owner {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(
            resolve_owner("1000", "", "").expect("resolves"),
            Owner {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(
            resolve_owner("", PASSWD, GROUP).expect("resolves"),
            Owner { uid: 0, gid: 0 }
        );
    }

    #[test]
    fn an_unknown_user_is_refused_by_name() {
        let error = resolve_owner("nobody-here", PASSWD, GROUP).expect_err("refused");
        assert!(error.to_string().contains("nobody-here"), "{error}");
        assert!(resolve_owner("postgres:nogroup", PASSWD, GROUP).is_err());
    }

    #[test]
    fn secret_files_are_0400_and_hold_the_value() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = directory(root.path(), "gantry-shop-prod-db-i1");
        let files = prepare(&dir, &["TOKEN".to_owned()]).expect("prepared");
        let me = Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        };
        let values = BTreeMapOf::from([("TOKEN".to_owned(), SecretValue::new("t0p"))]);
        fill(&files, &values, me).expect("filled");
        let file = &files["TOKEN"];
        let mode = fs::metadata(file).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o400);
        let dir_mode = fs::metadata(&dir).expect("metadata").permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(fs::read_to_string(file).expect("read"), "t0p");
        assert_eq!(format!("{:?}", values["TOKEN"]), "SecretValue(..)");
        let missing = fill(&files, &BTreeMapOf::new(), me).expect_err("refused");
        assert!(missing.to_string().contains("TOKEN"), "{missing}");
    }

    #[test]
    fn an_agent_that_cannot_chown_leaves_secret_files_readable_in_the_container() {
        let postgres = Owner { uid: 100, gid: 102 };
        assert_eq!(file_mode(postgres, 0, true), (0o400, Some(postgres)));
        assert_eq!(file_mode(postgres, 100, false), (0o400, None));
        assert_eq!(file_mode(postgres, 100, true), (0o400, None));
        assert_eq!(file_mode(postgres, 1000, false), (0o444, None));
    }

    /// The unit `gantry configure` writes runs the agent as its own user
    /// with CAP_CHOWN: the files are the container user's and 0400, not
    /// readable by every user in the container.
    #[test]
    fn an_agent_with_cap_chown_gives_secret_files_to_the_container_user() {
        let postgres = Owner { uid: 100, gid: 102 };
        assert_eq!(file_mode(postgres, 1000, true), (0o400, Some(postgres)));
    }

    type BTreeMapOf = std::collections::BTreeMap<String, SecretValue>;
}
