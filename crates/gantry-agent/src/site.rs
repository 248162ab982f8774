//! The static driver: a `static` service is a directory of its release that
//! the proxy serves itself. It has no instances; its deploy is the store's
//! switch to the new release and a route table naming the new directory
//! (one swap in the proxy: requests already routed finish on the old files).
//! A rollback is a deploy of an older release, so it switches back the same
//! way.

use std::path::{Path, PathBuf};

use gantry_core::agent_api::ServiceSpec as Service;
use gantry_core::agent_api::v1::Workload;

/// The directory a static service's route serves, for a release whose
/// files are at `release_dir`: the service's `static` path under its
/// artifact directory. None for other services.
pub fn root(release_dir: &Path, service: &Service) -> Option<PathBuf> {
    let Workload::Static { dir, .. } = &service.workload else {
        return None;
    };
    Some(artifact_dir(release_dir, service).join(dir))
}

/// The service's `artifact` directory within a release's files, or the
/// release's top when it names a file (or nothing): where a process runs
/// and where a static service's directory is found.
pub fn artifact_dir(release_dir: &Path, service: &Service) -> PathBuf {
    match &service.artifact {
        Some(sub) if release_dir.join(sub).is_dir() => release_dir.join(sub),
        _ => release_dir.to_owned(),
    }
}

/// Whether the proxy should give unknown extension-less paths `index.html`.
pub fn spa(service: &Service) -> bool {
    matches!(service.workload, Workload::Static { spa: true, .. })
}

/// Whether the service is served by the proxy from its release.
pub fn is_static(service: &Service) -> bool {
    matches!(service.workload, Workload::Static { .. })
}

/// Checks that `root` is a directory inside `release_dir` (a link in the
/// artifact could point anywhere): why not, in words a user can act on.
pub fn check_root(release_dir: &Path, root: &Path, service: &Service) -> Result<(), String> {
    let dir = match &service.workload {
        Workload::Static { dir, .. } => dir.as_str(),
        _ => "",
    };
    let inside = std::fs::canonicalize(release_dir).and_then(|release| {
        let root = std::fs::canonicalize(root)?;
        Ok(root.starts_with(&release) && root.is_dir())
    });
    match inside {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "the static directory `{dir}` of `{}` is not a directory inside the release",
            service.name
        )),
        Err(_) => Err(format!(
            "the artifact has no directory `{dir}` for the static service `{}`: build it before deploying, or name the directory that holds the site",
            service.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(dir: &str) -> Service {
        let mut service = crate::store::test_service("docs");
        service.workload = Workload::Static {
            dir: dir.to_owned(),
            spa: false,
        };
        service
    }

    #[test]
    fn the_root_must_be_a_directory_inside_the_release() {
        let release = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(release.path().join("site")).expect("mkdir");
        std::fs::write(release.path().join("file"), "x").expect("write");
        std::os::unix::fs::symlink("/etc", release.path().join("out")).expect("link");
        let check = |dir: &str| {
            let service = docs(dir);
            let root = root(release.path(), &service).expect("static");
            check_root(release.path(), &root, &service)
        };
        assert_eq!(check("site"), Ok(()));
        assert_eq!(check("."), Ok(()));
        for bad in ["missing", "file", "out"] {
            let error = check(bad).expect_err(bad);
            assert!(error.contains(bad), "{error}");
        }
        assert!(root(release.path(), &crate::store::test_service("web")).is_none());
    }
}
