//! `gantry proxy` runs the proxy of crates/gantry-proxy: it takes its route
//! table over its control socket, routes by Host, and comes back after a
//! restart with the same routes.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gantry_testkit::wait_for;

/// One raw HTTP/1.1 exchange; the answer as text.
fn exchange(mut stream: impl Read + Write, request: &str) -> String {
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// An upstream that answers every request with `body`.
fn upstream(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(state: &std::path::Path, port: u16) -> Proxy {
    start_with(Command::new(env!("CARGO_BIN_EXE_gantry")), state, port, &[])
}

/// `gantry proxy` on `port` run by `command` (the binary, or a wrapper
/// such as prlimit that runs it), with `extra` arguments.
fn start_with(mut command: Command, state: &std::path::Path, port: u16, extra: &[&str]) -> Proxy {
    let child = command
        .args([
            "proxy",
            "--no-access-log",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--https",
            "off",
            "--state-dir",
        ])
        .arg(state)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gantry proxy");
    let proxy = Proxy(child);
    wait_for("the proxy to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    proxy
}

/// Gives the proxy on `state` one route: `web.shop.localhost` to `web`.
fn route_web(state: &std::path::Path, web: u16) {
    let socket = state.join("proxy/proxy.sock");
    let table = format!(
        r#"{{"routes":[{{"service":"web","hosts":["web.shop.localhost"],"path_prefix":"/","strip_prefix":false,"upstreams":["127.0.0.1:{web}"],"balance":"round_robin"}}]}}"#
    );
    let answer = exchange(
        UnixStream::connect(&socket).expect("control socket"),
        &format!(
            "PUT /v1/routes HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{table}",
            table.len()
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

fn get(port: u16, host: &str) -> String {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    exchange(
        stream,
        &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn the_proxy_routes_by_host_from_the_table_it_is_given_and_keeps_it_across_a_restart() {
    let state = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let web = upstream("hello from web");
    let proxy = start(state.path(), port);

    route_web(state.path(), web);

    let answer = get(port, "web.shop.localhost");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello from web"),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("x-request-id"),
        "{answer}"
    );
    let answer = get(port, "other.localhost");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        answer.contains("other.localhost"),
        "the page names the host: {answer}"
    );

    drop(proxy);
    let _again = start(state.path(), port);
    let answer = get(port, "web.shop.localhost");
    assert!(
        answer.ends_with("hello from web"),
        "routes survive a restart: {answer}"
    );
}

#[test]
fn an_acme_directory_that_is_not_https_is_refused_with_a_hint() {
    let state = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--acme-directory",
            "http://ca.example/dir",
            "--output",
            "json",
            "--state-dir",
        ])
        .arg(state.path())
        .output()
        .expect("gantry runs");
    assert_eq!(output.status.code(), Some(6));
    let error: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("http://ca.example/dir"), "{error}");
    assert!(message.contains("https://"), "{error}");
    let hint = error["error"]["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("--acme-directory"), "{error}");
    // Refused before anything was bound or made: no local CA left behind.
    assert!(!state.path().join("proxy/ca").exists());
}

#[test]
fn a_trusted_proxy_that_is_not_an_address_is_a_usage_error() {
    let state = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--https", "off"])
        .args([
            "--trusted-proxy",
            "10.0.0.0/8,lb.example",
            "--output",
            "json",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .expect("gantry runs");
    let error: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(error["error"]["code"], "usage", "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("lb.example"), "{error}");
    assert!(!state.path().join("proxy/proxy.sock").exists());
}

#[test]
fn take_over_without_a_running_proxy_says_so() {
    let state = tempfile::tempdir().expect("a state directory");
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "proxy",
            "--take-over",
            "--output",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(state.path())
        .output()
        .expect("run gantry proxy");
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let error: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON document on stdout");
    assert_eq!(error["error"]["code"], "proxy.failed", "{error:#}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("handoff.sock") && message.contains("no proxy answers"),
        "{message}"
    );
    assert!(
        error["error"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("--take-over")),
        "{error:#}"
    );
}

/// 300 sockets that never send a byte, against a proxy allowed 256 open
/// files: the proxy closes them once its client timeout passes, and never
/// admits more than its descriptors allow, so real requests are answered.
#[test]
fn silent_sockets_do_not_starve_a_proxy_with_few_file_descriptors() {
    let state = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let web = upstream("hello from web");
    let mut prlimit = Command::new("prlimit");
    prlimit
        .args(["--nofile=256:256", "--"])
        .arg(env!("CARGO_BIN_EXE_gantry"));
    let _proxy = start_with(prlimit, state.path(), port, &["--client-timeout", "1"]);
    route_web(state.path(), web);

    let silent: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    wait_for(
        "a real request to be answered",
        Duration::from_secs(30),
        || try_get(port, "web.shop.localhost").is_some_and(|a| a.ends_with("hello from web")),
    );
    drop(silent);
}

/// One GET that may fail: the proxy may close a connection over its cap.
fn try_get(port: u16, host: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// Started with a soft open-files limit of 256 under a hard one of 4096,
/// the proxy serves with 4096, and says so in the log file it was given.
#[test]
fn the_proxy_raises_its_open_files_limit_and_logs_to_its_file() {
    let state = tempfile::tempdir().expect("tempdir");
    let log = state.path().join("proxy.log");
    let port = free_port();
    let mut prlimit = Command::new("prlimit");
    prlimit
        .args(["--nofile=256:4096", "--"])
        .arg(env!("CARGO_BIN_EXE_gantry"));
    let log_arg = log.to_str().expect("utf-8 path");
    let _proxy = start_with(prlimit, state.path(), port, &["--log-file", log_arg]);
    let mut started = None;
    wait_for("the proxy.started event", Duration::from_secs(10), || {
        started = std::fs::read_to_string(&log).ok().and_then(|text| {
            text.lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find(|event| event["event"] == "proxy.started")
        });
        started.is_some()
    });
    let started = started.expect("an event");
    assert_eq!(started["nofile"], 4096, "{started}");
}

#[test]
fn a_bad_trusted_proxy_is_refused_before_the_proxy_says_it_listens() {
    let state = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--https", "off"])
        .args(["--trusted-proxy", "lb.example", "--output", "text"])
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .expect("gantry runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("lb.example"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(!state.path().join("proxy").exists(), "{stderr}");
}

#[test]
fn v_on_the_proxy_is_refused_before_it_starts() {
    let state = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["-v", "proxy", "--listen", "127.0.0.1:0", "--https", "off"])
        .args(["--output", "json", "--state-dir"])
        .arg(state.path())
        .output()
        .expect("gantry runs");
    assert_eq!(output.status.code(), Some(2));
    let error: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(error["error"]["code"], "verbose.unsupported", "{error}");
    assert!(!state.path().join("proxy").exists(), "{error}");
}
