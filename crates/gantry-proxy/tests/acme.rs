//! ACME against a real Pebble (Debian's `pebble` package): the proxy orders a
//! certificate for a route with `tls = "acme"`, answers Pebble's HTTP-01
//! challenge on its own HTTP port (Pebble's `httpPort`; no
//! PEBBLE_VA_ALWAYS_VALID), stores it, reuses it after a restart, renews it
//! when it is due, and keeps it when a renewal fails.
//!
//! The end-to-end test serves the issued certificate on the proxy's HTTPS
//! listener, checked by a client that trusts only Pebble's issuing root.
//!
//! Names resolve through `pebble-challtestsrv`, whose DNS answers every A
//! query with 127.0.0.1. Skipped (with a message) when pebble is missing;
//! `.ci/run` installs it.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use gantry_proxy::acme::{AcmeConfig, AcmeEvent};
use gantry_proxy::{Route, RouteTable, Tls};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use support::{TestProxy, client, echo_upstream, get, https_get};

const NAME: &str = "shop.gantry.test";
/// An order takes Pebble a second or two; this is only how long to wait
/// before calling it a hang.
const ORDER_PATIENCE: Duration = Duration::from_secs(120);

/// What the manager reported, owned.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Loaded(String),
    Issued {
        name: String,
        renewal: bool,
    },
    Failed {
        name: String,
        code: String,
        message: String,
    },
    Settled {
        names: usize,
        held: usize,
    },
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when the test ends, whatever way it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pebble and its DNS, on free ports, validating on `http_port`.
struct Pebble {
    _dns: Process,
    /// pebble-challtestsrv's management port, to add DNS records.
    dns_management: u16,
    server: Option<Process>,
    directory: String,
    management: u16,
    /// Trusted for Pebble's own HTTPS (its API and management interface).
    api_root: PathBuf,
}

impl Pebble {
    fn start(dir: &Path, http_port: u16) -> Pebble {
        // Pebble's HTTPS listener: a leaf for 127.0.0.1 under a root made here.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let api_root = dir.join("pebble-api-root.pem");
        std::fs::write(&api_root, ca.pem()).unwrap();
        std::fs::write(dir.join("pebble-cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("pebble-key.pem"), leaf_key.serialize_pem()).unwrap();

        let (dns_port, dns_management) = (free_port(), free_port());
        let dns = Process(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{dns_management}")])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pebble-challtestsrv runs"),
        );
        wait_for_port(dns_port, "pebble-challtestsrv");
        wait_for_port(dns_management, "pebble-challtestsrv's management interface");

        let (listen, management) = (free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.join("pebble-cert.pem"),
                "privateKey": dir.join("pebble-key.pem"),
                "httpPort": http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        let config_file = dir.join("pebble-config.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let server = Process(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_file)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                // Pebble refuses 5% of good nonces by default to exercise
                // clients' retries; that would make this test flaky.
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                // Every order validates its challenge afresh.
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("pebble runs"),
        );
        wait_for_port(listen, "pebble");
        wait_for_port(management, "pebble's management interface");
        Pebble {
            _dns: dns,
            dns_management,
            server: Some(server),
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management,
            api_root,
        }
    }

    /// Makes `host` resolve to `ip` for Pebble's validation.
    fn add_a(&self, host: &str, ip: &str) {
        let body = serde_json::json!({ "host": format!("{host}."), "addresses": [ip] }).to_string();
        let mut stream = TcpStream::connect(("127.0.0.1", self.dns_management)).unwrap();
        write!(
            stream,
            "POST /add-a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    fn stop_server(&mut self) {
        self.server = None;
    }

    /// GET over HTTPS from Pebble's management interface.
    fn management_get(&self, path: &str) -> String {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&self.api_root).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = ServerName::try_from("127.0.0.1").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let socket = TcpStream::connect(("127.0.0.1", self.management)).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, socket);
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = Vec::new();
        // Pebble closes without close_notify at times; what was read counts.
        let _ = tls.read_to_end(&mut response);
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_owned()
    }

    fn acme_config(&self) -> AcmeConfig {
        let mut config = AcmeConfig::new(self.directory.clone());
        config.email = Some("ops@gantry.test".to_owned());
        config.ca_root = Some(self.api_root.clone());
        config
    }
}

fn pebble_installed() -> bool {
    let found = |binary| {
        Command::new("sh")
            .args(["-c", &format!("command -v {binary}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    found("pebble") && found("pebble-challtestsrv")
}

/// Starts the proxy on `listener` with ACME on, its events going to a channel.
fn start_proxy(
    listener: TcpListener,
    dir: tempfile::TempDir,
    acme: AcmeConfig,
) -> (TestProxy, mpsc::Receiver<Seen>) {
    start_proxy_with(listener, dir, Some(acme), false)
}

/// `start_proxy`, with ACME on or off, and an HTTPS listener on a free port
/// when `https` is set.
fn start_proxy_with(
    listener: TcpListener,
    dir: tempfile::TempDir,
    acme: Option<AcmeConfig>,
    https: bool,
) -> (TestProxy, mpsc::Receiver<Seen>) {
    let (events, seen) = mpsc::channel();
    let proxy = TestProxy::start_on(listener, dir, move |config| {
        if https {
            config.https = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        }
        config.acme = acme;
        let events = std::sync::Mutex::new(events);
        config.on_acme_event = Some(Arc::new(move |event: &AcmeEvent<'_>| {
            let seen = match event {
                AcmeEvent::Loaded { name, .. } => Seen::Loaded((*name).to_owned()),
                AcmeEvent::Issued { name, renewal, .. } => Seen::Issued {
                    name: (*name).to_owned(),
                    renewal: *renewal,
                },
                AcmeEvent::Failed { name, error, .. } => Seen::Failed {
                    name: (*name).to_owned(),
                    code: error.code().to_owned(),
                    message: error.chain(),
                },
                AcmeEvent::Settled { names, held } => Seen::Settled {
                    names: *names,
                    held: *held,
                },
            };
            let _ = events.lock().unwrap().send(seen);
        }));
    });
    (proxy, seen)
}

/// Everything reported up to and including the first `Settled` that `done`
/// accepts.
fn until_settled(seen: &mpsc::Receiver<Seen>, done: impl Fn(&Seen) -> bool) -> Vec<Seen> {
    let deadline = Instant::now() + ORDER_PATIENCE;
    let mut events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = seen
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the ACME manager did not settle; saw {events:?}"));
        let finished = matches!(event, Seen::Settled { .. }) && done(&event);
        events.push(event);
        if finished {
            return events;
        }
    }
}

fn acme_table() -> RouteTable {
    RouteTable {
        routes: vec![Route::new("shop", vec![]).hosts([NAME]).tls(Tls::Acme)],
    }
}

fn cert_files(state: &Path) -> (PathBuf, PathBuf) {
    let dir = state.join("acme/certs").join(NAME);
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Checks the stored chain with rustls's WebPKI verifier, as a browser
/// trusting Pebble's root would, for `NAME`.
fn assert_chains_to(chain_pem: &str, root_pem: &str) {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(chain.len() >= 2, "leaf and intermediate expected");
    let mut roots = rustls::RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(root.unwrap()).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(NAME).unwrap(),
            &[],
            UnixTime::now(),
        )
        .expect("the certificate chains to Pebble's root for the name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_tls_acme_gets_a_certificate_from_pebble_kept_reused_and_renewed() {
    if !pebble_installed() {
        eprintln!("skipped: pebble is not installed (apt-get install pebble)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let http: SocketAddr = listener.local_addr().unwrap();
    let mut pebble = Pebble::start(dir.path(), http.port());
    let state = dir.path().join("state");

    // 1. A table that wants a certificate: ordered, challenge answered by
    //    the proxy, issued.
    let (proxy, seen) = start_proxy(listener, dir, pebble.acme_config());
    let first = until_settled(&seen, |_| true);
    assert_eq!(first, [Seen::Settled { names: 0, held: 0 }]);
    proxy.put_routes(&acme_table()).await;
    let events = until_settled(&seen, |s| *s == Seen::Settled { names: 1, held: 1 });
    assert!(
        events.contains(&Seen::Issued {
            name: NAME.to_owned(),
            renewal: false
        }),
        "{events:?}"
    );

    let (cert, key) = cert_files(&state);
    let chain_pem = std::fs::read_to_string(&cert).unwrap();
    let root = pebble.management_get("/roots/0");
    assert_chains_to(&chain_pem, &root);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key.pem is private");
    let account_file = state.join("acme/account.json");
    let mode = std::fs::metadata(&account_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "account.json holds the account key");
    let account = std::fs::read(&account_file).unwrap();

    // A token the proxy does not hold is a 404 from the proxy itself, never
    // routed (the route has no upstream: a routed request would be a 503).
    let answer = get(&client(), &proxy, NAME, "/.well-known/acme-challenge/nope").await;
    assert_eq!(answer.status, 404);
    assert!(
        answer.text.contains("no such ACME challenge"),
        "{}",
        answer.text
    );

    // 2. A restart loads the stored certificate and orders nothing.
    let dir = proxy.stop();
    let listener = TcpListener::bind(http).unwrap();
    let (proxy, seen) = start_proxy(listener, dir, pebble.acme_config());
    let events = until_settled(&seen, |_| true);
    assert_eq!(
        events,
        [
            Seen::Loaded(NAME.to_owned()),
            Seen::Settled { names: 1, held: 1 }
        ]
    );
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), chain_pem);
    assert_eq!(std::fs::read(&account_file).unwrap(), account);

    // 3. When the stored certificate is due, it is renewed on the same account.
    let dir = proxy.stop();
    let listener = TcpListener::bind(http).unwrap();
    let mut due = pebble.acme_config();
    due.renew_margin = Some(Duration::from_secs(100 * 365 * 24 * 3600));
    let (proxy, seen) = start_proxy(listener, dir, due.clone());
    let events = until_settled(&seen, |_| true);
    assert_eq!(
        events,
        [
            Seen::Loaded(NAME.to_owned()),
            Seen::Issued {
                name: NAME.to_owned(),
                renewal: true
            },
            Seen::Settled { names: 1, held: 1 }
        ]
    );
    let renewed = std::fs::read_to_string(&cert).unwrap();
    assert_ne!(renewed, chain_pem, "a new certificate was stored");
    assert_chains_to(&renewed, &root);
    assert_eq!(std::fs::read(&account_file).unwrap(), account);

    // 4. A renewal that fails (the CA is gone) keeps the certificate held.
    let dir = proxy.stop();
    pebble.stop_server();
    let listener = TcpListener::bind(http).unwrap();
    let (proxy, seen) = start_proxy(listener, dir, due);
    let events = until_settled(&seen, |_| true);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0], Seen::Loaded(NAME.to_owned()));
    let Seen::Failed {
        name,
        code,
        message,
    } = &events[1]
    else {
        panic!("a failed renewal expected: {events:?}");
    };
    assert_eq!((name.as_str(), code.as_str()), (NAME, "acme.unreachable"));
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(!message.contains("PRIVATE KEY"), "{message}");
    assert_eq!(events[2], Seen::Settled { names: 1, held: 1 });
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), renewed);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_the_ca_cannot_validate_fails_with_its_problem_and_the_other_name_is_issued() {
    if !pebble_installed() {
        eprintln!("skipped: pebble is not installed (apt-get install pebble)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let http = listener.local_addr().unwrap();
    let pebble = Pebble::start(dir.path(), http.port());
    // Nothing listens there: Pebble's connection is refused.
    let broken = "broken.gantry.test";
    pebble.add_a(broken, "127.0.0.2");
    let state = dir.path().join("state");
    let (proxy, seen) = start_proxy(listener, dir, pebble.acme_config());
    until_settled(&seen, |_| true);
    let table = RouteTable {
        routes: vec![
            Route::new("shop", vec![])
                .hosts([NAME, broken])
                .tls(Tls::Acme),
        ],
    };
    proxy.put_routes(&table).await;
    let events = until_settled(&seen, |s| matches!(s, Seen::Settled { names: 2, .. }));
    let failure = events
        .iter()
        .find_map(|e| match e {
            Seen::Failed {
                name,
                code,
                message,
            } if name == broken => Some((code.clone(), message.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a failure for {broken} expected: {events:?}"));
    assert_eq!(failure.0, "acme.challenge_failed", "{}", failure.1);
    assert!(failure.1.contains(broken), "{}", failure.1);
    assert!(
        failure.1.contains("urn:ietf:params:acme:error:"),
        "the CA's problem type: {}",
        failure.1
    );
    assert!(
        events.contains(&Seen::Issued {
            name: NAME.to_owned(),
            renewal: false
        }),
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&Seen::Settled { names: 2, held: 1 }));
    assert!(!state.join("acme/certs").join(broken).exists());
    assert!(cert_files(&state).0.exists());
    drop(proxy);
}

/// The leaf of a PEM chain, as a TLS client sees it.
fn leaf_of(chain_pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .expect("a certificate in the chain")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acme_route_is_served_over_https_with_pebbles_certificate_and_plain_http_redirected() {
    if !pebble_installed() {
        eprintln!("skipped: pebble is not installed (apt-get install pebble)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let http: SocketAddr = listener.local_addr().unwrap();
    let pebble = Pebble::start(dir.path(), http.port());
    let state = dir.path().join("state");
    let shop = echo_upstream("shop").await;
    let table = RouteTable {
        routes: vec![
            Route::new("shop", vec![shop.addr])
                .hosts([NAME])
                .tls(Tls::Acme)
                .redirect_https(true),
        ],
    };
    // Only the root Pebble issues under, from its management API: the
    // client trusts nothing else.
    let pebble_root: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pebble.management_get("/roots/0").as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();

    // 1. Without --acme-directory no manager runs: the route has no
    //    certificate, so plain HTTP is served as it is (no redirect to a
    //    handshake that would fail) and an HTTPS handshake for the name fails.
    let (proxy, _) = start_proxy_with(listener, dir, None, true);
    proxy.put_routes(&table).await;
    let plain = get(&client(), &proxy, NAME, "/cart?id=7").await;
    assert_eq!(plain.status, 200, "{}", plain.text);
    assert_eq!(plain.upstream(), "shop");
    let https = proxy.https.unwrap();
    let refused = https_get(https, &pebble_root, NAME, &[], "/").await;
    assert!(refused.is_err(), "no certificate is held yet");
    assert!(!state.join("acme").exists(), "no ACME without a directory");

    // 2. With ACME on, the certificate Pebble issues (its challenge answered
    //    on the proxy's HTTP port) is served over HTTPS at once.
    let dir = proxy.stop();
    let listener = TcpListener::bind(http).unwrap();
    let (proxy, seen) = start_proxy_with(listener, dir, Some(pebble.acme_config()), true);
    let events = until_settled(&seen, |s| *s == Seen::Settled { names: 1, held: 1 });
    assert!(
        events.contains(&Seen::Issued {
            name: NAME.to_owned(),
            renewal: false
        }),
        "{events:?}"
    );
    let https = proxy.https.unwrap();
    let served = https_get(
        https,
        &pebble_root,
        NAME,
        &[b"h2", b"http/1.1"],
        "/cart?id=7",
    )
    .await
    .expect("the handshake succeeds with Pebble's root alone");
    assert_eq!(served.answer.status, 200, "{}", served.answer.text);
    assert_eq!(served.answer.upstream(), "shop");
    assert_eq!(served.answer.json()["path"], "/cart?id=7");
    let (cert, _) = cert_files(&state);
    let issued = std::fs::read_to_string(&cert).unwrap();
    assert_eq!(
        served.leaf,
        leaf_of(&issued),
        "the stored certificate is served"
    );

    // Plain HTTP to the route now gets the 308 to the HTTPS port; ACME's
    // challenge path is never redirected.
    let plain = get(&client(), &proxy, NAME, "/cart?id=7").await;
    assert_eq!(plain.status, 308, "{}", plain.text);
    assert_eq!(
        plain.headers["location"],
        format!("https://{NAME}:{}/cart?id=7", https.port()).as_str()
    );
    let challenge = get(&client(), &proxy, NAME, "/.well-known/acme-challenge/nope").await;
    assert_eq!(challenge.status, 404);

    // 3. A renewal replaces the certificate served: this proxy puts the
    //    stored one in its store at start, renews it (due at once with this
    //    margin), and its handshakes then get the new one.
    let dir = proxy.stop();
    let listener = TcpListener::bind(http).unwrap();
    let mut due = pebble.acme_config();
    due.renew_margin = Some(Duration::from_secs(100 * 365 * 24 * 3600));
    let (proxy, seen) = start_proxy_with(listener, dir, Some(due), true);
    let events = until_settled(&seen, |_| true);
    assert_eq!(
        events,
        [
            Seen::Loaded(NAME.to_owned()),
            Seen::Issued {
                name: NAME.to_owned(),
                renewal: true
            },
            Seen::Settled { names: 1, held: 1 }
        ]
    );
    let renewed = std::fs::read_to_string(&cert).unwrap();
    assert_ne!(renewed, issued);
    let served = https_get(proxy.https.unwrap(), &pebble_root, NAME, &[], "/")
        .await
        .expect("the renewed certificate chains to Pebble's root");
    assert_eq!(served.leaf, leaf_of(&renewed), "the renewal is served");
    assert_eq!(served.answer.status, 200);
    drop(proxy);
}
