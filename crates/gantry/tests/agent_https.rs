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

/// One GET over TLS to `HOST`, trusting only `ca`: the raw HTTP/1.1 answer.
fn https_get(port: u16, ca: CertificateDer<'static>) -> std::io::Result<String> {
    https_get_host(port, ca, HOST)
}

/// One GET over TLS to `host` (SNI and Host header), trusting only `ca`.
fn https_get_host(port: u16, ca: CertificateDer<'static>, host: &str) -> std::io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(std::io::Error::other)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    write!(
        tls,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
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

/// A declared route with `tls = { cert, key }` in gantry.toml is served with
/// exactly that certificate (a client trusting only it connects).
#[test]
fn a_route_with_the_users_own_certificate_is_served_with_it() {
    const NAME: &str = "shop.example.test";
    let issuer_key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::CertifiedIssuer::self_signed(params, issuer_key).expect("an issuer");
    let leaf_key = rcgen::KeyPair::generate().expect("a key");
    let leaf = rcgen::CertificateParams::new(vec![NAME.to_owned()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("a leaf");

    let (http, https) = (free_port(), free_port());
    let p = hello("usercert", "1")
        .env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{http}"))
        .env("GANTRY_PROXY_HTTPS", &format!("127.0.0.1:{https}"))
        .file("certs/fullchain.pem", &leaf.pem())
        .file("certs/privkey.pem", &leaf_key.serialize_pem());
    let certs = p.path().join("certs");
    let toml = std::fs::read_to_string(p.path().join("gantry.toml")).expect("gantry.toml");
    let toml = toml.replacen(
        "port = \"http\"\n",
        &format!(
            "port = \"http\"\nroutes = [\"{NAME}\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            certs.join("fullchain.pem").display(),
            certs.join("privkey.pem").display()
        ),
        1,
    );
    std::fs::write(p.path().join("gantry.toml"), toml).expect("write gantry.toml");
    let report = deploy(&p);
    assert_eq!(report["release"]["outcome"], "succeeded", "{report:#}");

    let ca = CertificateDer::from(issuer.der().to_vec());
    let answer = https_get_host(https, ca, NAME).expect("the TLS handshake succeeds");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("hello from version 1 "), "{answer}");
}
