//! The store's schema, as migrations. Append new steps; never edit a step that
//! has shipped, since agents in the field have already run it.
//!
//! Times are Unix milliseconds. JSON columns hold the `gantry_core::agent_api`
//! types as they serialize on the wire.

use rusqlite_migration::{M, Migrations};

pub(super) fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(
        r#"
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
"#,
    )])
}
