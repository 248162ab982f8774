//! Whatever text it is given, the loader answers: a file, or diagnostics that
//! point inside the text. It never panics, and a file it accepts resolves in
//! every environment.
//!
//! The inputs: arbitrary bytes; arbitrary TOML documents; documents shaped
//! like gantry.toml (the real keys with values of the right or the wrong type,
//! references between generated names); documents built to pass every check,
//! whole or with one value broken. All are rendered with the `toml` crate and
//! some are damaged afterwards, so the parser has to recover.
//!
//! `PROPTEST_CASES=20000 cargo test -p gantry-config --test never_panics` looks harder.

use gantry_config::{Config, Error, parse};
use proptest::prelude::*;
use proptest::sample::{Index, select, subsequence};
use proptest::test_runner::TestCaseError;
use toml::{Table, Value};

/// Enough cases to reach the odd corners, few enough to run in seconds in debug,
/// unless PROPTEST_CASES asks for more. Failures are not persisted to a file: a
/// failing input found here becomes a named regression test instead.
fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            512
        },
        failure_persistence: None,
        ..default
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

/// The property: a rejected file gets diagnostics that point inside the text;
/// an accepted one resolves in every environment, and deploys every service.
fn loader_behaves(text: &str) -> Result<(), TestCaseError> {
    match parse("gantry.toml", text, &vars) {
        Ok(file) => {
            let config = Config {
                path: "gantry.toml".into(),
                file,
            };
            for name in config.environment_names() {
                match config.environment(&name) {
                    Ok(env) => {
                        let placed = env.deploy_order().len();
                        prop_assert_eq!(
                            placed,
                            env.services.len(),
                            "deploy order of `{}` leaves services out",
                            name
                        );
                    }
                    Err(error) => {
                        prop_assert!(false, "environment `{name}` does not resolve: {error}")
                    }
                }
            }
        }
        Err(Error::Invalid(diagnostics)) => {
            prop_assert!(!diagnostics.items.is_empty(), "rejected with no diagnostic");
            for d in &diagnostics.items {
                prop_assert!(
                    d.line >= 1 && d.column >= 1,
                    "line/column not 1-based: {d:?}"
                );
                prop_assert!(
                    d.span.start <= d.span.end && d.span.end <= text.len(),
                    "span outside the text ({} bytes): {d:?}",
                    text.len()
                );
                prop_assert!(
                    text.is_char_boundary(d.span.start) && text.is_char_boundary(d.span.end),
                    "span splits a character: {d:?}"
                );
                prop_assert!(!d.message.trim().is_empty(), "empty message: {d:?}");
            }
        }
        Err(other) => prop_assert!(false, "parse returned a non-diagnostic error: {other}"),
    }
    Ok(())
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

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        loader_behaves(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn toml_like_text_never_panics(text in "[\\[\\]{}=\"'.,#\n a-z0-9$_-]{0,200}") {
        loader_behaves(&text)?;
    }

    #[test]
    fn arbitrary_toml_never_panics(table in any_table(), pretty in any::<bool>()) {
        loader_behaves(&render(&table, pretty)?)?;
    }

    #[test]
    fn gantry_shaped_toml_never_panics(table in gantry_document(), pretty in any::<bool>()) {
        loader_behaves(&render(&table, pretty)?)?;
    }

    #[test]
    fn valid_gantry_toml_is_accepted_and_resolves(table in valid_document(), pretty in any::<bool>()) {
        let text = render(&table, pretty)?;
        if let Err(error) = parse("gantry.toml", &text, &vars) {
            prop_assert!(false, "rejected:\n{text}\n{error:#?}");
        }
        loader_behaves(&text)?;
    }

    #[test]
    fn valid_gantry_toml_with_one_value_broken_never_panics(
        table in valid_document(),
        at in any::<Index>(),
        with in prop::option::weighted(0.8, any_value()),
        pretty in any::<bool>(),
    ) {
        loader_behaves(&render(&break_one(table, at, with), pretty)?)?;
    }

    #[test]
    fn damaged_gantry_toml_never_panics(
        table in prop_oneof![gantry_document(), valid_document()],
        pretty in any::<bool>(),
        edits in edits(),
    ) {
        loader_behaves(&damage(render(&table, pretty)?, &edits))?;
    }
}

// ---------------------------------------------------------------------------
// Arbitrary TOML values

/// The words of `list`, to choose from: a compact way to write many choices.
fn words(list: &'static str) -> Vec<&'static str> {
    list.split_whitespace().collect()
}

/// Strings that exercise interpolation, escaping and multi-byte characters.
fn any_string() -> impl Strategy<Value = String> {
    let special = words(
        "${ ${} ${A} ${ABC:-x} ${UNSET} ${UNSET:-} ${1BAD} $$ $${KEEP} $ x$ $$$ ${A}${B}${ \
         é${UNSET}ü 日本語${HOME} 🚀 a\u{0}b quote\"and'apostrophe back\\slash ''' \"\"\"",
    );
    let spaced = ["", "${a b}", "line\nbreak", "tab\there", "\r\n"];
    prop_oneof![
        3 => "[a-z0-9./:@ -]{0,12}",
        2 => "[a-zA-Z_$\\{\\}:\\-]{0,12}",
        1 => prop::collection::vec(any::<char>(), 0..10).prop_map(String::from_iter),
        1 => select([special, spaced.to_vec()].concat()).prop_map(str::to_owned),
    ]
}

fn any_key() -> impl Strategy<Value = String> {
    let keys = words(
        "project name services environments hosts run image static port health routes \
         replicas env secrets depends_on resources web api db local prod ssh provider 0 1",
    );
    prop_oneof![
        3 => select(keys).prop_map(str::to_owned),
        1 => any_string(),
    ]
}

fn any_value() -> impl Strategy<Value = Value> {
    let datetimes =
        words("1979-05-27T07:32:00Z 1979-05-27T00:32:00.999999-07:00 1979-05-27 07:32:00");
    let integers = vec![0, 1, -1, 80, 65535, 65536, 1 << 32, i64::MAX, i64::MIN];
    let floats = vec![
        0.0,
        -0.0,
        0.005,
        0.5,
        2.0,
        1024.0,
        1e300,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let leaf = prop_oneof![
        any_string().prop_map(Value::String),
        prop_oneof![select(integers), any::<i64>()].prop_map(Value::Integer),
        prop_oneof![select(floats), any::<f64>()].prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
        select(datetimes).prop_map(|text| Value::Datetime(text.parse().expect("a TOML datetime"))),
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
    prop::collection::vec((any_key(), any_value()), 0..8)
        .prop_map(|entries| entries.into_iter().collect())
}

// ---------------------------------------------------------------------------
// Documents shaped like gantry.toml, right and wrong mixed

/// A key of a table, present or not.
type Field = BoxedStrategy<Option<(String, Value)>>;

/// A key present with probability `p`, usually with the right kind of value,
/// sometimes with any value at all.
fn field(key: &'static str, p: f64, right: impl Strategy<Value = Value> + 'static) -> Field {
    field_ok(key, p, prop_oneof![5 => right, 1 => any_value()])
}

/// A key present with probability `p` (0 and 1 allowed), always with a value from `value`.
fn field_ok(key: &'static str, p: f64, value: impl Strategy<Value = Value> + 'static) -> Field {
    let entry = value.prop_map(move |v| (key.to_owned(), v));
    match p {
        p if p >= 1.0 => entry.prop_map(Some).boxed(),
        p if p <= 0.0 => Just(None).boxed(),
        p => prop::option::weighted(p, entry).boxed(),
    }
}

fn table_of(fields: Vec<Field>) -> impl Strategy<Value = Value> {
    fields.prop_map(|fields| Value::Table(fields.into_iter().flatten().collect()))
}

/// One of `choices`, or a string matching `pattern`, or any string.
fn string_from(
    choices: Vec<&'static str>,
    pattern: &'static str,
) -> impl Strategy<Value = Value> + use<> {
    prop_oneof![
        3 => select(choices).prop_map(str::to_owned),
        1 => pattern,
        1 => any_string(),
    ]
    .prop_map(Value::String)
}

fn integer_from(choices: &[i64]) -> impl Strategy<Value = Value> + use<> {
    prop_oneof![3 => select(choices.to_vec()), 1 => any::<i64>()].prop_map(Value::Integer)
}

fn array_of(item: impl Strategy<Value = Value>, max: usize) -> impl Strategy<Value = Value> {
    prop::collection::vec(item, 0..=max).prop_map(Value::Array)
}

fn strings(items: Vec<String>) -> Value {
    Value::Array(items.into_iter().map(Value::String).collect())
}

fn name() -> impl Strategy<Value = String> {
    let names = [
        words("web api db worker cache local a Web 2x web_api wéb -x"),
        vec![""],
    ]
    .concat();
    prop_oneof![
        4 => select(names).prop_map(str::to_owned),
        1 => "[a-z][a-z0-9-]{0,8}",
    ]
}

fn duration() -> impl Strategy<Value = Value> {
    let choices = words("1s 500ms 0s 2m 1h 1d 5 1.5s 99999999999999999999s 999999999999999d fast");
    string_from(
        [choices, vec!["", " 3 s "]].concat(),
        "[0-9]{1,4}(ms|s|m|h|d|x)?",
    )
}

fn size() -> impl Strategy<Value = Value> {
    let choices = words("256M 1G 1GiB 512k 1000 0 12Q lots 99999999999999999T 1iB");
    string_from(choices, "[0-9]{1,5}[KMGTkmgt]?(i?B)?")
}

fn command() -> impl Strategy<Value = Value> {
    let choices = words("./web bin/${A} ${UNSET} $${KEEP} ${PORT:-8080} ${");
    string_from(choices, "[a-z/.]{1,10}( -[a-z]{1,3})?")
}

fn route() -> impl Strategy<Value = Value> {
    let choices = words(
        "example.com Example.com/ example.com/api example.com/api/ *.example.com localhost \
         /api a..b -bad.com é.com example.com/a?b *.",
    );
    string_from(
        choices,
        "(\\*\\.)?[a-z]{1,4}(\\.[a-z]{1,3}){0,2}(/[a-z]{0,3}){0,2}",
    )
}

fn env_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select([words("A DATABASE_URL PORT _x1 SECRET 1X a-b"), vec![""]].concat()).prop_map(str::to_owned),
        1 => "[A-Z_][A-Z0-9_]{0,6}",
        1 => any_string(),
    ]
}

fn health() -> impl Strategy<Value = Value> {
    table_of(vec![
        field(
            "path",
            0.5,
            string_from(words("/ /healthz healthz /${A}"), "/[a-z ]{0,6}"),
        ),
        field("tcp", 0.2, any::<bool>().prop_map(Value::Boolean)),
        field("command", 0.2, command()),
        field("interval", 0.5, duration()),
        field("timeout", 0.5, duration()),
        field("retries", 0.3, integer_from(&[0, 1, 3, -1, 1 << 32])),
        field("start_period", 0.3, duration()),
        field("helth", 0.05, any_value()),
    ])
}

fn resources() -> impl Strategy<Value = Value> {
    let cpu = prop_oneof![
        select(vec![0.0, 0.005, 0.01, 0.5, 2.0, 1024.0, 1024.5, f64::NAN]).prop_map(Value::Float),
        integer_from(&[0, 1, 4, 2000]),
    ];
    table_of(vec![
        field("memory", 0.6, size()),
        field("cpu", 0.6, cpu),
        field("pids", 0.4, integer_from(&[0, 1, 100, -5, 1 << 32])),
    ])
}

/// A service table; `names` are the services of the document, for `depends_on`.
/// Overrides in an environment use the same shape with fewer keys (a lower `p`).
fn service(names: Vec<String>, p: f64) -> impl Strategy<Value = Value> {
    let names = if names.is_empty() {
        vec!["web".to_owned()]
    } else {
        names
    };
    let dependency = prop_oneof![4 => select(names), 1 => name()].prop_map(Value::String);
    let port = prop_oneof![
        string_from(words("http admin HTTP 8080"), "[a-z]{0,5}"),
        integer_from(&[0, 1, 80, 8080, 65535, 65536, -1]),
    ];
    let env = prop::collection::vec((env_name(), any_string().prop_map(Value::String)), 0..4)
        .prop_map(|entries| Value::Table(entries.into_iter().collect()));
    let volumes = words("pgdata:/var/lib/postgresql/data /srv:/data:ro pgdata a:/b:rx ./x:/y :/x");
    let schedule = [
        "0 3 * * *",
        "*/15 0-6 1,15 * 1-5",
        "60 3 * * *",
        "*/0 * * * *",
        "0 3 * *",
    ];
    table_of(vec![
        field("run", p, command()),
        field(
            "image",
            p / 2.0,
            string_from(
                words("postgres:16 redis ghcr.io/x/y:${A}"),
                "[a-z]{1,8}(:[0-9]{1,2})?",
            ),
        ),
        field(
            "static",
            p / 4.0,
            string_from(words("public dist/ ${UNSET} /srv ../up"), "[a-z/.]{1,8}"),
        ),
        field("spa", p / 4.0, any::<bool>().prop_map(Value::Boolean)),
        field("build", p / 3.0, command()),
        field(
            "artifact",
            p / 4.0,
            string_from(words("target/release/web ."), "[a-z/]{1,8}"),
        ),
        field("port", p, port),
        field("health", p, health()),
        field("routes", p, array_of(route(), 3)),
        field("replicas", p, integer_from(&[0, 1, 2, 3, -1, 1 << 32])),
        field("env", p, env),
        field(
            "secrets",
            p,
            array_of(env_name().prop_map(Value::String), 3),
        ),
        field("resources", p / 2.0, resources()),
        field("depends_on", p, array_of(dependency, 3)),
        field(
            "migrate",
            p / 4.0,
            table_of(vec![
                field("pre", 0.7, command()),
                field("post", 0.5, command()),
            ]),
        ),
        field(
            "volumes",
            p / 3.0,
            array_of(string_from(volumes, "[a-z]{1,5}:/[a-z]{1,5}"), 2),
        ),
        field(
            "backup",
            p / 4.0,
            table_of(vec![
                field(
                    "schedule",
                    0.8,
                    string_from(schedule.to_vec(), "[0-9*]{1,2} [0-9*]{1,2} \\* \\* \\*"),
                ),
                field("keep", 0.5, integer_from(&[0, 1, 7, -1])),
            ]),
        ),
        field("stop_timeout", p / 3.0, duration()),
        field(
            "restart",
            p / 3.0,
            string_from(
                words("always on-failure never Always sometimes"),
                "[a-z-]{1,10}",
            ),
        ),
        field("helth", p / 10.0, any_value()),
    ])
}

fn host() -> impl Strategy<Value = Value> {
    let ssh = words(
        "deploy@203.0.113.10 deploy@203.0.113.10:2222 web-1 root@[2001:db8::1]:22 @host deploy@host:ssh a@b:0",
    );
    table_of(vec![
        field(
            "ssh",
            0.7,
            string_from(ssh, "[a-z]{1,5}@[a-z0-9.]{1,9}(:[0-9]{1,5})?"),
        ),
        field(
            "provider",
            0.3,
            string_from(
                words("local hetzner digitalocean aws Hetzner"),
                "[a-z]{1,8}",
            ),
        ),
        field("user", 0.05, any_value()),
    ])
}

fn environment(services: Vec<String>, hosts: Vec<String>) -> impl Strategy<Value = Value> {
    let host_ref =
        prop_oneof![3 => select([hosts, vec!["local".to_owned()]].concat()), 1 => name()];
    // Overrides, mostly of services that exist.
    let names = [services.clone(), vec!["ghost".to_owned()]].concat();
    let overrides =
        subsequence(names, 0..=services.len().min(3) + 1).prop_flat_map(move |chosen| {
            let tables: Vec<_> = chosen
                .iter()
                .map(|_| service(services.clone(), 0.15))
                .collect();
            tables
                .prop_map(move |tables| Value::Table(chosen.iter().cloned().zip(tables).collect()))
        });
    table_of(vec![
        field("hosts", 0.95, array_of(host_ref.prop_map(Value::String), 3)),
        field("services", 0.7, overrides),
    ])
}

fn unique(names: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    names
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .collect()
}

/// `[key.NAME]` tables for each of `names`, or nothing when there are none.
fn named(key: &str, names: &[String], tables: Vec<Value>) -> Option<(String, Value)> {
    (!names.is_empty()).then(|| {
        (
            key.to_owned(),
            Value::Table(names.iter().cloned().zip(tables).collect()),
        )
    })
}

fn gantry_document() -> impl Strategy<Value = Table> {
    let names = || prop::collection::vec(name(), 0..6).prop_map(unique);
    (names(), names(), names()).prop_flat_map(|(services, hosts, environments)| {
        let project = table_of(vec![field("name", 0.95, name().prop_map(Value::String))]);
        let service_tables: Vec<_> = services
            .iter()
            .map(|_| service(services.clone(), 0.6))
            .collect();
        let host_tables: Vec<_> = hosts.iter().map(|_| host()).collect();
        let environment_tables: Vec<_> = environments
            .iter()
            .map(|_| environment(services.clone(), hosts.clone()))
            .collect();
        (
            field("project", 0.95, project),
            service_tables,
            host_tables,
            environment_tables,
            prop::option::weighted(0.05, (any_key(), any_value())),
        )
            .prop_map(
                move |(project, service_tables, host_tables, environment_tables, extra)| {
                    [
                        project,
                        named("services", &services, service_tables),
                        named("hosts", &hosts, host_tables),
                        named("environments", &environments, environment_tables),
                        extra,
                    ]
                    .into_iter()
                    .flatten()
                    .collect()
                },
            )
    })
}

// ---------------------------------------------------------------------------
// Documents built to pass every check, to reach the resolver

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Run,
    Image,
    Static,
}

fn one_of(choices: Vec<&'static str>) -> impl Strategy<Value = Value> + use<> {
    select(choices).prop_map(|s| Value::String(s.to_owned()))
}

fn good_command() -> impl Strategy<Value = Value> {
    one_of(vec![
        "./web",
        "api --port $PORT",
        "bin/${A}",
        "echo $${KEEP}",
        "${PORT:-8080}",
        "run ${HOME}",
    ])
}

fn good_duration() -> impl Strategy<Value = Value> {
    one_of(vec!["500ms", "1s", "2s", "30s", "2m", "0s", " 3 s"])
}

/// Keys of `env` and of `secrets` come from different pools: a name in both is an error.
fn good_env() -> impl Strategy<Value = Value> {
    let values = vec![
        "info",
        "",
        "${A}",
        "${UNSET:-fallback}",
        "$${KEEP}",
        "$PORT",
        "日本",
        "a\"b\\c\n",
    ];
    prop::collection::btree_map(
        select(words("LOG_LEVEL RUST_LOG ENV_A _X1 URL")),
        one_of(values),
        0..4,
    )
    .prop_map(|env| Value::Table(env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn good_depends_on(earlier: Vec<String>) -> impl Strategy<Value = Value> {
    let most = earlier.len().min(2);
    subsequence(earlier, 0..=most).prop_map(strings)
}

/// A service that passes every check; it depends only on `earlier` ones, so there is no cycle.
fn good_service(name: String, kind: Kind, earlier: Vec<String>) -> impl Strategy<Value = Value> {
    let served = kind != Kind::Static;
    let image = kind == Kind::Image;
    let only = |set: bool, p: f64| if set { p } else { 0.0 };
    let (how, value) = match kind {
        Kind::Run => ("run", good_command().boxed()),
        Kind::Image => (
            "image",
            one_of(vec!["postgres:16", "redis:7", "ghcr.io/acme/web:${A}"]).boxed(),
        ),
        Kind::Static => ("static", one_of(vec!["public", "dist/"]).boxed()),
    };
    // A fixed port only for containers, so that replicas never share one.
    let port = match kind {
        Kind::Image => prop_oneof![
            one_of(vec!["http", "pg"]),
            (1..=65535i64).prop_map(Value::Integer)
        ]
        .boxed(),
        _ => one_of(vec!["http", "admin"]).boxed(),
    };
    let check = if served {
        prop_oneof![
            one_of(vec!["/", "/healthz"]).prop_map(|p| ("path", p)),
            Just(("tcp", Value::Boolean(true))),
            good_command().prop_map(|c| ("command", c)),
        ]
        .boxed()
    } else {
        good_command().prop_map(|c| ("command", c)).boxed()
    };
    let timings = table_of(vec![
        field_ok("interval", 0.5, good_duration()),
        field_ok("timeout", 0.5, good_duration()),
        field_ok("retries", 0.3, (1..10i64).prop_map(Value::Integer)),
        field_ok("start_period", 0.3, good_duration()),
        field_ok("tcp", 0.2, Just(Value::Boolean(false))),
    ]);
    let health = (check, timings).prop_map(|((key, check), mut health)| {
        if let Value::Table(table) = &mut health {
            table.insert(key.to_owned(), check);
        }
        health
    });
    let routes = vec![
        format!("{name}.example.com"),
        format!("Example.com/{name}/"),
        format!("*.{name}.example.org"),
    ];
    let cpu = prop_oneof![
        (0.01..=1024.0f64).prop_map(Value::Float),
        Just(Value::Integer(2))
    ];
    let resources = table_of(vec![
        field_ok("memory", 0.7, one_of(words("256M 1G 1GiB 512k 1000"))),
        field_ok("cpu", 0.5, cpu),
        field_ok("pids", 0.3, (1..=100_000i64).prop_map(Value::Integer)),
    ]);
    // `database` names an env variable, which the service gets below.
    let migrate = table_of(vec![
        field_ok("sql", 1.0, one_of(vec!["migrations", "db/migrations"])),
        field_ok("database", 1.0, one_of(vec!["MIGRATIONS_DB"])),
    ]);
    let volumes = strings(vec![format!("{name}-data:/data")]);
    // `backup` is refused until backups are taken: volumes alone.
    let storage = Just(volumes).prop_map(|volumes| {
        let mut table = Table::new();
        table.insert("volumes".to_owned(), volumes);
        Value::Table(table)
    });
    let service = table_of(vec![
        field_ok(how, 1.0, value),
        field_ok("build", 0.2, good_command()),
        field_ok("port", only(served, 1.0), port),
        field_ok("health", only(served, 0.5), health),
        field_ok(
            "routes",
            only(served, 0.5),
            subsequence(routes, 1..=2).prop_map(strings),
        ),
        field_ok(
            "replicas",
            only(served, 0.4),
            (1..=5i64).prop_map(Value::Integer),
        ),
        field_ok(
            "spa",
            only(!served, 0.5),
            any::<bool>().prop_map(Value::Boolean),
        ),
        field_ok("env", only(served, 0.5), good_env()),
        field_ok(
            "secrets",
            only(served, 0.4),
            array_of(one_of(words("DATABASE_URL API_KEY TOKEN")), 2),
        ),
        field_ok("resources", only(served, 0.4), resources),
        field_ok("depends_on", 0.6, good_depends_on(earlier)),
        field_ok("migrate", only(served, 0.2), migrate),
        field_ok("stop_timeout", only(served, 0.2), good_duration()),
        field_ok(
            "restart",
            only(served, 0.2),
            one_of(words("always on-failure never")),
        ),
        field_ok("storage", only(image, 0.6), storage),
    ]);
    service.prop_map(|mut service| {
        if let Value::Table(table) = &mut service
            && let Some(Value::Table(storage)) = table.remove("storage")
        {
            table.extend(storage);
            // Replicas (here or in an override) may share a volume only
            // when the service is replaced start-first, as the user says.
            table.insert(
                "deploy_strategy".to_owned(),
                Value::String("start-first".to_owned()),
            );
        }
        if let Value::Table(table) = &mut service
            && table.contains_key("migrate")
        {
            let env = table
                .entry("env")
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(env) = env {
                env.insert(
                    "MIGRATIONS_DB".to_owned(),
                    Value::String("sqlite:///srv/app.db".to_owned()),
                );
            }
        }
        service
    })
}

/// An environment's override of a service: only keys that cannot break it.
fn good_override(kind: Kind, earlier: Vec<String>) -> impl Strategy<Value = Value> {
    let served = if kind == Kind::Static { 0.0 } else { 1.0 };
    let resources = table_of(vec![field_ok("memory", 1.0, one_of(vec!["2G", "64M"]))]);
    table_of(vec![
        field_ok(
            "replicas",
            served * 0.5,
            (1..=9i64).prop_map(Value::Integer),
        ),
        field_ok("env", served * 0.5, good_env()),
        field_ok("depends_on", 0.2, good_depends_on(earlier)),
        field_ok("stop_timeout", served * 0.2, good_duration()),
        field_ok("resources", served * 0.3, resources),
    ])
}

fn good_host() -> impl Strategy<Value = Value> {
    let ssh = words("deploy@203.0.113.10 deploy@203.0.113.10:2222 web-1 root@[2001:db8::1]:22");
    prop_oneof![
        one_of(ssh).prop_map(|ssh| ("ssh", ssh)),
        one_of(words("local hetzner digitalocean")).prop_map(|provider| ("provider", provider)),
    ]
    .prop_map(|(key, value)| Value::Table([(key.to_owned(), value)].into_iter().collect()))
}

fn good_environment(
    names: Vec<String>,
    kinds: Vec<Kind>,
    hosts: Vec<String>,
) -> impl Strategy<Value = Value> {
    let reachable = unique([hosts, vec!["local".to_owned()]].concat());
    let count = reachable.len();
    let overrides: Vec<_> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| prop::option::weighted(0.3, good_override(*kind, names[..i].to_vec())))
        .collect();
    (subsequence(reachable, 1..=count), overrides).prop_map(move |(hosts, overrides)| {
        let services: Table = names
            .iter()
            .cloned()
            .zip(overrides)
            .filter_map(|(n, o)| Some((n, o?)))
            .collect();
        let mut table = Table::new();
        table.insert("hosts".to_owned(), strings(hosts));
        if !services.is_empty() {
            table.insert("services".to_owned(), Value::Table(services));
        }
        Value::Table(table)
    })
}

fn valid_document() -> impl Strategy<Value = Table> {
    let kind = prop_oneof![3 => Just(Kind::Run), 2 => Just(Kind::Image), 1 => Just(Kind::Static)];
    let owned = |names: Vec<&str>| names.into_iter().map(str::to_owned).collect::<Vec<_>>();
    (
        prop::collection::vec(kind, 0..8),
        subsequence(words("web-1 web-2 db-1 local"), 0..=3).prop_map(owned),
        subsequence(words("prod staging local dev"), 0..=3).prop_map(owned),
    )
        .prop_flat_map(|(kinds, hosts, environments)| {
            let names: Vec<String> = (0..kinds.len())
                .map(|i| format!("{}-{i}", ["web", "api", "db"][i % 3]))
                .collect();
            let service_tables: Vec<_> = (0..kinds.len())
                .map(|i| good_service(names[i].clone(), kinds[i], names[..i].to_vec()))
                .collect();
            let host_tables: Vec<_> = hosts.iter().map(|_| good_host()).collect();
            let environment_tables: Vec<_> = environments
                .iter()
                .map(|_| good_environment(names.clone(), kinds.clone(), hosts.clone()))
                .collect();
            (service_tables, host_tables, environment_tables).prop_map(
                move |(service_tables, host_tables, environment_tables)| {
                    let project = Value::Table(
                        [("name".to_owned(), Value::String("shop".to_owned()))]
                            .into_iter()
                            .collect(),
                    );
                    [
                        Some(("project".to_owned(), project)),
                        named("services", &names, service_tables),
                        named("hosts", &hosts, host_tables),
                        named("environments", &environments, environment_tables),
                    ]
                    .into_iter()
                    .flatten()
                    .collect()
                },
            )
        })
}

// ---------------------------------------------------------------------------
// Breaking and damaging documents

/// How many values `value` holds, at any depth.
fn count(value: &Value) -> usize {
    match value {
        Value::Table(table) => table.values().map(|v| 1 + count(v)).sum(),
        Value::Array(items) => items.iter().map(|v| 1 + count(v)).sum(),
        _ => 0,
    }
}

/// Replaces one value, chosen by `at` among all of them at any depth, with
/// `with`, or removes it when `with` is `None`.
fn break_one(table: Table, at: Index, with: Option<Value>) -> Table {
    let mut root = Value::Table(table);
    let total = count(&root);
    if total > 0 {
        let mut skip = at.index(total);
        replace_nth(&mut root, &mut skip, &mut Some(with));
    }
    match root {
        Value::Table(table) => table,
        _ => unreachable!("the root stays a table"),
    }
}

/// Walks `node` depth first, counting `skip` down; the value it reaches at zero
/// is replaced by what `with` holds. Returns true once that is done.
fn replace_nth(node: &mut Value, skip: &mut usize, with: &mut Option<Option<Value>>) -> bool {
    match node {
        Value::Table(table) => {
            let keys: Vec<String> = table.keys().cloned().collect();
            for key in keys {
                if *skip == 0 {
                    match with.take().flatten() {
                        Some(value) => table.insert(key, value),
                        None => table.remove(&key),
                    };
                    return true;
                }
                *skip -= 1;
                if table
                    .get_mut(&key)
                    .is_some_and(|child| replace_nth(child, skip, with))
                {
                    return true;
                }
            }
            false
        }
        Value::Array(items) => {
            for i in 0..items.len() {
                if *skip == 0 {
                    match with.take().flatten() {
                        Some(value) => items[i] = value,
                        None => drop(items.remove(i)),
                    }
                    return true;
                }
                *skip -= 1;
                if replace_nth(&mut items[i], skip, with) {
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

/// Damage to apply to well-formed text: each edit inserts a snippet at a
/// character boundary, or cuts the text there.
fn edits() -> impl Strategy<Value = Vec<(Index, Option<&'static str>)>> {
    let snippets = [
        words("\" ' [ ] [[ = ${ $$ 99999999999999999999 1e999 é # ''' \\u { } , . \0"),
        vec![
            "\n",
            "\r",
            "\t",
            "x = 1\n",
            "[services.web]\n",
            "[services.web]\nport = 0.0\n",
        ],
    ]
    .concat();
    prop::collection::vec(
        (
            any::<Index>(),
            prop::option::weighted(0.8, select(snippets)),
        ),
        1..4,
    )
}

fn damage(mut text: String, edits: &[(Index, Option<&str>)]) -> String {
    for (at, snippet) in edits {
        let boundaries: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        let at = boundaries[at.index(boundaries.len())];
        match snippet {
            Some(snippet) => text.insert_str(at, snippet),
            None => text.truncate(at),
        }
    }
    text
}

// ---------------------------------------------------------------------------
// Failures these properties found, kept as named regressions.

fn codes(text: &str) -> Vec<&'static str> {
    match parse("gantry.toml", text, &vars) {
        Ok(_) => Vec::new(),
        Err(Error::Invalid(d)) => d.items.iter().map(|d| d.code).collect(),
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// These passed the schema but not deserialization: rejected with no
/// diagnostic, or (`port = 0`) accepted.
#[test]
fn numbers_the_model_cannot_hold_are_reported() {
    for line in [
        "replicas = 4294967296",
        "replicas = 2.0",
        "resources.pids = 3.0",
        "health = { command = \"true\", retries = 4294967296 }",
        "port = 65536",
        "port = -1",
        "port = 8080.0",
        "port = 0",
    ] {
        let text = format!("[project]\nname = \"shop\"\n[services.web]\nrun = \"./web\"\n{line}\n");
        assert!(!codes(&text).is_empty(), "`{line}` is not reported");
    }
}

/// This passed, and `deploy_order` for prod left both services out.
#[test]
fn a_dependency_cycle_made_by_an_override_is_rejected() {
    let text = "[project]\nname = \"shop\"\n\
        [services.a]\nrun = \"./a\"\n\
        [services.b]\nrun = \"./b\"\ndepends_on = [\"a\"]\n\
        [environments.prod]\nhosts = [\"local\"]\nservices.a.depends_on = [\"b\"]\n";
    assert!(codes(text).contains(&"config.cycle"), "{:?}", codes(text));
}
