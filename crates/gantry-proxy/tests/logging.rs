//! The proxy's log cannot be made to grow without bound: failed TLS
//! handshakes, which anyone can cause at any rate, are counted rather than
//! each written, and the log file never passes its cap (one rotated file
//! is kept). One test in its own binary: the log file is process-wide.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;

use gantry_proxy::{Route, RouteTable};
use support::{TestProxy, client, closed_by_proxy, echo_upstream, get};
use tokio::io::AsyncWriteExt as _;

const CAP: u64 = 8192;

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn lines_with(paths: &[&Path], what: &str) -> usize {
    paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|text| text.lines().filter(|l| l.contains(what)).count())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_handshakes_are_counted_and_the_log_file_keeps_its_cap() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("proxy.log");
    let rotated = logs.path().join("proxy.log.1");
    let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), |config| {
        config.https = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.access_log = true;
        config.log_file = Some((log.clone(), CAP));
    });
    let https = proxy.https.unwrap();

    for _ in 0..20 {
        let attempts = (0..50).map(|_| async move {
            let mut stream = tokio::net::TcpStream::connect(https).await.unwrap();
            let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
            assert!(closed_by_proxy(&mut stream).await);
        });
        futures_util::future::join_all(attempts).await;
        assert!(size(&log) <= CAP, "{} bytes", size(&log));
    }
    let written = lines_with(&[&log, &rotated], "tls.handshake_failed");
    assert!(
        (1..=4).contains(&written),
        "1000 failed handshakes wrote {written} lines"
    );

    let web = echo_upstream("web").await;
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("web", vec![web.addr])],
        })
        .await;
    let client = client();
    for i in 0..200 {
        get(&client, &proxy, "web.test", &format!("/page/{i}")).await;
        assert!(size(&log) <= CAP, "{} bytes", size(&log));
        assert!(size(&rotated) <= CAP, "{} bytes", size(&rotated));
    }
    support::eventually("the access log to rotate", || {
        lines_with(&[&rotated], "\"path\":\"/page/") > 0
    })
    .await;
}
