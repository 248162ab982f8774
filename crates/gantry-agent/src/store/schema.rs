//! The store's schema, as migrations. Append new steps; never edit a step that
//! has shipped, since agents in the field have already run it.
//!
//! Times are Unix milliseconds. JSON columns hold the `gantry_core::agent_api`
//! types as they serialize on the wire, except a release's `services`, which
//! are the store's own rows ([`super::service_row`]).

use rusqlite_migration::{M, Migrations};

pub(super) fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(V1),
        M::up(V2_RELEASES_BY_PROJECT),
        M::up(V3_NO_EVENTS),
        M::up_with_hook(V4_SERVICE_ROWS, super::service_row::migrate_format_1),
        M::up(V5_FINGERPRINTS),
        M::up(V6_DEPLOYMENTS),
        M::up(V7_RELEASE_CAUSE),
        M::up(V8_PRUNED),
        M::up(V9_REDEPLOY_OF),
        M::up(V10_VERIFY),
    ])
}

/// The first schema, as agents in the field created it.
const V1: &str = r#"
CREATE TABLE releases (
    id              TEXT PRIMARY KEY,
    project         TEXT NOT NULL,
    number          INTEGER NOT NULL CHECK (number > 0),
    environment     TEXT NOT NULL,
    config_hash     TEXT NOT NULL,
    artifact_digest TEXT NOT NULL,
    rollback_of     TEXT REFERENCES releases (id),
    created_at      INTEGER NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('deploying', 'succeeded', 'failed')),
    reason          TEXT,
    log_tail        TEXT NOT NULL,  -- JSON array of lines
    phases          TEXT NOT NULL,  -- JSON array of Phase
    services        TEXT NOT NULL,  -- JSON array of resolved Service, secret names only
    UNIQUE (project, number)
) STRICT;
CREATE INDEX releases_deploying ON releases (outcome) WHERE outcome = 'deploying';

-- The intent log: a row is written before its process is spawned.
CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    project     TEXT NOT NULL,
    service     TEXT NOT NULL,
    release     TEXT NOT NULL REFERENCES releases (id),
    state       TEXT NOT NULL
                CHECK (state IN ('starting', 'live', 'draining', 'backoff', 'failed', 'stopped')),
    pid         INTEGER,
    start_time  INTEGER,  -- the process's start time, to tell a reused pid apart
    relay_pid   INTEGER,
    port        INTEGER CHECK (port BETWEEN 1 AND 65535),
    restarts    INTEGER NOT NULL DEFAULT 0,
    healthy     INTEGER NOT NULL DEFAULT 0 CHECK (healthy IN (0, 1)),
    last_exit   TEXT,     -- JSON Exit
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX instances_by_service ON instances (project, service);
CREATE INDEX instances_by_release ON instances (release);
CREATE INDEX instances_active ON instances (state) WHERE state NOT IN ('stopped', 'failed');

-- Which release each service runs: changed only by a cutover.
CREATE TABLE service_releases (
    project     TEXT NOT NULL,
    service     TEXT NOT NULL,
    release     TEXT NOT NULL REFERENCES releases (id),
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (project, service)
) STRICT, WITHOUT ROWID;

CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    project  TEXT NOT NULL,
    service  TEXT,
    at       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    message  TEXT NOT NULL
) STRICT;
CREATE INDEX events_by_project ON events (project, id);

-- Ports leased to instances. No foreign key: a port is leased before the
-- instance row that will use it is written.
CREATE TABLE port_allocations (
    port          INTEGER PRIMARY KEY CHECK (port BETWEEN 1 AND 65535),
    instance_id   TEXT NOT NULL UNIQUE,
    allocated_at  INTEGER NOT NULL
) STRICT;

-- Where the round-robin search for a free port resumes.
CREATE TABLE port_cursor (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    last  INTEGER NOT NULL
) STRICT;

-- Artifact manifests, so a rollback can rebuild a release's tree from blobs.
CREATE TABLE artifacts (
    digest       TEXT PRIMARY KEY,
    files        TEXT NOT NULL,  -- JSON array of ArtifactFile
    recorded_at  INTEGER NOT NULL
) STRICT;
"#;

/// Release ids (`r1`, `r2`, ...) count per project, so a release is keyed by
/// its project and id: with `id` alone a second project's `r1` collided with
/// the first's. The tables that point at releases are rebuilt with composite
/// foreign keys; every row is kept. Foreign keys are checked at commit, after
/// the old tables are gone.
const V2_RELEASES_BY_PROJECT: &str = r#"
PRAGMA defer_foreign_keys = ON;

ALTER TABLE service_releases RENAME TO service_releases_v1;
ALTER TABLE instances RENAME TO instances_v1;
ALTER TABLE releases RENAME TO releases_v1;
DROP INDEX releases_deploying;
DROP INDEX instances_by_service;
DROP INDEX instances_by_release;
DROP INDEX instances_active;

CREATE TABLE releases (
    project         TEXT NOT NULL,
    id              TEXT NOT NULL,
    number          INTEGER NOT NULL CHECK (number > 0),
    environment     TEXT NOT NULL,
    config_hash     TEXT NOT NULL,
    artifact_digest TEXT NOT NULL,
    rollback_of     TEXT,
    created_at      INTEGER NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('deploying', 'succeeded', 'failed')),
    reason          TEXT,
    log_tail        TEXT NOT NULL,  -- JSON array of lines
    phases          TEXT NOT NULL,  -- JSON array of Phase
    services        TEXT NOT NULL,  -- JSON array of resolved Service, secret names only
    PRIMARY KEY (project, id),
    UNIQUE (project, number),
    FOREIGN KEY (project, rollback_of) REFERENCES releases (project, id)
) STRICT;
CREATE INDEX releases_deploying ON releases (outcome) WHERE outcome = 'deploying';
INSERT INTO releases (project, id, number, environment, config_hash, artifact_digest,
                      rollback_of, created_at, outcome, reason, log_tail, phases, services)
    SELECT project, id, number, environment, config_hash, artifact_digest,
           rollback_of, created_at, outcome, reason, log_tail, phases, services
    FROM releases_v1;

CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    project     TEXT NOT NULL,
    service     TEXT NOT NULL,
    release     TEXT NOT NULL,
    state       TEXT NOT NULL
                CHECK (state IN ('starting', 'live', 'draining', 'backoff', 'failed', 'stopped')),
    pid         INTEGER,
    start_time  INTEGER,
    relay_pid   INTEGER,
    port        INTEGER CHECK (port BETWEEN 1 AND 65535),
    restarts    INTEGER NOT NULL DEFAULT 0,
    healthy     INTEGER NOT NULL DEFAULT 0 CHECK (healthy IN (0, 1)),
    last_exit   TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    FOREIGN KEY (project, release) REFERENCES releases (project, id)
) STRICT;
CREATE INDEX instances_by_service ON instances (project, service);
CREATE INDEX instances_by_release ON instances (project, release);
CREATE INDEX instances_active ON instances (state) WHERE state NOT IN ('stopped', 'failed');
INSERT INTO instances (id, project, service, release, state, pid, start_time, relay_pid, port,
                       restarts, healthy, last_exit, created_at, updated_at)
    SELECT id, project, service, release, state, pid, start_time, relay_pid, port,
           restarts, healthy, last_exit, created_at, updated_at
    FROM instances_v1;

CREATE TABLE service_releases (
    project     TEXT NOT NULL,
    service     TEXT NOT NULL,
    release     TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (project, service),
    FOREIGN KEY (project, release) REFERENCES releases (project, id)
) STRICT, WITHOUT ROWID;
INSERT INTO service_releases (project, service, release, updated_at)
    SELECT project, service, release, updated_at FROM service_releases_v1;

DROP TABLE service_releases_v1;
DROP TABLE instances_v1;
DROP TABLE releases_v1;
"#;

/// The events table was written (a removed service) and never read: no
/// command showed it. Its index goes with it.
const V3_NO_EVENTS: &str = "DROP TABLE events;";

/// A release's `services` become the store's own rows (format 2), so the
/// wire's spec and gantry.toml's model can change without making a row
/// unreadable. The rewrite is Rust: `service_row::migrate_format_1`.
const V4_SERVICE_ROWS: &str = "-- services rewritten in format 2 (service_row.rs)";

/// What each instance runs, as a digest, so a deploy can leave an unchanged
/// service running ([`super::fingerprints`]). No foreign key: a row outlives
/// nothing it matters for, and instances are never deleted.
const V5_FINGERPRINTS: &str = r#"
CREATE TABLE instance_fingerprints (
    instance     TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL
) STRICT, WITHOUT ROWID;
"#;

/// The environment-wide deployments each release stands for: the one that
/// made it, and later ones that found the host already running it
/// ([`super::deployments`]). A deployment is recorded once per host.
const V6_DEPLOYMENTS: &str = r#"
CREATE TABLE release_deployments (
    project     TEXT NOT NULL,
    release     TEXT NOT NULL,
    deployment  TEXT NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (project, deployment),
    FOREIGN KEY (project, release) REFERENCES releases (project, id)
) STRICT, WITHOUT ROWID;
CREATE INDEX release_deployments_by_release ON release_deployments (project, release);
"#;

/// A failed release's cause: the coded error behind its reason
/// (`agent_api::Cause` as JSON), NULL when it has none and for releases
/// recorded before.
const V7_RELEASE_CAUSE: &str = "ALTER TABLE releases ADD COLUMN cause TEXT;";

/// Releases a retention pass has finished with (`Store::mark_pruned`): their
/// files, manifest and pinned images are gone or kept for another release.
/// A pass reads only the releases not yet marked, so its work is bounded by
/// what the host keeps, not by the host's whole history.
const V8_PRUNED: &str = "
ALTER TABLE releases ADD COLUMN pruned INTEGER NOT NULL DEFAULT 0 CHECK (pruned IN (0, 1));
CREATE INDEX releases_unpruned ON releases (project, number) WHERE pruned = 0;
";

/// The release a release deploys again for new secrets (`gantry secrets
/// sync`), which before was recorded as a rollback to it. NULL for every
/// other release and for releases recorded before.
const V9_REDEPLOY_OF: &str = "ALTER TABLE releases ADD COLUMN redeploy_of TEXT;";

/// The verify window a deploy asked the agent to watch a release for, and
/// how it ended (`agent_api::Verification` as JSON): while its `state` is
/// `watching`, a starting agent resumes the watch until its `until`. NULL
/// for releases watched by nobody and for releases recorded before.
const V10_VERIFY: &str = "ALTER TABLE releases ADD COLUMN verify TEXT;";
