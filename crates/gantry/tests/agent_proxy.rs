//! The agent's reverse proxy: the agent starts it on the address it is given,
//! routes `<service>.<project>.localhost` to the live instances, and a
//! redeploy under load swaps the routes and drains the old instances before
//! stopping them, so no request fails. The proxy outlives an agent restart.

mod agent_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agent_support::{alive, deploy, hello, service, status};

const HOST: &str = "web.hello.localhost";

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// One GET through the proxy on a new connection: (status, body).
fn get(port: u16) -> std::io::Result<(u16, String)> {
    gantry_testkit::http_get_host(port, HOST, "/")
}

fn version_of(body: &str) -> Option<&str> {
    body.strip_prefix("hello from version ")?
        .split_whitespace()
        .next()
}

fn proxy_pid(p: &gantry_testkit::TestProject) -> u32 {
    std::fs::read_to_string(p.state_dir().join("proxy.pid"))
        .expect("the agent wrote the proxy's pid")
        .trim()
        .parse()
        .expect("a pid")
}

#[test]
fn redeploys_through_the_proxy_drop_no_request() {
    let port = free_port();
    let p = hello("hello", "1").env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    let report = deploy(&p);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    let url = format!("http://{HOST}:{port}/");
    let web = service(&report, "web");
    assert!(
        web["urls"]
            .as_array()
            .is_some_and(|u| u.contains(&url.clone().into())),
        "the deploy report names the proxy's URL: {web:#}"
    );
    let worker = service(&report, "worker");
    assert!(
        !worker["urls"].as_array().is_some_and(|u| u
            .iter()
            .any(|u| u.as_str().is_some_and(|u| u.contains("localhost")))),
        "a service without a port gets no proxy URL: {worker:#}"
    );

    let (code, body) = get(port).expect("the proxy answers");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("hello from version 1 "), "{body}");

    // The proxy is its own process: an agent restart keeps it and its routes.
    let pid = proxy_pid(&p);
    p.gantry(&["agent", "stop"]).expect_code(0);
    let web = service(&status(&p), "web").clone();
    assert!(
        web["urls"]
            .as_array()
            .is_some_and(|u| u.contains(&url.clone().into())),
        "{web:#}"
    );
    assert!(alive(pid), "the proxy outlived the agent");
    assert_eq!(proxy_pid(&p), pid, "the new agent reused the running proxy");
    let (code, body) = get(port).expect("the proxy answers");
    assert!(
        code == 200 && body.starts_with("hello from version 1 "),
        "{code} {body}"
    );

    // Load: 4 clients, a new connection per request, bounded in rate and count.
    let done = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicU32::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (done, phase) = (Arc::clone(&done), Arc::clone(&phase));
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !done.load(Ordering::SeqCst) && answers.len() < 10_000 {
                    let started_in = phase.load(Ordering::SeqCst);
                    answers.push((started_in, get(port)));
                    std::thread::sleep(Duration::from_millis(5));
                }
                answers
            })
        })
        .collect();

    let last = 3;
    for round in 1..=last {
        std::thread::sleep(Duration::from_millis(300));
        let version = format!("{}", round + 1);
        std::fs::write(p.path().join("VERSION"), format!("{version}\n")).expect("write VERSION");
        let report = deploy(&p);
        assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
        phase.store(round, Ordering::SeqCst);
    }
    // Some requests that all start after the last deploy finished.
    let settle = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    done.store(true, Ordering::SeqCst);

    let answers: Vec<(u32, std::io::Result<(u16, String)>)> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("a client thread"))
        .collect();
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|(_, answer)| match answer {
            Ok((200..=299, _)) => None,
            Ok((code, body)) => Some(format!("{code}: {body}")),
            Err(e) => Some(e.to_string()),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during redeploys: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(10)]
    );
    let after: Vec<&str> = answers
        .iter()
        .filter(|(started_in, _)| *started_in == last)
        .filter_map(|(_, a)| a.as_ref().ok().map(|(_, body)| body.as_str()))
        .collect();
    assert!(
        !after.is_empty(),
        "requests after the last deploy ({:?} of load)",
        settle.elapsed()
    );
    let wanted = format!("{}", last + 1);
    for body in &after {
        assert_eq!(version_of(body), Some(wanted.as_str()), "{body}");
    }
    let versions: std::collections::BTreeSet<&str> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok().and_then(|(_, body)| version_of(body)))
        .collect();
    assert!(
        versions.len() >= 2,
        "the load saw the redeploys: {versions:?}"
    );
}

#[test]
fn a_five_second_request_started_before_a_cutover_completes() {
    use std::io::{Read, Write};
    let port = free_port();
    let p = hello("slowcut", "1").env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    // Old instances get up to their stop timeout to drain: give them more than 5 s.
    let toml = agent_support::hello_toml("slowcut", "bin/hello-web")
        .replace("stop_timeout = \"5s\"", "stop_timeout = \"10s\"");
    std::fs::write(p.path().join("gantry.toml"), toml).expect("write gantry.toml");
    deploy(&p);

    let (sent, in_flight) = std::sync::mpsc::channel();
    let slow = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            stream,
            "GET /slow?ms=5000 HTTP/1.1\r\nHost: web.slowcut.localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let _ = sent.send(());
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read the answer");
        answer
    });
    in_flight
        .recv_timeout(Duration::from_secs(10))
        .expect("the slow request was sent");

    std::fs::write(p.path().join("VERSION"), "2\n").expect("write VERSION");
    let report = deploy(&p);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");

    let answer = slow.join().expect("the slow request's thread");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("slow 5000ms from version 1\n"),
        "the old instance finished the request it had: {answer}"
    );
    let (code, body) = gantry_testkit::http_get_host(port, "web.slowcut.localhost", "/")
        .expect("the proxy answers");
    assert_eq!((code, version_of(&body)), (200, Some("2")), "{body}");
}

/// A proxy that cannot start (its port taken by something else) is said
/// by status, on the host's line, and fails `gantry test`'s route check,
/// even though whatever holds the port answers there.
#[test]
fn a_proxy_that_cannot_start_is_reported_and_fails_gantry_test() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    // Whatever holds the port answers every connection with a 200.
    std::thread::spawn(move || {
        for stream in taken.incoming().flatten() {
            use std::io::{Read, Write};
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
    });
    let p = hello("noproxy", "1").env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    let report = deploy(&p);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");

    let now = status(&p);
    let problem = now["hosts"][0]["proxy_problem"]
        .as_str()
        .unwrap_or_default();
    assert!(
        problem.contains("did not start") && problem.contains(&port.to_string()),
        "{now:#}"
    );
    let text = p.gantry(&["status", "--output", "text"]);
    text.expect_code(0);
    assert!(text.stdout.contains("runs no proxy"), "{}", text.stdout);

    let checked = p.gantry(&["test", "--output", "json"]);
    checked.expect_code(6);
    let error = &checked.json()["error"];
    assert_eq!(error["code"], "test.failed", "{error:#}");
    let routes = error["details"]["hosts"][0]["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["check"] == "routes answer"))
        .unwrap_or_else(|| panic!("a routes check: {error:#}"));
    assert_eq!(routes["outcome"], "failed", "{routes:#}");
    assert!(
        (routes["detail"].as_str()).is_some_and(|d| d.contains("the proxy does not run")),
        "{routes:#}"
    );
}

/// A process fixed on the port this machine's proxy listens on could not
/// start: the agent refuses the deploy before starting anything, naming the
/// service and the port, instead of failing a health check.
#[test]
fn a_process_on_the_proxys_own_port_is_refused_before_anything_starts() {
    let port = free_port();
    let p = agent_support::shell(
        "clash",
        &format!("[services.web]\nrun = \"sleep 600\"\nport = {port}\n"),
    )
    .env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    let run = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    run.expect_code(4);
    let error = &run.json()["error"];
    assert_eq!(error["code"], "deploy.port_taken", "{error:#}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`web`") && message.contains(&port.to_string()),
        "{error:#}"
    );
    let now = status(&p);
    assert!(
        now["services"].as_array().is_none_or(Vec::is_empty),
        "nothing was started: {now:#}"
    );
    p.gantry(&["agent", "stop"]).expect_code(0);
}
