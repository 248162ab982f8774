//! Releases: immutable records of deploys and rollbacks. Only their outcome,
//! reason, log tail, cause and phases change, as the deploy progresses, and
//! their verify window as the agent watches it.

use gantry_core::agent_api::Release;
use rusqlite::{Row, params};

use super::codec::{Json, Named, json};
use super::service_row::{ServiceRow, from_rows, to_rows};
use super::{Store, StoreError, is_unique_violation};

const COLUMNS: &str = "id, number, project, environment, config_hash, artifact_digest, \
     rollback_of, created_at, outcome, reason, log_tail, phases, services, cause, redeploy_of, \
     verify";

/// [`COLUMNS`] but `cause` (schema 7), `redeploy_of` (schema 9) and `verify`
/// (schema 10): what a
/// release without either is inserted into, so that stores of older schemas
/// take it too.
const COLUMNS_WITHOUT_CAUSE: &str = "id, number, project, environment, config_hash, \
     artifact_digest, rollback_of, created_at, outcome, reason, log_tail, phases, services";

impl Store {
    /// The number the project's next release takes: one more than its highest.
    pub(crate) fn next_release_number(&self, project: &str) -> Result<u64, StoreError> {
        let highest: Option<u64> = self.conn.query_row(
            "SELECT max(number) FROM releases WHERE project = ?1",
            [project],
            |row| row.get(0),
        )?;
        Ok(highest.unwrap_or(0) + 1)
    }

    /// Records a new release. Its id and its number within the project must
    /// be new; `rollback_of` and `redeploy_of`, when set, must name a
    /// release of the project.
    pub(crate) fn insert_release(&self, release: &Release) -> Result<(), StoreError> {
        let services = json("services", &to_rows(&release.services))?;
        let columns =
            if release.cause.is_some() || release.redeploy_of.is_some() || release.verify.is_some()
            {
                COLUMNS
            } else {
                COLUMNS_WITHOUT_CAUSE
            };
        self.insert_release_with(release, services, columns)
    }

    /// Inserts a release as agents before schema 4 did: its services in
    /// format 1, the wire's JSON. For tests of the migrations.
    #[cfg(test)]
    pub(super) fn insert_release_as_format_1(&self, release: &Release) -> Result<(), StoreError> {
        let services = json("services", &release.services)?;
        self.insert_release_with(release, services, COLUMNS_WITHOUT_CAUSE)
    }

    /// Inserts `release` with its `services` column as given, into
    /// `columns`: [`COLUMNS`], or the first of them.
    fn insert_release_with(
        &self,
        release: &Release,
        services: String,
        columns: &str,
    ) -> Result<(), StoreError> {
        for of in release.rollback_of.iter().chain(&release.redeploy_of) {
            require_release(&self.conn, &release.project, of)?;
        }
        let (outcome, log_tail) = (Named(release.outcome), json("log_tail", &release.log_tail)?);
        let (phases, cause) = (json("phases", &release.phases)?, cause(release)?);
        let verify = verification(release)?;
        let values = params![
            release.id,
            release.number,
            release.project,
            release.environment,
            release.config_hash,
            release.artifact_digest,
            release.rollback_of,
            release.created_at,
            outcome,
            release.reason,
            log_tail,
            phases,
            services,
            cause,
            release.redeploy_of,
            verify,
        ];
        let count = columns.split(',').count().min(values.len());
        let placeholders: Vec<String> = (1..=count).map(|i| format!("?{i}")).collect();
        let inserted = self.conn.execute(
            &format!(
                "INSERT INTO releases ({columns}) VALUES ({})",
                placeholders.join(", ")
            ),
            &values[..count],
        );
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::ReleaseExists {
                project: release.project.clone(),
                id: release.id.clone(),
                number: release.number,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Saves what a deploy learned about a release: its outcome, reason, log
    /// tail, cause and phases, and its verify window. Everything else about
    /// a release is immutable.
    pub(crate) fn update_release(&self, release: &Release) -> Result<(), StoreError> {
        let updated = self.conn.execute(
            "UPDATE releases SET outcome = ?3, reason = ?4, log_tail = ?5, phases = ?6, \
             cause = ?7, verify = ?8 WHERE project = ?1 AND id = ?2",
            params![
                release.project,
                release.id,
                Named(release.outcome),
                release.reason,
                json("log_tail", &release.log_tail)?,
                json("phases", &release.phases)?,
                cause(release)?,
                verification(release)?,
            ],
        )?;
        if updated == 0 {
            return Err(StoreError::UnknownRelease {
                project: release.project.clone(),
                release: release.id.clone(),
            });
        }
        Ok(())
    }

    /// One release of a project. `id` is a release id or, for convenience at
    /// the command line, a release number: `3` or `r3`. An exact id wins over
    /// a number.
    pub(crate) fn release(&self, project: &str, id: &str) -> Result<Option<Release>, StoreError> {
        if let Some(release) = self.release_by_id(project, id)? {
            return Ok(Some(release));
        }
        let Some(number) = parse_number(id) else {
            return Ok(None);
        };
        self.row(
            &format!("SELECT {COLUMNS} FROM releases WHERE project = ?1 AND number = ?2"),
            params![project, number],
            read_release,
        )
        .and_then(|found| self.with_deployments(found))
    }

    fn with_deployments(&self, release: Option<Release>) -> Result<Option<Release>, StoreError> {
        let mut found: Vec<Release> = release.into_iter().collect();
        self.attach_deployments(&mut found)?;
        Ok(found.pop())
    }

    fn release_by_id(&self, project: &str, id: &str) -> Result<Option<Release>, StoreError> {
        self.row(
            &format!("SELECT {COLUMNS} FROM releases WHERE project = ?1 AND id = ?2"),
            params![project, id],
            read_release,
        )
        .and_then(|found| self.with_deployments(found))
    }

    /// Every release of a project, newest first.
    pub(crate) fn releases(&self, project: &str) -> Result<Vec<Release>, StoreError> {
        self.query_releases(
            &format!("SELECT {COLUMNS} FROM releases WHERE project = ?1 ORDER BY number DESC"),
            params![project],
        )
    }

    /// The releases of every project that no retention pass has finished
    /// with ([`Store::mark_pruned`]), by project, newest first.
    pub(crate) fn unpruned_releases(&self) -> Result<Vec<Release>, StoreError> {
        self.query_releases(
            &format!(
                "SELECT {COLUMNS} FROM releases WHERE pruned = 0 ORDER BY project, number DESC"
            ),
            params![],
        )
    }

    /// Marks releases of `project` as finished with by retention: no later
    /// pass reads them again.
    pub(crate) fn mark_pruned(&self, project: &str, ids: &[String]) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut mark =
                tx.prepare_cached("UPDATE releases SET pruned = 1 WHERE project = ?1 AND id = ?2")?;
            for id in ids {
                mark.execute(params![project, id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The project's newest release that succeeded.
    #[cfg(test)]
    pub(crate) fn latest_succeeded(&self, project: &str) -> Result<Option<Release>, StoreError> {
        self.row(
            &format!(
                "SELECT {COLUMNS} FROM releases WHERE project = ?1 AND outcome = 'succeeded' \
                 ORDER BY number DESC LIMIT 1"
            ),
            [project],
            read_release,
        )
    }

    /// Releases of every project still marked as deploying: at start-up these
    /// are deploys a crash interrupted, to finish or undo. By project, oldest
    /// first.
    pub fn deploying(&self) -> Result<Vec<Release>, StoreError> {
        self.query_releases(
            &format!(
                "SELECT {COLUMNS} FROM releases WHERE outcome = 'deploying' \
                 ORDER BY project, number"
            ),
            params![],
        )
    }

    /// Releases of every project whose verify window the agent is watching
    /// (or was, when it stopped): at start-up, the watches to resume.
    pub(crate) fn verifying(&self) -> Result<Vec<Release>, StoreError> {
        self.query_releases(
            &format!(
                "SELECT {COLUMNS} FROM releases WHERE verify IS NOT NULL \
                 AND json_extract(verify, '$.state') = 'watching' ORDER BY project, number"
            ),
            params![],
        )
    }

    /// [`Store::deploying`] for one project.
    #[cfg(test)]
    pub(crate) fn deploying_in(&self, project: &str) -> Result<Vec<Release>, StoreError> {
        self.query_releases(
            &format!(
                "SELECT {COLUMNS} FROM releases WHERE outcome = 'deploying' AND project = ?1 \
                 ORDER BY number"
            ),
            params![project],
        )
    }

    /// Releases the query finds, each with the deployments it is part of.
    fn query_releases(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Release>, StoreError> {
        let mut releases: Vec<Release> = self.rows(sql, params, read_release)?;
        self.attach_deployments(&mut releases)?;
        Ok(releases)
    }
}

/// The foreign keys say a release exists; this says it is the project's.
pub(super) fn require_release(
    conn: &rusqlite::Connection,
    project: &str,
    release: &str,
) -> Result<(), StoreError> {
    let found = conn
        .prepare_cached("SELECT 1 FROM releases WHERE project = ?1 AND id = ?2")?
        .exists([project, release])?;
    if found {
        Ok(())
    } else {
        Err(StoreError::UnknownRelease {
            project: project.to_owned(),
            release: release.to_owned(),
        })
    }
}

/// `3` or `r3` as a release number.
fn parse_number(text: &str) -> Option<u64> {
    let digits = text.strip_prefix('r').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A release's verify window as its column holds it: JSON, or NULL for none.
fn verification(release: &Release) -> Result<Option<String>, StoreError> {
    release
        .verify
        .as_ref()
        .map(|verify| json("verify", verify))
        .transpose()
}

/// A release's cause as its column holds it: JSON, or NULL for none.
fn cause(release: &Release) -> Result<Option<String>, StoreError> {
    release
        .cause
        .as_ref()
        .map(|cause| json("cause", cause))
        .transpose()
}

fn read_release(row: &Row<'_>) -> rusqlite::Result<Release> {
    Ok(Release {
        id: row.get("id")?,
        number: row.get("number")?,
        project: row.get("project")?,
        environment: row.get("environment")?,
        config_hash: row.get("config_hash")?,
        artifact_digest: row.get("artifact_digest")?,
        rollback_of: row.get("rollback_of")?,
        redeploy_of: row.get("redeploy_of")?,
        created_at: row.get("created_at")?,
        outcome: row.get::<_, Named<_>>("outcome")?.0,
        reason: row.get("reason")?,
        log_tail: row.get::<_, Json<_>>("log_tail")?.0,
        cause: row.get::<_, Option<Json<_>>>("cause")?.map(|c| c.0),
        phases: row.get::<_, Json<_>>("phases")?.0,
        services: from_rows(row.get::<_, Json<Vec<ServiceRow>>>("services")?.0),
        deployments: Vec::new(),
        // Not a column: the API layer tells (`history`).
        files_gone: false,
        verify: row.get::<_, Option<Json<_>>>("verify")?.map(|v| v.0),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use gantry_core::agent_api::ServiceSpec;
    use gantry_core::agent_api::{Outcome, Phase};

    use super::*;

    /// A service as the CLI sends it, secret names only.
    pub(crate) fn service(name: &str) -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "driver": "process",
            "run": format!("bin/{name}"),
            "port": "http",
            "routes": [{"host": "shop.example.com", "path": "/"}],
            "replicas": 2,
            "env": {"RUST_LOG": "info"},
            "secrets": ["DATABASE_URL"],
            "resources": {},
            "depends_on": [],
            "volumes": [],
            "stop_timeout": "10s",
            "restart": "always",
        }))
        .expect("a valid resolved service")
    }

    /// Records releases: (project, id, number) each.
    pub(crate) fn insert(store: &Store, releases: &[(&str, &str, u64)]) {
        for &(project, id, number) in releases {
            store
                .insert_release(&release(project, id, number))
                .expect("insert");
        }
    }

    pub(crate) fn release(project: &str, id: &str, number: u64) -> Release {
        Release {
            id: id.to_owned(),
            number,
            project: project.to_owned(),
            environment: "prod".to_owned(),
            config_hash: "c0ffee".to_owned(),
            artifact_digest: "ab".repeat(32),
            rollback_of: None,
            redeploy_of: None,
            created_at: 1_700_000_000_000 + number,
            outcome: Outcome::Deploying,
            reason: None,
            log_tail: Vec::new(),
            cause: None,
            phases: Vec::new(),
            services: vec![service("web")],
            deployments: Vec::new(),
            files_gone: false,
            verify: None,
        }
    }

    fn json(release: &Release) -> serde_json::Value {
        serde_json::to_value(release).expect("serialize")
    }

    /// Only releases no retention pass finished with are read again, and a
    /// mark touches only the project it names.
    #[test]
    fn releases_marked_pruned_are_not_read_again() {
        let store = Store::open_in_memory().expect("store");
        insert(
            &store,
            &[("shop", "s1", 1), ("shop", "s2", 2), ("blog", "b1", 1)],
        );
        store
            .mark_pruned("shop", &["s1".to_owned(), "b1".to_owned()])
            .expect("mark");
        let left: Vec<(String, String)> = (store.unpruned_releases().expect("query"))
            .into_iter()
            .map(|r| (r.project, r.id))
            .collect();
        assert_eq!(
            left,
            [
                ("blog".to_owned(), "b1".to_owned()),
                ("shop".to_owned(), "s2".to_owned())
            ]
        );
        assert_eq!(store.releases("shop").expect("history").len(), 2);
    }

    #[test]
    fn release_round_trips_with_its_services() {
        let store = Store::open_in_memory().expect("store");
        let r1 = release("shop", "rel-a", 1);
        store.insert_release(&r1).expect("insert");
        let back = store
            .release("shop", "rel-a")
            .expect("query")
            .expect("found");
        assert_eq!(json(&back), json(&r1));
        assert_eq!(back.services[0].secrets, ["DATABASE_URL"]);
    }

    #[test]
    fn a_static_service_keeps_its_directory_and_spa() {
        use gantry_core::agent_api::v1::Workload;
        let store = Store::open_in_memory().expect("store");
        let mut r1 = release("shop", "rel-s", 1);
        for spa in [true, false] {
            let mut docs = service(if spa { "app" } else { "docs" });
            docs.workload = Workload::Static {
                dir: "dist".to_owned(),
                spa,
            };
            r1.services.push(docs);
        }
        store.insert_release(&r1).expect("insert");
        let back = store
            .release("shop", "rel-s")
            .expect("query")
            .expect("found");
        let workloads: Vec<_> = back.services.iter().map(|s| s.workload.clone()).collect();
        assert!(workloads.contains(&Workload::Static {
            dir: "dist".to_owned(),
            spa: true
        }));
        assert!(workloads.contains(&Workload::Static {
            dir: "dist".to_owned(),
            spa: false
        }));
    }

    #[test]
    fn update_release_saves_outcome_reason_log_tail_and_phases() {
        let store = Store::open_in_memory().expect("store");
        let mut r1 = release("shop", "rel-a", 1);
        store.insert_release(&r1).expect("insert");
        r1.outcome = Outcome::Failed;
        r1.reason = Some("web: health check failed".to_owned());
        r1.log_tail = vec!["panic: no DATABASE_URL".to_owned()];
        r1.phases = vec![Phase {
            name: "start".to_owned(),
            service: Some("web".to_owned()),
            started_at: 1,
            duration_ms: 20,
            engine_ms: None,
            task: None,
        }];
        store.update_release(&r1).expect("update");
        let back = store
            .release("shop", "rel-a")
            .expect("query")
            .expect("found");
        assert_eq!(json(&back), json(&r1));
    }

    #[test]
    fn a_failed_release_keeps_the_code_of_its_cause() {
        let store = Store::open_in_memory().expect("store");
        let mut r1 = release("shop", "rel-a", 1);
        store.insert_release(&r1).expect("insert");
        r1.outcome = Outcome::Failed;
        r1.reason = Some("service `db`: no image postgres:16 on this host".to_owned());
        r1.cause = Some(gantry_core::agent_api::Cause::new(
            gantry_core::Code::ContainerNoImage,
            "no image postgres:16 on this host",
        ));
        store.update_release(&r1).expect("update");
        let back = store
            .release("shop", "rel-a")
            .expect("query")
            .expect("found");
        assert_eq!(back.cause, r1.cause);
        assert_eq!(json(&back)["cause"]["code"], "container.no_image");
        // A release without one has no `cause` on the wire.
        insert(&store, &[("shop", "rel-b", 2)]);
        let plain = store
            .release("shop", "rel-b")
            .expect("query")
            .expect("found");
        assert!(json(&plain).get("cause").is_none(), "{}", json(&plain));
        // Inserted with one, it keeps it too.
        let mut r3 = release("shop", "rel-c", 3);
        r3.cause = r1.cause.clone();
        store.insert_release(&r3).expect("insert");
        let back = store
            .release("shop", "rel-c")
            .expect("query")
            .expect("found");
        assert_eq!(back.cause, r1.cause);
    }

    /// A verify window is kept with its release as the watch goes, and
    /// only the windows still watched are the ones a starting agent resumes.
    #[test]
    fn a_release_keeps_its_verify_window_and_only_watched_ones_are_listed_to_resume() {
        use gantry_core::agent_api::{Verification, VerifyState};

        let store = Store::open_in_memory().expect("store");
        insert(
            &store,
            &[("shop", "r1", 1), ("shop", "r2", 2), ("blog", "r1", 1)],
        );
        let watching = Verification::watching(std::time::Duration::from_secs(5), 1_000);
        for (project, id) in [("shop", "r1"), ("shop", "r2"), ("blog", "r1")] {
            let mut r = store.release(project, id).expect("query").expect("found");
            r.outcome = Outcome::Succeeded;
            r.verify = Some(watching.clone());
            store.update_release(&r).expect("update");
        }
        let mut r1 = store.release("shop", "r1").expect("query").expect("found");
        assert_eq!(r1.verify.as_ref().map(|v| v.until), Some(6_000));
        r1.verify = Some(Verification {
            state: VerifyState::Passed,
            ..watching.clone()
        });
        store.update_release(&r1).expect("passed");

        let resumed: Vec<(String, String)> = (store.verifying().expect("query"))
            .into_iter()
            .map(|r| (r.project, r.id))
            .collect();
        assert_eq!(
            resumed,
            [
                ("blog".to_owned(), "r1".to_owned()),
                ("shop".to_owned(), "r2".to_owned())
            ]
        );
        let back = store.release("shop", "r1").expect("query").expect("found");
        assert_eq!(json(&back)["verify"]["state"], "passed", "{}", json(&back));
        // A release watched by nobody has no `verify` on the wire.
        insert(&store, &[("shop", "r3", 3)]);
        let plain = store.release("shop", "r3").expect("query").expect("found");
        assert!(json(&plain).get("verify").is_none(), "{}", json(&plain));
    }

    #[test]
    fn update_of_an_unknown_release_is_an_error() {
        let store = Store::open_in_memory().expect("store");
        let err = store
            .update_release(&release("shop", "nope", 1))
            .expect_err("unknown");
        assert_eq!(err.code(), "release.not_found");
    }

    #[test]
    fn numbering_is_per_project_and_numbers_are_unique() {
        let store = Store::open_in_memory().expect("store");
        assert_eq!(store.next_release_number("shop").expect("next"), 1);
        insert(&store, &[("shop", "a", 1), ("shop", "b", 2)]);
        assert_eq!(store.next_release_number("shop").expect("next"), 3);
        assert_eq!(store.next_release_number("blog").expect("next"), 1);
        let err = store
            .insert_release(&release("shop", "c", 2))
            .expect_err("duplicate number");
        assert!(
            matches!(err, StoreError::ReleaseExists { number: 2, .. }),
            "{err}"
        );
        let err = store
            .insert_release(&release("shop", "a", 9))
            .expect_err("duplicate id");
        assert_eq!(err.code(), "release.exists");
    }

    #[test]
    fn a_release_is_found_by_id_or_by_number() {
        let store = Store::open_in_memory().expect("store");
        insert(&store, &[("shop", "a", 1), ("shop", "b", 2)]);
        let find = |id: &str| store.release("shop", id).expect("query").map(|r| r.id);
        assert_eq!(find("b").as_deref(), Some("b"));
        assert_eq!(find("2").as_deref(), Some("b"));
        assert_eq!(find("r1").as_deref(), Some("a"));
        assert_eq!(find("r3"), None);
        assert_eq!(find("r"), None);
        assert_eq!(
            store.release("blog", "a").expect("query").map(|r| r.id),
            None
        );
    }

    #[test]
    fn releases_are_listed_newest_first_and_latest_succeeded_skips_failures() {
        let store = Store::open_in_memory().expect("store");
        for (id, number, outcome) in [
            ("a", 1, Outcome::Succeeded),
            ("b", 2, Outcome::Succeeded),
            ("c", 3, Outcome::Failed),
            ("d", 4, Outcome::Deploying),
        ] {
            let mut r = release("shop", id, number);
            r.outcome = outcome;
            store.insert_release(&r).expect("insert");
        }
        insert(&store, &[("blog", "z", 1)]);
        let ids: Vec<_> = store
            .releases("shop")
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["d", "c", "b", "a"]);
        let latest = store
            .latest_succeeded("shop")
            .expect("query")
            .expect("some");
        assert_eq!(latest.id, "b");
        assert!(store.latest_succeeded("none").expect("query").is_none());
    }

    #[test]
    fn deploying_lists_interrupted_deploys_of_one_project_or_all() {
        let store = Store::open_in_memory().expect("store");
        let mut done = release("shop", "a", 1);
        done.outcome = Outcome::Succeeded;
        store.insert_release(&done).expect("insert");
        insert(&store, &[("shop", "b", 2), ("blog", "z", 1)]);
        let ids = |releases: Vec<Release>| -> Vec<String> {
            releases.into_iter().map(|r| r.id).collect()
        };
        assert_eq!(ids(store.deploying_in("shop").expect("query")), ["b"]);
        assert_eq!(ids(store.deploying().expect("query")), ["z", "b"]);
    }

    #[test]
    fn rollback_of_must_name_an_existing_release() {
        let store = Store::open_in_memory().expect("store");
        insert(&store, &[("shop", "a", 1)]);
        let mut back = release("shop", "b", 2);
        back.rollback_of = Some("a".to_owned());
        store
            .insert_release(&back)
            .expect("rollback of a known release");
        let mut bad = release("shop", "c", 3);
        bad.rollback_of = Some("ghost".to_owned());
        let err = store.insert_release(&bad).expect_err("unknown");
        assert_eq!(err.code(), "release.not_found");
        let loaded = store.release("shop", "b").expect("query").expect("found");
        assert_eq!(loaded.rollback_of.as_deref(), Some("a"));
    }

    #[test]
    fn a_redeploy_is_kept_apart_from_a_rollback_and_names_an_existing_release() {
        let store = Store::open_in_memory().expect("store");
        insert(&store, &[("shop", "a", 1)]);
        let mut again = release("shop", "b", 2);
        again.redeploy_of = Some("a".to_owned());
        store
            .insert_release(&again)
            .expect("redeploy of a known release");
        let loaded = store.release("shop", "b").expect("query").expect("found");
        assert_eq!(loaded.redeploy_of.as_deref(), Some("a"));
        assert_eq!(loaded.rollback_of, None);
        let mut bad = release("shop", "c", 3);
        bad.redeploy_of = Some("ghost".to_owned());
        let err = store.insert_release(&bad).expect_err("unknown");
        assert_eq!(err.code(), "release.not_found");
    }
}
