//! Where a service's backups lie in the state directory, and their records:
//! `backups/<project>/<service>/` (0700) holds each backup's data and its
//! `<id>.json` record (both 0600), and `failure.json` while the last backup
//! failed. Nothing here knows how a backup is taken.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use gantry_core::agent_api::{BackupFailure, BackupInfo, BackupKind};
use gantry_core::agent_dir::Paths;
use gantry_core::file::write_atomic;

/// A service's backup directory.
pub(crate) fn dir(paths: &Paths, project: &str, service: &str) -> PathBuf {
    paths.backups(project).join(service)
}

/// The service's backup directory, made private if missing.
pub(crate) fn create_dir(paths: &Paths, project: &str, service: &str) -> std::io::Result<PathBuf> {
    let dir = dir(paths, project, service);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    Ok(dir)
}

/// The file name's ending for a kind's data.
fn extension(kind: BackupKind) -> &'static str {
    match kind {
        BackupKind::Volumes | BackupKind::Files => "tar.zst",
        BackupKind::Sqlite => "sqlite.zst",
        BackupKind::Postgres => "pgdump",
        BackupKind::Mysql => "sql.zst",
    }
}

/// Where a backup's data is.
pub(crate) fn data(dir: &Path, id: &str, kind: BackupKind) -> PathBuf {
    dir.join(format!("{id}.{}", extension(kind)))
}

fn record(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

/// Whether `id` can name a backup: what [`new_id`] makes, nothing that
/// could reach outside the directory.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 40
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'T' || b == b'Z' || b == b'-')
}

/// A new backup's id, by `now_ms` in UTC (`20261206T030000Z`), made unique
/// in `dir` with `-2`, `-3`...
pub(crate) fn new_id(dir: &Path, now_ms: u64) -> String {
    let secs = now_ms / 1000;
    let (year, month, day) = gantry_core::config::schedule::civil(secs / 86_400);
    let of_day = secs % 86_400;
    let base = format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        of_day / 3600,
        (of_day / 60) % 60,
        of_day % 60
    );
    let mut id = base.clone();
    let mut n = 1;
    while record(dir, &id).exists() {
        n += 1;
        id = format!("{base}-{n}");
    }
    id
}

/// Records a finished backup (its data already in place).
pub(crate) fn write_record(dir: &Path, info: &BackupInfo) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?;
    write_atomic(&record(dir, &info.id), &text, 0o600)
}

/// The service's backups, newest first. Records that do not parse, or whose
/// data is gone, are left out.
pub(crate) fn list(paths: &Paths, project: &str, service: &str) -> Vec<BackupInfo> {
    let dir = dir(paths, project, service);
    let mut found: Vec<BackupInfo> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let id = name.strip_suffix(".json")?;
            if !valid_id(id) {
                return None;
            }
            let bytes = std::fs::read(entry.path()).ok()?;
            let info: BackupInfo = serde_json::from_slice(&bytes).ok()?;
            data(&dir, &info.id, info.kind).exists().then_some(info)
        })
        .collect();
    found.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    found
}

/// One backup of the service, by id.
pub(crate) fn find(paths: &Paths, project: &str, service: &str, id: &str) -> Option<BackupInfo> {
    if !valid_id(id) {
        return None;
    }
    list(paths, project, service)
        .into_iter()
        .find(|b| b.id == id)
}

/// Deletes the oldest backups beyond the newest `keep`; their ids.
pub(crate) fn prune(paths: &Paths, project: &str, service: &str, keep: u32) -> Vec<String> {
    let dir = dir(paths, project, service);
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    let mut removed = Vec::new();
    for old in list(paths, project, service).into_iter().skip(keep) {
        // The record first: a backup without its record is never listed.
        let _ = std::fs::remove_file(record(&dir, &old.id));
        let _ = std::fs::remove_file(data(&dir, &old.id, old.kind));
        removed.push(old.id);
    }
    removed
}

fn failure_file(paths: &Paths, project: &str, service: &str) -> PathBuf {
    dir(paths, project, service).join("failure.json")
}

/// The service's last backup failure, while no backup has succeeded since.
pub(crate) fn failure(paths: &Paths, project: &str, service: &str) -> Option<BackupFailure> {
    let bytes = std::fs::read(failure_file(paths, project, service)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(crate) fn set_failure(
    paths: &Paths,
    project: &str,
    service: &str,
    failure: &BackupFailure,
) -> std::io::Result<()> {
    create_dir(paths, project, service)?;
    let text = serde_json::to_vec_pretty(failure).map_err(std::io::Error::other)?;
    write_atomic(&failure_file(paths, project, service), &text, 0o600)
}

pub(crate) fn clear_failure(paths: &Paths, project: &str, service: &str) {
    let _ = std::fs::remove_file(failure_file(paths, project, service));
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_core::agent_api::BackupTrigger;

    fn info(id: &str, at: u64) -> BackupInfo {
        BackupInfo {
            id: id.to_owned(),
            service: "db".to_owned(),
            kind: BackupKind::Files,
            created_at: at,
            size: 1,
            sha256: String::new(),
            trigger: BackupTrigger::Manual,
            release: None,
            duration_ms: 0,
            host: None,
        }
    }

    #[test]
    fn ids_name_the_time_and_stay_unique_and_keep_keeps_the_newest() {
        let root = tempfile::tempdir().expect("a directory");
        let paths = Paths::new(root.path());
        let dir = create_dir(&paths, "shop", "db").expect("the directory");
        // 2026-12-06T18:30:00Z.
        let at = 1_796_581_800_000;
        let mut ids = Vec::new();
        for n in 0..4 {
            let id = new_id(&dir, at);
            std::fs::write(data(&dir, &id, BackupKind::Files), b"x").expect("data");
            write_record(&dir, &info(&id, at + n)).expect("record");
            ids.push(id);
        }
        assert_eq!(
            ids,
            [
                "20261206T183000Z",
                "20261206T183000Z-2",
                "20261206T183000Z-3",
                "20261206T183000Z-4"
            ]
        );
        assert_eq!(
            prune(&paths, "shop", "db", 2),
            ["20261206T183000Z-2", "20261206T183000Z"]
        );
        let left: Vec<String> = list(&paths, "shop", "db")
            .into_iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(left, ["20261206T183000Z-4", "20261206T183000Z-3"]);
        assert!(find(&paths, "shop", "db", "../../etc").is_none());
    }
}
