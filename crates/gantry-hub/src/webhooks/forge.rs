//! What a forge's webhook says, read from GitHub's and Gitea's (and
//! Forgejo's, which is Gitea's) payloads into the few events the hub acts
//! on. Pure: the payload in, a [`ForgeEvent`] out. Payloads are read by
//! path, leniently, because forges add fields every release; what the hub
//! needs and does not find makes the event `Ignored` with the reason.

use serde_json::Value;

/// A forge that sends webhooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    Github,
    Gitea,
}

impl Forge {
    /// Every forge, in the order the hub names their paths.
    pub const ALL: [Forge; 2] = [Forge::Github, Forge::Gitea];

    pub fn as_str(self) -> &'static str {
        match self {
            Forge::Github => "github",
            Forge::Gitea => "gitea",
        }
    }

    pub fn parse(text: &str) -> Option<Forge> {
        Forge::ALL.into_iter().find(|f| f.as_str() == text)
    }

    /// The headers naming the event and the delivery.
    pub fn event_header(self) -> &'static str {
        match self {
            Forge::Github => "x-github-event",
            Forge::Gitea => "x-gitea-event",
        }
    }

    pub fn delivery_header(self) -> &'static str {
        match self {
            Forge::Github => "x-github-delivery",
            Forge::Gitea => "x-gitea-delivery",
        }
    }
}

/// A pull request as a payload describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    pub url: String,
    pub number: Option<i64>,
    pub title: Option<String>,
    pub branch: String,
    pub commit: Option<String>,
    pub draft: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrAction {
    /// Opened, reopened or marked ready.
    Opened,
    /// New commits, a new title, or made a draft.
    Updated,
    Merged,
    ClosedUnmerged,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForgeEvent {
    PullRequest {
        action: PrAction,
        pr: PullRequest,
        /// Who did it on the forge.
        sender: Option<String>,
    },
    /// A check, a check suite, a commit status or a workflow run failed.
    CheckFailed {
        branch: Option<String>,
        commit: Option<String>,
        name: String,
        summary: String,
        url: Option<String>,
    },
    Ignored(String),
}

/// The most of a check's summary a comment quotes.
const SUMMARY_MAX: usize = 4_000;

fn text(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

fn bounded(text: String) -> String {
    if text.chars().count() <= SUMMARY_MAX {
        return text;
    }
    let mut cut: String = text.chars().take(SUMMARY_MAX).collect();
    cut.push_str("\n…");
    cut
}

/// Whether a check's outcome is a failure worth a comment.
fn failed(conclusion: Option<&str>) -> bool {
    matches!(
        conclusion,
        Some("failure" | "timed_out" | "action_required" | "error" | "startup_failure")
    )
}

/// Reads the payload of `event` (the event header's value).
pub fn parse(event: &str, body: &[u8]) -> Result<ForgeEvent, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the payload is not JSON: {e}"))?;
    Ok(match event {
        "pull_request" => pull_request(&v),
        "check_run" => check(&v, "/check_run", "completed"),
        "check_suite" => check(&v, "/check_suite", "completed"),
        "workflow_run" => check(&v, "/workflow_run", "completed"),
        "status" => status(&v),
        "ping" => ForgeEvent::Ignored("ping".to_owned()),
        other => ForgeEvent::Ignored(format!(
            "event `{}` is not one the hub acts on",
            other.escape_debug()
        )),
    })
}

fn pull_request(v: &Value) -> ForgeEvent {
    let action = text(v, "/action").unwrap_or_default();
    let merged = v
        .pointer("/pull_request/merged")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let action = match action.as_str() {
        "opened" | "reopened" | "ready_for_review" => PrAction::Opened,
        "synchronize" | "synchronized" | "edited" | "converted_to_draft" => PrAction::Updated,
        "closed" if merged => PrAction::Merged,
        "closed" => PrAction::ClosedUnmerged,
        other => {
            return ForgeEvent::Ignored(format!(
                "pull request action `{}` changes nothing here",
                other.escape_debug()
            ));
        }
    };
    let (Some(url), Some(branch)) = (
        text(v, "/pull_request/html_url"),
        text(v, "/pull_request/head/ref"),
    ) else {
        return ForgeEvent::Ignored("the pull request has no html_url or head.ref".to_owned());
    };
    ForgeEvent::PullRequest {
        action,
        pr: PullRequest {
            url,
            number: v
                .pointer("/pull_request/number")
                .or_else(|| v.pointer("/number"))
                .and_then(Value::as_i64),
            title: text(v, "/pull_request/title"),
            branch,
            commit: text(v, "/pull_request/head/sha"),
            draft: v
                .pointer("/pull_request/draft")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        },
        sender: text(v, "/sender/login"),
    }
}

/// A check run, check suite or workflow run: under `root`, with a
/// `conclusion` once its action is `completed`.
fn check(v: &Value, root: &str, done: &str) -> ForgeEvent {
    let at = |path: &str| text(v, &format!("{root}{path}"));
    if text(v, "/action").as_deref() != Some(done) {
        return ForgeEvent::Ignored("the check has not completed".to_owned());
    }
    let conclusion = at("/conclusion");
    if !failed(conclusion.as_deref()) {
        return ForgeEvent::Ignored(format!(
            "the check concluded {}",
            conclusion.as_deref().unwrap_or("nothing")
        ));
    }
    let branch = at("/head_branch")
        .or_else(|| at("/check_suite/head_branch"))
        .or_else(|| at("/pull_requests/0/head/ref"));
    let name = at("/name")
        .or_else(|| at("/app/name"))
        .unwrap_or_else(|| root.trim_start_matches('/').replace('_', " "));
    let mut summary = String::new();
    for part in [at("/output/title"), at("/output/summary")]
        .into_iter()
        .flatten()
    {
        if !summary.is_empty() {
            summary.push_str("\n\n");
        }
        summary.push_str(part.trim());
    }
    if summary.is_empty() {
        summary = format!("concluded {}", conclusion.unwrap_or_default());
    }
    ForgeEvent::CheckFailed {
        branch,
        commit: at("/head_sha"),
        name,
        summary: bounded(summary),
        url: at("/html_url").or_else(|| at("/details_url")),
    }
}

/// A commit status (GitHub's, and Gitea's, which has no `branches`).
fn status(v: &Value) -> ForgeEvent {
    let state = text(v, "/state");
    if !failed(state.as_deref()) {
        return ForgeEvent::Ignored(format!(
            "the status is {}",
            state.as_deref().unwrap_or("nothing")
        ));
    }
    ForgeEvent::CheckFailed {
        branch: text(v, "/branches/0/name"),
        commit: text(v, "/sha"),
        name: text(v, "/context").unwrap_or_else(|| "status".to_owned()),
        summary: bounded(
            text(v, "/description")
                .unwrap_or_else(|| format!("state {}", state.unwrap_or_default())),
        ),
        url: text(v, "/target_url"),
    }
}

/// The item a branch names: `tracker-17`, `tracker-17-fix-login`, or
/// either after a `/` (`fix/tracker-17`).
pub fn item_in_branch(branch: &str) -> Option<i64> {
    branch.split('/').find_map(|segment| {
        let rest = segment.strip_prefix("tracker-")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let after = &rest[digits.len()..];
        if digits.is_empty() || digits.len() > 15 || !(after.is_empty() || after.starts_with('-')) {
            return None;
        }
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_name_items_by_their_tracker_prefix() {
        assert_eq!(item_in_branch("tracker-17"), Some(17));
        assert_eq!(item_in_branch("tracker-17-fix-the-login-page"), Some(17));
        assert_eq!(item_in_branch("fix/tracker-3"), Some(3));
        assert_eq!(item_in_branch("tracker-17x"), None);
        assert_eq!(item_in_branch("my-tracker-17"), None);
        assert_eq!(item_in_branch("tracker-"), None);
        assert_eq!(item_in_branch("main"), None);
    }

    #[test]
    fn a_merged_pull_request_is_told_from_a_closed_one() {
        let body = |merged: bool| {
            serde_json::json!({
                "action": "closed",
                "number": 5,
                "pull_request": {"html_url": "https://x/pr/5", "number": 5, "merged": merged,
                                 "head": {"ref": "tracker-1", "sha": "abc"}},
                "sender": {"login": "ann"}
            })
            .to_string()
        };
        let action = |merged| match parse("pull_request", body(merged).as_bytes()) {
            Ok(ForgeEvent::PullRequest { action, .. }) => Some(action),
            _ => None,
        };
        assert_eq!(action(true), Some(PrAction::Merged));
        assert_eq!(action(false), Some(PrAction::ClosedUnmerged));
    }

    #[test]
    fn only_failed_checks_are_events() {
        let run = |conclusion: &str| {
            serde_json::json!({"action": "completed", "check_run": {
                "name": "tests", "conclusion": conclusion, "head_sha": "abc",
                "check_suite": {"head_branch": "tracker-2"},
                "output": {"title": "2 failed", "summary": "test_a, test_b"}}})
            .to_string()
        };
        assert!(matches!(
            parse("check_run", run("success").as_bytes()),
            Ok(ForgeEvent::Ignored(_))
        ));
        match parse("check_run", run("failure").as_bytes()) {
            Ok(ForgeEvent::CheckFailed {
                branch,
                summary,
                name,
                ..
            }) => {
                assert_eq!(branch.as_deref(), Some("tracker-2"));
                assert_eq!(name, "tests");
                assert_eq!(summary, "2 failed\n\ntest_a, test_b");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse("check_run", b"{not json").is_err());
    }
}
