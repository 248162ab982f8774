//! Verify windows: a new release watched after its cutover for as long as
//! the deploy asked (`Release::verify`). The window is a row with its
//! deadline, written in the transaction that records the release
//! succeeded, before the deploy answers; so an agent restarted inside it
//! resumes watching until the deadline, and one restarted after it does
//! nothing more. A window moves from `watching` only once, by a
//! conditional update: the watch's verdict and a newer command that ends
//! it cannot both win.

use gantry_core::agent_api::{Release, Verification, VerifyFailure, VerifyState};
use rusqlite::{Row, params};

use super::codec::{Json, Named, json};
use super::releases::require_release;
use super::{Store, StoreError};

/// A release's window, and what the watch needs beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyWindow {
    pub project: String,
    pub release: String,
    pub verification: Verification,
    /// Services the deploy left running (carried over, not new): not watched.
    pub unchanged: Vec<String>,
}

const COLUMNS: &str = "project, release, window_ms, until, previous, unchanged, state, failure";

impl Store {
    /// Saves what a deploy learned about `release` ([`Store::update_release`])
    /// and opens its window, if it has one, in one transaction.
    pub(crate) fn finish_release(
        &self,
        release: &Release,
        window: Option<&VerifyWindow>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        self.update_release(release)?;
        if let Some(window) = window {
            self.open_window(window)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records `window`, as it stands, for its release.
    fn open_window(&self, window: &VerifyWindow) -> Result<(), StoreError> {
        require_release(&self.conn, &window.project, &window.release)?;
        let v = &window.verification;
        let failure = v
            .failure
            .as_ref()
            .map(|f| json("verify failure", f))
            .transpose()?;
        self.conn.execute(
            &format!(
                "INSERT OR REPLACE INTO verify_windows ({COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                window.project,
                window.release,
                v.window_ms,
                v.until,
                v.previous,
                json("unchanged services", &window.unchanged)?,
                Named(v.state),
                failure,
            ],
        )?;
        Ok(())
    }

    /// Ends every window of `project` still watched (`ended`): a newer
    /// deploy, rollback, stop or restart wins over it. The releases whose
    /// windows it ended.
    pub(crate) fn end_windows(&self, project: &str) -> Result<Vec<String>, StoreError> {
        self.rows(
            "UPDATE verify_windows SET state = 'ended' \
             WHERE project = ?1 AND state = 'watching' RETURNING release",
            [project],
            |row| row.get(0),
        )
    }

    /// Moves `release`'s window from `from` to `to`, with `failure`; false
    /// when it was not in `from` any more (a newer command ended it).
    pub(crate) fn settle_window(
        &self,
        project: &str,
        release: &str,
        from: VerifyState,
        to: VerifyState,
        failure: Option<&VerifyFailure>,
    ) -> Result<bool, StoreError> {
        let failure = failure.map(|f| json("verify failure", f)).transpose()?;
        let changed = self.conn.execute(
            "UPDATE verify_windows SET state = ?4, failure = ?5 \
             WHERE project = ?1 AND release = ?2 AND state = ?3",
            params![project, release, Named(from), Named(to), failure],
        )?;
        Ok(changed > 0)
    }

    /// `release`'s window, if it has one.
    pub(crate) fn window(
        &self,
        project: &str,
        release: &str,
    ) -> Result<Option<VerifyWindow>, StoreError> {
        self.row(
            &format!("SELECT {COLUMNS} FROM verify_windows WHERE project = ?1 AND release = ?2"),
            [project, release],
            read_window,
        )
    }

    /// Every window not over yet (watched, or failed and going back), of
    /// every project: what a restarted agent takes up again.
    pub(crate) fn open_windows(&self) -> Result<Vec<VerifyWindow>, StoreError> {
        self.rows(
            &format!(
                "SELECT {COLUMNS} FROM verify_windows \
                 WHERE state IN ('watching', 'reverting') ORDER BY project, release"
            ),
            params![],
            read_window,
        )
    }

    /// Fills in each release's window, where it has one.
    pub(super) fn attach_windows(&self, releases: &mut [Release]) -> Result<(), StoreError> {
        for release in releases {
            release.verify = self
                .window(&release.project, &release.id)?
                .map(|w| w.verification);
        }
        Ok(())
    }
}

fn read_window(row: &Row<'_>) -> rusqlite::Result<VerifyWindow> {
    Ok(VerifyWindow {
        project: row.get("project")?,
        release: row.get("release")?,
        unchanged: row.get::<_, Json<_>>("unchanged")?.0,
        verification: Verification {
            window_ms: row.get("window_ms")?,
            until: row.get("until")?,
            state: row.get::<_, Named<_>>("state")?.0,
            previous: row.get("previous")?,
            failure: row.get::<_, Option<Json<_>>>("failure")?.map(|f| f.0),
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::releases::tests::release;

    /// `r2` of `shop`, watched for 8 s from `until - 8000`, going back to `r1`.
    pub(crate) fn window(until: u64) -> VerifyWindow {
        VerifyWindow {
            project: "shop".to_owned(),
            release: "r2".to_owned(),
            verification: Verification {
                window_ms: 8_000,
                until,
                state: VerifyState::Watching,
                previous: Some("r1".to_owned()),
                failure: None,
            },
            unchanged: vec!["worker".to_owned()],
        }
    }

    fn store_with_r2() -> Store {
        let store = Store::open_in_memory().expect("store");
        for (id, number) in [("r1", 1), ("r2", 2)] {
            store
                .insert_release(&release("shop", id, number))
                .expect(id);
        }
        store
    }

    #[test]
    fn a_window_is_kept_with_its_release_and_shown_on_it() {
        let store = store_with_r2();
        let mut r2 = release("shop", "r2", 2);
        r2.outcome = gantry_core::agent_api::Outcome::Succeeded;
        store
            .finish_release(&r2, Some(&window(5_000)))
            .expect("finish");
        assert_eq!(
            store.window("shop", "r2").expect("query"),
            Some(window(5_000))
        );
        let listed = store.releases("shop").expect("releases");
        assert_eq!(
            listed[0].verify.as_ref().map(|v| v.state),
            Some(VerifyState::Watching)
        );
        assert_eq!(
            listed[0].outcome,
            gantry_core::agent_api::Outcome::Succeeded
        );
        assert_eq!(listed[1].verify, None, "r1 was never watched");
        let one = store.release("shop", "2").expect("query").expect("r2");
        assert_eq!(one.verify.map(|v| v.until), Some(5_000));
        assert_eq!(store.open_windows().expect("open"), [window(5_000)]);
    }

    #[test]
    fn a_newer_command_ends_a_watched_window_and_the_watch_then_cannot_settle_it() {
        let store = store_with_r2();
        store
            .finish_release(&release("shop", "r2", 2), Some(&window(5_000)))
            .expect("finish");
        assert_eq!(store.end_windows("shop").expect("end"), ["r2"]);
        assert!(store.end_windows("shop").expect("again").is_empty());
        let failed = store
            .settle_window(
                "shop",
                "r2",
                VerifyState::Watching,
                VerifyState::Reverting,
                None,
            )
            .expect("settle");
        assert!(!failed, "the window had ended");
        let now = store.window("shop", "r2").expect("query").expect("kept");
        assert_eq!(now.verification.state, VerifyState::Ended);
        assert!(store.open_windows().expect("open").is_empty());
    }

    #[test]
    fn a_failed_window_records_how_and_is_open_until_the_host_went_back() {
        let store = store_with_r2();
        store
            .finish_release(&release("shop", "r2", 2), Some(&window(5_000)))
            .expect("finish");
        let failure = VerifyFailure {
            service: "web".to_owned(),
            reason: "it crashed".to_owned(),
            went_back: false,
            message: "it crashed".to_owned(),
        };
        let step = |from, to, failure: &VerifyFailure| {
            store
                .settle_window("shop", "r2", from, to, Some(failure))
                .expect("settle")
        };
        assert!(step(
            VerifyState::Watching,
            VerifyState::Reverting,
            &failure
        ));
        assert_eq!(store.open_windows().expect("open").len(), 1, "reverting");
        assert!(
            store.end_windows("shop").expect("end").is_empty(),
            "a revert under way is not ended"
        );
        let back = VerifyFailure {
            went_back: true,
            ..failure.clone()
        };
        assert!(step(VerifyState::Reverting, VerifyState::Failed, &back));
        let now = store.window("shop", "r2").expect("query").expect("kept");
        assert_eq!(now.verification.state, VerifyState::Failed);
        assert_eq!(now.verification.failure, Some(back));
        assert!(store.open_windows().expect("open").is_empty());
    }
}
