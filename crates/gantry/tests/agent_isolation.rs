//! Services run as their project's own unprivileged user, without
//! capabilities or a way to gain them, within default limits, and cannot
//! read the agent's state or another project's files. The real agent, run
//! as root (as on a host configured without systemd), deploys a service that
//! reports what it is and what it can reach.

mod agent_support;

use std::path::Path;

use agent_support::{DEADLINE, command_in, deploy, instances, json, service, shell, status};
use gantry_testkit::{TestProject, wait_for};
use serde_json::Value;

/// What the probe tries: each line `<what> ok` or `<what> refused`.
fn probe_script(state: &Path) -> String {
    let s = state.display();
    format!(
        r#"echo probe start; id -u; id -g; grep -E '^(NoNewPrivs|CapBnd|CapEff):' /proc/self/status; cat /proc/self/cgroup
try() {{ if "$@" >/dev/null 2>&1; then echo "$TRY ok"; else echo "$TRY refused"; fi; }}
TRY=own-release try cat ./own.txt
TRY=agent-db try head -c1 {s}/agent.db
TRY=ca-key try head -c1 {s}/proxy/ca/ca.key
TRY=state-listing try ls {s}
TRY=other-release try ls {s}/releases/beta
TRY=other-secrets try head -c1 {s}/secrets/beta.env
TRY=own-secrets-file try head -c1 {s}/secrets/alpha.env
TRY=agent-socket try perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Peer => shift) or exit 1' {s}/agent.sock
TRY=perl-connects try perl -MIO::Socket::UNIX -e 'exit 0'
echo probe done
exec sleep 600"#
    )
}

fn root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout == b"0\n")
}

/// What the newest instance of `name` logged in its run after the first
/// `runs_before`, once that run said `probe done`.
fn probe_lines(p: &TestProject, name: &str, runs_before: usize) -> Vec<String> {
    let id = instances(service(&status(p), name))
        .last()
        .and_then(|i| i["id"].as_str())
        .expect("an instance")
        .to_owned();
    let mut lines = Vec::new();
    wait_for("the probe's report", DEADLINE, || {
        let run = p.gantry(&["logs", name, "--output", "json"]);
        lines = run
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["instance"] == id.as_str())
            .filter_map(|l| l["line"].as_str().map(str::to_owned))
            .collect();
        lines.iter().filter(|l| *l == "probe done").count() > runs_before
    });
    let start = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| *l == "probe start")
        .nth(runs_before)
        .map_or(0, |(i, _)| i + 1);
    lines[start..].to_vec()
}

fn field<'a>(lines: &'a [String], name: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
        .trim()
}

/// The value of a cgroup v1 control file of the cgroup `controller` line names.
fn cgroup_value(lines: &[String], controller: &str, file: &str) -> Option<String> {
    let path = lines.iter().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })?;
    let mount = std::fs::read_dir("/sys/fs/cgroup")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.split(',').any(|c| c == controller))
                && p.join("cgroup.procs").is_file()
        })?;
    let dir = mount.join(path.trim_start_matches('/'));
    std::fs::read_to_string(dir.join(file))
        .ok()
        .map(|v| v.trim().to_owned())
}

#[test]
fn a_service_runs_unprivileged_and_cannot_read_the_agents_state_or_another_project() {
    assert!(
        root(),
        "the agent switches users only as root: run this test as root (CI does)"
    );
    let alpha = TestProject::new(agent_support::GANTRY);
    let state = alpha.state_dir().to_owned();
    let alpha = alpha
        .file("own.txt", "mine\n")
        .file(
            "gantry.toml",
            &format!(
                "[project]\nname = \"alpha\"\n\n[services.probe]\nrun = '''{}'''\nsecrets = [\"ALPHA_TOKEN\"]\nhealth = {{ command = \"true\" }}\n\n[services.sized]\nrun = \"echo probe start; cat /proc/self/cgroup; echo probe done; exec sleep 600\"\nresources = {{ memory = \"64M\" }}\nhealth = {{ command = \"test $(id -u) -ne 0\" }}\n\n[services.rooted]\nrun = \"echo probe start; id -u; echo probe done; exec sleep 600\"\nrun_as_root = true\nhealth = {{ command = \"true\" }}\n",
                probe_script(&state)
            ),
        )
        .env("ALPHA_TOKEN", "alpha-secret");
    // The local CA exists before the agent starts: its key must still be out of reach.
    alpha.gantry(&["trust", "--output", "json"]).expect_code(0);
    assert!(state.join("proxy/ca/ca.key").is_file(), "the CA key exists");
    let report = deploy(&alpha);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");

    // Another project on the same agent, with a secret of its own.
    let beta = shell(
        "beta",
        "[services.web]\nrun = \"exec sleep 600\"\nsecrets = [\"BETA_TOKEN\"]\nhealth = { command = \"true\" }\n",
    )
    .env("BETA_TOKEN", "beta-secret");
    let _ = command_in(
        beta.path(),
        &state,
        &["deploy", "--skip-build", "--output", "json"],
    )
    .env("BETA_TOKEN", "beta-secret")
    .output()
    .expect("deploy beta");
    assert!(
        state.join("secrets/beta.env").is_file() && state.join("releases/beta").is_dir(),
        "beta's release and secrets are on this host"
    );
    // Its first run saw no beta: the run after a restart tries beta's files.
    probe_lines(&alpha, "probe", 0);
    json(&alpha, &["restart", "probe"]);
    let lines = probe_lines(&alpha, "probe", 1);

    let uid: u32 = lines[0].parse().expect("a uid");
    let gid: u32 = lines[1].parse().expect("a gid");
    assert_ne!(uid, 0, "not root: {lines:?}");
    assert_ne!(gid, 0, "not root's group: {lines:?}");
    assert_eq!(field(&lines, "NoNewPrivs"), "1");
    assert_eq!(field(&lines, "CapBnd"), "0000000000000000");
    assert_eq!(field(&lines, "CapEff"), "0000000000000000");
    assert!(
        !lines.iter().any(|l| l == "no-curl"),
        "curl probes the socket"
    );
    assert!(lines.iter().any(|l| l == "own-release ok"), "{lines:?}");
    for refused in [
        "agent-db",
        "ca-key",
        "state-listing",
        "other-release",
        "other-secrets",
        "own-secrets-file",
        "agent-socket",
    ] {
        assert!(
            lines.iter().any(|l| *l == format!("{refused} refused")),
            "{refused} was not refused: {lines:?}"
        );
    }
    // The secret still reaches the service, as its environment.
    let env = std::fs::read_to_string(format!(
        "/proc/{}/environ",
        instances(service(&status(&alpha), "probe"))[0]["pid"]
    ))
    .expect("environ");
    assert!(env.split('\0').any(|v| v == "ALPHA_TOKEN=alpha-secret"));

    // Default limits, and the service's own where it sets them.
    for (controller, file) in [("memory", "memory.limit_in_bytes"), ("pids", "pids.max")] {
        let mounted = Path::new(&format!("/sys/fs/cgroup/{controller}/cgroup.procs")).is_file();
        assert!(
            !mounted || cgroup_value(&lines, controller, file).is_some(),
            "the probe is in a {controller} cgroup: {lines:?}"
        );
    }
    if let Some(memory) = cgroup_value(&lines, "memory", "memory.limit_in_bytes") {
        assert_eq!(memory, (512u64 << 20).to_string(), "default memory limit");
    }
    if let Some(pids) = cgroup_value(&lines, "pids", "pids.max") {
        assert_eq!(pids, "512", "default pids limit");
    }
    let sized = probe_lines(&alpha, "sized", 0);
    if let Some(memory) = cgroup_value(&sized, "memory", "memory.limit_in_bytes") {
        assert_eq!(memory, (64u64 << 20).to_string(), "resources.memory wins");
    }
    if let Some(pids) = cgroup_value(&sized, "pids", "pids.max") {
        assert_eq!(pids, "512", "pids keeps its default");
    }

    // Root only when asked for.
    let rooted = probe_lines(&alpha, "rooted", 0);
    assert_eq!(rooted[0], "0", "{rooted:?}");
}
