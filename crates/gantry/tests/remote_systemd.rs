//! `gantry configure` as root on a host that runs systemd, for real: a Docker
//! container whose PID 1 is systemd, reached over SSH as root
//! (gantry_testkit::systemd_host). The agent becomes the unit
//! `gantry-agent` running as the user `gantry`, its proxy on port 80.
//! Needs root, Docker and debootstrap (the image is built once and cached).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_support::{GANTRY, configure_step, hello_toml, service};
use gantry_testkit::systemd_host::SystemdHost;
use gantry_testkit::{TestProject, example_bins, http_get_at, wait_for};
use serde_json::Value;

/// `GET /version` of the web service through the host's proxy on port 80,
/// from this machine.
fn version(host: &SystemdHost) -> String {
    let (code, body) = http_get_at(host.at(80), "web.shop.localhost", "/version")
        .unwrap_or_else(|e| panic!("{} does not answer on port 80: {e}", host.name));
    assert_eq!(code, 200, "{body}");
    body.trim().to_owned()
}

/// The agent's main pid, as systemd knows it (0: not running).
fn agent_pid(host: &SystemdHost) -> u32 {
    host.exec_ok(&[
        "systemctl",
        "show",
        "--property=MainPID",
        "--value",
        "gantry-agent",
    ])
    .parse()
    .expect("MainPID is a number")
}

/// Whether every step of every host of a configure report changed nothing.
fn unchanged(report: &Value) -> bool {
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| h["steps"].as_array().unwrap())
        .all(|s| s["changed"] == false)
}

/// Whether `step` of the first host of a configure report changed anything.
fn changed(report: &Value, step: &str) -> bool {
    configure_step(&report["hosts"][0], step)["changed"] == true
}

/// Requests to the web service through the host's proxy, one after another
/// from a thread, until `finish`: every one that did not answer 200.
struct Watch {
    running: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Watch {
    fn start(host: &SystemdHost) -> Watch {
        let running = Arc::new(AtomicBool::new(true));
        let address = host.address;
        let thread = std::thread::spawn({
            let running = Arc::clone(&running);
            move || {
                let mut failures = Vec::new();
                while running.load(Ordering::SeqCst) {
                    match gantry_testkit::http_get_at(
                        (address, 80).into(),
                        "web.shop.localhost",
                        "/version",
                    ) {
                        Ok((200, _)) => {}
                        other => failures.push(format!("{other:?}")),
                    }
                    // A steady pace, not a wait for anything.
                    std::thread::sleep(Duration::from_millis(20));
                }
                failures
            }
        });
        Watch { running, thread }
    }

    fn finish(self) -> Vec<String> {
        self.running.store(false, Ordering::SeqCst);
        self.thread.join().expect("the request thread")
    }
}

fn json(project: &TestProject, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let run = project.gantry(&args);
    run.expect_code(0);
    run.json()
}

/// The agent's unit sandboxes it and what it starts; its proxy keeps only
/// the capability to bind ports 80 and 443.
fn assert_unit_is_sandboxed(host: &SystemdHost) {
    let properties = host.exec_ok(&[
        "systemctl",
        "show",
        "--property=NoNewPrivileges,ProtectSystem,ProtectHome,PrivateTmp,ReadWritePaths,LimitNOFILE,LimitNOFILESoft",
        "gantry-agent",
    ]);
    for wanted in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/gantry",
        "LimitNOFILE=524288",
        "LimitNOFILESoft=1024",
    ] {
        assert!(
            properties.lines().any(|l| l == wanted),
            "{wanted}: {properties}"
        );
    }
    wait_for("the proxy's pid file", Duration::from_secs(20), || {
        host.exec(&["test", "-s", "/var/lib/gantry/proxy.pid"])
            .status
            .success()
    });
    let proxy = host.exec_ok(&["cat", "/var/lib/gantry/proxy.pid"]);
    let effective = host.exec_ok(&["grep", "^CapEff", &format!("/proc/{}/status", proxy.trim())]);
    // Bit 10: CAP_NET_BIND_SERVICE.
    assert!(
        effective.ends_with("0000000000000400"),
        "the proxy holds {effective}"
    );
}

/// Connects to the agent's socket (perl-base is in every Debian).
const CONNECT: &str = "perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Peer => shift) or exit 1' /var/lib/gantry/agent.sock";

/// As a service's user, the agent's store, its socket, the proxy's keys and
/// the secrets are out of reach.
fn assert_service_user_is_kept_out(host: &SystemdHost, uid: u32) {
    let as_service = |command: &str| {
        host.exec(&[
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--groups=1900000000",
            "sh",
            "-c",
            command,
        ])
        .status
        .success()
    };
    assert!(
        as_service("ls /var/lib/gantry/releases/shop >/dev/null"),
        "its own release"
    );
    for refused in [
        "head -c1 /var/lib/gantry/agent.db",
        "ls /var/lib/gantry",
        "ls /var/lib/gantry/proxy",
        "ls /var/lib/gantry/secrets",
        CONNECT,
    ] {
        assert!(!as_service(refused), "a service may: {refused}");
    }
    // The same connect as root works: the refusal above is the socket's.
    assert!(host.exec(&["sh", "-c", CONNECT]).status.success());
}

#[test]
fn configure_as_root_makes_the_agent_a_systemd_unit_that_survives_its_death() {
    let started = Instant::now();
    let host = SystemdHost::start("sd1");
    eprintln!("host up after {:.1?}", started.elapsed());
    let bins = example_bins();
    let project = TestProject::new(GANTRY)
        .copy(&bins.join("hello-web"), "bin/hello-web")
        .copy(&bins.join("hello-worker"), "bin/hello-worker")
        .file("VERSION", "1\n")
        .file("gantry.toml", &hello_toml("shop", "bin/hello-web"))
        .env("GANTRY_SSH_CONFIG", &host.ssh_config.display().to_string());

    // The host's firewall: ufw, denying what it was not told to allow
    // (SSH, which its owner allowed before enabling it).
    host.exec_ok(&["ufw", "allow", "22/tcp"]);
    host.exec_ok(&["ufw", "--force", "enable"]);
    let port_80 = std::net::SocketAddr::from((host.address, 80));
    match std::net::TcpStream::connect_timeout(&port_80, Duration::from_millis(700)) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!("ufw should drop port 80 before configure: {other:?}"),
    }

    let registered = json(&project, &["register", "sd1", "-e", "prod"]);
    assert_eq!(registered["state"], "provisioned", "{registered:#}");

    // configure: gantry installed, its agent a unit running as `gantry`.
    let first = json(&project, &["configure", "-e", "prod"]);
    assert_eq!(first["state"], "configured", "{first:#}");
    assert_eq!(first["hosts"][0]["agent"], "systemd", "{first:#}");
    let agent_step = configure_step(&first["hosts"][0], "start the agent");
    assert!(
        agent_step["detail"]
            .as_str()
            .unwrap()
            .ends_with("its proxy listens on 0.0.0.0:80"),
        "{agent_step:#}"
    );
    assert_eq!(
        host.exec_ok(&["systemctl", "is-active", "gantry-agent"]),
        "active"
    );
    assert_eq!(host.exec_ok(&["id", "-un", "gantry"]), "gantry");
    // Owned by the agent; services (their common group) may only pass through.
    assert_eq!(
        host.exec_ok(&["stat", "-c", "%U %g %a", "/var/lib/gantry"]),
        "gantry 1900000000 710"
    );
    assert_unit_is_sandboxed(&host);
    let ours = std::process::Command::new(GANTRY)
        .arg("--version")
        .output()
        .expect("run gantry --version");
    assert_eq!(
        host.exec_ok(&["/usr/local/bin/gantry", "--version"]),
        String::from_utf8_lossy(&ours.stdout).trim()
    );
    let pid = agent_pid(&host);
    assert_ne!(pid, 0, "systemd knows the agent's pid");
    assert_eq!(
        host.exec_ok(&["ps", "-o", "user=", "-p", &pid.to_string()]),
        "gantry"
    );
    // ufw now allows HTTP and HTTPS too (opened by the unit as it started,
    // or by configure's own step: either way, once for IPv4 and once for IPv6).
    let ufw = host.exec_ok(&["ufw", "status"]);
    for port in ["22/tcp", "80/tcp", "443/tcp"] {
        let rules = ufw
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{port} ")) && !l.contains("(v6)") && l.contains("ALLOW")
            })
            .count();
        assert_eq!(rules, 1, "{port}: {ufw}");
        let rules_v6 = ufw
            .lines()
            .filter(|l| l.starts_with(&format!("{port} (v6)")) && l.contains("ALLOW"))
            .count();
        assert_eq!(rules_v6, 1, "{port} (v6): {ufw}");
    }
    eprintln!("configured after {:.1?}", started.elapsed());

    // Again: nothing changes, the agent is not restarted.
    let second = json(&project, &["configure", "-e", "prod"]);
    assert!(
        unchanged(&second),
        "a second configure changes nothing: {second:#}"
    );
    assert_eq!(agent_pid(&host), pid, "the agent was not restarted");

    // Deploy: the web service answers through the host's proxy on port 80.
    json(&project, &["deploy", "-e", "prod", "--skip-build"]);
    assert_eq!(version(&host), "1");
    let status = json(&project, &["status", "-e", "prod"]);
    assert_eq!(status["hosts"][0]["host"], "sd1", "{status:#}");
    assert_eq!(status["hosts"][0]["reachable"], true, "{status:#}");
    for service in status["services"].as_array().unwrap() {
        let instances = service["instances"].as_array().unwrap();
        assert!(!instances.is_empty(), "{status:#}");
        for instance in instances {
            assert_eq!(instance["state"], "live", "{status:#}");
        }
    }
    // The web service's memory and pids limits hold, though the agent is not root.
    let web = service(&status, "web");
    assert_eq!(web["limits"]["enforced"], true, "{web:#}");
    // Services run as their project's own user, not the agent's, inside its
    // cgroups, without any of the capabilities the unit gives the agent.
    let mut web_uids = Vec::new();
    for instance in web["instances"].as_array().unwrap() {
        let pid = instance["pid"].to_string();
        let user = host.exec_ok(&["ps", "-o", "uid=", "-p", &pid]);
        let uid: u32 = user.trim().parse().expect("a uid");
        web_uids.push(uid.to_string());
        assert!(uid >= 1_900_000_001, "web runs as {uid}");
        let status = host.exec_ok(&[
            "grep",
            "-E",
            "^(Cap(Inh|Eff|Prm|Amb|Bnd)|NoNewPrivs)",
            &format!("/proc/{pid}/status"),
        ]);
        assert_eq!(status.lines().count(), 6, "{status}");
        assert!(
            status
                .lines()
                .all(|l| l.ends_with("0000000000000000") || l.ends_with("\t1")),
            "web holds capabilities: {status}"
        );
        assert_service_user_is_kept_out(&host, uid);
    }
    // exec runs as the services run: as web's project user (no longer the
    // agent's user gantry), confined as web is, in the release, with the
    // port of a running instance.
    let exec = project.gantry(&[
        "exec",
        "web",
        "-e",
        "prod",
        "--",
        "sh",
        "-c",
        "id -u; cat VERSION; echo \"$PORT\"; grep -E '^(NoNewPrivs|CapBnd)' /proc/self/status",
    ]);
    exec.expect_code(0);
    let lines = exec.stdout.lines().collect::<Vec<_>>();
    assert!(
        web_uids.contains(&lines[0].to_owned()),
        "{web_uids:?}: {exec:?}"
    );
    assert_eq!(lines[1], "1", "{exec:?}");
    assert!(
        lines.get(2).is_some_and(|p| p.parse::<u16>().is_ok()),
        "no PORT: {exec:?}"
    );
    assert_eq!(
        lines[3..],
        ["CapBnd:\t0000000000000000", "NoNewPrivs:\t1"],
        "{exec:?}"
    );
    eprintln!("deployed after {:.1?}", started.elapsed());

    // The agent dies: systemd starts it again, and the web service answers
    // the whole time (KillMode=process: the services outlive their agent).
    let watch = Watch::start(&host);
    host.exec_ok(&["kill", "-KILL", &pid.to_string()]);
    wait_for(
        "systemd to restart the agent",
        Duration::from_secs(30),
        || {
            let now = agent_pid(&host);
            now != 0 && now != pid
        },
    );
    let status = project.gantry(&["status", "-e", "prod", "--output", "json"]);
    let failures = watch.finish();
    assert!(
        failures.is_empty(),
        "the web service stopped answering while the agent was down: {failures:?}"
    );
    status.expect_code(0);
    assert_eq!(version(&host), "1");
    assert_eq!(
        host.exec_ok(&["ps", "-o", "user=", "-p", &agent_pid(&host).to_string()]),
        "gantry"
    );

    // The unit stopped: the CLI says where to look, and starts no agent of
    // its own as root beside the unit's; the services keep running.
    host.exec_ok(&["systemctl", "stop", "gantry-agent"]);
    let down = project.gantry(&["status", "-e", "prod", "--output", "json"]);
    down.expect_code(5);
    let error = &down.json()["error"];
    assert_eq!(error["code"], "agent.unreachable", "{error:#}");
    let hint = error["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("systemctl status gantry-agent")
            && hint.contains("journalctl -u gantry-agent"),
        "{error:#}"
    );
    let root_agents: Vec<String> = host
        .exec_ok(&["ps", "-u", "root", "-o", "args="])
        .lines()
        .filter(|p| p.contains("gantry agent") && !p.contains("agent connect"))
        .map(str::to_owned)
        .collect();
    assert!(
        root_agents.is_empty(),
        "agents run as root: {root_agents:?}"
    );
    assert_eq!(version(&host), "1");
    host.exec_ok(&["systemctl", "start", "gantry-agent"]);
    json(&project, &["status", "-e", "prod"]);

    // `gantry agent stop` by hand on the host points at systemctl, and
    // stops nothing of the unit's.
    let running = agent_pid(&host);
    let stop = host.exec(&["/usr/local/bin/gantry", "agent", "stop", "--output", "text"]);
    let said = String::from_utf8_lossy(&stop.stdout);
    assert!(
        said.contains("systemd runs this host's agent (unit gantry-agent)")
            && said.contains("systemctl stop gantry-agent"),
        "{said}"
    );
    assert_eq!(agent_pid(&host), running);

    // An upgrade: the host's gantry differs from ours, so configure installs
    // ours and restarts the unit; the services keep answering.
    host.exec_ok(&["sh", "-c", "echo >> /root/.gantry/bin/gantry"]);
    let before = agent_pid(&host);
    let watch = Watch::start(&host);
    let upgraded = json(&project, &["configure", "-e", "prod"]);
    let failures = watch.finish();
    assert!(
        failures.is_empty(),
        "the web service stopped answering while the agent restarted: {failures:?}"
    );
    for step in ["install gantry", "install the agent"] {
        assert!(changed(&upgraded, step), "{step}: {upgraded:#}");
    }
    assert_ne!(agent_pid(&host), before, "the agent was restarted");
    json(&project, &["status", "-e", "prod"]);

    // A new version, then back.
    std::fs::write(project.path().join("VERSION"), "2\n").unwrap();
    json(&project, &["deploy", "-e", "prod", "--skip-build"]);
    assert_eq!(version(&host), "2");
    json(&project, &["rollback", "-e", "prod"]);
    assert_eq!(version(&host), "1");
    eprintln!("done after {:.1?}", started.elapsed());
}

/// A project with one `image` service (the Debian test image).
fn image_project(host: &SystemdHost) -> TestProject {
    let toml = format!(
        r#"[project]
name = "boxed"

[services.app]
image = "{image}"
stop_timeout = "1s"
"#,
        image = gantry_testkit::images::base()
    );
    TestProject::new(GANTRY)
        .file("gantry.toml", &toml)
        .env("GANTRY_SSH_CONFIG", &host.ssh_config.display().to_string())
}

#[test]
fn configure_installs_docker_where_image_services_run() {
    let host = SystemdHost::start("sd2");
    let project = image_project(&host);
    json(&project, &["register", "sd2", "-e", "prod"]);
    assert!(
        !host
            .exec(&["sh", "-c", "command -v dockerd"])
            .status
            .success(),
        "the host starts without Docker"
    );

    // configure installs Debian's docker.io, starts it, and lets the
    // agent's user reach its socket.
    let first = json(&project, &["configure", "-e", "prod"]);
    let docker = configure_step(&first["hosts"][0], "install docker");
    assert_eq!(docker["changed"], true, "{first:#}");
    assert!(
        docker["detail"]
            .as_str()
            .unwrap()
            .contains("the agent's user gantry is in the group docker"),
        "{docker:#}"
    );
    assert_eq!(
        host.exec_ok(&["systemctl", "is-active", "docker"]),
        "active"
    );
    assert_eq!(
        host.exec_ok(&["systemctl", "is-enabled", "docker"]),
        "enabled"
    );
    assert!(
        host.exec_ok(&["id", "-nG", "gantry"])
            .split_whitespace()
            .any(|g| g == "docker")
    );
    // The agent was started once, already in the group docker.
    let starts = host.exec_ok(&[
        "sh",
        "-c",
        "journalctl -u gantry-agent -o cat | grep -c '^Started' || true",
    ]);
    assert_eq!(starts, "1", "the agent started once");
    let gid = host.exec_ok(&["getent", "group", "docker"]);
    let gid = gid.split(':').nth(2).unwrap().to_owned();
    let status = host.exec_ok(&["cat", &format!("/proc/{}/status", agent_pid(&host))]);
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(
        groups.split_whitespace().skip(1).any(|g| g == gid),
        "docker is {gid}; the agent's {groups}"
    );
    // The agent, as gantry, talks to the engine.
    host.exec_ok(&[
        "setpriv",
        "--reuid=gantry",
        "--regid=gantry",
        "--init-groups",
        "docker",
        "info",
    ]);

    // Again: nothing changes.
    let second = json(&project, &["configure", "-e", "prod"]);
    assert!(unchanged(&second), "{second:#}");
}
