//! Listener handoff, in one process: a new proxy takes over the listener,
//! the routes and the control socket; the old one answers its idle
//! keep-alive connection once more with `Connection: close`, finishes the
//! request it has in flight, and its stop leaves the new one's sockets alone.
//! The HTTPS listener is handed over the same way.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use gantry_proxy::{Route, RouteTable, Tls};
use hyper::{Request, StatusCode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use support::{TestProxy, client, echo, empty, full, get, https_get, send, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_proxy_takes_over_and_the_old_one_finishes_its_requests() {
    let app = upstream("app", |request| async move {
        if request.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(800)).await;
            return Ok(hyper::Response::new(full("slow done")));
        }
        Ok(echo("app", &request))
    })
    .await;
    let proxy = TestProxy::start();
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("app", vec![app.addr]).hosts(["app.test".to_owned()])],
        })
        .await;
    let addr = proxy.addr;
    let keep_alive = client();
    assert_eq!(
        get(&keep_alive, &proxy, "app.test", "/").await.status,
        StatusCode::OK
    );
    let slow = tokio::spawn({
        let request = Request::get(proxy.url("/slow"))
            .header("host", "app.test")
            .body(empty())
            .unwrap();
        let other = client();
        async move { send(&other, request).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (proxy, old) = proxy.take_over();
    assert_eq!(proxy.addr, addr, "the same listening socket");
    assert!(
        *old.handed_off().borrow(),
        "the old proxy knows it handed off"
    );
    let (status, routes) = proxy.control("GET", "/v1/routes", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(routes["routes"][0]["service"], "app", "{routes}");

    // The idle keep-alive connection is the old proxy's: its next answer is its last.
    let answer = get(&keep_alive, &proxy, "app.test", "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer
            .headers
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close")
    );
    // New connections reach the new proxy.
    assert_eq!(
        get(&client(), &proxy, "app.test", "/").await.status,
        StatusCode::OK
    );

    tokio::task::block_in_place(|| old.stop());
    let slow = slow.await.unwrap();
    assert_eq!(
        (slow.status, slow.text.as_str()),
        (StatusCode::OK, "slow done")
    );

    assert!(
        proxy.control_socket().exists(),
        "the old proxy's stop kept the new control socket"
    );
    assert!(proxy.dir.path().join("state/handoff.sock").exists());
    let (status, health) = proxy.control("GET", "/v1/health", None).await;
    assert_eq!(
        (status, health["routes"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    assert_eq!(
        get(&keep_alive, &proxy, "app.test", "/").await.status,
        StatusCode::OK
    );
}

/// The HTTPS listener travels with the handoff: after the old proxy has
/// stopped, the same port still answers over TLS with a leaf from the same
/// local CA, checked by a client that trusts that CA only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_proxy_takes_over_the_https_listener_too() {
    let web = support::echo_upstream("web").await;
    let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), |config| {
        config.https = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    });
    proxy
        .put_routes(&RouteTable {
            routes: vec![
                Route::new("web", vec![web.addr])
                    .hosts(["web.shop.localhost"])
                    .tls(Tls::Local),
            ],
        })
        .await;
    let https = proxy.https.expect("an HTTPS listener");
    let ca = [CertificateDer::from_pem_file(proxy.dir.path().join("state/ca/ca.pem")).unwrap()];
    let before = https_get(https, &ca, "web.shop.localhost", &[b"h2"], "/")
        .await
        .unwrap();
    assert_eq!(before.answer.status, StatusCode::OK);

    let (proxy, old) = proxy.take_over();
    assert_eq!(proxy.https, Some(https), "the same HTTPS socket");
    tokio::task::block_in_place(|| old.stop());

    // Only the new proxy holds the socket now; both protocols ALPN offers.
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let after = https_get(https, &ca, "web.shop.localhost", &[alpn], "/after")
            .await
            .unwrap();
        assert_eq!(after.alpn.as_deref(), Some(alpn));
        assert_eq!(after.answer.status, StatusCode::OK);
        let echoed = after.answer.json();
        assert_eq!(echoed["upstream"], "web");
        assert_eq!(echoed["path"], "/after");
        assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
    }
    // Plain HTTP came along as well.
    assert_eq!(
        get(&client(), &proxy, "web.shop.localhost", "/")
            .await
            .status,
        StatusCode::OK
    );
}
