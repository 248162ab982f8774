//! The route table: what the agent sends with `PUT /v1/routes`, what the proxy
//! persists to `routes.json`, and the checks a table must pass before it is
//! served. Plain data and pure functions; nothing here touches a socket.

use std::collections::HashMap;
use std::net::SocketAddr;

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
    /// Where the service listens. Empty: every request gets the 503 page.
    #[serde(default)]
    pub upstreams: Vec<SocketAddr>,
    #[serde(default)]
    pub balance: Balance,
    /// How the route's hosts get a certificate. Default `off`: plain HTTP.
    #[serde(default, skip_serializing_if = "TlsMode::is_off")]
    pub tls: TlsMode,
}

/// Where a route's certificate comes from: `"off"`, `"local"` (the local
/// CA), `"acme"` (ordered by the proxy), or `{"files":{"cert":…,"key":…}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    #[default]
    Off,
    Local,
    Acme,
    Files {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
}

impl TlsMode {
    pub fn is_off(&self) -> bool {
        *self == TlsMode::Off
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
            balance: Balance::default(),
            tls: TlsMode::Off,
        }
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

    pub fn tls(mut self, tls: TlsMode) -> Route {
        self.tls = tls;
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
}

impl RouteTable {
    /// Checks every route; the first problem found is returned.
    pub fn validate(&self) -> Result<(), TableError> {
        let mut first_route: HashMap<(String, &str), usize> = HashMap::new();
        for (index, route) in self.routes.iter().enumerate() {
            if route.service.trim().is_empty() {
                return Err(TableError::EmptyService { index });
            }
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
                        host: if host.is_empty() {
                            "(any host)".to_owned()
                        } else {
                            host.clone()
                        },
                        prefix: route.path_prefix.clone(),
                    });
                }
                first_route.insert(key, index);
            }
        }
        Ok(())
    }
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
            serde_json::from_str(r#"{"routes":[{"service":"web","tls":true}]}"#);
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
