//! What a release ships: the project directory, less what is ignored, plus
//! every path a service declares as its `artifact`. Each file is named by the
//! sha256 of its bytes, so a host is sent only the files it lacks, and the
//! artifact's digest changes exactly when a file does.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::agent_api::{Artifact, ArtifactFile};

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

/// Scans `root`, skipping `IGNORED` directories and the patterns of a
/// `.gantryignore` (one per line: a name, or `*.suffix`), then adds `extra`
/// paths (relative to `root`) whole.
pub fn scan(root: &Path, extra: &[String]) -> std::io::Result<Scan> {
    let ignore = read_ignore(root);
    let mut files = BTreeMap::new();
    walk(root, root, &ignore, true, &mut files)?;
    for path in extra {
        let full = root.join(path);
        if full.is_dir() {
            walk(root, &full, &ignore, false, &mut files)?;
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
    patterns: &[String],
    defaults: bool,
    files: &mut BTreeMap<String, (ArtifactFile, PathBuf)>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ignored(&name, patterns, defaults) {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: a link is shipped as the file or tree it points to.
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            walk(root, &path, patterns, defaults, files)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let scan = scan(root, &["target/release/web".to_owned()]).expect("scan");
        let paths: Vec<&str> = scan
            .artifact
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(paths, [".gantryignore", "app.py", "target/release/web"]);

        let again = super::scan(root, &["target/release/web".to_owned()]).expect("scan");
        assert_eq!(scan.artifact.digest, again.artifact.digest, "stable");
        std::fs::write(root.join("app.py"), "print(2)").expect("write");
        let changed = super::scan(root, &["target/release/web".to_owned()]).expect("scan");
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
        let err = scan(dir.path(), &["target/release/web".to_owned()]).expect_err("missing");
        assert!(err.to_string().contains("was the build run"), "{err}");
    }
}
