//! Hosts over SSH, through the user's own OpenSSH client: `~/.ssh/config`,
//! ssh-agent, keys with passphrases and ProxyJump all work because it is
//! `ssh` that connects. Connections are multiplexed (ControlMaster), so each
//! command after the first costs no new handshake.
//!
//! The agent API travels over `ssh HOST gantry agent connect`, which bridges
//! the session's stdin and stdout to the agent's Unix socket on the host.
//! When the connection fails, OpenSSH's message on stderr says why; `classify`
//! turns it into an error a user can act on.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use gantry_core::config::SshTarget;
use gantry_core::host::{HostError, Ran, SshFailure};

use crate::agent::{Agent, Transport};
use crate::client::{Client, ClientError, Dial};

/// How `ssh` is run.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// The client: `ssh`, or `$GANTRY_SSH`.
    pub program: OsString,
    /// A config file used instead of `~/.ssh/config` (`$GANTRY_SSH_CONFIG`).
    pub config: Option<PathBuf>,
    /// Where multiplexed connections keep their sockets; None: no safe
    /// place was found (`control_dir::choose`), every command connects anew.
    pub control_dir: Option<PathBuf>,
    /// Seconds to wait for the TCP connection and the SSH handshake.
    pub connect_timeout: u32,
    /// Why connections are not shared, when they are not: for a warning.
    pub unshared: Option<String>,
}

impl SshOptions {
    /// From the environment: `GANTRY_SSH`, `GANTRY_SSH_CONFIG`, and for
    /// the sockets of shared connections `XDG_RUNTIME_DIR`, `HOME`, `TMPDIR`.
    pub fn from_env() -> SshOptions {
        let (control_dir, unshared) = match crate::control_dir::choose() {
            Ok(dir) => (Some(dir), None),
            Err(why) => (None, Some(why)),
        };
        SshOptions {
            program: std::env::var_os("GANTRY_SSH").unwrap_or_else(|| "ssh".into()),
            config: std::env::var_os("GANTRY_SSH_CONFIG").map(PathBuf::from),
            control_dir,
            connect_timeout: 10,
            unshared,
        }
    }

    /// `ssh` with its options, then `--` and the destination (so that no
    /// target is ever read as an option), ready for a remote command.
    pub fn command_line(&self, target: &SshTarget) -> Vec<OsString> {
        self.command_line_with(target, true)
    }

    /// `command_line`, multiplexed over a shared connection or not.
    fn command_line_with(&self, target: &SshTarget, multiplexed: bool) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![self.program.clone()];
        if let Some(config) = &self.config {
            argv.push("-F".into());
            argv.push(config.into());
        }
        let options = [
            // Never ask: a prompt would hang a command that scripts run.
            "BatchMode=yes".to_owned(),
            format!("ConnectTimeout={}", self.connect_timeout),
            // A link that dies is noticed within 15 s.
            "ServerAliveInterval=5".to_owned(),
            "ServerAliveCountMax=3".to_owned(),
            // Trust on first use; a changed key is always refused.
            "StrictHostKeyChecking=accept-new".to_owned(),
            "LogLevel=ERROR".to_owned(),
        ];
        let multiplexing = if let Some(dir) = self.control_dir.as_ref().filter(|_| multiplexed) {
            [
                "ControlMaster=auto".to_owned(),
                format!("ControlPath={}", dir.join("%C").display()),
                "ControlPersist=60".to_owned(),
            ]
        } else {
            [
                "ControlMaster=no".to_owned(),
                "ControlPath=none".to_owned(),
                "ControlPersist=no".to_owned(),
            ]
        };
        let options = options.into_iter().chain(multiplexing);
        for option in options {
            argv.push("-o".into());
            argv.push(option.into());
        }
        argv.push("-T".into());
        if let Some(port) = target.port {
            argv.push("-p".into());
            argv.push(port.to_string().into());
        }
        argv.push("--".into());
        argv.push(target.destination().into());
        argv
    }
}

/// The transport to one host's agent over SSH.
pub struct Ssh {
    /// The host's name in gantry.toml.
    name: String,
    target: SshTarget,
    options: SshOptions,
}

impl Ssh {
    /// What a plain, unmultiplexed `ssh TARGET true` says on stderr: a
    /// multiplexing master sends its ProxyCommand's (a ProxyJump hop's)
    /// stderr to /dev/null, and with it the reason a jump failed.
    fn diagnose(&self) -> Option<String> {
        let mut argv = self.options.command_line_with(&self.target, false);
        argv.push("true".into());
        let (program, args) = argv.split_first()?;
        let started = Instant::now();
        let output = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        crate::trace::ssh_ran(&self.name, &argv, output.status.code(), started);
        (!output.status.success()).then(|| String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// An agent reached over SSH.
pub type SshAgent = Agent<Ssh>;

impl Transport for Ssh {
    fn error(&self, host: &str, error: ClientError) -> HostError {
        match error {
            ClientError::Exited { code, stderr } => {
                remote_failure(host, &stderr).unwrap_or_else(|| {
                    // The far end hung up before SSH began: through a proxy
                    // (ProxyJump), the proxy's own words were lost.
                    let proxied = stderr.contains("kex_exchange_identification")
                        || stderr.contains("UNKNOWN port 65535");
                    let stderr = match proxied.then(|| self.diagnose()).flatten() {
                        Some(said) => format!("{said}{stderr}"),
                        None => stderr,
                    };
                    classify(host, &self.target, code, &stderr)
                })
            }
            ClientError::Connect(e) => HostError::Ssh {
                host: host.to_owned(),
                failure: SshFailure::Unreachable,
                message: e.to_string(),
                hint: "check that OpenSSH's client (`ssh`) is installed, or set GANTRY_SSH"
                    .to_owned(),
            },
            // `Agent::transport` takes this one first.
            other @ ClientError::WrongPeer { .. } => HostError::Protocol {
                host: host.to_owned(),
                message: other.to_string(),
            },
            ClientError::Http(message) => HostError::Ssh {
                host: host.to_owned(),
                failure: SshFailure::Unreachable,
                message: format!("the connection to {} broke: {message}", self.target),
                hint: format!("check the network path to {}, then retry", self.target),
            },
        }
    }
}

impl Agent<Ssh> {
    /// Connects to the agent of the host `name` at `target`, and checks that
    /// it speaks this CLI's version of the API.
    pub fn connect(name: &str, target: &str, options: &SshOptions) -> Result<SshAgent, HostError> {
        let agent = Self::open(name, target, options)?;
        let info = gantry_core::host::Host::info(&agent)?;
        gantry_core::host::compatible(name, &info.version)?;
        Ok(agent)
    }

    fn open(name: &str, target: &str, options: &SshOptions) -> Result<SshAgent, HostError> {
        let target = SshTarget::parse(target).map_err(|message| HostError::Ssh {
            host: name.to_owned(),
            failure: SshFailure::Unreachable,
            message,
            hint: format!("fix `ssh` of host `{name}` in gantry.toml"),
        })?;
        let mut argv = options.command_line(&target);
        argv.push(gantry_core::host::remote_gantry("agent connect").into());
        let client = Client::new(name, Dial::Command(argv)).map_err(|e| HostError::Ssh {
            host: name.to_owned(),
            failure: SshFailure::Unreachable,
            message: e.to_string(),
            hint: String::new(),
        })?;
        Ok(Agent {
            name: name.to_owned(),
            client,
            transport: Ssh {
                name: name.to_owned(),
                target,
                options: options.clone(),
            },
        })
    }
}

/// Runs commands on a host over SSH: what `gantry configure` and
/// `gantry exec` need beside the agent API.
pub struct Shell {
    pub name: String,
    pub target: SshTarget,
    pub options: SshOptions,
}

impl gantry_core::host::Shell for Shell {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&self, command: &str, stdin: Option<&Path>) -> Result<Ran, HostError> {
        Shell::run(self, command, stdin)
    }

    fn resolved_address(&self) -> Option<String> {
        let mut argv = self.options.command_line(&self.target);
        argv.insert(1, "-G".into());
        let started = Instant::now();
        let output = Command::new(&argv[0]).args(&argv[1..]).output().ok()?;
        crate::trace::ssh_ran(&self.name, &argv, output.status.code(), started);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("hostname ").map(str::to_owned))
    }

    fn interactive(&self, command: Option<&str>) -> Result<i32, HostError> {
        use std::io::IsTerminal;
        let tty = std::io::stdin().is_terminal();
        let mut ssh = self.command(command, tty);
        let started = Instant::now();
        let status = ssh.status().map_err(|e| self.local_error(e))?;
        crate::trace::ssh_ran(&self.name, &argv_of(&ssh), status.code(), started);
        match status.code() {
            // ssh wrote its own reason to the terminal, not to us.
            Some(255) => Err(classify(
                &self.name,
                &self.target,
                Some(255),
                "ssh exited with status 255; its reason, if it gave one, is printed above",
            )),
            code => Ok(code.unwrap_or(1)),
        }
    }
}

impl Shell {
    pub fn new(name: &str, target: &str, options: &SshOptions) -> Result<Shell, HostError> {
        let parsed = SshTarget::parse(target).map_err(|message| HostError::Ssh {
            host: name.to_owned(),
            failure: SshFailure::Unreachable,
            message,
            hint: format!("fix `ssh` of host `{name}` in gantry.toml"),
        })?;
        Ok(Shell {
            name: name.to_owned(),
            target: parsed,
            options: options.clone(),
        })
    }

    /// The command line that runs `remote` on the host (for `gantry ssh`,
    /// which hands the terminal over).
    pub fn command(&self, remote: Option<&str>, tty: bool) -> Command {
        let mut argv = self.options.command_line(&self.target);
        if tty {
            // `-T` was for the API; an interactive session wants a terminal.
            if let Some(at) = argv.iter().position(|a| a == "-T") {
                argv[at] = "-t".into();
            }
        }
        if let Some(remote) = remote {
            argv.push(remote.into());
        }
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        command
    }

    /// Runs `remote` (a shell command line) with `stdin` as its input;
    /// SSH's own failures become errors, the command's exit is returned.
    pub fn run(&self, remote: &str, stdin: Option<&Path>) -> Result<Ran, HostError> {
        let mut command = self.command(Some(remote), false);
        let input = match stdin {
            Some(path) => Stdio::from(std::fs::File::open(path).map_err(|e| HostError::Ssh {
                host: self.name.clone(),
                failure: SshFailure::Unreachable,
                message: format!("cannot read {}: {e}", path.display()),
                hint: String::new(),
            })?),
            None => Stdio::null(),
        };
        let stderr = tempfile::tempfile().map_err(|e| self.local_error(e))?;
        let started = Instant::now();
        let output = command
            .stdin(input)
            .stdout(Stdio::piped())
            .stderr(stderr.try_clone().map_err(|e| self.local_error(e))?)
            .output()
            .map_err(|e| self.local_error(e))?;
        let code = output.status.code();
        crate::trace::ssh_ran(&self.name, &argv_of(&command), code, started);
        let stderr = read_all(stderr);
        if code == Some(255) {
            return Err(classify(&self.name, &self.target, code, &stderr));
        }
        Ok(Ran {
            code,
            stdout: output.stdout,
            stderr,
        })
    }

    fn local_error(&self, e: std::io::Error) -> HostError {
        HostError::Ssh {
            host: self.name.clone(),
            failure: SshFailure::Unreachable,
            message: format!("cannot run {}: {e}", self.options.program.to_string_lossy()),
            hint: "check that OpenSSH's client (`ssh`) is installed, or set GANTRY_SSH".to_owned(),
        }
    }
}

/// A command's program and arguments.
fn argv_of(command: &Command) -> Vec<OsString> {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsString::from)
        .collect()
}

fn read_all(mut file: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    text
}

/// `gantry agent connect` on the host failed on its own and said why, as
/// one JSON line on stderr (its stdout carries the API): the agent there
/// does not answer, for the reason and with the hint it gives.
fn remote_failure(host: &str, stderr: &str) -> Option<HostError> {
    #[derive(serde::Deserialize)]
    struct Said {
        error: Failure,
    }
    #[derive(serde::Deserialize)]
    struct Failure {
        code: String,
        message: String,
        #[serde(default)]
        hint: String,
    }
    let said = stderr
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Said>(line.trim()).ok())
        .filter(|said| said.error.code == "agent.unreachable")?;
    Some(HostError::Unreachable {
        host: host.to_owned(),
        message: said.error.message,
        hint: said.error.hint,
    })
}

/// Turns OpenSSH's exit and stderr into an error that says what to do.
pub fn classify(host: &str, target: &SshTarget, code: Option<i32>, stderr: &str) -> HostError {
    let said = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("@@@") && !l.starts_with("Warning:"))
        .unwrap_or("no message")
        .to_owned();
    let error = |failure, hint: String| HostError::Ssh {
        host: host.to_owned(),
        failure,
        message: said.clone(),
        hint,
    };
    let has = |needle: &str| stderr.contains(needle);
    if has("Host key verification failed") && !has("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return error(
            SshFailure::HostKeyUnknown,
            format!(
                "a host key is not in known_hosts and SSH may not ask: if {target} goes through a ProxyJump host, that host's key (OpenSSH applies only ~/.ssh/config to the jump, not Gantry's StrictHostKeyChecking=accept-new): run `ssh {target}` once by hand, or set `StrictHostKeyChecking accept-new` for the jump host in ~/.ssh/config"
            ),
        );
    }
    if has("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return error(
            SshFailure::HostKeyChanged,
            format!(
                "the key {target} presents is not the one seen before: if the server was reinstalled, remove the old key with `ssh-keygen -R {}` and retry; otherwise someone may be in the middle",
                target.address
            ),
        );
    }
    if has("Permission denied") || has("Too many authentication failures") {
        return error(
            SshFailure::AuthRefused,
            format!(
                "`ssh {target}` must log in without a prompt: load your key with `ssh-add`, and put its public half in the host's ~/.ssh/authorized_keys"
            ),
        );
    }
    if code == Some(127)
        || (has("gantry") && (has("not found") || has("No such file or directory")))
    {
        return error(
            SshFailure::GantryMissing,
            "install it there with `gantry configure` (it uploads this gantry binary)".to_owned(),
        );
    }
    let hint = if has("Could not resolve hostname") {
        format!(
            "`{}` does not resolve: check the name in gantry.toml or ~/.ssh/config",
            target.address
        )
    } else {
        format!("check that {target} is up and that `ssh {target}` works from this machine")
    };
    error(SshFailure::Unreachable, hint)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_always_comes_after_the_end_of_options() {
        let options = SshOptions {
            program: "ssh".into(),
            config: None,
            control_dir: None,
            connect_timeout: 10,
            unshared: None,
        };
        let shell = Shell {
            name: "web1".to_owned(),
            target: SshTarget::parse("deploy@10.0.0.5:2222").unwrap(),
            options,
        };
        let tail = |command: Command| -> Vec<String> {
            let args: Vec<String> = command
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let end = args.iter().position(|a| a == "--").expect("a `--`");
            args[end..].to_vec()
        };
        assert_eq!(tail(shell.command(None, false)), ["--", "deploy@10.0.0.5"]);
        assert_eq!(
            tail(shell.command(Some("-x"), true)),
            ["--", "deploy@10.0.0.5", "-x"]
        );
    }

    fn failure(stderr: &str, code: Option<i32>) -> SshFailure {
        let target = SshTarget::parse("u@h").unwrap();
        match classify("web1", &target, code, stderr) {
            HostError::Ssh { failure, .. } => failure,
            other => panic!("{other:?}"),
        }
    }

    // OpenSSH 9.2's messages, as printed by the client.
    #[test]
    fn openssh_messages_are_told_apart() {
        assert_eq!(
            failure("u@10.9.0.2: Permission denied (publickey).\r\n", Some(255)),
            SshFailure::AuthRefused
        );
        assert_eq!(
            failure(
                "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n",
                Some(255)
            ),
            SshFailure::HostKeyChanged
        );
        // What a ProxyJump hop whose key is unknown leaves on stderr.
        assert_eq!(
            failure(
                "Host key verification failed.\r\nkex_exchange_identification: Connection closed by remote host\r\nConnection closed by UNKNOWN port 65535\r\n",
                Some(255)
            ),
            SshFailure::HostKeyUnknown
        );
        assert_eq!(
            failure(
                "ssh: connect to host 10.9.0.2 port 22: Connection timed out\n",
                Some(255)
            ),
            SshFailure::Unreachable
        );
        assert_eq!(
            failure("sh: 1: exec: gantry: not found\n", Some(127)),
            SshFailure::GantryMissing
        );
    }

    #[test]
    fn the_agent_connect_of_the_host_says_why_its_agent_does_not_answer() {
        let stderr = "Warning: Permanently added 'h1' (ED25519) to the list of known hosts.\n{\"error\":{\"code\":\"agent.unreachable\",\"exit_code\":5,\"hint\":\"see `systemctl status gantry-agent`\",\"message\":\"the agent of the systemd unit gantry-agent does not answer on /var/lib/gantry/agent.sock after 10s: connection refused\"}}\n";
        match remote_failure("web1", stderr) {
            Some(HostError::Unreachable {
                host,
                message,
                hint,
            }) => {
                assert_eq!(host, "web1");
                assert!(message.contains("systemd unit gantry-agent"), "{message}");
                assert_eq!(hint, "see `systemctl status gantry-agent`");
            }
            other => panic!("{other:?}"),
        }
        assert!(remote_failure("web1", "sh: 1: exec: gantry: not found\n").is_none());
    }
}
