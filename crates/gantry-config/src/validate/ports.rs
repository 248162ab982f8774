//! Ports a process listens on: a fixed port held by one process per host
//! (another service's, a replica's, the proxy's), and `PORT` in `env`,
//! which the agent sets itself.

use std::collections::BTreeMap;

use super::{Checker, Services, set_by_override};
use crate::diagnostic::{KeyPath, Problem};
use crate::model::{File, Port, Service};
use crate::resolve::{self, Reach};

/// The fixed ports `env`'s processes take on their hosts: each held by one
/// process ([`check_fixed_ports`]) and none the proxy's
/// ([`check_proxy_ports`]).
pub(super) fn check_host_ports(
    c: &mut Checker<'_>,
    file: &File,
    env: &str,
    services: &Services<'_>,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    let Some((env_hosts, placed)) = placement(file, env) else {
        return;
    };
    let on = Placed {
        env,
        hosts: &env_hosts,
        placed,
    };
    check_fixed_ports(c, &on, services, locate);
    check_proxy_ports(c, file, &on, services, locate);
}

/// The hosts of an environment, as [`placement`] gives them.
struct Placed<'a> {
    env: &'a str,
    hosts: &'a [&'a str],
    placed: bool,
}

/// A process listens on its host's own ports: two with one fixed port
/// cannot run on one host ("Address already in use"). A container's port
/// is inside the container, and a named port is one the agent assigns, so
/// neither clashes. Replicas of one service are `check_replicas`'.
fn check_fixed_ports(
    c: &mut Checker<'_>,
    on: &Placed<'_>,
    services: &Services<'_>,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    let env = on.env;
    let mut taken: BTreeMap<(u16, &str), &str> = BTreeMap::new();
    for (name, s) in services {
        let Some(port) = process_port(s) else {
            continue;
        };
        let hosts = hosts_of(s, on.hosts, on.placed);
        let clash = hosts
            .iter()
            .find_map(|host| taken.get(&(port, *host)).map(|owner| (*owner, *host)));
        let Some((owner, host)) = clash else {
            for host in hosts {
                taken.insert((port, host), name);
            }
            continue;
        };
        // Reported at the port an environment override set, if either was.
        let path = locate(name, &["port"]);
        let owner_path = locate(owner, &["port"]);
        let (at, subject, other) = if set_by_override(&owner_path) && !set_by_override(&path) {
            (owner_path, owner, *name)
        } else {
            (path, *name, owner)
        };
        let place = if set_by_override(&at) {
            format!(" in environment `{env}`")
        } else {
            String::new()
        };
        c.push(
            Problem::Conflict,
            at,
            false,
            format!("fixed port {port} of `{subject}` is already taken by `{other}` on the same host{place}"),
            Some(format!(
                "both run on host `{host}`, where only one process can listen on {port}: give one of them another port, or a named port like port = \"http\" so the agent assigns a free one as $PORT"
            )),
        );
    }
}

/// The ports Gantry's proxy listens on, on a host `gantry configure` sets
/// up as root: its systemd unit's `GANTRY_PROXY_LISTEN` (HTTP) and
/// `GANTRY_PROXY_HTTPS`.
const CONFIGURED_PROXY_PORTS: [u16; 2] = [80, 443];

/// A process's fixed port may not be one its host's proxy listens on:
/// either the process or the proxy could not bind it at deploy, whether the
/// service has routes or not. A container's port and a named one do not
/// take a port of the host, as in [`check_fixed_ports`].
fn check_proxy_ports(
    c: &mut Checker<'_>,
    file: &File,
    on: &Placed<'_>,
    services: &Services<'_>,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    let env = on.env;
    let [http, https] = CONFIGURED_PROXY_PORTS;
    for (name, s) in services {
        let Some(port) = process_port(s) else {
            continue;
        };
        let proxied = hosts_of(s, on.hosts, on.placed)
            .into_iter()
            .find(|host| proxy_ports(file, host).contains(&port));
        let Some(host) = proxied else {
            continue;
        };
        let at = locate(name, &["port"]);
        let place = if set_by_override(&at) {
            format!(" in environment `{env}`")
        } else {
            String::new()
        };
        let served = if s.routes.as_ref().is_some_and(|r| !r.is_empty()) {
            format!("its routes still reach it through the proxy on {http} and {https}")
        } else {
            format!(
                "to serve it on {http} and {https}, give it routes, which the proxy forwards to its port"
            )
        };
        c.push(
            Problem::Conflict,
            at,
            false,
            format!("fixed port {port} of `{name}` is already taken by Gantry's proxy on its host{place}"),
            Some(format!(
                "`{name}` runs on host `{host}`, where the proxy listens on {http} (HTTP) and {https} (HTTPS): give `{name}` another port, or a named port like port = \"http\" so the agent assigns a free one as $PORT; {served}"
            )),
        );
    }
}

/// The ports `host`'s proxy listens on, as far as the file tells. A host
/// reached over SSH is set up by `gantry configure`: as root, its proxy
/// takes 80 and 443; otherwise a service, unprivileged like its agent,
/// cannot bind them either. This machine's agent listens where the
/// `GANTRY_PROXY_LISTEN` and `GANTRY_PROXY_HTTPS` of the command that
/// started it say (8080 and 8443 when unset), which the file does not tell.
fn proxy_ports(file: &File, host: &str) -> &'static [u16] {
    match resolve::resolve_host(file, host).reach {
        Reach::Local => &[],
        Reach::Ssh { .. } | Reach::Provider { .. } => &CONFIGURED_PROXY_PORTS,
    }
}

/// The hosts of `env` whose ports are checked, and whether it is declared
/// (then a service's own `hosts` narrow them, [`hosts_of`]). The implicit
/// `local` environment runs every service on this machine; beside declared
/// environments it is for trying things out, so a layout spread over hosts
/// is not refused for not fitting on one: `None`, nothing to check.
fn placement<'f>(file: &'f File, env: &str) -> Option<(Vec<&'f str>, bool)> {
    match file.environments.get(env) {
        Some(declared) => Some((declared.hosts.iter().map(String::as_str).collect(), true)),
        None if file.environments.is_empty() => Some((vec![resolve::LOCAL], false)),
        None => None,
    }
}

/// The fixed port a process listens on, on its hosts: not a container's
/// (inside the container), a static service's, or a named one.
fn process_port(s: &Service) -> Option<u16> {
    match s.port {
        Some(Port::Fixed(port)) if s.image.is_none() && s.static_dir.is_none() => Some(port),
        _ => None,
    }
}

/// The hosts of the environment (`env_hosts`) that run `s`: those its own
/// `hosts` name, in a declared environment (`placed`), else all of them.
fn hosts_of<'h>(s: &Service, env_hosts: &[&'h str], placed: bool) -> Vec<&'h str> {
    match s.hosts.as_deref() {
        Some(own) if placed && !own.is_empty() => env_hosts
            .iter()
            .copied()
            .filter(|h| own.iter().any(|o| o == h))
            .collect(),
        _ => env_hosts.to_vec(),
    }
}

/// Replicas of one process share its host: a fixed port fits only one of
/// them. A container's fixed port is inside each container.
pub(super) fn check_replicas(
    c: &mut Checker<'_>,
    name: &str,
    s: &Service,
    is_image: bool,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    if let (Some(Port::Fixed(port)), Some(replicas)) = (&s.port, s.replicas)
        && replicas.get() > 1
        && !is_image
    {
        c.push(
            Problem::Conflict,
            locate(name, &["port"]),
            false,
            format!("{replicas} replicas of `{name}` cannot all listen on fixed port {port}"),
            Some(
                "use a named port like port = \"http\" so each instance gets its own $PORT"
                    .to_owned(),
            ),
        );
    }
}

/// Variables the agent sets on every instance, overwriting `env`
/// (`GANTRY_SERVICE`, `GANTRY_RELEASE`, `GANTRY_INSTANCE`, `PORT`): a value
/// written there would be shown by `gantry show` and never seen by the
/// service. `PORT` is set for a process with a port, and for a container
/// with a named one (a container's fixed port is inside it, and `PORT` is
/// left to the image). The `GANTRY_<NAME>_HOST`/`_PORT` of dependencies
/// are not here: the agent lets `env` override them.
pub(super) fn check_agent_variables(
    c: &mut Checker<'_>,
    name: &str,
    s: &Service,
    is_image: bool,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    for (key, value) in s.env.iter().flatten() {
        let key = key.as_str();
        let (message, hint) = match (key, &s.port) {
            ("PORT", Some(Port::Named(port))) => (
                format!("`PORT` in env of `{name}` is ignored: the agent sets $PORT to the port it assigns to `{port}`"),
                "to listen on a port of your choosing, write it as a fixed port, like port = 31777, and remove PORT from env".to_owned(),
            ),
            // The same number the agent sets is harmless.
            ("PORT", Some(Port::Fixed(port))) if !is_image && value.trim() != port.to_string() => (
                format!("`PORT` in env of `{name}` is ignored: the agent sets $PORT to its `port`, {port}"),
                "remove PORT from env; to listen on another port, change `port`".to_owned(),
            ),
            ("GANTRY_INSTANCE" | "GANTRY_SERVICE" | "GANTRY_RELEASE", _) => (
                format!(
                    "`{key}` in env of `{name}` is ignored: the agent sets it to {}",
                    match key {
                        "GANTRY_INSTANCE" => "each instance's id",
                        "GANTRY_SERVICE" => "the service's name",
                        _ => "the id of the release the instance belongs to (r3)",
                    }
                ),
                "remove it from env, or give the variable another name".to_owned(),
            ),
            _ => continue,
        };
        c.push(
            Problem::Conflict,
            locate(name, &["env", key]),
            true,
            message,
            Some(hint),
        );
    }
}
