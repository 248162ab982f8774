//! `gantry backup now|list|restore|pull SERVICE [ID]`: a service's backups,
//! which each host that runs it takes and keeps (its agent's `backup`
//! module). `now` and `list` ask every such host; `restore` and `pull` go
//! to the host that keeps the backup named.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::agent_api::{BackupFailure, BackupInfo, BackupKind};
use crate::config::resolve::Host as HostSpec;
use crate::host::{BackupRef, Connect, Host};
use crate::{Code, Error, Project};

/// What `gantry backup` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Now,
    List,
    Restore {
        id: String,
    },
    /// Download to `to`, else `./<service>-<id>.<ext>` in `cwd`.
    Pull {
        id: String,
        to: Option<PathBuf>,
    },
}

/// The report of any `gantry backup` command.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub environment: String,
    pub service: String,
    /// `now`, `list`, `restore` or `pull`.
    pub action: &'static str,
    /// `now`: the backups taken; `list`: every backup kept, newest first;
    /// `restore` and `pull`: the one named.
    pub backups: Vec<BackupInfo>,
    pub schedule: Option<String>,
    pub keep: Option<u32>,
    /// `list`: when the next scheduled backup is due on each host (Unix ms).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub next: Vec<HostTime>,
    /// Hosts whose last backup of the service failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<HostFailure>,
    /// `pull`: where the backup was written.
    pub path: Option<String>,
    /// `restore`: how long it took, in milliseconds.
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct HostTime {
    pub host: String,
    pub at: u64,
}

#[derive(Debug, Serialize)]
pub struct HostFailure {
    pub host: String,
    #[serde(flatten)]
    pub failure: BackupFailure,
}

/// The hosts of `environment` that run `service`, and the project's name.
fn hosts_running(
    project: &Project,
    environment: &str,
    service: &str,
) -> Result<(String, Vec<HostSpec>), Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let Some(spec) = env.services.get(service) else {
        return Err(Error::Backup {
            code: Code::ServiceNotFound,
            message: format!("environment `{environment}` has no service `{service}`"),
            hint: format!(
                "the services: {}",
                env.services.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    };
    let hosts = env
        .hosts
        .into_iter()
        .filter(|h| spec.runs_on(&h.name))
        .collect();
    Ok((env.project, hosts))
}

pub fn backup(
    project: &Project,
    environment: &str,
    service: &str,
    action: Action,
    cwd: &Path,
    connect: Connect<'_>,
) -> Result<BackupReport, Error> {
    let (name, hosts) = hosts_running(project, environment, service)?;
    let mut report = BackupReport {
        environment: environment.to_owned(),
        service: service.to_owned(),
        action: "list",
        backups: Vec::new(),
        schedule: None,
        keep: None,
        next: Vec::new(),
        failures: Vec::new(),
        path: None,
        duration_ms: None,
    };
    match action {
        Action::Now => {
            report.action = "now";
            for spec in &hosts {
                let host = connect(spec)?;
                let mut info = host.take_backup(&name, service)?;
                info.host = Some(spec.name.clone());
                report.backups.push(info);
            }
        }
        Action::List => list(&name, service, &hosts, connect, &mut report)?,
        Action::Restore { id } => {
            report.action = "restore";
            let (host, info) = holder(&name, service, &id, &hosts, connect)?;
            let restored = host.restore_backup(BackupRef {
                project: &name,
                service,
                id: &id,
            })?;
            report.duration_ms = Some(restored.duration_ms);
            report.backups.push(info);
        }
        Action::Pull { id, to } => {
            report.action = "pull";
            let (host, info) = holder(&name, service, &id, &hosts, connect)?;
            let path = to.unwrap_or_else(|| cwd.join(file_name(service, &info)));
            pull(host.as_ref(), &name, &info, &path)?;
            report.path = Some(path.display().to_string());
            report.backups.push(info);
        }
    }
    Ok(report)
}

/// Every host's backups of the service, newest first, with their schedule.
fn list(
    project: &str,
    service: &str,
    hosts: &[HostSpec],
    connect: Connect<'_>,
    report: &mut BackupReport,
) -> Result<(), Error> {
    for spec in hosts {
        let listed = connect(spec)?.backups(project, service)?;
        report.schedule = report.schedule.take().or(listed.schedule);
        report.keep = report.keep.or(listed.keep);
        if let Some(at) = listed.next_at {
            report.next.push(HostTime {
                host: spec.name.clone(),
                at,
            });
        }
        if let Some(failure) = listed.last_failure {
            report.failures.push(HostFailure {
                host: spec.name.clone(),
                failure,
            });
        }
        report
            .backups
            .extend(listed.backups.into_iter().map(|mut b| {
                b.host = Some(spec.name.clone());
                b
            }));
    }
    report
        .backups
        .sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    Ok(())
}

/// The host that keeps backup `id`, connected, and the backup.
fn holder(
    project: &str,
    service: &str,
    id: &str,
    hosts: &[HostSpec],
    connect: Connect<'_>,
) -> Result<(Box<dyn Host>, BackupInfo), Error> {
    for spec in hosts {
        let host = connect(spec)?;
        let found = host
            .backups(project, service)?
            .backups
            .into_iter()
            .find(|b| b.id == id);
        if let Some(mut info) = found {
            info.host = Some(spec.name.clone());
            return Ok((host, info));
        }
    }
    Err(Error::Backup {
        code: Code::BackupNotFound,
        message: format!("no host keeps a backup `{id}` of `{service}`"),
        hint: format!("`gantry backup list {service}` shows the backups"),
    })
}

/// `<service>-<id>.<ext>`, as the host names its kind.
fn file_name(service: &str, info: &BackupInfo) -> String {
    let extension = match info.kind {
        BackupKind::Volumes | BackupKind::Files => "tar.zst",
        BackupKind::Sqlite => "sqlite.zst",
        BackupKind::Postgres => "pgdump",
        BackupKind::Mysql => "sql.zst",
    };
    format!("{service}-{}.{extension}", info.id)
}

/// Downloads the backup to `path` (0600) by way of a temporary file in the
/// same directory, kept only when its sha256 is the host's.
fn pull(host: &dyn Host, project: &str, info: &BackupInfo, path: &Path) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Backup {
        code: Code::BackupFailed,
        message: format!("cannot write {}: {e}", path.display()),
        hint: "pull it to a directory you can write to (--to PATH)".to_owned(),
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".gantry-pull-")
        .tempfile_in(dir)
        .map_err(io)?;
    let hasher = {
        let mut hashing = Hashing {
            file: std::io::BufWriter::new(temp.as_file_mut()),
            hasher: Sha256::new(),
        };
        let backup = BackupRef {
            project,
            service: &info.service,
            id: &info.id,
        };
        host.download_backup(backup, &mut hashing)?;
        let Hashing { file, hasher } = hashing;
        file.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        hasher
    };
    // Hashed as it streams in, written as artifacts' digests are.
    let sha256 = crate::artifact::hex(&hasher.finalize());
    if sha256 != info.sha256 {
        return Err(Error::Backup {
            code: Code::BackupFailed,
            message: format!(
                "the copy of backup `{}` has sha256 {sha256}, not the host's {}",
                info.id, info.sha256
            ),
            hint: "pull it again".to_owned(),
        });
    }
    temp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// A writer that hashes what it writes.
struct Hashing<W: Write> {
    file: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
