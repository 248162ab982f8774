//! Which environment-wide deployments each release stands for on this host
//! (`Release::deployments`): the deployment that made it, then any later one
//! that found the host already running it and made no new release.

use gantry_core::agent_api::{DeploymentMark, Release};
use rusqlite::params;

use super::releases::require_release;
use super::{Store, StoreError};

impl Store {
    /// Records that `deployment` left `release` running on this host. The
    /// same deployment recorded again (a retried request) changes nothing.
    pub(crate) fn mark_deployment(
        &self,
        project: &str,
        release: &str,
        deployment: &DeploymentMark,
    ) -> Result<(), StoreError> {
        require_release(&self.conn, project, release)?;
        self.conn.execute(
            "INSERT INTO release_deployments (project, release, deployment, at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (project, deployment) DO NOTHING",
            params![project, release, deployment.id, deployment.at],
        )?;
        Ok(())
    }

    /// Fills in each release's deployments, oldest first.
    pub(super) fn attach_deployments(&self, releases: &mut [Release]) -> Result<(), StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT deployment, at FROM release_deployments \
             WHERE project = ?1 AND release = ?2 ORDER BY at, deployment",
        )?;
        for release in releases {
            let rows = statement.query_map(params![release.project, release.id], |row| {
                Ok(DeploymentMark {
                    id: row.get(0)?,
                    at: row.get(1)?,
                })
            })?;
            release.deployments = rows.collect::<Result<_, _>>()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::releases::tests::release;

    fn mark(id: &str, at: u64) -> DeploymentMark {
        DeploymentMark {
            id: id.to_owned(),
            at,
        }
    }

    #[test]
    fn a_release_lists_the_deployments_that_made_and_kept_it() {
        let store = Store::open_in_memory().expect("store");
        store.insert_release(&release("shop", "r1", 1)).expect("r1");
        store.insert_release(&release("shop", "r2", 2)).expect("r2");
        // The last is a retried request of d3: it records nothing new.
        for (release, id, at) in [
            ("r1", "d1", 10),
            ("r2", "d2", 20),
            ("r2", "d3", 30),
            ("r2", "d3", 31),
        ] {
            store
                .mark_deployment("shop", release, &mark(id, at))
                .expect(id);
        }

        let all = store.releases("shop").expect("releases");
        let marks: Vec<(String, Vec<String>)> = all
            .iter()
            .map(|r| {
                (
                    r.id.clone(),
                    r.deployments.iter().map(|d| d.id.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            marks,
            [
                ("r2".to_owned(), vec!["d2".to_owned(), "d3".to_owned()]),
                ("r1".to_owned(), vec!["d1".to_owned()])
            ]
        );
        let one = store.release("shop", "r1").expect("query").expect("r1");
        assert_eq!(one.deployments, [mark("d1", 10)]);
        let err = store
            .mark_deployment("shop", "r9", &mark("d4", 40))
            .expect_err("no such release");
        assert_eq!(err.code(), "release.not_found");
    }
}
