//! What a release ships: the project directory, less what is ignored and
//! less the build context of each image service that is a folder of the
//! project (those files travel as the image), plus every path a service
//! declares as its `artifact`. Each file is named by the sha256 of its
//! bytes, so a host is sent only the files it lacks, and the artifact's
//! digest changes exactly when a file does: a change inside `web/`, an
//! image's context, then leaves the processes' artifact, and so the
//! processes, as they were.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::agent_api::{Artifact, ArtifactFile};
use crate::config::resolve::{Build, Service, Workload};

/// Directories never shipped from a project directory: build output, VCS and
/// Gantry's own state. A path a service declares as its artifact is shipped
/// even when it is inside one of these.
pub const IGNORED: &[&str] = &[".git", "target", ".gantry", "node_modules", "__pycache__"];

/// The artifact and, for each digest, a file that has those bytes.
#[derive(Debug)]
pub struct Scan {
    pub artifact: Artifact,
    pub sources: BTreeMap<String, PathBuf>,
}

/// sha256 of a file's bytes, as lowercase hex.
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The digest of a file list: equal trees, equal digests, whatever the walk order.
pub fn tree_digest(files: &[ArtifactFile]) -> String {
    let mut sorted: Vec<&ArtifactFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut hasher = Sha256::new();
    for f in sorted {
        hasher.update(f.path.as_bytes());
        hasher.update([0]);
        hasher.update(f.digest.as_bytes());
        hasher.update([0]);
        hasher.update(format!("{:o}\n", f.mode & 0o777).as_bytes());
    }
    hex(&hasher.finalize())
}

/// Which paths of the project a release of some services ships besides
/// the project's own files, and which folders it leaves out.
#[derive(Debug, Default)]
pub struct Selection {
    /// Each service's `artifact` (relative to the project), shipped whole.
    pub extra: Vec<String>,
    /// Folders of the project (relative to it) not shipped: the build
    /// context of an image service, when it is a strict subfolder of the
    /// project and no static service serves files from inside it.
    pub left_out: Vec<PathBuf>,
}

impl Selection {
    pub fn of(services: &[Service]) -> Selection {
        let served: Vec<PathBuf> = services
            .iter()
            .filter_map(|s| match &s.workload {
                Workload::Static { dir, .. } => Some(normal(dir).unwrap_or_default()),
                _ => None,
            })
            .collect();
        let mut left_out: Vec<PathBuf> = services
            .iter()
            .filter_map(|s| match &s.build {
                Some(Build::Image(build)) => normal(&build.context),
                _ => None,
            })
            .filter(|context| {
                !served
                    .iter()
                    .any(|dir| dir.starts_with(context) || context.starts_with(dir))
            })
            .collect();
        left_out.sort();
        left_out.dedup();
        Selection {
            extra: services.iter().filter_map(|s| s.artifact.clone()).collect(),
            left_out,
        }
    }
}

/// `path` (relative to the project) without `.` segments; `None` for the
/// project itself and for what is not plainly inside it.
fn normal(path: &str) -> Option<PathBuf> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// What a release of `services` ships from the project in `root`: the one
/// place deploy and plan take it from, so that they agree.
pub fn of_services(root: &Path, services: &[Service]) -> std::io::Result<Scan> {
    scan(root, &Selection::of(services))
}

/// Scans `root`, skipping `IGNORED` directories, the folders `selection`
/// leaves out and the patterns of a `.gantryignore` (one per line: a name,
/// or `*.suffix`), then adds `selection.extra` paths (relative to `root`)
/// whole.
pub fn scan(root: &Path, selection: &Selection) -> std::io::Result<Scan> {
    let ignore = read_ignore(root);
    let mut files = BTreeMap::new();
    let top = Skip {
        patterns: &ignore,
        defaults: true,
        left_out: &selection.left_out,
    };
    walk(root, root, &top, &mut files)?;
    let declared = Skip {
        defaults: false,
        left_out: &[],
        ..top
    };
    for path in &selection.extra {
        let full = root.join(path);
        if full.is_dir() {
            walk(root, &full, &declared, &mut files)?;
        } else if full.is_file() {
            add(root, &full, &mut files)?;
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the artifact path `{path}` does not exist (was the build run?)"),
            ));
        }
    }
    let mut sources = BTreeMap::new();
    let list: Vec<ArtifactFile> = files
        .into_iter()
        .map(|(_, (file, source))| {
            sources.insert(file.digest.clone(), source);
            file
        })
        .collect();
    Ok(Scan {
        artifact: Artifact {
            digest: tree_digest(&list),
            files: list,
        },
        sources,
    })
}

/// What a walk skips.
#[derive(Clone, Copy)]
struct Skip<'a> {
    /// The `.gantryignore` patterns, matched against each name.
    patterns: &'a [String],
    /// Whether the `IGNORED` names are skipped too.
    defaults: bool,
    /// Folders relative to the root, skipped whole.
    left_out: &'a [PathBuf],
}

fn read_ignore(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join(".gantryignore"))
        .map(|text| {
            text.lines()
                .map(|l| l.trim().trim_end_matches('/').to_owned())
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect()
        })
        .unwrap_or_default()
}

fn ignored(name: &str, patterns: &[String], defaults: bool) -> bool {
    (defaults && IGNORED.contains(&name))
        || patterns.iter().any(|p| match p.strip_prefix('*') {
            Some(suffix) => name.ends_with(suffix),
            None => p == name,
        })
}

fn walk(
    root: &Path,
    dir: &Path,
    skip: &Skip<'_>,
    files: &mut BTreeMap<String, (ArtifactFile, PathBuf)>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ignored(&name, skip.patterns, skip.defaults) {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: a link is shipped as the file or tree it points to.
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            if !skip.left_out.iter().any(|l| l == relative) {
                walk(root, &path, skip, files)?;
            }
        } else if meta.is_file() {
            add(root, &path, files)?;
        }
    }
    Ok(())
}

fn add(
    root: &Path,
    path: &Path,
    files: &mut BTreeMap<String, (ArtifactFile, PathBuf)>,
) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    let relative = path
        .strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned();
    let file = ArtifactFile {
        digest: file_digest(path)?,
        size: meta.len(),
        mode: meta.permissions().mode() & 0o777,
        path: relative.clone(),
    };
    files.insert(relative, (file, path.to_owned()));
    Ok(())
}

/// The digest of `services` as resolved for one host, which its release
/// records: equal on both sides, the host runs this configuration.
pub(crate) fn config_hash(services: &[Service]) -> String {
    let text = serde_json::to_string(services).unwrap_or_default();
    hex(&Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A selection of `paths` declared as artifacts, leaving nothing out.
    fn declared(paths: &[&str]) -> Selection {
        Selection {
            extra: paths.iter().map(|p| (*p).to_owned()).collect(),
            left_out: Vec::new(),
        }
    }

    /// The services of `toml` (a gantry.toml) in deploy order.
    fn services(root: &Path, toml: &str) -> Vec<Service> {
        let path = root.join("gantry.toml");
        std::fs::write(&path, toml).expect("write gantry.toml");
        let config = crate::config::load(&path).expect("load");
        let env = config.environment("local").expect("local");
        env.deploy_order().into_iter().cloned().collect()
    }

    fn paths(scan: &Scan) -> Vec<&str> {
        scan.artifact
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect()
    }

    #[test]
    fn an_image_context_inside_the_project_is_left_out_of_the_processes_artifact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("web")).expect("mkdir");
        std::fs::write(root.join("worker.sh"), "sleep 1").expect("write");
        std::fs::write(root.join("web/Dockerfile"), "FROM scratch").expect("write");
        std::fs::write(root.join("web/VERSION"), "1").expect("write");
        let services = services(
            root,
            "[project]\nname = \"p\"\n\
             [services.web]\nimage = \"p-web\"\nbuild = { context = \"./web\" }\n\
             [services.worker]\nrun = \"bash worker.sh\"\n",
        );
        let scan = of_services(root, &services).expect("scan");
        assert_eq!(paths(&scan), ["gantry.toml", "worker.sh"]);
        std::fs::write(root.join("web/VERSION"), "2").expect("write");
        let again = of_services(root, &services).expect("scan");
        assert_eq!(
            scan.artifact.digest, again.artifact.digest,
            "a change inside web's context leaves the artifact as it was"
        );
        std::fs::write(root.join("worker.sh"), "sleep 2").expect("write");
        let changed = of_services(root, &services).expect("scan");
        assert_ne!(scan.artifact.digest, changed.artifact.digest);
    }

    #[test]
    fn a_context_that_is_the_project_or_holds_a_static_directory_is_shipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("site/dist")).expect("mkdir");
        std::fs::write(root.join("Dockerfile"), "FROM scratch").expect("write");
        std::fs::write(root.join("site/Dockerfile"), "FROM scratch").expect("write");
        std::fs::write(root.join("site/dist/index.html"), "hi").expect("write");
        let services = services(
            root,
            "[project]\nname = \"p\"\n\
             [services.api]\nimage = \"p-api\"\nbuild = { context = \".\" }\n\
             [services.site]\nimage = \"p-site\"\nbuild = { context = \"site\" }\n\
             [services.pages]\nstatic = \"site/dist\"\n",
        );
        let selection = Selection::of(&services);
        assert!(selection.left_out.is_empty(), "{selection:?}");
        let scan = scan(root, &selection).expect("scan");
        assert_eq!(
            paths(&scan),
            [
                "Dockerfile",
                "gantry.toml",
                "site/Dockerfile",
                "site/dist/index.html"
            ]
        );
    }

    #[test]
    fn scan_ignores_build_output_but_ships_declared_artifacts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("target/release")).expect("mkdir");
        std::fs::create_dir_all(root.join(".git")).expect("mkdir");
        std::fs::write(root.join("app.py"), "print(1)").expect("write");
        std::fs::write(root.join("debug.log"), "noise").expect("write");
        std::fs::write(root.join(".gantryignore"), "*.log\n").expect("write");
        std::fs::write(root.join("target/release/web"), "binary").expect("write");
        std::fs::write(root.join(".git/HEAD"), "ref").expect("write");
        let scan = scan(root, &declared(&["target/release/web"])).expect("scan");
        let paths: Vec<&str> = scan
            .artifact
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(paths, [".gantryignore", "app.py", "target/release/web"]);

        let again = super::scan(root, &declared(&["target/release/web"])).expect("scan");
        assert_eq!(scan.artifact.digest, again.artifact.digest, "stable");
        std::fs::write(root.join("app.py"), "print(2)").expect("write");
        let changed = super::scan(root, &declared(&["target/release/web"])).expect("scan");
        assert_ne!(
            scan.artifact.digest, changed.artifact.digest,
            "a changed file changes the digest"
        );
        let same: Vec<_> = scan
            .artifact
            .files
            .iter()
            .zip(&changed.artifact.files)
            .filter(|(a, b)| a.digest == b.digest)
            .map(|(a, _)| a.path.as_str())
            .collect();
        assert_eq!(
            same,
            [".gantryignore", "target/release/web"],
            "only the changed file's blob differs"
        );
    }

    #[test]
    fn a_missing_declared_artifact_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = scan(dir.path(), &declared(&["target/release/web"])).expect_err("missing");
        assert!(err.to_string().contains("was the build run"), "{err}");
    }
}
