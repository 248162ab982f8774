//! Static sites: a route whose target is a directory the proxy serves
//! itself. What a browser and a cache see (types, ETags and 304s, ranges,
//! compression, cache lifetimes, the single-page-app fallback), what an
//! attacker gets for paths that try to leave the directory, and a release
//! switch from one directory to another.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use async_compression::tokio::bufread::{BrotliDecoder, BrotliEncoder, GzipDecoder};
use bytes::Bytes;
use gantry_proxy::{Route, RouteTable, StaticSite};
use http_body_util::BodyExt as _;
use hyper::{HeaderMap, Request, StatusCode};
use serde_json::json;
use support::{Body, TestProxy, client, empty};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const HOST: &str = "site.test";

/// A site like a bundler's output, with a secret beside its root.
fn build_site(dir: &Path, version: &str) -> std::path::PathBuf {
    let root = dir.join(format!("release-{version}"));
    std::fs::create_dir_all(root.join("assets")).unwrap();
    std::fs::create_dir_all(root.join("guide")).unwrap();
    std::fs::write(
        root.join("index.html"),
        format!("<!doctype html><title>{version}</title><script src=\"/assets/app.3f2a9c1e.js\"></script>"),
    )
    .unwrap();
    std::fs::write(root.join("guide/index.html"), "guide").unwrap();
    std::fs::write(root.join("assets/app.3f2a9c1e.js"), js_source()).unwrap();
    std::fs::write(root.join("assets/app.js"), js_source()).unwrap();
    std::fs::write(root.join("assets/style.css"), css_source()).unwrap();
    std::fs::write(root.join("assets/logo.png"), png_bytes()).unwrap();
    std::fs::write(root.join("numbers.txt"), numbers()).unwrap();
    std::fs::write(root.join(".env"), "SECRET=inside").unwrap();
    std::fs::write(dir.join("secret.txt"), "TOP SECRET outside the root").unwrap();
    std::os::unix::fs::symlink("../secret.txt", root.join("link-out.txt")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
    std::os::unix::fs::symlink("..", root.join("parent")).unwrap();
    root
}

fn js_source() -> String {
    "export function greet(name) { return `hello ${name}`; }\n".repeat(200)
}

fn css_source() -> String {
    "body { margin: 0; padding: 0; font-family: system-ui, sans-serif; }\n".repeat(200)
}

/// Bytes that compress badly, with a PNG's signature.
fn png_bytes() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut x: u32 = 12345;
    for _ in 0..4000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        bytes.push((x >> 16) as u8);
    }
    bytes
}

/// 1000 bytes whose every slice is easy to check.
fn numbers() -> Vec<u8> {
    (0..1000u32).map(|i| b'0' + (i % 10) as u8).collect()
}

fn route(root: &Path, spa: bool) -> RouteTable {
    RouteTable {
        routes: vec![Route::site("site", StaticSite::new(root).spa(spa)).hosts([HOST])],
    }
}

struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Fetched {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn fetch(proxy: &TestProxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Fetched {
    let mut request = Request::builder()
        .method(method)
        .uri(proxy.url(path))
        .header("host", HOST);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request: Request<Body> = request.body(empty()).unwrap();
    let response = client().request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Fetched {
        status,
        headers,
        body,
    }
}

async fn get(proxy: &TestProxy, path: &str) -> Fetched {
    fetch(proxy, "GET", path, &[]).await
}

/// A request written byte for byte (no client library to tidy its path):
/// the status code and everything after the head.
async fn raw_get(proxy: &TestProxy, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

async fn site_proxy(spa: bool) -> (TestProxy, std::path::PathBuf) {
    let proxy = TestProxy::start();
    let root = build_site(proxy.dir.path(), "v1");
    proxy.put_routes(&route(&root, spa)).await;
    (proxy, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_served_with_their_type_length_and_validators() {
    let (proxy, root) = site_proxy(false).await;

    let home = get(&proxy, "/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert_eq!(home.body, std::fs::read(root.join("index.html")).unwrap());
    assert_eq!(home.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(home.header("content-length"), home.body.len().to_string());
    assert!(
        home.header("etag").starts_with('"'),
        "a strong tag: {}",
        home.header("etag")
    );
    assert!(home.header("last-modified").ends_with(" GMT"));
    assert_eq!(home.header("x-content-type-options"), "nosniff");

    let png = get(&proxy, "/assets/logo.png").await;
    assert_eq!(png.header("content-type"), "image/png");
    assert_eq!(png.body, png_bytes());

    let guide = get(&proxy, "/guide/").await;
    assert_eq!(guide.text(), "guide");
    let slash = get(&proxy, "/guide?page=2").await;
    assert_eq!(slash.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(slash.header("location"), "/guide/?page=2");

    let head = fetch(&proxy, "HEAD", "/assets/logo.png", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), png_bytes().len().to_string());
    assert_eq!(head.header("etag"), png.header("etag"));

    let post = fetch(&proxy, "POST", "/index.html", &[]).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.header("allow"), "GET, HEAD");
    let delete = fetch(&proxy, "DELETE", "/index.html", &[]).await;
    assert_eq!(delete.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(root.join("index.html").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_names_are_cached_for_a_year_and_the_rest_revalidated() {
    let (proxy, _root) = site_proxy(false).await;
    let hashed = get(&proxy, "/assets/app.3f2a9c1e.js").await;
    assert_eq!(hashed.status, StatusCode::OK);
    assert_eq!(
        hashed.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(
        hashed.header("content-type"),
        "text/javascript; charset=utf-8"
    );
    for path in ["/assets/app.js", "/", "/index.html", "/assets/logo.png"] {
        assert_eq!(
            get(&proxy, path).await.header("cache-control"),
            "no-cache",
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_etag_or_date_gets_304_and_a_changed_file_a_new_tag() {
    let (proxy, root) = site_proxy(false).await;
    let first = get(&proxy, "/numbers.txt").await;
    let tag = first.header("etag").to_owned();
    let date = first.header("last-modified").to_owned();

    let again = fetch(&proxy, "GET", "/numbers.txt", &[("if-none-match", &tag)]).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), tag);
    let listed = format!("\"other\", {tag}");
    let among = fetch(&proxy, "GET", "/numbers.txt", &[("if-none-match", &listed)]).await;
    assert_eq!(among.status, StatusCode::NOT_MODIFIED);
    let dated = fetch(
        &proxy,
        "GET",
        "/numbers.txt",
        &[("if-modified-since", &date)],
    )
    .await;
    assert_eq!(dated.status, StatusCode::NOT_MODIFIED);
    let other = fetch(
        &proxy,
        "GET",
        "/numbers.txt",
        &[("if-none-match", "\"stale\"")],
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body.len(), 1000);

    // A new file under the same name (a rename over it, as a deploy does).
    let fresh = root.join(".numbers.new");
    std::fs::write(&fresh, "changed").unwrap();
    std::fs::rename(&fresh, root.join("numbers.txt")).unwrap();
    let changed = fetch(&proxy, "GET", "/numbers.txt", &[("if-none-match", &tag)]).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.text(), "changed");
    assert_ne!(changed.header("etag"), tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_range_gets_206_and_an_unsatisfiable_one_416() {
    let (proxy, _root) = site_proxy(false).await;
    let all = numbers();
    let part = fetch(&proxy, "GET", "/numbers.txt", &[("range", "bytes=10-19")]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.header("content-range"), "bytes 10-19/1000");
    assert_eq!(part.header("content-length"), "10");
    assert_eq!(part.body, &all[10..20]);

    let tail = fetch(&proxy, "GET", "/numbers.txt", &[("range", "bytes=-7")]).await;
    assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.header("content-range"), "bytes 993-999/1000");
    assert_eq!(tail.body, &all[993..]);

    let past = fetch(&proxy, "GET", "/numbers.txt", &[("range", "bytes=1000-")]).await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.header("content-range"), "bytes */1000");
    assert!(past.body.is_empty());

    let several = fetch(&proxy, "GET", "/numbers.txt", &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(several.status, StatusCode::OK);
    assert_eq!(several.body, all);

    let tag = part.header("etag").to_owned();
    let current = [("range", "bytes=0-4"), ("if-range", tag.as_str())];
    let resumed = fetch(&proxy, "GET", "/numbers.txt", &current).await;
    assert_eq!(resumed.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(resumed.body, &all[..5]);
    let stale = [("range", "bytes=0-4"), ("if-range", "\"stale\"")];
    let whole = fetch(&proxy, "GET", "/numbers.txt", &stale).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.body, all);
}

async fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzipDecoder::new(bytes).read_to_end(&mut out).await.unwrap();
    out
}

async fn unbrotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    BrotliDecoder::new(bytes)
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_is_sent_gzip_or_brotli_and_binary_as_it_is() {
    let (proxy, _root) = site_proxy(false).await;
    let css = css_source();

    let gzip = fetch(
        &proxy,
        "GET",
        "/assets/style.css",
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(gzip.status, StatusCode::OK);
    assert_eq!(gzip.header("content-encoding"), "gzip");
    assert_eq!(gzip.header("vary"), "Accept-Encoding");
    assert!(gzip.body.len() < css.len() / 4, "{} bytes", gzip.body.len());
    assert_eq!(gunzip(&gzip.body).await, css.as_bytes());

    let accept = [("accept-encoding", "gzip, deflate, br")];
    let br = fetch(&proxy, "GET", "/assets/style.css", &accept).await;
    assert_eq!(br.header("content-encoding"), "br");
    assert_eq!(unbrotli(&br.body).await, css.as_bytes());
    assert_ne!(br.header("etag"), gzip.header("etag"), "one tag per coding");
    let plain = get(&proxy, "/assets/style.css").await;
    assert_eq!(plain.header("content-encoding"), "");
    assert_eq!(plain.body, css.as_bytes());
    assert_ne!(plain.header("etag"), br.header("etag"));

    let revalidated = [
        ("accept-encoding", "br"),
        ("if-none-match", br.header("etag")),
    ];
    let same = fetch(&proxy, "GET", "/assets/style.css", &revalidated).await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);

    let png = fetch(
        &proxy,
        "GET",
        "/assets/logo.png",
        &[("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(png.header("content-encoding"), "");
    assert_eq!(png.body, png_bytes());

    let ranged = [("accept-encoding", "gzip"), ("range", "bytes=0-9")];
    let part = fetch(&proxy, "GET", "/assets/style.css", &ranged).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.header("content-encoding"),
        "",
        "ranges are of the file itself"
    );
    assert_eq!(part.body, &css.as_bytes()[..10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_precompressed_sibling_is_sent_when_the_client_takes_it() {
    let (proxy, root) = site_proxy(false).await;
    // The sibling holds other text than the file, to tell which was sent.
    let mut compressed = Vec::new();
    BrotliEncoder::new(&b"made by the build"[..])
        .read_to_end(&mut compressed)
        .await
        .unwrap();
    std::fs::write(root.join("assets/app.js.br"), &compressed).unwrap();

    let br = fetch(
        &proxy,
        "GET",
        "/assets/app.js",
        &[("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(br.header("content-encoding"), "br");
    assert_eq!(br.header("content-type"), "text/javascript; charset=utf-8");
    assert_eq!(br.header("content-length"), compressed.len().to_string());
    assert_eq!(unbrotli(&br.body).await, b"made by the build");

    let gzip = fetch(
        &proxy,
        "GET",
        "/assets/app.js",
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(
        gzip.header("content-encoding"),
        "gzip",
        "no .gz: compressed here"
    );
    assert_eq!(gunzip(&gzip.body).await, js_source().as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_streams_whole_and_is_not_compressed_on_the_fly() {
    let (proxy, root) = site_proxy(false).await;
    let large: Vec<u8> = "0123456789abcdef\n".repeat(1_200_000).into_bytes();
    std::fs::write(root.join("big.txt"), &large).unwrap();
    let got = fetch(
        &proxy,
        "GET",
        "/big.txt",
        &[("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.header("content-encoding"),
        "",
        "over the on-the-fly bound"
    );
    assert_eq!(got.header("content-length"), large.len().to_string());
    assert!(got.body == large, "the body is the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_page_app_gets_its_index_for_routes_and_404_for_missing_files() {
    let (proxy, root) = site_proxy(true).await;
    let index = std::fs::read(root.join("index.html")).unwrap();
    for route in ["/orders/42", "/settings", "/guide/nested/page"] {
        let page = get(&proxy, route).await;
        assert_eq!(page.status, StatusCode::OK, "{route}");
        assert_eq!(page.body, index, "{route}");
        assert_eq!(page.header("cache-control"), "no-cache");
    }
    let missing = get(&proxy, "/assets/missing.3f2a9c1e.js").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        missing.text().contains("no file at this path"),
        "{}",
        missing.text()
    );

    let plain = TestProxy::start();
    plain.put_routes(&route(&root, false)).await;
    assert_eq!(
        get(&plain, "/orders/42").await.status,
        StatusCode::NOT_FOUND
    );
    std::fs::write(root.join("404.html"), "our own 404").unwrap();
    let own = get(&plain, "/orders/42").await;
    assert_eq!(own.status, StatusCode::NOT_FOUND);
    assert_eq!(own.text(), "our own 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_reaches_outside_the_root() {
    let (proxy, root) = site_proxy(false).await;
    let spa = TestProxy::start();
    spa.put_routes(&route(&root, true)).await;
    let attempts = [
        "/../secret.txt",
        "/../../../../etc/passwd",
        "/%2e%2e/secret.txt",
        "/%2E%2E/%2e%2E/secret.txt",
        "/assets/..%2fsecret.txt",
        "/assets/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/%252e%252e/secret.txt",
        "/..%5csecret.txt",
        "/link-out.txt",
        "/parent/secret.txt",
        "/etc/passwd",
        "/etc/hostname",
        "/.env",
        "/assets/%00.png",
    ];
    for path in attempts {
        let (status, answer) = raw_get(&proxy, path).await;
        assert!([400, 404].contains(&status), "{path}: {status}\n{answer}");
        assert!(!answer.contains("SECRET"), "{path} leaked: {answer}");
        assert!(!answer.contains("root:"), "{path} leaked: {answer}");
        // A single-page app answers what looks like a route with its own
        // index.html, never with what is outside.
        let (status, answer) = raw_get(&spa, path).await;
        assert!(
            [200, 400, 404].contains(&status),
            "{path}: {status}\n{answer}"
        );
        assert!(!answer.contains("SECRET"), "{path} leaked: {answer}");
        assert!(!answer.contains("root:"), "{path} leaked: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_route_serves_the_directory_under_its_prefix() {
    let proxy = TestProxy::start();
    let root = build_site(proxy.dir.path(), "v1");
    let table = RouteTable {
        routes: vec![
            Route::site("docs", StaticSite::new(&root))
                .hosts([HOST])
                .path_prefix("/docs", true),
        ],
    };
    proxy.put_routes(&table).await;
    assert_eq!(get(&proxy, "/docs/guide/").await.text(), "guide");
    let slash = get(&proxy, "/docs/guide").await;
    assert_eq!(slash.header("location"), "/docs/guide/");
    assert_eq!(get(&proxy, "/docs/numbers.txt").await.body, numbers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_that_is_not_there_is_refused_and_one_that_goes_away_gets_503() {
    let (proxy, root) = site_proxy(false).await;
    let gone = json!({ "routes": [
        { "service": "site", "hosts": [HOST], "static": { "root": proxy.dir.path().join("nope") } },
    ]});
    let (status, error) = proxy.control("PUT", "/v1/routes", Some(gone)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["code"], "routes.static_root_invalid");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("nope"),
        "{error}"
    );
    let relative = json!({ "routes": [
        { "service": "site", "static": { "root": "dist" } },
    ]});
    let (status, error) = proxy.control("PUT", "/v1/routes", Some(relative)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["code"], "routes.invalid");
    assert_eq!(
        get(&proxy, "/numbers.txt").await.status,
        StatusCode::OK,
        "old table kept"
    );

    std::fs::remove_dir_all(&root).unwrap();
    let missing = get(&proxy, "/numbers.txt").await;
    assert_eq!(missing.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(missing.text().contains("site"), "{}", missing.text());
}

/// One request on the pooled client: the site version it got, or why not.
async fn version(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
    url: &str,
) -> Result<String, String> {
    let request = Request::get(url)
        .header("host", HOST)
        .body(empty())
        .unwrap();
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if status != StatusCode::OK {
        return Err(format!("{status}: {text}"));
    }
    text.split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .map(str::to_owned)
        .ok_or(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_a_new_directory_is_atomic_and_downloads_under_way_finish() {
    let proxy = TestProxy::start();
    let v1 = build_site(proxy.dir.path(), "v1");
    let v2 = build_site(proxy.dir.path(), "v2");
    let large: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(v1.join("download.bin"), &large).unwrap();
    proxy.put_routes(&route(&v1, false)).await;

    // A download of v1's file, started and partly read before the switch.
    let request = Request::get(proxy.url("/download.bin"))
        .header("host", HOST)
        .body(empty())
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut download = response.into_body();
    let mut received = Vec::new();
    while received.len() < 100_000 {
        let frame = download.frame().await.unwrap().unwrap();
        received.extend_from_slice(frame.data_ref().unwrap());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (stop, outcomes, url, pooled) = (
            Arc::clone(&stop),
            Arc::clone(&outcomes),
            proxy.url("/"),
            client(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let answer = version(&pooled, &url).await;
                outcomes.lock().unwrap().push((sent, answer));
            }
        }));
    }
    support::eventually("requests before the switch", || {
        outcomes.lock().unwrap().len() >= 50
    })
    .await;
    proxy.put_routes(&route(&v2, false)).await;
    let switched = Instant::now();
    support::eventually("requests after the switch", || {
        outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|(sent, _)| *sent > switched)
            .count()
            >= 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    // The old release goes away, as a cleanup would remove it: the
    // download holds its file open and finishes.
    std::fs::remove_dir_all(&v1).unwrap();
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    for (sent, answer) in &outcomes {
        match answer {
            Ok(v) if v == "v1" || v == "v2" => {}
            other => panic!("a request failed during the switch: {other:?}"),
        }
        if *sent > switched {
            assert_eq!(answer.as_deref(), Ok("v2"), "sent after the switch");
        }
    }
    while let Some(frame) = download.frame().await {
        received.extend_from_slice(frame.unwrap().data_ref().unwrap());
    }
    assert!(
        received == large,
        "the download begun on v1 finished whole ({} bytes)",
        received.len()
    );
}
