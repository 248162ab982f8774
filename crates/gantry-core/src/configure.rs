//! `gantry configure`: makes each host of an environment ready to deploy to,
//! over SSH, and records it in the environment's state (→ configured, or
//! configure_failed with the step). Every step checks before it changes
//! anything, so running it again changes nothing and is safe.
//!
//! Per host: check the system, install this very gantry binary
//! (`~/.gantry/bin/gantry`, sent only when its sha256 differs), prepare the
//! state directory, keep the agent running (a systemd unit when the host runs
//! systemd and we are root; otherwise the agent as a daemon that
//! `gantry agent connect` restarts when it is not running), replace an agent
//! of another version, and as root open 22/80/443 in ufw or nftables
//! (`crate::firewall`).

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::agent_dir::{Paths, USER_STATE_DIR};
use crate::clock::now_ms;
use crate::config::resolve::{Host as HostSpec, Reach};
use crate::environment::{EnvState, HostRecord, Phase, StateDir};
use crate::host::{HostError, Shell};
use crate::operate::Connect;
use crate::progress::Progress;
use crate::{EnvRefusal, Error, Project};

/// Opens a shell on a host.
pub type OpenShell<'a> = &'a (dyn Fn(&HostSpec) -> Result<Box<dyn Shell>, Error> + Sync);

#[derive(Debug, Serialize)]
pub struct ConfigureReport {
    pub environment: String,
    pub state: Phase,
    /// The gantry binary installed on the hosts.
    pub binary: Binary,
    pub hosts: Vec<HostConfigured>,
}

/// This gantry, as hosts receive it: without its debug info.
#[derive(Debug, Clone, Serialize)]
pub struct Binary {
    /// The binary that runs here.
    pub bytes: u64,
    /// The copy sent to hosts (`bytes` when it could not be stripped).
    pub shipped_bytes: u64,
    /// How it was stripped (`strip --strip-debug`), or why it was not.
    pub stripped: String,
}

#[derive(Debug, Serialize)]
pub struct HostConfigured {
    pub host: String,
    /// `systemd`, `daemon`, or `local` (this machine: nothing to install).
    pub agent: String,
    pub gantry: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub step: &'static str,
    /// Whether the step changed anything on the host.
    pub changed: bool,
    pub detail: String,
}

/// What the probe found on a host.
struct System {
    root: bool,
    systemd: bool,
    installed_sha: Option<String>,
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The systemd unit of the agent on a host configured as root.
pub fn agent_unit() -> String {
    "[Unit]
Description=Gantry agent: runs and supervises the services deployed here
Documentation=https://github.com/gantry-deploy/gantry
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=gantry
Group=gantry
Environment=GANTRY_STATE_DIR=/var/lib/gantry
Environment=GANTRY_PROXY_LISTEN=0.0.0.0:80
Environment=GANTRY_PROXY_HTTPS=0.0.0.0:443
# Certificates for declared routes come from Let's Encrypt.
Environment=GANTRY_ACME_DIRECTORY=https://acme-v02.api.letsencrypt.org/directory
# Two malloc arenas keep a long-lived agent's memory flat.
Environment=MALLOC_ARENA_MAX=2
# Open 22/80/443 again before each start, as root (+), going on if that
# fails (-): nftables forgets its rules when the host reboots.
ExecStartPre=-+/usr/local/bin/gantry agent open-ports
# On cgroup v1 systemd hands the user only its own hierarchy: give the agent
# its unit's memory, pids and cpu cgroups too, so it can limit services
# (systemd may run this line in the unit's .control subgroup: its parent).
ExecStartPre=+/bin/sh -c 'for c in memory pids cpu cpu,cpuacct; do d=/sys/fs/cgroup/$$c$$(grep \"^[0-9]*:$$c:\" /proc/self/cgroup | cut -d: -f3); d=$${d%%/.control}; case $$d in */gantry-agent.service) chown gantry:gantry $$d || true;; esac; done'
ExecStart=/usr/local/bin/gantry agent
# Stopping the agent never stops the services: they outlive it by design.
KillMode=process
Delegate=yes
# Ports 80 and 443 for the proxy (the only capability it keeps); switching
# each project's services to its own user, with no capabilities, and giving
# their release directories that user's group.
AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_SETPCAP CAP_CHOWN
CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_SETPCAP CAP_CHOWN
# Sandboxing, inherited by the proxy and the services: setuid binaries give
# nothing, the system is read-only but for the state directory, homes are
# out of sight, /tmp is private.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=/var/lib/gantry
ProtectHome=yes
PrivateTmp=yes
# The proxy raises its soft open-files limit to this hard one (a connection
# is a descriptor, often two); the agent and the services keep 1024.
LimitNOFILE=1024:524288
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"
    .to_owned()
}

/// The gantry binary that runs now: what `configure` installs on hosts.
pub fn this_binary() -> Result<std::path::PathBuf, Error> {
    std::env::current_exe().map_err(Error::io("find", "the gantry binary"))
}

pub fn configure(
    project: &Project,
    environment: &str,
    exe: &Path,
    shell: OpenShell<'_>,
    connect: Connect<'_>,
    progress: &dyn Progress,
) -> Result<ConfigureReport, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    crate::deploy::refuse_provider_hosts(&config.file)?;
    let states = StateDir::of(config.project_dir());
    let _lock = states.lock(environment, &format!("gantry configure -e {environment}"))?;
    let mut state = states
        .load(environment)?
        .unwrap_or_else(|| EnvState::new(environment));
    if state.state() == Phase::Destroyed {
        return Err(Error::EnvState {
            refusal: EnvRefusal::Destroyed,
            environment: environment.to_owned(),
            problem: "was destroyed".to_owned(),
            hint: format!("`gantry env purge {environment}` forgets it; then configure it again"),
        });
    }
    let (shipped, binary) = strip_debug_info(exe)?;
    let exe = shipped.as_deref().unwrap_or(exe);
    let bytes = std::fs::read(exe).map_err(Error::io("read", exe))?;
    let sha = crate::artifact::hex(&Sha256::digest(&bytes));
    let libc = glibc_needed(&bytes);

    let mut hosts = Vec::new();
    for host in &env.hosts {
        progress.step(&format!("configuring {}", host.name));
        let docker = runs_images(&env, &host.name);
        match configure_host(host, exe, (&sha, libc, docker), shell, connect, progress) {
            Ok(done) => {
                state.hosts.insert(
                    host.name.clone(),
                    HostRecord {
                        ssh: match &host.reach {
                            Reach::Ssh { target } => Some(target.clone()),
                            _ => None,
                        },
                        gantry: Some(done.gantry.clone()),
                        agent: Some(done.agent.clone()),
                        configured_at: Some(now_ms()),
                    },
                );
                hosts.push(done);
            }
            Err((step, error)) => {
                state.fail(
                    Phase::ConfigureFailed,
                    step,
                    Some(&host.name),
                    &error.to_string(),
                )?;
                states.save(&state)?;
                return Err(match error {
                    // SSH's own errors keep their codes and hints; a step's
                    // own failure already names the host and the step.
                    Error::Host(e) => Error::Host(e),
                    failed @ (Error::ConfigureFailed { .. } | Error::HostUnsupported { .. }) => {
                        failed
                    }
                    other => Error::ConfigureFailed {
                        host: host.name.clone(),
                        step: step.to_owned(),
                        message: other.to_string(),
                    },
                });
            }
        }
    }
    if state.state().may_become(Phase::Configured) {
        state.set(Phase::Configured)?;
    }
    states.save(&state)?;
    Ok(ConfigureReport {
        environment: environment.to_owned(),
        state: state.state(),
        binary,
        hosts,
    })
}

/// The tools tried, in order, to write a copy of a binary without its
/// debug info: each takes the input and the output path.
const STRIPPERS: [(&str, &[&str]); 2] = [
    ("strip", &["--strip-debug", "-o", "{out}", "{in}"]),
    ("objcopy", &["--strip-debug", "{in}", "{out}"]),
];

/// A copy of `exe` without its debug info (symbols stay, for backtraces),
/// in a temporary file, with the sizes; `None` (and `exe` sent as it is)
/// when no tool here can strip it, which the report says.
fn strip_debug_info(exe: &Path) -> Result<(Option<tempfile::TempPath>, Binary), Error> {
    let size = |path: &Path| std::fs::metadata(path).map(|m| m.len());
    let bytes = size(exe).map_err(Error::io("read", exe))?;
    let out = tempfile::NamedTempFile::new()
        .map_err(Error::io("create", "a temporary file"))?
        .into_temp_path();
    let mut tried = Vec::new();
    for (tool, args) in STRIPPERS {
        let args = args.iter().map(|a| match *a {
            "{in}" => exe.as_os_str(),
            "{out}" => out.as_os_str(),
            other => std::ffi::OsStr::new(other),
        });
        let ran = std::process::Command::new(tool)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output();
        match ran {
            Ok(done) if done.status.success() => {
                let shipped_bytes = size(&out).map_err(Error::io("read", &*out))?;
                let binary = Binary {
                    bytes,
                    shipped_bytes,
                    stripped: format!("{tool} --strip-debug"),
                };
                return Ok((Some(out), binary));
            }
            Ok(done) => tried.push(format!(
                "{tool} failed: {}",
                String::from_utf8_lossy(&done.stderr).trim()
            )),
            Err(e) => tried.push(format!("no {tool}: {e}")),
        }
    }
    let binary = Binary {
        bytes,
        shipped_bytes: bytes,
        stripped: format!("sent with its debug info ({})", tried.join("; ")),
    };
    Ok((None, binary))
}

type StepError = (&'static str, Error);

/// Whether some `image` service of `env` runs on host `name`.
fn runs_images(env: &crate::config::resolve::Environment, name: &str) -> bool {
    use crate::config::resolve::Workload;
    env.services.values().any(|service| {
        matches!(service.workload, Workload::Compose { .. }) && service.runs_on(name)
    })
}

fn configure_host(
    host: &HostSpec,
    exe: &Path,
    (sha, libc, docker): (&str, Option<(u32, u32)>, bool),
    open: OpenShell<'_>,
    connect: Connect<'_>,
    progress: &dyn Progress,
) -> Result<HostConfigured, StepError> {
    if host.reach == Reach::Local {
        return Ok(HostConfigured {
            host: host.name.clone(),
            agent: "local".to_owned(),
            gantry: VERSION.to_owned(),
            steps: vec![Step {
                step: "check the host",
                changed: false,
                detail: "this machine: the CLI starts its agent on first use".to_owned(),
            }],
        });
    }
    let step = |name: &'static str| move |e: Error| (name, e);
    let shell = open(host).map_err(step("connect"))?;
    let mut steps = Vec::new();

    let system = probe(shell.as_ref(), libc).map_err(step("check the host"))?;
    steps.push(system_step(&system));

    let changed = system.installed_sha.as_deref() != Some(sha);
    if changed {
        progress.step(&format!("{}: installing gantry {VERSION}", host.name));
        let ran = shell
            .run(
                "umask 022 && mkdir -p \"$HOME/.gantry/bin\" && cat > \"$HOME/.gantry/bin/gantry.part\" && chmod 755 \"$HOME/.gantry/bin/gantry.part\" && mv -f \"$HOME/.gantry/bin/gantry.part\" \"$HOME/.gantry/bin/gantry\" && \"$HOME/.gantry/bin/gantry\" --version",
                Some(exe),
            )
            .map_err(|e| ("install gantry", e.into()))?;
        expect_ok(&ran, shell.name(), "install gantry")?;
    }
    steps.push(Step {
        step: "install gantry",
        changed,
        detail: if changed {
            let sent = std::fs::metadata(exe).map_or(0, |m| m.len());
            format!("gantry {VERSION} in ~/.gantry/bin ({sent} bytes sent)")
        } else {
            format!("gantry {VERSION} in ~/.gantry/bin")
        },
    });

    let agent = if system.root && system.systemd {
        install_unit(shell.as_ref(), changed, docker, &mut steps)?;
        "systemd"
    } else {
        steps.push(prepare_directories(shell.as_ref(), system.root)?);
        "daemon"
    };

    if docker {
        progress.step(&format!("{}: checking Docker", host.name));
        steps.push(install_docker(shell.as_ref(), system.root, agent)?);
    }

    steps.push(start_agent(host, shell.as_ref(), connect, agent, progress)?);

    steps.push(if system.root {
        open_ports(shell.as_ref())?
    } else {
        Step {
            step: "open ports",
            changed: false,
            detail: "not root: the firewall is left alone; open 80 and 443/tcp if one filters them"
                .to_owned(),
        }
    });
    Ok(HostConfigured {
        host: host.name.clone(),
        agent: agent.to_owned(),
        gantry: VERSION.to_owned(),
        steps,
    })
}

fn system_step(system: &System) -> Step {
    Step {
        step: "check the host",
        changed: false,
        detail: format!(
            "{}, {}",
            if system.root { "root" } else { "not root" },
            if system.systemd {
                "systemd"
            } else {
                "no systemd"
            }
        ),
    }
}

/// The state directory for the daemon agent (systemd's unit makes its own).
fn prepare_directories(shell: &dyn Shell, root: bool) -> Result<Step, StepError> {
    let ran = shell
        .run(
            // Root's agent keeps its state where the services it runs
            // as other users can reach their releases (see
            // `Paths::default_root`); the agent sets the modes it needs.
            &format!(
                "{}; [ -d \"$d\" ] || {{ mkdir -p \"$d\" && chmod 700 \"$d\"; }}",
                Paths::default_root_shell()
            ),
            None,
        )
        .map_err(|e| ("prepare directories", e.into()))?;
    expect_ok(&ran, shell.name(), "prepare directories")?;
    Ok(Step {
        step: "prepare directories",
        changed: false,
        detail: if root {
            format!("{} (0700)", crate::host::SYSTEM_STATE_DIR)
        } else {
            format!("~/{USER_STATE_DIR} (0700)")
        },
    })
}

/// Docker for a host that runs image services. As root: Debian's
/// `docker.io` installed with apt-get when `dockerd` is missing, the
/// engine started (and enabled under systemd); the unit's user `gantry` is
/// put in the group `docker` by [`install_unit`], before its agent starts.
/// Not as root: only checked, the detail saying what root must do.
/// Idempotent.
fn install_docker(shell: &dyn Shell, root: bool, agent: &str) -> Result<Step, StepError> {
    const STEP: &str = "install docker";
    let script = if root {
        "set -e; export DEBIAN_FRONTEND=noninteractive; \
             if ! command -v dockerd >/dev/null 2>&1; then \
               command -v apt-get >/dev/null 2>&1 || { echo 'dockerd is missing and there is no apt-get here: install Docker Engine 20.10 or newer' >&2; exit 3; }; \
               apt-get update -qq >/dev/null; apt-get install -y -qq docker.io >/dev/null; echo changed=installed; fi; \
             if [ -d /run/systemd/system ]; then \
               if ! systemctl is-active --quiet docker; then systemctl enable --now --quiet docker; echo changed=started; fi; \
             elif ! docker info >/dev/null 2>&1; then \
               service docker start >/dev/null 2>&1 || { echo 'dockerd is installed but does not run, and there is no systemd to start it' >&2; exit 3; }; echo changed=started; fi; \
             t=; command -v timeout >/dev/null 2>&1 && t='timeout 10'; \
             i=0; until $t docker version --format 'version={{.Server.Version}}' 2>/dev/null; do \
               i=$((i+1)); [ $i -lt 60 ] || { echo 'dockerd does not answer on /var/run/docker.sock' >&2; exit 3; }; sleep 0.5; done"
            .to_owned()
    } else {
        // The socket the agent will use: `DOCKER_HOST`'s when it names
        // one (rootless Docker), as the agent reads it.
        "sock=/var/run/docker.sock; case \"${DOCKER_HOST:-}\" in unix://?*) sock=${DOCKER_HOST#unix://};; esac; \
         if [ -w \"$sock\" ]; then echo reach=yes; \
         elif command -v dockerd >/dev/null 2>&1; then echo reach=denied; else echo reach=missing; fi; \
         echo \"user=$(id -un)\"; echo \"socket=$sock\""
            .to_owned()
    };
    let ran = shell.run(&script, None).map_err(|e| (STEP, e.into()))?;
    expect_ok(&ran, shell.name(), STEP)?;
    let out = ran.stdout_text();
    let field = |key: &str| said(&out, key);
    let detail = if root {
        let who = if agent == "systemd" {
            "; the agent's user gantry is in the group docker"
        } else {
            ""
        };
        let version = field("version");
        format!("Docker {version} runs{who}")
    } else {
        let (user, socket) = (field("user"), field("socket"));
        match field("reach").as_str() {
            "yes" => format!("Docker's socket {socket} is reachable by {user}"),
            "denied" => format!(
                "not root: Docker is installed but {user} cannot reach {socket}; as root: usermod -aG docker {user}, then `gantry agent stop` here"
            ),
            _ => format!(
                "not root: Docker is not installed; as root: apt-get install docker.io && usermod -aG docker {user}"
            ),
        }
    };
    Ok(Step {
        step: STEP,
        changed: out.lines().any(|l| l.starts_with("changed=")),
        detail,
    })
}

/// The most characters of a value a host's script prints that a report
/// carries.
const SAID_CHARS: usize = 64;

/// The first `key=value` line of a script's `out`, as a report may carry
/// it: at most [`SAID_CHARS`] characters, no control characters. A host
/// prints what it likes; a report stays short and one line.
fn said(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| {
            v.chars()
                .filter(|c| !c.is_control())
                .take(SAID_CHARS)
                .collect()
        })
        .unwrap_or_default()
}

/// The agent: running, and this version (a daemon of another version is
/// replaced).
fn start_agent(
    host: &HostSpec,
    shell: &dyn Shell,
    connect: Connect<'_>,
    agent: &str,
    progress: &dyn Progress,
) -> Result<Step, StepError> {
    let (restarted, agent_now) = match connect(host) {
        Ok(agent) => (false, agent),
        Err(Error::Host(HostError::Incompatible { .. })) if agent == "daemon" => {
            progress.step(&format!(
                "{}: replacing an agent of another version",
                host.name
            ));
            let ran = shell
                .run(&crate::host::remote_gantry("agent stop"), None)
                .map_err(|e| ("start the agent", e.into()))?;
            expect_ok(&ran, shell.name(), "start the agent")?;
            (true, connect(host).map_err(|e| ("start the agent", e))?)
        }
        Err(e) => return Err(("start the agent", e)),
    };
    // A proxy on loopback only (the daemon's default) serves nobody else:
    // say so where the user looks.
    let proxy = agent_now.info().ok().and_then(|info| info.proxy);
    let proxy_detail = match proxy.as_deref() {
        None => "; it runs no proxy".to_owned(),
        Some(listen) if listen.starts_with("127.") || listen.starts_with("[::1]") => format!(
            "; its proxy listens on {listen} only: put your own front proxy before it, or configure as root for ports 80 and 443"
        ),
        Some(listen) => format!("; its proxy listens on {listen}"),
    };
    Ok(Step {
        step: "start the agent",
        changed: restarted,
        detail: format!("agent {VERSION} answers ({agent}){proxy_detail}"),
    })
}

/// The newest `GLIBC_x.y` symbol version `binary` asks for (what
/// `objdump -T` lists): the oldest GNU C library that can run it. `None`:
/// it asks for none (a static binary).
pub fn glibc_needed(binary: &[u8]) -> Option<(u32, u32)> {
    const TAG: &[u8] = b"GLIBC_";
    let mut newest = None;
    let mut at = 0;
    while let Some(found) = binary[at..].windows(TAG.len()).position(|w| w == TAG) {
        let start = at + found + TAG.len();
        let digits: Vec<u8> = binary[start..]
            .iter()
            .take(16)
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .copied()
            .collect();
        at = start;
        newest = newest.max(parse_version(&String::from_utf8_lossy(&digits)));
    }
    newest
}

/// `2.36` (or `2.36.1`) → (2, 36).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Refuses a host whose C library cannot run a binary that needs glibc
/// `needed`; `found` is `getconf GNU_LIBC_VERSION`'s answer (`glibc 2.36`).
fn check_libc(host: &str, needed: Option<(u32, u32)>, found: &str) -> Result<(), Error> {
    let Some((major, minor)) = needed else {
        return Ok(());
    };
    let has = found.strip_prefix("glibc_").and_then(parse_version);
    let problem = match has {
        Some(version) if version >= (major, minor) => return Ok(()),
        Some((a, b)) => format!("its GNU C library is {a}.{b}"),
        None => "it has no GNU C library (`getconf GNU_LIBC_VERSION` names none: musl?)".to_owned(),
    };
    Err(Error::HostUnsupported {
        code: crate::Code::HostLibcTooOld,
        message: format!(
            "{host} cannot run this gantry: it needs glibc {major}.{minor} or newer, and {problem}"
        ),
        hint: "upgrade the host's system (Debian 12 or newer), or run a gantry built on an older system".to_owned(),
    })
}

fn probe(shell: &dyn Shell, libc: Option<(u32, u32)>) -> Result<System, Error> {
    let ran = shell.run(
        "echo \"os=$(uname -s) arch=$(uname -m) uid=$(id -u) libc=$(getconf GNU_LIBC_VERSION 2>/dev/null | tr ' ' _)\"; \
         if [ -d /run/systemd/system ]; then echo init=systemd; else echo init=other; fi; \
         if [ -x \"$HOME/.gantry/bin/gantry\" ]; then echo \"sha=$(sha256sum \"$HOME/.gantry/bin/gantry\" | cut -d' ' -f1)\"; fi",
        None,
    )?;
    expect_ok(&ran, shell.name(), "check the host").map_err(|(_, e)| e)?;
    let text = ran.stdout_text();
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
    };
    let os = field("os").unwrap_or_default();
    let arch = field("arch").unwrap_or_default();
    if os != "Linux" || arch != std::env::consts::ARCH {
        return Err(Error::HostUnsupported {
            code: crate::Code::HostArchUnsupported,
            message: format!(
                "{} cannot run this gantry: the host is {os} on {arch}; this gantry is built for Linux on {}",
                shell.name(),
                std::env::consts::ARCH
            ),
            hint: format!(
                "configure hosts that are Linux on {}, or run a gantry built for {arch}",
                std::env::consts::ARCH
            ),
        });
    }
    check_libc(shell.name(), libc, &field("libc").unwrap_or_default())?;
    Ok(System {
        root: field("uid").as_deref() == Some("0"),
        systemd: field("init").as_deref() == Some("systemd"),
        installed_sha: field("sha"),
    })
}

/// The agent's systemd unit, its user and the system's copy of gantry;
/// with `docker`, that user in the group `docker` before the agent
/// (re)starts, so one restart takes both a new binary and the group.
fn install_unit(
    shell: &dyn Shell,
    binary_changed: bool,
    docker: bool,
    steps: &mut Vec<Step>,
) -> Result<(), StepError> {
    let unit = agent_unit();
    let unit_file = tempfile::NamedTempFile::new().map_err(|e| {
        (
            "install the agent",
            Error::io("create", "a temporary file")(e),
        )
    })?;
    std::fs::write(unit_file.path(), &unit)
        .map_err(|e| ("install the agent", Error::io("write", unit_file.path())(e)))?;
    let script = format!(
        "set -e; \
         id gantry >/dev/null 2>&1 || useradd --system --home-dir {state} --shell /usr/sbin/nologin gantry; \
         if [ -d {state} ]; then chown gantry {state}; else install -d -m 700 -o gantry -g gantry {state}; fi; \
         if ! cmp -s \"$HOME/.gantry/bin/gantry\" /usr/local/bin/gantry; then install -m 755 \"$HOME/.gantry/bin/gantry\" /usr/local/bin/gantry; echo binary=changed; fi; \
         {grouped}\
         new=$(cat); if [ \"$new\" != \"$(cat {file} 2>/dev/null)\" ]; then printf '%s\\n' \"$new\" > {file}; systemctl daemon-reload; unit_changed=1; echo unit=changed; fi; \
         systemctl enable --quiet {unit}; \
         if {restart} || [ -n \"$unit_changed\" ] || ! systemctl is-active --quiet {unit}; then systemctl restart {unit}; echo agent=restarted; fi",
        restart = if binary_changed { "true" } else { "false" },
        grouped = if docker {
            "getent group docker >/dev/null || groupadd --system docker; \
             if ! id -nG gantry | tr ' ' '\\n' | grep -qx docker; then usermod -aG docker gantry; unit_changed=1; echo group=changed; fi; "
        } else {
            ""
        },
        state = crate::host::SYSTEM_STATE_DIR,
        file = crate::host::AGENT_UNIT_FILE,
        unit = crate::host::AGENT_UNIT,
    );
    let ran = shell
        .run(&script, Some(unit_file.path()))
        .map_err(|e| ("install the agent", e.into()))?;
    expect_ok(&ran, shell.name(), "install the agent")?;
    let out = ran.stdout_text();
    steps.push(Step {
        step: "install the agent",
        changed: out.contains("changed") || out.contains("restarted"),
        detail: "systemd unit gantry-agent (user gantry, state in /var/lib/gantry)".to_owned(),
    });
    Ok(())
}

/// Opens 22/80/443 in the host's firewall with the gantry just installed
/// (`gantry agent open-ports`: ufw or nftables, see `crate::firewall`).
fn open_ports(shell: &dyn Shell) -> Result<Step, StepError> {
    const STEP: &str = "open ports";
    let ran = shell
        .run(
            &crate::host::remote_gantry("agent open-ports --output json"),
            None,
        )
        .map_err(|e| (STEP, e.into()))?;
    if !ran.ok() {
        // The error the command printed, as JSON, says what went wrong.
        let said: serde_json::Value = serde_json::from_str(&ran.stdout_text()).unwrap_or_default();
        if let Some(message) = said["error"]["message"].as_str() {
            return Err((
                STEP,
                Error::ConfigureFailed {
                    host: shell.name().to_owned(),
                    step: STEP.to_owned(),
                    message: message.to_owned(),
                },
            ));
        }
        expect_ok(&ran, shell.name(), STEP)?;
    }
    let report: serde_json::Value = serde_json::from_str(&ran.stdout_text()).map_err(|e| {
        (
            STEP,
            Error::ConfigureFailed {
                host: shell.name().to_owned(),
                step: STEP.to_owned(),
                message: format!("`gantry agent open-ports` printed what is not its report: {e}"),
            },
        )
    })?;
    Ok(Step {
        step: STEP,
        changed: report["changed"].as_bool().unwrap_or(false),
        detail: report["detail"].as_str().unwrap_or_default().to_owned(),
    })
}

fn expect_ok(ran: &crate::host::Ran, host: &str, step: &'static str) -> Result<(), StepError> {
    if ran.ok() {
        return Ok(());
    }
    let said = ran
        .stderr
        .trim()
        .lines()
        .last()
        .unwrap_or("no message")
        .to_owned();
    Err((
        step,
        Error::ConfigureFailed {
            host: host.to_owned(),
            step: step.to_owned(),
            message: format!(
                "exited with {}: {said}",
                ran.code
                    .map_or_else(|| "a signal".to_owned(), |c| c.to_string())
            ),
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fake::{Fleet, Machine, Said, Script, project};

    #[test]
    fn the_glibc_a_binary_needs_is_its_newest_symbol_version() {
        let binary = b"\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_PRIVATE\0GLIBC_2.17\0";
        assert_eq!(glibc_needed(binary), Some((2, 34)));
        assert_eq!(glibc_needed(b"static, no versions"), None);
        // This very test binary is dynamically linked against glibc.
        let me = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        assert!(glibc_needed(&me).is_some_and(|v| v >= (2, 2)));
    }

    #[test]
    fn hosts_receive_a_copy_without_debug_info() {
        // This very test binary carries debug info (the test profile's).
        let me = std::env::current_exe().unwrap();
        let (copy, binary) = strip_debug_info(&me).unwrap();
        let copy = copy.expect("strip is installed here");
        assert_eq!(binary.stripped, "strip --strip-debug");
        assert_eq!(binary.bytes, std::fs::metadata(&me).unwrap().len());
        assert_eq!(
            binary.shipped_bytes,
            std::fs::metadata(&copy).unwrap().len()
        );
        assert!(binary.shipped_bytes < binary.bytes / 2, "{binary:?}");
        // Still the same program: it asks for the same C library.
        let stripped = std::fs::read(&copy).unwrap();
        assert_eq!(
            glibc_needed(&stripped),
            glibc_needed(&std::fs::read(&me).unwrap())
        );

        // What no tool can strip is sent as it is, and the report says so.
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("not-elf");
        std::fs::write(&text, b"not a binary").unwrap();
        let (none, binary) = strip_debug_info(&text).unwrap();
        assert!(none.is_none());
        assert_eq!((binary.bytes, binary.shipped_bytes), (12, 12));
        assert!(
            binary.stripped.starts_with("sent with its debug info"),
            "{binary:?}"
        );
    }

    #[test]
    fn a_host_with_an_older_or_no_glibc_is_refused_with_its_own_code() {
        assert!(check_libc("h1", Some((2, 34)), "glibc_2.36").is_ok());
        assert!(check_libc("h1", Some((2, 34)), "glibc_2.34").is_ok());
        assert!(check_libc("h1", None, "").is_ok());
        let old = check_libc("h1", Some((2, 34)), "glibc_2.31").expect_err("too old");
        assert_eq!(old.code(), crate::Code::HostLibcTooOld);
        assert!(
            old.to_string()
                .contains("needs glibc 2.34 or newer, and its GNU C library is 2.31"),
            "{old}"
        );
        let musl = check_libc("h1", Some((2, 34)), "").expect_err("none");
        assert!(musl.to_string().contains("no GNU C library"), "{musl}");
    }

    /// A shell that answers every command with `stdout` and runs nothing.
    struct Answers(String);

    impl Shell for Answers {
        fn name(&self) -> &str {
            "h1"
        }

        fn run(&self, _: &str, _: Option<&Path>) -> Result<crate::host::Ran, HostError> {
            Ok(crate::host::Ran {
                code: Some(0),
                stdout: self.0.clone().into_bytes(),
                stderr: String::new(),
            })
        }

        fn interactive(&self, _: Option<&str>) -> Result<i32, HostError> {
            Ok(0)
        }
    }

    #[test]
    fn the_docker_step_reports_what_the_host_says_in_one_short_line() {
        let flood = format!(
            "version=27.5.1\n{}",
            "version=\u{1b}[2J27.5.1 and more\n".repeat(10_000)
        );
        let step = install_docker(&Answers(flood), true, "systemd").unwrap();
        assert_eq!(
            step.detail,
            "Docker 27.5.1 runs; the agent's user gantry is in the group docker"
        );
        assert!(!step.changed);

        let long_user = format!("reach=denied\nuser={}\nuser=other\n", "u".repeat(100_000));
        let step = install_docker(&Answers(long_user), false, "daemon").unwrap();
        assert!(step.detail.len() < 300, "{}", step.detail.len());
        assert!(!step.detail.contains("other"), "{}", step.detail);
    }

    /// A shell that runs commands here, with `DOCKER_HOST` as given.
    struct Here(Option<String>);

    impl Shell for Here {
        fn name(&self) -> &str {
            "here"
        }

        fn run(&self, command: &str, _: Option<&Path>) -> Result<crate::host::Ran, HostError> {
            let mut sh = std::process::Command::new("sh");
            sh.args(["-c", command]).env_remove("DOCKER_HOST");
            if let Some(host) = &self.0 {
                sh.env("DOCKER_HOST", host);
            }
            let out = sh.output().unwrap();
            Ok(crate::host::Ran {
                code: out.status.code(),
                stdout: out.stdout,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }

        fn interactive(&self, _: Option<&str>) -> Result<i32, HostError> {
            Ok(0)
        }
    }

    #[test]
    fn not_as_root_the_docker_step_checks_the_socket_docker_host_names() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        std::fs::write(&socket, "").unwrap();
        let reach = |docker_host: String| {
            install_docker(&Here(Some(docker_host)), false, "daemon")
                .unwrap()
                .detail
        };
        let rootless = reach(format!("unix://{}", socket.display()));
        assert!(
            rootless.starts_with(&format!(
                "Docker's socket {} is reachable by ",
                socket.display()
            )),
            "{rootless}"
        );
        let gone = dir.path().join("gone.sock");
        let elsewhere = reach(format!("unix://{}", gone.display()));
        assert!(elsewhere.starts_with("not root: "), "{elsewhere}");
    }

    fn configure_on(
        fleet: &Arc<Fleet>,
        project: &Project,
        exe: &Path,
    ) -> Result<ConfigureReport, Error> {
        configure(
            project,
            "prod",
            exe,
            &|spec: &HostSpec| fleet.open_shell(spec),
            &|spec: &HostSpec| fleet.connect(spec),
            &Said::default(),
        )
    }

    fn changed(report: &ConfigureReport) -> Vec<(String, &'static str)> {
        report
            .hosts
            .iter()
            .flat_map(|h| {
                h.steps
                    .iter()
                    .filter(|s| s.changed)
                    .map(|s| (h.host.clone(), s.step))
            })
            .collect()
    }

    /// `h1` is a systemd host configured as root, `h2` a user's account.
    fn fleet() -> Arc<Fleet> {
        let root = Machine {
            root: true,
            systemd: true,
            ..Machine::default()
        };
        Fleet::new([
            (
                "h1",
                Script {
                    machine: root,
                    ..Script::default()
                },
            ),
            ("h2", Script::default()),
        ])
    }

    #[test]
    fn configure_run_twice_changes_nothing_the_second_time() {
        let (dir, project) = project(&["h1", "h2"], 1);
        let exe = dir.path().join("gantry-binary");
        std::fs::write(&exe, b"this very gantry").unwrap();
        let fleet = fleet();

        let first = configure_on(&fleet, &project, &exe).unwrap();
        assert_eq!(
            changed(&first),
            [
                ("h1".to_owned(), "install gantry"),
                ("h1".to_owned(), "install the agent"),
                ("h1".to_owned(), "open ports"),
                ("h2".to_owned(), "install gantry"),
            ]
        );
        let machine = fleet.machine("h1");
        assert!(machine.unit_active && machine.ports_open, "{machine:?}");
        let states = StateDir::of(dir.path());
        let after_first = states.load("prod").unwrap().unwrap();
        let before = fleet.calls().len();

        let second = configure_on(&fleet, &project, &exe).unwrap();
        assert_eq!(changed(&second), []);
        assert_eq!(second.state, Phase::Configured);
        let again = &fleet.calls()[before..];
        // The binary is not sent again; the unit's script runs, and finds it all in place.
        assert!(
            !again.iter().any(|c| c.ends_with("run install gantry")),
            "{again:#?}"
        );
        assert_eq!(fleet.machine("h1"), machine);
        let after_second = states.load("prod").unwrap().unwrap();
        // No second transition to `configured` is recorded.
        assert_eq!(after_second.history().len(), after_first.history().len());
    }
}
