//! The text form of each report: what a person reads on a terminal.

use std::fmt::Write;

use gantry_core::init::InitReport;
use gantry_core::render::RenderReport;
use gantry_core::show::ShowReport;
use gantry_core::validate::ValidateReport;
use serde::Serialize;

use crate::output::Report;

impl Report for ValidateReport {
    fn text(&self) -> String {
        let mut out = format!(
            "{} is valid: project {}, {} service{}\n",
            self.file.display(),
            self.project,
            self.services.len(),
            plural(self.services.len())
        );
        for env in &self.environments {
            let _ = writeln!(
                out,
                "  environment {}: {} service{} on {}",
                env.name,
                env.services,
                plural(env.services),
                env.hosts.join(", ")
            );
        }
        out
    }
}

impl Report for ShowReport {
    /// The resolved environment as TOML, the language gantry.toml is written in.
    fn text(&self) -> String {
        let env = &self.environment;
        let mut out = format!(
            "# {} as it will run: environment {} of project {}\n",
            self.file.display(),
            env.name,
            env.project
        );
        let mut value = serde_json::to_value(env).unwrap_or_default();
        drop_empty(&mut value);
        match toml::to_string_pretty(&value) {
            Ok(body) => out.push_str(&body),
            Err(e) => {
                let _ = writeln!(out, "# cannot print as TOML: {e}");
            }
        }
        if !self.secrets.is_empty() {
            out.push_str("\n# secrets (values are never shown)\n");
            for s in &self.secrets {
                let _ = writeln!(
                    out,
                    "#   {}.{}: {}",
                    s.service,
                    s.name,
                    if s.available { "available" } else { "NOT SET" }
                );
            }
        }
        out
    }
}

/// Empty lists and tables say nothing to a reader; JSON keeps them for scripts.
fn drop_empty(value: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = value {
        map.values_mut().for_each(drop_empty);
        map.retain(|_, v| match v {
            serde_json::Value::Array(items) => !items.is_empty(),
            serde_json::Value::Object(fields) => !fields.is_empty(),
            _ => true,
        });
    }
}

/// The JSON Schema; its text form is the same JSON, for `gantry schema > file`.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Schema(pub &'static serde_json::Value);

impl Report for Schema {
    fn text(&self) -> String {
        serde_json::to_string_pretty(self.0).unwrap_or_default()
    }
}

/// A completion script or man page, as JSON when asked for by name.
#[derive(Serialize)]
pub struct Script {
    pub kind: String,
    pub script: String,
}

impl Report for Script {
    fn text(&self) -> String {
        self.script.clone()
    }
}

impl Report for RenderReport {
    fn text(&self) -> String {
        let mut out = format!(
            "rendered environment {} for {} into {}\n",
            self.environment,
            self.target.name(),
            self.out.display()
        );
        for file in &self.files {
            let _ = writeln!(out, "  wrote {}", file.display());
        }
        if self.files.is_empty() {
            let _ = writeln!(
                out,
                "  no service runs with {}: nothing written",
                self.target.name()
            );
        }
        if !self.unsupported.is_empty() {
            let _ = writeln!(out, "\nnot expressed by {}:", self.target.name());
            for note in &self.unsupported {
                let _ = writeln!(out, "  {}: {}", note.key, note.reason);
            }
        }
        out
    }
}

impl Report for InitReport {
    fn text(&self) -> String {
        let mut out = format!(
            "created {} for project {}\n\nnext:\n",
            self.file.display(),
            self.project
        );
        for step in &self.next {
            let _ = writeln!(out, "  {step}");
        }
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
