//! Environment-wide deployments, read from the hosts' releases: each
//! `gantry deploy` or `gantry rollback` of an environment has one id, which
//! every host records on the release it made or kept
//! (`Release::deployments`). From those records: the list `gantry releases`
//! shows, and the deployment `gantry rollback` goes back to. Pure: the hosts
//! are asked by the caller.

use serde::Serialize;

use crate::agent_api::{DeploymentMark, Outcome, Release};
use crate::{Code, Error};

/// A new deployment's id and start: `d` and the UTC time to the second,
/// with four hex digits of the process and clock so two deployments in one
/// second differ, like `d20261206-184512-3fa9`.
pub fn new_mark() -> DeploymentMark {
    let at = crate::clock::now_ms();
    let salt = (u64::from(std::process::id()) ^ at.rotate_left(17)) & 0xffff;
    // 2026-12-06T18:45:12Z: its digits, grouped.
    let digits: String = crate::clock::utc(at)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let (date, time) = digits.split_at(digits.len().min(8));
    DeploymentMark {
        id: format!("d{date}-{time}-{salt:04x}"),
        at,
    }
}

/// One deployment of the environment.
#[derive(Clone, Debug, Serialize)]
pub struct Deployment {
    pub id: String,
    /// When it began, Unix milliseconds.
    pub at: u64,
    /// The artifact it deployed (its first host's).
    pub artifact: String,
    /// A rollback of the environment, rather than a deploy.
    pub rollback: bool,
    /// For a rollback: the deployment it went back to (the one that made
    /// the release its first host went back to).
    #[serde(skip)]
    pub back_to: Option<String>,
    pub state: DeploymentState,
    /// Every host runs it now.
    pub current: bool,
    /// Each host of the environment, in its order.
    pub hosts: Vec<DeploymentHost>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Every host has a successful release of it.
    Complete,
    /// Some host has none (the rollout stopped, or a host failed or went back).
    Partial,
}

/// A deployment on one host.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Serialize)]
pub struct DeploymentHost {
    pub host: String,
    /// The release it made or kept there; none if it never got there.
    pub release: Option<String>,
    pub outcome: Option<Outcome>,
    /// It found the host already running that release (no new one).
    pub kept: bool,
    /// The host runs that release now.
    pub runs_now: bool,
    /// The host no longer keeps that release's files: no rollback to it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub files_gone: bool,
}

/// What a host runs: its newest successful release.
pub fn current(releases: &[Release]) -> Option<&Release> {
    releases
        .iter()
        .filter(|r| r.outcome == Outcome::Succeeded)
        .max_by_key(|r| r.number)
}

/// The release whose deployments a host runs now: its current release, or,
/// when that records none (a release that failed its verify window undone,
/// a redeploy by `gantry secrets sync`), the release it went back to or
/// deployed again.
/// Followed back as far as it goes: two syncs make a redeploy of a
/// redeploy. Only to an older release, so a damaged record cannot loop.
fn runs(releases: &[Release]) -> Option<&Release> {
    let mut now = current(releases)?;
    while now.deployments.is_empty() {
        let Some(of) = now.rollback_of.as_ref().or(now.redeploy_of.as_ref()) else {
            break;
        };
        now = releases
            .iter()
            .find(|r| &r.id == of && r.number < now.number)?;
    }
    Some(now)
}

/// The deployments the hosts' releases record, newest first. `hosts` are
/// the environment's hosts in order, each with its releases.
pub fn list(hosts: &[(String, Vec<Release>)]) -> Vec<Deployment> {
    let mut marks: Vec<&DeploymentMark> = hosts
        .iter()
        .flat_map(|(_, releases)| releases.iter().flat_map(|r| r.deployments.iter()))
        .collect();
    marks.sort_by(|a, b| (b.at, &b.id).cmp(&(a.at, &a.id)));
    marks.dedup_by(|a, b| a.id == b.id);
    marks
        .into_iter()
        .map(|mark| deployment(&mark.id, mark.at, hosts))
        .collect()
}

fn deployment(id: &str, at: u64, hosts: &[(String, Vec<Release>)]) -> Deployment {
    let mut artifact = None;
    let mut rollback = false;
    let mut back_to = None;
    let per_host: Vec<DeploymentHost> = hosts
        .iter()
        .map(|(host, releases)| {
            let made = releases
                .iter()
                .find(|r| r.deployments.iter().any(|d| d.id == id));
            let now = runs(releases).map(|r| r.id.as_str());
            if let Some(r) = made {
                artifact.get_or_insert_with(|| r.artifact_digest.clone());
                let first = r.deployments.first().is_some_and(|d| d.id == id);
                rollback |= first && r.rollback_of.is_some();
                if let (true, None, Some(of)) = (first, &back_to, &r.rollback_of) {
                    back_to = releases
                        .iter()
                        .find(|o| &o.id == of)
                        .and_then(|o| o.deployments.first())
                        .map(|d| d.id.clone());
                }
            }
            DeploymentHost {
                host: host.clone(),
                release: made.map(|r| r.id.clone()),
                outcome: made.map(|r| r.outcome),
                kept: made.is_some_and(|r| r.deployments.first().is_some_and(|d| d.id != id)),
                runs_now: made.is_some_and(|r| Some(r.id.as_str()) == now),
                files_gone: made.is_some_and(|r| r.files_gone),
            }
        })
        .collect();
    let complete = per_host
        .iter()
        .all(|h| h.outcome == Some(Outcome::Succeeded));
    Deployment {
        id: id.to_owned(),
        at,
        artifact: artifact.unwrap_or_default(),
        rollback,
        back_to,
        state: if complete {
            DeploymentState::Complete
        } else {
            DeploymentState::Partial
        },
        current: complete && per_host.iter().all(|h| h.runs_now),
        hosts: per_host,
    }
}

/// Where `gantry rollback -e ENV [--to X]` takes the environment.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// Every host to its release of this deployment (host, release), in
    /// the hosts' order.
    Deployment {
        id: String,
        releases: Vec<(String, String)>,
    },
    /// No host records deployments (agents before them), or `--to` names
    /// no deployment: each host goes to `to` (a release of its own), or
    /// to its previous release.
    PerHost { to: Option<String> },
}

/// The deployment to go back to: the one named by `to` (its id, or a
/// unique beginning of it), else the newest complete deployment before the
/// one every host runs now (or, if they run no one deployment, the newest
/// complete one). Every host must have a successful release of it.
pub fn rollback_target(deployments: &[Deployment], to: Option<&str>) -> Result<Target, Error> {
    if deployments.is_empty() {
        return Ok(Target::PerHost {
            to: to.map(str::to_owned),
        });
    }
    let chosen = match to {
        Some(to) => {
            let named: Vec<&Deployment> = deployments
                .iter()
                .filter(|d| d.id == to || d.id.starts_with(to))
                .collect();
            match named.as_slice() {
                [] => {
                    return Ok(Target::PerHost {
                        to: Some(to.to_owned()),
                    });
                }
                [one] => *one,
                several => {
                    let exact = several.iter().find(|d| d.id == to);
                    exact.copied().ok_or_else(|| Error::Deployment {
                        code: Code::ReleaseNotFound,
                        message: format!(
                            "`{to}` begins {} deployments: {}",
                            several.len(),
                            several
                                .iter()
                                .map(|d| d.id.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        hint: "give more of the id".to_owned(),
                    })?
                }
            }
        }
        None => previous(deployments)?,
    };
    let mut releases = Vec::new();
    for host in &chosen.hosts {
        match (&host.release, host.outcome) {
            (Some(release), Some(Outcome::Succeeded)) if host.files_gone => {
                return Err(Error::Deployment {
                    code: Code::ReleaseArtifactGone,
                    message: format!(
                        "host {} no longer keeps the files of its release {release} of deployment {}",
                        host.host, chosen.id
                    ),
                    hint: "a host keeps its newest five releases: deploy that version again"
                        .to_owned(),
                });
            }
            (Some(release), Some(Outcome::Succeeded)) => {
                releases.push((host.host.clone(), release.clone()));
            }
            _ => {
                return Err(Error::Deployment {
                    code: Code::ReleaseNotFound,
                    message: format!(
                        "deployment {} has no successful release on host {} to go back to",
                        chosen.id, host.host
                    ),
                    hint: "list the deployments with `gantry releases -e ENV` and name a complete one with --to".to_owned(),
                });
            }
        }
    }
    Ok(Target::Deployment {
        id: chosen.id.clone(),
        releases,
    })
}

/// The newest complete deployment before the one every host runs now. When
/// that is a rollback, it stands for the deployment it went back to, so a
/// second rollback steps further back instead of forward again; rollbacks
/// are never a target of their own (their releases are an older one's).
fn previous(deployments: &[Deployment]) -> Result<&Deployment, Error> {
    let complete = deployments
        .iter()
        .filter(|d| d.state == DeploymentState::Complete);
    let found = match deployments.iter().find(|d| d.current) {
        Some(now) => {
            let now = went_back_to(deployments, now);
            complete
                .filter(|d| !d.rollback && (d.at, &d.id) < (now.at, &now.id))
                .max_by_key(|d| (d.at, &d.id))
        }
        None => complete.max_by_key(|d| (d.at, &d.id)),
    };
    found.ok_or_else(|| Error::Deployment {
        code: Code::ReleaseNoneBefore,
        message: "the environment has no earlier deployment that reached every host".to_owned(),
        hint: "list them with `gantry releases -e ENV`; name one with --to".to_owned(),
    })
}

/// The deployment whose releases `d` runs: `d`, or for a rollback the one
/// it went back to, following rollbacks of rollbacks (at most one step per
/// deployment listed, so a loop in bad records ends).
fn went_back_to<'a>(deployments: &'a [Deployment], mut d: &'a Deployment) -> &'a Deployment {
    for _ in 0..deployments.len() {
        let Some(to) = d.back_to.as_deref().filter(|_| d.rollback) else {
            break;
        };
        match deployments.iter().find(|o| o.id == to) {
            Some(older) => d = older,
            None => break,
        }
    }
    d
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fake::marked as rel;

    fn ok(id: &str, artifact: &str, marks: &[(&str, u64)]) -> Release {
        rel(id, artifact, Outcome::Succeeded, marks)
    }

    fn hosts(list: Vec<(&str, Vec<Release>)>) -> Vec<(String, Vec<Release>)> {
        list.into_iter().map(|(h, r)| (h.to_owned(), r)).collect()
    }

    /// v1 everywhere (d1); v2 reached h1 only (d2: h2 cut off, h3 not
    /// reached); the retry (d3) found h1 already on v2 and made h2 and h3
    /// their v2 release.
    fn after_a_retried_rollout() -> Vec<(String, Vec<Release>)> {
        hosts(vec![
            (
                "h1",
                vec![
                    ok("r2", "v2", &[("d2", 20), ("d3", 30)]),
                    ok("r1", "v1", &[("d1", 10)]),
                ],
            ),
            (
                "h2",
                vec![ok("r2", "v2", &[("d3", 30)]), ok("r1", "v1", &[("d1", 10)])],
            ),
            (
                "h3",
                vec![ok("r2", "v2", &[("d3", 30)]), ok("r1", "v1", &[("d1", 10)])],
            ),
        ])
    }

    #[test]
    fn deployments_are_listed_newest_first_with_which_host_runs_which() {
        let list = list(&after_a_retried_rollout());
        let summary: Vec<_> = list
            .iter()
            .map(|d| (d.id.as_str(), d.state, d.current, d.artifact.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("d3", DeploymentState::Complete, true, "v2"),
                ("d2", DeploymentState::Partial, false, "v2"),
                ("d1", DeploymentState::Complete, false, "v1"),
            ]
        );
        let d3: Vec<_> = list[0]
            .hosts
            .iter()
            .map(|h| (h.host.as_str(), h.release.as_deref(), h.kept, h.runs_now))
            .collect();
        assert_eq!(
            d3,
            [
                ("h1", Some("r2"), true, true),
                ("h2", Some("r2"), false, true),
                ("h3", Some("r2"), false, true)
            ]
        );
        assert_eq!(list[1].hosts[1].release, None);
    }

    #[test]
    fn rollback_after_a_retried_rollout_takes_every_host_to_the_last_complete_deployment() {
        // Not to d2, which only h1 had: every host goes back to v1.
        let target = rollback_target(&list(&after_a_retried_rollout()), None).unwrap();
        assert_eq!(
            target,
            Target::Deployment {
                id: "d1".to_owned(),
                releases: vec![
                    ("h1".to_owned(), "r1".to_owned()),
                    ("h2".to_owned(), "r1".to_owned()),
                    ("h3".to_owned(), "r1".to_owned())
                ]
            }
        );
    }

    /// One host no longer keeping its release of the deployment refuses the
    /// rollback before any host is touched, rather than half of it.
    #[test]
    fn a_rollback_to_a_deployment_one_host_no_longer_keeps_is_refused_whole() {
        let mut hosts = after_a_retried_rollout();
        hosts[1].1[1].files_gone = true;
        let list = list(&hosts);
        assert!(list[2].hosts[1].files_gone);
        let error = rollback_target(&list, None).unwrap_err();
        assert_eq!(error.code(), "release.artifact_gone");
        assert!(error.to_string().contains("host h2"), "{error}");
    }

    #[test]
    fn rollback_after_a_stopped_rollout_takes_every_host_to_the_deployment_before_it() {
        // d2 reached h1 only and was not retried: nobody runs one deployment.
        let hosts = hosts(vec![
            (
                "h1",
                vec![ok("r2", "v2", &[("d2", 20)]), ok("r1", "v1", &[("d1", 10)])],
            ),
            ("h2", vec![ok("r1", "v1", &[("d1", 10)])]),
        ]);
        let Target::Deployment { id, releases } = rollback_target(&list(&hosts), None).unwrap()
        else {
            panic!("not a deployment");
        };
        assert_eq!(id, "d1");
        assert_eq!(releases[0], ("h1".to_owned(), "r1".to_owned()));
    }

    #[test]
    fn a_release_that_failed_its_verify_window_leaves_its_deployment_partial() {
        let hosts = hosts(vec![(
            "h1",
            vec![
                // The revert: a rollback to r1, in no deployment.
                Release {
                    rollback_of: Some("r1".to_owned()),
                    redeploy_of: None,
                    ..ok("r3", "v1", &[])
                },
                rel("r2", "v2", Outcome::Failed, &[("d2", 20)]),
                ok("r1", "v1", &[("d1", 10)]),
            ],
        )]);
        let list = list(&hosts);
        assert_eq!(list[0].state, DeploymentState::Partial);
        assert!(list[1].current, "h1 runs r3, the release of d1 again");
        let error = rollback_target(&list, None).unwrap_err();
        assert_eq!(error.code(), "release.none_before");
    }

    #[test]
    fn to_names_a_deployment_by_a_unique_beginning_and_refuses_one_a_host_lacks() {
        let list = list(&after_a_retried_rollout());
        let Target::Deployment { id, .. } = rollback_target(&list, Some("d3")).unwrap() else {
            panic!("not a deployment");
        };
        assert_eq!(id, "d3");
        let error = rollback_target(&list, Some("d2")).unwrap_err();
        assert_eq!(error.code(), "release.not_found");
        assert!(error.to_string().contains("host h2"), "{error}");
        // Not a deployment: a release of each host, as before deployments.
        assert_eq!(
            rollback_target(&list, Some("r1")).unwrap(),
            Target::PerHost {
                to: Some("r1".to_owned())
            }
        );
    }

    #[test]
    fn secrets_sync_redeploys_leave_their_deployment_current_and_are_no_rollback() {
        // d2 made r2; `gantry secrets sync` deployed r2 again as r3, and a
        // second sync deployed r3 again as r4.
        let synced = |id: &str, of: &str| Release {
            redeploy_of: Some(of.to_owned()),
            ..ok(id, "v2", &[])
        };
        let hosts = hosts(vec![(
            "h1",
            vec![
                synced("r4", "r3"),
                synced("r3", "r2"),
                ok("r2", "v2", &[("d2", 20)]),
                ok("r1", "v1", &[("d1", 10)]),
            ],
        )]);
        let list = list(&hosts);
        let summary: Vec<_> = list
            .iter()
            .map(|d| (d.id.as_str(), d.current, d.rollback))
            .collect();
        assert_eq!(summary, [("d2", true, false), ("d1", false, false)]);
        assert!(list[0].hosts[0].runs_now);
        let (to, release) = target_of(&hosts, None);
        assert_eq!((to.as_str(), release.as_str()), ("d1", "r1"));
    }

    #[test]
    fn hosts_without_deployments_roll_back_each_to_its_previous_release() {
        let hosts = hosts(vec![("h1", vec![ok("r2", "v2", &[]), ok("r1", "v1", &[])])]);
        assert_eq!(
            rollback_target(&list(&hosts), None).unwrap(),
            Target::PerHost { to: None }
        );
    }

    #[test]
    fn only_one_deployment_has_none_before_it() {
        let hosts = hosts(vec![("h1", vec![ok("r1", "v1", &[("d1", 10)])])]);
        let error = rollback_target(&list(&hosts), None).unwrap_err();
        assert_eq!(error.code(), "release.none_before");
    }

    /// Hosts h1 and h2 after deploys d1, d2, d3 and then one rollback per
    /// `(deployment, release it went back to)` in `rollbacks`, each making a
    /// new release, as the agent does.
    fn after_rollbacks(rollbacks: &[(&str, &str)]) -> Vec<(String, Vec<Release>)> {
        let mut releases = vec![
            ok("r3", "v3", &[("d3", 30)]),
            ok("r2", "v2", &[("d2", 20)]),
            ok("r1", "v1", &[("d1", 10)]),
        ];
        for (n, (deployment, of)) in (4u64..).zip(rollbacks) {
            let artifact = releases
                .iter()
                .find(|r| r.id == *of)
                .map(|r| r.artifact_digest.clone())
                .unwrap();
            let rolled = Release {
                rollback_of: Some((*of).to_owned()),
                redeploy_of: None,
                ..ok(&format!("r{n}"), &artifact, &[(deployment, n * 10)])
            };
            releases.insert(0, rolled);
        }
        hosts(vec![("h1", releases.clone()), ("h2", releases)])
    }

    fn target_of(hosts: &[(String, Vec<Release>)], to: Option<&str>) -> (String, String) {
        let Target::Deployment { id, releases } = rollback_target(&list(hosts), to).unwrap() else {
            panic!("not a deployment");
        };
        (id, releases[0].1.clone())
    }

    #[test]
    fn each_rollback_steps_one_deployment_further_back_until_none_is_left() {
        let first = target_of(&after_rollbacks(&[]), None);
        assert_eq!(first, ("d2".to_owned(), "r2".to_owned()));
        // Rolled back to d2 by d4: the next goes to d1, not forward to d3.
        let second = target_of(&after_rollbacks(&[("d4", "r2")]), None);
        assert_eq!(second, ("d1".to_owned(), "r1".to_owned()));
        let hosts = after_rollbacks(&[("d4", "r2"), ("d5", "r1")]);
        let error = rollback_target(&list(&hosts), None).unwrap_err();
        assert_eq!(error.code(), "release.none_before");
        // --to still names any complete deployment, newer ones included.
        assert_eq!(
            target_of(&hosts, Some("d3")),
            ("d3".to_owned(), "r3".to_owned())
        );
    }

    #[test]
    fn a_rollback_skips_a_deployment_that_failed_on_a_host() {
        let hosts = hosts(vec![
            (
                "h1",
                vec![
                    ok("r3", "v3", &[("d3", 30)]),
                    ok("r2", "v2", &[("d2", 20)]),
                    ok("r1", "v1", &[("d1", 10)]),
                ],
            ),
            (
                "h2",
                vec![
                    ok("r3", "v3", &[("d3", 30)]),
                    rel("r2", "v2", Outcome::Failed, &[("d2", 20)]),
                    ok("r1", "v1", &[("d1", 10)]),
                ],
            ),
        ]);
        assert_eq!(target_of(&hosts, None), ("d1".to_owned(), "r1".to_owned()));
    }

    #[test]
    fn ids_name_the_utc_second_they_began() {
        let mark = new_mark();
        assert_eq!(mark.id.len(), "d20261206-184512-3fa9".len(), "{}", mark.id);
        let digits: String = crate::clock::utc(mark.at)
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        assert_eq!(mark.id[1..9], digits[..8], "{}", mark.id);
    }
}
