//! A release's verify window on the wire: how long a host watches a new
//! release after its cutover, how the watch ended, and the one rule of what
//! counts as failing it. The agent watches (spec revision 7, so the window
//! holds whatever happens to the CLI); a CLI talking to an older agent
//! applies the same rule to the agent's `status` itself.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{InstanceState, ServiceStatus};

/// A release's verify window as the agent keeps it: part of the release
/// record (`Release::verify`) from its cutover on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Verification {
    /// How long the release is watched after its cutover, in milliseconds.
    pub window_ms: u64,
    /// When the window ends (Unix milliseconds).
    pub until: u64,
    pub state: VerifyState,
    /// The release the host goes back to should this one fail: the newest
    /// that had succeeded before it. None: there is nothing to go back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// With `reverting` and `failed`: what failed, and how going back went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<VerifyFailure>,
}

/// Where a verify window stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyState {
    /// The agent watches the release until `until`.
    Watching,
    /// It failed; the host is going back to `previous`.
    Reverting,
    /// The window passed with nothing wrong.
    Passed,
    /// It failed (`failure` says how, and whether the host went back).
    Failed,
    /// A newer deploy, rollback, stop or restart of the project ended the
    /// window early; the release counts as passed.
    Ended,
}

impl VerifyState {
    /// Whether the watch is over: nothing about it changes any more.
    pub fn is_final(self) -> bool {
        !matches!(self, VerifyState::Watching | VerifyState::Reverting)
    }
}

/// How a release failed its window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VerifyFailure {
    /// The service whose instance failed.
    pub service: String,
    /// What happened, as [`failure_reason`] words it.
    pub reason: String,
    /// The host runs `previous` again.
    pub went_back: bool,
    /// The reason and, when the host could not go back, why: what the
    /// deploy reports.
    pub message: String,
}

/// What is wrong with `release`'s instances of services other than
/// `unchanged` (carried over, not new), if anything: the service, and how.
/// An instance that exited, was restarted, or is live and unhealthy fails
/// the window.
pub fn problem(
    services: &[ServiceStatus],
    release: &str,
    unchanged: &[String],
) -> Option<(String, String)> {
    let watched = services.iter().filter(|s| !unchanged.contains(&s.name));
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

/// Why a release failed its window of `window_ms`, from its [`problem`].
pub fn failure_reason(problem: &str, window_ms: u64) -> String {
    // As `Duration::as_secs_f32` shows it: "15 s", "0.5 s".
    let seconds = std::time::Duration::from_millis(window_ms).as_secs_f32();
    format!("{problem} within its {seconds} s verify window")
}

/// The reason a reverted release is recorded failed with.
pub fn reverted_reason(reason: &str) -> String {
    format!("failed its verify window: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_worded_in_seconds_as_the_config_gives_it() {
        assert_eq!(
            failure_reason("service `web`: instance web-1 exited", 15_000),
            "service `web`: instance web-1 exited within its 15 s verify window"
        );
        assert_eq!(failure_reason("x", 500), "x within its 0.5 s verify window");
    }

    #[test]
    fn only_a_window_that_passed_failed_or_ended_is_over() {
        assert!(!VerifyState::Watching.is_final());
        assert!(!VerifyState::Reverting.is_final());
        for over in [VerifyState::Passed, VerifyState::Failed, VerifyState::Ended] {
            assert!(over.is_final(), "{over:?}");
        }
    }
}
