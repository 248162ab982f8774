//! The cutover: which release each service runs, and the one transaction
//! that moves a service to a new release and its traffic to the new
//! instances.

use std::collections::BTreeMap;

use gantry_core::agent_api::InstanceState;
use rusqlite::{OptionalExtension, params};

use super::codec::Named;
use super::instances::ACTIVE;
use super::releases::require_release;
use super::{Store, StoreError, now_ms};

impl Store {
    /// Sets which release a service runs, without touching its instances.
    /// For a cutover use [`Store::switch`].
    #[cfg(test)]
    pub(crate) fn set_current(
        &self,
        project: &str,
        service: &str,
        release: &str,
    ) -> Result<(), StoreError> {
        set_current(&self.conn, project, service, release)
    }

    /// Forgets that a service runs: a deploy whose config no longer has it
    /// stopped its instances. Its releases and instance rows stay as history.
    pub(crate) fn forget_service(&self, project: &str, service: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM service_releases WHERE project = ?1 AND service = ?2",
            [project, service],
        )?;
        Ok(())
    }

    /// The id of the release a service runs, if it has been deployed.
    pub(crate) fn current(
        &self,
        project: &str,
        service: &str,
    ) -> Result<Option<String>, StoreError> {
        self.row(
            "SELECT release FROM service_releases WHERE project = ?1 AND service = ?2",
            [project, service],
            |row| row.get(0),
        )
    }

    /// The release each service of a project runs, by service name.
    pub fn current_all(&self, project: &str) -> Result<BTreeMap<String, String>, StoreError> {
        self.rows(
            "SELECT service, release FROM service_releases WHERE project = ?1",
            [project],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
    }

    /// Every (project, release) a service runs or an active instance was
    /// started for.
    pub(crate) fn running_releases(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.rows(
            &format!(
                "SELECT project, release FROM service_releases \
                 UNION SELECT project, release FROM instances WHERE {}",
                super::instances::ACTIVE
            ),
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
    }

    /// The release every service of every project runs: (project, service, release).
    pub(crate) fn current_everywhere(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        self.rows(
            "SELECT project, service, release FROM service_releases",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
    }

    /// The cutover of one service, in one transaction: the service now runs
    /// `release`, its `new` instances become `Live` and its `old` ones
    /// `Draining`. A crash leaves either all of it or none of it.
    ///
    /// Each new instance must belong to this service and release and still be
    /// active; each old one must belong to this service. Old instances that
    /// already stopped or failed keep that state.
    pub(crate) fn switch(
        &self,
        project: &str,
        service: &str,
        release: &str,
        new: &[String],
        old: &[String],
    ) -> Result<(), StoreError> {
        let reject = |reason: String| StoreError::Switch {
            project: project.to_owned(),
            service: service.to_owned(),
            release: release.to_owned(),
            reason,
        };
        let tx = self.conn.unchecked_transaction()?;
        let now = now_ms();
        for id in new {
            let found: Option<(String, String, String, bool)> = tx
                .query_row(
                    &format!(
                        "SELECT project, service, release, {ACTIVE} FROM instances WHERE id = ?1"
                    ),
                    [id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()?;
            let Some((p, s, r, active)) = found else {
                return Err(reject(format!("no instance `{id}`")));
            };
            if (p.as_str(), s.as_str(), r.as_str()) != (project, service, release) {
                return Err(reject(format!(
                    "new instance `{id}` runs {p}/{s} release `{r}`"
                )));
            }
            if !active {
                return Err(reject(format!("new instance `{id}` is no longer running")));
            }
            tx.execute(
                "UPDATE instances SET state = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, Named(InstanceState::Live), now],
            )?;
        }
        for id in old {
            let found: Option<(String, String)> = tx
                .query_row(
                    "SELECT project, service FROM instances WHERE id = ?1",
                    [id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            match found {
                None => return Err(reject(format!("no instance `{id}`"))),
                Some((p, s)) if (p.as_str(), s.as_str()) != (project, service) => {
                    return Err(reject(format!("old instance `{id}` belongs to {p}/{s}")));
                }
                Some(_) => {}
            }
            if new.contains(id) {
                return Err(reject(format!("instance `{id}` is both new and old")));
            }
            tx.execute(
                &format!(
                    "UPDATE instances SET state = ?2, updated_at = ?3 WHERE id = ?1 AND {ACTIVE}"
                ),
                params![id, Named(InstanceState::Draining), now],
            )?;
        }
        set_current(&tx, project, service, release)?;
        tx.commit()?;
        Ok(())
    }
}

pub(super) fn set_current(
    conn: &rusqlite::Connection,
    project: &str,
    service: &str,
    release: &str,
) -> Result<(), StoreError> {
    require_release(conn, project, release)?;
    conn.execute(
        "INSERT INTO service_releases (project, service, release, updated_at) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (project, service) DO UPDATE SET release = ?3, updated_at = ?4",
        params![project, service, release, now_ms()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::instances::tests::{add, state, store_with_releases};

    #[test]
    fn switch_sets_current_and_flips_new_to_live_and_old_to_draining() {
        let store = store_with_releases();
        add(&store, "old-1", "shop", "web", "r-1");
        add(&store, "old-2", "shop", "web", "r-1");
        add(&store, "new-1", "shop", "web", "r-2");
        store.set_current("shop", "web", "r-1").expect("current");
        store
            .set_instance_state("old-2", InstanceState::Failed)
            .expect("state");

        store
            .switch(
                "shop",
                "web",
                "r-2",
                &["new-1".to_owned()],
                &["old-1".to_owned(), "old-2".to_owned()],
            )
            .expect("switch");

        assert_eq!(
            store.current("shop", "web").expect("current").as_deref(),
            Some("r-2")
        );
        assert_eq!(state(&store, "new-1"), InstanceState::Live);
        assert_eq!(state(&store, "old-1"), InstanceState::Draining);
        assert_eq!(
            state(&store, "old-2"),
            InstanceState::Failed,
            "a failed instance stays failed"
        );
    }

    #[test]
    fn a_rejected_switch_changes_nothing() {
        let store = store_with_releases();
        add(&store, "old-1", "shop", "web", "r-1");
        add(&store, "new-1", "shop", "web", "r-2");
        add(&store, "worker-1", "shop", "worker", "r-2");
        store.set_current("shop", "web", "r-1").expect("current");

        // The valid new instance is flipped first; the foreign old one must undo it.
        let err = store
            .switch(
                "shop",
                "web",
                "r-2",
                &["new-1".to_owned()],
                &["old-1".to_owned(), "worker-1".to_owned()],
            )
            .expect_err("instance of another service");
        assert_eq!(err.code(), "cutover.rejected");
        assert!(err.to_string().contains("worker-1"), "{err}");
        assert_eq!(
            store.current("shop", "web").expect("current").as_deref(),
            Some("r-1")
        );
        assert_eq!(state(&store, "new-1"), InstanceState::Starting);
        assert_eq!(state(&store, "old-1"), InstanceState::Starting);

        store
            .set_instance_state("new-1", InstanceState::Failed)
            .expect("state");
        let err = store
            .switch("shop", "web", "r-2", &["new-1".to_owned()], &[])
            .expect_err("a failed new instance cannot take traffic");
        assert!(err.to_string().contains("no longer running"), "{err}");
        assert!(
            store
                .switch("shop", "web", "r-2", &["ghost".to_owned()], &[])
                .is_err()
        );
        assert_eq!(
            store.current("shop", "web").expect("current").as_deref(),
            Some("r-1")
        );
    }

    #[test]
    fn current_is_per_service_and_must_name_a_release_of_the_project() {
        let store = store_with_releases();
        assert_eq!(store.current("shop", "web").expect("current"), None);
        store.set_current("shop", "web", "r-2").expect("current");
        store.set_current("shop", "worker", "r-1").expect("current");
        store.set_current("blog", "app", "b-1").expect("current");
        let all = store.current_all("shop").expect("all");
        assert_eq!(
            all.into_iter().collect::<Vec<_>>(),
            [
                ("web".to_owned(), "r-2".to_owned()),
                ("worker".to_owned(), "r-1".to_owned())
            ]
        );
        let err = store
            .set_current("shop", "web", "b-1")
            .expect_err("release of another project");
        assert_eq!(err.code(), "release.not_found");
        assert!(store.set_current("shop", "web", "nope").is_err());
    }
}
