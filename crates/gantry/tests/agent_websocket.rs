//! A WebSocket through a deploy: a client connected through the proxy keeps
//! echoing on the old instance while it drains, and the connection ends only
//! once the service's drain timeout (`stop_timeout`) has run out, when the
//! old instance is stopped; new connections reach the new version.

mod agent_support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use agent_support::{DEADLINE, GANTRY, deploy};
use gantry_testkit::{TestProject, http_get_host, testkit_bins};
use tungstenite::{Message, WebSocket};

const HOST: &str = "ws.wsdeploy.localhost";
/// The service's stop (and drain) timeout.
const DRAIN: Duration = Duration::from_secs(4);

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

fn connect(port: u16) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("a read timeout");
    let (socket, response) = tungstenite::client(format!("ws://{HOST}:{port}/"), stream)
        .expect("the WebSocket handshake through the proxy");
    assert_eq!(response.status(), 101);
    socket
}

/// Sends `text`; the echo, or None once the connection is closed.
fn echo(socket: &mut WebSocket<TcpStream>, text: &str) -> Option<String> {
    socket.send(Message::text(text)).ok()?;
    loop {
        match socket.read().ok()? {
            Message::Text(answer) => return Some(answer.to_string()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

#[test]
fn a_websocket_stays_open_through_a_deploy_until_the_drain_timeout() {
    let port = free_port();
    let p = TestProject::new(GANTRY)
        .copy(&testkit_bins().join("gantry-ws-echo"), "bin/ws-echo")
        .file("VERSION", "1\n")
        .file(
            "gantry.toml",
            &format!(
                r#"[project]
name = "wsdeploy"

[services.ws]
run = "bin/ws-echo"
port = "http"
health = {{ path = "/healthz", interval = "100ms", timeout = "1s" }}
stop_timeout = "{}s"
"#,
                DRAIN.as_secs()
            ),
        )
        .env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"));
    deploy(&p);
    let mut socket = connect(port);
    assert_eq!(echo(&mut socket, "hello").as_deref(), Some("1: hello"));

    std::fs::write(p.path().join("VERSION"), "2\n").expect("write VERSION");
    let deploying = std::thread::spawn({
        let (dir, state) = (p.path().to_owned(), p.state_dir().to_owned());
        move || {
            let out = agent_support::command_in(
                &dir,
                &state,
                &["deploy", "--skip-build", "--output", "json"],
            )
            .env("GANTRY_PROXY_LISTEN", format!("127.0.0.1:{port}"))
            .output()
            .expect("run gantry deploy");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                Instant::now(),
            )
        }
    });

    // Until the connection closes: an echo every 200 ms, and the version new
    // requests get, to see when the proxy switched.
    let started = Instant::now();
    let (mut switched, mut last_echo, mut closed) = (None, None, None);
    let mut n = 0;
    while started.elapsed() < DEADLINE {
        n += 1;
        match echo(&mut socket, &format!("m{n}")) {
            Some(answer) => {
                assert_eq!(
                    answer,
                    format!("1: m{n}"),
                    "the old instance keeps the connection"
                );
                last_echo = Some(Instant::now());
            }
            None => {
                closed = Some(Instant::now());
                break;
            }
        }
        if switched.is_none()
            && http_get_host(port, HOST, "/version")
                .is_ok_and(|(code, body)| code == 200 && body == "2")
        {
            switched = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, report, deployed) = deploying.join().expect("the deploy's thread");
    assert_eq!(code, Some(0), "{report}");

    let switched = switched.expect("the proxy switched new requests to version 2");
    let closed = closed.expect("the proxy closed the WebSocket once the drain ran out");
    let last_echo = last_echo.expect("echoes");
    eprintln!(
        "switch seen after {:?}; last echo {:?} and close {:?} after the switch; deploy returned {:?} after the close",
        switched.saturating_duration_since(started),
        last_echo.saturating_duration_since(switched),
        closed.saturating_duration_since(switched),
        deployed.saturating_duration_since(closed),
    );
    // Open for most of the drain timeout after the switch (not cut at once)...
    let most = DRAIN * 3 / 4;
    assert!(
        last_echo >= switched + most,
        "still echoing {most:?} after the switch: the last echo came {:?} after it",
        last_echo.saturating_duration_since(switched)
    );
    // ...and closed after it, no later than the deploy that stopped the old instance.
    assert!(closed > last_echo && closed >= switched + most);
    assert!(
        closed <= deployed + Duration::from_secs(1),
        "closed when the old instance stopped, before the deploy returned ({:?} after)",
        closed.saturating_duration_since(deployed)
    );

    let mut fresh = connect(port);
    assert_eq!(echo(&mut fresh, "again").as_deref(), Some("2: again"));
}
