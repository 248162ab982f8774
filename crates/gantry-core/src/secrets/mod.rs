//! `gantry secrets`: set, list, remove and import the project's secrets in
//! its encrypted store ([`Store`]). Each use-case loads gantry.toml (the
//! environment must be one it names), opens the store with the user's key,
//! and returns a report that holds names and times, never a value. Syncing
//! to the hosts is `operate::sync_secrets`, a deploy of what runs.

mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use store::{
    Key, MAX_NAME_LEN, MAX_SECRETS, MAX_VALUE_BYTES, SecretEntry, SecretsError, Store, check_name,
    check_value, parse_dotenv, store_path,
};

use crate::{Error, Project};

/// What `gantry secrets set|rm|import` changed.
#[derive(Debug, Serialize)]
pub struct ChangeReport {
    pub environment: String,
    /// The encrypted file.
    pub file: PathBuf,
    /// The key it is encrypted to.
    pub key: PathBuf,
    /// Names whose value was set or changed.
    pub changed: Vec<String>,
    /// Names given the value they already had.
    pub unchanged: Vec<String>,
    /// Names removed.
    pub removed: Vec<String>,
}

/// `gantry secrets list`: names, environments and change times.
#[derive(Debug, Serialize)]
pub struct ListReport {
    pub secrets: Vec<SecretEntry>,
}

fn open(
    project: &Project,
    environment: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Store, Key), Error> {
    let config = project.load()?;
    config.environment(environment)?;
    let mut key = Key::locate(env)?;
    let store = Store::open(config.project_dir(), environment, &mut key)?;
    Ok((store, key))
}

/// Opens the store for a change: the returned lock (on the secrets
/// directory) is held until the change is saved, so two gantry commands
/// changing secrets at once each see the other's change instead of one
/// overwriting it.
fn open_to_change(
    project: &Project,
    environment: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Store, Key, std::fs::File), Error> {
    let config = project.load()?;
    config.environment(environment)?;
    let dir = store_path(config.project_dir(), environment)
        .parent()
        .map(std::path::Path::to_owned)
        .unwrap_or_default();
    std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
    let lock = std::fs::File::open(&dir).map_err(Error::io("open", &dir))?;
    lock.lock().map_err(Error::io("lock", &dir))?;
    let (store, key) = open(project, environment, env)?;
    Ok((store, key, lock))
}

/// Sets each `(name, value)`, then saves once.
pub fn set(
    project: &Project,
    environment: &str,
    pairs: &[(String, String)],
    now: u64,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ChangeReport, Error> {
    let (mut store, mut key, _lock) = open_to_change(project, environment, env)?;
    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    for (name, value) in pairs {
        if store.set(name, value, now)? {
            changed.push(name.clone());
        } else {
            unchanged.push(name.clone());
        }
    }
    if !changed.is_empty() {
        store.save(&mut key)?;
    }
    Ok(ChangeReport {
        environment: environment.to_owned(),
        file: store.path().to_owned(),
        key: key.path().to_owned(),
        changed,
        unchanged,
        removed: Vec::new(),
    })
}

/// `gantry secrets import FILE`: every `NAME=value` of a dotenv file.
pub fn import(
    project: &Project,
    environment: &str,
    dotenv: &std::path::Path,
    now: u64,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ChangeReport, Error> {
    let meta = std::fs::metadata(dotenv).map_err(Error::io("read", dotenv))?;
    // A dotenv file of the most secrets of the largest size, and some slack.
    let most = (MAX_SECRETS * (MAX_VALUE_BYTES + MAX_NAME_LEN + 2)) as u64;
    if meta.len() > most {
        return Err(Error::Unsupported {
            what: format!(
                "{} is larger than a dotenv file of secrets can be",
                dotenv.display()
            ),
            hint: "import a file of NAME=value lines".to_owned(),
        });
    }
    let text = std::fs::read_to_string(dotenv).map_err(Error::io("read", dotenv))?;
    let pairs = parse_dotenv(&text)?;
    set(project, environment, &pairs, now, env)
}

pub fn remove(
    project: &Project,
    environment: &str,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ChangeReport, Error> {
    check_name(name)?;
    let (mut store, mut key, _lock) = open_to_change(project, environment, env)?;
    store.remove(name)?;
    store.save(&mut key)?;
    Ok(ChangeReport {
        environment: environment.to_owned(),
        file: store.path().to_owned(),
        key: key.path().to_owned(),
        changed: Vec::new(),
        unchanged: Vec::new(),
        removed: vec![name.to_owned()],
    })
}

/// The environment's secrets, or (`all`) those of every environment of
/// gantry.toml.
pub fn list(
    project: &Project,
    environment: &str,
    all: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ListReport, Error> {
    let environments: Vec<String> = if all {
        let config = project.load()?;
        let dir = config.project_dir().join(".gantry").join("secrets");
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_suffix(".age").map(str::to_owned)
                    })
                    // Only files of environments gantry.toml has.
                    .filter(|name| config.environment(name).is_ok())
                    .collect();
                names.sort();
                names
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("read", &dir)(e)),
        }
    } else {
        vec![environment.to_owned()]
    };
    let mut secrets = Vec::new();
    for environment in &environments {
        secrets.extend(open(project, environment, env)?.0.entries());
    }
    Ok(ListReport { secrets })
}

/// Secret values: the environment's encrypted store
/// (`.gantry/secrets/<env>.age`, see [`Store`]) first, then the
/// CLI's environment, then `.gantry/secrets.env`.
pub fn values(
    dir: &Path,
    environment: &str,
    names: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, Error> {
    let stored = if names.is_empty() || !store_path(dir, environment).exists() {
        BTreeMap::new()
    } else {
        let mut key = Key::locate(env)?;
        Store::open(dir, environment, &mut key)?.values()
    };
    let file: BTreeMap<String, String> = std::fs::read_to_string(dir.join(".gantry/secrets.env"))
        .map(|text| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for name in names {
        match stored
            .get(name)
            .cloned()
            .or_else(|| env(name))
            .or_else(|| file.get(name).cloned())
        {
            Some(value) => {
                values.insert(name.clone(), value);
            }
            None => missing.push(name.clone()),
        }
    }
    if missing.is_empty() {
        Ok(values)
    } else {
        missing.dedup();
        Err(Error::MissingSecrets { names: missing })
    }
}
