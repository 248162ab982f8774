//! The agent: one per host. It keeps the host's services running (process
//! driver, restart policy, health checks, logs), records releases in SQLite,
//! and serves its API on a Unix socket. It writes what it is about to do
//! before doing it, so a restarted agent re-adopts its services and finishes
//! or rolls back a deploy it was in the middle of.
//!
//! The modules are layered; each uses only those of the layers below it
//! (README.md draws the layers, and `tests::layers` holds them):
//! 1. foundations: `store`, `artifact`, `upload`, `process`, `health`,
//!    `tails`, `ports`, `isolation`, `site`, `routes`, `locks`, `admission`,
//!    `credentials`, `error`, `agent_user`, `as_user` (work on a service's
//!    files with its ids), `agent_log`, `container` (the
//!    Docker engine; public, with its own tests against a real engine),
//!    `backup_files` (where backups lie and their records);
//! 2. `proxy`, the handle on the host's proxy;
//! 3. `agent`, the shared state every operation takes;
//! 4. one instance: `addresses` (of the services it depends on),
//!    `container_instance` (an image service's), `instance`, `fingerprint`
//!    (what it runs, as a digest), and what runs now: `status`, `logs`;
//! 5. operations: `task` (a release's one-off commands), `deploy` (and
//!    `retire`), `rollback`, `control`, `exec`, `history`, `images` (loading
//!    shipped images), `supervisor`, `reconcile`, `backup` (taking,
//!    scheduling and restoring backups), `verify` (watching a release's
//!    verify window, and going back from it);
//! 6. `api` (the only module that knows HTTP) and `openapi`;
//! 7. `daemon`, which starts it all, and `run_exec` (`gantry agent exec`).

mod addresses;
mod admission;
mod agent;
mod agent_log;
mod agent_user;
mod api;
mod artifact;
mod as_user;
mod backup;
mod backup_archive;
mod backup_files;
pub mod container;
mod container_instance;
mod control;
mod credentials;
mod daemon;
mod deploy;
mod disk;
mod error;
mod exec;
mod fingerprint;
mod health;
mod history;
mod images;
mod instance;
mod isolation;
mod kept;
mod locks;
mod logs;
mod openapi;
mod output_tail;
mod ports;
mod process;
mod proxy;
mod reconcile;
mod retention;
mod retire;
mod rollback;
mod routes;
mod site;
mod status;
mod store;
mod supervisor;
mod tails;
mod task;
mod upload;
mod verify;

pub mod run_exec;

pub use agent::{Settings, default_state_dir};
pub use agent_log::AgentLog;
pub use daemon::{DaemonError, run};
pub use isolation::SERVICES_GID;
pub use process::relay_main;
pub use store::{InstanceRecord, PortLease, Store, StoreError};

#[cfg(test)]
mod tests {
    /// The layers of the modules above, bottom first. A module may use the
    /// modules of the layers below its own and those listed before it in its
    /// own layer, never one after it: so no two modules use each other.
    const LAYERS: &[&[&str]] = &[
        &[
            "disk",
            "output_tail",
            "process",
            "artifact",
            "store",
            "ports",
            "health",
            "tails",
            "isolation",
            "site",
            "routes",
            "error",
            "admission",
            "credentials",
            "locks",
            "upload",
            "agent_user",
            "as_user",
            "agent_log",
            "container",
            "backup_files",
            "backup_archive",
        ],
        &["proxy"],
        &["agent"],
        &[
            "addresses",
            "container_instance",
            "instance",
            "fingerprint",
            "status",
            "logs",
        ],
        &[
            "task",
            "retention",
            "retire",
            "kept",
            "deploy",
            "rollback",
            "control",
            "exec",
            "history",
            "images",
            "supervisor",
            "reconcile",
            "backup",
            "verify",
        ],
        &["openapi", "api"],
        &["daemon", "run_exec"],
    ];

    /// The crate's modules each source file under `src/<module>` names as
    /// `crate::<module>` (in a path or a `use crate::{...}` list).
    fn uses(module: &str) -> std::collections::BTreeSet<String> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.join(format!("{module}.rs"))];
        let mut dirs = vec![src.join(module)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        let mut found = std::collections::BTreeSet::new();
        for file in files.iter().filter(|f| f.exists()) {
            let text = std::fs::read_to_string(file).expect("a source file");
            let ident = |text: &str| -> String {
                text.trim()
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect()
            };
            for part in text.split("crate::").skip(1) {
                let names: Vec<String> = match part.strip_prefix('{') {
                    Some(list) => list
                        .split('}')
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .map(ident)
                        .collect(),
                    None => vec![ident(part)],
                };
                for name in names {
                    if !name.is_empty() && name != module {
                        found.insert(name);
                    }
                }
            }
        }
        found
    }

    #[test]
    fn every_module_uses_only_modules_below_it() {
        let position = |name: &str| {
            LAYERS
                .iter()
                .flat_map(|layer| layer.iter())
                .position(|m| *m == name)
        };
        let lib = include_str!("lib.rs");
        for line in lib.lines() {
            if let Some(module) = line
                .strip_prefix("mod ")
                .or_else(|| line.strip_prefix("pub mod "))
                .and_then(|m| m.strip_suffix(';'))
            {
                assert!(
                    position(module).is_some(),
                    "module `{module}` is in no layer of LAYERS"
                );
            }
        }
        for (at, module) in LAYERS.iter().flat_map(|l| l.iter()).enumerate() {
            for used in uses(module) {
                let Some(there) = position(&used) else {
                    panic!("`{module}` uses `crate::{used}`, which is in no layer");
                };
                assert!(
                    there < at,
                    "`{module}` uses `{used}`, which comes after it in LAYERS: a cycle waiting to happen"
                );
            }
        }
    }
}
