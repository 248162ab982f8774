//! A `static` service deployed on this machine, checked as a user would:
//! the proxy serves the release's directory on the service's routes, a
//! redeploy switches to the new files at once, a rollback switches back,
//! and a single-page app's routes get its index.html.

mod agent_support;

use std::io::{Read as _, Write as _};

use agent_support::{GANTRY, deploy, json, service, status};
use gantry_testkit::{TestProject, http_get_host};

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// A project whose `docs` service serves `site/` at `docs.localhost` and
/// at its automatic name, behind a proxy on `port`.
fn site(name: &str, port: u16, version: &str) -> TestProject {
    TestProject::new(GANTRY)
        .env("GANTRY_PROXY_LISTEN", &format!("127.0.0.1:{port}"))
        .file(
            "gantry.toml",
            &format!(
                "[project]\nname = \"{name}\"\n\n[services.docs]\nstatic = \"site\"\nspa = true\nroutes = [\"docs.localhost\", \"example.localhost/guide\"]\n"
            ),
        )
        .file("site/index.html", &page(version))
        .file("site/assets/app.3f2a9c1e.js", "console.log('app');\n")
        .file("site/guide.html", &format!("guide {version}"))
}

fn page(version: &str) -> String {
    format!("<!doctype html><title>docs {version}</title>")
}

fn get(port: u16, host: &str, path: &str) -> (u16, String) {
    http_get_host(port, host, path).unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
}

/// The head of a GET's answer, header names in lowercase.
fn head(port: u16, host: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    head.lines()
        .map(|line| match line.split_once(':') {
            Some((name, value)) => format!("{}:{value}", name.to_ascii_lowercase()),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_static_service_is_served_by_the_proxy_and_switched_with_releases() {
    let port = free_port();
    let p = site("statics", port, "1");
    let first = deploy(&p);
    assert_eq!(first["release"]["outcome"], "succeeded", "{first:#}");

    let (code, body) = get(port, "docs.localhost", "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&page("1")), "{body}");
    let index = head(port, "docs.localhost", "/");
    assert!(index.contains("cache-control: no-cache"), "{index}");
    assert!(index.contains("etag: \""), "{index}");
    let (code, body) = get(port, "docs.statics.localhost", "/assets/app.3f2a9c1e.js");
    assert_eq!(code, 200, "the automatic name serves it too: {body}");
    let hashed = head(port, "docs.statics.localhost", "/assets/app.3f2a9c1e.js");
    assert!(
        hashed.contains("cache-control: public, max-age=31536000, immutable"),
        "{hashed}"
    );
    let (code, body) = get(port, "docs.localhost", "/orders/42");
    assert_eq!(code, 200, "spa: {body}");
    assert!(body.contains(&page("1")), "{body}");
    let (code, _) = get(port, "docs.localhost", "/missing.js");
    assert_eq!(code, 404);
    // Under a path prefix, the prefix is the site's root.
    let (code, body) = get(port, "example.localhost", "/guide/guide.html");
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("guide 1"), "{body}");
    let (code, _) = get(port, "docs.localhost", "/gantry.toml");
    assert_eq!(code, 404, "only the static directory is served");

    let now = status(&p);
    let docs = service(&now, "docs");
    assert_eq!(docs["release"], "r1", "{now:#}");
    assert_eq!(docs["state"], "running", "{now:#}");
    let url = format!("http://docs.statics.localhost:{port}/");
    assert!(
        docs["urls"]
            .as_array()
            .is_some_and(|u| u.contains(&url.into())),
        "{docs:#}"
    );

    std::fs::write(p.path().join("site/index.html"), page("2")).expect("write");
    let second = deploy(&p);
    assert_eq!(second["release"]["id"], "r2", "{second:#}");
    let (code, body) = get(port, "docs.localhost", "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&page("2")), "the new release at once: {body}");

    // The rollback serves r1's stored files, whatever is on disk now.
    std::fs::write(p.path().join("site/index.html"), page("3")).expect("write");
    let back = json(&p, &["rollback"]);
    assert_eq!(back["release"]["rollback_of"], "r1", "{back:#}");
    let (code, body) = get(port, "docs.localhost", "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&page("1")), "back to r1: {body}");
    assert_eq!(service(&status(&p), "docs")["release"], "r3");
}

#[test]
fn a_static_directory_missing_from_the_artifact_fails_the_deploy_and_keeps_the_old_one() {
    let port = free_port();
    let p = site("staticgone", port, "1");
    deploy(&p);
    std::fs::remove_dir_all(p.path().join("site")).expect("remove the site");
    std::fs::write(p.path().join("README"), "no site here").expect("write");
    let failed = p.gantry(&["deploy", "--skip-build", "--output", "json"]);
    assert_ne!(failed.code, 0, "{}", failed.stdout);
    let error = &failed.json()["error"];
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("site")),
        "names the directory: {error:#}"
    );
    let (code, body) = get(port, "docs.localhost", "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&page("1")), "r1 still served: {body}");
}
