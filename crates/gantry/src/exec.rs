//! `gantry agent exec`: runs a command as a service of this machine runs,
//! in its current release's directory with its environment and secrets.
//!
//! Root runs it for the agent's user (the systemd unit's `gantry`), so it
//! trusts nothing the agent says while it is root: it becomes the state
//! directory's owner first, talks only to an agent running as that owner,
//! and reads only the project's own secrets file, never one the agent names.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

use gantry_cli::Failure;
use gantry_core::host::Host;

/// Who owns the state directory: the user the agent and its services run as.
#[derive(Clone, Copy, Debug)]
struct Owner {
    uid: u32,
    gid: u32,
}

fn failure(code: &'static str, message: String, hint: Option<String>) -> Failure {
    let exit = gantry_core::error::CODES
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or(gantry_core::ExitClass::Failed, |(_, class, _)| *class);
    Failure {
        code,
        exit: exit.code(),
        message,
        hint,
        diagnostics: None,
        details: None,
    }
}

/// Its exit code; stdio is inherited.
pub fn exec(
    state_dir: &Path,
    project: &str,
    service: &str,
    command: &[String],
) -> Result<i32, Failure> {
    let Some((program, args)) = command.split_first() else {
        return Err(failure("usage", "no command given".to_owned(), None));
    };
    for name in [project, service] {
        gantry_core::config::check_name(name).map_err(|why| {
            failure(
                "usage",
                format!("not a project or service name: {why}"),
                None,
            )
        })?;
    }
    let owner = owner_of(state_dir)?;
    become_owner(owner)?;
    served_by_owner(state_dir, owner)?;
    // Every later connection is checked the same way.
    let agent = gantry_remote::LocalAgent::connect_served_by("local", state_dir, Some(owner.uid))
        .map_err(|e| failure("agent.unreachable", e.to_string(), None))?;
    let spec = agent.exec_spec(project, service).map_err(|e| {
        let error = gantry_core::Error::from(e);
        Failure {
            code: error.code(),
            exit: error.exit_class().code(),
            hint: error.hint(),
            message: error.to_string(),
            diagnostics: None,
            details: None,
        }
    })?;
    let paths = gantry_agent::agent::Paths::new(state_dir);
    let releases = paths.releases(project);
    let cwd = Path::new(&spec.cwd);
    if !cwd.starts_with(&releases) || cwd.components().any(|c| c == Component::ParentDir) {
        return Err(refused(format!(
            "the agent names {} as the release's directory, outside {}",
            spec.cwd,
            releases.display()
        )));
    }
    let secrets = secret_values(&paths.secrets(project), &spec, owner)?;
    let status = std::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(&spec.env)
        .envs(&secrets)
        .status()
        .map_err(|e| {
            failure(
                "exec.failed",
                format!("cannot run `{program}` in {}: {e}", spec.cwd),
                Some("the command runs in the release's directory: give a path inside it, or one on the PATH".to_owned()),
            )
        })?;
    Ok(status.code().unwrap_or(128 + 9))
}

fn refused(message: String) -> Failure {
    failure(
        "exec.refused",
        message,
        Some("something other than this host's agent answers on its socket: check who runs it and who owns the state directory".to_owned()),
    )
}

/// Whoever answers on the agent's socket runs as the state directory's owner.
fn served_by_owner(state_dir: &Path, owner: Owner) -> Result<(), Failure> {
    let socket = gantry_agent::agent::Paths::new(state_dir).socket();
    let uid = std::os::unix::net::UnixStream::connect(&socket)
        .and_then(|s| Ok(rustix::net::sockopt::socket_peercred(&s)?.uid.as_raw()))
        .map_err(|e| {
            failure(
                "agent.unreachable",
                format!("no agent answers on {}: {e}", socket.display()),
                Some(format!(
                    "start it with `gantry agent --state-dir {}`",
                    state_dir.display()
                )),
            )
        })?;
    if uid != owner.uid {
        return Err(refused(format!(
            "{} is served by uid {uid}, not by uid {} that owns {}",
            socket.display(),
            owner.uid,
            state_dir.display()
        )));
    }
    Ok(())
}

fn owner_of(state_dir: &Path) -> Result<Owner, Failure> {
    let meta = std::fs::metadata(state_dir).map_err(|e| {
        failure(
            "exec.failed",
            format!("cannot read the owner of {}: {e}", state_dir.display()),
            None,
        )
    })?;
    Ok(Owner {
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Root reaching an agent that runs as its own user: this process becomes
/// that user (groups, gid, uid) before it reads anything the agent says,
/// and the command runs as that user, as the services do. The one place
/// exec changes identity.
fn become_owner(owner: Owner) -> Result<(), Failure> {
    use nix::unistd::{Gid, Uid, geteuid, setgid, setgroups, setuid};
    if !geteuid().is_root() || owner.uid == 0 {
        return Ok(());
    }
    let drop = || -> nix::Result<()> {
        setgroups(&[Gid::from_raw(owner.gid)])?;
        setgid(Gid::from_raw(owner.gid))?;
        setuid(Uid::from_raw(owner.uid))
    };
    drop()
        .ok()
        .filter(|()| geteuid().as_raw() == owner.uid)
        .ok_or_else(|| {
            failure(
                "exec.failed",
                format!(
                    "cannot become uid {}, the state directory's owner",
                    owner.uid
                ),
                None,
            )
        })
}

/// The values of the service's secrets, from the project's secrets file:
/// the one path under the state directory, not a symlink, the owner's.
fn secret_values(
    expected: &Path,
    spec: &gantry_core::agent_api::ExecSpec,
    owner: Owner,
) -> Result<std::collections::BTreeMap<String, String>, Failure> {
    if spec.secret_names.is_empty() {
        return Ok(Default::default());
    }
    if Path::new(&spec.secrets_file) != expected {
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
        .map_err(|e| {
            failure(
                "secrets.missing",
                format!("cannot open {}: {e}", expected.display()),
                None,
            )
        })?;
    let meta = file
        .metadata()
        .map_err(|e| failure("secrets.missing", e.to_string(), None))?;
    let parent_is_link = expected
        .parent()
        .and_then(|p| std::fs::symlink_metadata(p).ok())
        .is_none_or(|m| m.file_type().is_symlink());
    if !meta.is_file() || meta.uid() != owner.uid || parent_is_link {
        return Err(refused(format!(
            "{} is not a file of the state directory's owner (uid {})",
            expected.display(),
            owner.uid
        )));
    }
    // Read through the descriptor just checked, not the path again.
    use std::os::fd::AsRawFd;
    let through = format!("/proc/self/fd/{}", file.as_raw_fd());
    gantry_agent::process::secret_values(Some(Path::new(&through)), &spec.secret_names).map_err(
        |e| {
            let message = e
                .to_string()
                .replace(&through, &expected.display().to_string());
            failure("secrets.missing", message, None)
        },
    )
}
