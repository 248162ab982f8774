//! Loading gantry.toml through the public API: `parse`, then an environment
//! as it will run, or every error at once.

use gantry_config::{Config, Diagnostic, Error, LOCAL, model, parse, resolve};

fn no_vars(_: &str) -> Option<String> {
    None
}

/// A gantry.toml of project `shop`: its `[project]` table, then `rest`
/// (which starts with a line break).
fn shop(rest: &str) -> String {
    format!("\n[project]\nname = \"shop\"{rest}")
}

/// The configuration `text` holds, which must be valid.
fn config(text: &str) -> Config {
    let file = parse("gantry.toml", text, &no_vars).expect("valid");
    Config {
        path: "gantry.toml".into(),
        file,
    }
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse("gantry.toml", text, &no_vars) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(Error::Invalid(d)) => d.items,
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[test]
fn minimal_file_resolves_to_local() {
    let text = "[project]\nname = \"shop\"\n[services.web]\nrun = \"./web\"\nport = \"http\"\n";
    let config = config(text);
    let env = config.environment(LOCAL).expect("local exists");
    assert_eq!(env.hosts.len(), 1);
    assert_eq!(env.hosts[0].reach, resolve::Reach::Local);
    let web = &env.services["web"];
    assert_eq!(web.replicas, 1);
    assert_eq!(web.stop_timeout.to_string(), "10s");
    assert!(matches!(
        config.environment("prod"),
        Err(Error::UnknownEnvironment { .. })
    ));
}

#[test]
fn overlays_merge_tables_and_replace_values() {
    let text = &shop(
        r#"
[services.web]
run = "./web"
port = "http"
env = { A = "1", B = "2" }
[environments.prod]
hosts = ["web-1"]
services.web.replicas = 3
services.web.env = { B = "20" }
[hosts.web-1]
ssh = "deploy@203.0.113.10"
"#,
    );
    let config = config(text);
    let prod = config.environment("prod").expect("prod");
    let web = &prod.services["web"];
    assert_eq!(web.replicas, 3);
    assert_eq!(web.env["A"], "1");
    assert_eq!(web.env["B"], "20");
    assert_eq!(prod.hosts[0].name, "web-1");
    let local = config.environment(LOCAL).expect("local");
    assert_eq!(
        local.services["web"].replicas, 1,
        "overrides stay in their environment"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = &shop(
        r#"
[services.web]
run = "./web"
helth = { path = "/" }
replicas = 0
depends_on = ["dbb"]
"#,
    );
    let found = errors(text);
    let codes: Vec<&str> = found.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        [
            "config.unknown_key",
            "config.invalid_value",
            "config.unknown_reference"
        ],
        "{found:#?}"
    );
    assert_eq!((found[0].line, found[0].column), (6, 1));
    assert_eq!(found[0].hint.as_deref(), Some("did you mean `health`?"));
}

#[test]
fn deploy_order_puts_dependencies_first() {
    let text = &shop(
        r#"
[services.web]
run = "./web"
depends_on = ["api"]
[services.api]
run = "./api"
depends_on = ["db"]
[services.db]
image = "postgres:16"
"#,
    );
    let env = config(text).environment(LOCAL).expect("local");
    let order: Vec<&str> = env.deploy_order().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["db", "api", "web"]);
}

#[test]
fn routes_may_not_take_automatic_names_of_a_service_or_another_project() {
    let text = &shop(
        r#"
[services.web]
run = "./web"
port = "http"
[services.api]
run = "./api"
port = "http"
routes = ["web.shop.localhost", "api.shop.localhost/v2", "web.blog.localhost", "admin.shop.localhost"]
[services.worker]
run = "./worker"
port = "http"
routes = ["api.shop.localhost"]
"#,
    );
    let found: Vec<(String, String)> = errors(text)
        .into_iter()
        .map(|d| (d.code.to_owned(), d.message))
        .collect();
    assert_eq!(
        found,
        [
            (
                "config.duplicate_route".to_owned(),
                "route `web.shop.localhost` of `api` is the automatic name of service `web`"
                    .to_owned()
            ),
            (
                "config.invalid_value".to_owned(),
                "route `web.blog.localhost` of `api` is under `blog.localhost`, which holds the automatic names of project `blog`".to_owned()
            ),
            (
                "config.duplicate_route".to_owned(),
                "route `api.shop.localhost` of `worker` is the automatic name of service `api`"
                    .to_owned()
            ),
        ],
        "a service's own name with a path, and other names under shop.localhost, are allowed"
    );
}

#[test]
fn a_secret_interpolated_into_run_is_refused_and_a_reference_is_not() {
    let text = &shop(
        r#"
[services.web]
run = "./web --password ${DB_PASS:-x}"
secrets = ["DB_PASS"]
[services.api]
run = "./api --password $DB_PASS"
secrets = ["DB_PASS"]
"#,
    );
    let found: Vec<String> = errors(text).into_iter().map(|d| d.message).collect();
    assert_eq!(
        found,
        [
            "`run` of `web` interpolates secret `DB_PASS`: its value would show in `ps` and the agent's store"
        ]
    );
}

#[test]
fn a_build_table_builds_the_image_with_defaults_and_a_string_stays_a_command() {
    let text = &shop(
        r#"
[services.web]
image = "shop-web"
build = { dockerfile = "web.Dockerfile", args = { VERSION = "3" } }
[services.api]
run = "target/release/api"
build = "cargo build --release"
"#,
    );
    let config = config(text);
    let env = config.environment(LOCAL).expect("local");
    let Some(resolve::Build::Image(web)) = &env.services["web"].build else {
        panic!("web builds an image: {:?}", env.services["web"].build);
    };
    assert_eq!(web.context, ".");
    assert_eq!(
        web.dockerfile_path(),
        std::path::Path::new("./web.Dockerfile")
    );
    assert_eq!(web.args["VERSION"], "3");
    assert_eq!(
        env.services["api"].build,
        Some(resolve::Build::Command("cargo build --release".to_owned()))
    );
}

#[test]
fn a_build_table_needs_an_image_and_paths_inside_the_project() {
    let text = &shop(
        r#"
[services.web]
run = "./web"
build = { context = "." }
[services.api]
image = "Shop/API"
build = { context = "../elsewhere", dockerfile = "/etc/Dockerfile", args = { "1X" = "a" } }
[services.db]
image = "postgres"
build = { contxt = "db" }
"#,
    );
    let found: Vec<(String, String)> = errors(text)
        .into_iter()
        .map(|d| (d.path.to_string(), d.message))
        .collect();
    let at = |path: &str| {
        found
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, m)| m.as_str())
            .unwrap_or_else(|| panic!("no error at {path}: {found:#?}"))
    };
    assert!(at("services.db.build.contxt").contains("unknown key `contxt`"));
    assert!(at("services.api.build.context").contains("climbs out of the project"));
    assert!(at("services.api.build.dockerfile").contains("is absolute"));
    // The schema errors stop the file there; a valid schema reaches the cross-key checks.
    let text = &shop(
        r#"
[services.web]
run = "./web"
build = { context = "." }
[services.api]
image = "Shop/API"
build = { args = { "1X" = "a" } }
"#,
    );
    let found: Vec<String> = errors(text).into_iter().map(|d| d.message).collect();
    assert_eq!(
        found,
        [
            "service `web` builds an image (a `build` table) but has no `image` to tag it as",
            "`Shop/API` is not a name `docker build -t` takes",
            "invalid build argument name: `1X` starts with a digit",
        ],
        "{found:#?}"
    );
}

#[test]
fn a_backup_kind_is_given_or_told_by_the_image_and_needs_what_it_backs_up() {
    use model::BackupKind;
    let text = &shop(
        r#"
[services.pg]
image = "registry.example.com/library/postgres:16"
volumes = ["pgdata:/var/lib/postgresql/data"]
backup = { schedule = "every 6h" }
[services.maria]
image = "mariadb"
backup = { schedule = "0 3 * * *", keep = 2 }
[services.cache]
image = "redis:7"
volumes = ["data:/data"]
backup = { schedule = "0 3 * * *" }
[services.app]
run = "./app"
backup = { schedule = "0 3 * * *", kind = "sqlite", path = "/srv/app.db" }
"#,
    );
    let config = config(text);
    let env = config.environment(LOCAL).expect("local exists");
    let kind = |name: &str| env.services[name].backup.as_ref().map(|b| b.kind);
    assert_eq!(kind("pg"), Some(BackupKind::Postgres));
    assert_eq!(kind("maria"), Some(BackupKind::Mysql));
    assert_eq!(kind("cache"), Some(BackupKind::Volumes));
    assert_eq!(kind("app"), Some(BackupKind::Sqlite));
    assert_eq!(env.services["pg"].backup.as_ref().map(|b| b.keep), Some(7));

    let bad = errors(&shop(
        r#"
[services.a]
run = "./a"
backup = { schedule = "0 3 * * *" }
[services.b]
run = "./b"
backup = { schedule = "every 1d", kind = "sqlite", path = "data/app.db" }
[services.c]
image = "redis:7"
backup = { schedule = "every 1d", kind = "volumes" }
[services.d]
run = "./d"
backup = { schedule = "every 1d", kind = "files" }
"#,
    ));
    let said: Vec<String> = bad.iter().map(|d| d.message.clone()).collect();
    for expected in [
        "service `a` sets `backup` but not what to back up",
        "service `b`: backup path `data/app.db` is not absolute",
        "service `c`: a `volumes` backup does not fit this service",
        "service `d`: a `files` backup needs `path`",
    ] {
        assert!(
            said.iter().any(|m| m.contains(expected)),
            "{expected}: {said:#?}"
        );
    }
    let schedule = errors(
        "[project]\nname = \"shop\"\n[services.e]\nrun = \"./e\"\nbackup = { schedule = \"at noon\", kind = \"files\", path = \"/srv\" }\n",
    );
    assert!(
        schedule[0].message.contains("`at noon` has 2 fields"),
        "{schedule:#?}"
    );
}

#[test]
fn deploy_verify_and_canary_default_merge_per_environment_and_are_checked() {
    let text = &shop(
        r#"
[services.web]
run = "./web"
port = "http"
[deploy]
verify = "20s"
[environments.prod]
hosts = ["local"]
deploy = { canary = true }
[environments.quick]
hosts = ["local"]
deploy = { verify = "0s" }
"#,
    );
    let config = config(text);
    let prod = config.environment("prod").expect("prod");
    assert_eq!(
        (prod.verify.to_string().as_str(), prod.canary),
        ("20s", true)
    );
    let quick = config.environment("quick").expect("quick");
    assert_eq!((quick.verify.as_millis(), quick.canary), (0, false));
    let bare = self::config(
        "[project]\nname = \"shop\"\n[services.web]\nrun = \"./web\"\nport = \"http\"\n",
    );
    let local = bare.environment(LOCAL).expect("local");
    assert_eq!(local.verify.to_string(), "5s");

    let found = errors(
        "[project]\nname = \"shop\"\n[services.web]\nrun = \"./web\"\nport = \"http\"\n\
         [deploy]\nverify = \"11m\"\n[environments.prod]\nhosts = [\"local\"]\n\
         deploy = { verify = \"0s\", canary = true }\n",
    );
    let codes: Vec<(&str, String)> = found.iter().map(|d| (d.code, d.path.to_string())).collect();
    assert!(
        codes.contains(&("config.invalid_value", "deploy.verify".to_owned()))
            && codes.contains(&(
                "config.conflict",
                "environments.prod.deploy.canary".to_owned()
            )),
        "{codes:?}"
    );
}

#[test]
fn a_service_runs_on_the_hosts_it_names_or_on_every_host() {
    let text = &shop(
        r#"
[services.web]
run = "./web"
[services.db]
image = "postgres:16"
hosts = ["db-1"]
[environments.prod]
hosts = ["web-1", "db-1"]
[hosts.web-1]
ssh = "deploy@203.0.113.10"
[hosts.db-1]
ssh = "deploy@203.0.113.11"
"#,
    );
    let prod = config(text).environment("prod").expect("prod");
    let services: Vec<_> = prod.services.values().cloned().collect();
    let names = |host: &str| -> Vec<String> {
        resolve::services_on(&services, host)
            .into_iter()
            .map(|s| s.name)
            .collect()
    };
    assert_eq!(names("web-1"), ["web"]);
    assert_eq!(names("db-1"), ["db", "web"]);
    assert!(prod.services["db"].runs_on("db-1") && !prod.services["db"].runs_on("web-1"));
}

/// Each error as `path: message`, for comparing whole reports.
fn located(text: &str) -> Vec<String> {
    errors(text)
        .into_iter()
        .map(|d| format!("{}: {}", d.path, d.message))
        .collect()
}

#[test]
fn two_processes_on_one_fixed_port_clash_only_where_they_share_a_host() {
    // Without environments, everything runs on this machine.
    let alone = &shop(
        r#"
[services.api]
run = "./api"
port = 8000
[services.web]
run = "./web"
port = 8000
[services.cache]
image = "redis:7"
port = 8000
[services.worker]
run = "./worker"
port = "http"
"#,
    );
    assert_eq!(
        located(alone),
        ["services.web.port: fixed port 8000 of `web` is already taken by `api` on the same host"]
    );

    // Placed on different hosts, they do not meet (prod); an environment
    // that puts them on one host (stage) is refused, and the hint names it.
    let placed = &shop(
        r#"
[hosts.a]
ssh = "deploy@203.0.113.1"
[hosts.b]
ssh = "deploy@203.0.113.2"
[environments.prod]
hosts = ["a", "b"]
[environments.stage]
hosts = ["a", "b"]
[environments.stage.services.web]
hosts = ["a"]
[services.api]
run = "./api"
port = 8000
hosts = ["a"]
[services.web]
run = "./web"
port = 8000
hosts = ["b"]
"#,
    );
    let found = errors(placed);
    assert_eq!(
        found
            .iter()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect::<Vec<_>>(),
        ["services.web.port: fixed port 8000 of `web` is already taken by `api` on the same host"]
    );
    assert!(
        found[0]
            .hint
            .as_deref()
            .is_some_and(|h| h.starts_with("both run on host `a`")),
        "{:?}",
        found[0].hint
    );
}

#[test]
fn env_may_not_set_what_the_agent_sets_but_a_container_keeps_its_own_port() {
    let text = &shop(
        r#"
[services.web]
run = "./web"
port = "http"
env = { PORT = "31777", GANTRY_INSTANCE = "x", GANTRY_DB_HOST = "10.0.0.5" }
[services.search]
image = "meilisearch:v1"
port = 7700
env = { PORT = "7700" }
[services.worker]
run = "./worker"
env = { PORT = "9000" }
"#,
    );
    assert_eq!(
        located(text),
        [
            "services.web.env.PORT: `PORT` in env of `web` is ignored: the agent sets $PORT to the port it assigns to `http`",
            "services.web.env.GANTRY_INSTANCE: `GANTRY_INSTANCE` in env of `web` is ignored: the agent sets it to each instance's id",
        ]
    );
}

#[test]
fn an_empty_run_is_refused() {
    let text = &shop("\n[services.web]\nrun = \" \\t \"\n");
    assert_eq!(
        located(text),
        ["services.web.run: `run` of `web` is empty: there is no command to start"]
    );
}

#[test]
fn an_integer_past_64_bits_is_one_error_at_its_value() {
    let text = &shop(
        "\n[services.web]\nrun = \"./web\"\nport = -99999999999999999999\nartifact = 99999999999999999999\n",
    );
    assert_eq!(
        located(text),
        [
            "services.web.port: `-99999999999999999999` is too small: `port` must be at least 1",
            "services.web.artifact: `99999999999999999999` is too large: integers in gantry.toml are at most 9223372036854775807",
        ]
    );
}

#[test]
fn without_environments_a_service_names_only_declared_hosts() {
    let declared = &shop(
        r#"
[hosts.db-1]
ssh = "deploy@203.0.113.20"
[services.db]
image = "postgres:16"
hosts = ["db-1", "local"]
"#,
    );
    config(declared);
    let unknown = &shop("\n[services.web]\nrun = \"./web\"\nhosts = [\"nosuch\"]\n");
    assert_eq!(
        located(unknown),
        ["services.web.hosts[0]: service `web` runs on unknown host `nosuch`"]
    );
}

#[test]
fn a_process_may_not_take_a_port_the_proxy_of_its_host_listens_on() {
    // On hosts reached over SSH the proxy listens on 80 and 443: `web` (with
    // routes) and `admin` (without) cannot bind theirs, nor can `api` where
    // staging gives it the 80 `admin` leaves. A container's 443 is inside
    // the container.
    let text = &shop(
        r#"
[hosts.web-1]
ssh = "deploy@203.0.113.10"
[hosts.web-2]
ssh = "deploy@203.0.113.11"
[environments.production]
hosts = ["web-1", "web-2"]
[environments.staging]
hosts = ["web-2"]
[environments.staging.services.admin]
port = "admin"
[environments.staging.services.api]
port = 80
[services.admin]
run = "./admin"
port = 80
hosts = ["web-2"]
[services.api]
run = "./api"
port = 8000
[services.caddy]
image = "caddy:2"
port = 443
[services.web]
run = "./web"
port = 443
routes = ["shop.example.com"]
"#,
    );
    let found = errors(text);
    let mut shown: Vec<String> = found
        .iter()
        .map(|d| format!("{}: {}", d.path, d.message))
        .collect();
    shown.sort();
    assert_eq!(
        shown,
        [
            "environments.staging.services.api.port: fixed port 80 of `api` is already taken by Gantry's proxy on its host in environment `staging`",
            "services.admin.port: fixed port 80 of `admin` is already taken by Gantry's proxy on its host",
            "services.web.port: fixed port 443 of `web` is already taken by Gantry's proxy on its host",
        ]
    );
    let hint = |path: &str| {
        found
            .iter()
            .find(|d| d.path.to_string() == path)
            .and_then(|d| d.hint.clone())
    };
    assert_eq!(
        hint("services.admin.port").as_deref(),
        Some(
            "`admin` runs on host `web-2`, where the proxy listens on 80 (HTTP) and 443 (HTTPS): give `admin` another port, or a named port like port = \"http\" so the agent assigns a free one as $PORT; to serve it on 80 and 443, give it routes, which the proxy forwards to its port"
        )
    );
    assert!(
        hint("services.web.port").is_some_and(
            |h| h.ends_with("; its routes still reach it through the proxy on 80 and 443")
        ),
        "{:?}",
        hint("services.web.port")
    );
}
