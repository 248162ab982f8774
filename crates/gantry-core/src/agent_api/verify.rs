//! A release's verify window (`deploy.verify`): the rule that tells a new
//! release failing in it, and how a release records the window its agent
//! watched. The rule is one function over a [`Status`], applied by the
//! agent (spec revision 7, which owns the window so a CLI that goes away
//! cannot leave a failing release live) and by the CLI for agents before it.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{InstanceState, Status};

/// How often a release's instances are looked at during its window.
pub const POLL: Duration = Duration::from_millis(250);

/// How the reason of a release that failed its window begins, as it is
/// recorded on the release the host went back from.
pub const FAILED_PREFIX: &str = "failed its verify window: ";

/// The verify window a deploy asked the agent to watch a release for, and
/// how it ended.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Verification {
    /// The window's length, in milliseconds.
    pub window_ms: u64,
    /// When it ends (Unix milliseconds).
    pub until: u64,
    pub state: VerifyState,
    /// With `failed`: the service whose instance failed.
    #[serde(default)]
    pub service: Option<String>,
    /// With `failed`: what happened and when, like "service `web`: instance
    /// web-1 exited with status 1 within its 5 s verify window".
    #[serde(default)]
    pub reason: Option<String>,
    /// With `failed`: the release the host went back to; absent when it had
    /// none or going back failed (`error` says which).
    #[serde(default)]
    pub back_to: Option<String>,
    /// With `failed`: why the host still runs the release.
    #[serde(default)]
    pub error: Option<String>,
}

impl Verification {
    /// A window of `window` that begins at `now` (Unix milliseconds).
    pub fn watching(window: Duration, now: u64) -> Verification {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        Verification {
            window_ms,
            until: now.saturating_add(window_ms),
            state: VerifyState::Watching,
            service: None,
            reason: None,
            back_to: None,
            error: None,
        }
    }

    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

/// Where a release's verify window stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyState {
    /// The agent is watching it.
    Watching,
    /// It ended with no instance of the release failing.
    Passed,
    /// An instance failed within it; the host went back to `back_to`.
    Failed,
    /// Another release replaced it on the host before it ended: no verdict.
    Superseded,
}

/// What went wrong with a release in its window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The service whose instance failed.
    pub service: String,
    /// Which instance, and how: "service `web`: instance web-1 exited with status 1".
    pub what: String,
}

impl Problem {
    /// Why the release failed, with its window: "... within its 5 s verify window".
    pub fn reason(&self, window: Duration) -> String {
        format!(
            "{} within its {} s verify window",
            self.what,
            window.as_secs_f32()
        )
    }
}

/// What is wrong with `release`'s instances of services other than
/// `unchanged` (carried over, not new), if anything: one that exited, was
/// restarted, or is live and failing its health check.
pub fn problem(status: &Status, release: &str, unchanged: &[String]) -> Option<Problem> {
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
                return Some(Problem {
                    service: service.name.clone(),
                    what: format!("service `{}`: instance {} {what}", service.name, i.id),
                });
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn status(instances: serde_json::Value) -> Status {
        serde_json::from_value(serde_json::json!({
            "project": "shop",
            "services": [{
                "name": "web",
                "state": "running",
                "release": "r2",
                "urls": [],
                "instances": instances,
                "limits": {"enforced": false, "via": "none"},
            }],
        }))
        .unwrap()
    }

    fn instance(id: &str, release: &str, state: &str, restarts: u32) -> serde_json::Value {
        serde_json::json!({
            "id": id, "service": "web", "release": release, "state": state,
            "healthy": state == "live", "restarts": restarts,
            "last_exit": {"code": 1, "at": 5},
        })
    }

    #[test]
    fn an_instance_of_the_release_that_exited_or_restarted_is_a_problem() {
        let crashed = status(serde_json::json!([
            instance("web-1", "r2", "live", 0),
            instance("web-2", "r2", "backoff", 0),
        ]));
        let found = problem(&crashed, "r2", &[]).unwrap();
        assert_eq!(found.service, "web");
        assert_eq!(
            found.reason(Duration::from_secs(5)),
            "service `web`: instance web-2 exited with status 1 within its 5 s verify window"
        );
        let restarted = status(serde_json::json!([instance("web-1", "r2", "live", 2)]));
        assert_eq!(
            problem(&restarted, "r2", &[]).unwrap().what,
            "service `web`: instance web-1 exited with status 1 and was restarted 2 times"
        );
    }

    #[test]
    fn instances_of_other_releases_and_of_unchanged_services_are_not_watched() {
        let old = status(serde_json::json!([instance("web-1", "r1", "backoff", 3)]));
        assert_eq!(problem(&old, "r2", &[]), None);
        let carried = status(serde_json::json!([instance("web-1", "r2", "live", 3)]));
        assert_eq!(problem(&carried, "r2", &["web".to_owned()]), None);
        let well = status(serde_json::json!([instance("web-1", "r2", "live", 0)]));
        assert_eq!(problem(&well, "r2", &[]), None);
    }
}
