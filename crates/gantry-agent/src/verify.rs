//! A new release's verify window, watched here rather than by the CLI, so
//! it holds whatever happens to the CLI or its link: a deploy that asked
//! for one (`DeployRequest::verify_ms`) opens it in the store before it
//! answers (`deploy`), and this watches the release until the deadline. An
//! instance that exits, is restarted or fails its health check meanwhile
//! (`agent_api::verify::problem`, the rule the CLI applies to older
//! agents) fails the window: the host goes back to the release before it
//! by the rollback a CLI would ask for (`rollback` with `reverts`: the
//! failed release recorded failed with why, the revert as a rollback).
//! A restarted agent takes up every window not over yet (`resume`).
//!
//! A newer deploy, rollback, stop or restart of the project ends the
//! window first (`Store::end_windows`, see `deploy::take_over`); a window
//! leaves `watching` only once, so the watch notices and stops.

use std::sync::Arc;
use std::time::Duration;

use gantry_core::agent_api::verify::{failure_reason, problem, reverted_reason};
use gantry_core::agent_api::{
    DeployRequest, DeployResult, Outcome, Reverted, RollbackRequest, VerifyFailure, VerifyState,
};

use crate::agent::{Agent, now_ms};
use crate::error::AgentError;
use crate::store::VerifyWindow;

/// How often the release's instances are looked at during the window.
const POLL: Duration = Duration::from_millis(250);

/// `POST /v1/projects/{project}/deploys`: the deploy, then the watch of
/// the window it opened, in a task of its own that outlives the request.
pub(crate) async fn deploy(
    agent: Arc<Agent>,
    project: &str,
    request: DeployRequest,
) -> Result<DeployResult, AgentError> {
    let result = crate::deploy::deploy_project(Arc::clone(&agent), project, request).await?;
    // A kept release's window, if it runs, is watched since the deploy
    // that made it.
    if !result.kept
        && let Some(verify) = &result.release.verify
        && verify.state == VerifyState::Watching
    {
        let window = VerifyWindow {
            project: project.to_owned(),
            release: result.release.id.clone(),
            verification: verify.clone(),
            unchanged: result.unchanged.clone(),
        };
        tokio::spawn(watch(agent, window));
    }
    Ok(result)
}

/// Takes up, at start-up, every window a stopped agent left open: one still
/// watched is watched until its deadline (one past it passes), and one that
/// had failed goes back again.
pub(crate) async fn resume(agent: &Arc<Agent>) {
    let open = match agent.db(|s| s.open_windows()).await {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the verify windows to resume");
            return;
        }
    };
    for window in open {
        tracing::info!(project = %window.project, release = %window.release, state = ?window.verification.state, "resuming a verify window");
        tokio::spawn(watch(Arc::clone(agent), window));
    }
}

/// Watches `window`'s release until its deadline, a problem, a newer
/// command that ends the window, or the agent's shutdown (the window stays
/// open in the store for the next agent).
async fn watch(agent: Arc<Agent>, window: VerifyWindow) {
    let mut shutdown = agent.shutdown.subscribe();
    let (project, release) = (window.project.clone(), window.release.clone());
    loop {
        let (p, r) = (project.clone(), release.clone());
        let now = match agent.db(move |s| s.window(&p, &r)).await {
            Ok(Some(now)) => now.verification,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%project, %release, error = %e, "cannot read the verify window");
                return;
            }
        };
        match now.state {
            VerifyState::Watching => {}
            VerifyState::Reverting => {
                if let Some(failure) = now.failure {
                    go_back(&agent, &window, failure).await;
                }
                return;
            }
            _ => return,
        }
        let left = now.until.saturating_sub(now_ms());
        if left == 0 {
            settle(
                &agent,
                &window,
                VerifyState::Watching,
                VerifyState::Passed,
                None,
            )
            .await;
            tracing::info!(%project, %release, "passed its verify window");
            return;
        }
        if let Some(failure) = failure(&agent, &window).await {
            tracing::warn!(%project, %release, reason = %failure.reason, "failed its verify window");
            let from = VerifyState::Watching;
            if settle(
                &agent,
                &window,
                from,
                VerifyState::Reverting,
                Some(&failure),
            )
            .await
            {
                go_back(&agent, &window, failure).await;
            }
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL.min(Duration::from_millis(left))) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// What is wrong with the window's release now, if anything, as the
/// failure to record.
async fn failure(agent: &Agent, window: &VerifyWindow) -> Option<VerifyFailure> {
    let services = crate::status::services(
        agent,
        &window.project,
        crate::status::ContainerMemory::Skipped,
    )
    .await
    .ok()?;
    let (service, problem) = problem(&services, &window.release, &window.unchanged)?;
    let reason = failure_reason(&problem, window.verification.window_ms);
    Some(VerifyFailure {
        service,
        message: reason.clone(),
        reason,
        went_back: false,
    })
}

/// Takes the host back to the release before the window's, the failed one
/// recorded failed with why, and records how that went.
async fn go_back(agent: &Arc<Agent>, window: &VerifyWindow, mut failure: VerifyFailure) {
    let reason = failure.reason.clone();
    match window.verification.previous.clone() {
        None => {
            failure.message = format!("{reason}; there is no earlier release to go back to");
        }
        Some(back) => {
            tracing::warn!(project = %window.project, release = %window.release, %back, "going back");
            let request = RollbackRequest {
                to: Some(back.clone()),
                // The secrets file keeps the values the deploy wrote.
                secrets: std::collections::BTreeMap::new(),
                deployment: None,
                reverts: Some(Reverted {
                    release: window.release.clone(),
                    reason: reverted_reason(&reason),
                }),
            };
            let project = window.project.clone();
            match crate::rollback::rollback(Arc::clone(agent), project, request).await {
                Ok(r) if r.release.outcome != Outcome::Failed => failure.went_back = true,
                Ok(r) => {
                    failure.message = format!(
                        "{reason}; going back to {back} failed too: {}",
                        r.release.reason.unwrap_or_default()
                    );
                }
                Err(e) => failure.message = format!("{reason}; going back to {back} failed: {e}"),
            }
        }
    }
    let (from, to) = (VerifyState::Reverting, VerifyState::Failed);
    settle(agent, window, from, to, Some(&failure)).await;
}

/// Moves the window from `from` to `to`; false when it was no longer in
/// `from` (a newer command ended it) or the store failed.
async fn settle(
    agent: &Agent,
    window: &VerifyWindow,
    from: VerifyState,
    to: VerifyState,
    failure: Option<&VerifyFailure>,
) -> bool {
    let (p, r, f) = (
        window.project.clone(),
        window.release.clone(),
        failure.cloned(),
    );
    match agent
        .db(move |s| s.settle_window(&p, &r, from, to, f.as_ref()))
        .await
    {
        Ok(moved) => moved,
        Err(e) => {
            tracing::warn!(project = %window.project, release = %window.release, error = %e, "cannot record the verify window's end");
            false
        }
    }
}
