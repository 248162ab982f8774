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
use std::sync::Arc;

use gantry_proxy::{CertFiles, Route, RouteTable, Tls};
use http_body_util::BodyExt as _;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use support::{Answer, TestProxy, client, echo_upstream, empty, get};

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

/// What one HTTPS request came back with.
struct Https {
    alpn: Option<Vec<u8>>,
    version: Version,
    /// The leaf certificate the proxy presented.
    leaf: CertificateDer<'static>,
    answer: Answer,
}

/// One GET over TLS to `addr` for `host` (SNI and Host), trusting only
/// `roots`, offering `alpn`. A failed handshake is the error.
async fn https_get(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
    host: &str,
    alpn: &[&[u8]],
    path: &str,
) -> std::io::Result<Https> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(host.to_owned()).unwrap();
    let stream = connector.connect(name, tcp).await?;
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = session.peer_certificates().unwrap()[0].clone().into_owned();
    let io = TokioIo::new(stream);
    let request = Request::get(path)
        .header("host", host)
        .body(empty())
        .unwrap();
    let response = if alpn.as_deref() == Some(b"h2") {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        let uri = format!("https://{host}{path}");
        let (mut parts, body) = request.into_parts();
        parts.uri = uri.parse().unwrap();
        parts.headers.remove("host");
        sender
            .send_request(Request::from_parts(parts, body))
            .await
            .unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    };
    let version = response.version();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Ok(Https {
        alpn,
        version,
        leaf,
        answer: Answer {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        },
    })
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
