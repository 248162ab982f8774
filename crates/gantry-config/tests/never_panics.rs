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
static OKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static ERRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
fn check(text: &str) -> Result<(), TestCaseError> {
    match parse("gantry.toml", text, &vars) {
        Ok(file) => {
            OKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let config = Config {
                path: "gantry.toml".into(),
                file,
            };
            for name in config.environment_names() {
                match config.environment(&name) {
                    Ok(env) => {
                        let n = env.deploy_order().len();
                        prop_assert_eq!(n, env.services.len(), "deploy order drops services in {}:\n{}", name, text);
                    }
                    Err(error) => prop_assert!(false, "environment `{name}` does not resolve: {error}"),
                }
            }
        }
        Err(Error::Invalid(diagnostics)) => {
            ERRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            prop_assert!(!diagnostics.items.is_empty(), "no diagnostics for:\n{}", text);
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

/// TOML text for a table, in either of the `toml` crate's layouts.
fn render(table: &Table, pretty: bool) -> Option<String> {
    if pretty {
        toml::to_string_pretty(table).ok()
    } else {
        toml::to_string(table).ok()
    }
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
        let text = render(&table, pretty);
        prop_assume!(text.is_some(), "the toml crate cannot render this table");
        check(&text.unwrap_or_default())?;
    }

    #[test]
    fn gantry_shaped_toml_never_panics(table in gantry_document(), pretty in any::<bool>()) {
        let text = render(&table, pretty);
        prop_assume!(text.is_some(), "the toml crate cannot render this table");
        check(&text.unwrap_or_default())?;
        eprintln!("ok={} err={}", OKS.load(std::sync::atomic::Ordering::Relaxed), ERRS.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[test]
    fn damaged_gantry_toml_never_panics(
        table in gantry_document(),
        pretty in any::<bool>(),
        edits in edits(),
    ) {
        let text = render(&table, pretty);
        prop_assume!(text.is_some(), "the toml crate cannot render this table");
        check(&damage(&text.unwrap_or_default(), &edits))?;
    }
}
