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

fn load(port: u16, keep_alive: bool, phase: Arc<AtomicU64>, done: Arc<AtomicBool>) -> Client {
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
        answers.push((
            started_in,
            answer
                .map(|(code, body)| (code, version_of(&body)))
                .map_err(|e| e.to_string()),
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

    let phase = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // 3 keep-alive clients and 3 that open a connection per request.
    let clients: Vec<(bool, std::thread::JoinHandle<Client>)> =
        [true, false, true, false, true, false]
            .into_iter()
            .map(|keep_alive| {
                let (phase, done) = (Arc::clone(&phase), Arc::clone(&done));
                (
                    keep_alive,
                    std::thread::spawn(move || load(port, keep_alive, phase, done)),
                )
            })
            .collect();
    let settle = || std::thread::sleep(Duration::from_millis(200));

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
