//! Where services run: each host says how it is reached, each environment
//! lists hosts that exist, once each, and a service's `hosts` are hosts of
//! the environment it runs in (or, with no environment declared, hosts that
//! [hosts] declares).

use std::collections::HashSet;

use super::{Checker, Services};
use crate::diagnostic::{KeyPath, Problem};
use crate::model::File;
use crate::resolve;
use crate::suggest::did_you_mean;

pub(super) fn check_hosts(c: &mut Checker<'_>, file: &File) {
    for (name, host) in &file.hosts {
        let path = KeyPath::of(["hosts", name.as_str()]);
        match (&host.ssh, &host.provider) {
            (None, None) => c.push(
                Problem::Conflict,
                path,
                true,
                format!("host `{name}` has neither `ssh` nor `provider`"),
                Some("add ssh = \"user@address\" for a server you have, or provider = \"local\" for this machine".to_owned()),
            ),
            (Some(_), Some(_)) => c.push(
                Problem::Conflict,
                path.key("provider"),
                true,
                format!("host `{name}` has both `ssh` and `provider`"),
                Some("keep `ssh` for a server you have, or only provider = \"local\" for this machine".to_owned()),
            ),
            _ => {}
        }
    }
}

pub(super) fn check_environments(c: &mut Checker<'_>, file: &File) {
    let known_hosts: Vec<&str> = file
        .hosts
        .keys()
        .map(String::as_str)
        .chain((!file.hosts.contains_key(resolve::LOCAL)).then_some(resolve::LOCAL))
        .collect();
    for (env_name, env) in &file.environments {
        let base = KeyPath::of(["environments", env_name.as_str()]);
        let mut listed = HashSet::new();
        for (i, host) in env.hosts.iter().enumerate() {
            let path = base.key("hosts").index(i);
            if !known_hosts.contains(&host.as_str()) {
                let hint = match did_you_mean(host, known_hosts.iter().copied()) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!(
                        "declare it as [hosts.{host}] with ssh = \"user@address\", or use `local`"
                    ),
                };
                c.push(
                    Problem::UnknownReference,
                    path,
                    false,
                    format!("environment `{env_name}` names unknown host `{host}`"),
                    Some(hint),
                );
            } else if !listed.insert(host) {
                c.push(
                    Problem::Conflict,
                    path,
                    false,
                    format!("host `{host}` is listed twice in environment `{env_name}`"),
                    None,
                );
            }
        }
        for name in env.services.keys() {
            if !file.services.contains_key(name) {
                let hint = match did_you_mean(name, file.services.keys().map(String::as_str)) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => "an environment can only override services declared under [services]"
                        .to_owned(),
                };
                c.push(
                    Problem::UnknownReference,
                    base.key("services").key(name),
                    true,
                    format!("environment `{env_name}` overrides unknown service `{name}`"),
                    Some(hint),
                );
            }
        }
    }
}

/// A service's `hosts` must be hosts of each environment it runs in.
pub(super) fn check_placement(
    c: &mut Checker<'_>,
    file: &File,
    env: &str,
    services: &Services<'_>,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    // The implicit `local` environment runs everything on this machine.
    let Some(declared) = file.environments.get(env) else {
        // Beside declared environments, each of them checks the hosts; alone,
        // it is the only place a misspelt host can be caught.
        if file.environments.is_empty() {
            check_declared_hosts(c, file, services, locate);
        }
        return;
    };
    let env_hosts: Vec<&str> = declared.hosts.iter().map(String::as_str).collect();
    for (name, service) in services {
        for (i, host) in service.hosts.iter().flatten().enumerate() {
            if !env_hosts.contains(&host.as_str()) {
                let hint = match did_you_mean(host, env_hosts.iter().copied()) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!(
                        "environment `{env}` has the hosts {}; add `{host}` to them, or override `hosts` for `{name}` in [environments.{env}.services.{name}]",
                        env_hosts.join(", ")
                    ),
                };
                c.push(
                    Problem::UnknownReference,
                    locate(name, &["hosts"]).index(i),
                    false,
                    format!("service `{name}` runs on `{host}`, which is not a host of environment `{env}`"),
                    Some(hint),
                );
            }
        }
    }
}

/// Without environments, a service's `hosts` can only name hosts that
/// [hosts] declares (or `local`): anything else is a typo that would stay
/// silent until an environment is added.
fn check_declared_hosts(
    c: &mut Checker<'_>,
    file: &File,
    services: &Services<'_>,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    let known: Vec<&str> = file
        .hosts
        .keys()
        .map(String::as_str)
        .chain((!file.hosts.contains_key(resolve::LOCAL)).then_some(resolve::LOCAL))
        .collect();
    for (name, service) in services {
        for (i, host) in service.hosts.iter().flatten().enumerate() {
            if known.contains(&host.as_str()) {
                continue;
            }
            let hint = match did_you_mean(host, known.iter().copied()) {
                Some(best) => format!("did you mean `{best}`?"),
                None => format!(
                    "declare it as [hosts.{host}] with ssh = \"user@address\" and list it in an environment's hosts, or remove `hosts` to run `{name}` on this machine"
                ),
            };
            c.push(
                Problem::UnknownReference,
                locate(name, &["hosts"]).index(i),
                false,
                format!("service `{name}` runs on unknown host `{host}`"),
                Some(hint),
            );
        }
    }
}
