//! A verified rollout: after a host's cutover, its new release is watched
//! for the environment's verify window (`deploy.verify`). An instance of it
//! that exits, is restarted, or fails its health check meanwhile sends that
//! host back to its previous release (recorded failed, with why) and stops
//! the rollout with `deploy.verify_failed`. With `deploy.canary`, the first
//! host goes alone, and the others only once its window has passed.
//!
//! An agent of spec revision 7 watches the window itself (the deploy
//! request carries it), so a CLI that dies or loses its link meanwhile
//! leaves no failing release live: here the CLI only waits for its verdict.
//! For older agents the CLI watches, with the same rule
//! (`agent_api::verify::problem`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::Error;
use crate::agent_api::verify::{FAILED_PREFIX, POLL, Problem};
use crate::agent_api::{Outcome, Reverted, RollbackRequest, Verification, VerifyState};
use crate::config::resolve::Service;
use crate::deploy::{HostDeploy, HostOutcome};
use crate::host::{Host, LogQuery};
use crate::progress::Progress;

/// The most lines of the failing service's log a revert's report carries.
const LOG_TAIL: usize = 40;

/// The least time past its window an agent that watches a release gets to
/// give its verdict ([`verdict_grace`] adds the services' own).
const VERDICT_GRACE: Duration = Duration::from_secs(120);

/// The most time past its window the CLI waits for a verdict, however long
/// the services say going back may take.
const VERDICT_GRACE_MAX: Duration = Duration::from_secs(3600);

/// How long an agent may stay out of reach before the CLI stops waiting
/// for its verdict (and reports the host unreachable): the agent goes on
/// judging the window without it.
pub(crate) const OUT_OF_REACH_MAX: Duration = Duration::from_secs(120);

/// How long past its window an agent that watches a release of `services`
/// gets to give its verdict. Going back is a deploy of the previous
/// release, one service after another: each replica stops (up to its
/// `stop_timeout`), starts, and passes its health check (up to its start
/// period and every retry) before the next. A long revert is reported as
/// one, not as an agent that gave no verdict; at most [`VERDICT_GRACE_MAX`].
pub(crate) fn verdict_grace(services: &[Service]) -> Duration {
    // Saturating: gantry.toml may give any duration and count.
    services
        .iter()
        .fold(VERDICT_GRACE, |grace, s| {
            let health = s.health.as_ref().map_or(Duration::ZERO, |h| {
                let check = h.interval.as_std().saturating_add(h.timeout.as_std());
                let checks = check.saturating_mul(h.retries.saturating_add(1));
                h.start_period.as_std().saturating_add(checks)
            });
            let each = s.stop_timeout.as_std().saturating_add(health);
            grace.saturating_add(each.saturating_mul(s.replicas.max(1)))
        })
        .min(VERDICT_GRACE_MAX)
}

/// The rollout's groups of hosts: the first `alone` one at a time (those
/// that run a `migrate.pre`), the first alone too when `canary` (its window
/// passes before any other host is touched), then `batch` at a time.
pub(crate) fn batches<T>(placements: &[T], batch: usize, canary: bool, alone: usize) -> Vec<&[T]> {
    crate::release_tasks::batches(placements, alone.max(usize::from(canary)), batch)
}

/// Whether `agent` watches a verify window itself (spec revision 7), so the
/// deploy request carries the window instead of the CLI watching it.
pub(crate) fn agent_watches(agent: &dyn Host, window: Duration) -> bool {
    !window.is_zero()
        && agent
            .info()
            .is_ok_and(|info| info.spec_version >= crate::agent_api::v1::VERIFY_REVISION)
}

/// What watching a host's new release needs.
pub(crate) struct Watch<'a> {
    pub project: &'a str,
    pub window: Duration,
    /// For the rollback, should the release fail its window.
    pub secrets: &'a BTreeMap<String, String>,
    /// The agent watches the window itself: wait for its verdict.
    pub by_agent: bool,
    /// How long past the window to wait for it ([`verdict_grace`]).
    pub grace: Duration,
    /// How long the agent may be out of reach meanwhile
    /// ([`OUT_OF_REACH_MAX`]).
    pub out_of_reach: Duration,
}

impl Watch<'_> {
    /// Watches the release `outcome` says the host now runs, or waits for
    /// its agent's verdict on it; if it fails its window, the host goes
    /// back to `outcome.previous`, and `outcome` says so.
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
        if self.by_agent {
            self.take_verdict(agent, &release, outcome, progress);
            return;
        }
        let Some(problem) = self.first_problem(agent, &release, &outcome.changes.unchanged) else {
            return;
        };
        let reason = problem.reason(self.window);
        outcome.log_tail = log_tail(agent, self.project, &problem.service);
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
                reason: format!("{FAILED_PREFIX}{reason}"),
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

    /// The first sign, within the window, that `release` is not well; an
    /// agent that does not answer meanwhile is asked again.
    fn first_problem(
        &self,
        agent: &dyn Host,
        release: &str,
        unchanged: &[String],
    ) -> Option<Problem> {
        let deadline = Instant::now().checked_add(self.window);
        loop {
            if let Ok(status) = agent.status(self.project)
                && let Some(problem) =
                    crate::agent_api::verify::problem(&status, release, unchanged)
            {
                return Some(problem);
            }
            let left = time_left(deadline);
            if left.is_zero() {
                return None;
            }
            std::thread::sleep(left.min(POLL));
        }
    }

    /// Waits for the agent's verdict on `release`'s window and reports it
    /// in `outcome` as a window the CLI watched would be.
    fn take_verdict(
        &self,
        agent: &dyn Host,
        release: &str,
        outcome: &mut HostDeploy,
        progress: &dyn Progress,
    ) {
        let verdict = match self.verdict(agent, release) {
            Ok(verdict) => verdict,
            Err(lost) => {
                outcome.outcome = if lost {
                    HostOutcome::Unreachable
                } else {
                    HostOutcome::Failed
                };
                let waited = if lost {
                    "went out of reach".to_owned()
                } else {
                    let waited = self.window.saturating_add(self.grace);
                    format!("gave no verdict within {} s", waited.as_secs())
                };
                outcome.error = Some(format!(
                    "{} {waited} on the verify window of {release}, which it goes on judging; `gantry status` and `gantry releases` tell how it ended",
                    agent.name(),
                ));
                return;
            }
        };
        match verdict.state {
            VerifyState::Passed | VerifyState::Watching => {}
            VerifyState::Superseded => {
                outcome.outcome = HostOutcome::Failed;
                outcome.error = Some(format!(
                    "another release replaced {release} on {} before its verify window ended",
                    agent.name()
                ));
            }
            VerifyState::Failed => {
                let reason = verdict.reason.unwrap_or_default();
                if let Some(service) = &verdict.service {
                    outcome.log_tail = log_tail(agent, self.project, service);
                }
                outcome.verify_failed = true;
                outcome.outcome = HostOutcome::Failed;
                outcome.error = Some(match verdict.back_to {
                    Some(back) => {
                        progress.step(&format!("{}: {reason}; went back to {back}", agent.name()));
                        outcome.outcome = HostOutcome::Reverted;
                        outcome.release = Some(back);
                        reason
                    }
                    None => format!("{reason}; {}", verdict.error.unwrap_or_default()),
                });
            }
        }
    }

    /// The agent's verdict on `release`'s window, asked until it has one;
    /// none within the window and the grace, or with the agent out of reach
    /// for `out_of_reach`: whether the agent could not be reached
    /// when last asked.
    fn verdict(&self, agent: &dyn Host, release: &str) -> Result<Verification, bool> {
        let deadline = Instant::now().checked_add(self.window.saturating_add(self.grace));
        let mut lost_since = None;
        loop {
            let lost = match agent.release(self.project, release) {
                Ok(r) => match r.verify {
                    Some(v) if v.state != VerifyState::Watching => return Ok(v),
                    _ => false,
                },
                Err(e) => !matches!(e, crate::host::HostError::Api { .. }),
            };
            let since = lost.then(|| *lost_since.get_or_insert_with(Instant::now));
            lost_since = since;
            let left = time_left(deadline);
            if left.is_zero() || since.is_some_and(|at| at.elapsed() >= self.out_of_reach) {
                return Err(lost);
            }
            std::thread::sleep(left.min(POLL));
        }
    }
}

/// The time until `deadline`; none is a wait longer than the clock holds,
/// which never ends.
fn time_left(deadline: Option<Instant>) -> Duration {
    deadline.map_or(Duration::MAX, |at| {
        at.saturating_duration_since(Instant::now())
    })
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

    fn services(toml: &str) -> Vec<Service> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gantry.toml");
        std::fs::write(&path, toml).expect("write gantry.toml");
        let config = crate::config::load_named(&path, "gantry.toml").expect("a valid config");
        let env = config.environment("local").expect("the local environment");
        env.services.into_values().collect()
    }

    /// An agent out of reach while it judges the window is reported so
    /// once it has been for `out_of_reach`, not waited on for the grace.
    #[test]
    fn an_agent_out_of_reach_in_its_window_is_reported_unreachable_without_waiting_out_the_grace() {
        use crate::fake::{Fleet, NEW_RELEASE, Script};
        let lost = Script {
            watches_verify: true,
            verdict_lost: true,
            ..Script::default()
        };
        let fleet = Fleet::new([("h1", lost)]);
        let host = crate::config::resolve::Host {
            name: "h1".to_owned(),
            reach: crate::config::resolve::Reach::Local,
        };
        let agent = fleet.connect(&host).expect("the fake host");
        let watch = Watch {
            project: "shop",
            window: Duration::from_millis(100),
            secrets: &BTreeMap::new(),
            by_agent: true,
            grace: VERDICT_GRACE_MAX,
            out_of_reach: Duration::from_millis(300),
        };
        let mut outcome = HostDeploy::on("h1", HostOutcome::Deployed, Some("r1".to_owned()));
        outcome.release = Some(NEW_RELEASE.to_owned());
        watch.after_cutover(agent.as_ref(), &mut outcome, &crate::progress::Silent);
        assert_eq!(outcome.outcome, HostOutcome::Unreachable);
        let error = outcome.error.unwrap_or_default();
        assert!(
            error.starts_with(
                "h1 went out of reach on the verify window of r2, which it goes on judging"
            ),
            "{error}"
        );
    }

    /// The wait for an agent's verdict covers going back through every
    /// service: a slow starter, or one with many replicas, waits longer.
    #[test]
    fn the_wait_for_a_verdict_grows_with_what_going_back_restarts() {
        let quick = services(
            "[project]\nname = \"shop\"\n\n[services.web]\nrun = \"bin/web\"\nport = \"http\"\nstop_timeout = \"5s\"\n",
        );
        assert_eq!(
            verdict_grace(&quick),
            VERDICT_GRACE + Duration::from_secs(5)
        );
        let slow = services(concat!(
            "[project]\nname = \"shop\"\n\n[services.web]\nrun = \"bin/web\"\nport = \"http\"\n",
            "replicas = 2\nstop_timeout = \"5s\"\n",
            "health = { path = \"/up\", interval = \"2s\", timeout = \"1s\", retries = 3, start_period = \"300s\" }\n",
        ));
        // Per replica: 5 s to stop, 300 s to start, 4 × (2 + 1) s of checks.
        assert_eq!(
            verdict_grace(&slow),
            VERDICT_GRACE + Duration::from_secs(2 * (5 + 300 + 12))
        );
        // Whatever the file says (the most it takes), the sum does not
        // overflow, and the CLI waits at most an hour.
        let endless = services(concat!(
            "[project]\nname = \"shop\"\n\n[services.web]\nrun = \"bin/web\"\nport = \"http\"\n",
            "replicas = 1000\nstop_timeout = \"365d\"\n",
            "health = { path = \"/up\", interval = \"365d\", retries = 4000000000 }\n",
        ));
        assert_eq!(verdict_grace(&endless), VERDICT_GRACE_MAX);
    }

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
