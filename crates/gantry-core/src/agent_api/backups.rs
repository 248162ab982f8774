//! The wire types of backups: what the agent answers about a service's
//! backups, and what a failed one leaves for `gantry status`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::v1::BackupKind;

/// One backup a host keeps.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BackupInfo {
    /// Its name on the host, by when it was taken (UTC): `20261206T030000Z`,
    /// with `-2`, `-3` for another in the same second.
    pub id: String,
    pub service: String,
    pub kind: BackupKind,
    /// Unix time in milliseconds.
    pub created_at: u64,
    /// The backup's bytes on the host's disk (compressed).
    pub size: u64,
    /// sha256 of those bytes, to check a pulled copy against.
    pub sha256: String,
    pub trigger: BackupTrigger,
    /// The release that ran when it was taken.
    #[serde(default)]
    pub release: Option<String>,
    pub duration_ms: u64,
    /// The host that keeps it: set by the CLI when it asks several.
    #[serde(default)]
    pub host: Option<String>,
}

/// Who asked for a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupTrigger {
    /// The service's schedule.
    Schedule,
    /// `gantry backup now`.
    Manual,
}

/// The last backup of a service that failed, kept until one succeeds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BackupFailure {
    /// Unix time in milliseconds.
    pub at: u64,
    pub trigger: BackupTrigger,
    pub message: String,
}

/// `GET /v1/projects/{project}/services/{service}/backups`.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct BackupList {
    pub service: String,
    /// Newest first.
    pub backups: Vec<BackupInfo>,
    /// The schedule the current release gives the service, if any.
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub keep: Option<u32>,
    /// When the next scheduled backup is due (Unix ms).
    #[serde(default)]
    pub next_at: Option<u64>,
    #[serde(default)]
    pub last_failure: Option<BackupFailure>,
}

/// `POST .../backups/{id}/restore`: the backup put back and the service
/// started again.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct BackupRestored {
    pub backup: BackupInfo,
    pub duration_ms: u64,
}
