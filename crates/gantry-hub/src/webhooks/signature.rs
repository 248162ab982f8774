//! The two signatures webhooks carry. In: a forge's `X-Hub-Signature-256`
//! (`sha256=<hex HMAC-SHA256 of the raw body>`), which GitHub, Gitea and
//! Forgejo all send, checked in constant time. Out: the Standard Webhooks
//! signature, `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under a
//! `whsec_<base64>` secret. Pure functions: no clock, no I/O.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const WHSEC: &str = "whsec_";

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 accepts every key length"),
    }
}

/// Whether `header` (`sha256=<hex>`, or bare hex as Gitea's
/// `X-Gitea-Signature`) is the HMAC of `body` under `secret`. The
/// comparison takes the same time wherever the bytes differ.
pub fn forge_signature_matches(secret: &str, body: &[u8], header: &str) -> bool {
    let hex = header.trim();
    let hex = hex.strip_prefix("sha256=").unwrap_or(hex);
    let Some(given) = decode_hex(hex) else {
        return false;
    };
    let mut mac = mac(secret.as_bytes());
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// `sha256=<hex>`, as a forge signs `body` (tests and replays use it).
pub fn forge_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = mac(secret.as_bytes());
    mac.update(body);
    format!(
        "sha256={}",
        gantry_core::artifact::hex(&mac.finalize().into_bytes())
    )
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A new outbound secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    format!("{WHSEC}{}", STANDARD.encode(rand::random::<[u8; 32]>()))
}

/// The key bytes of a `whsec_` secret.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(secret.strip_prefix(WHSEC).unwrap_or(secret))
        .ok()
        .filter(|k| (24..=64).contains(&k.len()))
}

/// The `webhook-signature` header of one message, per Standard Webhooks:
/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn standard_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = mac(key);
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Whether one of the space-separated signatures in `header` is the
/// message's (a receiver's check; the tests' receiver uses it).
pub fn standard_signature_matches(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    let Some(key) = secret_key(secret) else {
        return false;
    };
    let expected = standard_signature(&key, id, timestamp, body);
    header
        .split(' ')
        .any(|given| subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes()).into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_forge_signature_is_checked_against_the_body() {
        // The example of GitHub's "Validating webhook deliveries" page.
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(forge_signature_matches(
            "It's a Secret to Everybody",
            b"Hello, World!",
            header
        ));
        assert_eq!(
            forge_signature("It's a Secret to Everybody", b"Hello, World!"),
            header
        );
        assert!(!forge_signature_matches(
            "It's a Secret to Everybody",
            b"Hello, World?",
            header
        ));
        assert!(!forge_signature_matches(
            "another secret",
            b"Hello, World!",
            header
        ));
        assert!(!forge_signature_matches("s", b"x", "sha256=zz"));
        // Gitea's X-Gitea-Signature: the hex alone.
        assert!(forge_signature_matches(
            "It's a Secret to Everybody",
            b"Hello, World!",
            header.trim_start_matches("sha256=")
        ));
    }

    #[test]
    fn a_standard_signature_matches_the_specifications_example() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let key = secret_key(secret).unwrap();
        assert_eq!(
            standard_signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(standard_signature_matches(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
            "v1,bm9ldHUjKzFob2VudXRob2VodWUzMjRvdWVvdW9ldQo= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
        assert!(secret_key(&new_secret()).is_some());
    }
}
