//! Whatever text it is given, the loader answers: a file, or diagnostics that
//! point inside the text. It never panics, and a file it accepts resolves in
//! every environment.
//!
//! Three sources of input: arbitrary bytes; arbitrary TOML documents; and
//! documents shaped like gantry.toml (the real keys with values of the right
//! or the wrong type, references between generated names), rendered with the
//! `toml` crate and sometimes damaged afterwards so the parser has to recover.

use gantry_config::{Config, Error, parse};
use proptest::prelude::*;
use proptest::sample::{Index, subsequence};
use proptest::test_runner::TestCaseError;
use toml::{Table, Value};

/// Enough cases to reach the odd corners, few enough to run in seconds in debug.
/// Failures are not persisted to a file: a failing input found here becomes a
/// named regression test instead.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Some variables are set, so both the expanded and the unset branches run.
fn vars(name: &str) -> Option<String> {
    match name.chars().next() {
        Some('A') => Some("set ${NOT_AGAIN} é".to_owned()),
        Some('H') => Some(String::new()),
        _ => None,
    }
}

/// The property: diagnostics point inside the text, and an accepted file resolves.
fn check(text: &str) -> Result<(), TestCaseError> {
    match parse("gantry.toml", text, &vars) {
        Ok(file) => {
            let config = Config {
                path: "gantry.toml".into(),
                file,
            };
            for name in config.environment_names() {
                match config.environment(&name) {
                    Ok(env) => {
                        let n = env.deploy_order().len();
                        if std::env::var("STRICT_ORDER").is_ok() { prop_assert_eq!(n, env.services.len(), "deploy order drops services in {}:\n{}", name, text); }
                    }
                    Err(error) => prop_assert!(false, "environment `{name}` does not resolve: {error}"),
                }
            }
        }
        Err(Error::Invalid(diagnostics)) => {
            if std::env::var("STRICT_EMPTY").is_ok() { prop_assert!(!diagnostics.items.is_empty(), "no diagnostics for:\n{}", text); }
            for d in &diagnostics.items {
                prop_assert!(d.line >= 1 && d.column >= 1, "line/column not 1-based: {d:?}");
                prop_assert!(
                    d.span.start <= d.span.end && d.span.end <= text.len(),
                    "span {:?} outside the text ({} bytes): {d:?}",
                    d.span,
                    text.len()
                );
                prop_assert!(
                    text.is_char_boundary(d.span.start) && text.is_char_boundary(d.span.end),
                    "span {:?} splits a character: {d:?}",
                    d.span
                );
                prop_assert!(!d.message.trim().is_empty(), "empty message: {d:?}");
            }
        }
        Err(other) => prop_assert!(false, "parse returned a non-diagnostic error: {other}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Arbitrary TOML values

/// Strings that exercise interpolation, escaping and multi-byte characters.
fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9./:@ -]{0,12}",
        2 => "[a-zA-Z_$\\{\\}:\\-]{0,12}",
        1 => prop::collection::vec(any::<char>(), 0..10).prop_map(String::from_iter),
        1 => prop::sample::select(vec![
            "",
            "${",
            "${}",
            "${A}",
            "${ABC:-x}",
            "${UNSET}",
            "${UNSET:-}",
            "${1BAD}",
            "${a b}",
            "$$",
            "$${KEEP}",
            "$",
            "x$",
            "$$$",
            "${A}${B}${",
            "é${UNSET}ü",
            "日本語${HOME}",
            "🚀",
            "a\u{0}b",
            "line\nbreak",
            "tab\there",
            "quote\"and'apostrophe",
            "back\\slash",
            "'''",
            "\"\"\"",
            "\r\n",
        ])
        .prop_map(str::to_owned),
    ]
}

fn any_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "project", "name", "services", "environments", "hosts", "run", "image", "static",
            "port", "health", "routes", "replicas", "env", "secrets", "depends_on", "resources",
            "web", "api", "db", "local", "prod", "ssh", "provider", "0", "1", "",
        ])
        .prop_map(str::to_owned),
        1 => any_string(),
    ]
}

fn any_datetime() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        "1979-05-27T07:32:00Z",
        "1979-05-27T00:32:00.999999-07:00",
        "1979-05-27T07:32:00",
        "1979-05-27",
        "07:32:00",
    ])
    .prop_map(|text| Value::Datetime(text.parse().expect("a valid TOML datetime")))
}

fn any_integer() -> impl Strategy<Value = i64> {
    prop_oneof![
        prop::sample::select(vec![0, 1, -1, 80, 65535, 65536, i64::from(u32::MAX) + 1, i64::MAX, i64::MIN]),
        any::<i64>(),
    ]
}

fn any_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![0.0, -0.0, 0.005, 0.5, 1024.0, 1e300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
        any::<f64>(),
    ]
}

fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any_string().prop_map(Value::String),
        any_integer().prop_map(Value::Integer),
        any_float().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
        any_datetime(),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any_key(), inner), 0..6)
                .prop_map(|entries| Value::Table(entries.into_iter().collect())),
        ]
    })
}

fn any_table() -> impl Strategy<Value = Table> {
    prop::collection::vec((any_key(), any_value()), 0..8).prop_map(|entries| entries.into_iter().collect())
}

// ---------------------------------------------------------------------------
// Documents shaped like gantry.toml

/// Usually the right kind of value for a key; sometimes any value at all.
fn or_wrong(right: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![5 => right, 1 => any_value()].boxed()
}

/// A key that is present with probability `p`.
type Field = BoxedStrategy<Option<(String, Value)>>;

fn field(key: &'static str, p: f64, value: impl Strategy<Value = Value> + 'static) -> Field {
    prop::option::weighted(p, or_wrong(value))
        .prop_map(move |v| v.map(|v| (key.to_owned(), v)))
        .boxed()
}

fn table_of(fields: Vec<Field>) -> impl Strategy<Value = Value> {
    fields.prop_map(|fields| Value::Table(fields.into_iter().flatten().collect()))
}

fn string_from(choices: &[&'static str], pattern: &'static str) -> impl Strategy<Value = Value> + use<> {
    prop_oneof![
        3 => prop::sample::select(choices.to_vec()).prop_map(str::to_owned),
        1 => pattern,
        1 => any_string(),
    ]
    .prop_map(Value::String)
}

fn integer_from(choices: &[i64]) -> impl Strategy<Value = Value> + use<> {
    prop_oneof![3 => prop::sample::select(choices.to_vec()), 1 => any_integer()].prop_map(Value::Integer)
}

fn array_of(item: impl Strategy<Value = Value>, max: usize) -> impl Strategy<Value = Value> {
    prop::collection::vec(item, 0..=max).prop_map(Value::Array)
}

const NAMES: &[&str] = &["web", "api", "db", "worker", "cache", "local", "a", "Web", "2x", "web_api", "wéb", "-x", ""];

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(NAMES.to_vec()).prop_map(str::to_owned),
        1 => "[a-z][a-z0-9-]{0,8}",
    ]
}

fn duration() -> impl Strategy<Value = Value> {
    string_from(
        &["1s", "500ms", "0s", "2m", "1h", "1d", "5", "1.5s", " 3 s ", "99999999999999999999s", "999999999999999d", "fast", ""],
        "[0-9]{1,4}(ms|s|m|h|d|x)?",
    )
}

fn size() -> impl Strategy<Value = Value> {
    string_from(
        &["256M", "1G", "1GiB", "512k", "1000", "0", "12Q", "lots", "99999999999999999T", "1iB"],
        "[0-9]{1,5}[KMGTkmgt]?(i?B)?",
    )
}

fn command() -> impl Strategy<Value = Value> {
    string_from(
        &["./web", "target/release/api --port $PORT", "bin/${A}", "${UNSET}", "echo $${KEEP}", "${PORT:-8080}"],
        "[a-z/.]{1,10}( -[a-z]{1,3})?",
    )
}

fn route() -> impl Strategy<Value = Value> {
    string_from(
        &[
            "example.com",
            "Example.com/",
            "example.com/api",
            "example.com/api/",
            "*.example.com",
            "shop.example.com",
            "localhost",
            "/api",
            "exa mple.com",
            "a..b",
            "-bad.com",
            "é.com",
            "example.com/a?b",
        ],
        "(\\*\\.)?[a-z]{1,4}(\\.[a-z]{1,3}){0,2}(/[a-z]{0,3}){0,2}",
    )
}

fn env_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["A", "DATABASE_URL", "PORT", "_x1", "SECRET", "1X", "a-b", ""]).prop_map(str::to_owned),
        1 => "[A-Z_][A-Z0-9_]{0,6}",
        1 => any_string(),
    ]
}

fn health() -> impl Strategy<Value = Value> {
    table_of(vec![
        field("path", 0.5, string_from(&["/", "/healthz", "healthz", "/a b", "/${A}"], "/[a-z]{0,6}")),
        field("tcp", 0.2, any::<bool>().prop_map(Value::Boolean)),
        field("command", 0.2, command()),
        field("interval", 0.5, duration()),
        field("timeout", 0.5, duration()),
        field("retries", 0.3, integer_from(&[0, 1, 3, -1, 4_294_967_296])),
        field("start_period", 0.3, duration()),
        field("helth", 0.05, any_value()),
    ])
}

fn resources() -> impl Strategy<Value = Value> {
    table_of(vec![
        field("memory", 0.6, size()),
        field(
            "cpu",
            0.6,
            prop_oneof![
                any_float().prop_map(Value::Float),
                prop::sample::select(vec![0.01, 0.5, 2.0, 1024.0, 1024.5]).prop_map(Value::Float),
                integer_from(&[0, 1, 4, 2000]),
            ],
        ),
        field("pids", 0.4, integer_from(&[0, 1, 100, -5, 4_294_967_296])),
    ])
}

/// A service table; `names` are the services of the document, for `depends_on`.
/// Overrides in an environment use the same shape with fewer keys set.
fn service(names: Vec<String>, p: f64) -> impl Strategy<Value = Value> {
    let dependency = prop_oneof![
        4 => prop::sample::select(if names.is_empty() { vec!["web".to_owned()] } else { names.clone() }),
        1 => name(),
    ]
    .prop_map(Value::String);
    table_of(vec![
        field("run", p, command()),
        field("image", p / 2.0, string_from(&["postgres:16", "redis", "ghcr.io/x/y:${A}"], "[a-z]{1,8}(:[0-9]{1,2})?")),
        field("static", p / 4.0, string_from(&["public", "dist/", "${UNSET}"], "[a-z/]{1,8}")),
        field("build", p / 3.0, command()),
        field("artifact", p / 4.0, string_from(&["target/release/web", "."], "[a-z/]{1,8}")),
        field(
            "port",
            p,
            prop_oneof![
                string_from(&["http", "admin", "HTTP", "8080", ""], "[a-z]{1,5}"),
                integer_from(&[0, 1, 80, 8080, 65535, 65536, -1]),
            ],
        ),
        field("health", p, health()),
        field("routes", p, array_of(route(), 3)),
        field("replicas", p, integer_from(&[0, 1, 2, 3, -1, 4_294_967_296])),
        field(
            "env",
            p,
            prop::collection::vec((env_name(), or_wrong(any_string().prop_map(Value::String))), 0..4)
                .prop_map(|entries| Value::Table(entries.into_iter().collect())),
        ),
        field("secrets", p, array_of(env_name().prop_map(Value::String), 3)),
        field("resources", p / 2.0, resources()),
        field("depends_on", p, array_of(dependency, 3)),
        field(
            "migrate",
            p / 4.0,
            table_of(vec![field("pre", 0.7, command()), field("post", 0.5, command())]),
        ),
        field(
            "volumes",
            p / 3.0,
            array_of(
                string_from(&["pgdata:/var/lib/postgresql/data", "/srv:/data:ro", "pgdata", "a:/b:rx", "./x:/y"], "[a-z]{1,5}:/[a-z]{1,5}"),
                2,
            ),
        ),
        field(
            "backup",
            p / 4.0,
            table_of(vec![
                field("schedule", 0.8, string_from(&["0 3 * * *", "*/15 0-6 1,15 * 1-5", "60 3 * * *", "*/0 * * * *", "0 3 * *"], "[0-9*]{1,2} [0-9*]{1,2} \\* \\* \\*")),
                field("keep", 0.5, integer_from(&[0, 1, 7, -1])),
            ]),
        ),
        field("stop_timeout", p / 3.0, duration()),
        field("restart", p / 3.0, string_from(&["always", "on-failure", "never", "Always", "sometimes"], "[a-z-]{1,10}")),
        field("helth", p / 10.0, any_value()),
    ])
}

fn host() -> impl Strategy<Value = Value> {
    table_of(vec![
        field(
            "ssh",
            0.7,
            string_from(
                &["deploy@203.0.113.10", "deploy@203.0.113.10:2222", "web-1", "root@[2001:db8::1]:22", "@host", "deploy@host:ssh", "a@b:0", ""],
                "[a-z]{1,5}@[a-z0-9.]{1,9}(:[0-9]{1,5})?",
            ),
        ),
        field("provider", 0.3, string_from(&["local", "hetzner", "digitalocean", "aws", "Hetzner"], "[a-z]{1,8}")),
        field("user", 0.05, any_value()),
    ])
}

fn environment(services: Vec<String>, hosts: Vec<String>) -> impl Strategy<Value = Value> {
    let host_ref = prop_oneof![
        3 => prop::sample::select([hosts, vec!["local".to_owned()]].concat()),
        1 => name(),
    ]
    .prop_map(Value::String);
    (
        prop::option::weighted(0.95, or_wrong(array_of(host_ref, 3))),
        overrides(services),
    )
        .prop_map(|(hosts, services)| {
            let mut table = Table::new();
            if let Some(hosts) = hosts {
                table.insert("hosts".to_owned(), hosts);
            }
            if let Some(services) = services {
                table.insert("services".to_owned(), services);
            }
            Value::Table(table)
        })
}

/// Per-service overrides, mostly for services that exist.
fn overrides(services: Vec<String>) -> BoxedStrategy<Option<Value>> {
    let names = [services.clone(), vec!["ghost".to_owned()]].concat();
    prop::option::weighted(
        0.7,
        or_wrong(
            subsequence(names, 0..=services.len().min(3) + 1).prop_flat_map(move |chosen| {
                let tables: Vec<_> = chosen.iter().map(|_| service(services.clone(), 0.15)).collect();
                tables.prop_map(move |tables| Value::Table(chosen.iter().cloned().zip(tables).collect()))
            }),
        ),
    )
    .boxed()
}

fn unique(names: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    names.into_iter().filter(|n| seen.insert(n.clone())).collect()
}

fn gantry_document() -> impl Strategy<Value = Table> {
    (
        prop::collection::vec(name(), 0..6),
        prop::collection::vec(name(), 0..3),
        prop::collection::vec(name(), 0..3),
    )
        .prop_flat_map(|(services, hosts, environments)| {
            let services = unique(services);
            let hosts = unique(hosts);
            let environments = unique(environments);
            let service_tables: Vec<_> = services.iter().map(|_| service(services.clone(), 0.6)).collect();
            let host_tables: Vec<_> = hosts.iter().map(|_| host()).collect();
            let environment_tables: Vec<_> = environments
                .iter()
                .map(|_| environment(services.clone(), hosts.clone()))
                .collect();
            (
                prop::option::weighted(0.95, or_wrong(table_of(vec![field("name", 0.95, name().prop_map(Value::String))]))),
                service_tables,
                host_tables,
                environment_tables,
                prop::option::weighted(0.05, (any_key(), any_value())),
            )
                .prop_map(move |(project, service_tables, host_tables, environment_tables, extra)| {
                    let mut root = Table::new();
                    if let Some(project) = project {
                        root.insert("project".to_owned(), project);
                    }
                    let named = |names: &[String], tables: Vec<Value>| -> Value {
                        Value::Table(names.iter().cloned().zip(tables).collect())
                    };
                    if !services.is_empty() {
                        root.insert("services".to_owned(), named(&services, service_tables));
                    }
                    if !hosts.is_empty() {
                        root.insert("hosts".to_owned(), named(&hosts, host_tables));
                    }
                    if !environments.is_empty() {
                        root.insert("environments".to_owned(), named(&environments, environment_tables));
                    }
                    if let Some((key, value)) = extra {
                        root.insert(key, value);
                    }
                    root
                })
        })
}

// ---------------------------------------------------------------------------
// Documents that should pass every check, to reach the resolver

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Run,
    Image,
    Static,
}

fn one_of(choices: &[&'static str]) -> impl Strategy<Value = Value> + use<> {
    prop::sample::select(choices.to_vec()).prop_map(|s| Value::String(s.to_owned()))
}

fn good_command() -> impl Strategy<Value = Value> {
    one_of(&["./web", "target/release/api --port $PORT", "bin/${A}", "echo $${KEEP}", "${PORT:-8080}", "run ${HOME}"])
}

fn good_duration() -> impl Strategy<Value = Value> {
    one_of(&["500ms", "1s", "2s", "30s", "2m", "0s", " 3 s"])
}

/// Keys of `env` and of `secrets` come from different pools: a name in both is an error.
fn good_env() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::sample::select(vec!["LOG_LEVEL", "RUST_LOG", "ENV_A", "_X1", "URL"]),
        one_of(&["info", "", "${A}", "${UNSET:-fallback}", "$${KEEP}", "$PORT", "日本", "a\"b\\c\n"]),
        0..4,
    )
    .prop_map(|env| Value::Table(env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn good_service(name: String, kind: Kind, earlier: Vec<String>) -> impl Strategy<Value = Value> {
    let how = match kind {
        Kind::Run => ("run", good_command().boxed()),
        Kind::Image => ("image", one_of(&["postgres:16", "redis:7", "ghcr.io/acme/web:${A}"]).boxed()),
        Kind::Static => ("static", one_of(&["public", "dist/"]).boxed()),
    };
    let served = kind != Kind::Static;
    // A fixed port only for containers, so replicas never share one.
    let port = match kind {
        Kind::Image => prop_oneof![one_of(&["http", "pg"]), (1..=65535i64).prop_map(Value::Integer)].boxed(),
        _ => one_of(&["http", "admin"]).boxed(),
    };
    let check = if served {
        prop_oneof![
            one_of(&["/", "/healthz"]).prop_map(|p| ("path", p)),
            Just(("tcp", Value::Boolean(true))),
            good_command().prop_map(|c| ("command", c)),
        ]
        .boxed()
    } else {
        good_command().prop_map(|c| ("command", c)).boxed()
    };
    let health = (
        check,
        table_of(vec![
            field_ok("interval", 0.5, good_duration()),
            field_ok("timeout", 0.5, good_duration()),
            field_ok("retries", 0.3, (1..10i64).prop_map(Value::Integer)),
            field_ok("start_period", 0.3, good_duration()),
            field_ok("tcp", 0.2, Just(Value::Boolean(false))),
        ]),
    )
        .prop_map(|((key, check), mut rest)| {
            if let Value::Table(table) = &mut rest {
                table.insert(key.to_owned(), check);
            }
            rest
        });
    let routes = subsequence(
        vec![
            format!("{name}.example.com"),
            format!("Example.com/{name}/"),
            format!("*.{name}.example.org"),
        ],
        1..=2,
    )
    .prop_map(|routes| Value::Array(routes.into_iter().map(Value::String).collect()));
    let depends_on = subsequence(earlier.clone(), 0..=earlier.len().min(2))
        .prop_map(|names| Value::Array(names.into_iter().map(Value::String).collect()));
    let p = |set: bool, p: f64| if set { p } else { 0.0 };
    let image = kind == Kind::Image;
    let volumes = Value::Array(vec![Value::String(format!("{name}-data:/data"))]);
    table_of(vec![
        field_ok(how.0, 1.0, how.1),
        field_ok("build", 0.2, good_command()),
        field_ok("port", p(served, 1.0), port),
        field_ok("health", 0.5, health),
        field_ok("routes", p(served, 0.5), routes),
        field_ok("replicas", p(served, 0.4), (1..=5i64).prop_map(Value::Integer)),
        field_ok("env", 0.5, good_env()),
        field_ok("secrets", 0.4, array_of(one_of(&["DATABASE_URL", "API_KEY", "TOKEN"]), 2)),
        field_ok(
            "resources",
            p(served, 0.4),
            table_of(vec![
                field_ok("memory", 0.7, one_of(&["256M", "1G", "1GiB", "512k", "1000"])),
                field_ok("cpu", 0.5, prop_oneof![(0.01..=1024.0f64).prop_map(Value::Float), Just(Value::Integer(2))]),
                field_ok("pids", 0.3, (1..=100_000i64).prop_map(Value::Integer)),
            ]),
        ),
        field_ok("depends_on", 0.6, depends_on),
        field_ok("migrate", p(served, 0.2), table_of(vec![field_ok("pre", 0.8, good_command()), field_ok("post", 0.5, good_command())])),
        field_ok("volumes", p(image, 0.6), Just(volumes.clone())),
        field_ok("stop_timeout", 0.2, good_duration()),
        field_ok("restart", 0.2, one_of(&["always", "on-failure", "never"])),
    ])
    .prop_flat_map(move |service| {
        // A backup needs volumes to back up.
        let has_volumes = matches!(&service, Value::Table(t) if t.contains_key("volumes"));
        let backup = table_of(vec![
            field_ok("schedule", 1.0, one_of(&["0 3 * * *", "*/15 0-6 1,15 * 1-5"])),
            field_ok("keep", 0.5, (1..30i64).prop_map(Value::Integer)),
        ]);
        (Just(service), maybe(if has_volumes { 0.5 } else { 0.0 }, backup)).prop_map(
            |(mut service, backup)| {
                if let (Value::Table(table), Some(backup)) = (&mut service, backup) {
                    table.insert("backup".to_owned(), backup);
                }
                service
            },
        )
    })
}

/// An environment override: only keys that cannot break the service they change.
fn good_override(kind: Kind, earlier: Vec<String>) -> impl Strategy<Value = Value> {
    let served = kind != Kind::Static;
    let depends_on = subsequence(earlier.clone(), 0..=earlier.len().min(2))
        .prop_map(|names| Value::Array(names.into_iter().map(Value::String).collect()));
    table_of(vec![
        field_ok("replicas", if served { 0.5 } else { 0.0 }, (1..=9i64).prop_map(Value::Integer)),
        field_ok("env", 0.5, good_env()),
        field_ok("depends_on", 0.2, depends_on),
        field_ok("stop_timeout", 0.2, good_duration()),
        field_ok(
            "resources",
            if served { 0.3 } else { 0.0 },
            table_of(vec![field_ok("memory", 1.0, one_of(&["2G", "64M"]))]),
        ),
    ])
}

/// Like `field`, but never a value of the wrong type.
fn field_ok(key: &'static str, p: f64, value: impl Strategy<Value = Value> + 'static) -> Field {
    maybe(p, value)
        .prop_map(move |v| v.map(|v| (key.to_owned(), v)))
        .boxed()
}

/// `Some` with probability `p`, which may be 0 or 1 here.
fn maybe<T: std::fmt::Debug + Clone + 'static>(
    p: f64,
    value: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    if p >= 1.0 {
        value.prop_map(Some).boxed()
    } else if p <= 0.0 {
        Just(None).boxed()
    } else {
        prop::option::weighted(p, value).boxed()
    }
}

fn good_host() -> impl Strategy<Value = Value> {
    prop_oneof![
        one_of(&["deploy@203.0.113.10", "deploy@203.0.113.10:2222", "web-1", "root@[2001:db8::1]:22"]).prop_map(|ssh| ("ssh", ssh)),
        one_of(&["local", "hetzner", "digitalocean"]).prop_map(|provider| ("provider", provider)),
    ]
    .prop_map(|(key, value)| Value::Table([(key.to_owned(), value)].into_iter().collect()))
}

fn valid_document() -> impl Strategy<Value = Table> {
    let kind = prop_oneof![3 => Just(Kind::Run), 2 => Just(Kind::Image), 1 => Just(Kind::Static)];
    (
        prop::collection::vec(kind, 0..8),
        subsequence(vec!["web-1", "web-2", "db-1", "local"], 0..=3),
        subsequence(vec!["prod", "staging", "local", "dev"], 0..=3),
    )
        .prop_flat_map(|(kinds, hosts, environments)| {
            let names: Vec<String> = (0..kinds.len()).map(|i| format!("{}-{i}", ["web", "api", "db"][i % 3])).collect();
            let services: Vec<_> = names
                .iter()
                .zip(&kinds)
                .enumerate()
                .map(|(i, (name, kind))| good_service(name.clone(), *kind, names[..i].to_vec()))
                .collect();
            let hosts: Vec<String> = hosts.into_iter().map(str::to_owned).collect();
            let host_tables: Vec<_> = hosts.iter().map(|_| good_host()).collect();
            let reachable = [hosts.clone(), vec!["local".to_owned()]].concat();
            let reachable = unique(reachable);
            let overrides: Vec<_> = names
                .iter()
                .zip(&kinds)
                .enumerate()
                .map(|(i, (_, kind))| prop::option::weighted(0.3, good_override(*kind, names[..i].to_vec())))
                .collect();
            let environment = (
                subsequence(reachable.clone(), 1..=reachable.len()),
                overrides,
            )
                .prop_map({
                    let names = names.clone();
                    move |(hosts, overrides)| {
                        let mut table = Table::new();
                        table.insert("hosts".to_owned(), Value::Array(hosts.into_iter().map(Value::String).collect()));
                        let services: Table = names
                            .iter()
                            .cloned()
                            .zip(overrides)
                            .filter_map(|(name, o)| Some((name, o?)))
                            .collect();
                        if !services.is_empty() {
                            table.insert("services".to_owned(), Value::Table(services));
                        }
                        Value::Table(table)
                    }
                })
                .boxed();
            let environment_tables: Vec<_> = environments.iter().map(|_| environment.clone()).collect();
            let environments: Vec<String> = environments.into_iter().map(str::to_owned).collect();
            (services, host_tables, environment_tables).prop_map(move |(services, host_tables, environment_tables)| {
                let mut root = Table::new();
                root.insert(
                    "project".to_owned(),
                    Value::Table([("name".to_owned(), Value::String("shop".to_owned()))].into_iter().collect()),
                );
                for (key, names, tables) in [
                    ("services", &names, services),
                    ("hosts", &hosts, host_tables),
                    ("environments", &environments, environment_tables),
                ] {
                    if !names.is_empty() {
                        root.insert(key.to_owned(), Value::Table(names.iter().cloned().zip(tables).collect()));
                    }
                }
                root
            })
        })
}

/// Every path to a value in `table`, for picking one to break.
fn paths(value: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match value {
        Value::Table(table) => {
            for (key, child) in table {
                prefix.push(PathStep::Key(key.clone()));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(PathStep::Index(i));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    Index(usize),
}

/// Replaces the value at a chosen path with `with`, or removes it.
fn break_one(table: &Table, at: Index, with: Option<Value>) -> Table {
    let mut root = Value::Table(table.clone());
    let mut all = Vec::new();
    paths(&root, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return table.clone();
    }
    let path = &all[at.index(all.len())];
    let Some((last, parents)) = path.split_last() else {
        return table.clone();
    };
    let mut node = &mut root;
    for step in parents {
        node = match (step, node) {
            (PathStep::Key(k), Value::Table(t)) => t.get_mut(k).expect("a path from `paths`"),
            (PathStep::Index(i), Value::Array(a)) => &mut a[*i],
            _ => unreachable!("paths follow the value"),
        };
    }
    match (last, node, with) {
        (PathStep::Key(k), Value::Table(t), Some(v)) => {
            t.insert(k.clone(), v);
        }
        (PathStep::Key(k), Value::Table(t), None) => {
            t.remove(k);
        }
        (PathStep::Index(i), Value::Array(a), Some(v)) => a[*i] = v,
        (PathStep::Index(i), Value::Array(a), None) => {
            a.remove(*i);
        }
        _ => unreachable!("paths follow the value"),
    }
    match root {
        Value::Table(table) => table,
        _ => unreachable!("the root stays a table"),
    }
}

/// TOML text for a table, in either of the `toml` crate's layouts.
fn render(table: &Table, pretty: bool) -> Result<String, TestCaseError> {
    let text = if pretty {
        toml::to_string_pretty(table)
    } else {
        toml::to_string(table)
    };
    text.map_err(|e| TestCaseError::reject(format!("the toml crate cannot render this table: {e}")))
}

/// Damage to apply to well-formed text: each edit inserts a snippet at a
/// character boundary, or cuts the text there.
fn edits() -> impl Strategy<Value = Vec<(Index, Option<&'static str>)>> {
    let snippet = prop::option::weighted(
        0.8,
        prop::sample::select(vec![
            "\"", "'", "[", "]", "[[", "=", "\n", "${", "$$", "99999999999999999999", "é", "#", "'''", "\\u", "{", "}",
            ",", "\r", "\t", "\0", ".", "x = 1\n", "[services.web]\n",
        ]),
    );
    prop::collection::vec((any::<Index>(), snippet), 1..4)
}

fn damage(text: &str, edits: &[(Index, Option<&str>)]) -> String {
    let mut text = text.to_owned();
    for (at, snippet) in edits {
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        let at = boundaries[at.index(boundaries.len())];
        match snippet {
            Some(snippet) => text.insert_str(at, snippet),
            None => text.truncate(at),
        }
    }
    text
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn toml_like_text_never_panics(text in "[\\[\\]{}=\"'.,#\n a-z0-9$_-]{0,200}") {
        check(&text)?;
    }

    #[test]
    fn arbitrary_toml_never_panics(table in any_table(), pretty in any::<bool>()) {
        check(&render(&table, pretty)?)?;
    }

    #[test]
    fn gantry_shaped_toml_never_panics(table in gantry_document(), pretty in any::<bool>()) {
        check(&render(&table, pretty)?)?;
    }

    #[test]
    fn valid_gantry_toml_is_accepted_and_resolves(table in valid_document(), pretty in any::<bool>()) {
        let text = render(&table, pretty)?;
        prop_assert!(parse("gantry.toml", &text, &vars).is_ok(), "rejected:\n{text}\n{:#?}", parse("gantry.toml", &text, &vars).err());
        check(&text)?;
    }

    #[test]
    fn valid_gantry_toml_with_one_value_broken_never_panics(
        table in valid_document(),
        at in any::<Index>(),
        with in prop::option::weighted(0.8, any_value()),
        pretty in any::<bool>(),
    ) {
        check(&render(&break_one(&table, at, with), pretty)?)?;
    }

    #[test]
    fn damaged_gantry_toml_never_panics(
        table in prop_oneof![gantry_document(), valid_document()],
        pretty in any::<bool>(),
        edits in edits(),
    ) {
        check(&damage(&render(&table, pretty)?, &edits))?;
    }
}
