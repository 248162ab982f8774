//! Database migrations: a service's `migrate = { sql = "migrations",
//! database = "DATABASE_URL" }` names a directory of `NNNN_name.sql` files
//! and the variable (env or secret) holding its database's URL. The engine
//! applies the files in order, each in its own transaction, recording each
//! in the database's `gantry_migrations` table (version, name, sha256,
//! when, how long); a recorded migration whose file changed is refused.
//!
//! The SQL runs from this machine (`gantry migrate`, and a deploy before its
//! rollout), with the URL read where a deploy reads it: so it reaches a
//! database this machine reaches. A SQLite file of an environment on other
//! hosts lives there, out of reach, and is refused as not supported yet.
//! It never prints or keeps the URL, which may hold a password.

mod database;
mod files;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::resolve::{Environment, Reach, Service};
use crate::progress::Progress;
use crate::{Error, Project};

pub use database::Kind;
pub use files::{MAX_FILE_BYTES, MAX_FILES, Migration, read as read_dir};

/// A row of `gantry_migrations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub version: u32,
    pub name: String,
    pub checksum: String,
    pub applied_at_ms: u64,
    pub duration_ms: u64,
}

impl Applied {
    fn of(m: &Migration, applied_at_ms: u64, duration_ms: u64) -> Applied {
        Applied {
            version: m.version,
            name: m.name.clone(),
            checksum: m.checksum.clone(),
            applied_at_ms,
            duration_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The migration files cannot be used as they are.
    #[error("the migrations in {}: {problem}", dir.display())]
    Invalid { dir: PathBuf, problem: String },
    /// The URL in the named variable is not one the engine can use.
    #[error("`{variable}` of `{service}` does not name a database: {problem}")]
    Url {
        service: String,
        variable: String,
        problem: String,
    },
    /// A recorded migration's file was edited or removed.
    #[error("migration {version:04}_{name} was applied, and its file {problem}")]
    Edited {
        version: u32,
        name: String,
        problem: String,
    },
    /// A migration's SQL failed: it was rolled back and none after it ran.
    #[error("migration {version:04}_{name} failed and was rolled back: {message}")]
    Failed {
        version: u32,
        name: String,
        message: String,
    },
    /// The database could not be reached or failed around the migrations.
    #[error("{message}")]
    Database { message: String },
}

impl MigrateError {
    pub fn code(&self) -> crate::Code {
        use crate::Code;
        match self {
            MigrateError::Invalid { .. } | MigrateError::Url { .. } => Code::MigrateInvalid,
            MigrateError::Edited { .. } => Code::MigrateEdited,
            MigrateError::Failed { .. } => Code::MigrateFailed,
            MigrateError::Database { .. } => Code::MigrateDatabase,
        }
    }

    pub fn hint(&self) -> String {
        match self {
            MigrateError::Invalid { .. } => "name each file NNNN_name.sql, numbered 1, 2, 3, … with no gap and no number twice".to_owned(),
            MigrateError::Url { .. } => "give it postgres://user:password@host:5432/db or sqlite:///absolute/path.db (as a secret: `gantry secrets set -e ENV NAME`)".to_owned(),
            MigrateError::Edited { .. } => "an applied migration is history: put the file back as it was (git checkout it) and write the change as a new migration".to_owned(),
            MigrateError::Failed { .. } => "fix the migration and run `gantry migrate run` again: the ones before it stay applied, it and the ones after it are pending".to_owned(),
            MigrateError::Database { .. } => "check that the database runs and that this machine reaches it with the URL's user".to_owned(),
        }
    }
}

/// Where a migration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Applied,
    Pending,
    /// Applied, and its file changed since.
    Edited,
    /// Applied, and its file is gone.
    Missing,
}

/// One migration, as the files and the database see it.
#[serde_with::skip_serializing_none]
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub version: u32,
    pub name: String,
    pub state: State,
    pub checksum: String,
    pub applied_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
}

/// Each file and each recorded row, by version.
pub fn entries(files: &[Migration], applied: &[Applied]) -> Vec<Entry> {
    let rows: BTreeMap<u32, &Applied> = applied.iter().map(|a| (a.version, a)).collect();
    let mut out: Vec<Entry> = files
        .iter()
        .map(|m| {
            let row = rows.get(&m.version);
            Entry {
                version: m.version,
                name: m.name.clone(),
                state: match row {
                    None => State::Pending,
                    Some(r) if r.checksum == m.checksum => State::Applied,
                    Some(_) => State::Edited,
                },
                checksum: m.checksum.clone(),
                applied_at_ms: row.map(|r| r.applied_at_ms),
                duration_ms: row.map(|r| r.duration_ms),
            }
        })
        .collect();
    let known: std::collections::HashSet<u32> = files.iter().map(|m| m.version).collect();
    out.extend(
        applied
            .iter()
            .filter(|a| !known.contains(&a.version))
            .map(|a| Entry {
                version: a.version,
                name: a.name.clone(),
                state: State::Missing,
                checksum: a.checksum.clone(),
                applied_at_ms: Some(a.applied_at_ms),
                duration_ms: Some(a.duration_ms),
            }),
    );
    out.sort_by_key(|e| e.version);
    out
}

/// Refuses to go on from a history that is not the files': an edited or
/// removed applied migration.
fn refuse_divergence(entries: &[Entry]) -> Result<(), MigrateError> {
    match entries
        .iter()
        .find(|e| matches!(e.state, State::Edited | State::Missing))
    {
        None => Ok(()),
        Some(e) => Err(MigrateError::Edited {
            version: e.version,
            name: e.name.clone(),
            problem: if e.state == State::Edited {
                "has changed since (its sha256 differs from the one recorded)".to_owned()
            } else {
                "is gone from the migrations directory".to_owned()
            },
        }),
    }
}

/// Applies the pending migrations of `files` in order, each in its own
/// transaction, under the runners' lock; what this run applied. A failing
/// one is rolled back and ends the run, none after it applied.
pub fn run(
    db: &mut dyn database::Database,
    files: &[Migration],
    progress: &dyn Progress,
) -> Result<Vec<Applied>, MigrateError> {
    let database = |message| MigrateError::Database { message };
    db.begin_run().map_err(database)?;
    let result = run_locked(db, files, progress);
    db.end_run();
    result
}

fn run_locked(
    db: &mut dyn database::Database,
    files: &[Migration],
    progress: &dyn Progress,
) -> Result<Vec<Applied>, MigrateError> {
    let database = |message| MigrateError::Database { message };
    let now = entries(files, &db.applied().map_err(database)?);
    refuse_divergence(&now)?;
    let mut done = Vec::new();
    for m in files {
        if now
            .iter()
            .any(|e| e.version == m.version && e.state != State::Pending)
        {
            continue;
        }
        progress.step(&format!("applying migration {:04}_{}", m.version, m.name));
        match db.apply(m) {
            Ok(Some(applied)) => done.push(applied),
            // Another runner applied it in between: it must be this file.
            Ok(None) => refuse_divergence(&entries(files, &db.applied().map_err(database)?))?,
            Err(database::ApplyError::Sql(message)) => {
                return Err(MigrateError::Failed {
                    version: m.version,
                    name: m.name.clone(),
                    message,
                });
            }
            Err(database::ApplyError::Database(message)) => return Err(database(message)),
        }
    }
    Ok(done)
}

/// What `gantry migrate` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Every migration and where it stands.
    Status,
    /// The migrations a run would apply, in order; nothing changes.
    Plan,
    /// Applies them.
    Run,
}

#[derive(Debug, Serialize)]
pub struct MigrateReport {
    pub project: String,
    pub environment: String,
    pub action: Action,
    pub services: Vec<ServiceMigrations>,
}

/// One service's migrations.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceMigrations {
    pub service: String,
    /// The directory, as gantry.toml names it.
    pub directory: String,
    pub database: Kind,
    /// The variable the URL came from (never the URL).
    pub variable: String,
    /// Every migration after the action (for `plan`: as it would leave them
    /// is not shown; as they are now).
    pub migrations: Vec<Entry>,
    /// What this run applied (`run` only), in order.
    pub applied: Vec<Applied>,
    /// How many are pending after the action.
    pub pending: usize,
}

/// `gantry migrate status|plan|run [SERVICE]`: every service of the
/// environment with `migrate.sql`, or the one named.
pub fn migrate(
    project: &Project,
    environment: &str,
    service: Option<&str>,
    action: Action,
    env_vars: &dyn Fn(&str) -> Option<String>,
    progress: &dyn Progress,
) -> Result<MigrateReport, Error> {
    let config = project.load()?;
    let env = config.environment(environment)?;
    let dir = config.project_dir().to_owned();
    let chosen: Vec<&Service> = migrated(&env)
        .into_iter()
        .filter(|s| service.is_none_or(|name| s.name == name))
        .collect();
    if let (Some(name), true) = (service, chosen.is_empty()) {
        return Err(Error::EnvState {
            refusal: crate::error::EnvRefusal::ServiceUnknown,
            environment: environment.to_owned(),
            problem: format!("has no service `{name}` with `migrate.sql`"),
            hint: format!(
                "services with migrations: {}",
                names(&migrated(&env)).unwrap_or_else(|| "none".to_owned())
            ),
        });
    }
    let secret_names: Vec<String> = chosen
        .iter()
        .filter_map(|s| database_variable(s))
        .filter(|v| chosen.iter().any(|s| s.secrets.contains(v)))
        .collect();
    let secrets = crate::secrets::values(&dir, environment, &secret_names, env_vars)?;
    let mut services = Vec::new();
    for s in chosen {
        services.push(for_service(&dir, &env, s, &secrets, action, progress)?);
    }
    Ok(MigrateReport {
        project: env.project.clone(),
        environment: environment.to_owned(),
        action,
        services,
    })
}

/// A deploy's migrations, before its rollout: every service with
/// `migrate.sql` in deploy order, once for the environment. `secrets` are
/// the values the deploy read.
pub fn before_rollout(
    project_dir: &Path,
    env: &Environment,
    secrets: &BTreeMap<String, String>,
    progress: &dyn Progress,
) -> Result<Vec<ServiceMigrations>, Error> {
    each(project_dir, env, secrets, Action::Run, progress)
}

/// What [`before_rollout`] would apply, changing nothing: the plan a
/// deploy shows, with the secret values it read.
pub fn pending(
    project_dir: &Path,
    env: &Environment,
    secrets: &BTreeMap<String, String>,
) -> Result<Vec<ServiceMigrations>, Error> {
    each(
        project_dir,
        env,
        secrets,
        Action::Plan,
        &crate::progress::Silent,
    )
}

/// `action` for every service with `migrate.sql`, in deploy order.
fn each(
    project_dir: &Path,
    env: &Environment,
    secrets: &BTreeMap<String, String>,
    action: Action,
    progress: &dyn Progress,
) -> Result<Vec<ServiceMigrations>, Error> {
    migrated(env)
        .into_iter()
        .map(|s| for_service(project_dir, env, s, secrets, action, progress))
        .collect()
}

/// The services with `migrate.sql`, in deploy order.
fn migrated(env: &Environment) -> Vec<&Service> {
    env.deploy_order()
        .into_iter()
        .filter(|s| s.migrate.as_ref().is_some_and(|m| m.sql.is_some()))
        .collect()
}

fn names(services: &[&Service]) -> Option<String> {
    (!services.is_empty()).then(|| {
        services
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    })
}

fn database_variable(s: &Service) -> Option<String> {
    s.migrate.as_ref().and_then(|m| m.database.clone())
}

fn for_service(
    project_dir: &Path,
    env: &Environment,
    s: &Service,
    secrets: &BTreeMap<String, String>,
    action: Action,
    progress: &dyn Progress,
) -> Result<ServiceMigrations, Error> {
    let migrate = s.migrate.clone().unwrap_or_default();
    let (Some(directory), Some(variable)) = (migrate.sql, migrate.database) else {
        return Err(Error::Internal {
            what: format!(
                "`{}` was taken for migrations without sql and database",
                s.name
            ),
        });
    };
    let wrap = |error: MigrateError| Error::Migrate {
        service: s.name.clone(),
        error,
    };
    let files = files::read(&project_dir.join(&directory)).map_err(wrap)?;
    let url = s
        .env
        .get(&variable)
        .or_else(|| secrets.get(&variable))
        .ok_or_else(|| Error::MissingSecrets {
            names: vec![variable.clone()],
        })?;
    let target = database::Target::parse(url).map_err(|problem| {
        wrap(MigrateError::Url {
            service: s.name.clone(),
            variable: variable.clone(),
            problem,
        })
    })?;
    let here = env.hosts.iter().all(|h| h.reach == Reach::Local);
    if target.kind() == Kind::Sqlite && !here {
        return Err(Error::Unsupported {
            what: format!(
                "`{variable}` of `{}` names a SQLite file, which lives on the hosts of `{}`: migrations run from this machine and cannot reach it yet",
                s.name, env.name
            ),
            hint: "use PostgreSQL reachable from here for this environment, or run the migrations on the host (`gantry exec SERVICE -- ...`)".to_owned(),
        });
    }
    let database = |message| wrap(MigrateError::Database { message });
    let (applied, rows) = match action {
        Action::Run => {
            let mut db = target.open().map_err(database)?;
            let applied = run(db.as_mut(), &files, progress).map_err(wrap)?;
            (applied, db.applied().map_err(database)?)
        }
        // Asking changes nothing: a database that does not exist yet is
        // not made, and has nothing applied.
        Action::Status | Action::Plan => match target.open_to_read().map_err(database)? {
            Some(mut db) => (Vec::new(), db.applied().map_err(database)?),
            None => (Vec::new(), Vec::new()),
        },
    };
    let mut migrations = entries(&files, &rows);
    if action == Action::Plan {
        refuse_divergence(&migrations).map_err(wrap)?;
        migrations.retain(|e| e.state == State::Pending);
    }
    Ok(ServiceMigrations {
        service: s.name.clone(),
        directory,
        database: target.kind(),
        variable,
        pending: migrations
            .iter()
            .filter(|e| e.state == State::Pending)
            .count(),
        migrations,
        applied,
    })
}
