//! Backups of a service, taken by this host's agent on the service's
//! schedule or when asked (`gantry backup now`), and put back by `restore`.
//! By kind: volumes and directories as tar + zstd, SQLite through its online
//! backup API, PostgreSQL and MySQL/MariaDB with their own dump tools run
//! inside the container. Each backup and restore holds the project's deploy
//! lock, so none runs during a deploy. Backups lie in
//! `backups/<project>/<service>/` (`backup_files`), outside the releases.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_core::Code;
use gantry_core::agent_api::v1::Workload;
use gantry_core::agent_api::{
    BackupFailure, BackupInfo, BackupKind, BackupList, BackupRestored, BackupTrigger,
    InstanceState, ServiceSelector, ServiceSpec, ServiceState, ServiceUser,
};
use gantry_core::config::schedule::Schedule;

use crate::agent::{Agent, now_ms};
use crate::backup_files as files;
use crate::container::{VolumeMount, container_name, volume_name};
use crate::error::AgentError;
use crate::isolation::Isolation;
use crate::{as_user, backup_archive, container_instance, control};

/// How long a database's dump or restore may run (its tool in the
/// container, or SQLite's copy) before it is killed and the backup or
/// restore fails.
pub(crate) const DUMP_TIME_LIMIT: Duration = Duration::from_secs(4 * 60 * 60);

/// A duration as people read it: `4h`, `90s`.
fn hours(limit: Duration) -> String {
    match limit.as_secs() {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn timed_out(tool: &str, limit: Duration) -> AgentError {
    failed(format!(
        "{tool} ran past the time limit of {} and was killed",
        hours(limit)
    ))
}

/// PostgreSQL's tools as the official image and ours configure them: the
/// superuser `POSTGRES_USER`, trusted on the local socket, and its database.
const PG_DUMP: &str = r#"exec pg_dump --format=custom --username="${POSTGRES_USER:-postgres}" --dbname="${POSTGRES_DB:-${POSTGRES_USER:-postgres}}""#;
const PG_RESTORE: &str = r#"exec pg_restore --clean --if-exists --single-transaction --exit-on-error --username="${POSTGRES_USER:-postgres}" --dbname="${POSTGRES_DB:-${POSTGRES_USER:-postgres}}""#;
/// MariaDB's or MySQL's root password from the container's own settings
/// (never an argument), then their tool.
const MYSQL_AUTH: &str = r#"f="${MARIADB_ROOT_PASSWORD_FILE:-${MYSQL_ROOT_PASSWORD_FILE:-}}"; if [ -n "$f" ]; then MYSQL_PWD=$(cat "$f"); else MYSQL_PWD="${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}"; fi; export MYSQL_PWD; "#;
const MYSQL_DUMP: &str = r#"if command -v mariadb-dump >/dev/null; then exec mariadb-dump -uroot --all-databases --single-transaction --routines --events; else exec mysqldump -uroot --all-databases --single-transaction --routines --events; fi"#;
const MYSQL_RESTORE: &str =
    r#"if command -v mariadb >/dev/null; then exec mariadb -uroot; else exec mysql -uroot; fi"#;

fn failed(message: impl Into<String>) -> AgentError {
    AgentError::failed(Code::BackupFailed, message)
}

/// The service's spec in the release it runs now, and that release's id
/// and environment.
async fn current_spec(
    agent: &Agent,
    project: &str,
    service: &str,
) -> Result<(ServiceSpec, String, String), AgentError> {
    let (p, s) = (project.to_owned(), service.to_owned());
    let release = agent
        .db(move |db| match db.current(&p, &s)? {
            Some(id) => db.release(&p, &id),
            None => Ok(None),
        })
        .await
        .map_err(AgentError::store)?;
    let found = release.and_then(|r| {
        let spec = r.services.into_iter().find(|x| x.name == service)?;
        Some((spec, r.id, r.environment))
    });
    found.ok_or_else(|| {
        AgentError::not_found(
            Code::ServiceNotFound,
            format!("`{project}` runs no service `{service}` on this host"),
            "see `gantry status` for the services",
        )
    })
}

/// `GET .../backups`: the service's backups, newest first, with its schedule.
pub(crate) async fn list(
    agent: &Agent,
    project: &str,
    service: &str,
) -> Result<BackupList, AgentError> {
    let spec = current_spec(agent, project, service).await.ok();
    let backup = spec.as_ref().and_then(|(s, _, _)| s.backup.clone());
    let backups = files::list(&agent.paths, project, service);
    let next_at = backup.as_ref().and_then(|b| {
        let schedule = Schedule::parse(&b.schedule).ok()?;
        let after = match &schedule {
            Schedule::Every { .. } => backups.first().map_or_else(now_ms, |b| b.created_at),
            Schedule::Cron(_) => now_ms(),
        };
        Some(schedule.next_after(after).max(now_ms()))
    });
    if spec.is_none() && backups.is_empty() {
        return Err(AgentError::not_found(
            Code::ServiceNotFound,
            format!("`{project}` has no service `{service}` and no backups of one on this host"),
            "see `gantry status` for the services",
        ));
    }
    Ok(BackupList {
        service: service.to_owned(),
        backups,
        schedule: backup.as_ref().map(|b| b.schedule.clone()),
        keep: backup.as_ref().map(|b| b.keep),
        next_at,
        last_failure: files::failure(&agent.paths, project, service),
    })
}

/// `POST .../backups`: takes a backup now. A failure is recorded for
/// `gantry status` until a backup succeeds.
pub(crate) async fn take(
    agent: &Agent,
    project: &str,
    service: &str,
    trigger: BackupTrigger,
) -> Result<BackupInfo, AgentError> {
    let (spec, release, environment) = current_spec(agent, project, service).await?;
    let Some(backup) = spec.backup.clone() else {
        return Err(AgentError::invalid(
            Code::BackupNotConfigured,
            format!("service `{service}` has no `backup` in the release it runs"),
            "add backup = { schedule = \"every 1d\" } to it in gantry.toml, and deploy",
        ));
    };
    let lock = agent.deploy_lock(project);
    let _held = lock.lock().await;
    let started = Instant::now();
    let at = now_ms();
    let taken = async {
        let dir = files::create_dir(&agent.paths, project, service)
            .map_err(|e| failed(format!("cannot make the backup directory: {e}")))?;
        let id = files::new_id(&dir, at);
        let out = files::data(&dir, &id, backup.kind);
        let partial = dir.join(format!("{id}.partial"));
        let made = dump(agent, project, &environment, &spec, backup.kind, &partial).await;
        let finished = match made {
            Ok(()) => std::fs::rename(&partial, &out)
                .map_err(|e| failed(format!("cannot keep the backup: {e}"))),
            Err(e) => Err(e),
        };
        if let Err(e) = finished {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        let (size, sha256) = size_and_digest(&out)
            .await
            .map_err(|e| failed(format!("cannot read the backup: {e}")))?;
        let info = BackupInfo {
            id,
            service: service.to_owned(),
            kind: backup.kind,
            created_at: at,
            size,
            sha256,
            trigger,
            release: Some(release),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            host: None,
        };
        files::write_record(&dir, &info)
            .map_err(|e| failed(format!("cannot record the backup: {e}")))?;
        Ok(info)
    };
    match taken.await {
        Ok(info) => {
            files::clear_failure(&agent.paths, project, service);
            let removed = files::prune(&agent.paths, project, service, backup.keep);
            tracing::info!(project, service, id = %info.id, size = info.size, removed = removed.len(), "backup taken");
            Ok(info)
        }
        Err(e) => {
            let failure = BackupFailure {
                at,
                trigger,
                message: e.to_string(),
            };
            let _ = files::set_failure(&agent.paths, project, service, &failure);
            tracing::warn!(project, service, error = %e, "backup failed");
            Err(e)
        }
    }
}

/// Size and sha256 of a file (the workspace's `file_digest`, the one
/// artifacts are named by), read on the blocking pool.
async fn size_and_digest(path: &Path) -> std::io::Result<(u64, String)> {
    let path = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        let size = std::fs::metadata(&path)?.len();
        Ok((size, gantry_core::artifact::file_digest(&path)?))
    });
    read.await.map_err(std::io::Error::other)?
}

/// The user whose ids work on `spec`'s files takes ([`as_user`]): its
/// service's, where the agent runs services as their project's user.
fn service_user(
    agent: &Agent,
    project: &str,
    spec: &ServiceSpec,
) -> Result<Option<ServiceUser>, AgentError> {
    // A container's files are its image user's, not the project's: paths
    // of an image service stay the agent's to reach.
    let image = matches!(spec.workload, Workload::Compose { .. });
    if agent.isolation != Isolation::ProjectUsers || image {
        return Ok(None);
    }
    let confinement = agent
        .isolation
        .confinement(&agent.paths, project, &spec.name, spec.run_as_root)
        .map_err(failed)?;
    Ok(confinement.user)
}

/// The user whose ids archive and restore `spec`'s files: a `files`
/// backup's directories are the service's ([`service_user`]); a volume's
/// hold files of the container's users, so root keeps their owners.
fn files_user(
    agent: &Agent,
    project: &str,
    spec: &ServiceSpec,
    kind: BackupKind,
) -> Result<Option<ServiceUser>, AgentError> {
    match kind {
        BackupKind::Files => service_user(agent, project, spec),
        _ => Ok(None),
    }
}

/// Runs blocking work on the blocking pool; its error becomes a failed backup.
async fn blocking<F>(what: &'static str, f: F) -> Result<(), AgentError>
where
    F: FnOnce() -> std::io::Result<()> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(failed(format!("{what}: {e}"))),
        Err(e) => Err(failed(format!("{what}: {e}"))),
    }
}

/// Writes the service's backup of `kind` to `out`.
async fn dump(
    agent: &Agent,
    project: &str,
    environment: &str,
    spec: &ServiceSpec,
    kind: BackupKind,
    out: &Path,
) -> Result<(), AgentError> {
    let out = out.to_path_buf();
    match kind {
        BackupKind::Volumes | BackupKind::Files => {
            let sources = sources(agent, project, environment, spec, kind).await?;
            let user = files_user(agent, project, spec, kind)?;
            blocking("archive", move || {
                let file = std::fs::File::create(&out)?;
                as_user::run_as(user.as_ref(), || backup_archive::archive(&sources, file))
            })
            .await
        }
        BackupKind::Sqlite => {
            let db = host_path(spec)?;
            let user = service_user(agent, project, spec)?;
            let staging = agent.paths.staging();
            blocking("sqlite backup", move || {
                let dir = staging_dir(&staging, user.as_ref())?;
                sqlite_backup(&db, &out, user.as_ref(), dir.path())
            })
            .await
        }
        BackupKind::Postgres => in_container(agent, project, spec, PG_DUMP, None, Some(&out)).await,
        BackupKind::Mysql => {
            let raw = out.with_extension("raw");
            let script = format!("{MYSQL_AUTH}{MYSQL_DUMP}");
            let ran = in_container(agent, project, spec, &script, None, Some(&raw)).await;
            let compressed = match ran {
                Ok(()) => {
                    let (from, to) = (raw.clone(), out);
                    blocking("compress", move || compress(&from, &to)).await
                }
                Err(e) => Err(e),
            };
            let _ = std::fs::remove_file(&raw);
            compressed
        }
    }
}

/// The `path` of a `sqlite` or `files` backup.
fn host_path(spec: &ServiceSpec) -> Result<PathBuf, AgentError> {
    spec.backup
        .as_ref()
        .and_then(|b| b.path.as_deref())
        .map(PathBuf::from)
        .ok_or_else(|| failed("the backup names no `path`"))
}

/// What a tar backup holds: (name in the archive, directory on this host).
/// A volume not made yet is made, so a restore has somewhere to go.
async fn sources(
    agent: &Agent,
    project: &str,
    environment: &str,
    spec: &ServiceSpec,
    kind: BackupKind,
) -> Result<Vec<(String, PathBuf)>, AgentError> {
    if kind == BackupKind::Files {
        return Ok(vec![("files".to_owned(), host_path(spec)?)]);
    }
    let engine = container_instance::engine(agent).await.map_err(failed)?;
    let mut sources = Vec::new();
    for text in &spec.volumes {
        let mount = VolumeMount::parse(text).map_err(failed)?;
        engine
            .ensure_volume(project, environment, &mount.name)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let name = volume_name(project, environment, &mount.name);
        let Some(dir) = engine
            .volume_mountpoint(&name)
            .await
            .map_err(|e| failed(e.to_string()))?
        else {
            return Err(failed(format!("the Docker volume {name} is gone")));
        };
        sources.push((mount.name, dir));
    }
    Ok(sources)
}

/// Runs `script` with `sh -c` in a live container of the service.
async fn in_container(
    agent: &Agent,
    project: &str,
    spec: &ServiceSpec,
    script: &str,
    stdin: Option<&Path>,
    stdout: Option<&Path>,
) -> Result<(), AgentError> {
    let (p, service) = (project.to_owned(), spec.name.clone());
    let records = agent
        .db(move |db| {
            let current = db.current(&p, &service)?;
            Ok(db
                .instances(&p)?
                .into_iter()
                .filter(|r| r.service == service && Some(&r.release) == current.as_ref())
                .find(|r| r.state == InstanceState::Live))
        })
        .await
        .map_err(AgentError::store)?;
    let Some(record) = records else {
        return Err(AgentError::conflict(
            Code::BackupFailed,
            format!(
                "service `{}` has no running container to dump from",
                spec.name
            ),
            "start it (`gantry restart`), then back up again",
        ));
    };
    let engine = container_instance::engine(agent).await.map_err(failed)?;
    let command = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let name = container_name(project, &record.id);
    let piped = engine
        .exec_piped(&name, &command, stdin, stdout, DUMP_TIME_LIMIT)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if piped.timed_out {
        return Err(timed_out(command_name(script), DUMP_TIME_LIMIT));
    }
    match piped.exit_code {
        Some(0) => Ok(()),
        code => Err(failed(format!(
            "{} exited with {}: {}",
            command_name(script),
            code.map_or_else(|| "no code".to_owned(), |c| c.to_string()),
            piped.stderr
        ))),
    }
}

/// The tool a script runs, for errors.
fn command_name(script: &str) -> &'static str {
    match script {
        PG_DUMP => "pg_dump",
        PG_RESTORE => "pg_restore",
        s if s.contains("mariadb-dump") => "mariadb-dump",
        _ => "mariadb",
    }
}

fn compress(from: &Path, to: &Path) -> std::io::Result<()> {
    compress_from(std::fs::File::open(from)?, to)
}

fn decompress(from: &Path, to: &Path) -> std::io::Result<()> {
    decompress_from(std::fs::File::open(from)?, to)
}

fn decompress_from(from: std::fs::File, to: &Path) -> std::io::Result<()> {
    decompress_into(from, std::fs::File::create(to)?)
}

fn decompress_into(from: std::fs::File, mut to: std::fs::File) -> std::io::Result<()> {
    let mut decoder = zstd::Decoder::new(from)?;
    std::io::copy(&mut decoder, &mut to)?;
    to.sync_all()
}

fn sqlite_error(e: rusqlite::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Copies one database into another with SQLite's online backup API, a
/// slice of pages at a time, and gives up past `limit` (a source written
/// all the time makes the copy start over, maybe forever).
fn copy_database(
    from: &rusqlite::Connection,
    to: &mut rusqlite::Connection,
    limit: Duration,
) -> std::io::Result<()> {
    use rusqlite::backup::{Backup, StepResult};
    let deadline = Instant::now() + limit;
    let backup = Backup::new(from, to).map_err(sqlite_error)?;
    loop {
        match backup.step(1024).map_err(sqlite_error)? {
            StepResult::Done => return Ok(()),
            // Busy or locked: a writer holds the database; a moment for it.
            StepResult::More => {}
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::other(format!(
                "the SQLite copy ran past the time limit of {} and was stopped",
                hours(limit)
            )));
        }
    }
}

/// A new directory of `user`'s alone (0700; the agent's, with no user) in
/// `staging`, with a random name: `staging` lets others pass (0711) but not
/// list it, so no other process finds the directory to plant a link or a
/// FIFO in, and what is made there uses the agent's disk, not the
/// service's. Removed when dropped.
fn staging_dir(staging: &Path, user: Option<&ServiceUser>) -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(staging)?;
    std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o711))?;
    let dir = tempfile::Builder::new()
        .prefix("sqlite-")
        .rand_bytes(16)
        .tempdir_in(staging)?;
    // The mode first: once the directory is the user's, an agent that is
    // not root (the unit `gantry configure` writes) may no longer set it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    if let Some(user) = user {
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))?;
    }
    Ok(dir)
}

/// Copies the live database with SQLite's online backup API (a consistent
/// copy while the service writes), then compresses the copy. The copy is
/// made as the service's `user` ([`as_user`]) in `dir`, the user's own
/// [`staging_dir`], opened there (not through a link, and only if `user`
/// owns it) and removed, all as the user; the agent reads the open file
/// into `out`, and is left an empty directory to remove.
fn sqlite_backup(
    db: &Path,
    out: &Path,
    user: Option<&ServiceUser>,
    dir: &Path,
) -> std::io::Result<()> {
    use rusqlite::{Connection, OpenFlags};
    let copy = dir.join("copy.db");
    let made = as_user::run_as(user, || {
        match std::fs::metadata(db) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is not a database file",
                    db.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(std::io::Error::other(format!(
                    "no database at {}",
                    db.display()
                )));
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot reach {}{}: {e}", db.display(), as_whom(user)),
                ));
            }
        }
        let source = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sqlite_error)?;
        source
            .busy_timeout(Duration::from_secs(10))
            .map_err(sqlite_error)?;
        let copied = Connection::open(&copy)
            .map_err(sqlite_error)
            .and_then(|mut target| copy_database(&source, &mut target, DUMP_TIME_LIMIT))
            .and_then(|()| open_owned(&copy, user));
        empty(dir);
        copied
    });
    compress_from(made?, out)
}

/// Removes what SQLite made in a staging directory (the copy, a journal
/// left by a failure), as whoever calls it: the directory is then empty,
/// for the agent to remove.
fn empty(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// " as the service's user (uid N)", for errors of work done as `user`.
fn as_whom(user: Option<&ServiceUser>) -> String {
    user.map(|u| format!(" as the service's user (uid {})", u.uid))
        .unwrap_or_default()
}

/// `path` opened to read, not through a link, and only if `user` owns it
/// (any owner with no user); never waiting, should it be a FIFO.
fn open_owned(path: &Path, user: Option<&ServiceUser>) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || user.is_some_and(|u| u.uid != meta.uid()) {
        return Err(std::io::Error::other(format!(
            "{} is not the service's own file",
            path.display()
        )));
    }
    Ok(file)
}

fn compress_from(input: std::fs::File, to: &Path) -> std::io::Result<()> {
    let output = std::fs::File::create(to)?;
    let mut encoder = zstd::Encoder::new(output, backup_archive::ZSTD_LEVEL)?;
    std::io::copy(&mut std::io::BufReader::new(input), &mut encoder)?;
    encoder.finish()?.sync_all()
}

/// Writes the backup into the database file (the service stopped). All of
/// it is done as the service's `user` ([`as_user`]): the database and its
/// directory are the service's, so a link it plants there leads nowhere
/// the service could not write itself, and a missing file is made as its.
/// The backup, which the service may not read, is opened here first, and
/// unpacked in `dir`, the user's own [`staging_dir`].
fn sqlite_restore(
    backup: &Path,
    db: &Path,
    user: Option<&ServiceUser>,
    dir: &Path,
) -> std::io::Result<()> {
    let compressed = std::fs::File::open(backup)?;
    as_user::run_as(user, move || {
        use std::os::unix::fs::OpenOptionsExt;
        let copy = dir.join("restore.db");
        // A new file, never one put there meanwhile (a link, a FIFO).
        let staged = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&copy)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot write {}{}: {e}", copy.display(), as_whom(user)),
                )
            })?;
        let restored = decompress_into(compressed, staged).and_then(|()| {
            let source = rusqlite::Connection::open(&copy).map_err(sqlite_error)?;
            let mut target = rusqlite::Connection::open(db).map_err(sqlite_error)?;
            target
                .busy_timeout(Duration::from_secs(10))
                .map_err(sqlite_error)?;
            copy_database(&source, &mut target, DUMP_TIME_LIMIT)
        });
        empty(dir);
        restored
    })
}

/// `POST .../backups/{id}/restore`: puts a backup back. A volume, directory
/// or SQLite file is restored with the service stopped, which is started
/// again after; a database dump is restored into the running database by
/// its own tool, in one transaction.
pub(crate) async fn restore(
    agent: &Agent,
    project: &str,
    service: &str,
    id: &str,
) -> Result<BackupRestored, AgentError> {
    let Some(backup) = files::find(&agent.paths, project, service, id) else {
        return Err(AgentError::not_found(
            Code::BackupNotFound,
            format!("this host keeps no backup `{id}` of `{service}`"),
            "`gantry backup list SERVICE` shows the backups",
        ));
    };
    let (spec, _, environment) = current_spec(agent, project, service).await?;
    let lock = agent.deploy_lock(project);
    let _held = lock.lock().await;
    let started = Instant::now();
    let dir = files::dir(&agent.paths, project, service);
    let data = files::data(&dir, &backup.id, backup.kind);
    match backup.kind {
        BackupKind::Postgres => {
            in_container(agent, project, &spec, PG_RESTORE, Some(&data), None).await?;
        }
        BackupKind::Mysql => {
            let raw = dir.join(format!("{id}.restore"));
            let (from, to) = (data.clone(), raw.clone());
            blocking("decompress", move || decompress(&from, &to)).await?;
            let script = format!("{MYSQL_AUTH}{MYSQL_RESTORE}");
            let ran = in_container(agent, project, &spec, &script, Some(&raw), None).await;
            let _ = std::fs::remove_file(&raw);
            ran?;
        }
        kind => restore_stopped(agent, project, &environment, &spec, kind, &data).await?,
    }
    tracing::info!(project, service, id, "backup restored");
    Ok(BackupRestored {
        backup,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Stops the service, puts the files back, starts it again and waits until
/// it runs (its health deadline at most).
async fn restore_stopped(
    agent: &Agent,
    project: &str,
    environment: &str,
    spec: &ServiceSpec,
    kind: BackupKind,
    data: &Path,
) -> Result<(), AgentError> {
    let selector = ServiceSelector {
        service: Some(spec.name.clone()),
    };
    control::stop(agent, project.to_owned(), selector.clone()).await?;
    let data = data.to_path_buf();
    let put_back = match kind {
        BackupKind::Sqlite => {
            let db = host_path(spec)?;
            match service_user(agent, project, spec) {
                Ok(user) => {
                    let staging = agent.paths.staging();
                    blocking("sqlite restore", move || {
                        let dir = staging_dir(&staging, user.as_ref())?;
                        sqlite_restore(&data, &db, user.as_ref(), dir.path())
                    })
                    .await
                }
                Err(e) => Err(e),
            }
        }
        _ => match (
            sources(agent, project, environment, spec, kind).await,
            files_user(agent, project, spec, kind),
        ) {
            (Ok(targets), Ok(user)) => {
                blocking("unpack", move || {
                    let archive = std::fs::File::open(&data)?;
                    as_user::run_as(user.as_ref(), || {
                        backup_archive::unarchive(archive, &targets)
                    })
                })
                .await
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
    };
    // Started again whether or not the files went back: a failed restore
    // leaves the service running on what it had.
    control::restart(agent, project.to_owned(), selector).await?;
    let deadline = Instant::now() + agent.settings.health_deadline;
    while Instant::now() < deadline {
        let status = control::status(agent, project.to_owned()).await?;
        let running = status
            .services
            .iter()
            .any(|s| s.name == spec.name && s.state == ServiceState::Running);
        if running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    put_back
}

/// The file of a backup, to stream to `gantry backup pull`.
pub(crate) fn download(
    agent: &Agent,
    project: &str,
    service: &str,
    id: &str,
) -> Result<(BackupInfo, PathBuf), AgentError> {
    let Some(backup) = files::find(&agent.paths, project, service, id) else {
        return Err(AgentError::not_found(
            Code::BackupNotFound,
            format!("this host keeps no backup `{id}` of `{service}`"),
            "`gantry backup list SERVICE` shows the backups",
        ));
    };
    let dir = files::dir(&agent.paths, project, service);
    let path = files::data(&dir, &backup.id, backup.kind);
    Ok((backup, path))
}

/// When each scheduled service is due next, by (project, service).
type Due = HashMap<(String, String), (String, u64)>;

/// Takes every service's scheduled backups until the agent stops: each
/// second, the services whose time has come, one after another.
pub(crate) async fn run_schedules(
    agent: Arc<Agent>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut due: Due = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if *shutdown.borrow() {
            return;
        }
        for (project, service, schedule) in scheduled(&agent).await {
            let key = (project.clone(), service.clone());
            let now = now_ms();
            let Ok(parsed) = Schedule::parse(&schedule) else {
                continue;
            };
            let next = match due.get(&key) {
                Some((seen, at)) if *seen == schedule => *at,
                _ => first_due(&agent, &project, &service, &parsed, now),
            };
            if now < next {
                due.insert(key, (schedule, next));
                continue;
            }
            let _ = take(&agent, &project, &service, BackupTrigger::Schedule).await;
            due.insert(key, (schedule, parsed.next_after(now_ms().max(now))));
        }
    }
}

/// When a schedule first seen is due: an interval from the newest backup
/// (so an agent restarted does not wait a whole interval, nor back up at
/// once when one was just taken), cron at its next minute.
fn first_due(agent: &Agent, project: &str, service: &str, schedule: &Schedule, now: u64) -> u64 {
    match schedule {
        Schedule::Every { .. } => {
            let last = files::list(&agent.paths, project, service)
                .first()
                .map_or(now, |b| b.created_at);
            schedule.next_after(last)
        }
        Schedule::Cron(_) => schedule.next_after(now),
    }
}

/// (project, service, schedule) of every service whose current release
/// backs it up.
async fn scheduled(agent: &Agent) -> Vec<(String, String, String)> {
    let found = agent
        .db(|db| {
            let mut out = Vec::new();
            let mut releases = HashMap::new();
            for (project, service, release) in db.current_everywhere()? {
                let key = (project.clone(), release.clone());
                if !releases.contains_key(&key) {
                    releases.insert(key.clone(), db.release(&project, &release)?);
                }
                let spec = releases
                    .get(&key)
                    .and_then(|r| r.as_ref())
                    .and_then(|r| r.services.iter().find(|s| s.name == service));
                if let Some(backup) = spec.and_then(|s| s.backup.as_ref()) {
                    out.push((project, service, backup.schedule.clone()));
                }
            }
            Ok(out)
        })
        .await;
    found.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database of about 8 MiB: more pages than one step copies.
    fn big_database(path: &Path) {
        let db = rusqlite::Connection::open(path).expect("open");
        db.execute_batch(
            "CREATE TABLE t(x BLOB);
             WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 2000)
             INSERT INTO t SELECT randomblob(4000) FROM k;",
        )
        .expect("fill");
    }

    #[test]
    fn a_sqlite_copy_past_its_time_limit_stops_and_says_so() {
        let dir = tempfile::tempdir().expect("a directory");
        big_database(&dir.path().join("big.db"));
        let from = rusqlite::Connection::open(dir.path().join("big.db")).expect("open");
        let mut to = rusqlite::Connection::open(dir.path().join("copy.db")).expect("open");
        let Err(e) = copy_database(&from, &mut to, Duration::ZERO) else {
            panic!("copied past its time limit");
        };
        assert_eq!(
            e.to_string(),
            "the SQLite copy ran past the time limit of 0s and was stopped"
        );
        copy_database(&from, &mut to, DUMP_TIME_LIMIT).expect("copied");
        let count: i64 = to
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count, 2000);
    }

    #[test]
    fn a_dump_past_its_time_limit_fails_naming_the_limit() {
        assert_eq!(
            timed_out("pg_dump", DUMP_TIME_LIMIT).to_string(),
            "pg_dump ran past the time limit of 4h and was killed"
        );
    }
}
