//! systemd units for the process services of one host: one unit per
//! instance, all grouped under `<project>.target` so one command starts or
//! stops the project.

use std::fmt::Write;

use super::{Rendering, assign_ports, header, restart_policy};
use crate::config::Environment;
use crate::config::resolve::{Service, Workload};

/// Where the units expect the project's files; `gantry render` does not ship them.
pub const WORKING_DIR_ROOT: &str = "/srv/gantry";
/// Where the units read secrets from.
pub const SECRETS_DIR: &str = "/etc/gantry";

pub(super) fn render(env: &Environment, host: &str, out: &mut Rendering) {
    let processes: Vec<&Service> = env
        .deploy_order()
        .into_iter()
        .filter(|s| matches!(s.workload, Workload::Process { .. }))
        .collect();
    for service in env.services.values() {
        match service.workload {
            Workload::Process { .. } => {}
            Workload::Compose { .. } => out.note(
                service,
                "image",
                "containers are rendered by `--target compose`, not as units",
            ),
            Workload::Static { .. } => out.note(
                service,
                "static",
                "static directories are served by Gantry's proxy; systemd has no equivalent",
            ),
        }
    }
    if processes.is_empty() {
        return;
    }
    let ports = assign_ports(processes.iter().copied());
    let mut all_units = Vec::new();
    for service in &processes {
        let Workload::Process { run } = &service.workload else {
            continue;
        };
        note_unsupported(service, out);
        for dep in &service.depends_on {
            if env
                .services
                .get(dep)
                .is_some_and(|d| !matches!(d.workload, Workload::Process { .. }))
            {
                out.note(
                    service,
                    "depends_on",
                    format!(
                        "`{dep}` is not a process, so its unit cannot be ordered before this one"
                    ),
                );
            }
        }
        for instance in 1..=service.replicas {
            let unit = unit_name(&env.project, service, instance);
            let port = ports.get(&(service.name.clone(), instance)).copied();
            let text = unit_file(env, host, service, run, instance, port);
            out.files
                .insert(format!("{host}/systemd/{unit}").into(), text);
            all_units.push(unit);
        }
    }
    let mut target = header("#", env, host);
    let _ = writeln!(target, "[Unit]");
    let _ = writeln!(
        target,
        "Description={} (every service)",
        escape_specifiers(&env.project)
    );
    let _ = writeln!(target, "Wants={}", all_units.join(" "));
    let _ = writeln!(target, "\n[Install]");
    let _ = writeln!(target, "WantedBy=multi-user.target");
    out.files.insert(
        format!("{host}/systemd/{}.target", env.project).into(),
        target,
    );
}

/// The unit of one instance of a process service.
fn unit_file(
    env: &Environment,
    host: &str,
    service: &Service,
    run: &str,
    instance: u32,
    port: Option<u16>,
) -> String {
    let mut text = header("#", env, host);
    let _ = writeln!(text, "[Unit]");
    let description = if service.replicas == 1 {
        format!("{} {}", env.project, service.name)
    } else {
        format!(
            "{} {} (instance {instance} of {})",
            env.project, service.name, service.replicas
        )
    };
    let _ = writeln!(text, "Description={}", escape_specifiers(&description));
    let after: Vec<String> = std::iter::once("network-online.target".to_owned())
        .chain(service.depends_on.iter().filter_map(|dep| {
            let dep = env.services.get(dep)?;
            matches!(dep.workload, Workload::Process { .. }).then(|| {
                (1..=dep.replicas)
                    .map(|i| unit_name(&env.project, dep, i))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        }))
        .collect();
    let _ = writeln!(text, "Wants={}", after.join(" "));
    let _ = writeln!(text, "After={}", after.join(" "));
    let _ = writeln!(text, "PartOf={}.target", env.project);
    let _ = writeln!(text, "\n[Service]");
    let _ = writeln!(text, "Type=simple");
    let _ = writeln!(
        text,
        "WorkingDirectory={WORKING_DIR_ROOT}/{}/{}",
        env.project, service.name
    );
    // Through a shell, as gantry runs it; `$` is doubled so systemd leaves it to the shell.
    let _ = writeln!(
        text,
        "ExecStart=/bin/sh -c {}",
        quote(&format!("exec {run}")).replace('$', "$$")
    );
    if let Some(port) = port {
        let _ = writeln!(text, "Environment={}", quote(&format!("PORT={port}")));
    }
    for (key, value) in &service.env {
        let _ = writeln!(text, "Environment={}", quote(&format!("{key}={value}")));
    }
    if !service.secrets.is_empty() {
        let _ = writeln!(
            text,
            "EnvironmentFile={SECRETS_DIR}/{}/{}.env",
            env.project, service.name
        );
    }
    let _ = writeln!(text, "Restart={}", restart_policy(service.restart));
    let _ = writeln!(text, "RestartSec=1");
    let _ = writeln!(text, "KillMode=mixed");
    let _ = writeln!(text, "KillSignal=SIGTERM");
    let _ = writeln!(
        text,
        "TimeoutStopSec={}",
        service.stop_timeout.as_millis().div_ceil(1000).max(1)
    );
    if let Some(memory) = service.resources.memory {
        let _ = writeln!(text, "MemoryMax={}", memory.bytes());
    }
    if let Some(cpu) = service.resources.cpu {
        let _ = writeln!(text, "CPUQuota={}%", (cpu * 100.0).round() as u64);
    }
    if let Some(pids) = service.resources.pids {
        let _ = writeln!(text, "TasksMax={pids}");
    }
    let _ = writeln!(text, "\n[Install]");
    let _ = writeln!(text, "WantedBy={}.target", env.project);
    text
}

fn unit_name(project: &str, service: &Service, instance: u32) -> String {
    if service.replicas == 1 {
        format!("{project}-{}.service", service.name)
    } else {
        format!("{project}-{}-{instance}.service", service.name)
    }
}

/// `%` introduces a specifier in unit files.
fn escape_specifiers(text: &str) -> String {
    text.replace('%', "%%")
}

/// A double-quoted unit-file word: backslashes and quotes escaped, specifiers doubled.
fn quote(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{}\"", escape_specifiers(&escaped))
}

fn note_unsupported(service: &Service, out: &mut Rendering) {
    if service.health.is_some() {
        out.note(
            service,
            "health",
            "systemd does not run health checks; Gantry's agent does",
        );
    }
    if !service.routes.is_empty() {
        out.note(
            service,
            "routes",
            "routes are served by Gantry's proxy; each instance listens on its $PORT",
        );
    }
    if service.build.is_some() {
        out.note(
            service,
            "build",
            "build commands are not run by systemd; build before copying the files",
        );
    }
    if service.migrate.is_some() {
        out.note(
            service,
            "migrate",
            "systemd has no deploy step to run migrations once in: run `gantry migrate run -e ENV` before starting the units",
        );
    }
    if !service.volumes.is_empty() {
        out.note(service, "volumes", "volumes are for containers");
    }
    if service.backup.is_some() {
        out.note(
            service,
            "backup",
            "backups are taken by Gantry's agent (`gantry backup`), which these systemd files leave out: nothing here backs the service up, so back it up yourself",
        );
    }
    out.note(
        service,
        "run",
        format!("the project's files are not shipped: the unit runs in {WORKING_DIR_ROOT}/<project>/<service>"),
    );
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting_escapes_what_systemd_reads() {
        assert_eq!(
            quote(r#"A=say "hi" 100% \o/"#),
            r#""A=say \"hi\" 100%% \\o/""#
        );
    }
}
