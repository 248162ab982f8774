//! What each instance runs, as a digest (`fingerprint`): its service's spec,
//! its code (the artifact, or the image's id), the addresses it was given
//! and its secrets. A deploy whose service would run the same leaves the
//! running instances alone and carries them over to the new release.
//!
//! A fingerprint mixes in digests of secret values: it stays in this store
//! (0600, beside the secrets file itself) and is never reported.

use rusqlite::params;

use super::cutover::set_current;
use super::instances::ACTIVE;
use super::{Store, StoreError, now_ms};

impl Store {
    /// Records what an instance runs.
    pub(crate) fn set_fingerprint(&self, id: &str, fingerprint: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO instance_fingerprints (instance, fingerprint) VALUES (?1, ?2) \
             ON CONFLICT (instance) DO UPDATE SET fingerprint = ?2",
            params![id, fingerprint],
        )?;
        Ok(())
    }

    /// What an instance runs, if recorded (instances started by agents
    /// before fingerprints have none, and count as changed).
    pub(crate) fn fingerprint(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.row(
            "SELECT fingerprint FROM instance_fingerprints WHERE instance = ?1",
            [id],
            |row| row.get(0),
        )
    }

    /// An unchanged service, in one transaction: it now runs `release`
    /// with the instances it has (`ids`, active ones of the service), which
    /// keep running and now count as the release's.
    pub(crate) fn carry_over(
        &self,
        project: &str,
        service: &str,
        release: &str,
        ids: &[String],
    ) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        for id in ids {
            let moved = tx.execute(
                &format!(
                    "UPDATE instances SET release = ?4, updated_at = ?5 \
                     WHERE id = ?1 AND project = ?2 AND service = ?3 AND {ACTIVE}"
                ),
                params![id, project, service, release, now_ms()],
            )?;
            if moved == 0 {
                return Err(StoreError::Switch {
                    project: project.to_owned(),
                    service: service.to_owned(),
                    release: release.to_owned(),
                    reason: format!("instance `{id}` is no longer running"),
                });
            }
        }
        set_current(&tx, project, service, release)?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use gantry_core::agent_api::InstanceState;

    use crate::store::instances::tests::{add, store_with_releases};

    #[test]
    fn an_unchanged_service_carries_its_running_instances_over_to_the_new_release() {
        let store = store_with_releases();
        add(&store, "db-1", "shop", "db", "r-1");
        store.set_current("shop", "db", "r-1").expect("current");
        store.set_fingerprint("db-1", "f1").expect("fingerprint");
        assert_eq!(
            store.fingerprint("db-1").expect("query").as_deref(),
            Some("f1")
        );
        assert_eq!(store.fingerprint("db-9").expect("query"), None);

        store
            .carry_over("shop", "db", "r-2", &["db-1".to_owned()])
            .expect("carry over");
        let db = store.instance("db-1").expect("query").expect("found");
        assert_eq!(db.release, "r-2");
        assert_eq!(db.state, InstanceState::Starting, "its state is untouched");
        assert_eq!(
            store.current("shop", "db").expect("current").as_deref(),
            Some("r-2")
        );

        store
            .set_instance_state("db-1", InstanceState::Stopped)
            .expect("state");
        assert!(
            store
                .carry_over("shop", "db", "r-1", &["db-1".to_owned()])
                .is_err(),
            "a stopped instance is not carried over"
        );
        assert_eq!(
            store.current("shop", "db").expect("current").as_deref(),
            Some("r-2"),
            "a refused carry-over changes nothing"
        );
    }
}
