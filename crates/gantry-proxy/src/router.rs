//! A route table compiled for lookups: which `Target` a host and path go to,
//! and which of its upstreams takes the next request.
//!
//! Hosts are tried from the most specific: the exact name, then wildcards
//! from the longest suffix, then routes without hosts. The first of these
//! that has a route whose prefix matches the path wins, and within it the
//! longest prefix.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Uri;
use http::uri::PathAndQuery;

use crate::metrics::{Metrics, ServiceMetrics};
use crate::site::Site;
use crate::table::{Balance, RouteTable, normalize_prefix};
use crate::upstream::{Upstream, Upstreams, now_ms};

/// One route, ready to serve.
pub(crate) struct Target {
    pub(crate) service: Arc<str>,
    prefix: Box<str>,
    strip: bool,
    balance: Balance,
    /// Plain-HTTP requests are sent to HTTPS (`Route::redirect_https`).
    pub(crate) redirect_https: bool,
    upstreams: Box<[Arc<Upstream>]>,
    /// A directory served by the proxy itself, instead of upstreams.
    pub(crate) site: Option<Arc<Site>>,
    next: AtomicUsize,
    pub(crate) metrics: Arc<ServiceMetrics>,
}

pub(crate) struct Router {
    /// The table this was built from, as `GET /v1/routes` shows it.
    pub(crate) table: Arc<RouteTable>,
    exact: HashMap<Box<str>, Vec<Arc<Target>>>,
    /// Suffixes with their leading dot (`.example.com`), longest first.
    wildcard: Vec<(Box<str>, Vec<Arc<Target>>)>,
    any: Vec<Arc<Target>>,
}

impl Router {
    /// Compiles a table that passed `RouteTable::validate`.
    pub(crate) fn build(
        table: Arc<RouteTable>,
        upstreams: &Upstreams,
        metrics: &Metrics,
    ) -> Router {
        let mut services: HashMap<&str, Arc<ServiceMetrics>> = HashMap::new();
        let mut exact: HashMap<Box<str>, Vec<Arc<Target>>> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, Vec<Arc<Target>>> = HashMap::new();
        let mut any = Vec::new();
        for route in &table.routes {
            let service_metrics = services
                .entry(&route.service)
                .or_insert_with(|| metrics.service(&route.service));
            let target = Arc::new(Target {
                service: Arc::from(route.service.as_str()),
                prefix: normalize_prefix(&route.path_prefix).into(),
                strip: route.strip_prefix,
                balance: route.balance,
                redirect_https: route.redirect_https,
                upstreams: route
                    .upstreams
                    .iter()
                    .map(|a| in_service(upstreams, *a))
                    .collect(),
                site: route.static_site.as_ref().map(|s| Arc::new(Site::new(s))),
                // Each table starts at a random upstream, so that frequent
                // swaps do not pile every first request on the first one.
                next: AtomicUsize::new(fastrand::usize(..)),
                metrics: Arc::clone(service_metrics),
            });
            if route.hosts.is_empty() {
                any.push(Arc::clone(&target));
            }
            for host in &route.hosts {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.into()).or_default(),
                    None => exact.entry(host.into()).or_default(),
                }
                .push(Arc::clone(&target));
            }
        }
        let by_prefix = |targets: &mut Vec<Arc<Target>>| {
            targets.sort_by_key(|t| std::cmp::Reverse(t.prefix.len()));
        };
        exact.values_mut().for_each(by_prefix);
        any.sort_by_key(|t| std::cmp::Reverse(t.prefix.len()));
        let mut wildcard: Vec<_> = wildcard.into_iter().collect();
        wildcard
            .iter_mut()
            .for_each(|(_, targets)| by_prefix(targets));
        wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Router {
            table,
            exact,
            wildcard,
            any,
        }
    }

    /// Whether some route sends requests to `addr`.
    pub(crate) fn routes_to(&self, addr: SocketAddr) -> bool {
        self.table
            .routes
            .iter()
            .any(|r| r.upstreams.contains(&addr))
    }

    /// The route for a request to `host` (as the Host header has it, port
    /// and all) and `path`.
    pub(crate) fn find(&self, host: &str, path: &str) -> Option<&Arc<Target>> {
        let host = route_host(host);
        let host = host.as_ref();
        if let Some(target) = self.exact.get(host).and_then(|ts| first_match(ts, path)) {
            return Some(target);
        }
        self.wildcard
            .iter()
            .filter(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
            .find_map(|(_, targets)| first_match(targets, path))
            .or_else(|| first_match(&self.any, path))
    }
}

/// The upstream at `addr`, for a table that routes to it: in service again
/// if a drain had retired it, since its port may now be a new instance's.
fn in_service(upstreams: &Upstreams, addr: SocketAddr) -> Arc<Upstream> {
    let upstream = upstreams.get(addr);
    upstream.reinstate();
    upstream
}

fn first_match<'a>(targets: &'a [Arc<Target>], path: &str) -> Option<&'a Arc<Target>> {
    targets.iter().find(|t| prefix_matches(&t.prefix, path))
}

/// Whole segments only: `/api` matches `/api` and `/api/x`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The name routes are keyed by: no port, no trailing dot, lowercase.
pub(crate) fn route_host(host: &str) -> Cow<'_, str> {
    let name = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.split(':').next().unwrap_or(host)
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

impl Target {
    /// The upstream for the next request, other than `exclude`. Ejected
    /// upstreams are passed over while any other is left; when all are
    /// ejected, the one whose ejection ends first is tried anyway, so a
    /// service that came back is found without waiting out the period.
    pub(crate) fn pick(&self, exclude: Option<&Upstream>) -> Option<&Arc<Upstream>> {
        let count = self.upstreams.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        // The clock is read only when some upstream was ever ejected.
        let now = if self.upstreams.iter().any(|u| u.ejected_until() != 0) {
            now_ms()
        } else {
            0
        };
        let candidates = || {
            (0..count)
                .map(move |i| &self.upstreams[(start + i) % count])
                .filter(move |u| exclude.is_none_or(|x| !std::ptr::eq(&***u, x)))
        };
        let mut alive = candidates().filter(|u| !u.is_ejected(now));
        let chosen = match self.balance {
            Balance::RoundRobin => alive.next(),
            Balance::LeastConnections => alive.min_by_key(|u| u.in_flight()),
        };
        chosen.or_else(|| candidates().min_by_key(|u| u.ejected_until()))
    }

    /// The path and query to send upstream: the prefix removed when the
    /// route strips it.
    pub(crate) fn upstream_path(&self, uri: &Uri) -> PathAndQuery {
        let original = || {
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        };
        if !self.strip || &*self.prefix == "/" {
            return original();
        }
        let rest = uri.path().get(self.prefix.len()..).unwrap_or("");
        let rest = if rest.is_empty() { "/" } else { rest };
        let rewritten = match uri.query() {
            Some(query) => format!("{rest}?{query}"),
            None => rest.to_owned(),
        };
        PathAndQuery::try_from(rewritten).unwrap_or_else(|_| original())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Route;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn router(routes: Vec<Route>) -> Router {
        let table = RouteTable { routes };
        assert_eq!(table.validate(), Ok(()));
        Router::build(Arc::new(table), &Upstreams::default(), &Metrics::new())
    }

    fn service(router: &Router, host: &str, path: &str) -> Option<String> {
        router.find(host, path).map(|t| t.service.to_string())
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let r = router(vec![
            Route::new("any", vec![]),
            Route::new("wild", vec![]).hosts(["*.example.com"]),
            Route::new("shop", vec![]).hosts(["shop.example.com"]),
        ]);
        assert_eq!(
            service(&r, "shop.example.com", "/").as_deref(),
            Some("shop")
        );
        assert_eq!(
            service(&r, "blog.example.com", "/").as_deref(),
            Some("wild")
        );
        assert_eq!(service(&r, "a.b.example.com", "/").as_deref(), Some("wild"));
        assert_eq!(service(&r, "example.com", "/").as_deref(), Some("any"));
        assert_eq!(service(&r, "other.org", "/").as_deref(), Some("any"));
    }

    #[test]
    fn the_longest_wildcard_wins() {
        let r = router(vec![
            Route::new("short", vec![]).hosts(["*.example.com"]),
            Route::new("long", vec![]).hosts(["*.eu.example.com"]),
        ]);
        assert_eq!(
            service(&r, "x.eu.example.com", "/").as_deref(),
            Some("long")
        );
        assert_eq!(
            service(&r, "x.us.example.com", "/").as_deref(),
            Some("short")
        );
    }

    #[test]
    fn port_case_and_trailing_dot_of_the_host_are_ignored() {
        let r = router(vec![
            Route::new("shop", vec![]).hosts(["shop.example.com", "[::1]"]),
        ]);
        assert_eq!(
            service(&r, "Shop.Example.COM:8080", "/").as_deref(),
            Some("shop")
        );
        assert_eq!(
            service(&r, "shop.example.com.", "/").as_deref(),
            Some("shop")
        );
        assert_eq!(service(&r, "[::1]:8080", "/").as_deref(), Some("shop"));
        assert_eq!(service(&r, "example.com", "/"), None);
    }

    #[test]
    fn the_longest_prefix_wins_on_whole_segments() {
        let r = router(vec![
            Route::new("web", vec![]).hosts(["example.com"]),
            Route::new("api", vec![])
                .hosts(["example.com"])
                .path_prefix("/api", true),
            Route::new("v2", vec![])
                .hosts(["example.com"])
                .path_prefix("/api/v2/", false),
        ]);
        assert_eq!(service(&r, "example.com", "/api").as_deref(), Some("api"));
        assert_eq!(
            service(&r, "example.com", "/api/users").as_deref(),
            Some("api")
        );
        assert_eq!(service(&r, "example.com", "/apix").as_deref(), Some("web"));
        assert_eq!(
            service(&r, "example.com", "/api/v2/x").as_deref(),
            Some("v2")
        );
        assert_eq!(service(&r, "example.com", "/api/v2").as_deref(), Some("v2"));
    }

    #[test]
    fn a_host_without_a_matching_prefix_falls_through_to_wider_hosts() {
        let r = router(vec![
            Route::new("api", vec![])
                .hosts(["example.com"])
                .path_prefix("/api", false),
            Route::new("fallback", vec![]),
        ]);
        assert_eq!(
            service(&r, "example.com", "/other").as_deref(),
            Some("fallback")
        );
    }

    #[test]
    fn stripping_keeps_the_query_and_a_leading_slash() {
        let r = router(vec![Route::new("api", vec![]).path_prefix("/api", true)]);
        let target = r.find("x", "/api").expect("routed");
        let path = |uri: &'static str| target.upstream_path(&Uri::from_static(uri)).to_string();
        assert_eq!(path("/api/users?page=2"), "/users?page=2");
        assert_eq!(path("/api"), "/");
        assert_eq!(path("/api?x=1"), "/?x=1");
        let keep = router(vec![Route::new("api", vec![]).path_prefix("/api", false)]);
        let target = keep.find("x", "/api").expect("routed");
        assert_eq!(
            target
                .upstream_path(&Uri::from_static("/api/users?q"))
                .to_string(),
            "/api/users?q"
        );
    }

    #[test]
    fn round_robin_takes_each_upstream_in_turn() {
        let r = router(vec![Route::new("web", vec![addr(1), addr(2), addr(3)])]);
        let target = r.find("x", "/").expect("routed");
        let mut counts = HashMap::new();
        for _ in 0..30 {
            let up = target.pick(None).expect("an upstream");
            *counts.entry(up.addr.port()).or_insert(0) += 1;
        }
        assert_eq!(counts, HashMap::from([(1, 10), (2, 10), (3, 10)]));
    }

    #[test]
    fn least_connections_takes_the_idlest() {
        let upstreams = Upstreams::default();
        let table = RouteTable {
            routes: vec![
                Route::new("web", vec![addr(1), addr(2)]).balance(Balance::LeastConnections),
            ],
        };
        let r = Router::build(Arc::new(table), &upstreams, &Metrics::new());
        let target = r.find("x", "/").expect("routed");
        let _busy = crate::upstream::InFlight::new(upstreams.get(addr(1)));
        for _ in 0..5 {
            assert_eq!(target.pick(None).expect("an upstream").addr, addr(2));
        }
    }

    #[test]
    fn an_ejected_upstream_is_skipped_while_another_is_up() {
        let upstreams = Upstreams::default();
        let table = RouteTable {
            routes: vec![Route::new("web", vec![addr(1), addr(2)])],
        };
        let r = Router::build(Arc::new(table), &upstreams, &Metrics::new());
        let target = r.find("x", "/").expect("routed");
        upstreams.get(addr(1)).eject();
        for _ in 0..5 {
            assert_eq!(target.pick(None).expect("an upstream").addr, addr(2));
        }
        let first = Arc::clone(target.pick(None).expect("an upstream"));
        assert_eq!(
            target.pick(Some(&first)).map(|u| u.addr),
            Some(addr(1)),
            "with the other excluded, an ejected one is still tried"
        );
    }
}
