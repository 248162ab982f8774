//! The HTTP-01 answers the proxy gives while an order is open: token → key
//! authorization. The ACME manager adds a token just before it tells the CA
//! the challenge is ready and removes it once the order is settled; the
//! plain-HTTP request path reads it for `/.well-known/acme-challenge/`.
//!
//! Reads are rare (only that path) and writes rarer (a few per order), so a
//! plain `RwLock` is enough: nothing waits on the network while holding it.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};

use crate::body::ProxyBody;

/// Where the CA asks for a token (RFC 8555, section 8.3).
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The open HTTP-01 challenges; cheap to clone, shared by the manager and
/// every worker.
#[derive(Clone, Debug, Default)]
pub struct Challenges {
    tokens: Arc<RwLock<HashMap<String, String>>>,
}

impl Challenges {
    pub fn new() -> Challenges {
        Challenges::default()
    }

    /// Answers `token` with `key_authorization` until `remove`.
    pub fn insert(&self, token: impl Into<String>, key_authorization: impl Into<String>) {
        self.tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.into(), key_authorization.into());
    }

    pub fn remove(&self, token: &str) {
        self.tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }

    /// The key authorization for `token`, if its challenge is open.
    pub fn get(&self, token: &str) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    /// How many challenges are open.
    pub fn len(&self) -> usize {
        self.tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The proxy's answer when `path` is under `CHALLENGE_PATH`, before any
    /// routing: the key authorization as text, or 404 for a token it does
    /// not hold (a request for another server's token never reaches an
    /// upstream either). `None`: not a challenge request.
    pub(crate) fn answer(&self, method: &Method, path: &str) -> Option<Response<ProxyBody>> {
        let token = path.strip_prefix(CHALLENGE_PATH)?;
        let found = (*method == Method::GET || *method == Method::HEAD)
            .then(|| self.get(token))
            .flatten();
        let (status, text) = match found {
            Some(key_authorization) => (StatusCode::OK, key_authorization),
            None => (StatusCode::NOT_FOUND, "no such ACME challenge\n".to_owned()),
        };
        let mut response = Response::new(ProxyBody::text(Bytes::from(text)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Some(response)
    }
}

/// Removes its tokens from `Challenges` when dropped, so an order that
/// fails or is cancelled half-way leaves nothing answering.
pub(crate) struct OpenChallenges {
    challenges: Challenges,
    tokens: Vec<String>,
}

impl OpenChallenges {
    pub(crate) fn new(challenges: Challenges) -> OpenChallenges {
        OpenChallenges {
            challenges,
            tokens: Vec::new(),
        }
    }

    pub(crate) fn open(&mut self, token: String, key_authorization: String) {
        self.challenges.insert(token.clone(), key_authorization);
        self.tokens.push(token);
    }
}

impl Drop for OpenChallenges {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.challenges.remove(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_challenge_paths_are_answered() {
        let challenges = Challenges::new();
        challenges.insert("tok", "tok.thumb");
        assert!(challenges.answer(&Method::GET, "/index.html").is_none());
        let answer = challenges
            .answer(&Method::GET, "/.well-known/acme-challenge/tok")
            .expect("answered");
        assert_eq!(answer.status(), StatusCode::OK);
        let unknown = challenges
            .answer(&Method::GET, "/.well-known/acme-challenge/other")
            .expect("answered");
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        let posted = challenges
            .answer(&Method::POST, "/.well-known/acme-challenge/tok")
            .expect("answered");
        assert_eq!(posted.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn tokens_go_when_the_order_ends() {
        let challenges = Challenges::new();
        {
            let mut open = OpenChallenges::new(challenges.clone());
            open.open("a".to_owned(), "a.k".to_owned());
            assert_eq!(challenges.get("a").as_deref(), Some("a.k"));
        }
        assert!(challenges.is_empty());
    }
}
