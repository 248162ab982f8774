//! What `gantry status` told the hub, remembered in the state directory's
//! `hub-reports.json` (a cause's label → the signature last reported), so a
//! failure is filed once for each change of what fails, not at every look.
//! The file is replaced whole: a status interrupted mid-write leaves the
//! previous memory, never half of it (which would read as none and file
//! every failure again).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::{HubAccess, Incident};
use crate::operate::StatusReport;
use crate::progress::Progress;

/// The file, in the state directory.
pub const FILE: &str = "hub-reports.json";

/// More than the causes of any project's services; a larger file is not
/// ours and is read as no memory.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The most causes remembered: the rest are forgotten (and reported again
/// if they still fail).
const MAX_CAUSES: usize = 10_000;

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

fn read(path: &Path) -> BTreeMap<String, String> {
    let mut bytes = Vec::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes));
    if read.is_err() || bytes.len() as u64 > MAX_FILE_BYTES {
        return BTreeMap::new();
    }
    serde_json::from_slice(&bytes).unwrap_or_default()
}

impl HubAccess<'_> {
    /// `gantry status` of a project with `[hub]`: files a bug (or comments
    /// on the open one of the same cause) for each service of `report` that
    /// keeps failing, once for each change of what fails (its release, its
    /// failing instances' restarts and last exits), remembered in
    /// `state_dir`'s `hub-reports.json`. Each thing done, or failed, is a
    /// step of `progress`; a hub that cannot be reached is one, never an
    /// error.
    pub fn failing_services(
        &self,
        project: &str,
        report: &StatusReport,
        state_dir: &Path,
        progress: &dyn Progress,
    ) {
        let path = path(state_dir);
        let mut seen = read(&path);
        let before = seen.clone();
        for service in &report.status.services {
            let Some(incident) =
                Incident::of_service(project, self.environment, &report.host, service)
            else {
                continue;
            };
            let (label, signature) = (incident.label(), incident.signature());
            if seen.get(&label) == Some(&signature) {
                continue;
            }
            match self.failed(&incident) {
                Ok(reported) => {
                    if seen.len() < MAX_CAUSES || seen.contains_key(&label) {
                        seen.insert(label, signature);
                    }
                    progress.step(&format!("hub: {reported}"));
                }
                Err(why) => progress.step(&format!(
                    "hub: cannot report {}'s failure: {why}",
                    service.name
                )),
            }
        }
        if seen == before {
            return;
        }
        let written = serde_json::to_vec_pretty(&seen)
            .map_err(|e| e.to_string())
            .and_then(|text| crate::write_atomic(&path, &text).map_err(|e| e.to_string()));
        if let Err(e) = written {
            progress.step(&format!("hub: cannot remember what was reported: {e}"));
        }
    }
}
