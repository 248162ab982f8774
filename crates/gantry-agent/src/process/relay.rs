//! The relay: the process that sits between one service instance and the
//! world, so the agent can stop, crash or upgrade without taking services
//! with it. It starts the service in its own process group (and cgroup),
//! records its pid, copies its output to the instance log, and records how
//! it ended. It never writes a secret value, not even into an error.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use gantry_core::agent_api::{Exit, Stream};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::logs::{self, LogWriter};
use super::{
    Cgroup, CgroupMode, LaunchSpec, Launched, RunFile, check_instance, now_ms, procfs, run_file,
    write_atomic,
};

/// How long after the service exits its output may still arrive before the
/// exit is recorded (something it started may hold its stdout open).
const DRAIN: Duration = Duration::from_secs(2);

/// `gantry agent relay --spec FILE`: detaches, reads and deletes the spec,
/// runs the instance to its end.
pub fn relay_main(spec_path: &Path) -> ExitCode {
    // A session of its own: nothing aimed at the agent's group or terminal
    // reaches the relay. Fails only if already a session leader, which is fine.
    let _ = nix::unistd::setsid();
    let spec: Option<LaunchSpec> = std::fs::read(spec_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let _ = std::fs::remove_file(spec_path);
    let Some(spec) = spec else {
        return ExitCode::from(2);
    };
    match run(&spec) {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Runs the instance described by `spec` in this process and returns how it
/// ended. On a failure to start, `<instance>.error` says why (and so does a
/// line in the log), and no pid file is written.
pub fn run(spec: &LaunchSpec) -> io::Result<Exit> {
    check_instance(&spec.instance)?;
    std::fs::create_dir_all(&spec.run_dir)?;
    for stale in [RunFile::Exit, RunFile::Error] {
        let _ = std::fs::remove_file(run_file(&spec.run_dir, &spec.instance, stale));
    }
    match start(spec) {
        Ok(running) => Ok(running.wait()),
        Err(e) => {
            record_failure(spec, &e);
            Err(e)
        }
    }
}

struct Running<'a> {
    spec: &'a LaunchSpec,
    child: Child,
    oom_before: Option<u64>,
    readers: usize,
    done: Receiver<()>,
}

fn start(spec: &LaunchSpec) -> io::Result<Running<'_>> {
    let env = environment(spec)?;
    let log = LogWriter::open(
        &spec.log_dir,
        &spec.instance,
        spec.log_max_bytes,
        spec.log_keep,
    )
    .map_err(|e| {
        context(
            e,
            format!("cannot open the log in {}", spec.log_dir.display()),
        )
    })?;
    logs::prune_gone(&spec.log_dir, &spec.run_dir, logs::KEEP_GONE);
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a stop reaches everything it started.
        .process_group(0);
    // Joined while the relay's privileges still hold; confined after.
    if let Some(cgroup) = &spec.cgroup {
        join_on_exec(&mut command, cgroup)?;
    }
    super::confine(&mut command, &spec.confinement);
    let oom_before = spec.cgroup.as_ref().and_then(Cgroup::oom_kill_counter);
    let mut child = command
        .spawn()
        .map_err(|e| context(e, format!("cannot start /bin/sh in {}", spec.cwd.display())))?;
    let log = Arc::new(Mutex::new(log));
    let (done_tx, done) = mpsc::channel();
    let mut readers = 0;
    let mut started = Ok(());
    if let Some(out) = child.stdout.take() {
        started = started.and(copy_to_log(out, Stream::Stdout, &log, &done_tx));
        readers += 1;
    }
    if let Some(err) = child.stderr.take() {
        started = started.and(copy_to_log(err, Stream::Stderr, &log, &done_tx));
        readers += 1;
    }
    let recorded = started.and_then(|()| write_pid_file(spec, child.id()));
    if let Err(e) = recorded {
        if let Ok(pgid) = i32::try_from(child.id()) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        let _ = child.wait();
        return Err(e);
    }
    Ok(Running {
        spec,
        child,
        oom_before,
        readers,
        done,
    })
}

impl Running<'_> {
    /// Waits for the service to exit, records how, and returns once its
    /// output is closed.
    fn wait(mut self) -> Exit {
        let status = self.child.wait();
        let (code, signal) = match &status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        };
        let deadline = Instant::now() + DRAIN;
        while self.readers > 0 {
            match self
                .done
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(()) => self.readers -= 1,
                Err(_) => break,
            }
        }
        let oom = self
            .spec
            .cgroup
            .as_ref()
            .is_some_and(|c| was_oom_killed(c, self.oom_before, signal));
        let exit = Exit {
            code,
            signal,
            oom,
            at: now_ms(),
        };
        if let Ok(json) = serde_json::to_vec(&exit) {
            let path = run_file(&self.spec.run_dir, &self.spec.instance, RunFile::Exit);
            let _ = write_atomic(&path, &json, 0o644);
        }
        // What the service left behind may still write; keep copying until
        // it closes the pipes (a stop of the instance's group ends it).
        while self.readers > 0 && self.done.recv().is_ok() {
            self.readers -= 1;
        }
        exit
    }
}

fn was_oom_killed(cgroup: &Cgroup, before: Option<u64>, signal: Option<i32>) -> bool {
    match (before, cgroup.oom_kill_counter()) {
        (Some(before), Some(after)) => after > before,
        (None, Some(after)) => after > 0,
        // Kernels without the counter: a SIGKILL after allocations failed.
        (_, None) => {
            cgroup.mode == CgroupMode::V1
                && signal == Some(Signal::SIGKILL as i32)
                && cgroup.memory_failcnt() > 0
        }
    }
}

/// `spec.env` plus the secrets it names, read from the secrets file.
fn environment(spec: &LaunchSpec) -> io::Result<BTreeMap<String, String>> {
    let mut env = spec.env.clone();
    env.extend(secret_values(
        spec.secrets_file.as_deref(),
        &spec.secret_names,
    )?);
    Ok(env)
}

/// The values of `names` from a secrets file of `NAME=value` lines (the last
/// definition wins, as in a shell). Errors name the secret, never a value.
pub fn secret_values(
    file: Option<&std::path::Path>,
    names: &[String],
) -> io::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    if names.is_empty() {
        return Ok(env);
    }
    let Some(path) = file else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "secrets {} are needed but no secrets file was given",
                names.join(", ")
            ),
        ));
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        context(
            e,
            format!("cannot read the secrets file {}", path.display()),
        )
    })?;
    for name in names {
        let value = text
            .lines()
            .rev()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .find(|(key, _)| key.trim() == name)
            .map(|(_, value)| value)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("secret `{name}` is not in {}", path.display()),
                )
            })?;
        env.insert(name.clone(), value.to_owned());
    }
    Ok(env)
}

/// Makes the child join `cgroup` before it execs, so even its first
/// allocation and fork are limited.
#[allow(unsafe_code)]
fn join_on_exec(command: &mut Command, cgroup: &Cgroup) -> io::Result<()> {
    let files = cgroup
        .procs_files()
        .into_iter()
        .map(|p| CString::new(p.into_os_string().into_vec()))
        .collect::<Result<Vec<CString>, _>>()
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a cgroup path contains a NUL byte",
            )
        })?;
    let join = move || -> io::Result<()> {
        use nix::fcntl::{OFlag, open};
        use nix::sys::stat::Mode;
        for file in &files {
            let fd = open(
                file.as_c_str(),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            // "0" is the writing process itself, in v1 and v2 alike.
            nix::unistd::write(&fd, b"0")?;
        }
        Ok(())
    };
    // SAFETY: `join` runs in the child between fork and exec, where only
    // async-signal-safe work is allowed. It allocates nothing and takes no
    // lock: the paths were built before the fork, and it only calls open(2),
    // write(2) and close(2); errors are plain errno values.
    unsafe {
        command.pre_exec(join);
    }
    Ok(())
}

fn copy_to_log<R: Read + Send + 'static>(
    pipe: R,
    stream: Stream,
    log: &Arc<Mutex<LogWriter>>,
    done: &Sender<()>,
) -> io::Result<()> {
    let (log, done) = (Arc::clone(log), done.clone());
    thread::Builder::new()
        .name(format!("relay-{stream:?}").to_lowercase())
        .spawn(move || {
            logs::copy_lines(pipe, |line| {
                let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                log.write(now_ms(), stream, line);
            });
            let _ = done.send(());
        })?;
    Ok(())
}

fn write_pid_file(spec: &LaunchSpec, pid: u32) -> io::Result<()> {
    let start_time = procfs::start_time(pid).ok_or_else(|| {
        io::Error::other(format!("the service (pid {pid}) vanished as it started"))
    })?;
    let launched = Launched {
        pid,
        start_time,
        relay_pid: std::process::id(),
    };
    let json = serde_json::to_vec(&launched).map_err(io::Error::other)?;
    write_atomic(
        &run_file(&spec.run_dir, &spec.instance, RunFile::Pid),
        &json,
        0o644,
    )
    .map_err(|e| {
        context(
            e,
            format!("cannot write the pid file in {}", spec.run_dir.display()),
        )
    })
}

/// Why the service did not start, for [`super::launch`] and for the log.
fn record_failure(spec: &LaunchSpec, error: &io::Error) {
    let message = error.to_string();
    let path = run_file(&spec.run_dir, &spec.instance, RunFile::Error);
    let _ = write_atomic(&path, message.as_bytes(), 0o644);
    if let Ok(mut log) = LogWriter::open(
        &spec.log_dir,
        &spec.instance,
        spec.log_max_bytes,
        spec.log_keep,
    ) {
        log.write(
            now_ms(),
            Stream::Stderr,
            &format!("gantry: cannot start the service: {message}"),
        );
    }
}

fn context(error: io::Error, what: String) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

#[cfg(test)]
mod tests;
