//! HTTPS through the proxy, checked as a browser would: a client whose root
//! store holds only the CA that should have signed, real sockets, real
//! handshakes. Local CA leaves for `*.localhost`, the user's own
//! certificate, ALPN h2, the redirect from plain HTTP, and a bad certificate
//! file refused with the old table kept.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use gantry_proxy::{CertFiles, Route, RouteTable, Tls};
use hyper::{StatusCode, Version};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use support::{TestProxy, client, echo_upstream, get, https_get};

fn https_proxy() -> TestProxy {
    TestProxy::start_with(tempfile::tempdir().unwrap(), with_https)
}

fn with_https(config: &mut gantry_proxy::ProxyConfig) {
    config.https = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

/// The proxy's local CA certificate, as `gantry trust` points users to it.
fn local_ca(proxy: &TestProxy) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(proxy.dir.path().join("state/ca/ca.pem")).unwrap()
}

fn local_route(upstream: SocketAddr) -> Route {
    Route::new("web", vec![upstream])
        .hosts(["web.shop.localhost"])
        .tls(Tls::Local)
}

/// A CA of the test's own and a certificate it signed for `host`, written
/// as PEM files in `dir`: (CA certificate, cert file, key file).
fn user_certificate(dir: &Path, host: &str) -> (CertificateDer<'static>, CertFiles) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test user CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let files = CertFiles {
        cert: dir.join("site.pem"),
        key: dir.join("site.key"),
    };
    std::fs::write(&files.cert, leaf.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    (ca_cert.der().clone(), files)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_request_is_served_with_a_leaf_from_the_local_ca() {
    let proxy = https_proxy();
    let web = echo_upstream("web").await;
    proxy
        .put_routes(&RouteTable {
            routes: vec![local_route(web.addr)],
        })
        .await;
    let https = https_get(
        proxy.https.unwrap(),
        &[local_ca(&proxy)],
        "web.shop.localhost",
        &[b"http/1.1"],
        "/hello?x=1",
    )
    .await
    .unwrap();
    assert_eq!(https.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(https.answer.status, StatusCode::OK);
    let echoed = https.answer.json();
    assert_eq!(echoed["upstream"], "web");
    assert_eq!(echoed["path"], "/hello?x=1");
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echoed["headers"]["host"], "web.shop.localhost");

    // Plain HTTP to the same route still works, and says so upstream: a
    // local route is not redirected.
    let plain = get(&client(), &proxy, "web.shop.localhost", "/").await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.json()["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread")]
async fn alpn_h2_serves_http2_through_the_forwarder() {
    let proxy = https_proxy();
    let web = echo_upstream("web").await;
    proxy
        .put_routes(&RouteTable {
            routes: vec![local_route(web.addr)],
        })
        .await;
    let https = https_get(
        proxy.https.unwrap(),
        &[local_ca(&proxy)],
        "web.shop.localhost",
        &[b"h2", b"http/1.1"],
        "/two",
    )
    .await
    .unwrap();
    assert_eq!(https.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(https.version, Version::HTTP_2);
    assert_eq!(https.answer.status, StatusCode::OK);
    let echoed = https.answer.json();
    assert_eq!(echoed["path"], "/two");
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echoed["headers"]["host"], "web.shop.localhost");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_trust_the_ca_or_names_no_routed_host_fails_alone() {
    let proxy = https_proxy();
    let web = echo_upstream("web").await;
    proxy
        .put_routes(&RouteTable {
            routes: vec![local_route(web.addr)],
        })
        .await;
    let addr = proxy.https.unwrap();
    let (other_ca, _) = user_certificate(proxy.dir.path(), "elsewhere.test");

    let untrusted = https_get(addr, &[other_ca], "web.shop.localhost", &[], "/").await;
    let error = untrusted.err().expect("verification fails").to_string();
    assert!(error.contains("certificate"), "{error}");

    let unknown = https_get(addr, &[local_ca(&proxy)], "nothing.localhost", &[], "/").await;
    assert!(unknown.is_err(), "no certificate for a host no route has");

    // The listener serves the next client as if nothing happened.
    let fine = https_get(addr, &[local_ca(&proxy)], "web.shop.localhost", &[], "/")
        .await
        .unwrap();
    assert_eq!(fine.answer.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_ca_is_made_once_with_a_private_key_and_kept_across_restarts() {
    let proxy = https_proxy();
    let ca_dir = proxy.dir.path().join("state/ca");
    let mode = std::fs::metadata(ca_dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "ca.key is the owner's alone");
    let before = std::fs::read(ca_dir.join("ca.pem")).unwrap();
    let key_before = std::fs::read(ca_dir.join("ca.key")).unwrap();
    let trusted = local_ca(&proxy);

    let proxy = proxy.restart_with(with_https);
    assert_eq!(std::fs::read(ca_dir.join("ca.pem")).unwrap(), before);
    assert_eq!(std::fs::read(ca_dir.join("ca.key")).unwrap(), key_before);
    let web = echo_upstream("web").await;
    proxy
        .put_routes(&RouteTable {
            routes: vec![local_route(web.addr)],
        })
        .await;
    let https = https_get(
        proxy.https.unwrap(),
        &[trusted],
        "web.shop.localhost",
        &[],
        "/",
    )
    .await
    .unwrap();
    assert_eq!(
        https.answer.status,
        StatusCode::OK,
        "a client that trusted the CA before the restart still does"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_with_the_users_certificate_is_served_with_it() {
    let proxy = https_proxy();
    let web = echo_upstream("web").await;
    let (user_ca, files) = user_certificate(proxy.dir.path(), "shop.example.test");
    let served_leaf = CertificateDer::from_pem_file(&files.cert).unwrap();
    proxy
        .put_routes(&RouteTable {
            routes: vec![
                Route::new("web", vec![web.addr])
                    .hosts(["shop.example.test"])
                    .tls(Tls::Files(files)),
            ],
        })
        .await;
    let https = https_get(
        proxy.https.unwrap(),
        &[user_ca],
        "shop.example.test",
        &[b"h2"],
        "/",
    )
    .await
    .unwrap();
    assert_eq!(https.leaf, served_leaf);
    assert_eq!(https.answer.status, StatusCode::OK);
    assert_eq!(https.answer.json()["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_to_a_redirect_route_gets_308_to_https_except_acme_challenges() {
    let proxy = https_proxy();
    let web = echo_upstream("web").await;
    let (_, files) = user_certificate(proxy.dir.path(), "shop.example.test");
    proxy
        .put_routes(&RouteTable {
            routes: vec![
                Route::new("web", vec![web.addr])
                    .hosts(["shop.example.test"])
                    .tls(Tls::Files(files))
                    .redirect_https(true),
            ],
        })
        .await;
    let http = client();
    let moved = get(&http, &proxy, "shop.example.test:8080", "/cart?item=3").await;
    assert_eq!(moved.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        moved.headers["location"],
        format!(
            "https://shop.example.test:{}/cart?item=3",
            proxy.https.unwrap().port()
        )
    );
    assert_eq!(web.hits(), 0, "a redirect is answered by the proxy");

    let challenge = get(
        &http,
        &proxy,
        "shop.example.test",
        "/.well-known/acme-challenge/x",
    )
    .await;
    assert_eq!(challenge.status, StatusCode::OK);
    assert_eq!(challenge.json()["path"], "/.well-known/acme-challenge/x");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_certificate_file_is_refused_by_name_and_the_old_table_kept() {
    let proxy = https_proxy();
    let web = echo_upstream("web").await;
    let old = RouteTable {
        routes: vec![local_route(web.addr)],
    };
    proxy.put_routes(&old).await;
    let missing = proxy.dir.path().join("no-such-cert.pem");
    let (_, files) = user_certificate(proxy.dir.path(), "shop.example.test");
    let bad = RouteTable {
        routes: vec![
            local_route(web.addr),
            Route::new("shop", vec![web.addr])
                .hosts(["shop.example.test"])
                .tls(Tls::Files(CertFiles {
                    cert: missing.clone(),
                    key: files.key.clone(),
                })),
        ],
    };
    let (status, answer) = proxy
        .control(
            "PUT",
            "/v1/routes",
            Some(serde_json::to_value(&bad).unwrap()),
        )
        .await;
    assert!(status.is_client_error(), "{status} {answer}");
    assert_eq!(answer["error"]["code"], "routes.certificate_invalid");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );

    // A key that is not PEM: named too, and nothing of the key is echoed.
    std::fs::write(&files.key, "not a key at all").unwrap();
    let (status, answer) = proxy
        .control(
            "PUT",
            "/v1/routes",
            Some(json!({"routes": [{
                "service": "shop", "hosts": ["shop.example.test"],
                "upstreams": [web.addr], "tls": {"cert": files.cert, "key": files.key},
            }]})),
        )
        .await;
    assert!(status.is_client_error(), "{status} {answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("site.key"), "{message}");
    assert!(!message.contains("not a key at all"), "{message}");

    let (_, served) = proxy.control("GET", "/v1/routes", None).await;
    assert_eq!(served, serde_json::to_value(&old).unwrap());
    let https = https_get(
        proxy.https.unwrap(),
        &[local_ca(&proxy)],
        "web.shop.localhost",
        &[],
        "/",
    )
    .await
    .unwrap();
    assert_eq!(https.answer.status, StatusCode::OK);
    let _: Value = https.answer.json();
}
