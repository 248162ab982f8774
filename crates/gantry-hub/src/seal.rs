//! Secrets the hub must read back (TOTP secrets, outbound webhook signing
//! secrets, forge secrets, the public form's signing key) sealed at rest: XChaCha20-Poly1305 under a key
//! kept in a file in the hub's state directory (`secrets.key`, 0600 in a
//! 0700 directory, made on first start), never in the database. A copy of
//! the database alone, or its backup, does not give them away; the key
//! file must be backed up with it.
//!
//! A sealed value is `sealed1:<base64 of nonce ‖ ciphertext>`, bound to
//! its purpose (`totp`, `forge`, ...) as associated data, so one cannot be
//! moved into another column and still open. Nothing here logs or returns
//! a value in an error.

use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::error::HubError;

/// The key file's name in the hub's state directory.
pub const KEY_FILE: &str = "secrets.key";
/// What a sealed value starts with.
const PREFIX: &str = "sealed1:";
const NONCE_BYTES: usize = 24;

/// What a sealed value is for: its associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `users.totp_secret` and `users.totp_pending` (one moves to the other).
    Totp,
    /// `subscriptions.secret`, signing outbound webhooks.
    Subscription,
    /// `forge_secrets.secret`, checking forges' deliveries.
    Forge,
    /// `hub_secrets.value` of the row `form`, signing the public form's tokens.
    Form,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Totp => b"gantry-hub totp",
            Purpose::Subscription => b"gantry-hub subscription",
            Purpose::Forge => b"gantry-hub forge",
            Purpose::Form => b"gantry-hub form",
        }
    }
}

/// The hub's sealing key.
pub struct SealKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> HubError {
    move |source| HubError::Io { what, source }
}

impl SealKey {
    /// The key in `dir`'s key file, made there (0600, the directory 0700)
    /// when there is none. A key file other users may read is refused.
    pub fn load_or_create(dir: &Path) -> Result<SealKey, HubError> {
        let path = dir.join(KEY_FILE);
        if let Some(key) = read(&path)? {
            return Ok(key);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("create {}", dir.display())))?;
        let bytes: [u8; 32] = rand::random();
        let text = format!(
            "# the gantry hub's key for the secrets it keeps in its database; back it up with the database\n{}\n",
            gantry_core::artifact::hex(&bytes)
        );
        // Written whole beside it, then linked in only where no file is:
        // two hubs starting at once end up with one key.
        let whole = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
        gantry_core::file::write_atomic(&whole, text.as_bytes(), 0o600)
            .map_err(io(format!("write {}", whole.display())))?;
        let linked = std::fs::hard_link(&whole, &path);
        let _ = std::fs::remove_file(&whole);
        match linked {
            Ok(()) => Ok(SealKey::from_bytes(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path)?
                .ok_or_else(|| HubError::Internal(format!("{} vanished", path.display()))),
            Err(e) => Err(io(format!("write {}", path.display()))(e)),
        }
    }

    fn from_bytes(bytes: &[u8; 32]) -> SealKey {
        SealKey {
            cipher: XChaCha20Poly1305::new(bytes.into()),
        }
    }

    /// `plain` sealed for `purpose`.
    pub fn seal(&self, purpose: Purpose, plain: &str) -> Result<String, HubError> {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: purpose.label(),
                },
            )
            .map_err(|_| HubError::Internal("cannot seal a secret".to_owned()))?;
        let mut all = nonce.to_vec();
        all.extend_from_slice(&sealed);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(all)
        ))
    }

    /// The value `stored` sealed for `purpose`.
    pub fn open(&self, purpose: Purpose, stored: &str) -> Result<String, HubError> {
        let refused = |why: &str| {
            HubError::Internal(format!(
                "a stored {purpose:?} secret {why}: is {KEY_FILE} the key this database was sealed with?"
            ))
        };
        let all = stored
            .strip_prefix(PREFIX)
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(b)
                    .ok()
            })
            .filter(|all| all.len() > NONCE_BYTES)
            .ok_or_else(|| refused("is not sealed"))?;
        let (nonce, sealed) = all.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: purpose.label(),
                },
            )
            .map_err(|_| refused("does not open"))?;
        String::from_utf8(plain).map_err(|_| refused("is not text"))
    }
}

/// Whether a stored value is sealed already (migrations 010 and 011 seal the rest).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// The key in `path`, if the file exists and only its owner may read it.
fn read(path: &PathBuf) -> Result<Option<SealKey>, HubError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("read {}", path.display()))(e)),
    };
    let mode = file
        .metadata()
        .map_err(io(format!("read {}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(HubError::Invalid {
            message: format!(
                "{} can be read or written by other users (mode {:o})",
                path.display(),
                mode & 0o777
            ),
            hint: Some(format!("chmod 600 {}", path.display())),
        });
    }
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(io(format!("read {}", path.display())))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    let bytes = decode_hex32(line).ok_or_else(|| HubError::Invalid {
        message: format!("{} holds no key (64 hex digits)", path.display()),
        hint: Some("restore the key file from the backup made with the database".to_owned()),
    })?;
    Ok(Some(SealKey::from_bytes(&bytes)))
}

fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_made_0600_once_and_a_value_opens_only_for_its_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("hub");
        let key = SealKey::load_or_create(&state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&state), 0o700);
        let sealed = key.seal(Purpose::Totp, "JBSWY3DPEHPK3PXP").unwrap();
        assert!(is_sealed(&sealed) && !sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_ne!(sealed, key.seal(Purpose::Totp, "JBSWY3DPEHPK3PXP").unwrap());
        let again = SealKey::load_or_create(&state).unwrap();
        assert_eq!(
            again.open(Purpose::Totp, &sealed).unwrap(),
            "JBSWY3DPEHPK3PXP"
        );
        assert!(
            again.open(Purpose::Forge, &sealed).is_err(),
            "another purpose"
        );
        assert!(
            again.open(Purpose::Totp, "JBSWY3DPEHPK3PXP").is_err(),
            "plain text"
        );
        let other = SealKey::load_or_create(&dir.path().join("other")).unwrap();
        assert!(other.open(Purpose::Totp, &sealed).is_err(), "another key");
        std::fs::set_permissions(state.join(KEY_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert!(
            SealKey::load_or_create(&state).is_err(),
            "a readable key is refused"
        );
    }
}
