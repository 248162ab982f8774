//! The text form of each report: what a person reads on a terminal.

use std::fmt::Write;

use gantry_core::init::InitReport;
use gantry_core::render::RenderReport;
use gantry_core::show::ShowReport;
use gantry_core::validate::ValidateReport;
use serde::Serialize;

use crate::output::Report;

/// A state or outcome as JSON spells it.
fn name<T: Serialize>(value: &T) -> String {
    gantry_core::serde_name(value)
}

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

/// `gantry agent probe`: the status code alone, in text and in JSON, read
/// by `gantry test` on the other end of ssh.
#[derive(Serialize)]
#[serde(transparent)]
pub struct ProbeStatus(pub u16);

impl Report for ProbeStatus {
    fn text(&self) -> String {
        self.0.to_string()
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

fn instances_line(out: &mut String, service: &gantry_core::agent_api::ServiceStatus) {
    for i in &service.instances {
        let memory = i.memory.map_or_else(String::new, |m| {
            format!(", {:.1} MiB", m as f64 / 1_048_576.0)
        });
        let port = i.port.map_or_else(String::new, |p| format!(", port {p}"));
        let pid = i
            .pid
            .map_or_else(|| "no process".to_owned(), |p| format!("pid {p}"));
        let on = i
            .host
            .as_ref()
            .map_or_else(String::new, |h| format!(" on {h}"));
        let _ = writeln!(
            out,
            "    {}{on} {}: {pid}{port}, {}{}, {} restart{}{memory}",
            i.id,
            name(&i.state),
            if i.healthy { "healthy" } else { "not healthy" },
            i.last_exit
                .as_ref()
                .map_or_else(String::new, |e| format!(" (last {e})")),
            i.restarts,
            plural(i.restarts as usize)
        );
    }
}

pub(crate) use gantry_core::clock::utc;

fn services_text(out: &mut String, services: &[gantry_core::agent_api::ServiceStatus]) {
    for s in services {
        let _ = writeln!(
            out,
            "  {} {} on {}{}",
            s.name,
            name(&s.state),
            s.release.as_deref().unwrap_or("no release"),
            if s.urls.is_empty() {
                String::new()
            } else {
                format!("  {}", s.urls.join(" "))
            }
        );
        instances_line(out, s);
        let wanted = s.limits.memory.is_some() || s.limits.cpu.is_some() || s.limits.pids.is_some();
        if wanted {
            let _ = writeln!(
                out,
                "    limits {} ({})",
                if s.limits.enforced {
                    "enforced"
                } else {
                    "NOT enforced"
                },
                s.limits.via
            );
        }
        if let Some(reason) = &s.reason {
            let _ = writeln!(out, "    {reason}");
        }
        if let Some(failed) = &s.backup_failure {
            let _ = writeln!(
                out,
                "    backup FAILED at {}: {}",
                utc(failed.at),
                failed.message
            );
        }
        for line in &s.log_tail {
            let _ = writeln!(out, "    | {}", crate::output::printable(line, &['\t']));
        }
    }
}

impl Report for gantry_core::deploy::DeployReport {
    fn text(&self) -> String {
        let unchanged = |h: &gantry_core::deploy::HostDeploy| {
            h.outcome == gantry_core::deploy::HostOutcome::Unchanged
        };
        if !self.hosts.is_empty() && self.hosts.iter().all(unchanged) {
            return format!(
                "unchanged: every host of {} already runs this artifact and configuration (release {} on {}); no new release\n",
                self.environment, self.release.id, self.host
            );
        }
        let total: u64 = self.release.phases.iter().map(|p| p.duration_ms).sum();
        let mut out = format!(
            "deployed {} release {} to {} ({}): {} in {} ms\n",
            self.project,
            self.release.id,
            self.environment,
            self.host,
            name(&self.release.outcome),
            total
        );
        if !self.deployment.is_empty() {
            let _ = writeln!(out, "  deployment {}", self.deployment);
        }
        if self.upload.blobs_sent > 0 {
            let _ = writeln!(
                out,
                "  sent {} of {} files ({} bytes)",
                self.upload.blobs_sent, self.upload.files, self.upload.bytes_sent
            );
        }
        for m in &self.migrations {
            let _ = writeln!(
                out,
                "  migrations of {}: {} applied{}",
                m.service,
                m.applied.len(),
                m.applied
                    .iter()
                    .map(|a| format!(" {:04}_{} ({} ms)", a.version, a.name, a.duration_ms))
                    .collect::<String>()
            );
        }
        for t in &self.tasks {
            let _ = writeln!(
                out,
                "  {} of {} on {} ({}): {}, {} line(s) of output kept",
                t.phase,
                t.service,
                t.host,
                t.release,
                t.how(),
                t.ended.output.len()
            );
        }
        services_text(&mut out, &self.services);
        for name in &self.changes.unchanged {
            let _ = writeln!(out, "  {name} unchanged: left running, not restarted");
        }
        for name in &self.changes.removed {
            let _ = writeln!(out, "  stopped {name}: no longer in gantry.toml");
        }
        if self.hosts.len() > 1 {
            for h in &self.hosts {
                let _ = writeln!(
                    out,
                    "  host {}: {}{}{}",
                    h.host,
                    name(&h.outcome),
                    h.release
                        .as_ref()
                        .map_or_else(String::new, |r| format!(", runs {r}")),
                    h.error
                        .as_ref()
                        .map_or_else(String::new, |e| format!(" ({e})"))
                );
            }
        }
        out
    }
}

impl Report for gantry_core::operate::StatusReport {
    fn text(&self) -> String {
        let mut out = format!(
            "{} on {} ({})\n",
            self.status.project, self.environment, self.host
        );
        if self.status.services.is_empty() {
            out.push_str("  nothing deployed yet: run `gantry deploy`\n");
        }
        services_text(&mut out, &self.status.services);
        for h in self.hosts.iter().filter(|h| !h.reachable) {
            let _ = writeln!(
                out,
                "  host {} unreachable: {}",
                h.host,
                h.error.as_deref().unwrap_or("no answer")
            );
        }
        for h in &self.hosts {
            if let Some(problem) = &h.proxy_problem {
                let _ = writeln!(out, "  host {} runs no proxy: {problem}", h.host);
            }
        }
        out
    }
}

impl Report for gantry_core::operate::ReleasesReport {
    fn text(&self) -> String {
        let mut out = deployments_text(&self.deployments);
        if self.releases.is_empty() {
            let _ = writeln!(
                out,
                "{} has no releases yet: run `gantry deploy`",
                self.project
            );
        }
        for r in &self.releases {
            let total: u64 = r.phases.iter().map(|p| p.duration_ms).sum();
            let _ = writeln!(
                out,
                "{:>5}  {}  {}  {} ms  artifact {}{}{}{}",
                r.id,
                name(&r.outcome),
                r.environment,
                total,
                r.artifact_digest.get(..12).unwrap_or(&r.artifact_digest),
                match (&r.rollback_of, &r.redeploy_of) {
                    (Some(of), _) => format!("  (rollback to {of})"),
                    (None, Some(of)) => format!("  (redeploy of {of})"),
                    (None, None) => String::new(),
                },
                if r.files_gone {
                    "  (files no longer kept)"
                } else {
                    ""
                },
                r.reason
                    .as_ref()
                    .map_or_else(String::new, |why| format!("\n       {why}"))
            );
        }
        out
    }
}

/// The environment's deployments, newest first, each with the release it
/// made or kept on every host and whether that host runs it now.
fn deployments_text(deployments: &[gantry_core::deployments::Deployment]) -> String {
    let mut out = String::new();
    if deployments.is_empty() {
        return out;
    }
    out.push_str("deployments, newest first:\n");
    for d in deployments {
        let _ = writeln!(
            out,
            "  {}  {}  {}{}{}  artifact {}",
            d.id,
            gantry_core::clock::utc(d.at),
            name(&d.state),
            if d.rollback { ", rollback" } else { "" },
            if d.current { ", current" } else { "" },
            d.artifact.get(..12).unwrap_or(&d.artifact)
        );
        let hosts: Vec<String> = d
            .hosts
            .iter()
            .map(|h| match (&h.release, h.outcome) {
                (Some(r), Some(outcome)) => format!(
                    "{} {r} {}{}{}",
                    h.host,
                    name(&outcome),
                    if h.kept { " (kept)" } else { "" },
                    if h.runs_now { ", runs it" } else { "" }
                ),
                _ => format!("{} none", h.host),
            })
            .collect();
        let _ = writeln!(out, "    {}", hosts.join("; "));
    }
    out.push_str("releases:\n");
    out
}

/// One release in full.
#[derive(Serialize)]
#[serde(transparent)]
pub struct ReleaseDetail(pub gantry_core::agent_api::Release);

impl Report for ReleaseDetail {
    fn text(&self) -> String {
        let r = &self.0;
        let mut out = format!(
            "release {} of {} ({}): {}\n  artifact {}\n  config {}\n",
            r.id,
            r.project,
            r.environment,
            name(&r.outcome),
            r.artifact_digest,
            r.config_hash
        );
        if let Some(of) = &r.rollback_of {
            let _ = writeln!(out, "  a rollback to {of}");
        }
        if let Some(of) = &r.redeploy_of {
            let _ = writeln!(
                out,
                "  a redeploy of {of}: its services with the secret values of now"
            );
        }
        if r.files_gone {
            out.push_str("  its files are no longer kept: a rollback to it is refused\n");
        }
        if let Some(reason) = &r.reason {
            let _ = writeln!(out, "  {reason}");
        }
        for line in &r.log_tail {
            let _ = writeln!(out, "  | {line}");
        }
        out.push_str("  phases:\n");
        for p in &r.phases {
            let engine = p
                .engine_ms
                .map(|ms| format!(" (Docker {ms} ms)"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {:<12} {:<10} {:>6} ms{engine}",
                p.name,
                p.service.as_deref().unwrap_or(""),
                p.duration_ms
            );
        }
        let names: Vec<&str> = r.services.iter().map(|s| s.name.as_str()).collect();
        let _ = writeln!(out, "  services: {}", names.join(", "));
        out
    }
}

/// `gantry trust`: the local CA's certificate. The JSON is exactly these
/// fields; the text adds how to trust it.
#[derive(Serialize)]
pub struct TrustReport {
    pub path: std::path::PathBuf,
    pub fingerprint_sha256: String,
    /// RFC 3339.
    pub not_after: String,
}

impl Report for TrustReport {
    fn text(&self) -> String {
        let path = self.path.display();
        format!(
            "Local CA certificate: {path}\n\
             SHA-256 fingerprint:  {fingerprint}\n\
             Valid until:          {not_after}\n\
             \n\
             The proxy signs https://<service>.<project>.localhost with this CA (HTTPS on\n\
             127.0.0.1:8443 by default). The CA can only sign names under localhost.\n\
             Trust it once, and browsers and tools accept those sites without a warning:\n\
             \n\
             Debian, Ubuntu:\n  \
               sudo cp '{path}' /usr/local/share/ca-certificates/gantry-local-ca.crt\n  \
               sudo update-ca-certificates\n\
             Fedora, RHEL:\n  \
               sudo cp '{path}' /etc/pki/ca-trust/source/anchors/gantry-local-ca.pem\n  \
               sudo update-ca-trust\n\
             macOS:\n  \
               sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain '{path}'\n\
             Firefox and Chromium on Linux (NSS; certutil is in libnss3-tools or nss-tools):\n  \
               certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n 'Gantry local CA' -i '{path}'\n  \
               for a Firefox profile: certutil -d sql:<profile directory> -A -t C,, -n 'Gantry local CA' -i '{path}'\n\
             \n\
             Check the fingerprint first: openssl x509 -noout -fingerprint -sha256 -in '{path}'\n",
            fingerprint = self.fingerprint_sha256,
            not_after = self.not_after,
        )
    }
}

impl Report for gantry_core::local_agent::AgentStopped {
    fn text(&self) -> String {
        let mut out = if self.stopped {
            format!(
                "agent of {} stopped; services keep running\n",
                self.state_dir.display()
            )
        } else {
            format!("no agent runs on {}\n", self.state_dir.display())
        };
        if let Some(note) = &self.note {
            let _ = writeln!(out, "{note}");
        }
        out
    }
}

impl Report for gantry_core::register::RegisterReport {
    fn text(&self) -> String {
        let mut out = format!(
            "{} ({}) is a host of {}: {}\n",
            self.host, self.ssh, self.environment, self.state
        );
        for added in &self.added {
            let _ = writeln!(out, "  added to gantry.toml: {added}");
        }
        if self.state == gantry_core::environment::Phase::Provisioned {
            let _ = writeln!(
                out,
                "next: `gantry configure -e {}` (or `gantry deploy -e {}`)",
                self.environment, self.environment
            );
        }
        out
    }
}

impl Report for gantry_core::configure::ConfigureReport {
    fn text(&self) -> String {
        let mut out = format!("{} is {}\n", self.environment, self.state);
        let binary = &self.binary;
        let _ = writeln!(
            out,
            "  gantry for hosts: {} of its {} bytes ({})",
            binary.shipped_bytes, binary.bytes, binary.stripped
        );
        for host in &self.hosts {
            let _ = writeln!(
                out,
                "  {}: gantry {}, agent as {}",
                host.host, host.gantry, host.agent
            );
            for step in &host.steps {
                let _ = writeln!(
                    out,
                    "    {} {}: {}",
                    if step.changed { "changed" } else { "ok     " },
                    step.step,
                    step.detail
                );
            }
        }
        out
    }
}

impl Report for gantry_core::firewall::FirewallReport {
    fn text(&self) -> String {
        format!("{}\n", self.detail)
    }
}

impl Report for gantry_core::environment::PurgeReport {
    fn text(&self) -> String {
        match self.was {
            gantry_core::environment::Phase::Destroyed => {
                format!("{}: forgotten (it was destroyed)\n", self.environment)
            }
            was => format!(
                "{}: forgotten (it was {was}: its services were not stopped)\n",
                self.environment
            ),
        }
    }
}

impl Report for gantry_core::environment::EnvReport {
    fn text(&self) -> String {
        let s = &self.0;
        let mut out = format!("{}: {}\n", s.environment, s.state());
        for (name, host) in &s.hosts {
            let _ = writeln!(
                out,
                "  {name}: {}{}",
                host.ssh.as_deref().unwrap_or("this machine"),
                host.gantry
                    .as_ref()
                    .map_or_else(String::new, |v| format!(", gantry {v}"))
            );
        }
        if let Some(f) = s.failure() {
            let _ = writeln!(
                out,
                "  failed at `{}`{}: {}",
                f.step,
                f.host
                    .as_ref()
                    .map_or_else(String::new, |h| format!(" on {h}")),
                f.error
            );
        }
        out
    }
}

impl Report for gantry_core::environment::EnvList {
    fn text(&self) -> String {
        let mut out = String::new();
        for e in &self.environments {
            let _ = writeln!(
                out,
                "{:<12} {:<18} {}{}",
                e.environment,
                e.state.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                e.hosts.join(", "),
                if e.declared {
                    ""
                } else {
                    "  (not in gantry.toml)"
                }
            );
        }
        out
    }
}

impl Report for gantry_core::check::TestReport {
    fn text(&self) -> String {
        let mut out = format!(
            "{}: {}\n",
            self.environment,
            if self.ok {
                "every check passed"
            } else {
                "checks failed"
            }
        );
        for host in &self.hosts {
            let _ = writeln!(out, "  {}", host.host);
            for c in &host.checks {
                let mark = match c.outcome {
                    gantry_core::check::Outcome::Passed => "ok  ",
                    gantry_core::check::Outcome::Warning => "warn",
                    gantry_core::check::Outcome::Failed => "FAIL",
                };
                let _ = writeln!(out, "    {mark} {}: {}", c.check, c.detail);
            }
        }
        out
    }
}

/// What `gantry proxy restart` and `gantry proxy stop` print.
impl Report for gantry_core::local_agent::ProxyReport {
    fn text(&self) -> String {
        use gantry_core::agent_api::ProxyAction;
        let info = &self.info;
        let was = info
            .previous_pid
            .map_or_else(String::new, |pid| format!(" (was pid {pid})"));
        match (self.action, info.pid) {
            (ProxyAction::Stop, _) => format!(
                "proxy stopped{was}; its routes stay in {}\n",
                info.routes_file
            ),
            (ProxyAction::Restart, Some(pid)) => format!(
                "proxy restarted: pid {pid}{was}, listening on {}\n",
                info.listen.as_deref().unwrap_or("?")
            ),
            (ProxyAction::Restart, None) => "proxy not running\n".to_owned(),
        }
    }
}

impl Report for gantry_core::plan::PlanReport {
    fn text(&self) -> String {
        let mut out = format!(
            "plan for {} on {} (nothing was changed)\n",
            self.project, self.environment
        );
        for h in &self.hosts {
            let _ = writeln!(
                out,
                "host {}: {}{}",
                h.host,
                name(&h.change).replace('_', " "),
                h.current
                    .as_ref()
                    .map_or_else(String::new, |r| format!(" (runs {r})"))
            );
            if let Some(e) = &h.error {
                let _ = writeln!(out, "  {e}");
            }
            for reason in &h.reasons {
                let _ = writeln!(out, "  {reason}");
            }
            if let Some(files) = &h.files {
                let _ = writeln!(out, "  files: {}", file_changes(files));
            }
            let new_release = h.change == gantry_core::plan::Change::NewRelease;
            for s in h.services.iter().filter(|_| new_release) {
                let _ = writeln!(out, "  service {}: {}", s.service, service_plan(s));
            }
            if let Some(e) = &h.compare_error {
                let _ = writeln!(out, "  files and secret values not compared: {e}");
            }
        }
        if let Some(e) = &self.secrets_error {
            let _ = writeln!(out, "secret values: cannot tell ({e})");
        }
        for m in &self.migrations {
            let _ = writeln!(
                out,
                "migrations of {}: {} pending{}",
                m.service,
                m.pending,
                m.migrations
                    .iter()
                    .map(|e| format!(" {:04}_{}", e.version, e.name))
                    .collect::<String>()
            );
        }
        if let Some(e) = &self.migrations_error {
            let _ = writeln!(out, "migrations: cannot tell ({e})");
        }
        out
    }
}

/// `1 added (a), 2 changed (b, c)`: each kind with its first paths.
fn file_changes(files: &gantry_core::plan::FileChanges) -> String {
    [
        ("added", &files.added),
        ("changed", &files.changed),
        ("removed", &files.removed),
    ]
    .into_iter()
    .filter(|(_, list)| list.count > 0)
    .map(|(kind, list)| {
        let more = list.count.saturating_sub(list.paths.len());
        let more = if more > 0 {
            format!(", and {more} more")
        } else {
            String::new()
        };
        format!("{} {kind} ({}{more})", list.count, list.paths.join(", "))
    })
    .collect::<Vec<_>>()
    .join(", ")
}

/// What a deploy does with one service, and why.
fn service_plan(s: &gantry_core::plan::ServicePlan) -> String {
    let strategy = s
        .strategy
        .as_ref()
        .map_or_else(String::new, |st| format!(" {}", name(st)));
    let head = match (s.change, s.replaced) {
        ("added", _) => "added".to_owned(),
        ("removed", _) => return "removed (stopped)".to_owned(),
        (_, true) => format!("replaced{strategy}"),
        (change, false) => format!("{change}, left running"),
    };
    let mut why: Vec<String> = s.keys.clone();
    if let Some(image) = &s.image {
        why.push(format!("image {} -> {}", image.from, image.to));
    }
    if let Some(routes) = &s.routes {
        why.extend(routes.added.iter().map(|r| format!("route +{r}")));
        why.extend(routes.removed.iter().map(|r| format!("route -{r}")));
    }
    if let Some(secrets) = &s.secrets {
        for (kind, names) in [
            ("added", &secrets.added),
            ("removed", &secrets.removed),
            ("changed", &secrets.changed),
        ] {
            if !names.is_empty() {
                why.push(format!("secrets {kind}: {}", names.join(" ")));
            }
        }
    }
    if s.files {
        why.push("its files differ".to_owned());
    }
    if let Some(dep) = &s.follows {
        why.push(format!("`{dep}` it depends on moves to a new port"));
    }
    if why.is_empty() {
        head
    } else {
        format!("{head} ({})", why.join(", "))
    }
}
