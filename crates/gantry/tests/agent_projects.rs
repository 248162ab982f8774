//! Several projects on one agent, and the routes a deploy may claim: release
//! ids count per project; a route another project owns on the host, or one
//! that would make the proxy refuse the whole table, fails the deploy before
//! anything of it starts, and the running instances keep serving; services
//! dropped from the config are drained and stopped by the next deploy.

mod agent_support;

use agent_support::{alive, deploy, hello, hello_toml, json, pids, post_json, service, status};
use gantry_testkit::{TestProject, http_get_host};
use serde_json::{Value, json};

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// The example project `name`, whose agent runs a proxy on `port`, and whose
/// web service declares `routes` (TOML array items).
fn project(name: &str, port: u16, routes: &str) -> TestProject {
    let toml = hello_toml(name, "bin/hello-web").replace(
        "port = \"http\"\n",
        &format!("port = \"http\"\nroutes = [{routes}]\n"),
    );
    hello(name, "1")
        .file("gantry.toml", &toml)
        .env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"))
}

/// The same, deployed to the agent of `first` (its state directory).
fn beside(first: &TestProject, name: &str, port: u16, routes: &str) -> TestProject {
    let state = first.state_dir().to_string_lossy().into_owned();
    project(name, port, routes).env("GANTRY_STATE_DIR", &state)
}

/// Stops a project's services when dropped: a project deployed to another
/// project's agent is not stopped by its own drop.
struct Stopped<'a>(&'a TestProject);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let _ = self.0.gantry(&["stop"]);
    }
}

fn proxied(port: u16, host: &str) -> (u16, String) {
    http_get_host(port, host, "/").expect("the proxy answers")
}

#[test]
fn two_projects_deploy_side_by_side_on_one_agent() {
    let port = free_port();
    let shop = project("shop", port, "");
    let blog = beside(&shop, "blog", port, "");
    let _blog_stopped = Stopped(&blog);

    let first = deploy(&shop);
    assert_eq!(first["release"]["id"], "r1", "{first:#}");
    let second = deploy(&blog);
    assert_eq!(second["release"]["id"], "r1", "{second:#}");
    assert_eq!(second["release"]["outcome"], "succeeded", "{second:#}");

    for host in ["web.shop.localhost", "web.blog.localhost"] {
        let (code, body) = proxied(port, host);
        assert_eq!(code, 200, "{host}: {body}");
    }
    // Each project's second release is its own r2.
    std::fs::write(shop.path().join("VERSION"), "2\n").expect("write");
    assert_eq!(deploy(&shop)["release"]["id"], "r2");
    let releases = json(&blog, &["releases"]);
    assert_eq!(
        releases["releases"].as_array().map(Vec::len),
        Some(1),
        "{releases:#}"
    );
}

#[test]
fn a_host_another_project_routes_is_refused_before_anything_is_written() {
    let port = free_port();
    let shop = project("shop2", port, "\"shared.example.test\"");
    let blog = beside(&shop, "blog2", port, "\"shared.example.test/blog\"");
    let _blog_stopped = Stopped(&blog);
    deploy(&shop);

    let run = blog.gantry(&["deploy", "--skip-build", "--output", "json"]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    let error = &run.json()["error"];
    assert_eq!(error["code"], "routes.taken", "{error:#}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("shared.example.test") && message.contains("`shop2`"),
        "names the host and its owner: {message}"
    );
    assert!(
        !shop.state_dir().join("releases/blog2").exists(),
        "a refused deploy wrote its release directory"
    );
    let (code, body) = proxied(port, "shared.example.test");
    assert_eq!(code, 200, "the owner keeps its route: {body}");

    // Another project's automatic names are its own, deployed or not.
    let taker = beside(&shop, "taker", port, "\"web.shop2.localhost\"");
    let _taker_stopped = Stopped(&taker);
    let run = taker.gantry(&["deploy", "--skip-build", "--output", "json"]);
    assert_ne!(run.code, 0, "{}", run.stdout);
}

/// The release's web service as the agent holds it, running the example's
/// binary by its absolute path (so a deploy of no files can start it).
fn web_spec(p: &TestProject) -> Value {
    let release = json(p, &["releases", "show", "r1"]);
    let mut web = release["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "web"))
        .cloned()
        .unwrap_or_else(|| panic!("no web in {release:#}"));
    let bin = p.path().join("bin/hello-web");
    web["run"] = json!(bin.display().to_string());
    web
}

#[test]
fn a_route_the_proxy_would_refuse_fails_the_deploy_with_the_old_instances_serving() {
    let port = free_port();
    let shop = project("shop3", port, "");
    deploy(&shop);
    let before = pids(service(&status(&shop), "web"));

    // What the CLI's validate refuses, sent as another client could: a
    // route equal to another service's automatic name.
    let web = web_spec(&shop);
    let mut api = web.clone();
    api["name"] = json!("api");
    api["routes"] = json!([{ "host": "web.shop3.localhost", "path": "/" }]);
    let request = json!({
        "project": "shop3",
        "environment": "local",
        "config_hash": "c0ffee",
        "artifact": { "digest": gantry_core::artifact::tree_digest(&[]), "files": [] },
        "services": [web, api],
        "secrets": {},
    });
    let (code, answer) = post_json(&shop, "/v1/projects/shop3/deploys", &request);
    assert_eq!(code, 409, "{answer:#}");
    assert_eq!(answer["error"]["code"], "routes.refused", "{answer:#}");

    let after = status(&shop);
    assert_eq!(
        pids(service(&after, "web")),
        before,
        "the old instances run on"
    );
    assert!(before.iter().all(|pid| alive(*pid)));
    let (code, body) = proxied(port, "web.shop3.localhost");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("hello from version 1 "), "{body}");
}

#[test]
fn a_service_removed_from_the_config_is_drained_stopped_and_reported() {
    let port = free_port();
    let shop = project("shop4", port, "\"moving.example.test\"");
    let first = deploy(&shop);
    let worker = pids(service(&first, "worker"));

    // Without the worker; the route moves to a new service.
    let toml = "[project]\nname = \"shop4\"\n\n[services.web]\nrun = \"bin/hello-web\"\nport = \"http\"\n\
         health = { path = \"/healthz\", interval = \"100ms\", timeout = \"1s\" }\n\n\
         [services.www]\nrun = \"bin/hello-web\"\nport = \"http\"\nroutes = [\"moving.example.test\"]\n\
         health = { path = \"/healthz\", interval = \"100ms\", timeout = \"1s\" }\n";
    std::fs::write(shop.path().join("gantry.toml"), toml).expect("write");
    let text = shop.gantry(&["deploy", "--skip-build", "--output", "text"]);
    text.expect_code(0);
    assert!(
        text.stdout
            .contains("stopped worker: no longer in gantry.toml"),
        "{}",
        text.stdout
    );
    assert!(worker.iter().all(|pid| !alive(*pid)), "the worker stopped");
    let now = status(&shop);
    let names: Vec<&str> = now["services"]
        .as_array()
        .map(|all| all.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["web", "www"], "{now:#}");
    let (code, body) = proxied(port, "moving.example.test");
    assert_eq!(code, 200, "{body}");

    // The JSON report names what a deploy stopped.
    std::fs::write(
        shop.path().join("gantry.toml"),
        hello_toml("shop4", "bin/hello-web").replace("[services.worker]", "[services.other]"),
    )
    .expect("write");
    let report = deploy(&shop);
    assert_eq!(report["removed"], json!(["www"]), "{report:#}");
}
