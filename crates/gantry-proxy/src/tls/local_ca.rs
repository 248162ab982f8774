//! The local certificate authority: one per proxy state directory, made the
//! first time it is needed (`ca/ca.pem`, `ca/ca.key` mode 0600) and then only
//! ever read, so a browser that trusts it keeps trusting it across restarts.
//! It signs short-lived leaf certificates for `*.localhost` names on demand;
//! a name constraint in the CA itself limits it to `localhost` and its
//! subdomains, so trusting it cannot vouch for any other site.
//!
//! Must never: regenerate a CA that exists (a damaged one is an error), write
//! the key anywhere but `ca.key`, or put key material in an error message.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PublicKeyData as _,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use gantry_file::FileError;

pub const CERT_FILE: &str = "ca.pem";
pub const KEY_FILE: &str = "ca.key";

/// How long the CA is valid: long, since replacing it means trusting anew.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// How long a leaf is valid; leaves live in memory and are issued again.
const LEAF_VALIDITY: time::Duration = time::Duration::days(30);
/// Clocks differ a little; a certificate is valid from a bit before now.
const BACKDATE: time::Duration = time::Duration::hours(1);

/// Why the local CA could not be made or read. Names the file; never holds
/// key material.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Io(#[from] FileError),
    #[error("the local CA in {} is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot make a certificate: {0}")]
    Generate(String),
}

impl CaError {
    pub fn hint(&self) -> Option<String> {
        match self {
            CaError::Damaged { path, .. } => Some(format!(
                "remove the directory {} to make a new local CA; browsers and systems that trusted the old one must trust the new one",
                path.parent().unwrap_or(path).display()
            )),
            CaError::Io(e) => Some(format!(
                "check that {} is writable by this user",
                e.path.parent().unwrap_or(&e.path).display()
            )),
            CaError::Generate(_) => None,
        }
    }
}

/// A loaded local CA, ready to sign leaves.
pub struct LocalCa {
    dir: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("dir", &self.dir)
            .field("fingerprint_sha256", &self.fingerprint_sha256())
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// The CA in `dir`, made there first if the directory holds none.
    pub fn load_or_create(dir: &Path) -> Result<LocalCa, CaError> {
        if !dir.join(CERT_FILE).exists() && !dir.join(KEY_FILE).exists() {
            create(dir)?;
        }
        LocalCa::load(dir)
    }

    /// The CA in `dir`; an error if it is missing or damaged.
    pub fn load(dir: &Path) -> Result<LocalCa, CaError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let read = |path: &Path| std::fs::read_to_string(path).map_err(FileError::at("read", path));
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let damaged = |path: &Path, reason: &str| CaError::Damaged {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| damaged(&cert_path, "no PEM certificate in it"))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|_| damaged(&key_path, "no usable PEM private key in it"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|_| damaged(&cert_path, "the certificate cannot be parsed"))?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(damaged(
                &key_path,
                "the key does not belong to the certificate in ca.pem",
            ));
        }
        let not_after = parsed.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|_| damaged(&cert_path, "the certificate cannot sign"))?;
        Ok(LocalCa {
            dir: dir.to_owned(),
            cert_pem,
            cert_der,
            issuer,
            not_after,
        })
    }

    /// The CA certificate's file, the one users trust.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the certificate, as `openssl x509 -fingerprint -sha256` prints it.
    pub fn fingerprint_sha256(&self) -> String {
        fingerprint_sha256(&self.cert_der)
    }

    /// When the CA stops being valid, RFC 3339.
    pub fn not_after(&self) -> String {
        self.not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| self.not_after.unix_timestamp().to_string())
    }

    /// A leaf certificate for `name`, with the name as its SAN, and when it
    /// expires.
    pub fn issue(
        &self,
        name: &str,
        provider: &CryptoProvider,
    ) -> Result<(Arc<CertifiedKey>, SystemTime), CaError> {
        let generate = |e: rcgen::Error| CaError::Generate(e.to_string());
        let key = KeyPair::generate().map_err(generate)?;
        let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(generate)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = CertifiedKey::from_der(vec![cert.der().clone()], key_der, provider)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let expires = SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(
                u64::try_from(params.not_after.unix_timestamp()).unwrap_or(0),
            );
        Ok((Arc::new(certified), expires))
    }
}

/// Whether the local CA may issue for `name`: `localhost` and its subdomains.
pub fn is_local_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name
            .len()
            .checked_sub(".localhost".len())
            .and_then(|at| name.get(at..))
            .is_some_and(|tail| tail.eq_ignore_ascii_case(".localhost"))
}

pub fn fingerprint_sha256(der: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, byte) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{byte:02X}"));
    }
    out
}

/// Makes a CA in a temporary directory beside `dir`, then renames it into
/// place: two processes making one at once end with one whole CA, the first
/// renamed; the other's is thrown away.
fn create(dir: &Path) -> Result<(), CaError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(FileError::at("create", parent))?;
    let generate = |e: rcgen::Error| CaError::Generate(e.to_string());
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Gantry");
    // Unique per CA, so two machines' CAs are told apart in a trust store.
    dn.push(
        DnType::CommonName,
        format!("Gantry local CA {:08x}", fastrand::u32(..)),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName("localhost".to_owned())],
        excluded_subtrees: Vec::new(),
    });
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key).map_err(generate)?;

    let tmp = parent.join(format!(
        ".ca.{}.{:08x}.tmp",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir(&tmp).map_err(FileError::at("create", &tmp))?;
    let written = write_new(&tmp.join(KEY_FILE), key.serialize_pem().as_bytes(), 0o600)
        .and_then(|()| write_new(&tmp.join(CERT_FILE), cert.pem().as_bytes(), 0o644))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all());
    if let Err(source) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(FileError::at("write", tmp)(source).into());
    }
    let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755));
    match std::fs::rename(&tmp, dir) {
        Ok(()) => {}
        // Another process made one first (or `dir` holds other files):
        // theirs is loaded, ours goes.
        Err(_) if dir.join(CERT_FILE).exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(source) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(FileError::at("create", dir)(source).into());
        }
    }
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(FileError::at("sync", parent))?;
    Ok(())
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have taken bits off; the mode is what it must be.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_are_localhost_and_below() {
        for name in [
            "localhost",
            "web.shop.localhost",
            "A.LOCALHOST",
            "x.localhost.",
        ] {
            assert!(is_local_name(name), "{name}");
        }
        for name in ["example.com", "notlocalhost", "localhost.example.com", ""] {
            assert!(!is_local_name(name), "{name}");
        }
    }

    #[test]
    fn a_damaged_ca_is_an_error_naming_the_file_and_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca");
        std::fs::create_dir(&ca).expect("creates");
        std::fs::write(ca.join(CERT_FILE), "not a certificate").expect("writes");
        std::fs::write(ca.join(KEY_FILE), "not a key").expect("writes");
        let error = LocalCa::load_or_create(&ca).expect_err("refused");
        assert!(error.to_string().contains("ca.pem"), "{error}");
        assert_eq!(
            std::fs::read_to_string(ca.join(CERT_FILE)).expect("reads"),
            "not a certificate"
        );
    }
}
