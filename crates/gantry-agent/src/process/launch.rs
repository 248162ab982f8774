//! Starting an instance from the agent: hand the spec to a new relay and
//! wait until the relay says the service runs. The agent keeps no pipe to
//! the relay or the service; it only reaps the relay if it is still around
//! when the relay exits.

use std::io;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::{LaunchSpec, Launched, RunFile, check_instance, read_pid_file, run_file, write_atomic};

const POLL: Duration = Duration::from_millis(10);

/// Starts `gantry_exe agent relay --spec FILE` for `spec` and waits, up to
/// `deadline`, for the relay to report the service's pid. Blocks.
pub fn launch(gantry_exe: &Path, spec: &LaunchSpec, deadline: Duration) -> io::Result<Launched> {
    check_instance(&spec.instance)?;
    std::fs::create_dir_all(&spec.run_dir)?;
    for stale in [RunFile::Pid, RunFile::Exit, RunFile::Error] {
        let _ = std::fs::remove_file(run_file(&spec.run_dir, &spec.instance, stale));
    }
    let spec_path = run_file(&spec.run_dir, &spec.instance, RunFile::Spec);
    let json = serde_json::to_vec(spec).map_err(io::Error::other)?;
    write_atomic(&spec_path, &json, 0o600)?;
    // The relay detaches itself (setsid) first thing; it must not share the
    // agent's stdio, or a closed agent terminal could take it down.
    let relay = Command::new(gantry_exe)
        .args(["agent", "relay", "--spec"])
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut relay = match relay {
        Ok(relay) => relay,
        Err(e) => {
            let _ = std::fs::remove_file(&spec_path);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot start the relay {}: {e}", gantry_exe.display()),
            ));
        }
    };
    let relay_pid = relay.id();
    // Reaped when it ends, so it never lingers as the agent's zombie.
    let ended: Arc<Mutex<Option<io::Result<ExitStatus>>>> = Arc::default();
    let reaper_ended = Arc::clone(&ended);
    let _ = thread::Builder::new()
        .name(format!("relay-reaper-{relay_pid}"))
        .spawn(move || {
            let status = relay.wait();
            *reaper_ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
        });
    let outcome = wait_for_pid_file(spec, relay_pid, &ended, deadline);
    if outcome.is_err() {
        let _ = std::fs::remove_file(&spec_path);
    }
    outcome
}

fn wait_for_pid_file(
    spec: &LaunchSpec,
    relay_pid: u32,
    ended: &Mutex<Option<io::Result<ExitStatus>>>,
    deadline: Duration,
) -> io::Result<Launched> {
    let give_up = Instant::now() + deadline;
    loop {
        // Read before looking at the pid file, so a relay that wrote it and
        // then exited is not taken for one that failed.
        let relay_ended = ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|status| match status {
                Ok(status) => status.to_string(),
                Err(e) => e.to_string(),
            });
        if let Some(launched) = read_pid_file(&spec.run_dir, &spec.instance)
            && launched.relay_pid == relay_pid
        {
            return Ok(launched);
        }
        let error_file = run_file(&spec.run_dir, &spec.instance, RunFile::Error);
        if let Ok(why) = std::fs::read_to_string(error_file) {
            return Err(io::Error::other(why));
        }
        if let Some(status) = relay_ended {
            return Err(io::Error::other(format!(
                "the relay ended ({status}) before starting the service"
            )));
        }
        if Instant::now() >= give_up {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the relay (pid {relay_pid}) did not start the service within {}ms",
                    deadline.as_millis()
                ),
            ));
        }
        thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;
    use crate::process::{StopOutcome, is_running, read_exit, read_log, stop};

    const SPEC_VAR: &str = "GANTRY_TEST_RELAY_SPEC";
    const ENTRY: &str = "process::launch::tests::relay_entry_point";

    /// Not a test of its own: the relay, when this test binary is started as
    /// one by the script [`fake_gantry`] writes.
    #[test]
    fn relay_entry_point() {
        if let Some(spec) = std::env::var_os(SPEC_VAR) {
            let code = crate::process::relay_main(Path::new(&spec));
            std::process::exit(if code == std::process::ExitCode::SUCCESS {
                0
            } else {
                1
            });
        }
    }

    /// A stand-in for the gantry binary: `$0 agent relay --spec FILE` runs
    /// this test binary's [`relay_entry_point`] on FILE.
    fn fake_gantry(dir: &Path) -> PathBuf {
        let exe = std::env::current_exe().expect("test binary");
        let script = format!(
            "#!/bin/sh\nexec env {SPEC_VAR}=\"$4\" '{}' --exact {ENTRY} --test-threads=1 --nocapture\n",
            exe.display()
        );
        let path = dir.join("gantry");
        std::fs::write(&path, script).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn spec(dir: &Path, command: &str) -> LaunchSpec {
        LaunchSpec {
            instance: "web-1".to_owned(),
            command: command.to_owned(),
            cwd: dir.to_owned(),
            env: BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]),
            secrets_file: None,
            secret_names: Vec::new(),
            log_dir: dir.join("logs"),
            log_max_bytes: 1 << 20,
            log_keep: 2,
            run_dir: dir.join("run"),
            cgroup: None,
            confinement: Default::default(),
        }
    }

    /// Another thread forking while the script is still open for writing
    /// makes exec fail with ETXTBSY for a moment; that is the test's
    /// doing, not launch's.
    fn launch_retrying(exe: &Path, spec: &LaunchSpec) -> io::Result<Launched> {
        let mut tries = 0;
        loop {
            match launch(exe, spec, Duration::from_secs(20)) {
                Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 20 => tries += 1,
                other => return other,
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(POLL);
        }
    }

    #[test]
    fn launch_starts_the_service_under_a_detached_relay_and_reaps_the_relay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = fake_gantry(dir.path());
        let spec = spec(dir.path(), "echo started; exec sleep 60");
        let launched = launch_retrying(&exe, &spec).expect("launch");

        assert!(is_running(launched.pid, launched.start_time));
        let relay = nix::unistd::Pid::from_raw(i32::try_from(launched.relay_pid).expect("pid"));
        assert_eq!(
            nix::unistd::getsid(Some(relay)).expect("sid"),
            relay,
            "relay leads its own session"
        );
        let service = nix::unistd::Pid::from_raw(i32::try_from(launched.pid).expect("pid"));
        assert_eq!(nix::unistd::getpgid(Some(service)).expect("pgid"), service);
        assert!(
            !run_file(&spec.run_dir, "web-1", RunFile::Spec).exists(),
            "spec file deleted"
        );
        wait_until("the first line", || {
            !read_log(&spec.log_dir, "web-1", None, None).is_empty()
        });

        assert_eq!(
            stop(launched.pid, launched.start_time, Duration::from_secs(10)),
            StopOutcome::Exited
        );
        wait_until("the exit file", || {
            read_exit(&spec.run_dir, "web-1").is_some()
        });
        let exit = read_exit(&spec.run_dir, "web-1").expect("exit");
        assert_eq!(exit.signal, Some(nix::sys::signal::Signal::SIGTERM as i32));
        // Reaped by launch's thread: gone, not a zombie.
        wait_until("the relay to be reaped", || {
            !Path::new(&format!("/proc/{}", launched.relay_pid)).exists()
        });
    }

    #[test]
    fn launch_reports_why_the_relay_could_not_start_the_service() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = fake_gantry(dir.path());
        let mut spec = spec(dir.path(), "true");
        spec.secret_names = vec!["API_KEY".to_owned()];
        let error = launch_retrying(&exe, &spec).expect_err("no secrets file");
        assert!(error.to_string().contains("API_KEY"), "{error}");
    }

    #[test]
    fn launch_fails_in_time_when_the_relay_never_reports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = spec(dir.path(), "true");
        let error = launch(Path::new("/bin/false"), &spec, Duration::from_secs(20))
            .expect_err("false is no relay");
        assert!(error.to_string().contains("relay ended"), "{error}");
        let error = launch(
            Path::new("/nonexistent/gantry"),
            &spec,
            Duration::from_secs(1),
        )
        .expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/gantry"), "{error}");
    }
}
