//! Automatic certificates over ACME (RFC 8555), HTTP-01 only: the proxy
//! answers the CA's challenge itself on its plain-HTTP listener.
//!
//! - `Challenges`: token → key authorization, read by the request path
//!   before routing (`/.well-known/acme-challenge/<token>`).
//! - `Acme`: one account on one directory (created once, kept in
//!   `acme/account.json`) and `issue(names)`: order, answer, finalize with a
//!   key made here, store under `acme/certs/<name>/`.
//! - `manager`: the thread that keeps a certificate for every route whose
//!   `tls` is `acme`: loads the stored ones at start, orders the missing,
//!   renews the due, retries failures with backoff, and reports each
//!   certificate through a callback (where the TLS listener picks it up).
//!
//! Must never: put a private key in a log line, an error or a `Debug`
//! string; drop a working certificate because a renewal failed; hold a lock
//! across a network call.

mod challenges;
mod client;
mod files;
mod manager;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use gantry_file::FileError;

pub use challenges::{CHALLENGE_PATH, Challenges};
pub use client::Acme;
pub use manager::{AcmeEvent, AcmeManager, OnIssued, acme_names, due, renew_at};

/// How the proxy gets its certificates: `gantry proxy --acme-directory URL`.
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    /// The CA's directory URL, like `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// A contact for the account (`--acme-email`); the CA may write about expiry.
    pub email: Option<String>,
    /// A PEM root to trust for the CA's own HTTPS (`--acme-ca-root`), for a CA
    /// on a private PKI such as Pebble. When set, it is the only root trusted
    /// for the ACME API; the system's roots are used otherwise.
    pub ca_root: Option<PathBuf>,
    /// Renew when less than this is left. `None`: a third of the
    /// certificate's lifetime, at most 30 days (a 90-day certificate is
    /// renewed 30 days before it expires). Tests set it past a whole
    /// lifetime to make a stored certificate due.
    pub renew_margin: Option<Duration>,
    /// The first wait after a failed order; it doubles up to `retry_max`.
    pub retry_first: Duration,
    pub retry_max: Duration,
}

impl AcmeConfig {
    pub fn new(directory: impl Into<String>) -> AcmeConfig {
        AcmeConfig {
            directory: directory.into(),
            email: None,
            ca_root: None,
            renew_margin: None,
            retry_first: Duration::from_secs(30),
            retry_max: Duration::from_secs(6 * 3600),
        }
    }

    /// Checks what can be checked before any network call: the URL's form
    /// and the root file. The proxy refuses to start on these.
    pub fn validate(&self) -> Result<(), AcmeError> {
        let url = self.directory.trim();
        let https = url
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
        if !https || url.parse::<http::Uri>().is_err() {
            return Err(AcmeError::Directory {
                url: self.directory.clone(),
            });
        }
        if let Some(email) = &self.email
            && !valid_email(email)
        {
            return Err(AcmeError::Email {
                email: email.clone(),
            });
        }
        if let Some(path) = &self.ca_root {
            let text = std::fs::read(path).map_err(|e| AcmeError::CaRoot {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let has_cert = x509_parser::pem::Pem::iter_from_buffer(&text)
                .filter_map(Result::ok)
                .any(|pem| pem.label == "CERTIFICATE");
            if !has_cert {
                return Err(AcmeError::CaRoot {
                    path: path.clone(),
                    message: "it holds no PEM `CERTIFICATE` block".to_owned(),
                });
            }
        }
        Ok(())
    }
}

fn valid_email(email: &str) -> bool {
    match email.split_once('@') {
        Some((user, domain)) => {
            !user.is_empty()
                && domain.contains('.')
                && !email.contains(|c: char| c.is_whitespace() || c == ',' || c == '/')
        }
        None => false,
    }
}

/// A certificate the CA issued, with the key it was issued for.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The names the certificate covers (its DNS subject alternative names).
    pub names: Vec<String>,
    /// The chain as the CA sent it, leaf first, PEM.
    pub chain_pem: String,
    /// The leaf's private key, PKCS#8 PEM. Never printed: `Debug` hides it.
    pub key_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Issued {
    /// Reads the leaf's names and validity, and checks that it is the key's.
    pub fn from_pem(chain_pem: String, key_pem: String) -> Result<Issued, String> {
        let leaf = files::read_leaf(&chain_pem, &key_pem)?;
        Ok(Issued {
            names: leaf.names,
            chain_pem,
            key_pem,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        })
    }
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("names", &self.names)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &"(hidden)")
            .finish_non_exhaustive()
    }
}

/// The CA's own words about a failure: its problem type and detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Like `urn:ietf:params:acme:error:rejectedIdentifier`.
    pub kind: String,
    pub detail: String,
}

impl Problem {
    fn from_acme(problem: &instant_acme::Problem) -> Problem {
        let mut detail = problem.detail.clone().unwrap_or_default();
        for sub in &problem.subproblems {
            if let Some(sub_detail) = &sub.detail {
                detail.push_str("; ");
                detail.push_str(sub_detail);
            }
        }
        Problem {
            kind: problem
                .r#type
                .clone()
                .unwrap_or_else(|| "(no type)".to_owned()),
            detail,
        }
    }

    /// The type without its URN prefix: `rejectedIdentifier`.
    pub fn short_kind(&self) -> &str {
        self.kind
            .strip_prefix("urn:ietf:params:acme:error:")
            .unwrap_or(&self.kind)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// Why an account or a certificate could not be had. Messages name the CA's
/// problem, the names and the file, never a key.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME directory `{url}` is not an https:// URL")]
    Directory { url: String },
    #[error("`{email}` is not an email address")]
    Email { email: String },
    #[error("cannot use {} as the ACME server's root: {message}", path.display())]
    CaRoot { path: PathBuf, message: String },
    #[error("cannot reach the ACME server at {directory}: {message}")]
    Unreachable { directory: String, message: String },
    #[error("the ACME server refused to {action} for {names}: {problem}")]
    Refused {
        action: &'static str,
        names: String,
        problem: Problem,
    },
    #[error("the ACME server could not validate {name} over HTTP-01: {problem}")]
    Challenge { name: String, problem: Problem },
    #[error("the order for {names} did not complete: {message}")]
    Order { names: String, message: String },
    #[error("`{name}` cannot get a certificate over HTTP-01: {reason}")]
    Name { name: String, reason: &'static str },
    #[error("the saved ACME account in {} cannot be read: {message}", path.display())]
    Account { path: PathBuf, message: String },
    #[error("{} is not a usable certificate: {message}", path.display())]
    Certificate { path: PathBuf, message: String },
    #[error(transparent)]
    Io(#[from] FileError),
}

impl AcmeError {
    /// A stable code, in the style of `ProxyError::code`.
    pub fn code(&self) -> &'static str {
        match self {
            AcmeError::Directory { .. } => "acme.directory_invalid",
            AcmeError::Email { .. } => "acme.email_invalid",
            AcmeError::CaRoot { .. } => "acme.ca_root_invalid",
            AcmeError::Unreachable { .. } => "acme.unreachable",
            AcmeError::Refused { .. } => "acme.refused",
            AcmeError::Challenge { .. } => "acme.challenge_failed",
            AcmeError::Order { .. } => "acme.order_failed",
            AcmeError::Name { .. } => "acme.name_unsupported",
            AcmeError::Account { .. } => "acme.account_invalid",
            AcmeError::Certificate { .. } => "acme.certificate_invalid",
            AcmeError::Io(_) => "acme.state_io_failed",
        }
    }

    pub fn hint(&self) -> Option<String> {
        Some(match self {
            AcmeError::Directory { .. } => {
                "give --acme-directory the CA's directory URL, like https://acme-v02.api.letsencrypt.org/directory".to_owned()
            }
            AcmeError::Email { .. } => "give --acme-email an address like ops@example.com".to_owned(),
            AcmeError::CaRoot { .. } => {
                "give --acme-ca-root a PEM file with the root certificate of the ACME server's HTTPS".to_owned()
            }
            AcmeError::Unreachable { .. } => {
                "check the directory URL, the network, and --acme-ca-root if the CA uses a private root; the proxy retries".to_owned()
            }
            AcmeError::Refused { problem, .. } => match problem.short_kind() {
                "rejectedIdentifier" | "malformed" => {
                    "the CA will not issue for this name: use a public DNS name, or `tls = \"local\"` for a development name".to_owned()
                }
                "rateLimited" => "the CA's rate limit was hit; the proxy retries later".to_owned(),
                "accountDoesNotExist" | "unauthorized" => {
                    "the saved account is not known to this CA: remove acme/account.json and the proxy makes a new one".to_owned()
                }
                _ => "read the CA's detail above; the proxy retries with backoff".to_owned(),
            },
            AcmeError::Challenge { name, .. } => format!(
                "the CA must reach this proxy at http://{name}/.well-known/acme-challenge/ on port 80: check that {name} resolves to this host and the port is open"
            ),
            AcmeError::Order { .. } => "the proxy retries with backoff".to_owned(),
            AcmeError::Name { .. } => {
                "wildcards and IP addresses need another challenge type: name each host, or use `tls = \"local\"` or certificate files".to_owned()
            }
            AcmeError::Account { path, .. } => format!(
                "remove {} and the proxy makes a new account",
                path.display()
            ),
            AcmeError::Certificate { .. } => {
                "the proxy orders a new certificate in its place".to_owned()
            }
            AcmeError::Io(_) => return None,
        })
    }

    /// The message with its source chain, as logs show it.
    pub fn chain(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_must_be_https() {
        for bad in ["http://ca.test/dir", "ca.test/dir", "https://", ""] {
            let error = AcmeConfig::new(bad).validate().expect_err(bad);
            assert_eq!(error.code(), "acme.directory_invalid");
        }
        assert!(
            AcmeConfig::new("https://127.0.0.1:14000/dir")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn a_root_file_without_a_certificate_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("root.pem");
        std::fs::write(&path, "not pem").expect("writes");
        let mut config = AcmeConfig::new("https://ca.test/dir");
        config.ca_root = Some(path);
        let error = config.validate().expect_err("refused");
        assert_eq!(error.code(), "acme.ca_root_invalid");
        assert!(error.to_string().contains("root.pem"), "{error}");
    }

    #[test]
    fn issued_debug_hides_the_key() {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let issued = Issued::from_pem(cert.pem(), key.serialize_pem()).expect("parses");
        let shown = format!("{issued:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert_eq!(issued.names, ["a.test"]);
    }
}
