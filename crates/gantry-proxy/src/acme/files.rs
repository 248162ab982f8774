//! What the ACME manager keeps under the proxy's state directory:
//!
//! - `acme/account.json`: the account's credentials (its private key among
//!   them) and the directory they belong to; mode 0600.
//! - `acme/certs/<name>/cert.pem`: the chain, leaf first; mode 0644.
//! - `acme/certs/<name>/key.pem`: its private key; mode 0600.
//!
//! Every file is written whole to a temporary file of the right mode, synced,
//! then renamed over the old one, so a crash leaves the old file or the new
//! one. The key is written before the chain, and a pair is only loaded when
//! the chain's public key is the key's, so a crash between the two renames
//! costs a new order, never a certificate served with the wrong key.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer as _, GeneralName, ParsedExtension, X509Certificate};

use super::{AcmeError, Issued};
use gantry_file::FileError;

pub(crate) const ACCOUNT_FILE: &str = "account.json";
pub(crate) const CERTS_DIR: &str = "certs";
pub(crate) const CERT_FILE: &str = "cert.pem";
pub(crate) const KEY_FILE: &str = "key.pem";

/// `acme/account.json`: which directory the credentials are for, so a
/// proxy pointed at another CA makes a new account instead of failing.
#[derive(Serialize, Deserialize)]
pub(crate) struct SavedAccount {
    pub(crate) directory: String,
    pub(crate) credentials: instant_acme::AccountCredentials,
}

pub(crate) fn load_account(dir: &Path) -> Result<Option<SavedAccount>, AcmeError> {
    let path = dir.join(ACCOUNT_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(FileError::at("read", path)(source).into()),
    };
    // The serde error names a line and column, never the content.
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| AcmeError::Account {
            path,
            message: e.to_string(),
        })
}

pub(crate) fn save_account(dir: &Path, account: &SavedAccount) -> Result<(), AcmeError> {
    let path = dir.join(ACCOUNT_FILE);
    let mut text =
        serde_json::to_vec_pretty(account).map_err(|e| FileError::at("encode", &path)(e.into()))?;
    text.push(b'\n');
    write_atomic(&path, &text, 0o600)
}

/// Where the certificate for `name` lives. Names come from a validated route
/// table (letters, digits, `-`, `_`, `.`, no empty label), which keeps this
/// inside `certs/`; anything else is refused here as well.
pub(crate) fn cert_dir(dir: &Path, name: &str) -> Result<PathBuf, AcmeError> {
    let safe = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !safe {
        return Err(AcmeError::Name {
            name: name.to_owned(),
            reason: "only letters, digits, `-`, `_` and `.` make a name the proxy can order",
        });
    }
    Ok(dir.join(CERTS_DIR).join(name.to_ascii_lowercase()))
}

pub(crate) fn save_cert(dir: &Path, name: &str, issued: &Issued) -> Result<(), AcmeError> {
    let cert_dir = cert_dir(dir, name)?;
    std::fs::create_dir_all(&cert_dir).map_err(FileError::at("create", &cert_dir))?;
    write_atomic(&cert_dir.join(KEY_FILE), issued.key_pem.as_bytes(), 0o600)?;
    write_atomic(
        &cert_dir.join(CERT_FILE),
        issued.chain_pem.as_bytes(),
        0o644,
    )
}

/// Every stored certificate whose files are whole and match, by the name of
/// its directory. One that cannot be used is skipped with the reason, so a
/// damaged file costs a new order rather than the proxy's start.
pub(crate) fn load_certs(dir: &Path) -> (Vec<(String, Issued)>, Vec<AcmeError>) {
    let (mut found, mut skipped) = (Vec::new(), Vec::new());
    let certs = dir.join(CERTS_DIR);
    let entries = match std::fs::read_dir(&certs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (found, skipped),
        Err(source) => {
            skipped.push(FileError::at("list", certs)(source).into());
            return (found, skipped);
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        match load_cert(dir, &name) {
            Ok(issued) => found.push((name, issued)),
            Err(e) => skipped.push(e),
        }
    }
    (found, skipped)
}

fn load_cert(dir: &Path, name: &str) -> Result<Issued, AcmeError> {
    let cert_dir = cert_dir(dir, name)?;
    let read = |file: &str| {
        let path = cert_dir.join(file);
        std::fs::read_to_string(&path).map_err(FileError::at("read", path))
    };
    let key_pem = read(KEY_FILE)?;
    let chain_pem = read(CERT_FILE)?;
    let path = cert_dir.join(CERT_FILE);
    let issued =
        Issued::from_pem(chain_pem, key_pem).map_err(|message| AcmeError::Certificate {
            path: path.clone(),
            message,
        })?;
    if !issued.names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        return Err(AcmeError::Certificate {
            path,
            message: format!("it is not for {name}"),
        });
    }
    Ok(issued)
}

/// What the manager needs to know of a chain: the leaf's names and validity,
/// checked against the key.
pub(crate) struct Leaf {
    pub(crate) names: Vec<String>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

pub(crate) fn read_leaf(chain_pem: &str, key_pem: &str) -> Result<Leaf, String> {
    let first = x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes())
        .next()
        .ok_or("no certificate in the PEM text")?
        .map_err(|e| format!("not PEM: {e}"))?;
    let (_, cert) = X509Certificate::from_der(&first.contents)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|_| "the key is not a PEM private key")?;
    if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
        return Err("the certificate is not for the key stored beside it".to_owned());
    }
    let mut names = Vec::new();
    for extension in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() {
            for general in &san.general_names {
                if let GeneralName::DNSName(name) = general {
                    names.push((*name).to_owned());
                }
            }
        }
    }
    let time = |t: x509_parser::time::ASN1Time| {
        let seconds = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    };
    Ok(Leaf {
        names,
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AcmeError> {
    gantry_file::write_atomic(path, bytes, mode).map_err(FileError::of("write", path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn self_signed(name: &str) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        Issued::from_pem(cert.pem(), key.serialize_pem()).expect("parses")
    }

    #[test]
    fn a_saved_certificate_loads_back_with_a_private_key_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let issued = self_signed("app.example.test");
        save_cert(dir.path(), "app.example.test", &issued).expect("saves");
        let key = dir.path().join("certs/app.example.test/key.pem");
        let mode = std::fs::metadata(&key)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (found, skipped) = load_certs(dir.path());
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "app.example.test");
        assert_eq!(found[0].1.not_after, issued.not_after);
    }

    #[test]
    fn a_certificate_beside_another_key_is_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = self_signed("a.example.test");
        let second = self_signed("a.example.test");
        save_cert(dir.path(), "a.example.test", &first).expect("saves");
        let key = dir.path().join("certs/a.example.test/key.pem");
        std::fs::write(&key, &second.key_pem).expect("writes");
        let (found, skipped) = load_certs(dir.path());
        assert!(found.is_empty());
        let message = skipped[0].to_string();
        assert!(message.contains("not for the key"), "{message}");
        assert!(!message.contains("PRIVATE KEY"), "{message}");
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        for bad in ["", "../x", ".hidden", "a/b"] {
            assert!(cert_dir(Path::new("/s"), bad).is_err(), "{bad}");
        }
    }
}
