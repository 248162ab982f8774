//! HTTPS on a local deploy: the agent's proxy serves
//! `https://<service>.<project>.localhost` with a leaf from the local CA that
//! `gantry trust` points at, and plain HTTP keeps working beside it; a
//! `gantry proxy restart` keeps HTTPS on the same port.

mod agent_support;

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use agent_support::{deploy, hello, service};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

const HOST: &str = "web.hello.localhost";

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// One GET over TLS, trusting only `ca`: the raw HTTP/1.1 answer.
fn https_get(port: u16, ca: CertificateDer<'static>) -> std::io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(std::io::Error::other)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(HOST).map_err(std::io::Error::other)?;
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    write!(
        tls,
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    match tls.read_to_string(&mut answer) {
        Ok(_) => Ok(answer),
        // Some servers close without close_notify after `Connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => Ok(answer),
        Err(e) => Err(e),
    }
}

#[test]
fn a_local_deploy_is_served_over_https_with_the_ca_gantry_trust_names() {
    let (http, https) = (free_port(), free_port());
    let p = hello("hello", "1")
        .env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{http}"))
        .env("GANTRY_PROXY_HTTPS", &format!("127.0.0.1:{https}"));
    let report = deploy(&p);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");
    let url = format!("https://{HOST}:{https}/");
    assert!(
        service(&report, "web")["urls"]
            .as_array()
            .is_some_and(|u| u.contains(&url.clone().into())),
        "the deploy report names the HTTPS URL: {report:#}"
    );

    let trust = p.gantry(&["trust", "--output", "json"]);
    trust.expect_code(0);
    let ca_path = trust.json()["path"].as_str().expect("a path").to_owned();
    let ca = CertificateDer::from_pem_file(&ca_path).expect("the CA certificate");

    let answer = https_get(https, ca.clone()).expect("the TLS handshake succeeds");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("hello from version 1 "), "{answer}");

    // `gantry proxy restart` hands the HTTPS listener to the new process too.
    let restarted = p.gantry(&["proxy", "restart", "--output", "json"]);
    restarted.expect_code(0);
    let restarted = restarted.json();
    assert_ne!(restarted["pid"], restarted["previous_pid"], "{restarted:#}");
    let answer = https_get(https, ca).expect("HTTPS answers after the restart");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("hello from version 1 "), "{answer}");

    let (code, body) =
        gantry_testkit::http_get_host(http, HOST, "/").expect("plain HTTP answers too");
    assert_eq!(code, 200, "a local route is not redirected: {body}");
}
