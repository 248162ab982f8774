//! A verified rollout: after a host's cutover, its new release is watched
//! for the environment's verify window (`deploy.verify`). An instance of it
//! that exits, is restarted, or fails its health check meanwhile sends that
//! host back to its previous release (recorded failed, with why) and stops
//! the rollout with `deploy.verify_failed`. With `deploy.canary`, the first
//! host goes alone, and the others only once its window has passed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::Error;
use crate::agent_api::{InstanceState, Outcome, Reverted, RollbackRequest, Status};
use crate::deploy::{HostDeploy, HostOutcome};
use crate::host::{Host, LogQuery};
use crate::progress::Progress;

/// How often the new release's instances are looked at during the window.
const POLL: Duration = Duration::from_millis(250);

/// The most lines of the failing service's log a revert's report carries.
const LOG_TAIL: usize = 40;

/// The rollout's groups of hosts: the first `alone` one at a time (those
/// that run a `migrate.pre`), the first alone too when `canary` (its window
/// passes before any other host is touched), then `batch` at a time.
pub(crate) fn batches<T>(placements: &[T], batch: usize, canary: bool, alone: usize) -> Vec<&[T]> {
    crate::release_tasks::batches(placements, alone.max(usize::from(canary)), batch)
}

/// What watching a host's new release needs.
pub(crate) struct Watch<'a> {
    pub project: &'a str,
    pub window: Duration,
    /// For the rollback, should the release fail its window.
    pub secrets: &'a BTreeMap<String, String>,
}

impl Watch<'_> {
    /// Watches the release `outcome` says the host now runs; if it fails
    /// its window, takes the host back to `outcome.previous` and says so
    /// in `outcome`.
    pub(crate) fn after_cutover(
        &self,
        agent: &dyn Host,
        outcome: &mut HostDeploy,
        progress: &dyn Progress,
    ) {
        let Some(release) = outcome.release.clone() else {
            return;
        };
        if self.window.is_zero() {
            return;
        }
        progress.step(&format!(
            "{}: watching {release} for {} s",
            agent.name(),
            self.window.as_secs_f32()
        ));
        let Some((service, problem)) = self.first_problem(agent, &release, &outcome.unchanged)
        else {
            return;
        };
        outcome.log_tail = log_tail(agent, self.project, &service);
        let reason = format!(
            "{problem} within its {} s verify window",
            self.window.as_secs_f32()
        );
        outcome.verify_failed = true;
        outcome.outcome = HostOutcome::Failed;
        let Some(back) = outcome.previous.clone() else {
            outcome.error = Some(format!(
                "{reason}; there is no earlier release to go back to"
            ));
            return;
        };
        progress.step(&format!("{}: {reason}; going back to {back}", agent.name()));
        let request = RollbackRequest {
            to: Some(back.clone()),
            secrets: self.secrets.clone(),
            reverts: Some(Reverted {
                release: release.clone(),
                reason: format!("failed its verify window: {reason}"),
            }),
            ..RollbackRequest::default()
        };
        outcome.error = Some(match agent.rollback(self.project, &request) {
            Ok(r) if r.release.outcome != Outcome::Failed => {
                outcome.outcome = HostOutcome::Reverted;
                outcome.release = Some(back.clone());
                reason
            }
            Ok(r) => format!(
                "{reason}; going back to {back} failed too: {}",
                r.release.reason.unwrap_or_default()
            ),
            Err(e) => format!("{reason}; going back to {back} failed: {e}"),
        });
    }

    /// The first sign, within the window, that `release` is not well (the
    /// service, and what is wrong); an agent that does not answer meanwhile
    /// is asked again.
    fn first_problem(
        &self,
        agent: &dyn Host,
        release: &str,
        unchanged: &[String],
    ) -> Option<(String, String)> {
        let deadline = Instant::now() + self.window;
        loop {
            if let Ok(status) = agent.status(self.project)
                && let Some(problem) = problem(&status, release, unchanged)
            {
                return Some(problem);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            std::thread::sleep(left.min(POLL));
        }
    }
}

/// The last lines `service` wrote on the host, for the report of its
/// revert (none when the agent cannot say).
fn log_tail(agent: &dyn Host, project: &str, service: &str) -> Vec<String> {
    let query = LogQuery {
        service: Some(service.to_owned()),
        since_ms: None,
        tail: Some(LOG_TAIL),
        follow: false,
    };
    let mut lines = Vec::new();
    let _ = agent.logs(project, &query, &mut |line| {
        lines.push(format!("{}: {}", line.instance, line.line));
        lines.len() < LOG_TAIL
    });
    lines
}

/// What is wrong with `release`'s instances of services other than
/// `unchanged` (carried over, not new), if anything: the service, and how.
fn problem(status: &Status, release: &str, unchanged: &[String]) -> Option<(String, String)> {
    let watched = status
        .services
        .iter()
        .filter(|s| !unchanged.contains(&s.name));
    for service in watched {
        for i in service.instances.iter().filter(|i| i.release == release) {
            let exit = i
                .last_exit
                .as_ref()
                .map_or_else(|| "exited".to_owned(), ToString::to_string);
            let what = match i.state {
                InstanceState::Backoff | InstanceState::Failed => Some(exit),
                _ if i.restarts > 0 => Some(format!(
                    "{exit} and was restarted {} time{}",
                    i.restarts,
                    if i.restarts == 1 { "" } else { "s" }
                )),
                InstanceState::Live if !i.healthy => Some("failed its health check".to_owned()),
                _ => None,
            };
            if let Some(what) = what {
                let problem = format!("service `{}`: instance {} {what}", service.name, i.id);
                return Some((service.name.clone(), problem));
            }
        }
    }
    None
}

/// The error of a rollout that stopped at host `at`, whose release failed
/// its verify window.
pub(crate) fn failed(project: &str, environment: &str, hosts: &[HostDeploy], at: usize) -> Error {
    let details = serde_json::json!({
        "project": project,
        "environment": environment,
        "hosts": hosts,
    });
    let stopped = crate::deploy::rollout_stopped(project, environment, None, hosts, at, details);
    let (reason, report) = match stopped {
        Error::DeployFailed { reason, report, .. } => (reason, report),
        other => (other.to_string(), Box::new(serde_json::Value::Null)),
    };
    // The host's `release` is now the one it went back to; the one that
    // failed is the one its deploy answered with.
    let failed = &hosts[at];
    Error::VerifyFailed {
        project: project.to_owned(),
        environment: environment.to_owned(),
        failed: Box::new(crate::FailedRelease {
            host: failed.host.clone(),
            release: failed.detail.as_ref().map(|(r, _)| r.id.clone()),
            log_tail: failed.log_tail.clone(),
        }),
        reason,
        report,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_goes_alone_and_the_rest_in_batches() {
        let hosts = [1, 2, 3, 4, 5];
        assert_eq!(
            batches(&hosts, 2, true, 0),
            [&[1][..], &[2, 3][..], &[4, 5][..]]
        );
        assert_eq!(
            batches(&hosts, 2, false, 0),
            [&[1, 2][..], &[3, 4][..], &[5][..]]
        );
        assert!(batches::<u8>(&[], 2, true, 0).is_empty());
    }
}
