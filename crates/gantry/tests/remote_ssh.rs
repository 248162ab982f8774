//! Hosts over SSH, for real: three hosts, each a network namespace with its
//! own address, sshd, user, home and /tmp (gantry_testkit::hosts), reached
//! through OpenSSH with a config file, the way users reach their servers.
//! Needs root (CI runs as root and installs openssh-server).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;

use agent_support::{
    GANTRY, configure_step, ends_with_a_duration, hello_toml, remote_project, service, traced,
};
use gantry_testkit::hosts::TestHosts;
use gantry_testkit::{TestProject, example_bins};
use serde_json::json;

#[test]
fn each_ssh_failure_has_its_own_error() {
    let mut hosts = TestHosts::start(2);
    hosts.host("h1").install_gantry(GANTRY.as_ref());
    let project = remote_project(&hosts, &["h1"], "1");

    // A key the host does not accept (first: once a connection is open,
    // OpenSSH multiplexes over it whatever key a later command offers).
    let stranger = hosts.stranger_key();
    let other = hosts.ssh_config_with_key(&stranger);
    let refused =
        remote_project(&hosts, &["h1"], "1").env("GANTRY_SSH_CONFIG", &other.display().to_string());
    let run = refused.gantry(&["status", "-e", "prod", "--output", "json"]);
    run.expect_code(5);
    assert_eq!(
        run.json()["error"]["code"],
        "host.auth_refused",
        "{}",
        run.stdout
    );
    // Registering through that key fails the same way, and the environment
    // records where it stopped.
    let run = refused.gantry(&["register", "h1", "-e", "stage", "--output", "json"]);
    run.expect_code(5);
    let shown = refused
        .gantry(&["env", "show", "stage", "--output", "json"])
        .json();
    assert_eq!(shown["state"], "provision_failed", "{shown:#}");
    assert_eq!(shown["failure"]["host"], "h1", "{shown:#}");
    assert_eq!(shown["failure"]["step"], "check ssh", "{shown:#}");

    // Reachable, and the agent answers over `ssh h1 gantry agent connect`.
    let status = project.gantry(&["status", "-e", "prod", "--output", "json"]);
    status.expect_code(0);

    // gantry missing on h2.
    let missing = remote_project(&hosts, &["h2"], "1");
    let run = missing.gantry(&["status", "-e", "prod", "--output", "json"]);
    run.expect_code(5);
    assert_eq!(
        run.json()["error"]["code"],
        "host.gantry_missing",
        "{}",
        run.stdout
    );
    assert!(
        run.json()["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("gantry configure")
    );

    // The host was reinstalled: a new host key.
    hosts.host_mut("h1").change_host_key();
    let run = project.gantry(&["status", "-e", "prod", "--output", "json"]);
    run.expect_code(5);
    assert_eq!(
        run.json()["error"]["code"],
        "host.key_changed",
        "{}",
        run.stdout
    );
    assert!(
        run.json()["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("ssh-keygen -R")
    );

    // Down: the link is cut.
    hosts.host("h2").cut();
    let run = missing.gantry(&["status", "-e", "prod", "--output", "json"]);
    run.expect_code(5);
    assert_eq!(
        run.json()["error"]["code"],
        "host.unreachable",
        "{}",
        run.stdout
    );
}

/// `GET /version` of the web service through each host's own proxy
/// (`<service>.<project>.localhost` on the host's loopback).
#[test]
fn v_shows_each_ssh_command_with_how_long_it_took() {
    let hosts = TestHosts::start(1);
    hosts.host("h1").install_gantry(GANTRY.as_ref());
    let project = remote_project(&hosts, &["h1"], "1");

    // A command: its command line, exit code and duration.
    let register = project.gantry(&["-v", "register", "h1", "-e", "stage", "--output", "json"]);
    register.expect_code(0);
    assert!(register.json().is_object());
    let ran: Vec<_> = traced(&register, "ssh h1: ssh ")
        .into_iter()
        .filter(|line| {
            line.contains("BatchMode=yes") && line.contains("-- h1 'uname -sm' → exit 0 in ")
        })
        .collect();
    assert_eq!(ran.len(), 1, "{}", register.stderr);
    assert!(ends_with_a_duration(ran[0]), "{}", ran[0]);

    // The agent's connection: the ssh command that carries it, how long it
    // lasted, and each request over it.
    let status = project.gantry(&["-v", "status", "-e", "prod", "--output", "json"]);
    status.expect_code(0);
    assert!(status.json().is_object());
    let opened = traced(&status, "ssh h1: ssh ");
    assert!(
        opened
            .iter()
            .any(|line| line.ends_with("agent connect' (the agent's connection)")),
        "{}",
        status.stderr
    );
    let closed = traced(&status, "ssh h1: the agent's connection was closed after ");
    let health = traced(&status, "agent h1: GET /v1/health → 200 OK in ");
    assert!(
        !closed.is_empty() && !health.is_empty(),
        "{}",
        status.stderr
    );
    for line in closed.iter().chain(&health) {
        assert!(ends_with_a_duration(line), "{line}");
    }
}

fn versions(hosts: &TestHosts, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            let (code, body) = hosts
                .host(name)
                .http_get(8080, "web.shop.localhost", "/version")
                .unwrap_or_else(|e| panic!("{name} does not answer: {e}"));
            assert_eq!(code, 200, "{name}: {body}");
            body.trim().to_owned()
        })
        .collect()
}

#[test]
fn deploys_roll_across_three_hosts() {
    let hosts = TestHosts::start(3);
    let all = ["h1", "h2", "h3"];
    for name in all {
        hosts.host(name).install_gantry(GANTRY.as_ref());
    }
    let project = remote_project(&hosts, &all, "1");
    // A declared route whose name can never resolve (.invalid): `gantry test`
    // warns about its DNS and still finds it answering on every host.
    let toml = std::fs::read_to_string(project.path().join("gantry.toml"))
        .unwrap()
        .replacen(
            "port = \"http\"\n",
            "port = \"http\"\nroutes = [\"shop.gantry.invalid\"]\n",
            1,
        );
    std::fs::write(project.path().join("gantry.toml"), toml).unwrap();
    let deployed = project.gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"]);
    deployed.expect_code(0);
    let report = deployed.json();
    let outcomes: Vec<_> = report["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| (h["host"].as_str().unwrap().to_owned(), h["outcome"].clone()))
        .collect();
    assert_eq!(outcomes.len(), 3, "{report:#}");
    assert!(outcomes.iter().all(|(_, o)| o == "deployed"), "{report:#}");
    assert_eq!(versions(&hosts, &all), ["1", "1", "1"]);

    // gantry test: each host's agent, services and routes (probed on the host).
    let checked = project.gantry(&["test", "-e", "prod", "--output", "json"]);
    checked.expect_code(0);
    let checked = checked.json();
    for host in checked["hosts"].as_array().unwrap() {
        let names: Vec<&str> = host["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["outcome"] == "passed")
            .map(|c| c["check"].as_str().unwrap())
            .collect();
        for wanted in [
            "agent answers",
            "web healthy",
            "worker healthy",
            "route web.shop.localhost answers",
            "route shop.gantry.invalid answers",
        ] {
            assert!(names.contains(&wanted), "{wanted}: {host:#}");
        }
        let dns = host["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "dns shop.gantry.invalid")
            .unwrap_or_else(|| panic!("a DNS check: {host:#}"));
        assert_eq!(dns["outcome"], "warning", "{dns:#}");
    }

    // Merged status: every host's instances, labelled.
    let status = project.gantry(&["status", "-e", "prod", "--output", "json"]);
    status.expect_code(0);
    let status = status.json();
    let web = service(&status, "web");
    let on: Vec<&str> = web["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["host"].as_str().unwrap())
        .collect();
    for name in all {
        assert_eq!(on.iter().filter(|h| **h == name).count(), 2, "{web:#}");
    }

    // A rolling redeploy of version 2 (one host at a time by default); only
    // the changed file travels.
    std::fs::write(project.path().join("VERSION"), "2\n").unwrap();
    let again = project.gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"]);
    again.expect_code(0);
    let again = again.json();
    assert_eq!(
        again["upload"]["blobs_sent"], 3,
        "one file to each host: {again:#}"
    );
    assert_eq!(versions(&hosts, &all), ["2", "2", "2"]);

    // exec runs as the service runs: in its release, with its environment.
    let exec = project.gantry(&[
        "exec",
        "web",
        "-e",
        "prod",
        "--host",
        "h2",
        "--",
        "sh",
        "-c",
        "cat VERSION; echo \"$GANTRY_SERVICE $GANTRY_RELEASE\"; exit 3",
    ]);
    exec.expect_code(3);
    let mut lines = exec.stdout.lines();
    assert_eq!(lines.next(), Some("2"), "{exec:?}");
    assert!(
        lines.next().is_some_and(|l| l.starts_with("web r")),
        "{exec:?}"
    );
    let ssh = project.gantry(&["ssh", "h3", "-e", "prod", "--", "id", "-un"]);
    ssh.expect_code(0);
    assert_eq!(ssh.stdout.trim(), hosts.host("h3").user, "{ssh:?}");

    // Merged logs, labelled by host.
    let logs = project.gantry(&["logs", "-e", "prod", "web", "--output", "json"]);
    logs.expect_code(0);
    let mut seen: Vec<String> = logs
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| l["host"].as_str().map(str::to_owned))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, all, "{}", logs.stdout);

    // Followed, the hosts' streams come merged as they arrive.
    let mut follow = agent_support::command(
        &project,
        &[
            "logs", "-e", "prod", "web", "-f", "--tail", "5", "--output", "json",
        ],
    );
    follow.env("GANTRY_SSH_CONFIG", &hosts.ssh_config);
    let follow = agent_support::Lines::spawn(follow);
    let mut followed = std::collections::BTreeSet::new();
    follow.until("a line from each host", |line| {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(host) = v["host"].as_str()
        {
            followed.insert(host.to_owned());
        }
        followed.len() == 3
    });
    drop(follow);

    // Rollback goes back on every host.
    project
        .gantry(&["rollback", "-e", "prod", "--output", "json"])
        .expect_code(0);
    assert_eq!(versions(&hosts, &all), ["1", "1", "1"]);
}

/// A `gantry deploy` left running; its stderr (the progress lines) read as they come.
struct Running {
    child: std::process::Child,
    progress: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(project: &TestProject, ssh_config: &std::path::Path, args: &[&str]) -> Running {
        use std::io::BufRead;
        let mut child = agent_support::command(project, args)
            .env("GANTRY_SSH_CONFIG", ssh_config)
            .env("GANTRY_PROXY_LISTEN", "off")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start gantry deploy");
        let stderr = child.stderr.take().expect("piped stderr");
        let (send, progress) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, progress }
    }

    /// Waits for a progress line containing `text`.
    fn until(&self, text: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.progress.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(line) => seen.push(line),
                Err(e) => panic!(
                    "no progress line with `{text}` ({e}), only:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    fn finish(self) -> (i32, serde_json::Value) {
        let (code, json, _) = self.finish_with_progress();
        (code, json)
    }

    /// The exit code, the JSON report and the progress lines `until` did
    /// not consume.
    fn finish_with_progress(self) -> (i32, serde_json::Value, Vec<String>) {
        let output = self
            .child
            .wait_with_output()
            .expect("wait for gantry deploy");
        let json = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        });
        let rest = self.progress.iter().collect();
        (output.status.code().unwrap_or(-1), json, rest)
    }
}

/// Each host's web instances' releases, from the merged status.
fn releases_by_host(project: &TestProject) -> std::collections::BTreeMap<String, Vec<String>> {
    let status = project
        .gantry(&["status", "-e", "prod", "--output", "json"])
        .json();
    let mut by_host: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for service in status["services"].as_array().unwrap() {
        for i in service["instances"].as_array().unwrap() {
            if i["state"] == "live" {
                by_host
                    .entry(i["host"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(i["release"].as_str().unwrap().to_owned());
            }
        }
    }
    by_host
}

#[test]
fn a_cut_link_stops_the_rollout_and_a_second_deploy_is_refused() {
    let hosts = TestHosts::start(3);
    let all = ["h1", "h2", "h3"];
    for name in all {
        hosts.host(name).install_gantry(GANTRY.as_ref());
    }
    let project = remote_project(&hosts, &all, "1");
    project
        .gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"])
        .expect_code(0);

    // A second deploy while the first holds the lock is refused, naming it.
    std::fs::write(project.path().join("VERSION"), "2\n").unwrap();
    let args = ["deploy", "-e", "prod", "--skip-build", "--output", "json"];
    let first = Running::start(&project, &hosts.ssh_config, &args);
    first.until("deploying shop to h1");
    let second = project.gantry(&args);
    second.expect_code(4);
    let error = &second.json()["error"];
    assert_eq!(error["code"], "deploy.locked", "{error:#}");
    let holder = first.child.id().to_string();
    assert!(
        error["message"].as_str().unwrap().contains(&holder),
        "names the holder's pid {holder}: {error:#}"
    );
    // The holder hangs mid-rollout (stopped, still alive): a deploy is still
    // refused naming it, and --force-unlock takes the lock with a warning.
    let mut first = first;
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &holder])
        .status()
        .unwrap();
    assert!(stopped.success());
    // h1's agent finishes the deploy it was given (cut over, old stopped).
    gantry_testkit::wait_for(
        "h1 to finish the deploy it was given",
        std::time::Duration::from_secs(60),
        || {
            let status = project
                .gantry(&["status", "-e", "prod", "--output", "json"])
                .json();
            let on_h1: Vec<&serde_json::Value> = status["services"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["instances"].as_array().into_iter().flatten())
                .filter(|i| i["host"] == "h1")
                .collect();
            !on_h1.is_empty()
                && on_h1
                    .iter()
                    .all(|i| i["state"] == "live" && i["release"] != "r1")
        },
    );
    let stale = project.gantry(&args);
    stale.expect_code(4);
    assert!(
        stale.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&holder),
        "{}",
        stale.stdout
    );
    let mut forced_args = args.to_vec();
    forced_args.push("--force-unlock");
    let forced = project.gantry(&forced_args);
    forced.expect_code(0);
    assert!(
        forced.stderr.contains("took the deploy lock from pid") && forced.stderr.contains(&holder),
        "{}",
        forced.stderr
    );
    assert_eq!(versions(&hosts, &all), ["2", "2", "2"]);
    first.child.kill().unwrap();
    let _ = first.child.wait();

    // Version 3, and h2's link goes down while the rollout reaches it.
    std::fs::write(project.path().join("VERSION"), "3\n").unwrap();
    let rollout = Running::start(&project, &hosts.ssh_config, &args);
    rollout.until("deploying shop to h1");
    rollout.until("deploying shop to h2");
    hosts.host("h2").cut();
    let (code, report) = rollout.finish();
    assert_eq!(code, 6, "{report:#}");
    let error = &report["error"];
    assert_eq!(error["code"], "deploy.failed", "{error:#}");
    assert!(
        error["message"].as_str().unwrap().contains("host h2"),
        "names the host: {error:#}"
    );
    let per_host = &error["details"]["hosts"];
    assert_eq!(per_host[0]["outcome"], "deployed", "{per_host:#}");
    assert_eq!(per_host[1]["outcome"], "unreachable", "{per_host:#}");
    assert_eq!(per_host[2]["outcome"], "skipped", "{per_host:#}");
    assert_eq!(versions(&hosts, &["h1", "h3"]), ["3", "2"]);

    // While h2 is away, gantry test says so (and only about h2).
    let checked = project.gantry(&["test", "-e", "prod", "--output", "json"]);
    checked.expect_code(6);
    let error = &checked.json()["error"];
    assert_eq!(error["code"], "test.failed", "{error:#}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("h2: agent answers") && !message.contains("h1:"),
        "{message}"
    );

    // gantry logs gives h1's and h3's lines, names h2 on stderr at once,
    // and ends with h2's error: one more JSON line, so a line reader reads it.
    let logs = project.gantry(&["logs", "-e", "prod", "web", "--output", "json"]);
    logs.expect_code(5);
    let read: Vec<serde_json::Value> = (logs.stdout.lines())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (last, lines) = read.split_last().expect("lines and an error");
    assert_eq!(last["error"]["code"], "host.unreachable", "{last:#}");
    let mut from: Vec<&str> = lines.iter().map(|l| l["host"].as_str().unwrap()).collect();
    from.dedup();
    from.sort();
    from.dedup();
    assert_eq!(from, ["h1", "h3"], "{}", logs.stdout);
    assert!(
        logs.stderr.contains("h2") && logs.stderr.contains("left out"),
        "{}",
        logs.stderr
    );

    // Back online, h2 runs one release throughout (old or new, not a mix),
    // and so does every other host.
    hosts.host("h2").restore();
    let by_host = releases_by_host(&project);
    for (host, releases) in &by_host {
        let mut distinct = releases.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 1, "{host} runs one release: {by_host:?}");
    }
}

/// Each host's outcome in a deploy report.
fn outcomes(report: &serde_json::Value) -> Vec<(String, String)> {
    report["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_owned(),
                h["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The known bug of per-host rollbacks: a rollout stopped at a host cut
/// off, retried, left the first host with two releases of the new version,
/// and a rollback took it to the second. Deployments span the environment:
/// the rollback takes every host back to the earlier version.
#[test]
fn a_rollout_retried_after_a_cut_off_host_rolls_back_everywhere() {
    let hosts = TestHosts::start(3);
    let all = ["h1", "h2", "h3"];
    for name in all {
        hosts.host(name).install_gantry(GANTRY.as_ref());
    }
    let project = remote_project(&hosts, &all, "1");
    let args = ["deploy", "-e", "prod", "--skip-build", "--output", "json"];
    project.gantry(&args).expect_code(0);

    // Version 2 while h2 is cut off: h1 runs it, the rollout stops at h2.
    std::fs::write(project.path().join("VERSION"), "2\n").unwrap();
    hosts.host("h2").cut();
    let stopped = project.gantry(&args);
    stopped.expect_code(6);
    hosts.host("h2").restore();
    assert_eq!(versions(&hosts, &all), ["2", "1", "1"]);

    // The retry: h1 already runs version 2 and makes no second release of it.
    let retried = project.gantry(&args);
    retried.expect_code(0);
    let retried = retried.json();
    let pairs = |list: [(&str, &str); 3]| -> Vec<(String, String)> {
        list.iter()
            .map(|(h, o)| ((*h).to_owned(), (*o).to_owned()))
            .collect()
    };
    assert_eq!(
        outcomes(&retried),
        pairs([("h1", "unchanged"), ("h2", "deployed"), ("h3", "deployed")]),
        "{retried:#}"
    );
    assert_eq!(versions(&hosts, &all), ["2", "2", "2"]);

    // gantry releases -e lists the three deployments and who runs which.
    let listed = project
        .gantry(&["releases", "-e", "prod", "--output", "json"])
        .json();
    let deployments = listed["deployments"].as_array().expect("deployments");
    let states: Vec<(&str, bool)> = deployments
        .iter()
        .map(|d| (d["state"].as_str().unwrap(), d["current"] == true))
        .collect();
    assert_eq!(
        states,
        [("complete", true), ("partial", false), ("complete", false)],
        "{listed:#}"
    );
    assert_eq!(deployments[0]["id"], retried["deployment"], "{listed:#}");
    assert_eq!(deployments[0]["hosts"][0]["kept"], true, "{listed:#}");
    let text = project.gantry(&["releases", "-e", "prod", "--output", "text"]);
    text.expect_code(0);
    assert!(
        text.stdout.contains("deployments, newest first:")
            && text.stdout.contains("h1 r2 succeeded (kept), runs it"),
        "{}",
        text.stdout
    );

    // Every host goes back to version 1, h1 included.
    project
        .gantry(&["rollback", "-e", "prod", "--output", "json"])
        .expect_code(0);
    assert_eq!(versions(&hosts, &all), ["1", "1", "1"]);

    // Deploying version 1 again changes nothing anywhere.
    std::fs::write(project.path().join("VERSION"), "1\n").unwrap();
    let same = project.gantry(&args);
    same.expect_code(0);
    let same = same.json();
    assert_eq!(
        outcomes(&same),
        pairs([
            ("h1", "unchanged"),
            ("h2", "unchanged"),
            ("h3", "unchanged")
        ]),
        "{same:#}"
    );
    let text = project.gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "text"]);
    text.expect_code(0);
    assert!(
        text.stdout.starts_with("unchanged: every host"),
        "{}",
        text.stdout
    );
}

/// Each host's release `id` in `gantry releases -e prod`'s listing.
fn release_on<'a>(listed: &'a serde_json::Value, host: &str, id: &str) -> &'a serde_json::Value {
    listed["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["host"] == host)
        .and_then(|h| h["releases"].as_array())
        .and_then(|releases| releases.iter().find(|r| r["id"] == id))
        .unwrap_or_else(|| panic!("{host} has no release {id}: {listed:#}"))
}

/// Three deploys, then `gantry rollback -e prod` three times: the first
/// takes every host from version 3 to 2, the second from 2 to 1 (not
/// forward to 3 again), and the third finds nothing before and changes
/// nothing.
#[test]
fn each_rollback_takes_every_host_one_deployment_further_back_until_none_is_left() {
    let hosts = TestHosts::start(2);
    let all = ["h1", "h2"];
    for name in all {
        hosts.host(name).install_gantry(GANTRY.as_ref());
    }
    let project = remote_project(&hosts, &all, "1");
    // Each version's deploy report: its deployment, and each host's release.
    let mut deployed = Vec::new();
    for version in ["1", "2", "3"] {
        std::fs::write(project.path().join("VERSION"), format!("{version}\n")).unwrap();
        let run = project.gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"]);
        run.expect_code(0);
        assert_eq!(versions(&hosts, &all), [version, version]);
        deployed.push(run.json());
    }

    for (back_to, version) in [(&deployed[1], "2"), (&deployed[0], "1")] {
        let rolled = project.gantry(&["rollback", "-e", "prod", "--output", "json"]);
        rolled.expect_code(0);
        let rolled = rolled.json();
        assert_eq!(versions(&hosts, &all), [version, version], "{rolled:#}");

        let listed = project
            .gantry(&["releases", "-e", "prod", "--output", "json"])
            .json();
        let newest = &listed["deployments"][0];
        assert_eq!(newest["id"], rolled["deployment"], "{listed:#}");
        assert_eq!(
            (&newest["rollback"], &newest["current"], &newest["state"]),
            (&json!(true), &json!(true), &json!("complete")),
            "{listed:#}"
        );
        let original = listed["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == back_to["deployment"])
            .unwrap_or_else(|| panic!("deployment of version {version}: {listed:#}"));
        assert_eq!(newest["artifact"], original["artifact"], "{listed:#}");
        for (i, host) in all.iter().enumerate() {
            let runs = &newest["hosts"][i];
            assert_eq!(
                (&runs["host"], &runs["runs_now"]),
                (&json!(host), &json!(true))
            );
            let release = release_on(&listed, host, runs["release"].as_str().unwrap());
            assert_eq!(
                release["rollback_of"], back_to["hosts"][i]["release"],
                "{host} went back to its release of version {version}: {listed:#}"
            );
        }
    }

    // Nothing before version 1: refused, and every host stays on it.
    let before = project
        .gantry(&["releases", "-e", "prod", "--output", "json"])
        .json();
    let third = project.gantry(&["rollback", "-e", "prod", "--output", "json"]);
    third.expect_code(4);
    let error = &third.json()["error"];
    assert_eq!(error["code"], "release.none_before", "{error:#}");
    assert_eq!(versions(&hosts, &all), ["1", "1"]);
    let after = project
        .gantry(&["releases", "-e", "prod", "--output", "json"])
        .json();
    assert_eq!(
        after["deployments"], before["deployments"],
        "no deployment made"
    );
}

#[test]
fn register_configure_twice_deploy_destroy() {
    let hosts = TestHosts::start(2);
    let bins = example_bins();
    // A project that knows nothing of the hosts yet, with a comment to keep.
    let project = TestProject::new(GANTRY)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("VERSION", "1\n")
        .file(
            "gantry.toml",
            &format!(
                "# Our shop: keep this comment.\n{}",
                hello_toml("shop", "bin/hello-web")
            ),
        )
        .env("GANTRY_SSH_CONFIG", &hosts.ssh_config.display().to_string());

    let reg = project.gantry(&[
        "register", "h1", "--ssh", "h1", "-e", "prod", "--output", "json",
    ]);
    reg.expect_code(0);
    assert_eq!(reg.json()["state"], "provisioned", "{}", reg.stdout);
    project
        .gantry(&["register", "h2", "-e", "prod", "--output", "json"])
        .expect_code(0);
    let toml = std::fs::read_to_string(project.path().join("gantry.toml")).unwrap();
    assert!(
        toml.starts_with("# Our shop: keep this comment.\n"),
        "{toml}"
    );
    assert!(
        toml.contains("[hosts.h1]") && toml.contains("ssh = \"h1\""),
        "{toml}"
    );
    assert!(toml.contains("hosts = [\"h1\", \"h2\"]"), "{toml}");
    project.gantry(&["validate"]).expect_code(0);

    // configure installs gantry and its agent; the second run changes nothing.
    let first = project.gantry(&["configure", "-e", "prod", "--output", "json"]);
    first.expect_code(0);
    let first = first.json();
    assert_eq!(first["state"], "configured", "{first:#}");
    let changed = |report: &serde_json::Value, step: &str| -> Vec<bool> {
        report["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| configure_step(h, step)["changed"] == true)
            .collect()
    };
    assert_eq!(changed(&first, "install gantry"), [true, true], "{first:#}");
    // Hosts get this very binary without its debug info: the report says
    // how much smaller, and the step how many bytes went to each host.
    let binary = &first["binary"];
    let shipped = binary["shipped_bytes"].as_u64().unwrap();
    assert_eq!(binary["bytes"], std::fs::metadata(GANTRY).unwrap().len());
    assert!(shipped < binary["bytes"].as_u64().unwrap() / 2, "{first:#}");
    assert_eq!(binary["stripped"], "strip --strip-debug", "{first:#}");
    let stripped = hosts.dir().join("gantry-stripped");
    let ran = std::process::Command::new("strip")
        .args(["--strip-debug", "-o"])
        .args([&stripped, std::path::Path::new(GANTRY)])
        .status()
        .unwrap();
    assert!(ran.success());
    for (name, host) in ["h1", "h2"].iter().zip(first["hosts"].as_array().unwrap()) {
        let installed = hosts.host(name).home.join(".gantry/bin/gantry");
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(&stripped).unwrap(),
            "{name} runs this very binary, stripped"
        );
        let detail = configure_step(host, "install gantry")["detail"].clone();
        assert!(
            detail
                .as_str()
                .unwrap()
                .contains(&format!("({shipped} bytes sent)")),
            "{detail}"
        );
        assert!(
            hosts
                .host(name)
                .processes()
                .iter()
                .any(|p| p.contains("gantry agent")),
            "{name}'s agent runs: {:?}",
            hosts.host(name).processes()
        );
    }
    // Not root: the agent's proxy listens on loopback, and the report says
    // what that means.
    for host in first["hosts"].as_array().unwrap() {
        let agent = configure_step(host, "start the agent");
        assert!(
            agent["detail"].as_str().unwrap().contains(
                "proxy listens on 127.0.0.1:8080 only: put your own front proxy before it"
            ),
            "{agent:#}"
        );
    }
    let second = project.gantry(&["configure", "-e", "prod", "--output", "json"]);
    second.expect_code(0);
    let second = second.json();
    for step in ["install gantry", "start the agent"] {
        assert_eq!(changed(&second, step), [false, false], "{step}: {second:#}");
    }

    project
        .gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"])
        .expect_code(0);
    assert_eq!(versions(&hosts, &["h1", "h2"]), ["1", "1"]);
    let shown = project
        .gantry(&["env", "show", "prod", "--output", "json"])
        .json();
    assert_eq!(shown["state"], "running", "{shown:#}");
    let listed = project.gantry(&["env", "list", "--output", "json"]).json();
    assert!(
        listed["environments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["environment"] == "prod" && e["state"] == "running"),
        "{listed:#}"
    );

    // Destroy asks for --yes, then stops every service; purge forgets it.
    project.gantry(&["env", "destroy", "prod"]).expect_code(2);
    let destroyed = project.gantry(&["env", "destroy", "prod", "--yes", "--output", "json"]);
    destroyed.expect_code(0);
    assert_eq!(destroyed.json()["state"], "destroyed");
    for name in ["h1", "h2"] {
        assert!(
            !hosts
                .host(name)
                .processes()
                .iter()
                .any(|p| p.contains("hello-web")),
            "{name} still runs the web service: {:?}",
            hosts.host(name).processes()
        );
    }
    let refused = project.gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"]);
    refused.expect_code(4);
    assert_eq!(refused.json()["error"]["code"], "env.destroyed");
    project
        .gantry(&["env", "purge", "prod", "--output", "json"])
        .expect_code(0);
    project
        .gantry(&["env", "show", "prod", "--output", "json"])
        .expect_code(4);
}

#[test]
fn a_host_that_fails_goes_back_and_stops_the_rollout() {
    let hosts = TestHosts::start(3);
    let all = ["h1", "h2", "h3"];
    for name in all {
        hosts.host(name).install_gantry(GANTRY.as_ref());
    }
    let project = remote_project(&hosts, &all, "1");
    project
        .gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"])
        .expect_code(0);

    // Version 2's worker cannot start on h2 (a file there says so); web,
    // deployed before it, switches first and must be taken back.
    let toml = std::fs::read_to_string(project.path().join("gantry.toml")).unwrap();
    let toml = toml.replace(
        "run = \"bin/hello-worker\"",
        "run = \"sh -c 'test -e \\\"$HOME/broken\\\" && { echo broken here >&2; exit 1; }; exec bin/hello-worker'\"",
    );
    std::fs::write(project.path().join("gantry.toml"), toml).unwrap();
    std::fs::write(project.path().join("VERSION"), "2\n").unwrap();
    let broken = hosts.host("h2").home.join("broken");
    std::fs::write(&broken, "").unwrap();

    let run = project.gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"]);
    run.expect_code(6);
    let error = &run.json()["error"];
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("host h2 failed and went back"),
        "{error:#}"
    );
    let per_host = &error["details"]["hosts"];
    assert_eq!(per_host[0]["outcome"], "deployed", "{per_host:#}");
    assert_eq!(per_host[1]["outcome"], "reverted", "{per_host:#}");
    assert_eq!(
        per_host[1]["release"], per_host[1]["previous"],
        "{per_host:#}"
    );
    assert_eq!(per_host[2]["outcome"], "skipped", "{per_host:#}");
    assert_eq!(versions(&hosts, &all), ["2", "1", "1"]);
    let by_host = releases_by_host(&project);
    for (host, releases) in &by_host {
        let mut distinct = releases.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 1, "{host} runs one release: {by_host:?}");
    }
}

/// The sha256 of a file, in hex (what names its blob).
fn sha256(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

/// `len` bytes that neither repeat nor compress, the same on every run.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn an_upload_cut_off_with_the_link_resumes_where_it_stopped() {
    let hosts = TestHosts::start(1);
    let h1 = hosts.host("h1");
    h1.install_gantry(GANTRY.as_ref());
    let project = remote_project(&hosts, &["h1"], "1");
    let big = noise(16 << 20);
    std::fs::write(project.path().join("big.bin"), &big).unwrap();
    let big_digest = sha256(&project.path().join("big.bin"));
    let args = ["deploy", "-e", "prod", "--skip-build", "--output", "json"];

    // 16 MiB at 16 Mbit/s: about eight seconds, cut after the first few MiB.
    h1.limit_rate(16_000);
    let first = Running::start(&project, &hosts.ssh_config, &args);
    let first_pid = first.child.id();
    gantry_testkit::wait_for(
        "some of big.bin to reach h1",
        std::time::Duration::from_secs(60),
        || h1.partial_upload(&big_digest).is_some_and(|n| n >= 3 << 20),
    );
    h1.cut();
    let (code, report, said) = first.finish_with_progress();
    assert_eq!(code, 5, "{report:#}");
    assert_eq!(report["error"]["code"], "host.unreachable", "{report:#}");
    // The lock on h1 could not be given back, and the deploy says so.
    assert!(
        said.iter()
            .any(|l| l.contains("the deploy lock on h1 stays taken")),
        "{said:#?}"
    );
    let held = h1
        .partial_upload(&big_digest)
        .expect("the agent keeps what arrived");
    assert!(held < big.len() as u64, "held {held}");

    // Back: the next deploy takes back the lock the cut one could not give
    // back (its pid has ended, here), and sends the rest of big.bin, not all
    // of it.
    h1.restore();
    h1.unlimit_rate();
    let again = project.gantry(&args);
    again.expect_code(0);
    assert!(
        again
            .stderr
            .contains(&format!("taking back the deploy lock of pid {first_pid}")),
        "{}",
        again.stderr
    );
    let again = again.json();
    let upload = &again["upload"];
    // The other files of the project, which may not have been sent yet.
    let others: u64 = [
        "bin/hello-web",
        "bin/hello-worker",
        "VERSION",
        "gantry.toml",
    ]
    .iter()
    .map(|f| std::fs::metadata(project.path().join(f)).unwrap().len())
    .sum();
    let sent = upload["bytes_sent"].as_u64().unwrap();
    assert!(
        sent <= big.len() as u64 - held + others,
        "at most the rest of big.bin ({held} of its bytes were on h1) and the other files ({others} bytes): {upload:#}"
    );
    assert!(sent > big.len() as u64 / 2, "{upload:#}");
    // And what runs has the whole file.
    let exec = project.gantry(&["exec", "web", "-e", "prod", "--", "sha256sum", "big.bin"]);
    exec.expect_code(0);
    assert!(exec.stdout.starts_with(&big_digest), "{exec:?}");
}

#[test]
fn a_host_behind_a_jump_host_with_a_passphrase_key_in_ssh_agent() {
    let hosts = TestHosts::start(2);
    let (h1, h2) = (hosts.host("h1"), hosts.host("h2"));
    h1.install_gantry(GANTRY.as_ref());
    // h1 takes SSH only from h2, its bastion.
    let rules = format!(
        "table inet bastion {{\n chain input {{\n type filter hook input priority 0; policy accept;\n tcp dport 22 ip saddr != {} drop\n }}\n}}\n",
        h2.address
    );
    h1.exec_ok(&["nft", "-f", "-"], &rules);

    // The only key both hosts accept is protected by a passphrase and held
    // by an ssh-agent; the config names only its public half.
    let key = hosts.passphrase_key("correct horse");
    let socket = hosts.dir().join("agent.sock");
    let _agent = KillOnDrop(
        std::process::Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start ssh-agent"),
    );
    gantry_testkit::wait_for(
        "ssh-agent's socket",
        std::time::Duration::from_secs(10),
        || socket.exists(),
    );
    let askpass = hosts.dir().join("askpass");
    std::fs::write(&askpass, "#!/bin/sh\necho 'correct horse'\n").unwrap();
    std::process::Command::new("chmod")
        .args(["755"])
        .arg(&askpass)
        .status()
        .unwrap();
    let added = std::process::Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &socket)
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ssh-add");
    assert!(
        added.status.success(),
        "ssh-add: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    let known = hosts.dir().join("known_hosts_jump");
    let config = hosts.dir().join("ssh_config_jump");
    let entry = |host: &gantry_testkit::hosts::TestHost, extra: &str| {
        format!(
            "Host {name}\n  HostName {address}\n  User {user}\n  IdentityFile {public}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n{extra}\n",
            name = host.name,
            address = host.address,
            user = host.user,
            public = key.with_extension("pub").display(),
            known = known.display(),
        )
    };
    let project = remote_project(&hosts, &["h1"], "1")
        .env("GANTRY_SSH_CONFIG", &config.display().to_string())
        .env("SSH_AUTH_SOCK", &socket.display().to_string());

    // OpenSSH gives the jump's own ssh only the config file, not the
    // options on the command line: with nothing said there, the bastion's
    // unknown key stops it, and the error says where to say it.
    std::fs::write(
        &config,
        format!("{}{}", entry(h1, "  ProxyJump h2\n"), entry(h2, "")),
    )
    .unwrap();
    let unknown = project.gantry(&["status", "-e", "prod", "--output", "json"]);
    unknown.expect_code(5);
    let error = &unknown.json()["error"];
    assert_eq!(error["code"], "host.key_unknown", "{error:#}");
    assert!(
        error["hint"].as_str().unwrap().contains("ProxyJump"),
        "{error:#}"
    );
    std::fs::write(
        &config,
        format!(
            "{}{}",
            entry(h1, "  ProxyJump h2\n"),
            entry(h2, "  StrictHostKeyChecking accept-new\n")
        ),
    )
    .unwrap();
    let deployed = project.gantry(&["deploy", "-e", "prod", "--skip-build", "--output", "json"]);
    deployed.expect_code(0);
    assert_eq!(versions(&hosts, &["h1"]), ["1"]);
    let status = project.gantry(&["status", "-e", "prod", "--output", "json"]);
    status.expect_code(0);

    // Straight to h1, without the bastion, nothing gets through.
    let direct = std::process::Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=2",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .arg(format!("{}@{}", h1.user, h1.address))
        .arg("true")
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .expect("run ssh");
    assert!(!direct.status.success(), "h1 answers without its bastion");
}

/// A child process killed when the test ends, failed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
