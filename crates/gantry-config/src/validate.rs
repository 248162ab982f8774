//! Checks that need more than one value at a time: references between
//! services, hosts and environments, dependency cycles, routes claimed twice,
//! and keys that only make sense together. They run on the typed file, once
//! for the base services and once for each environment's merged view, so an
//! override that breaks a service is caught and pointed at. Where services
//! run is `placement`'s; the ports they listen on are `ports`'.

mod placement;
mod ports;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use crate::diagnostic::{KeyPath, Problem, Segment};
use crate::document::{Document, Finding, Findings};
use crate::formats::{check_env_name, check_name};
use crate::model::{Build, DeployStrategy, File, Service};
use crate::resolve::{self, Route};
use crate::suggest::did_you_mean;

type Services<'f> = BTreeMap<&'f str, Cow<'f, Service>>;

struct Checker<'a> {
    doc: &'a Document<'a>,
    findings: Findings,
    seen: HashSet<(KeyPath, String)>,
}

impl Checker<'_> {
    fn push(
        &mut self,
        problem: Problem,
        path: KeyPath,
        at_key: bool,
        message: String,
        hint: Option<String>,
    ) {
        if !self.seen.insert((path.clone(), message.clone())) {
            return;
        }
        if self.findings.full() {
            // Only counted: its span is not worth looking up.
            self.findings.more += 1;
            return;
        }
        let span = if at_key {
            self.doc.key_span(&path)
        } else {
            self.doc.value_span(&path)
        };
        self.findings.push(Finding {
            problem,
            path,
            span,
            message,
            hint,
        });
    }
}

pub fn check(file: &File, doc: &Document<'_>) -> Findings {
    let mut c = Checker {
        doc,
        findings: Findings::default(),
        seen: HashSet::new(),
    };
    check_names(&mut c, file);
    placement::check_hosts(&mut c, file);
    placement::check_environments(&mut c, file);
    check_rollouts(&mut c, file);

    let mut checked_base = false;
    for env in resolve::environment_names(file) {
        let merged = resolve::merged_services_cow(file, env);
        // A path inside a merged service points at the override when the override set it.
        let locate = |service: &str, rel: &[&str]| -> KeyPath {
            let over = KeyPath::of(
                ["environments", env, "services", service]
                    .into_iter()
                    .chain(rel.iter().copied()),
            );
            if doc.contains(&over) {
                over
            } else {
                KeyPath::of(["services", service].into_iter().chain(rel.iter().copied()))
            }
        };
        for (name, service) in &merged {
            // A service the environment does not override was checked with the base.
            if matches!(service, Cow::Owned(_)) || !checked_base {
                check_service(&mut c, name, service, &locate);
            }
        }
        checked_base = true;
        check_dependencies(&mut c, env, &merged, &locate);
        placement::check_placement(&mut c, file, env, &merged, &locate);
        ports::check_host_ports(&mut c, file, env, &merged, &locate);
        check_routes(&mut c, env, &merged, &locate);
        check_automatic_names(&mut c, &file.project.name, &merged, &locate);
    }
    c.findings
}

fn check_names(c: &mut Checker<'_>, file: &File) {
    let tables = [
        ("services", file.services.keys().collect::<Vec<_>>()),
        ("hosts", file.hosts.keys().collect()),
        ("environments", file.environments.keys().collect()),
    ];
    for (table, names) in tables {
        for name in names {
            if let Err(reason) = check_name(name) {
                c.push(
                    Problem::InvalidValue,
                    KeyPath::of([table, name.as_str()]),
                    true,
                    format!("invalid name: {reason}"),
                    Some("use lowercase letters, digits and hyphens, starting with a letter; names become host names like web.shop.localhost".to_owned()),
                );
            }
        }
    }
}

/// `deploy.verify` at most [`resolve::defaults::VERIFY_MAX`]; a canary
/// needs a verify window to wait for.
fn check_rollouts(c: &mut Checker<'_>, file: &File) {
    let tables = file
        .deploy
        .iter()
        .map(|r| (KeyPath::of(["deploy"]), r))
        .chain(file.environments.iter().filter_map(|(name, env)| {
            env.deploy
                .as_ref()
                .map(|r| (KeyPath::of(["environments", name.as_str(), "deploy"]), r))
        }));
    let tables: Vec<_> = tables.collect();
    for (path, rollout) in tables {
        if let Some(verify) = rollout.verify
            && verify > resolve::defaults::VERIFY_MAX
        {
            c.push(
                Problem::InvalidValue,
                path.key("verify"),
                false,
                format!("deploy.verify = \"{verify}\" is longer than the 10m a rollout may wait per host"),
                Some("a few seconds to a minute is usual: long enough for a bad release to crash".to_owned()),
            );
        }
        if rollout.canary == Some(true) && rollout.verify.is_some_and(|v| v.as_millis() == 0) {
            c.push(
                Problem::Conflict,
                path.key("canary"),
                false,
                "deploy.canary waits for the first host's verify window, and deploy.verify = \"0s\" has none".to_owned(),
                Some("give deploy.verify a duration, like \"10s\"".to_owned()),
            );
        }
    }
}

/// Whether a located path is in an environment's override.
fn set_by_override(path: &KeyPath) -> bool {
    path.0.first() == Some(&Segment::Key("environments".to_owned()))
}

fn check_dependencies(
    c: &mut Checker<'_>,
    env: &str,
    services: &Services<'_>,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    let deps = |name: &str| -> Vec<&str> {
        services
            .get(name)
            .and_then(|s| s.depends_on.as_ref())
            .map(|d| d.iter().map(String::as_str).collect())
            .unwrap_or_default()
    };
    for (name, service) in services {
        for (i, dep) in service.depends_on.iter().flatten().enumerate() {
            if !services.contains_key(dep.as_str()) {
                let hint = match did_you_mean(dep, services.keys().copied()) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!(
                        "declared services are: {}",
                        services.keys().copied().collect::<Vec<_>>().join(", ")
                    ),
                };
                c.push(
                    Problem::UnknownReference,
                    locate(name, &["depends_on"]).index(i),
                    false,
                    format!("service `{name}` depends on unknown service `{dep}`"),
                    Some(hint),
                );
            }
        }
    }

    // Depth-first search; a back edge closes a cycle. Each cycle is reported once,
    // at the dependency that closes it, starting from its first service by name.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    let mut reported: HashSet<Vec<&str>> = HashSet::new();
    fn visit<'f>(
        name: &'f str,
        deps: &dyn Fn(&str) -> Vec<&'f str>,
        marks: &mut BTreeMap<&'f str, Mark>,
        stack: &mut Vec<&'f str>,
        cycles: &mut Vec<Vec<&'f str>>,
    ) {
        marks.insert(name, Mark::Visiting);
        stack.push(name);
        for dep in deps(name) {
            match marks.get(dep) {
                Some(Mark::Visiting) => {
                    let start = stack.iter().position(|s| *s == dep).unwrap_or(0);
                    cycles.push(stack[start..].to_vec());
                }
                Some(Mark::Done) => {}
                None => visit(dep, deps, marks, stack, cycles),
            }
        }
        stack.pop();
        marks.insert(name, Mark::Done);
    }
    let mut cycles = Vec::new();
    for name in services.keys() {
        if !marks.contains_key(name) {
            visit(name, &deps, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    for mut cycle in cycles {
        cycle.retain(|s| services.contains_key(*s));
        let Some(first) = cycle
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| **s)
            .map(|(i, _)| i)
        else {
            continue;
        };
        cycle.rotate_left(first);
        if !reported.insert(cycle.clone()) {
            continue;
        }
        let from = cycle[0];
        let to = cycle[1 % cycle.len()];
        let index = deps(from).iter().position(|d| *d == to).unwrap_or(0);
        let shown: Vec<&str> = cycle.iter().copied().chain(std::iter::once(from)).collect();
        let at = locate(from, &["depends_on"]).index(index);
        let place = if at.0.first() == Some(&Segment::Key("environments".to_owned())) {
            format!(" in environment `{env}`")
        } else {
            String::new()
        };
        c.push(
            Problem::Cycle,
            at,
            false,
            format!("dependency cycle{place}: {}", shown.join(" → ")),
            Some(
                "remove one of these depends_on entries so the services can start in order"
                    .to_owned(),
            ),
        );
    }
}

fn check_service(
    c: &mut Checker<'_>,
    name: &str,
    s: &Service,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    check_run_secrets(c, name, s, locate);
    let kinds: Vec<&str> = [
        ("run", s.run.is_some()),
        ("image", s.image.is_some()),
        ("static", s.static_dir.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    match kinds.as_slice() {
        [] => c.push(
            Problem::Conflict,
            locate(name, &[]),
            true,
            format!("service `{name}` has none of `run`, `image` or `static`"),
            Some("add run = \"command\" for a process, image = \"name:tag\" for a container, or static = \"dir\" for files".to_owned()),
        ),
        [_] => {}
        [first, second, ..] => c.push(
            Problem::Conflict,
            locate(name, &[second]),
            true,
            format!("service `{name}` has both `{first}` and `{second}`"),
            Some("a service runs one way: keep one of `run`, `image` or `static`".to_owned()),
        ),
    }
    if s.run.as_ref().is_some_and(|run| run.trim().is_empty()) {
        c.push(
            Problem::InvalidValue,
            locate(name, &["run"]),
            false,
            format!("`run` of `{name}` is empty: there is no command to start"),
            Some(format!(
                "give the command that starts `{name}`, like run = \"./bin/{name}\"; a process that exits at once is a failed deploy"
            )),
        );
    }
    check_tls_paths(c, name, s, locate);
    check_image_build(c, name, s, locate);

    let is_static = s.static_dir.is_some() && kinds.len() == 1;
    let is_image = s.image.is_some() && kinds.len() == 1;

    if s.port.is_none() && !is_static {
        if s.routes.as_ref().is_some_and(|r| !r.is_empty()) {
            c.push(
                Problem::MissingKey,
                locate(name, &["routes"]),
                true,
                format!("service `{name}` has routes but no `port` to send them to"),
                Some("add port = \"http\" and listen on $PORT".to_owned()),
            );
        }
        if let Some(health) = &s.health
            && (health.path.is_some() || health.tcp == Some(true))
        {
            c.push(
                Problem::MissingKey,
                locate(name, &["health"]),
                true,
                format!("service `{name}` has an HTTP or TCP health check but no `port`"),
                Some("add port = \"http\", or check with command = \"...\"".to_owned()),
            );
        }
    }

    ports::check_replicas(c, name, s, is_image, locate);

    check_health_kind(c, name, s, locate);

    check_env_names(c, name, s, locate);
    ports::check_agent_variables(c, name, s, is_image, locate);

    if is_static {
        check_static_keys(c, name, s, locate);
    }
    if s.spa.is_some() && s.static_dir.is_none() {
        c.push(
            Problem::Conflict,
            locate(name, &["spa"]),
            true,
            format!("service `{name}` sets `spa` but serves no `static` directory"),
            Some("`spa` is for static services: add static = \"dist\", or remove `spa`; a process serves its own routes".to_owned()),
        );
    }
    if s.volumes.as_ref().is_some_and(|v| !v.is_empty()) && !is_image && kinds.len() == 1 {
        c.push(
            Problem::Conflict,
            locate(name, &["volumes"]),
            true,
            format!("service `{name}` has volumes but is not a container"),
            Some("volumes are mounted into containers (`image = ...`); a process reads its files from the host".to_owned()),
        );
    }
    check_shared_volumes(c, name, s, is_image, locate);
    check_backup(c, name, s, locate);
    check_migrate(c, name, s, locate);
}

/// `backup`: a kind Gantry can tell (given, or implied by the image) and
/// the `path` that kind needs, absolute, and only for it.
fn check_backup(
    c: &mut Checker<'_>,
    name: &str,
    s: &Service,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    use crate::model::BackupKind as Kind;
    let Some(backup) = &s.backup else { return };
    let mut problem = |key: &str, problem: Problem, message: String, hint: &str| {
        c.push(
            problem,
            locate(name, &["backup", key]),
            true,
            message,
            Some(hint.to_owned()),
        );
    };
    let Some(kind) = backup.kind.or_else(|| crate::resolve::backup_kind_of(s)) else {
        problem(
            "kind",
            Problem::MissingKey,
            format!("service `{name}` sets `backup` but not what to back up"),
            "add kind = \"sqlite\" with path = \"/abs/db.sqlite\", or kind = \"files\" with path = \"/abs/dir\"; an image service with volumes has its volumes backed up",
        );
        return;
    };
    let needs_path = matches!(kind, Kind::Sqlite | Kind::Files);
    match (&backup.path, needs_path) {
        (None, true) => problem(
            "path",
            Problem::MissingKey,
            format!("service `{name}`: a `{}` backup needs `path`", kind.name()),
            "add path = \"/absolute/path/on/the/host\"",
        ),
        (Some(path), true) if !path.starts_with('/') || path.split('/').any(|p| p == "..") => {
            problem(
                "path",
                Problem::InvalidValue,
                format!("service `{name}`: backup path `{path}` is not absolute"),
                "name the file or directory on the host by its absolute path, like /var/lib/shop/shop.db",
            )
        }
        (Some(_), false) => problem(
            "path",
            Problem::Conflict,
            format!(
                "service `{name}`: `path` is for `sqlite` and `files` backups, not `{}`",
                kind.name()
            ),
            "remove `path`",
        ),
        _ => {}
    }
    let has_volumes = s.volumes.as_ref().is_some_and(|v| !v.is_empty());
    let fits = match kind {
        Kind::Volumes => s.image.is_some() && has_volumes,
        Kind::Postgres | Kind::Mysql => s.image.is_some(),
        Kind::Sqlite | Kind::Files => s.static_dir.is_none(),
    };
    if !fits {
        problem(
            "kind",
            Problem::Conflict,
            format!(
                "service `{name}`: a `{}` backup does not fit this service",
                kind.name()
            ),
            "`volumes` needs an image with volumes; `postgres` and `mysql` an image; `sqlite` and `files` a path on the host",
        );
    }
}

/// `migrate`: the SQL engine's `sql` and `database` go together and name a
/// variable the service has; `pre` and `post` are commands a deploy runs.
fn check_migrate(
    c: &mut Checker<'_>,
    name: &str,
    s: &Service,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    let Some(m) = &s.migrate else {
        return;
    };
    for (key, command) in [("pre", &m.pre), ("post", &m.post)] {
        if command.as_ref().is_some_and(|c| c.trim().is_empty()) {
            c.push(
                Problem::InvalidValue,
                locate(name, &["migrate", key]),
                true,
                format!("`migrate.{key}` of `{name}` is empty: a deploy would run nothing"),
                Some(format!(
                    "give the command to run, like {key} = \"./manage migrate\", or remove `{key}`"
                )),
            );
        }
    }
    match (&m.sql, &m.database) {
        (None, None) if m.pre.is_none() && m.post.is_none() => c.push(
            Problem::MissingKey,
            locate(name, &["migrate"]),
            true,
            format!("`migrate` of `{name}` names nothing to run"),
            Some("add sql = \"migrations\" and database = \"DATABASE_URL\", or remove `migrate`".to_owned()),
        ),
        (Some(_), None) => c.push(
            Problem::MissingKey,
            locate(name, &["migrate"]),
            true,
            format!("`migrate.sql` of `{name}` needs `database`: the variable that holds the database's URL"),
            Some("add database = \"DATABASE_URL\", naming one of the service's `secrets` or `env` keys".to_owned()),
        ),
        (None, Some(_)) => c.push(
            Problem::MissingKey,
            locate(name, &["migrate"]),
            true,
            format!("`migrate.database` of `{name}` is set but `migrate.sql` names no migrations"),
            Some("add sql = \"migrations\" (a directory of NNNN_name.sql files), or remove `database`".to_owned()),
        ),
        (Some(_), Some(database)) => {
            let in_env = s.env.as_ref().is_some_and(|e| e.contains_key(database));
            let secret = s.secrets.iter().flatten().any(|n| &n.0 == database);
            if !in_env && !secret {
                c.push(
                    Problem::UnknownReference,
                    locate(name, &["migrate", "database"]),
                    false,
                    format!("`migrate.database` names `{database}`, which is neither a secret nor an env variable of `{name}`"),
                    Some(format!("add secrets = [\"{database}\"] to `{name}` (a URL with a password is a secret), or name one it has")),
                );
            }
        }
        (None, None) => {}
    }
}

/// Replicas of a service with volumes would share them: refused unless the
/// service says its volumes can be shared (`deploy_strategy = "start-first"`,
/// which also runs a replacement beside the instance it replaces).
fn check_shared_volumes(
    c: &mut Checker<'_>,
    name: &str,
    s: &Service,
    is_image: bool,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    let has_volumes = s.volumes.as_ref().is_some_and(|v| !v.is_empty());
    let strategy = s
        .deploy_strategy
        .unwrap_or_else(|| DeployStrategy::default_for(is_image, has_volumes));
    if let Some(replicas) = s.replicas
        && replicas.get() > 1
        && has_volumes
        && strategy == DeployStrategy::StopFirst
    {
        c.push(
            Problem::Conflict,
            locate(name, &["replicas"]),
            false,
            format!("{replicas} replicas of `{name}` would share its volumes"),
            Some("run one replica; or, if two instances may share the volumes, say so with deploy_strategy = \"start-first\"".to_owned()),
        );
    }
}

/// A `build` table builds the service's `image`: the service must have one,
/// named so `docker build -t` takes it, and the build arguments' names must
/// be variable names. Whether the paths exist is checked where they are read.
fn check_image_build(
    c: &mut Checker<'_>,
    name: &str,
    s: &Service,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    let Some(Build::Image(build)) = &s.build else {
        return;
    };
    match &s.image {
        None => c.push(
            Problem::Conflict,
            locate(name, &["build"]),
            true,
            format!("service `{name}` builds an image (a `build` table) but has no `image` to tag it as"),
            Some(format!("add image = \"{name}\" to name the image, or write build = \"command\" for a process")),
        ),
        Some(image) if image.contains('@') => c.push(
            Problem::InvalidValue,
            locate(name, &["image"]),
            false,
            format!("`{image}` names an image by digest, but `build` makes a new image each time"),
            Some(format!("name it without `@sha256:...`, like image = \"{name}\"")),
        ),
        Some(image) if !is_image_name(image) => c.push(
            Problem::InvalidValue,
            locate(name, &["image"]),
            false,
            format!("`{image}` is not a name `docker build -t` takes"),
            Some(format!("use lowercase letters, digits, `.`, `_`, `-` and `/`, with an optional `:tag`, like image = \"{name}\"")),
        ),
        Some(_) => {}
    }
    for key in build.args.iter().flatten().map(|(k, _)| k) {
        if let Err(reason) = check_env_name(key) {
            c.push(
                Problem::InvalidValue,
                locate(name, &["build", "args", key]),
                true,
                format!("invalid build argument name: {reason}"),
                Some("use letters, digits and underscores, not starting with a digit".to_owned()),
            );
        }
    }
}

/// A repository name with an optional tag, as `docker build -t` takes it:
/// lowercase path components, then `:tag`.
fn is_image_name(image: &str) -> bool {
    let (repository, tag) = match image.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
        _ => (image, None),
    };
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    });
    let repository_ok = !repository.is_empty()
        && repository.len() <= 255
        && repository.split('/').enumerate().all(|(i, part)| {
            // The first component may be a registry with a port (`host:5000`).
            let port_ok = i == 0 || !part.contains(':');
            port_ok
                && !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part.chars().all(|c| {
                    c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || matches!(c, '.' | '_' | '-' | ':')
                })
        });
    tag_ok && repository_ok
}

/// `cert` and `key` are read on each host, so they must be absolute.
fn check_tls_paths(
    c: &mut Checker<'_>,
    name: &str,
    s: &Service,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    if let Some(tls) = &s.tls {
        for (key, path) in [("cert", &tls.cert), ("key", &tls.key)] {
            if !path.starts_with('/') {
                c.push(
                    Problem::InvalidValue,
                    locate(name, &["tls", key]),
                    false,
                    format!("`{path}` is not an absolute path: the agent reads it on each host"),
                    Some(format!(
                        "write the full path on the host, like /etc/ssl/{name}/{}",
                        if key == "cert" {
                            "fullchain.pem"
                        } else {
                            "privkey.pem"
                        }
                    )),
                );
            }
        }
    }
}

/// A health check is exactly one of path, tcp or command.
fn check_health_kind(
    c: &mut Checker<'_>,
    name: &str,
    s: &Service,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    if let Some(health) = &s.health {
        let checks: Vec<&str> = [
            ("path", health.path.is_some()),
            ("tcp", health.tcp == Some(true)),
            ("command", health.command.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        match checks.as_slice() {
            [] => c.push(
                Problem::MissingKey,
                locate(name, &["health"]),
                true,
                format!("the health check of `{name}` checks nothing"),
                Some("add path = \"/healthz\" (HTTP), tcp = true, or command = \"...\"".to_owned()),
            ),
            [_] => {}
            [first, second, ..] => c.push(
                Problem::Conflict,
                locate(name, &["health", second]),
                true,
                format!("the health check of `{name}` has both `{first}` and `{second}`"),
                Some("a health check is one of path (HTTP), tcp or command".to_owned()),
            ),
        }
    }
}

/// Env names are valid and none is also a secret.
fn check_env_names(
    c: &mut Checker<'_>,
    name: &str,
    s: &Service,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    let secrets: HashSet<&str> = s.secrets.iter().flatten().map(|n| n.0.as_str()).collect();
    for key in s.env.iter().flatten().map(|(k, _)| k) {
        if let Err(reason) = check_env_name(key) {
            c.push(
                Problem::InvalidValue,
                locate(name, &["env", key]),
                true,
                format!("invalid environment variable name: {reason}"),
                Some("use letters, digits and underscores, not starting with a digit".to_owned()),
            );
        } else if secrets.contains(key.as_str()) {
            c.push(
                Problem::Conflict,
                locate(name, &["env", key]),
                true,
                format!("`{key}` is both an env variable and a secret of `{name}`"),
                Some("keep secret values out of gantry.toml: remove it from env".to_owned()),
            );
        }
    }
}

/// Keys that only apply to a running workload, on a static service.
fn check_static_keys(
    c: &mut Checker<'_>,
    name: &str,
    s: &Service,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    for (key, set) in [
        ("resources", s.resources.is_some()),
        ("migrate", s.migrate.is_some()),
        ("replicas", s.replicas.is_some()),
        ("port", s.port.is_some()),
        ("health", s.health.is_some()),
        ("env", s.env.is_some()),
        ("secrets", s.secrets.is_some()),
        ("restart", s.restart.is_some()),
        ("stop_timeout", s.stop_timeout.is_some()),
        ("run_as_root", s.run_as_root.is_some()),
        ("deploy_strategy", s.deploy_strategy.is_some()),
    ] {
        if set {
            c.push(
                Problem::Conflict,
                locate(name, &[key]),
                true,
                format!("static service `{name}` cannot have `{key}`"),
                Some(format!(
                    "static services are files served by the proxy; `{key}` does not apply"
                )),
            );
        }
    }
}

fn check_routes(
    c: &mut Checker<'_>,
    env: &str,
    services: &Services<'_>,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    // Each route with the key path it was written at, first come first served;
    // a clash is reported at the route an environment override added, if either was.
    let mut claimed: BTreeMap<Route, (&str, usize)> = BTreeMap::new();
    for (name, service) in services {
        for (i, route) in service.routes.iter().flatten().enumerate() {
            let parsed = Route::parse(&route.0);
            let Some(&(owner, owner_index)) = claimed.get(&parsed) else {
                claimed.insert(parsed, (name, i));
                continue;
            };
            // Key paths are worked out only for a clash: most routes never need one.
            let path = locate(name, &["routes"]).index(i);
            let owner_path = &locate(owner, &["routes"]).index(owner_index);
            let owner = &owner;
            let is_override =
                |p: &KeyPath| p.0.first() == Some(&Segment::Key("environments".to_owned()));
            let (at, other) = if is_override(owner_path) && !is_override(&path) {
                (owner_path.clone(), *name)
            } else {
                (path, *owner)
            };
            let subject = if at == *owner_path { *owner } else { *name };
            let message = if subject == other {
                format!("service `{subject}` lists route `{parsed}` twice")
            } else {
                format!("route `{parsed}` of `{subject}` is already claimed by `{other}`")
            };
            let message = if is_override(&at) {
                format!("{message} in environment `{env}`")
            } else {
                message
            };
            c.push(
                Problem::DuplicateRoute,
                at,
                false,
                message,
                Some("each host and path prefix goes to one service; give one of them another host or path".to_owned()),
            );
        }
    }
}

/// A declared route may not take a name the proxy gives a service itself
/// (`<service>.<project>.localhost`, for services with a port), nor a name
/// reserved to another project's automatic names: the proxy refuses a table
/// that routes one host and path twice, and would then route nothing new.
fn check_automatic_names(
    c: &mut Checker<'_>,
    project: &str,
    services: &Services<'_>,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    for (name, service) in services {
        for (i, route) in service.routes.iter().flatten().enumerate() {
            let parsed = Route::parse(&route.0);
            let Some(owner) = Route::reserved_to(&parsed.host) else {
                continue;
            };
            let path = locate(name, &["routes"]).index(i);
            if owner != project {
                c.push(
                    Problem::InvalidValue,
                    path,
                    false,
                    format!("route `{parsed}` of `{name}` is under `{owner}.localhost`, which holds the automatic names of project `{owner}`"),
                    Some(format!("use a name under `{project}.localhost`, or another host")),
                );
                continue;
            }
            let named = services.iter().find(|(other, s)| {
                s.port.is_some() && parsed.host == Route::automatic_host(other, project)
            });
            if let Some((other, _)) = named
                && (other != name || parsed.path == "/")
            {
                c.push(
                    Problem::DuplicateRoute,
                    path,
                    false,
                    format!("route `{parsed}` of `{name}` is the automatic name of service `{other}`"),
                    Some(format!("every service with a port is reachable as `<service>.{project}.localhost` already; give the route another host")),
                );
            }
        }
    }
}

/// `${NAME}` of a secret written into `run` puts its value on the command
/// line, where every local user sees it in `ps`: the service must read it
/// from its environment instead.
fn check_run_secrets(
    c: &mut Checker<'_>,
    name: &str,
    s: &Service,
    locate: &dyn Fn(&str, &[&str]) -> KeyPath,
) {
    let path = locate(name, &["run"]);
    let Some(run) = c.doc.raw_str(&path) else {
        return;
    };
    for secret in s.secrets.iter().flatten() {
        let secret = &secret.0;
        if run.contains(&format!("${{{secret}}}")) || run.contains(&format!("${{{secret}:-")) {
            c.push(
                Problem::InvalidValue,
                path.clone(),
                false,
                format!("`run` of `{name}` interpolates secret `{secret}`: its value would show in `ps` and the agent's store"),
                Some(format!("let the program read {secret} from its environment; a command-line argument (even `${secret}`) shows in `ps`")),
            );
        }
    }
}
