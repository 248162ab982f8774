//! `POST /v1/projects/{project}/compare`: what `gantry plan` asks a host
//! beside its releases, to say why a deploy would make a new release: the
//! files of the artifact the host runs, and which secrets it holds with
//! another value than the CLI would send. No secret value travels: the CLI
//! sends a digest of each, salted afresh for each plan, and the host
//! compares it with the digest of the value it keeps.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ArtifactFile;

/// The most secrets one request may ask about.
pub const MAX_COMPARED_SECRETS: usize = 1000;

/// The question.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct CompareRequest {
    /// The artifact (by digest) whose file list to answer with: the one the
    /// host runs, when it is not the CLI's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// 32 random bytes as hex, new for each request.
    pub salt: String,
    /// By secret name, [`secret_digest`] of the salt and the value the CLI
    /// would send; at most [`MAX_COMPARED_SECRETS`].
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

/// The answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Comparison {
    /// The files of the artifact asked for; absent when none was asked or
    /// the host keeps no record of it (removed beyond `retain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<ArtifactFile>>,
    /// Of the secrets asked about, those the host keeps with another value.
    #[serde(default)]
    pub secrets_differ: Vec<String>,
    /// Of the secrets asked about, those the host does not keep.
    #[serde(default)]
    pub secrets_absent: Vec<String>,
}

/// The digest of a secret's `value` under `salt`: hex sha256 of both.
pub fn secret_digest(salt: &str, value: &str) -> String {
    let digest = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update([0])
        .chain_update(value.as_bytes())
        .finalize();
    crate::artifact::hex(&digest)
}

/// A fresh salt: 32 random bytes, as hex.
pub fn new_salt() -> String {
    crate::artifact::hex(&rand::random::<[u8; 32]>())
}

/// Whether `text` is a sha256 as hex, as salts, digests and artifact digests are.
pub fn is_hex_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_digest_depends_on_the_salt_and_the_value() {
        let a = secret_digest("salt1", "hunter2");
        assert!(is_hex_sha256(&a));
        assert_eq!(a, secret_digest("salt1", "hunter2"));
        assert_ne!(a, secret_digest("salt2", "hunter2"));
        assert_ne!(a, secret_digest("salt1", "hunter3"));
        assert!(is_hex_sha256(&new_salt()));
        assert_ne!(new_salt(), new_salt());
    }
}
