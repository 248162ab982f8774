//! What a host keeps of a project's past: the files, artifact and images of
//! its newest [`KEEP`] releases that succeeded and of every release one of
//! its services runs. After each deploy that succeeds, under the project's
//! deploy lock, the rest goes: release directories, artifact manifests (a
//! rollback to such a release is then refused with `release.artifact_gone`),
//! blobs no kept artifact names, and the image tags Gantry pinned for
//! releases no project keeps. Without it every deploy would add to the disk
//! for good.
//!
//! Crash safety: a manifest is forgotten before its directory goes, so a
//! rollback never starts from half a tree; a directory is renamed aside
//! before it is removed, and whatever a killed run left aside is removed by
//! the next.
//!
//! Bounded work: a release the pass has finished with (its directory gone,
//! its manifest forgotten, its pinned images untagged, or each kept for
//! another release) is marked pruned, and passes read only unpruned
//! releases. One whose image a container still uses stays unmarked, to be
//! tried again.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use gantry_core::agent_api::v1::Workload;
use gantry_core::agent_api::{Outcome, Release};

use crate::agent::Agent;
use crate::container::Engine;
use crate::store::StoreError;

/// How many of a project's newest releases that succeeded keep their files.
pub const KEEP: usize = 5;

/// How long a blob that no kept artifact names stays: a blob uploaded, or
/// found present by `missing` (`BlobStore::found_within`), within it may be
/// for a deploy about to come.
const GRACE: Duration = Duration::from_secs(60 * 60);

/// The suffix of a release directory renamed aside to be removed.
const ASIDE: &str = ".pruning";

/// What one project keeps.
#[derive(Debug, Default, PartialEq, Eq)]
struct Kept {
    releases: BTreeSet<String>,
    artifacts: BTreeSet<String>,
    images: BTreeSet<String>,
}

/// What a project keeps, from its releases (newest first) and the ids of
/// the releases its services and instances run: also what a deploy under
/// way (of another project) is about to run.
fn kept(releases: &[Release], running: &BTreeSet<String>) -> Kept {
    let newest = releases
        .iter()
        .filter(|r| r.outcome == Outcome::Succeeded)
        .take(KEEP);
    let runs = releases
        .iter()
        .filter(|r| running.contains(&r.id) || r.outcome == Outcome::Deploying);
    let mut kept = Kept::default();
    for release in newest.chain(runs) {
        kept.releases.insert(release.id.clone());
        kept.artifacts.insert(release.artifact_digest.clone());
        kept.images.extend(images(release));
    }
    kept
}

fn images(release: &Release) -> impl Iterator<Item = String> + '_ {
    release.services.iter().filter_map(|s| match &s.workload {
        Workload::Compose { image } => Some(image.clone()),
        _ => None,
    })
}

/// What a pass removed.
#[derive(Debug, Default)]
pub(crate) struct Pruned {
    /// Release directories (by artifact digest).
    pub directories: Vec<String>,
    pub manifests: usize,
    pub blobs: usize,
    pub images: Vec<String>,
    /// Releases marked pruned: no later pass reads them.
    pub finished: usize,
}

/// One pass for `project`, run after its deploy succeeded and while its
/// deploy lock is held. It never fails the deploy: what it cannot remove
/// stays for the next pass, and says why in the log.
pub(crate) async fn after_deploy(agent: &Agent, project: &str) {
    match prune(agent, project).await {
        Ok(pruned) => {
            if pruned.finished > 0 || pruned.blobs > 0 || !pruned.directories.is_empty() {
                tracing::info!(
                    project,
                    directories = pruned.directories.len(),
                    manifests = pruned.manifests,
                    blobs = pruned.blobs,
                    images = ?pruned.images,
                    releases = pruned.finished,
                    "removed what no kept release needs"
                );
            }
        }
        Err(e) => {
            tracing::warn!(project, error = %e, "cannot remove what old releases left")
        }
    }
}

async fn prune(agent: &Agent, project: &str) -> Result<Pruned, StoreError> {
    // Every project's unpruned releases, what runs, and every manifest, in
    // one read: all bounded by what the host keeps.
    let (unpruned, running, digests) = agent
        .db(|s| {
            let running = s.running_releases()?;
            Ok((s.unpruned_releases()?, running, s.artifact_blobs()?))
        })
        .await?;
    let mut everyone = Kept::default();
    let mut ours = (Vec::new(), Kept::default());
    for releases in unpruned.chunk_by(|a, b| a.project == b.project) {
        let name = releases[0].project.as_str();
        let runs: BTreeSet<String> = (running.iter())
            .filter(|(p, _)| p == name)
            .map(|(_, release)| release.clone())
            .collect();
        let kept = kept(releases, &runs);
        everyone.artifacts.extend(kept.artifacts.iter().cloned());
        everyone.images.extend(kept.images.iter().cloned());
        if name == project {
            ours = (releases.to_vec(), kept);
        }
    }
    let (releases, kept) = ours;
    let mut pruned = Pruned::default();

    // Manifests first: from here on a rollback to them is refused.
    let history: BTreeSet<&str> = releases
        .iter()
        .map(|r| r.artifact_digest.as_str())
        .collect();
    let forget: BTreeSet<String> = (digests.iter())
        .map(|(digest, _)| digest.clone())
        .filter(|digest| !everyone.artifacts.contains(digest) && history.contains(digest.as_str()))
        .collect();
    pruned.manifests = forget.len();
    if !forget.is_empty() {
        let forget = forget.clone();
        agent
            .db(move |s| forget.iter().try_for_each(|d| s.forget_artifact(d)))
            .await?;
    }

    // Only directories of this project's own releases: never one it does
    // not know.
    let gone: BTreeSet<String> = (history.into_iter())
        .filter(|digest| !kept.artifacts.contains(*digest))
        .map(str::to_owned)
        .collect();
    // A blob stays while a remaining manifest names it.
    let named: BTreeSet<String> = (digests.into_iter())
        .filter(|(digest, _)| !forget.contains(digest))
        .flat_map(|(_, files)| files)
        .collect();
    let dir = agent.paths.releases(project);
    let blobs = agent.blobs.clone();
    let files = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            let directories = remove_directories(&dir, |name| gone.contains(name));
            let root = blobs.root().join("sha256");
            let spared = |digest: &str| named.contains(digest) || blobs.found_within(digest, GRACE);
            (directories, remove_blobs(&root, spared))
        }
    })
    .await;
    match files {
        Ok((directories, blobs)) => (pruned.directories, pruned.blobs) = (directories, blobs),
        Err(e) => tracing::warn!(project, error = %e, "cannot remove old release files"),
    }

    let unkept = (releases.iter())
        .flat_map(images)
        .filter(|image| gantry_core::image::is_pinned(image) && !everyone.images.contains(image))
        .collect::<BTreeSet<_>>();
    let mut stayed = unkept.clone();
    if !unkept.is_empty() {
        match crate::container_instance::connect(agent).await {
            Ok(engine) => {
                let untagged = untag(engine, unkept).await;
                stayed = untagged.stayed;
                pruned.images = untagged.removed;
            }
            Err(e) => tracing::warn!(error = %e, "cannot remove old release images"),
        }
    }

    let done = finished(&releases, &kept, &stayed, |digest| {
        dir.join(digest).exists()
    });
    pruned.finished = done.len();
    if !done.is_empty() {
        let project = project.to_owned();
        agent.db(move |s| s.mark_pruned(&project, &done)).await?;
    }
    Ok(pruned)
}

/// The releases among `releases` (one project's, unpruned) that a pass has
/// finished with: not kept, their directory gone or kept for a release
/// that is, and none of their images among those that `stayed` tagged.
/// Their manifests were forgotten, or are kept for another release.
fn finished(
    releases: &[Release],
    kept: &Kept,
    stayed: &BTreeSet<String>,
    directory_exists: impl Fn(&str) -> bool,
) -> Vec<String> {
    (releases.iter())
        .filter(|r| !kept.releases.contains(&r.id))
        .filter(|r| {
            let digest = r.artifact_digest.as_str();
            kept.artifacts.contains(digest) || !directory_exists(digest)
        })
        .filter(|r| images(r).all(|image| !stayed.contains(&image)))
        .map(|r| r.id.clone())
        .collect()
}

/// Removes the directories in `dir` whose name `gone` accepts, each renamed
/// aside first, any a killed pass left aside, and any tree a killed deploy
/// was staging (`.<digest>.tmp-*`: none is being staged while the
/// project's deploy lock is held); the names removed.
fn remove_directories(dir: &Path, gone: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let leftover = name.starts_with('.') && (name.ends_with(ASIDE) || name.contains(".tmp-"));
        let aside = if leftover {
            path
        } else if gone(&name) {
            let aside = dir.join(format!(".{name}{ASIDE}"));
            if let Err(e) = std::fs::rename(&path, &aside) {
                tracing::warn!(path = %path.display(), error = %e, "cannot move an old release aside");
                continue;
            }
            removed.push(name);
            aside
        } else {
            continue;
        };
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            tracing::warn!(path = %aside.display(), error = %e, "cannot remove an old release");
        }
    }
    removed
}

/// Removes the blobs under `root` (`<2 hex>/<digest>[.<mode>]`) that were
/// not written within [`GRACE`] and whose digest `spared` does not spare;
/// how many went.
fn remove_blobs(root: &Path, spared: impl Fn(&str) -> bool) -> usize {
    let Ok(shards) = std::fs::read_dir(root) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for file in shards
        .flatten()
        .filter_map(|s| std::fs::read_dir(s.path()).ok())
        .flatten()
        .flatten()
    {
        let name = file.file_name().to_string_lossy().into_owned();
        let digest = name
            .split_once('.')
            .map_or(name.as_str(), |(digest, _)| digest);
        let fresh = (file.metadata().and_then(|m| m.modified())).map_or(true, |at| {
            now.duration_since(at).unwrap_or_default() < GRACE
        });
        if fresh || spared(digest) {
            continue;
        }
        if std::fs::remove_file(file.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// What [`untag`] did with each tag.
#[derive(Debug, Default)]
struct Untagged {
    removed: Vec<String>,
    /// Still tagged: in use, or not removable now. The next pass tries again.
    stayed: BTreeSet<String>,
}

/// Removes the tags in `references`. A tag whose image any container on the
/// engine was made from stays, for the next pass: the engine may be shared
/// with another agent whose releases this one does not know, and which
/// recreates its containers from that tag. A tag already gone is neither.
async fn untag(engine: &Engine, references: BTreeSet<String>) -> Untagged {
    let in_use = match engine.images_in_use().await {
        Ok(in_use) => in_use,
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell which images containers use");
            return Untagged {
                removed: Vec::new(),
                stayed: references,
            };
        }
    };
    let mut untagged = Untagged::default();
    for reference in references {
        let outcome = match engine.image_id(&reference).await {
            Ok(None) => continue,
            Ok(Some(id)) if in_use.contains(&id) => {
                untagged.stayed.insert(reference);
                continue;
            }
            Ok(Some(_)) => engine.untag(&reference).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(true) => untagged.removed.push(reference),
            // Gone meanwhile.
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(image = %reference, error = %e, "an old release's image stays");
                untagged.stayed.insert(reference);
            }
        }
    }
    untagged
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_core::agent_api::v1::ServiceSpec;

    fn release(number: u64, outcome: Outcome, image: &str) -> Release {
        let service: ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": "web",
            "driver": "compose",
            "image": image,
            "replicas": 1,
            "env": {},
            "secrets": [],
            "resources": {},
            "depends_on": [],
            "volumes": [],
            "stop_timeout": "10s",
            "restart": "always",
        }))
        .expect("a service");
        let mut release = crate::store::test_release(number);
        release.artifact_digest = format!("a{number}");
        release.outcome = outcome;
        release.services = vec![service];
        release
    }

    /// Blobs written over [`GRACE`] ago go unless spared; newer ones and
    /// spared ones stay, a mode variant with its blob.
    #[test]
    fn old_blobs_no_one_spares_are_removed_new_and_spared_ones_stay() {
        let dir = tempfile::tempdir().expect("a directory");
        let root = dir.path();
        let old = SystemTime::now() - GRACE - Duration::from_secs(60);
        let write = |name: &str, at: Option<SystemTime>| {
            let shard = root.join(&name[..2]);
            std::fs::create_dir_all(&shard).expect("shard");
            let file = std::fs::File::create(shard.join(name)).expect("blob");
            if let Some(at) = at {
                file.set_modified(at).expect("set its time");
            }
        };
        let (gone, variant, spared, fresh) = (
            "aa".repeat(32),
            "bb".repeat(32),
            "cc".repeat(32),
            "dd".repeat(32),
        );
        write(&gone, Some(old));
        write(&variant, Some(old));
        write(&format!("{variant}.555"), Some(old));
        write(&spared, Some(old));
        write(&fresh, None);
        let removed = remove_blobs(root, |digest| digest == spared);
        assert_eq!(removed, 3);
        let left: BTreeSet<String> = std::fs::read_dir(root)
            .expect("shards")
            .flatten()
            .flat_map(|s| std::fs::read_dir(s.path()).expect("shard"))
            .map(|f| f.expect("file").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, BTreeSet::from([spared.clone(), fresh.clone()]));
    }

    /// What a killed pass left aside goes, and a tree a killed deploy was
    /// staging; directories not asked for stay.
    #[test]
    fn release_directories_go_whole_and_a_killed_passes_leftovers_with_them() {
        let dir = tempfile::tempdir().expect("a directory");
        for name in ["a1", "a2", "a3", ".a0.pruning", ".a4.tmp-x8Zq"] {
            std::fs::create_dir_all(dir.path().join(name).join("bin")).expect("a release");
            std::fs::write(dir.path().join(name).join("bin/app"), "x").expect("a file");
        }
        let removed: BTreeSet<String> =
            remove_directories(dir.path(), |name| name == "a1" || name == "a3")
                .into_iter()
                .collect();
        assert_eq!(removed, BTreeSet::from(["a1".to_owned(), "a3".to_owned()]));
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["a2"]);
    }

    fn docker(args: &[&str]) -> String {
        let output = std::process::Command::new("docker")
            .args(args)
            .output()
            .expect("run docker");
        assert!(output.status.success(), "docker {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// A pinned tag goes unless a container, the agent's or anyone's, was
    /// made from its image, even through another tag. Needs root and Docker.
    #[tokio::test]
    async fn a_tag_whose_image_any_container_uses_stays() {
        let base = gantry_testkit::images::base();
        let repository = format!("gantry-test-retention-{}", std::process::id());
        let (pinned, other) = (
            format!("{repository}:gantry-0123456789ab"),
            format!("{repository}:mine"),
        );
        let context = tempfile::tempdir().expect("a context");
        std::fs::write(
            context.path().join("Dockerfile"),
            format!("FROM {base}\nRUN head -c 1000 /dev/urandom > /unique\n"),
        )
        .expect("a Dockerfile");
        let context = context.path().display().to_string();
        docker(&["build", "-q", "-t", &pinned, "-t", &other, &context]);
        // Made by someone else, from the other tag; never started.
        let container = docker(&["create", &other, "true"]);
        let scratch = tempfile::tempdir().expect("scratch");
        let engine = Engine::for_test(scratch.path()).await;

        let untagged = untag(&engine, BTreeSet::from([pinned.clone()])).await;
        assert!(untagged.removed.is_empty(), "{untagged:?}");
        assert_eq!(untagged.stayed, BTreeSet::from([pinned.clone()]));
        assert!(engine.image_id(&pinned).await.expect("inspect").is_some());

        docker(&["rm", &container]);
        let untagged = untag(&engine, BTreeSet::from([pinned.clone()])).await;
        assert_eq!(untagged.removed, std::slice::from_ref(&pinned));
        assert!(untagged.stayed.is_empty(), "{untagged:?}");
        assert!(engine.image_id(&pinned).await.expect("inspect").is_none());
        assert!(
            engine.image_id(&other).await.expect("inspect").is_some(),
            "the other tag stays"
        );
        docker(&["rmi", &other]);
    }

    /// A pass is finished with a release it does not keep once its
    /// directory is gone (or kept for a kept release of the same artifact)
    /// and no image of it stayed tagged; never with a kept one.
    #[test]
    fn a_release_is_finished_with_only_when_nothing_of_it_is_left() {
        let mut releases: Vec<Release> = (1..=9)
            .rev()
            .map(|n| release(n, Outcome::Succeeded, &format!("web:gantry-{n:012x}")))
            .collect();
        // r2 shares the artifact of r9, which is kept.
        releases[7].artifact_digest = "a9".to_owned();
        let kept = kept(&releases, &BTreeSet::new());
        assert_eq!(kept.releases.len(), KEEP);
        // r3's directory could not be removed; r4's image is in use.
        let stayed = BTreeSet::from(["web:gantry-000000000004".to_owned()]);
        let done = finished(&releases, &kept, &stayed, |digest| {
            digest == "a3" || kept.artifacts.contains(digest)
        });
        assert_eq!(done, ["r2", "r1"]);
    }

    #[test]
    fn the_newest_releases_that_succeeded_and_those_running_are_kept() {
        // r13 under way; r12 newest; r11 and r8 failed; r2 still runs a
        // service.
        let releases: Vec<Release> = (1..=13)
            .rev()
            .map(|n| {
                if n == 13 {
                    return release(n, Outcome::Deploying, &format!("web:gantry-{n:012x}"));
                }
                let outcome = if n == 11 || n == 8 {
                    Outcome::Failed
                } else {
                    Outcome::Succeeded
                };
                release(n, outcome, &format!("web:gantry-{n:012x}"))
            })
            .collect();
        let kept = kept(&releases, &BTreeSet::from(["r2".to_owned()]));
        let expect = |numbers: &[u64]| -> BTreeSet<String> {
            numbers.iter().map(|n| format!("a{n}")).collect()
        };
        assert_eq!(kept.artifacts, expect(&[13, 12, 10, 9, 7, 6, 2]));
        assert!(kept.images.contains("web:gantry-00000000000c"));
        assert!(kept.images.contains("web:gantry-000000000002"));
        assert!(!kept.images.contains("web:gantry-00000000000b"));
        assert_eq!(kept.images.len(), 7);
    }
}
