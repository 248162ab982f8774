//! `gantry backup now|list|restore|pull SERVICE [ID]`, and the text of its report.

use std::fmt::Write as _;

use gantry_core::backup::{self, Action, BackupReport};

use super::{Context, confirmed};
use crate::args::{BackupAction, BackupArgs};
use crate::output::{Failure, Report};
use crate::text::utc;

pub(super) fn backup(ctx: &Context<'_>, args: &BackupArgs) -> Result<(), Failure> {
    let (service, action) = match &args.action {
        BackupAction::Now { service } => (service, Action::Now),
        BackupAction::List { service } => (service, Action::List),
        BackupAction::Restore { service, id } => {
            confirmed(
                ctx,
                format!("restoring `{id}` replaces `{service}`'s data with the backup's"),
                format!("gantry backup restore -e {} {service} {id}", ctx.env),
            )?;
            (service, Action::Restore { id: id.clone() })
        }
        BackupAction::Pull { service, id, to } => (
            service,
            Action::Pull {
                id: id.clone(),
                to: to.as_ref().map(|p| ctx.absolute(p)),
            },
        ),
    };
    let connect = |h: &_| ctx.connect(h);
    ctx.emit(Backups(backup::backup(
        &ctx.project,
        ctx.env,
        service,
        action,
        &ctx.cwd,
        &connect,
    )?))
}

#[derive(serde::Serialize)]
#[serde(transparent)]
struct Backups(BackupReport);

impl Report for Backups {
    fn text(&self) -> String {
        let r = &self.0;
        let mut out = String::new();
        for b in &r.backups {
            let _ = match r.action {
                "now" => writeln!(out, "backed up {}: {}", r.service, line(b)),
                "restore" => writeln!(
                    out,
                    "restored {} from {} in {} ms",
                    r.service,
                    line(b),
                    r.duration_ms.unwrap_or(0)
                ),
                "pull" => writeln!(
                    out,
                    "pulled {} to {} (sha256 {})",
                    line(b),
                    r.path.as_deref().unwrap_or(""),
                    b.sha256
                ),
                _ => Ok(()),
            };
        }
        if r.action == "list" {
            list_text(r, &mut out);
        }
        out
    }
}

/// One backup on one line: id, time, kind, size, trigger and host.
fn line(b: &gantry_core::agent_api::BackupInfo) -> String {
    format!(
        "{}  {}  {}  {} bytes  {}{}",
        b.id,
        utc(b.created_at),
        gantry_core::serde_name(&b.kind),
        b.size,
        gantry_core::serde_name(&b.trigger),
        b.host
            .as_ref()
            .map_or_else(String::new, |h| format!("  on {h}"))
    )
}

fn list_text(r: &BackupReport, out: &mut String) {
    match (&r.schedule, r.keep) {
        (Some(schedule), Some(keep)) => {
            let _ = writeln!(out, "{}: backed up {schedule}, keeping {keep}", r.service);
        }
        _ => {
            let _ = writeln!(out, "{}: no backup schedule", r.service);
        }
    }
    for next in &r.next {
        let _ = writeln!(out, "  next on {}: {}", next.host, utc(next.at));
    }
    for f in &r.failures {
        let _ = writeln!(
            out,
            "  last backup on {} FAILED at {}: {}",
            f.host,
            utc(f.failure.at),
            f.failure.message
        );
    }
    if r.backups.is_empty() {
        out.push_str("  no backups yet\n");
    }
    for b in &r.backups {
        let _ = writeln!(out, "  {}", line(b));
    }
}
