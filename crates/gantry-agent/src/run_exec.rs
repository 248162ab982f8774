//! `gantry agent exec`: runs a command as a service of this machine runs,
//! in its current release's directory with its environment and secrets, as
//! its user and confined as it is (no capabilities, no_new_privs).
//!
//! Root runs it for the agent's user (the systemd unit's `gantry`), so it
//! trusts nothing the agent says while it is root: it becomes the state
//! directory's owner first, talks only to an agent running as that owner,
//! and reads only the project's own secrets file, never one the agent names.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gantry_core::Error;
use gantry_core::host::{Host, HostError};

use crate::agent_user::{self, AgentUser};
use crate::isolation::{PROJECT_IDS, SERVICES_GID};
use crate::process::Confinement;

/// Connects to the agent of a state directory, checking that it is served
/// by this uid (the transport is not this crate's).
pub type ConnectServedBy<'a> = &'a dyn Fn(&Path, u32) -> Result<Box<dyn Host>, HostError>;

/// Its exit code; stdio is inherited.
pub fn exec(
    state_dir: &Path,
    project: &str,
    service: &str,
    command: &[String],
    connect: ConnectServedBy<'_>,
) -> Result<i32, Error> {
    let Some((program, args)) = command.split_first() else {
        return Err(not_run("no command given".to_owned()));
    };
    // The command line checked them already; this runs as root.
    for name in [project, service] {
        gantry_core::config::check_name(name)
            .map_err(|why| not_run(format!("not a project or service name: {why}")))?;
    }
    let owner = AgentUser::owner_of(state_dir)?;
    let dropped = owner.become_from_root()?;
    // As the owner now: the paths the agent names are compared with the
    // state directory as the owner sees it, symlinks resolved.
    let state_dir = canonical(state_dir)?;
    let paths = crate::agent::Paths::new(&state_dir);
    // Every connection, this first one included, is checked the same way.
    let agent = connect(&state_dir, owner.uid)?;
    let spec = agent.exec_spec(project, service)?;
    // Its runtime's threads go with it: the command's signals come here.
    drop(agent);
    let releases = canonical(&paths.releases(project))?;
    let cwd = canonical(Path::new(&spec.cwd))?;
    if !cwd.starts_with(&releases) {
        return Err(refused(format!(
            "the agent names {} as the release's directory, outside {}",
            spec.cwd,
            releases.display()
        )));
    }
    let confinement = checked_confinement(&spec, dropped, &releases)?;
    // Read as the owner: the service's user cannot read the file, and the
    // command gets only the values, as the service does.
    let secrets = secret_values(&paths.secrets(project), &spec, owner.uid)?;
    let mut run = std::process::Command::new(program);
    run.args(args)
        .current_dir(&cwd)
        .env_clear()
        .envs(&spec.env)
        .envs(&secrets);
    match &confinement {
        Some(confinement) => crate::process::confine(&mut run, confinement),
        None if dropped => agent_user::drop_capabilities()?,
        None => {}
    }
    // Root's terminal stays root's: a command run for another user gets a
    // session of its own (see agent_user).
    let other_user = dropped || confinement.is_some_and(|c| c.user.is_some());
    agent_user::run(run, other_user).map_err(|e| Error::Exec {
        refused: false,
        message: format!("cannot run `{program}` in {}: {e}", spec.cwd),
        hint: Some("the command runs in the release's directory: give a path inside it, or one on the PATH".to_owned()),
    })
}

/// The confinement the agent names for the command, checked: the agent may
/// make it its project's user (the group of `releases/<project>`, as
/// [`crate::isolation`] allocates it), or root where the agent is
/// root and the service asked for it, never another user.
fn checked_confinement(
    spec: &gantry_core::agent_api::ExecSpec,
    dropped: bool,
    releases: &Path,
) -> Result<Option<Confinement>, Error> {
    let Some(confinement) = &spec.confinement else {
        return Ok(None);
    };
    let project_id = std::fs::metadata(releases).map(|m| m.gid()).ok();
    let allowed = match &confinement.user {
        Some(user) => {
            !confinement.keep_capabilities
                && PROJECT_IDS.contains(&user.uid)
                && user.gid == user.uid
                && user.groups == [SERVICES_GID]
                && project_id == Some(user.uid)
        }
        // Root's capabilities only where the agent (and so the owner) is root.
        None => !(confinement.keep_capabilities && dropped),
    };
    if !allowed {
        return Err(Error::Exec {
            refused: true,
            message: format!(
                "the agent asks to run the command as {}, not as the user of the project that {} belongs to",
                confinement.user.as_ref().map_or_else(
                    || "root, with root's capabilities".to_owned(),
                    |u| format!("uid {} gid {} groups {:?}", u.uid, u.gid, u.groups)
                ),
                releases.display()
            ),
            hint: Some(
                "check who runs the agent and who can write to the state directory".to_owned(),
            ),
        });
    }
    if let Some(user) = confinement
        .user
        .as_ref()
        .filter(|_| !agent_user::may_confine())
    {
        return Err(Error::Exec {
            refused: false,
            message: format!(
                "the service runs as its project's user (uid {}); running a command as that user takes root",
                user.uid
            ),
            hint: Some(
                "run it as root on the host: give the host an ssh target of root's (root@host)"
                    .to_owned(),
            ),
        });
    }
    Ok(Some(confinement.clone()))
}

fn refused(message: String) -> Error {
    Error::Exec {
        refused: true,
        message,
        hint: Some("the agent named files outside the project's: check who runs it and who can write to the state directory".to_owned()),
    }
}

fn not_run(message: String) -> Error {
    Error::Exec {
        refused: false,
        message,
        hint: None,
    }
}

fn canonical(path: &Path) -> Result<PathBuf, Error> {
    path.canonicalize()
        .map_err(|e| not_run(format!("cannot resolve {}: {e}", path.display())))
}

/// The values of the service's secrets, from the project's secrets file:
/// the one path under the state directory, not a symlink, the owner's.
fn secret_values(
    expected: &Path,
    spec: &gantry_core::agent_api::ExecSpec,
    owner: u32,
) -> Result<std::collections::BTreeMap<String, String>, Error> {
    if spec.secret_names.is_empty() {
        return Ok(Default::default());
    }
    // The file itself is not resolved: it must not be a symlink.
    let named = Path::new(&spec.secrets_file);
    let resolved = match (named.parent(), named.file_name()) {
        (Some(dir), Some(name)) => canonical(dir)?.join(name),
        _ => named.to_owned(),
    };
    if resolved != expected {
        return Err(refused(format!(
            "the agent names {} as the project's secrets file, not {}",
            spec.secrets_file,
            expected.display()
        )));
    }
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(expected)
        .map_err(|e| secrets_missing(format!("cannot open {}: {e}", expected.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| secrets_missing(e.to_string()))?;
    let parent_is_link = expected
        .parent()
        .and_then(|p| std::fs::symlink_metadata(p).ok())
        .is_none_or(|m| m.file_type().is_symlink());
    if !meta.is_file() || meta.uid() != owner || parent_is_link {
        return Err(refused(format!(
            "{} is not a file of the state directory's owner (uid {})",
            expected.display(),
            owner
        )));
    }
    // Read through the descriptor just checked, not the path again.
    use std::os::fd::AsRawFd;
    let through = format!("/proc/self/fd/{}", file.as_raw_fd());
    crate::process::secret_values(Some(Path::new(&through)), &spec.secret_names).map_err(|e| {
        let message = e
            .to_string()
            .replace(&through, &expected.display().to_string());
        secrets_missing(message)
    })
}

/// A secret the service needs cannot be read on this host.
fn secrets_missing(message: String) -> Error {
    Error::SecretsUnreadable { message }
}
