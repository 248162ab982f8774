use std::path::PathBuf;
use std::thread::JoinHandle;

use super::*;
use crate::process::{
    Cgroups, ResourceLimits, StopOutcome, is_running, read_exit, read_log, read_pid_file,
    start_time, stop,
};

const SECRET: &str = "s3cr3t-value-never-logged";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        Fixture { _dir: dir, root }
    }

    fn spec(&self, command: &str) -> LaunchSpec {
        LaunchSpec {
            instance: "web-1".to_owned(),
            command: command.to_owned(),
            cwd: self.root.clone(),
            env: BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]),
            secrets_file: None,
            secret_names: Vec::new(),
            log_dir: self.root.join("logs"),
            log_max_bytes: 1 << 20,
            log_keep: 3,
            run_dir: self.root.join("run"),
            cgroup: None,
            confinement: Default::default(),
        }
    }
}

/// The relay on a thread of its own, as `relay_main` would run it.
fn start_relay(spec: &LaunchSpec) -> JoinHandle<io::Result<Exit>> {
    let spec = spec.clone();
    thread::spawn(move || run(&spec))
}

fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn finish(relay: JoinHandle<io::Result<Exit>>) -> Exit {
    relay
        .join()
        .expect("relay thread")
        .expect("relay ran the service")
}

fn files_in(dir: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        all.push_str(&String::from_utf8_lossy(
            &std::fs::read(entry.path()).unwrap_or_default(),
        ));
    }
    all
}

#[test]
fn the_environment_is_exactly_the_given_one_plus_the_picked_secrets() {
    let fx = Fixture::new();
    let secrets = fx.root.join("secrets.env");
    std::fs::write(
        &secrets,
        format!("# comment\nDB_PASSWORD={SECRET}\nUNPICKED=nope\nTOKEN=a=b\n"),
    )
    .expect("write");
    let mut spec = fx.spec("sleep 60; true");
    spec.env
        .insert("GREETING".to_owned(), "hello world".to_owned());
    spec.secrets_file = Some(secrets);
    spec.secret_names = vec!["DB_PASSWORD".to_owned(), "TOKEN".to_owned()];
    let relay = start_relay(&spec);
    let pid = wait_until("the pid file", || read_pid_file(&spec.run_dir, "web-1"));

    // What execve gave the shell: the relay's doing, before the shell adds PWD.
    let environ = std::fs::read(format!("/proc/{}/environ", pid.pid)).expect("environ");
    let mut seen: Vec<String> = environ
        .split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    seen.sort();
    let expected = [
        format!("DB_PASSWORD={SECRET}"),
        "GREETING=hello world".to_owned(),
        "PATH=/usr/bin:/bin".to_owned(),
        "TOKEN=a=b".to_owned(),
    ];
    assert_eq!(seen, expected);

    assert_eq!(
        stop(pid.pid, pid.start_time, Duration::from_secs(10)),
        StopOutcome::Exited
    );
    finish(relay);
    for dir in [&spec.run_dir, &spec.log_dir] {
        assert!(
            !files_in(dir).contains(SECRET),
            "a secret value was written in {}",
            dir.display()
        );
    }
}

#[test]
fn a_missing_secret_fails_the_start_naming_it_but_no_value() {
    let fx = Fixture::new();
    let secrets = fx.root.join("secrets.env");
    std::fs::write(
        &secrets,
        format!("DB_PASSWORD={SECRET}\nbroken line {SECRET}\n"),
    )
    .expect("write");
    let mut spec = fx.spec("echo never");
    spec.secrets_file = Some(secrets);
    spec.secret_names = vec!["DB_PASSWORD".to_owned(), "API_KEY".to_owned()];
    let error = run(&spec).expect_err("API_KEY is missing");
    assert!(error.to_string().contains("API_KEY"), "{error}");
    assert!(!error.to_string().contains(SECRET));
    let recorded = std::fs::read_to_string(run_file(&spec.run_dir, "web-1", RunFile::Error))
        .expect("error file");
    assert_eq!(recorded, error.to_string());
    assert_eq!(read_pid_file(&spec.run_dir, "web-1"), None);
    let logged = read_log(&spec.log_dir, "web-1", None, None);
    assert!(
        logged
            .iter()
            .any(|(_, s, l)| *s == Stream::Stderr && l.contains("API_KEY")),
        "{logged:?}"
    );
    for dir in [&spec.run_dir, &spec.log_dir] {
        assert!(!files_in(dir).contains(SECRET));
    }
}

#[test]
fn stdout_and_stderr_lines_land_in_the_log_with_their_stream() {
    let fx = Fixture::new();
    let spec = fx.spec("echo out1; echo err1 >&2; printf 'out2\\nno newline'; printf 'err2' >&2");
    let exit = finish(start_relay(&spec));
    assert_eq!(exit.code, Some(0));
    let lines = read_log(&spec.log_dir, "web-1", None, None);
    let of = |stream: Stream| -> Vec<String> {
        lines
            .iter()
            .filter(|(_, s, _)| *s == stream)
            .map(|(_, _, l)| l.clone())
            .collect()
    };
    assert_eq!(of(Stream::Stdout), ["out1", "out2", "no newline"]);
    assert_eq!(of(Stream::Stderr), ["err1", "err2"]);
    let now = now_ms();
    assert!(
        lines
            .iter()
            .all(|(ts, _, _)| *ts <= now && now - *ts < 60_000)
    );
}

#[test]
fn a_chatty_service_is_rotated_without_losing_a_line() {
    let fx = Fixture::new();
    let mut spec = fx.spec("i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done");
    spec.log_max_bytes = 8 * 1024;
    spec.log_keep = 100;
    finish(start_relay(&spec));
    let lines: Vec<String> = read_log(&spec.log_dir, "web-1", None, None)
        .into_iter()
        .map(|l| l.2)
        .collect();
    let expected: Vec<String> = (0..3000).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected);
    assert!(
        spec.log_dir.join("web-1.log.10").exists(),
        "rotated many times"
    );
}

#[test]
fn the_pid_file_names_the_service_with_its_proc_start_time() {
    let fx = Fixture::new();
    let spec = fx.spec("exec sleep 60");
    let relay = start_relay(&spec);
    let pid = wait_until("the pid file", || read_pid_file(&spec.run_dir, "web-1"));
    assert_eq!(start_time(pid.pid), Some(pid.start_time));
    assert!(is_running(pid.pid, pid.start_time));
    assert_eq!(pid.relay_pid, std::process::id());
    stop(pid.pid, pid.start_time, Duration::from_secs(10));
    finish(relay);
}

#[test]
fn exit_codes_and_signals_are_recorded() {
    let fx = Fixture::new();
    let mut spec = fx.spec("exit 3");
    let exit = finish(start_relay(&spec));
    assert_eq!((exit.code, exit.signal, exit.oom), (Some(3), None, false));
    assert_eq!(read_exit(&spec.run_dir, "web-1"), Some(exit));

    spec.instance = "web-2".to_owned();
    spec.command = "kill -KILL $$".to_owned();
    let exit = finish(start_relay(&spec));
    assert_eq!((exit.code, exit.signal), (None, Some(9)));
    assert_eq!(read_exit(&spec.run_dir, "web-2"), Some(exit));
}

#[test]
fn a_service_that_cannot_start_leaves_an_error_not_a_pid() {
    let fx = Fixture::new();
    let mut spec = fx.spec("true");
    spec.cwd = fx.root.join("missing");
    let error = run(&spec).expect_err("no such cwd");
    assert!(error.to_string().contains("missing"), "{error}");
    assert!(run_file(&spec.run_dir, "web-1", RunFile::Error).exists());
    assert_eq!(read_pid_file(&spec.run_dir, "web-1"), None);
}

#[test]
fn a_service_over_its_memory_limit_is_killed_and_its_exit_says_oom() {
    let cgroups = Cgroups::detect();
    let limits = ResourceLimits {
        memory: Some(32 << 20),
        ..ResourceLimits::default()
    };
    let name = format!("gantry-test-oom-{}", std::process::id());
    let cgroup = match cgroups.create(&name, &limits) {
        Ok(Some(cgroup)) => cgroup,
        outcome => {
            let why = format!(
                "cgroups not writable here ({}: {outcome:?})",
                cgroups.mode()
            );
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must enforce memory limits, but {why}"
            );
            eprintln!(
                "\n*** SKIPPED a_service_over_its_memory_limit_is_killed_and_its_exit_says_oom: {why} ***\n"
            );
            return;
        }
    };
    let fx = Fixture::new();
    let mut spec = fx.spec("head -c 200M /dev/zero | tail");
    spec.cgroup = Some(cgroup.clone());
    let exit = finish(start_relay(&spec));
    let removed = cgroup.remove();
    assert!(exit.oom, "{exit:?}");
    assert_eq!(exit.to_string(), "killed: out of memory");
    removed.expect("cgroup removed");
}

#[test]
fn a_service_in_a_cgroup_is_in_it_from_its_first_instruction() {
    let cgroups = Cgroups::detect();
    let name = format!("gantry-test-join-{}", std::process::id());
    let limits = ResourceLimits {
        memory: Some(256 << 20),
        cpu: Some(1.0),
        pids: Some(64),
    };
    let Ok(Some(cgroup)) = cgroups.create(&name, &limits) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have writable cgroups"
        );
        eprintln!(
            "\n*** SKIPPED a_service_in_a_cgroup_is_in_it_from_its_first_instruction: no writable cgroups ***\n"
        );
        return;
    };
    let fx = Fixture::new();
    let mut spec = fx.spec("exec sleep 60");
    spec.cgroup = Some(cgroup.clone());
    let relay = start_relay(&spec);
    let pid = wait_until("the pid file", || read_pid_file(&spec.run_dir, "web-1"));
    assert_eq!(cgroup.pids(), [pid.pid]);
    for procs in cgroup.procs_files() {
        let listed = std::fs::read_to_string(&procs).expect("cgroup.procs");
        assert_eq!(listed.trim(), pid.pid.to_string(), "{}", procs.display());
    }
    assert!(cgroup.memory_current().is_some());
    assert!(
        !cgroup.pids().contains(&std::process::id()),
        "the relay stays out"
    );
    stop(pid.pid, pid.start_time, Duration::from_secs(10));
    finish(relay);
    cgroups.remove(&name);
    assert_eq!(cgroups.open(&name), None);
}
