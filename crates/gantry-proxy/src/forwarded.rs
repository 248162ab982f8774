//! The headers that tell an upstream who the client is and what it asked
//! for: `X-Forwarded-For`, `-Proto`, `-Host`, `-Port`, `X-Real-IP` and
//! `Forwarded`. The proxy is the edge: what a client sends in them is
//! replaced by what the proxy saw, unless the client is a trusted proxy in
//! front of this one (`--trusted-proxy`), whose values are kept and whose
//! address is appended to `X-Forwarded-For`.

use std::net::IpAddr;
use std::str::FromStr;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(crate) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// An address or a network (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`);
/// an IPv4-mapped IPv6 address stands for its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedProxy(IpNet);

impl TrustedProxy {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for TrustedProxy {
    type Err = String;

    fn from_str(text: &str) -> Result<TrustedProxy, String> {
        let bad = || format!("`{text}` is not an IP address or a network like 10.0.0.0/8");
        let (address, bits) = match text.split_once('/') {
            Some((address, bits)) => (address, Some(bits)),
            None => (text, None),
        };
        let address = IpAddr::from_str(address).map_err(|_| bad())?.to_canonical();
        let bits = match bits {
            Some(bits) => bits.parse::<u8>().map_err(|_| bad())?,
            None => IpNet::from(address).max_prefix_len(),
        };
        IpNet::new(address, bits)
            .map(TrustedProxy)
            .map_err(|_| bad())
    }
}

impl std::fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether `ip` is one of the trusted proxies.
pub(crate) fn is_trusted(trusted: &[TrustedProxy], ip: IpAddr) -> bool {
    trusted.iter().any(|t| t.contains(ip))
}

/// What the proxy saw of a request, for the forwarding headers.
pub(crate) struct Seen<'a> {
    pub(crate) client: &'a HeaderValue,
    pub(crate) tls: bool,
    pub(crate) host: Option<&'a HeaderValue>,
    pub(crate) port: u16,
    /// The client is a trusted proxy: its forwarding headers are kept.
    pub(crate) trusted: bool,
}

/// Sets the forwarding headers on a request going upstream.
pub(crate) fn set(headers: &mut HeaderMap, seen: &Seen<'_>) {
    let proto = HeaderValue::from_static(if seen.tls { "https" } else { "http" });
    let port = HeaderValue::from(seen.port);
    if seen.trusted && headers.contains_key(X_FORWARDED_FOR) {
        let mut chain: Vec<u8> = Vec::new();
        for prior in headers.get_all(X_FORWARDED_FOR) {
            chain.extend_from_slice(prior.as_bytes());
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(seen.client.as_bytes());
        let chain = HeaderValue::from_bytes(&chain).unwrap_or_else(|_| seen.client.clone());
        headers.insert(X_FORWARDED_FOR, chain);
    } else {
        headers.insert(X_FORWARDED_FOR, seen.client.clone());
    }
    if !seen.trusted {
        for name in [
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            X_FORWARDED_PORT,
            X_REAL_IP,
            FORWARDED,
        ] {
            headers.remove(name);
        }
    }
    // A trusted proxy's values stand; what it left out, this proxy says.
    let mut keep_or_set = |name: HeaderName, value: HeaderValue| {
        headers.entry(name).or_insert(value);
    };
    keep_or_set(X_FORWARDED_PROTO, proto.clone());
    keep_or_set(X_FORWARDED_PORT, port);
    keep_or_set(X_REAL_IP, seen.client.clone());
    if let Some(host) = seen.host {
        keep_or_set(X_FORWARDED_HOST, host.clone());
    }
    if let Some(forwarded) = forwarded_element(seen, &proto) {
        if seen.trusted && headers.contains_key(FORWARDED) {
            let mut list: Vec<u8> = Vec::new();
            for prior in headers.get_all(FORWARDED) {
                list.extend_from_slice(prior.as_bytes());
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(forwarded.as_bytes());
            if let Ok(list) = HeaderValue::from_bytes(&list) {
                headers.insert(FORWARDED, list);
            }
        } else {
            headers.insert(FORWARDED, forwarded);
        }
    }
}

/// This hop's `Forwarded` element (RFC 7239): `for="…";proto=…;host="…"`.
fn forwarded_element(seen: &Seen<'_>, proto: &HeaderValue) -> Option<HeaderValue> {
    let client = seen.client.to_str().ok()?;
    let client = if client.contains(':') {
        format!("\"[{client}]\"")
    } else {
        client.to_owned()
    };
    let mut element = format!("for={client};proto={}", proto.to_str().ok()?);
    if let Some(host) = seen.host.and_then(|h| h.to_str().ok()) {
        element.push_str(&format!(";host=\"{}\"", host.replace(['"', '\\'], "")));
    }
    HeaderValue::try_from(element).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(client: &'a HeaderValue, host: &'a HeaderValue, trusted: bool) -> Seen<'a> {
        Seen {
            client,
            tls: false,
            host: Some(host),
            port: 80,
            trusted,
        }
    }

    #[test]
    fn networks_contain_their_addresses() {
        let net: TrustedProxy = "10.1.0.0/16".parse().expect("parse");
        assert!(net.contains(IpAddr::from([10, 1, 200, 3])));
        assert!(!net.contains(IpAddr::from([10, 2, 0, 1])));
        let one: TrustedProxy = "::ffff:192.0.2.7".parse().expect("parse");
        assert!(one.contains(IpAddr::from([192, 0, 2, 7])));
        let v6: TrustedProxy = "2001:db8::/33".parse().expect("parse");
        assert!(v6.contains("2001:db8:7fff::1".parse().expect("ip")));
        assert!(!v6.contains("2001:db8:8000::1".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<TrustedProxy>().is_err());
        assert!("example.com".parse::<TrustedProxy>().is_err());
    }

    #[test]
    fn an_untrusted_client_gets_its_forwarding_headers_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        headers.insert(X_REAL_IP, HeaderValue::from_static("1.1.1.1"));
        headers.insert(FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        headers.insert(X_FORWARDED_PORT, HeaderValue::from_static("1"));
        let (client, host) = (
            HeaderValue::from_static("10.0.0.7"),
            HeaderValue::from_static("a.test"),
        );
        set(&mut headers, &seen(&client, &host, false));
        assert_eq!(headers[X_FORWARDED_FOR], "10.0.0.7");
        assert_eq!(headers[X_REAL_IP], "10.0.0.7");
        assert_eq!(headers[X_FORWARDED_PORT], "80");
        assert_eq!(
            headers[FORWARDED],
            "for=10.0.0.7;proto=http;host=\"a.test\""
        );
    }

    #[test]
    fn a_trusted_proxy_keeps_its_values_and_the_chain_grows() {
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let (client, host) = (
            HeaderValue::from_static("10.0.0.7"),
            HeaderValue::from_static("a.test"),
        );
        set(&mut headers, &seen(&client, &host, true));
        assert_eq!(headers[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.7");
        assert_eq!(headers[X_FORWARDED_PROTO], "https");
    }
}
