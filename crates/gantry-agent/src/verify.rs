//! Verify windows (`deploy.verify`), watched here so that they hold whoever
//! asked: a deploy that carried a window records it with its release
//! (`Verification`, `watching`) and wakes [`run`], which watches each such
//! release until its window ends. An instance of it that exits, restarts or
//! fails its health check meanwhile (`agent_api::verify::problem`, the rule
//! the CLI applies to older agents) sends the host back to the release that
//! succeeded before it, as the CLI's revert does: the release recorded
//! failed, with why. The verdict is written on the release, where a waiting
//! CLI reads it. Windows still watched when the agent stops are resumed when
//! it starts. A release no service runs any more is never gone back from.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_core::agent_api::verify::{FAILED_PREFIX, POLL, problem};
use gantry_core::agent_api::{
    Outcome, Release, Reverted, RollbackRequest, Status, Verification, VerifyState,
};
use tokio::sync::watch;
use tracing::Instrument;

use crate::agent::{Agent, now_ms};
use crate::{rollback, status};

/// Watches every release whose window is recorded as watched, at start and
/// whenever a deploy records one, until the agent stops.
pub(crate) async fn run(agent: Arc<Agent>, mut shutdown: watch::Receiver<bool>) {
    let watching: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        match agent.db(|s| s.verifying()).await {
            Ok(pending) => {
                for release in pending {
                    let key = (release.project.clone(), release.id.clone());
                    if !held(&watching).insert(key.clone()) {
                        continue;
                    }
                    let span = tracing::info_span!("verify", project = %key.0, release = %key.1);
                    let (agent, watching, stop) =
                        (Arc::clone(&agent), Arc::clone(&watching), shutdown.clone());
                    let task = async move {
                        watch(&agent, release, stop).await;
                        held(&watching).remove(&key);
                    };
                    tasks.spawn(task.instrument(span));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the verify windows to watch"),
        }
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            () = agent.verify_wake.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    // A window cut short here is resumed by the next agent.
    tasks.shutdown().await;
}

fn held<T>(set: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    set.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Watches `release` until its window ends, and records the verdict. A
/// problem recorded before the agent stopped (a revert it had begun) is
/// taken up again.
async fn watch(agent: &Arc<Agent>, release: Release, mut shutdown: watch::Receiver<bool>) {
    let Some(window) = release.verify.clone() else {
        return;
    };
    // The deploy that made the release may still be finishing (its
    // retention pass), and writes the release once more when it does.
    drop(agent.deploy_lock(&release.project).lock().await);
    let found = match (&window.service, &window.reason) {
        (Some(service), Some(reason)) => Found::Problem(service.clone(), reason.clone()),
        _ => match first_problem(agent, &release, &window, &mut shutdown).await {
            Some(found) => found,
            None => return,
        },
    };
    let verdict = match found {
        Found::Nothing => Verification {
            state: VerifyState::Passed,
            ..window
        },
        Found::Superseded => Verification {
            state: VerifyState::Superseded,
            ..window
        },
        Found::Problem(service, reason) => {
            tracing::warn!(%reason, "the release failed its verify window");
            // Written before going back: an agent stopped meanwhile takes it up again.
            let intent = Verification {
                service: Some(service),
                reason: Some(reason),
                ..window
            };
            if let Err(e) = record(agent, &release, intent.clone()).await {
                tracing::warn!(error = %e, "cannot record the verify window's problem");
            }
            go_back(agent, &release, intent).await
        }
    };
    tracing::info!(state = ?verdict.state, "verify window ended");
    if let Err(e) = record(agent, &release, verdict).await {
        tracing::warn!(error = %e, "cannot record the verify window's verdict");
    }
}

/// What a window found.
enum Found {
    /// It ended with every instance of the release well.
    Nothing,
    /// No service runs the release any more.
    Superseded,
    /// A service's instance failed: the service, and why.
    Problem(String, String),
}

/// Looks at the release's instances until its window ends; `None` when the
/// agent stops first.
async fn first_problem(
    agent: &Agent,
    release: &Release,
    window: &Verification,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Found> {
    // Carried over from the release before, not new: not watched.
    let unchanged: Vec<String> = release
        .phases
        .iter()
        .filter(|p| p.name == "unchanged")
        .filter_map(|p| p.service.clone())
        .collect();
    loop {
        if let Some(status) = status_now(agent, &release.project).await {
            if !status
                .services
                .iter()
                .any(|s| s.release.as_deref() == Some(release.id.as_str()))
            {
                return Some(Found::Superseded);
            }
            if let Some(found) = problem(&status, &release.id, &unchanged) {
                let reason = found.reason(window.window());
                return Some(Found::Problem(found.service, reason));
            }
        }
        let left = Duration::from_millis(window.until.saturating_sub(now_ms()));
        if left.is_zero() {
            return Some(Found::Nothing);
        }
        tokio::select! {
            () = tokio::time::sleep(left.min(POLL)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return None,
        }
    }
}

/// The project's status as the API would answer it (memory aside), or
/// `None` when the store cannot say: asked again at the next look.
async fn status_now(agent: &Agent, project: &str) -> Option<Status> {
    match status::services(agent, project, status::ContainerMemory::Skipped).await {
        Ok(services) => Some(Status {
            project: project.to_owned(),
            services,
            proxy_problem: None,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the status of the release's services");
            None
        }
    }
}

/// Takes the host back to the release that succeeded before `release`, as
/// the CLI's revert does (`release` recorded failed with why, the secrets
/// the host holds), and returns the verdict saying where it went.
async fn go_back(agent: &Arc<Agent>, release: &Release, failed: Verification) -> Verification {
    let reason = failed.reason.clone().unwrap_or_default();
    let (p, number) = (release.project.clone(), release.number);
    let before = agent
        .db(move |s| s.releases(&p))
        .await
        .map(|all| previous(&all, number).map(|r| r.id.clone()));
    let back = match before {
        Ok(Some(back)) => back,
        Ok(None) => {
            return Verification {
                state: VerifyState::Failed,
                error: Some("there is no earlier release to go back to".to_owned()),
                ..failed
            };
        }
        Err(e) => {
            return Verification {
                state: VerifyState::Failed,
                error: Some(format!("cannot find the release to go back to: {e}")),
                ..failed
            };
        }
    };
    if runs_elsewhere(agent, release).await {
        // Gone back already, before the agent stopped.
        return Verification {
            state: VerifyState::Failed,
            back_to: Some(back),
            ..failed
        };
    }
    // A deploy under way would refuse the rollback: it waits for it instead.
    drop(agent.deploy_lock(&release.project).lock().await);
    let request = RollbackRequest {
        to: Some(back.clone()),
        // Empty: the host keeps the secret values it holds.
        secrets: Default::default(),
        reverts: Some(Reverted {
            release: release.id.clone(),
            reason: format!("{FAILED_PREFIX}{reason}"),
        }),
        ..RollbackRequest::default()
    };
    let (back_to, error) =
        match rollback::rollback(Arc::clone(agent), release.project.clone(), request).await {
            Ok(r) if r.release.outcome != Outcome::Failed => (Some(back), None),
            Ok(r) => (
                None,
                Some(format!(
                    "going back to {back} failed too: {}",
                    r.release.reason.unwrap_or_default()
                )),
            ),
            Err(e) => (None, Some(format!("going back to {back} failed: {e}"))),
        };
    Verification {
        state: VerifyState::Failed,
        back_to,
        error,
        ..failed
    }
}

/// The newest release that succeeded before release number `number`, of
/// `releases` (newest first): the one its deploy replaced.
fn previous(releases: &[Release], number: u64) -> Option<&Release> {
    releases
        .iter()
        .find(|r| r.number < number && r.outcome == Outcome::Succeeded)
}

/// Whether no service of the project runs `release` any more.
async fn runs_elsewhere(agent: &Agent, release: &Release) -> bool {
    let p = release.project.clone();
    agent
        .db(move |s| s.current_all(&p))
        .await
        .is_ok_and(|current| !current.values().any(|id| *id == release.id))
}

/// Writes `verify` on the release as the store has it now (a revert has
/// marked it failed meanwhile).
async fn record(
    agent: &Agent,
    release: &Release,
    verify: Verification,
) -> Result<(), crate::store::StoreError> {
    let (p, id) = (release.project.clone(), release.id.clone());
    agent
        .db(move |s| {
            let Some(mut now) = s.release(&p, &id)? else {
                return Ok(());
            };
            now.verify = Some(verify);
            s.update_release(&now)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(number: u64, outcome: Outcome) -> Release {
        let mut release = crate::store::test_release(number);
        release.outcome = outcome;
        release
    }

    #[test]
    fn a_failed_window_goes_back_to_the_newest_release_that_succeeded_before_it() {
        let releases = [
            release(4, Outcome::Succeeded),
            release(3, Outcome::Succeeded),
            release(2, Outcome::Failed),
            release(1, Outcome::Succeeded),
        ];
        assert_eq!(previous(&releases, 4).map(|r| r.id.as_str()), Some("r3"));
        assert_eq!(previous(&releases, 3).map(|r| r.id.as_str()), Some("r1"));
        assert_eq!(previous(&releases, 1).map(|r| r.id.as_str()), None);
    }
}
