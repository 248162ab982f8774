//! When the proxy itself is out of file descriptors, a static site whose
//! files it cannot open gets the same answer as an upstream it cannot
//! connect to: 503 with Retry-After and a page that blames the proxy, not a
//! 500 that blames the site; the proxy logs the failure as its own, and
//! serves the site again once descriptors are free. One test in its own
//! binary, as `descriptors.rs`: it exhausts the process's descriptors, and
//! the log file and its once-a-minute `proxy.out_of_resources` line are
//! process-wide.
#![allow(clippy::unwrap_used)]

mod support;

use gantry_proxy::{Route, RouteTable, StaticSite};
use hyper::StatusCode;
use support::descriptors::{Starving, ask};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_a_static_site_answers_503_and_not_500() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "home").unwrap();
    let mut starving = Starving::start(&RouteTable {
        routes: vec![Route::site("docs", StaticSite::new(site.path())).hosts(["docs.test"])],
    })
    .await;
    let (status, retry_after, page) = starving.ask_out_of_descriptors("docs.test").await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
    assert!(retry_after.is_some(), "a 503 says when to try again");
    assert!(
        page.contains("The proxy is short of resources") && page.contains("docs"),
        "the page blames the proxy, not the site: {page}"
    );
    let logged = starving.logged();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("\"proxy.out_of_resources\"")
                && l.contains("\"docs\"")
                && l.contains("os error 24")),
        "the proxy logs the failure as its own:\n{logged}"
    );
    // The site is served again once descriptors are free.
    let (status, _, text) = ask(&mut starving.sender, "docs.test").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "home"));
}
