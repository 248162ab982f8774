//! Gantry's use-cases. Each takes plain inputs, does its work, and returns a
//! typed report that serializes to JSON; none of them prints, reads flags or
//! knows whether a terminal is attached. `gantry-cli` renders the reports.

pub mod agent_api;
pub mod artifact;
pub mod check;
pub mod configure;
pub mod deploy;
pub mod environment;
pub mod error;
#[cfg(test)]
mod fake;
pub mod firewall;
pub mod host;
pub mod init;
pub mod operate;
pub mod redact;
pub mod register;
pub mod render;
pub mod show;
pub mod validate;

use std::path::{Path, PathBuf};

pub use error::{CODES, Error, ExitClass};
pub use gantry_config as config;

/// Where to find the project: an explicit `--config`, else the nearest
/// gantry.toml at or above `cwd`.
#[derive(Clone, Debug)]
pub struct Project {
    pub config: Option<PathBuf>,
    pub cwd: PathBuf,
}

impl Project {
    pub fn load(&self) -> Result<config::Config, Error> {
        let explicit = self.config.as_ref().map(|c| self.cwd.join(c));
        let absolute = config::locate(explicit.as_deref(), &self.cwd)?;
        let name = absolute.strip_prefix(&self.cwd).unwrap_or(&absolute);
        Ok(config::load_named(&absolute, &name.display().to_string())?)
    }
}

/// How serde names a unit variant (`provision_failed`): the one spelling
/// text output shares with JSON.
pub fn serde_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// The JSON Schema of gantry.toml.
pub fn schema() -> &'static serde_json::Value {
    config::json_schema()
}

/// Writes `contents` to `path` so that a reader sees the old file or the new
/// one, never half of it: a temporary file in the same directory, renamed.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(contents)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(Error::io("write", path))
}
