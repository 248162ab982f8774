//! Artifact manifests: the file list behind each artifact digest, kept so a
//! rollback can rebuild a release's tree from the blob store.

use gantry_core::agent_api::{Artifact, ArtifactFile};
use rusqlite::{OptionalExtension, params};

use super::codec::{Json, json};
use super::{Store, StoreError, now_ms};

impl Store {
    /// Remembers an artifact's file list. The digest must be the one its
    /// files hash to ([`crate::artifact::artifact_digest`]); recording the
    /// same artifact again changes nothing.
    pub(crate) fn record_artifact(&self, artifact: &Artifact) -> Result<(), StoreError> {
        let computed = crate::artifact::artifact_digest(&artifact.files);
        if computed != artifact.digest {
            return Err(StoreError::ArtifactDigest {
                recorded: artifact.digest.clone(),
                computed,
            });
        }
        let mut files = artifact.files.clone();
        files.sort();
        self.conn.execute(
            "INSERT INTO artifacts (digest, files, recorded_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (digest) DO NOTHING",
            params![artifact.digest, json("artifact files", &files)?, now_ms()],
        )?;
        Ok(())
    }

    pub(crate) fn artifact(&self, digest: &str) -> Result<Option<Artifact>, StoreError> {
        let files: Option<Json<Vec<ArtifactFile>>> = self
            .conn
            .query_row(
                "SELECT files FROM artifacts WHERE digest = ?1",
                [digest],
                |row| row.get(0),
            )
            .optional()?;
        Ok(files.map(|Json(files)| Artifact {
            digest: digest.to_owned(),
            files,
        }))
    }

    /// Whether the artifact's file list is recorded (kept by retention).
    pub(crate) fn has_artifact(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM artifacts WHERE digest = ?1",
                [digest],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Every recorded artifact's digest, with the digests of its files.
    pub(crate) fn artifact_blobs(&self) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let rows: Vec<(String, Json<Vec<ArtifactFile>>)> =
            self.rows("SELECT digest, files FROM artifacts", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
        Ok(rows
            .into_iter()
            .map(|(digest, Json(files))| (digest, files.into_iter().map(|f| f.digest).collect()))
            .collect())
    }

    /// Forgets an artifact's file list: a rollback to a release of it is
    /// refused from then on (`release.artifact_gone`).
    pub(crate) fn forget_artifact(&self, digest: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM artifacts WHERE digest = ?1", [digest])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::artifact_digest;

    fn artifact() -> Artifact {
        let files = vec![
            ArtifactFile {
                path: "bin/web".to_owned(),
                digest: "1".repeat(64),
                size: 10,
                mode: 0o755,
            },
            ArtifactFile {
                path: "README".to_owned(),
                digest: "2".repeat(64),
                size: 3,
                mode: 0o644,
            },
        ];
        Artifact {
            digest: artifact_digest(&files),
            files,
        }
    }

    #[test]
    fn artifact_manifest_round_trips() {
        let store = Store::open_in_memory().expect("store");
        let recorded = artifact();
        store.record_artifact(&recorded).expect("record");
        store
            .record_artifact(&recorded)
            .expect("recording twice is fine");
        let mut back = store
            .artifact(&recorded.digest)
            .expect("query")
            .expect("found");
        back.files.sort();
        let mut expected = recorded.files.clone();
        expected.sort();
        assert_eq!(back.files, expected);
        assert!(store.artifact(&"0".repeat(64)).expect("query").is_none());
    }

    #[test]
    fn an_artifact_whose_digest_does_not_match_its_files_is_refused() {
        let store = Store::open_in_memory().expect("store");
        let mut forged = artifact();
        forged.files[0].mode = 0o777;
        let err = store.record_artifact(&forged).expect_err("mismatch");
        assert_eq!(err.code(), "artifact.digest_mismatch");
        assert!(store.artifact(&forged.digest).expect("query").is_none());
    }
}
