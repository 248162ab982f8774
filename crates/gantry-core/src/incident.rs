//! Reporting a failure to the project's tracker hub (`[hub]` in
//! gantry.toml): a failed deploy, or a service that keeps failing (given up
//! on after its restarts, or live but failing its health check, as `gantry
//! status` finds it), files an `auto_detected` bug with the host, release,
//! error code and log tail, or, when a bug for the same cause is still
//! open, comments on it. The cause is a fingerprint of the project,
//! environment, error code and (for a service) the service, kept as a
//! label on the bug, so the hub finds it again. The hub itself sits behind [`Tracker`],
//! which the binary implements over HTTP; reporting never fails a deploy
//! further: its own failures come back as text for a warning.

mod seen;

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::agent_api::{Instance, InstanceState, ServiceState, ServiceStatus};
use crate::config::model::HubLink;

/// A failure worth a bug.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incident {
    pub project: String,
    pub environment: String,
    /// `deploy.failed`, `deploy.build_failed`, ...
    pub code: String,
    pub message: String,
    pub host: Option<String>,
    pub release: Option<String>,
    pub log_tail: Vec<String>,
    /// The failing service, for a service's failure (not a deploy's).
    pub service: Option<String>,
}

/// The code of a service that keeps failing: an instance given up on after
/// its restarts, waiting to be restarted, or live but failing its health
/// check. One code for all three, so a crash loop that ends given up on is
/// one cause, commented on as it goes.
pub const SERVICE_FAILING: &str = "service.failing";

/// What the hub said it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reported {
    /// A new bug, by its reference (`SHOP-42`).
    Filed(String),
    /// A comment on the open bug of the same cause.
    Commented(String),
}

/// `filed SHOP-42`, `commented on SHOP-42, open for the same failure`.
impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reported::Filed(item) => write!(f, "filed {item}"),
            Reported::Commented(item) => {
                write!(f, "commented on {item}, open for the same failure")
            }
        }
    }
}

/// The hub's agent API, as reporting needs it.
pub trait Tracker {
    /// The open (or in progress) item carrying `label`, if any.
    fn open_with_label(&self, label: &str) -> Result<Option<String>, String>;
    /// Files a bug; its reference.
    fn file_bug(&self, bug: &Bug) -> Result<String, String>;
    fn comment(&self, reference: &str, body: &str) -> Result<(), String>;
    /// Marks the items whose linked pull request is at one of `commits` as
    /// fixed in `version`; their references.
    fn shipped(&self, version: &str, commits: &[String]) -> Result<Vec<String>, String>;
}

/// A bug as filed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bug {
    pub product: Option<String>,
    pub title: String,
    pub description: String,
    pub environment: String,
    pub affected_version: Option<String>,
    /// The cause's label: `gantry-<16 hex>`.
    pub label: String,
}

/// The most log lines a report carries.
const LOG_LINES: usize = 40;

impl Incident {
    /// From a failed deploy's error.
    pub fn of_deploy(project: &str, environment: &str, error: &Error) -> Incident {
        let (host, release, log_tail) = match error {
            Error::DeployFailed {
                release,
                log_tail,
                report,
                ..
            } => (
                failing_host(report),
                Some(release.clone()),
                log_tail.clone(),
            ),
            Error::VerifyFailed { failed, .. } => (
                Some(failed.host.clone()),
                failed.release.clone(),
                failed.log_tail.clone(),
            ),
            _ => (None, None, Vec::new()),
        };
        Incident {
            project: project.to_owned(),
            environment: environment.to_owned(),
            code: error.code().as_str().to_owned(),
            message: error.to_string(),
            host,
            release,
            log_tail,
            service: None,
        }
    }

    /// From a service as `gantry status` reports it: an incident when it
    /// keeps failing (`failed`, or `degraded` with an instance unhealthy or
    /// in backoff), none when it runs, starts or was stopped.
    pub fn of_service(
        project: &str,
        environment: &str,
        host: &str,
        service: &ServiceStatus,
    ) -> Option<Incident> {
        let failing = |i: &&Instance| {
            matches!(i.state, InstanceState::Failed | InstanceState::Backoff)
                || (i.state == InstanceState::Live && !i.healthy)
        };
        let keeps_failing = match service.state {
            ServiceState::Failed => true,
            ServiceState::Degraded => service.instances.iter().any(|i| failing(&i)),
            _ => false,
        };
        if !keeps_failing {
            return None;
        }
        let instance = service.instances.iter().find(failing);
        let mut message = match &service.reason {
            Some(reason) => format!("Service `{}`: {reason}", service.name),
            None => format!("Service `{}` keeps failing.", service.name),
        };
        for i in service.instances.iter().filter(failing) {
            message.push_str(&format!("\n- {}", instance_line(i)));
        }
        Some(Incident {
            project: project.to_owned(),
            environment: environment.to_owned(),
            code: SERVICE_FAILING.to_owned(),
            message,
            host: Some(
                instance
                    .and_then(|i| i.host.clone())
                    .unwrap_or_else(|| host.to_owned()),
            ),
            release: service
                .release
                .clone()
                .or_else(|| instance.map(|i| i.release.clone())),
            log_tail: service.log_tail.clone(),
            service: Some(service.name.clone()),
        })
    }

    /// What stays the same between two looks at the same failure: the
    /// release and each failing instance with its restarts and last exit.
    /// `gantry status` reports again only when it changed.
    pub fn signature(&self) -> String {
        let digest = Sha256::digest(
            format!(
                "{:?}\0{}",
                self.release,
                self.message.lines().skip(1).collect::<Vec<_>>().join("\n")
            )
            .as_bytes(),
        );
        crate::artifact::hex(&digest)[..16].to_owned()
    }

    /// The same for every failure of one cause: not the release, the host
    /// or the wording, which change from one attempt to the next.
    pub fn label(&self) -> String {
        let mut hash = Sha256::new();
        for part in [&self.project, &self.environment, &self.code] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        // A deploy's cause has no service, so its label is as it was.
        if let Some(service) = &self.service {
            hash.update(service.as_bytes());
            hash.update([0]);
        }
        let digest = crate::artifact::hex(&hash.finalize());
        format!("gantry-{}", &digest[..16])
    }

    fn details(&self) -> String {
        let mut text = format!(
            "- Project: {}\n- Environment: {}\n- Error code: `{}`\n",
            self.project, self.environment, self.code
        );
        if let Some(service) = &self.service {
            text.push_str(&format!("- Service: {service}\n"));
        }
        if let Some(host) = &self.host {
            text.push_str(&format!("- Host: {host}\n"));
        }
        if let Some(release) = &self.release {
            text.push_str(&format!("- Release: {release}\n"));
        }
        text.push_str(&format!("\n{}\n", self.message));
        if !self.log_tail.is_empty() {
            let start = self.log_tail.len().saturating_sub(LOG_LINES);
            text.push_str(&format!(
                "\nLog tail:\n\n```\n{}\n```\n",
                self.log_tail[start..].join("\n")
            ));
        }
        text
    }

    pub fn bug(&self, product: Option<&str>) -> Bug {
        let (title, filed_when) = match &self.service {
            Some(service) => (
                format!(
                    "Service {service} of {} in {} keeps failing: {}",
                    self.project, self.environment, self.code
                ),
                "a service kept failing",
            ),
            None => (
                format!(
                    "Deploy of {} to {} failed: {}",
                    self.project, self.environment, self.code
                ),
                "a deploy failed",
            ),
        };
        let title: String = title.chars().take(200).collect();
        Bug {
            product: product.map(str::to_owned),
            title,
            description: format!("Filed by gantry when {filed_when}.\n\n{}", self.details()),
            environment: self.environment.chars().take(64).collect(),
            affected_version: self.release.clone().map(|r| r.chars().take(64).collect()),
            label: self.label(),
        }
    }
}

/// `web-1 on h1: live, unhealthy, 4 restarts, last exit: ...`.
fn instance_line(i: &Instance) -> String {
    let state = serde_json::to_value(i.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut line = i.id.clone();
    if let Some(host) = &i.host {
        line.push_str(&format!(" on {host}"));
    }
    line.push_str(&format!(": {state}"));
    if i.state == InstanceState::Live && !i.healthy {
        line.push_str(", failing its health check");
    }
    line.push_str(&format!(", {} restarts", i.restarts));
    if let Some(exit) = &i.last_exit {
        line.push_str(&format!(", last exit: {exit}"));
    }
    line
}

/// The host a failed deploy's report names as reverted or failed.
fn failing_host(report: &serde_json::Value) -> Option<String> {
    report["hosts"].as_array()?.iter().find_map(|h| {
        matches!(h["outcome"].as_str(), Some("reverted" | "failed"))
            .then(|| h["host"].as_str().map(str::to_owned))
            .flatten()
    })
}

/// Files the incident, or comments on the open bug of its cause.
pub fn report(
    tracker: &dyn Tracker,
    incident: &Incident,
    product: Option<&str>,
) -> Result<Reported, String> {
    let bug = incident.bug(product);
    match tracker.open_with_label(&bug.label)? {
        Some(reference) => {
            tracker.comment(
                &reference,
                &format!("The same failure happened again.\n\n{}", incident.details()),
            )?;
            Ok(Reported::Commented(reference))
        }
        None => tracker.file_bug(&bug).map(Reported::Filed),
    }
}

/// How to reach the project's hub: its `[hub]` and a way to connect.
pub struct HubAccess<'a> {
    pub project_dir: &'a Path,
    pub environment: &'a str,
    pub hub: &'a HubLink,
    pub env_vars: &'a dyn Fn(&str) -> Option<String>,
    pub connect: &'a dyn Fn(&HubLink, String) -> Box<dyn Tracker>,
}

impl HubAccess<'_> {
    /// The tracker, with the key read from the project's secrets.
    fn tracker(&self) -> Result<Box<dyn Tracker>, String> {
        let name = self.hub.key.0.clone();
        let mut values = crate::secrets::values(
            self.project_dir,
            self.environment,
            std::slice::from_ref(&name),
            self.env_vars,
        )
        .map_err(|e| format!("cannot read the hub's key `{name}`: {e}"))?;
        let key = values
            .remove(&name)
            .ok_or_else(|| format!("the secret `{name}` holding the hub's key is not set"))?;
        Ok((self.connect)(self.hub, key))
    }

    /// Reports a failed deploy or a failing service.
    pub fn failed(&self, incident: &Incident) -> Result<Reported, String> {
        report(
            self.tracker()?.as_ref(),
            incident,
            self.hub.product.as_deref(),
        )
    }

    /// Tells the hub what a deploy of `version` shipped: the project's git
    /// history up to HEAD (the last 1000 commits). `Ok(None)` when the
    /// project is not in a git repository.
    pub fn shipped(&self, version: &str) -> Result<Option<Vec<String>>, String> {
        let Some(commits) = commits(self.project_dir) else {
            return Ok(None);
        };
        self.tracker()?.shipped(version, &commits).map(Some)
    }
}

/// The last 1000 commits up to HEAD of the repository holding `dir`.
fn commits(dir: &Path) -> Option<Vec<String>> {
    let output = std::process::Command::new("git")
        .args(["rev-list", "--max-count=1000", "HEAD"])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use super::*;

    /// A tracker in memory: items by reference, with their label and
    /// comments; its clones share them.
    #[derive(Clone, Default)]
    struct Memory {
        items: Rc<RefCell<Vec<Item>>>,
    }

    /// Reference, label, comments.
    type Item = (String, String, Vec<String>);

    impl Tracker for Memory {
        fn open_with_label(&self, label: &str) -> Result<Option<String>, String> {
            Ok(self
                .items
                .borrow()
                .iter()
                .find(|i| i.1 == label)
                .map(|i| i.0.clone()))
        }

        fn file_bug(&self, bug: &Bug) -> Result<String, String> {
            let mut items = self.items.borrow_mut();
            let reference = format!("SHOP-{}", items.len() + 1);
            items.push((reference.clone(), bug.label.clone(), Vec::new()));
            Ok(reference)
        }

        fn comment(&self, reference: &str, body: &str) -> Result<(), String> {
            let mut items = self.items.borrow_mut();
            let item = items
                .iter_mut()
                .find(|i| i.0 == reference)
                .ok_or("no such item")?;
            item.2.push(body.to_owned());
            Ok(())
        }

        fn shipped(&self, _: &str, _: &[String]) -> Result<Vec<String>, String> {
            Ok(Vec::new())
        }
    }

    fn incident(code: &str, release: &str) -> Incident {
        Incident {
            project: "shop".to_owned(),
            environment: "production".to_owned(),
            code: code.to_owned(),
            message: format!("release {release} failed"),
            host: Some("web-1".to_owned()),
            release: Some(release.to_owned()),
            log_tail: vec!["panic: no database".to_owned()],
            service: None,
        }
    }

    #[test]
    fn a_second_failure_of_the_same_cause_comments_and_another_cause_files() {
        let tracker = Memory::default();
        let first = report(&tracker, &incident("deploy.failed", "r1"), Some("SHOP")).unwrap();
        assert_eq!(first, Reported::Filed("SHOP-1".to_owned()));
        let second = report(&tracker, &incident("deploy.failed", "r2"), Some("SHOP")).unwrap();
        assert_eq!(second, Reported::Commented("SHOP-1".to_owned()));
        let other = report(
            &tracker,
            &incident("deploy.build_failed", "r3"),
            Some("SHOP"),
        )
        .unwrap();
        assert_eq!(other, Reported::Filed("SHOP-2".to_owned()));
        let items = tracker.items.borrow();
        assert!(items[0].2[0].contains("- Release: r2"), "{}", items[0].2[0]);
    }

    #[test]
    fn a_bug_carries_host_release_code_and_log_tail() {
        let bug = incident("deploy.failed", "r1").bug(Some("SHOP"));
        assert_eq!(
            bug.title,
            "Deploy of shop to production failed: deploy.failed"
        );
        for part in [
            "- Host: web-1",
            "- Release: r1",
            "`deploy.failed`",
            "panic: no database",
        ] {
            assert!(
                bug.description.contains(part),
                "{part} in {}",
                bug.description
            );
        }
        assert_eq!(bug.label, incident("deploy.failed", "r9").label());
        assert!(bug.label.starts_with("gantry-") && bug.label.len() == 23);
    }

    /// Progress steps, kept.
    #[derive(Default)]
    struct Steps(std::sync::Mutex<Vec<String>>);

    impl crate::progress::Progress for Steps {
        fn step(&self, message: &str) {
            self.0.lock().unwrap().push(message.to_owned());
        }
    }

    fn failing_status(restarts: u32) -> crate::operate::StatusReport {
        let status = serde_json::json!({
            "project": "shop",
            "services": [{
                "name": "web",
                "state": "failed",
                "release": "r1",
                "urls": [],
                "instances": [{
                    "id": "web-1", "service": "web", "release": "r1",
                    "state": "failed", "healthy": false, "restarts": restarts,
                }],
                "limits": { "enforced": false, "via": "none" },
                "reason": "gave up after 5 restarts",
            }],
        });
        crate::operate::StatusReport {
            environment: "production".to_owned(),
            host: "web-1".to_owned(),
            status: serde_json::from_value(status).unwrap(),
            hosts: Vec::new(),
        }
    }

    #[test]
    fn status_files_a_failing_service_once_for_each_change_and_replaces_its_memory_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).unwrap();
        // A link planted where the memory lies is replaced, never written
        // through: the file is written beside it and renamed over it.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "untouched").unwrap();
        std::os::unix::fs::symlink(&elsewhere, state_dir.join(seen::FILE)).unwrap();

        let tracker = Memory::default();
        let hub = HubLink {
            url: "http://hub.invalid".to_owned(),
            key: crate::config::model::SecretName("HUB_KEY".to_owned()),
            product: Some("SHOP".to_owned()),
        };
        let env_vars = |name: &str| (name == "HUB_KEY").then(|| "k".to_owned());
        let connect = {
            let tracker = tracker.clone();
            move |_: &HubLink, _: String| -> Box<dyn Tracker> { Box::new(tracker.clone()) }
        };
        let access = HubAccess {
            project_dir: dir.path(),
            environment: "production",
            hub: &hub,
            env_vars: &env_vars,
            connect: &connect,
        };
        let look = |restarts| {
            let steps = Steps::default();
            access.failing_services("shop", &failing_status(restarts), &state_dir, &steps);
            steps.0.into_inner().unwrap()
        };

        assert_eq!(look(5), ["hub: filed SHOP-1"]);
        assert_eq!(
            look(5),
            Vec::<String>::new(),
            "the same failure is told once"
        );
        assert_eq!(
            look(6),
            ["hub: commented on SHOP-1, open for the same failure"]
        );
        assert_eq!(tracker.items.borrow().len(), 1);

        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "untouched");
        let memory = state_dir.join(seen::FILE);
        assert!(!memory.is_symlink());
        let remembered: BTreeMap<String, String> =
            serde_json::from_slice(&std::fs::read(&memory).unwrap()).unwrap();
        assert_eq!(remembered.len(), 1);
        let names: Vec<_> = std::fs::read_dir(&state_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [seen::FILE], "no temporary file is left");
    }
}
