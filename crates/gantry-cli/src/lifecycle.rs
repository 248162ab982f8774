//! The environment lifecycle around commands that reach remote hosts:
//! `deploy` configures an environment that is not configured yet and records
//! how the deploy ended; `ssh` picks the host.

use gantry_core::config::resolve::Reach;
use gantry_core::configure::OpenShell;
use gantry_core::deploy::{DeployReport, Progress};
use gantry_core::environment::{EnvState, Phase, StateDir};
use gantry_core::operate::Connect;
use gantry_core::{Error, Project};

use crate::args::SshArgs;

pub fn current_exe() -> Result<std::path::PathBuf, Error> {
    std::env::current_exe().map_err(Error::io("find", "the gantry binary"))
}

fn is_remote(project: &Project, environment: &str) -> Result<bool, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    Ok(env.hosts.iter().any(|h| h.reach != Reach::Local))
}

/// For an environment with remote hosts, runs the steps it lacks before a
/// deploy (`configure`). Returns whether the environment is remote.
pub fn before_deploy(
    project: &Project,
    environment: &str,
    shell: OpenShell<'_>,
    connect: Connect<'_>,
    progress: &dyn Progress,
) -> Result<bool, Error> {
    let config = project.load()?;
    // Refused before configure installs anything on the hosts.
    gantry_core::deploy::refuse_unsupported(&config.file, &config.environment(environment)?)?;
    if !is_remote(project, environment)? {
        return Ok(false);
    }
    let states = StateDir::of(config.project_dir());
    let state = states.load(environment)?;
    match state.as_ref().map(EnvState::state) {
        Some(Phase::Destroyed) => Err(Error::EnvState {
            environment: environment.to_owned(),
            problem: "was destroyed".to_owned(),
            hint: format!("`gantry env purge {environment}`, then configure it again"),
        }),
        Some(phase) if phase.configured() => Ok(true),
        other => {
            progress.step(&format!(
                "environment {environment} is {}: configuring it first",
                other.map_or_else(|| "new".to_owned(), |p| p.to_string())
            ));
            gantry_core::configure::configure(
                project,
                environment,
                &current_exe()?,
                shell,
                connect,
                progress,
            )?;
            Ok(true)
        }
    }
}

/// Records a remote deploy's end: running, or deploy_failed with the reason.
pub fn after_deploy(
    project: &Project,
    environment: &str,
    result: &Result<DeployReport, Error>,
) -> Result<(), Error> {
    let config = project.load()?;
    let states = StateDir::of(config.project_dir());
    let _lock = states.lock(environment, &format!("gantry deploy -e {environment}"))?;
    let mut state = states
        .load(environment)?
        .unwrap_or_else(|| EnvState::new(environment));
    match result {
        Ok(_) => state.set(Phase::Running)?,
        Err(e) => state.fail(Phase::DeployFailed, "deploy", None, &e.to_string())?,
    }
    states.save(&state)
}

/// `gantry ssh [HOST] [-- CMD]`: the remote command's exit code.
pub fn ssh(
    project: &Project,
    environment: &str,
    args: &SshArgs,
    shell: OpenShell<'_>,
) -> Result<i32, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let host = match &args.host {
        Some(name) => {
            env.hosts
                .iter()
                .find(|h| &h.name == name)
                .ok_or_else(|| Error::EnvState {
                    environment: environment.to_owned(),
                    problem: format!("has no host `{name}`"),
                    hint: format!(
                        "its hosts are: {}",
                        env.hosts
                            .iter()
                            .map(|h| h.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?
        }
        None => env.hosts.first().ok_or_else(|| Error::EnvState {
            environment: environment.to_owned(),
            problem: "has no hosts".to_owned(),
            hint: "register one with `gantry register`".to_owned(),
        })?,
    };
    if host.reach == Reach::Local {
        return Err(Error::EnvState {
            environment: environment.to_owned(),
            problem: format!("reaches `{}` without SSH: it is this machine", host.name),
            hint: "use a shell here".to_owned(),
        });
    }
    let command = (!args.command.is_empty()).then(|| args.command.join(" "));
    Ok(shell(host)?.interactive(command.as_deref())?)
}

/// Where `gantry exec` runs.
pub enum ExecTarget {
    Here {
        project: String,
    },
    Remote {
        host: gantry_core::config::resolve::Host,
        project: String,
    },
}

/// The host `exec` runs on: `host` if given (it must run the service), else
/// the first host of the environment that runs it.
pub fn exec_target(
    project: &Project,
    environment: &str,
    service: &str,
    host: Option<&str>,
) -> Result<ExecTarget, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let Some(spec) = env.services.get(service) else {
        return Err(Error::EnvState {
            environment: environment.to_owned(),
            problem: format!("has no service `{service}`"),
            hint: format!(
                "its services are: {}",
                env.services.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    };
    let runs = |h: &&gantry_core::config::resolve::Host| {
        spec.hosts.is_empty() || spec.hosts.contains(&h.name)
    };
    let chosen = match host {
        Some(name) => env
            .hosts
            .iter()
            .filter(runs)
            .find(|h| h.name == name)
            .ok_or_else(|| Error::EnvState {
                environment: environment.to_owned(),
                problem: format!("does not run `{service}` on a host `{name}`"),
                hint: "leave out --host to use the first host that runs it".to_owned(),
            })?,
        None => env.hosts.iter().find(runs).ok_or_else(|| Error::EnvState {
            environment: environment.to_owned(),
            problem: format!("runs `{service}` on no host"),
            hint: "check the service's `hosts` in gantry.toml".to_owned(),
        })?,
    };
    Ok(match chosen.reach {
        Reach::Local => ExecTarget::Here {
            project: env.project.clone(),
        },
        _ => ExecTarget::Remote {
            host: chosen.clone(),
            project: env.project.clone(),
        },
    })
}

/// `GET /` with `Host: name` on the proxy at `proxy`: the status code.
pub fn probe_http(proxy: &str, name: &str) -> Result<u16, Error> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let fail = |message: String| Error::ProbeFailed {
        name: name.to_owned(),
        proxy: proxy.to_owned(),
        message,
    };
    let addr = proxy
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| fail("not an address".to_owned()))?;
    // A proxy on every address is probed on loopback.
    let addr = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let timeout = std::time::Duration::from_secs(5);
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail(e.to_string()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| fail(e.to_string()))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {name}\r\nUser-Agent: gantry-test\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| fail(e.to_string()))?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| fail(format!("not an HTTP answer: {line:?}")))
}

pub use gantry_core::host::shell_quote as quote;

#[cfg(test)]
mod tests {
    #[test]
    fn words_survive_the_remote_shell() {
        for word in ["plain", "two words", "it's", "$HOME", "a\"b", "", "`x`"] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", super::quote(word)))
                .output()
                .expect("run sh");
            assert_eq!(String::from_utf8_lossy(&out.stdout), word);
        }
    }
}
