//! Zero downtime, as a user would check it: clients hammer a service through
//! the agent's proxy, some on one keep-alive connection, some with a new
//! connection per request, while (a) 20 deploys of a changed version go out
//! and (b) the proxy is restarted 5 times by listener handoff. Not one
//! request may fail or answer anything but 2xx, and once a deploy returned,
//! every answer comes from the version it deployed.

mod agent_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use agent_support::{DEADLINE, alive, deploy, hello, json};
use gantry_testkit::{KeepAlive, http_get_host, wait_for};

const HOST: &str = "web.zdt.localhost";
const DEPLOYS: u64 = 20;
const RESTARTS: u64 = 5;
/// Phases the load is tagged with: deploy N runs in phase 2N-1; once it has
/// returned, phase 2N ("settled on version N+1") until the next one starts.
/// The restarts come after, in phases above `RESTART_PHASES`.
const RESTART_PHASES: u64 = 1000;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

fn version_of(body: &str) -> Option<String> {
    body.strip_prefix("hello from version ")?
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// One answer as the load saw it: the phase its request started in, and
/// the status and version, or the error.
type Answer = (u64, Result<(u16, Option<String>), String>);

struct Client {
    answers: Vec<Answer>,
    /// Connections opened (keep-alive clients reuse theirs).
    connections: usize,
}

/// What the load's clients share with the test: the phase the test is in,
/// the latest phase a request that was answered started in, and whether to
/// stop.
#[derive(Clone, Default)]
struct Shared {
    phase: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

fn load(port: u16, keep_alive: bool, shared: Shared) -> Client {
    let Shared {
        phase,
        answered,
        done,
    } = shared;
    let mut client = KeepAlive::new(port, HOST);
    let mut answers = Vec::new();
    let mut fresh = 0;
    while !done.load(Ordering::SeqCst) {
        let started_in = phase.load(Ordering::SeqCst);
        let answer = if keep_alive {
            client.get("/")
        } else {
            fresh += 1;
            http_get_host(port, HOST, "/")
        };
        let kind = if keep_alive {
            "keep-alive"
        } else {
            "new connection"
        };
        answered.fetch_max(started_in, Ordering::SeqCst);
        answers.push((
            started_in,
            answer
                .map(|(code, body)| (code, version_of(&body)))
                .map_err(|e| format!("{kind}: {e}")),
        ));
        std::thread::sleep(Duration::from_millis(3));
    }
    Client {
        answers,
        connections: if keep_alive {
            client.connections
        } else {
            fresh
        },
    }
}

fn failures(answers: &[&Answer]) -> Vec<String> {
    answers
        .iter()
        .filter_map(|(phase, answer)| match answer {
            Ok((200..=299, _)) => None,
            Ok((code, version)) => Some(format!("phase {phase}: {code} ({version:?})")),
            Err(e) => Some(format!("phase {phase}: {e}")),
        })
        .collect()
}

#[test]
fn twenty_deploys_and_five_proxy_restarts_under_load_fail_no_request() {
    let port = free_port();
    let p = hello("zdt", "1").env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    let report = deploy(&p);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    let (code, body) = http_get_host(port, HOST, "/").expect("the proxy answers");
    assert_eq!(
        (code, version_of(&body).as_deref()),
        (200, Some("1")),
        "{body}"
    );

    let shared = Shared::default();
    let (phase, done) = (&shared.phase, &shared.done);
    // 3 keep-alive clients and 3 that open a connection per request.
    let clients: Vec<(bool, std::thread::JoinHandle<Client>)> =
        [true, false, true, false, true, false]
            .into_iter()
            .map(|keep_alive| {
                let shared = shared.clone();
                (
                    keep_alive,
                    std::thread::spawn(move || load(port, keep_alive, shared)),
                )
            })
            .collect();
    // A moment of load between two steps, with at least one request of it
    // answered (however busy the machine).
    let settle = || {
        std::thread::sleep(Duration::from_millis(200));
        let now = phase.load(Ordering::SeqCst);
        wait_for("a request of this phase answered", DEADLINE, || {
            shared.answered.load(Ordering::SeqCst) >= now
        });
    };

    // (a) 20 deploys, each of a new version.
    settle();
    for n in 1..=DEPLOYS {
        phase.store(2 * n - 1, Ordering::SeqCst);
        std::fs::write(p.path().join("VERSION"), format!("{}\n", n + 1)).expect("write VERSION");
        let report = deploy(&p);
        assert_eq!(
            report["release"]["outcome"], "succeeded",
            "deploy {n}: {report:#}"
        );
        phase.store(2 * n, Ordering::SeqCst);
        settle();
    }

    // (b) 5 restarts of the proxy by listener handoff.
    let mut pids = Vec::new();
    for n in 1..=RESTARTS {
        phase.store(RESTART_PHASES + n, Ordering::SeqCst);
        let restarted = json(&p, &["proxy", "restart"]);
        assert_eq!(restarted["running"], true, "{restarted:#}");
        let pid = restarted["pid"].as_u64().expect("the new proxy's pid");
        let previous = restarted["previous_pid"]
            .as_u64()
            .expect("the old proxy's pid");
        assert_ne!(pid, previous, "a new process took over: {restarted:#}");
        if let Some(last) = pids.last() {
            assert_eq!(previous, *last, "each restart replaces the one before");
        }
        pids.push(pid);
        let old = u32::try_from(previous).expect("a pid");
        wait_for("the old proxy to finish and exit", DEADLINE, || !alive(old));
        settle();
    }
    done.store(true, Ordering::SeqCst);

    let mut answers: Vec<Answer> = Vec::new();
    let (mut keep_alive_requests, mut keep_alive_connections) = (0, 0);
    for (keep_alive, client) in clients {
        let client = client.join().expect("a client thread");
        if keep_alive {
            keep_alive_requests += client.answers.len();
            keep_alive_connections += client.connections;
        }
        answers.extend(client.answers);
    }
    assert!(
        keep_alive_connections * 10 < keep_alive_requests,
        "the keep-alive clients reused their connections: {keep_alive_connections} for {keep_alive_requests} requests"
    );

    let during_deploys: Vec<&Answer> = answers
        .iter()
        .filter(|(ph, _)| *ph < RESTART_PHASES)
        .collect();
    let failed = failures(&during_deploys);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during {DEPLOYS} deploys: {:?}",
        failed.len(),
        during_deploys.len(),
        &failed[..failed.len().min(10)]
    );
    for n in 1..=DEPLOYS {
        let settled: Vec<&Answer> = during_deploys
            .iter()
            .copied()
            .filter(|(ph, _)| *ph == 2 * n)
            .collect();
        assert!(!settled.is_empty(), "requests after deploy {n} returned");
        let wanted = (n + 1).to_string();
        for (_, answer) in settled {
            let version = answer.as_ref().ok().and_then(|(_, v)| v.clone());
            assert_eq!(
                version.as_deref(),
                Some(wanted.as_str()),
                "after deploy {n}"
            );
        }
    }

    let during_restarts: Vec<&Answer> = answers
        .iter()
        .filter(|(ph, _)| *ph > RESTART_PHASES)
        .collect();
    let failed = failures(&during_restarts);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during {RESTARTS} proxy restarts: {:?}",
        failed.len(),
        during_restarts.len(),
        &failed[..failed.len().min(10)]
    );
    for n in 1..=RESTARTS {
        assert!(
            during_restarts
                .iter()
                .any(|(ph, _)| *ph == RESTART_PHASES + n),
            "requests during restart {n}"
        );
    }
    let last = (DEPLOYS + 1).to_string();
    assert!(
        during_restarts
            .iter()
            .all(|(_, a)| a.as_ref().ok().and_then(|(_, v)| v.as_deref()) == Some(last.as_str())),
        "a restarted proxy kept the routes: every answer from version {last}"
    );
    eprintln!(
        "{} requests ({} during deploys, {} during restarts), {keep_alive_connections} keep-alive connections for {keep_alive_requests} keep-alive requests",
        answers.len(),
        during_deploys.len(),
        during_restarts.len()
    );
}

/// `gantry stop` takes an instance out of the proxy's routes and waits for
/// its open requests before stopping it.
#[test]
fn gantry_stop_lets_a_request_in_flight_finish() {
    use std::io::{Read, Write};
    let port = free_port();
    let p = hello("zdtstop", "1").env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    deploy(&p);
    let (sent, in_flight) = std::sync::mpsc::channel();
    let slow = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            stream,
            "GET /slow?ms=2000 HTTP/1.1\r\nHost: web.zdtstop.localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let _ = sent.send(());
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    });
    in_flight
        .recv_timeout(Duration::from_secs(10))
        .expect("the slow request was sent");
    // Sent is not yet received: give the proxy a moment to forward it.
    std::thread::sleep(Duration::from_millis(300));
    p.gantry(&["stop", "web"]).expect_code(0);
    let answer = slow.join().expect("the slow request's thread");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("slow 2000ms from version 1\n"),
        "the request finished before its instance stopped: {answer:?}"
    );
}

/// `gantry restart` goes one instance at a time, each drained first: a
/// service with two replicas answers every request throughout.
#[test]
fn gantry_restart_under_load_fails_no_request() {
    let port = free_port();
    let p = hello("zdtrestart", "1").env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    deploy(&p);
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = [true, false]
        .into_iter()
        .map(|keep_alive| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut client = KeepAlive::new(port, "web.zdtrestart.localhost");
                let mut answers = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    answers.push(if keep_alive {
                        client.get("/")
                    } else {
                        http_get_host(port, "web.zdtrestart.localhost", "/")
                    });
                    std::thread::sleep(Duration::from_millis(3));
                }
                answers
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..2 {
        p.gantry(&["restart", "web"]).expect_code(0);
    }
    std::thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::SeqCst);
    let answers: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("a client thread"))
        .collect();
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|a| match a {
            Ok((200..=299, _)) => None,
            Ok((code, body)) => Some(format!("{code}: {body}")),
            Err(e) => Some(e.to_string()),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during 2 restarts: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(10)]
    );
}

/// An instance the supervisor gives up on leaves the proxy's routes (as
/// `routes.json` shows), and comes back once restarted by hand.
#[test]
fn an_instance_given_up_on_leaves_the_proxy_routes() {
    let port = free_port();
    let p = hello("zdtgone", "1").env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    let toml = agent_support::hello_toml("zdtgone", "bin/hello-web")
        .replace("replicas = 2\n", "replicas = 2\nrestart = \"never\"\n");
    std::fs::write(p.path().join("gantry.toml"), toml).expect("write gantry.toml");
    let report = deploy(&p);
    let web = agent_support::service(&report, "web");
    let (ports, pids) = (agent_support::ports(web), agent_support::pids(web));
    let routes = p.state_dir().join("proxy/routes.json");
    let routed = |port: u16| {
        std::fs::read_to_string(&routes)
            .unwrap_or_default()
            .contains(&format!("127.0.0.1:{port}\""))
    };
    assert!(
        ports.iter().all(|port| routed(*port)),
        "both instances routed"
    );

    let killed = nix_kill(pids[0]);
    assert!(killed, "kill instance {}", pids[0]);
    wait_for("the dead instance to leave the routes", DEADLINE, || {
        !routed(ports[0])
    });
    assert!(routed(ports[1]), "the other instance stays routed");
    let (code, _) = http_get_host(port, "web.zdtgone.localhost", "/").expect("the proxy answers");
    assert_eq!(code, 200);

    p.gantry(&["restart", "web"]).expect_code(0);
    let web = agent_support::wait_for_status(&p, "web back on two instances", |s| {
        agent_support::instances(agent_support::service(s, "web"))
            .iter()
            .filter(|i| i["state"] == "live" && i["healthy"] == true)
            .count()
            == 2
    });
    let ports = agent_support::ports(agent_support::service(&web, "web"));
    wait_for("both instances routed again", DEADLINE, || {
        ports.iter().all(|port| routed(*port))
    });
}

/// SIGKILL to a process, with the `kill` command a user would use.
fn nix_kill(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// An agent started from another gantry binary (an upgrade) hands the
/// running proxy's listeners to a proxy of its own binary, under load,
/// failing no request.
#[test]
fn an_agent_on_a_new_binary_restarts_the_proxy_by_handoff() {
    let port = free_port();
    let host = "web.zdtupgrade.localhost";
    let p = hello("zdtupgrade", "1").env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    deploy(&p);
    let old = proxy_pid(&p);
    p.gantry(&["agent", "stop"]).expect_code(0);

    // The "new" binary: a copy of this one is another file to the kernel.
    let dir = tempfile::tempdir().expect("a directory");
    let upgraded = dir.path().join("gantry");
    std::fs::copy(agent_support::GANTRY, &upgraded).expect("copy the binary");

    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = [true, false]
        .into_iter()
        .map(|keep_alive| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut client = KeepAlive::new(port, host);
                let mut answers = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    answers.push(if keep_alive {
                        client.get("/")
                    } else {
                        http_get_host(port, host, "/")
                    });
                    std::thread::sleep(Duration::from_millis(3));
                }
                answers
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let status = std::process::Command::new(&upgraded)
        .args(["status", "--output", "json"])
        .current_dir(p.path())
        .env("GANTRY_STATE_DIR", p.state_dir())
        .env("GANTRY_PROXY_LISTEN", format!("127.0.0.1:{port}"))
        .env("GANTRY_PROXY_HTTPS", "off")
        .output()
        .expect("run the upgraded gantry");
    assert!(status.status.success(), "{status:?}");
    wait_for("a new proxy process", DEADLINE, || proxy_pid(&p) != old);
    wait_for("the old proxy to exit", DEADLINE, || !alive(old));
    std::thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::SeqCst);
    let answers: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("a client thread"))
        .collect();
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|a| match a {
            Ok((200..=299, _)) => None,
            Ok((code, body)) => Some(format!("{code}: {body}")),
            Err(e) => Some(e.to_string()),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the upgrade: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(10)]
    );
    let exe =
        std::fs::read_link(format!("/proc/{}/exe", proxy_pid(&p))).expect("the proxy's binary");
    assert_eq!(exe, upgraded, "the proxy runs the agent's binary now");
    // The services and the upgraded agent are stopped with the upgraded
    // binary too (the project's own clean-up finds no agent socket after).
    for args in [&["stop"][..], &["agent", "stop"]] {
        let _ = std::process::Command::new(&upgraded)
            .args(args)
            .current_dir(p.path())
            .env("GANTRY_STATE_DIR", p.state_dir())
            .output();
    }
}

/// `gantry proxy stop` stops the proxy; `gantry proxy restart` starts one
/// again, which serves the routes the last one kept in routes.json.
#[test]
fn a_stopped_proxy_comes_back_with_its_routes() {
    let port = free_port();
    let host = "web.zdtpstop.localhost";
    let p = hello("zdtpstop", "1").env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    deploy(&p);
    let old = proxy_pid(&p);
    let stopped = json(&p, &["proxy", "stop"]);
    assert_eq!(stopped["running"], false, "{stopped:#}");
    assert_eq!(stopped["previous_pid"].as_u64(), Some(u64::from(old)));
    let routes = stopped["routes_file"].as_str().expect("routes_file");
    assert!(
        std::fs::read_to_string(routes).is_ok_and(|r| r.contains(host)),
        "the routes stay in {routes}"
    );
    assert!(!alive(old), "the proxy exited");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on the proxy's port"
    );
    let text = p.gantry(&["proxy", "stop", "--output", "text"]);
    text.expect_code(0);

    let started = json(&p, &["proxy", "restart"]);
    assert_eq!(started["running"], true, "{started:#}");
    let (code, body) = http_get_host(port, host, "/").expect("the proxy answers again");
    assert_eq!(
        (code, version_of(&body).as_deref()),
        (200, Some("1")),
        "{body}"
    );
}

fn proxy_pid(p: &gantry_testkit::TestProject) -> u32 {
    std::fs::read_to_string(p.state_dir().join("proxy.pid"))
        .ok()
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or(0)
}
