//! Gantry's use-cases. Each takes plain inputs, does its work, and returns a
//! typed report that serializes to JSON; none of them prints, reads flags or
//! knows whether a terminal is attached. `gantry-cli` renders the reports.

pub mod agent_api;
pub mod agent_dir;
pub mod artifact;
pub mod backup;
pub mod check;
pub mod clock;
pub mod configure;
pub mod deploy;
pub mod deployments;
pub mod endpoint;
pub mod environment;
pub mod error;
pub mod exec;
#[cfg(test)]
mod fake;
pub mod firewall;
/// Files replaced whole and durably, and `FileError` (gantry-file).
pub use gantry_file as file;
pub mod host;
pub mod image;
pub mod incident;
pub mod init;
pub mod lifecycle;
pub mod local_agent;
pub mod machine;
pub mod migrate;
pub mod operate;
pub mod plan;
pub mod probe;
pub mod progress;
pub mod redact;
pub mod register;
pub mod release_tasks;
pub mod render;
pub mod secrets;
pub mod show;
pub mod ssh;
pub mod validate;

use std::path::{Path, PathBuf};

pub use error::{CODES, Code, EnvRefusal, Error, ExitClass, FailedRelease};
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

/// Writes `contents` to `path` as [`file::write_atomic`] does, creating
/// its directory first.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    // 0666 before the umask, as `File::create` makes files.
    file::write_atomic(path, contents, 0o666).map_err(Error::io("write", path))
}

#[cfg(test)]
mod tests {
    /// The use-cases that share the most build on each other in one
    /// direction: `environment` may use `operate`, which may use `deploy`,
    /// which may use `plan` (a deploy shows its plan); never the other way,
    /// so none of them is half of a cycle.
    #[test]
    fn plan_deploy_operate_and_environment_use_each_other_in_one_direction() {
        let sources = [
            ("plan", include_str!("plan.rs")),
            ("deploy", include_str!("deploy.rs")),
            ("operate", include_str!("operate.rs")),
            ("environment", include_str!("environment.rs")),
        ];
        for (at, (module, text)) in sources.iter().enumerate() {
            for (above, _) in &sources[at + 1..] {
                assert!(
                    !text.contains(&format!("crate::{above}")),
                    "`{module}` uses `{above}`, which builds on it"
                );
            }
        }
    }
}
