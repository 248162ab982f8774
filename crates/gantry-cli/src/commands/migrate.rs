//! `gantry migrate status|plan|run [SERVICE]`, and the text of its report.

use gantry_core::migrate::{self, Action, MigrateReport, State};

use super::{Context, vars};
use crate::args::{MigrateAction, MigrateArgs};
use crate::output::{Failure, Report};

pub(super) fn migrate(ctx: &Context<'_>, args: &MigrateArgs) -> Result<(), Failure> {
    let (action, service) = match &args.action {
        MigrateAction::Status(s) => (Action::Status, s),
        MigrateAction::Plan(s) => (Action::Plan, s),
        MigrateAction::Run(s) => (Action::Run, s),
    };
    ctx.emit(Migrations(migrate::migrate(
        &ctx.project,
        ctx.env,
        service.service.as_deref(),
        action,
        &vars,
        &ctx.progress(),
    )?))
}

#[derive(serde::Serialize)]
#[serde(transparent)]
struct Migrations(MigrateReport);

impl Report for Migrations {
    fn text(&self) -> String {
        let r = &self.0;
        if r.services.is_empty() {
            return format!(
                "no service of {} has migrations (`migrate.sql`)\n",
                r.environment
            );
        }
        let mut out = String::new();
        for s in &r.services {
            out.push_str(&format!(
                "{} ({}, {} from {}): ",
                s.service,
                s.directory,
                gantry_core::serde_name(&s.database),
                s.variable
            ));
            out.push_str(&match (r.action, s.applied.len(), s.pending) {
                (Action::Run, 0, _) => "nothing to apply\n".to_owned(),
                (Action::Run, n, _) => format!("applied {n}\n"),
                (Action::Plan, _, 0) => "nothing to apply\n".to_owned(),
                (Action::Plan, _, n) => format!("{n} to apply, in this order\n"),
                (Action::Status, _, n) => format!("{n} pending\n"),
            });
            let shown = s.migrations.iter().filter(|m| {
                r.action != Action::Run || s.applied.iter().any(|a| a.version == m.version)
            });
            for m in shown {
                let state = match (m.state, m.duration_ms) {
                    (State::Applied, Some(ms)) => format!("applied ({ms} ms)"),
                    (state, _) => gantry_core::serde_name(&state),
                };
                out.push_str(&format!("  {:04}_{}  {state}\n", m.version, m.name));
            }
        }
        out
    }
}
