//! The route table: what the agent sends with `PUT /v1/routes`, what the proxy
//! persists to `routes.json`, and the checks a table must pass before it is
//! served. Plain data and pure functions; nothing here touches a socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole routing state of the proxy. It is replaced as one unit: a
/// request is routed by the old table or the new one, never a mix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// Requests whose host and path match go to one of `upstreams`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The service's name: shown on error pages, in the access log and metrics.
    pub service: String,
    /// Exact host names (`shop.example.com`) or one leading wildcard label
    /// (`*.example.com`, which matches any name that ends in `.example.com`).
    /// Empty: any host, after every route that names one.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Matches on whole path segments: `/api` matches `/api` and `/api/x`,
    /// not `/apix`. The longest matching prefix wins.
    #[serde(default = "root")]
    pub path_prefix: String,
    /// Remove `path_prefix` from the path before forwarding (`/api/x` → `/x`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Where the service listens. Empty: every request gets the 503 page,
    /// unless the route serves a directory (`static`).
    #[serde(default)]
    pub upstreams: Vec<SocketAddr>,
    /// Files from a directory, served by the proxy itself, instead of
    /// upstreams (a `static` service). Written `"static"` in JSON.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_site: Option<StaticSite>,
    #[serde(default)]
    pub balance: Balance,
    /// Whether and how the route's hosts are served over HTTPS.
    #[serde(default)]
    pub tls: Tls,
    /// Plain-HTTP requests get a 308 to the same URL over HTTPS, once the
    /// proxy has a certificate for the host (ACME challenges excepted).
    #[serde(default)]
    pub redirect_https: bool,
}

/// A directory the proxy serves as a site: GET and HEAD, with ETags,
/// ranges, compression and cache headers (see the crate's README).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticSite {
    /// The directory, by absolute path; nothing outside it is ever served.
    pub root: PathBuf,
    /// A single-page app: a path that names no file and whose last segment
    /// has no extension (`/orders/42`) gets the root's `index.html`.
    #[serde(default)]
    pub spa: bool,
}

impl StaticSite {
    pub fn new(root: impl Into<PathBuf>) -> StaticSite {
        StaticSite {
            root: root.into(),
            spa: false,
        }
    }

    pub fn spa(mut self, spa: bool) -> StaticSite {
        self.spa = spa;
        self
    }
}

/// Where the certificate for a route's hosts comes from. Written `"off"`,
/// `"local"`, `"acme"`, or `{"cert": "/path.pem", "key": "/path.key"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tls {
    /// Plain HTTP only: a TLS handshake for these hosts fails.
    #[default]
    Off,
    /// Leaves signed on demand by the proxy's local CA; `*.localhost` only.
    Local,
    /// A certificate the ACME client obtains and inserts in the `CertStore`.
    Acme,
    /// The user's own certificate chain and key, PEM files read when the
    /// table is applied.
    #[serde(untagged)]
    Files(CertFiles),
}

/// A PEM certificate chain (leaf first) and its private key, by absolute path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    pub fn is_on(&self) -> bool {
        *self != Tls::Off
    }
}

fn root() -> String {
    "/".to_owned()
}

impl Route {
    /// A route for `service` on any host and path, to `upstreams`.
    pub fn new(service: impl Into<String>, upstreams: Vec<SocketAddr>) -> Route {
        Route {
            service: service.into(),
            hosts: Vec::new(),
            path_prefix: root(),
            strip_prefix: false,
            upstreams,
            static_site: None,
            balance: Balance::default(),
            tls: Tls::Off,
            redirect_https: false,
        }
    }

    /// A route for `service` on any host and path that serves `site`.
    pub fn site(service: impl Into<String>, site: StaticSite) -> Route {
        let mut route = Route::new(service, Vec::new());
        route.static_site = Some(site);
        route
    }

    pub fn tls(mut self, tls: Tls) -> Route {
        self.tls = tls;
        self
    }

    pub fn redirect_https(mut self, redirect: bool) -> Route {
        self.redirect_https = redirect;
        self
    }

    pub fn hosts<I, S>(mut self, hosts: I) -> Route
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    pub fn path_prefix(mut self, prefix: impl Into<String>, strip: bool) -> Route {
        self.path_prefix = prefix.into();
        self.strip_prefix = strip;
        self
    }

    pub fn balance(mut self, balance: Balance) -> Route {
        self.balance = balance;
        self
    }
}

/// How a route spreads requests over its upstreams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The upstream with the fewest requests in flight (WebSockets count).
    LeastConnections,
}

/// Why a table was refused. Nothing of a refused table is applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("route {index}: the service name is empty")]
    EmptyService { index: usize },
    #[error("route {index} ({service}): invalid host `{host}`: {reason}")]
    InvalidHost {
        index: usize,
        service: String,
        host: String,
        reason: &'static str,
    },
    #[error(
        "route {index} ({service}): path_prefix `{prefix}` must start with `/` and hold no `?` or `#`"
    )]
    InvalidPrefix {
        index: usize,
        service: String,
        prefix: String,
    },
    #[error(
        "route {index} ({service}): host `{host}` with prefix `{prefix}` is already routed by route {first}"
    )]
    Duplicate {
        index: usize,
        first: usize,
        service: String,
        host: String,
        prefix: String,
    },
    #[error(
        "route {index} ({service}): tls `{mode}` needs the route to name its hosts; only a cert and key may serve any host"
    )]
    TlsWithoutHosts {
        index: usize,
        service: String,
        mode: &'static str,
    },
    #[error(
        "route {index} ({service}): tls `local` is for `localhost` and `*.localhost` names, not `{host}`; use `acme` or a cert and key"
    )]
    LocalTlsHost {
        index: usize,
        service: String,
        host: String,
    },
    #[error(
        "route {index} ({service}): tls `acme` cannot serve the wildcard `{host}` (HTTP-01 validates one name at a time); name the hosts, or give a cert and key"
    )]
    AcmeWildcard {
        index: usize,
        service: String,
        host: String,
    },
    #[error(
        "route {index} ({service}): the {which} file `{}` must be an absolute path", path.display()
    )]
    RelativeCertPath {
        index: usize,
        service: String,
        which: &'static str,
        path: PathBuf,
    },
    #[error(
        "route {index} ({service}): a route serves either upstreams or a static directory, not both"
    )]
    StaticWithUpstreams { index: usize, service: String },
    #[error(
        "route {index} ({service}): the static root `{}` must be an absolute path without `..`", root.display()
    )]
    InvalidStaticRoot {
        index: usize,
        service: String,
        root: PathBuf,
    },
    #[error(
        "route {index} ({service}): host `{host}` gets a different tls setting from route {first}; one host has one certificate"
    )]
    TlsConflict {
        index: usize,
        first: usize,
        service: String,
        host: String,
    },
}

impl RouteTable {
    /// Checks every route; the first problem found is returned.
    pub fn validate(&self) -> Result<(), TableError> {
        let mut first_route: HashMap<(String, &str), usize> = HashMap::new();
        let mut host_tls: HashMap<String, (usize, &Tls)> = HashMap::new();
        for (index, route) in self.routes.iter().enumerate() {
            check_tls(index, route)?;
            if route.tls.is_on() {
                let hosts = if route.hosts.is_empty() {
                    vec![String::new()]
                } else {
                    route.hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
                };
                for host in hosts {
                    match host_tls.get(&host) {
                        Some(&(first, tls)) if tls != &route.tls => {
                            return Err(TableError::TlsConflict {
                                index,
                                first,
                                service: route.service.clone(),
                                host: shown_host(host),
                            });
                        }
                        Some(_) => {}
                        None => {
                            host_tls.insert(host, (index, &route.tls));
                        }
                    }
                }
            }
            if route.service.trim().is_empty() {
                return Err(TableError::EmptyService { index });
            }
            check_static(index, route)?;
            if !valid_prefix(&route.path_prefix) {
                return Err(TableError::InvalidPrefix {
                    index,
                    service: route.service.clone(),
                    prefix: route.path_prefix.clone(),
                });
            }
            let prefix = normalize_prefix(&route.path_prefix);
            // A route without hosts is keyed by the empty host: any host.
            let any = [String::new()];
            let hosts = if route.hosts.is_empty() {
                &any[..]
            } else {
                &route.hosts[..]
            };
            for host in hosts {
                if !route.hosts.is_empty() {
                    check_host(host).map_err(|reason| TableError::InvalidHost {
                        index,
                        service: route.service.clone(),
                        host: host.clone(),
                        reason,
                    })?;
                }
                let key = (host.to_ascii_lowercase(), prefix);
                if let Some(&first) = first_route.get(&key) {
                    return Err(TableError::Duplicate {
                        index,
                        first,
                        service: route.service.clone(),
                        host: shown_host(host.clone()),
                        prefix: route.path_prefix.clone(),
                    });
                }
                first_route.insert(key, index);
            }
        }
        Ok(())
    }
}

/// A host as an error names it: the empty host is a route's without hosts.
fn shown_host(host: String) -> String {
    if host.is_empty() {
        "(any host)".to_owned()
    } else {
        host
    }
}

/// The TLS setting fits the route's hosts.
fn check_tls(index: usize, route: &Route) -> Result<(), TableError> {
    let service = || route.service.clone();
    match &route.tls {
        Tls::Off => Ok(()),
        Tls::Local | Tls::Acme if route.hosts.is_empty() => Err(TableError::TlsWithoutHosts {
            index,
            service: service(),
            mode: if route.tls == Tls::Local {
                "local"
            } else {
                "acme"
            },
        }),
        Tls::Local => match route
            .hosts
            .iter()
            .find(|h| !crate::tls::is_local_name(h.strip_prefix("*.").unwrap_or(h)))
        {
            Some(host) => Err(TableError::LocalTlsHost {
                index,
                service: service(),
                host: host.clone(),
            }),
            None => Ok(()),
        },
        Tls::Acme => match route.hosts.iter().find(|h| h.starts_with("*.")) {
            Some(host) => Err(TableError::AcmeWildcard {
                index,
                service: service(),
                host: host.clone(),
            }),
            None => Ok(()),
        },
        Tls::Files(files) => {
            for (which, path) in [("cert", &files.cert), ("key", &files.key)] {
                if !path.is_absolute() {
                    return Err(TableError::RelativeCertPath {
                        index,
                        service: service(),
                        which,
                        path: path.clone(),
                    });
                }
            }
            Ok(())
        }
    }
}

/// A static route has no upstreams and an absolute root that names no
/// parent directory.
fn check_static(index: usize, route: &Route) -> Result<(), TableError> {
    let Some(site) = &route.static_site else {
        return Ok(());
    };
    if !route.upstreams.is_empty() {
        return Err(TableError::StaticWithUpstreams {
            index,
            service: route.service.clone(),
        });
    }
    let root = &site.root;
    if !root.is_absolute()
        || root
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(TableError::InvalidStaticRoot {
            index,
            service: route.service.clone(),
            root: root.clone(),
        });
    }
    Ok(())
}

fn valid_prefix(prefix: &str) -> bool {
    prefix.starts_with('/')
        && !prefix.contains(['?', '#'])
        && !prefix.chars().any(char::is_whitespace)
}

/// `/api/` and `/api` route the same requests; the trailing slash is dropped
/// (except for `/` itself) so that both forms are one key.
pub(crate) fn normalize_prefix(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// A host as routes name it: lowercase, no port, an optional leading `*.`.
fn check_host(host: &str) -> Result<(), &'static str> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() {
        return Err("empty name");
    }
    if name.contains('*') {
        return Err("a wildcard may only be the whole first label, as in `*.example.com`");
    }
    if name.starts_with('[') {
        return if name.ends_with(']') && !host.starts_with('*') {
            Ok(())
        } else {
            Err("an IPv6 address is written `[::1]`, with no port")
        };
    }
    if name.contains(':') {
        return Err("a route's host has no port: the proxy ignores the port of the Host header");
    }
    if name.split('.').any(str::is_empty) {
        return Err("empty label");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err("only letters, digits, `-`, `_` and `.` are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_minimal_route_takes_defaults() {
        let table: RouteTable = serde_json::from_str(
            r#"{"routes":[{"service":"web","upstreams":["127.0.0.1:3000"]}]}"#,
        )
        .expect("parses");
        assert_eq!(table.routes[0], Route::new("web", vec![addr(3000)]));
        assert_eq!(table.validate(), Ok(()));
    }

    #[test]
    fn balance_is_written_in_snake_case() {
        let route = Route::new("web", vec![]).balance(Balance::LeastConnections);
        let json = serde_json::to_value(&route).expect("serializes");
        assert_eq!(json["balance"], "least_connections");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let result: Result<RouteTable, _> =
            serde_json::from_str(r#"{"routes":[{"service":"web","https":true}]}"#);
        assert!(result.is_err());
    }

    #[test]
    fn hosts_must_be_names_without_ports() {
        for bad in [
            "example.com:80",
            "a.*.com",
            "*",
            "*.",
            "ex ample.com",
            "a..b",
        ] {
            let table = RouteTable {
                routes: vec![Route::new("web", vec![]).hosts([bad])],
            };
            assert!(
                matches!(table.validate(), Err(TableError::InvalidHost { .. })),
                "{bad} should be refused"
            );
        }
        for good in [
            "example.com",
            "*.example.com",
            "localhost",
            "Shop.Example.com",
            "[::1]",
        ] {
            let table = RouteTable {
                routes: vec![Route::new("web", vec![]).hosts([good])],
            };
            assert_eq!(table.validate(), Ok(()), "{good} should pass");
        }
    }

    #[test]
    fn prefixes_start_with_a_slash() {
        let table = RouteTable {
            routes: vec![Route::new("web", vec![]).path_prefix("api", false)],
        };
        assert!(matches!(
            table.validate(),
            Err(TableError::InvalidPrefix { .. })
        ));
    }

    #[test]
    fn the_same_host_and_prefix_twice_is_refused() {
        let table = RouteTable {
            routes: vec![
                Route::new("a", vec![])
                    .hosts(["example.com"])
                    .path_prefix("/api", false),
                Route::new("b", vec![])
                    .hosts(["EXAMPLE.com"])
                    .path_prefix("/api/", true),
            ],
        };
        assert_eq!(
            table.validate(),
            Err(TableError::Duplicate {
                index: 1,
                first: 0,
                service: "b".to_owned(),
                host: "EXAMPLE.com".to_owned(),
                prefix: "/api/".to_owned(),
            })
        );
    }

    #[test]
    fn tls_is_written_as_a_word_or_a_pair_of_files() {
        let table: RouteTable = serde_json::from_str(
            r#"{"routes":[
                {"service":"a","hosts":["a.localhost"],"tls":"local"},
                {"service":"b","hosts":["b.example.com"],"tls":"acme","redirect_https":true},
                {"service":"c","hosts":["c.example.com"],"tls":{"cert":"/c.pem","key":"/c.key"}},
                {"service":"d","hosts":["d.example.com"],"path_prefix":"/x"}
            ]}"#,
        )
        .expect("parses");
        assert_eq!(table.routes[0].tls, Tls::Local);
        assert_eq!(table.routes[1].tls, Tls::Acme);
        assert!(table.routes[1].redirect_https);
        assert_eq!(
            table.routes[2].tls,
            Tls::Files(CertFiles {
                cert: "/c.pem".into(),
                key: "/c.key".into()
            })
        );
        assert_eq!(table.routes[3].tls, Tls::Off, "old tables load as off");
        assert_eq!(table.validate(), Ok(()));
        let json = serde_json::to_value(&table).expect("serializes");
        assert_eq!(json["routes"][0]["tls"], "local");
        assert_eq!(json["routes"][2]["tls"]["cert"], "/c.pem");
        let back: RouteTable = serde_json::from_value(json).expect("round trips");
        assert_eq!(back, table);
    }

    #[test]
    fn tls_settings_must_fit_their_hosts() {
        let refused = |route: Route| {
            RouteTable {
                routes: vec![route],
            }
            .validate()
            .expect_err("refused")
        };
        assert!(matches!(
            refused(
                Route::new("a", vec![])
                    .hosts(["shop.example.com"])
                    .tls(Tls::Local)
            ),
            TableError::LocalTlsHost { .. }
        ));
        assert!(matches!(
            refused(Route::new("a", vec![]).tls(Tls::Acme)),
            TableError::TlsWithoutHosts { .. }
        ));
        assert!(matches!(
            refused(
                Route::new("a", vec![])
                    .hosts(["*.example.com"])
                    .tls(Tls::Acme)
            ),
            TableError::AcmeWildcard { .. }
        ));
        let relative = Tls::Files(CertFiles {
            cert: "site.pem".into(),
            key: "/site.key".into(),
        });
        let error = refused(
            Route::new("a", vec![])
                .hosts(["a.example.com"])
                .tls(relative),
        );
        assert!(error.to_string().contains("site.pem"), "{error}");
        let conflict = RouteTable {
            routes: vec![
                Route::new("a", vec![])
                    .hosts(["x.localhost"])
                    .tls(Tls::Local),
                Route::new("b", vec![])
                    .hosts(["X.localhost"])
                    .path_prefix("/api", false)
                    .tls(Tls::Acme),
            ],
        };
        assert!(matches!(
            conflict.validate(),
            Err(TableError::TlsConflict { .. })
        ));
    }

    #[test]
    fn a_static_route_names_an_absolute_root_and_no_upstreams() {
        let table: RouteTable = serde_json::from_str(
            r#"{"routes":[{"service":"docs","static":{"root":"/srv/docs","spa":true}}]}"#,
        )
        .expect("parses");
        assert_eq!(
            table.routes[0],
            Route::site("docs", StaticSite::new("/srv/docs").spa(true))
        );
        assert_eq!(table.validate(), Ok(()));
        let json = serde_json::to_value(&table.routes[0]).expect("serializes");
        assert_eq!(json["static"]["root"], "/srv/docs");
        let plain = serde_json::to_value(Route::new("web", vec![])).expect("serializes");
        assert!(plain.get("static").is_none(), "{plain}");

        for root in ["docs", "/srv/../etc", ""] {
            let table = RouteTable {
                routes: vec![Route::site("docs", StaticSite::new(root))],
            };
            assert!(
                matches!(table.validate(), Err(TableError::InvalidStaticRoot { .. })),
                "{root:?} should be refused"
            );
        }
        let mut both = Route::site("docs", StaticSite::new("/srv/docs"));
        both.upstreams = vec![addr(3000)];
        let table = RouteTable { routes: vec![both] };
        assert!(matches!(
            table.validate(),
            Err(TableError::StaticWithUpstreams { .. })
        ));
        let unknown: Result<RouteTable, _> = serde_json::from_str(
            r#"{"routes":[{"service":"docs","static":{"root":"/srv","listing":true}}]}"#,
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn two_catch_all_routes_collide() {
        let table = RouteTable {
            routes: vec![Route::new("a", vec![]), Route::new("b", vec![])],
        };
        assert!(matches!(
            table.validate(),
            Err(TableError::Duplicate { .. })
        ));
    }
}
