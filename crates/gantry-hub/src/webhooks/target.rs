//! Where an outbound webhook may go. A target that resolves to a loopback,
//! private, link-local or otherwise internal address is refused (unless
//! the operator allows them), when a subscription is made and again at
//! every delivery: the delivery connects to the very address it checked,
//! so a name that resolves somewhere else the second time (DNS rebinding)
//! cannot reach inside.

use std::net::{IpAddr, SocketAddr};

use hyper::Uri;
use tokio::io::{AsyncRead, AsyncWrite};

/// A parsed target URL.
#[derive(Clone, Debug)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// The path and query, as sent.
    pub path: String,
}

/// Why a target is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("`{0}` is not an http:// or https:// URL with a host")]
    Malformed(String),
    #[error("{host} does not resolve: {error}")]
    Unresolved { host: String, error: String },
    #[error("{host} resolves to {address}, an internal address")]
    Internal { host: String, address: IpAddr },
}

pub fn parse(url: &str) -> Result<Target, Refused> {
    let malformed = || Refused::Malformed(url.chars().take(200).collect());
    let uri: Uri = url.parse().map_err(|_| malformed())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(malformed()),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(malformed)?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(malformed());
    }
    Ok(Target {
        https,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
        path: uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
    })
}

/// Whether an address is one anybody on the internet could reach, as
/// opposed to this machine, its networks, or nowhere.
pub fn is_public(address: IpAddr) -> bool {
    match address.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                || (a == 100 && (64..128).contains(&b))
                // Benchmarking, 198.18.0.0/15; reserved, 240.0.0.0/4.
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // Unique local fc00::/7, link-local fe80::/10, documentation.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                // NAT64 64:ff9b::/96 can reach an IPv4 inside.
                || first == 0x0064)
        }
    }
}

/// The addresses the target resolves to, all checked: refused if any is
/// internal and `allow_internal` is not set.
pub async fn resolve(target: &Target, allow_internal: bool) -> Result<Vec<SocketAddr>, Refused> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| Refused::Unresolved {
            host: target.host.clone(),
            error: e.to_string(),
        })?
        .take(16)
        .collect();
    if addresses.is_empty() {
        return Err(Refused::Unresolved {
            host: target.host.clone(),
            error: "no addresses".to_owned(),
        });
    }
    if !allow_internal && let Some(bad) = addresses.iter().find(|a| !is_public(a.ip())) {
        return Err(Refused::Internal {
            host: target.host.clone(),
            address: bad.ip(),
        });
    }
    Ok(addresses)
}

/// A connection to a target, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects to the target at an address [`resolve`] checked (TLS for
/// `https`, verified against the system's roots).
pub async fn connect(target: &Target, allow_internal: bool) -> Result<Box<dyn Stream>, String> {
    let addresses = resolve(target, allow_internal)
        .await
        .map_err(|e| e.to_string())?;
    let mut last = String::new();
    let mut connected = None;
    for address in addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(e) => last = format!("cannot connect to {address}: {e}"),
        }
    }
    let tcp = connected.ok_or(last)?;
    Ok(if target.https {
        Box::new(tls(tcp, &target.host).await?)
    } else {
        Box::new(tcp)
    })
}

async fn tls(
    tcp: tokio::net::TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(BuilderVerifierExt::with_platform_verifier)
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("`{host}` is not a TLS server name: {e}"))?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public(text.parse().unwrap_or(IpAddr::from([127, 0, 0, 1])))
    }

    #[test]
    fn internal_addresses_are_not_public() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!public(internal), "{internal} is internal");
        }
        for outside in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "1.1.1.1",
        ] {
            assert!(public(outside), "{outside} is public");
        }
    }

    #[test]
    fn targets_parse_with_their_default_ports() {
        let t = parse("https://hooks.example.com/services/T0/B0?x=1").unwrap();
        assert!(t.https);
        assert_eq!((t.host.as_str(), t.port), ("hooks.example.com", 443));
        assert_eq!(t.path, "/services/T0/B0?x=1");
        assert_eq!(parse("http://[::1]:8080").unwrap().host, "::1");
        assert!(parse("ftp://example.com").is_err());
        assert!(parse("https://user:pass@example.com/").is_err());
        assert!(parse("not a url").is_err());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_allowed() {
        let target = parse("http://localhost:9/hook").unwrap();
        assert!(matches!(
            resolve(&target, false).await,
            Err(Refused::Internal { .. })
        ));
        assert!(resolve(&target, true).await.is_ok());
    }
}
