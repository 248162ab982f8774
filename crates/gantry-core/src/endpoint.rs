//! The agent API's endpoints: each one's method and path template, spelled
//! once for the agent's router, its OpenAPI document and the client. A
//! route changes here, in one line.

/// The HTTP methods the agent API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    /// The method as HTTP spells it (`GET`).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// One endpoint of the agent API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    OpenApi,
    Shutdown,
    ProxyRestart,
    ProxyStop,
    MissingBlobs,
    PutBlob,
    MissingImageBlobs,
    LoadImage,
    Deploy,
    Rollback,
    Status,
    Releases,
    Release,
    Logs,
    Stop,
    Restart,
    ExecSpec,
    RunTask,
    LockState,
    TakeLock,
    ReleaseLock,
    TakeBackup,
    Backups,
    DownloadBackup,
    RestoreBackup,
    Compare,
}

impl Endpoint {
    /// Every endpoint, in the order the OpenAPI document lists them.
    pub const ALL: [Endpoint; 27] = [
        Endpoint::Health,
        Endpoint::OpenApi,
        Endpoint::Shutdown,
        Endpoint::ProxyRestart,
        Endpoint::ProxyStop,
        Endpoint::MissingBlobs,
        Endpoint::PutBlob,
        Endpoint::MissingImageBlobs,
        Endpoint::LoadImage,
        Endpoint::Deploy,
        Endpoint::Rollback,
        Endpoint::Status,
        Endpoint::Releases,
        Endpoint::Release,
        Endpoint::Logs,
        Endpoint::Stop,
        Endpoint::Restart,
        Endpoint::ExecSpec,
        Endpoint::RunTask,
        Endpoint::LockState,
        Endpoint::TakeLock,
        Endpoint::ReleaseLock,
        Endpoint::TakeBackup,
        Endpoint::Backups,
        Endpoint::DownloadBackup,
        Endpoint::RestoreBackup,
        Endpoint::Compare,
    ];

    /// Its method and its path template, where `{name}` is a parameter.
    pub fn route(self) -> (Method, &'static str) {
        use Method::{Delete, Get, Post, Put};
        match self {
            Endpoint::Health => (Get, "/v1/health"),
            Endpoint::OpenApi => (Get, "/v1/openapi.json"),
            Endpoint::Shutdown => (Post, "/v1/shutdown"),
            Endpoint::ProxyRestart => (Post, "/v1/proxy/restart"),
            Endpoint::ProxyStop => (Post, "/v1/proxy/stop"),
            Endpoint::MissingBlobs => (Post, "/v1/blobs/missing"),
            Endpoint::PutBlob => (Put, "/v1/blobs/{digest}"),
            Endpoint::MissingImageBlobs => (Post, "/v1/images/missing"),
            Endpoint::LoadImage => (Post, "/v1/images"),
            Endpoint::Deploy => (Post, "/v1/projects/{project}/deploys"),
            Endpoint::Rollback => (Post, "/v1/projects/{project}/rollback"),
            Endpoint::Status => (Get, "/v1/projects/{project}/status"),
            Endpoint::Releases => (Get, "/v1/projects/{project}/releases"),
            Endpoint::Release => (Get, "/v1/projects/{project}/releases/{id}"),
            Endpoint::Logs => (Get, "/v1/projects/{project}/logs"),
            Endpoint::Stop => (Post, "/v1/projects/{project}/stop"),
            Endpoint::Restart => (Post, "/v1/projects/{project}/restart"),
            Endpoint::ExecSpec => (Get, "/v1/projects/{project}/services/{service}/exec"),
            Endpoint::RunTask => (Post, "/v1/projects/{project}/releases/{id}/tasks"),
            Endpoint::LockState => (Get, "/v1/projects/{project}/lock"),
            Endpoint::TakeLock => (Post, "/v1/projects/{project}/lock"),
            Endpoint::ReleaseLock => (Delete, "/v1/projects/{project}/lock"),
            Endpoint::TakeBackup => (Post, "/v1/projects/{project}/services/{service}/backups"),
            Endpoint::Backups => (Get, "/v1/projects/{project}/services/{service}/backups"),
            Endpoint::DownloadBackup => (
                Get,
                "/v1/projects/{project}/services/{service}/backups/{id}",
            ),
            Endpoint::RestoreBackup => (
                Post,
                "/v1/projects/{project}/services/{service}/backups/{id}/restore",
            ),
            Endpoint::Compare => (Post, "/v1/projects/{project}/compare"),
        }
    }

    pub fn method(self) -> Method {
        self.route().0
    }

    /// The path template, as the router matches it (`/v1/projects/{project}/status`).
    pub fn path(self) -> &'static str {
        self.route().1
    }

    /// The names of the path's parameters, in order.
    pub fn params(self) -> impl Iterator<Item = &'static str> {
        self.path()
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
    }

    /// The path with `values` in place of its parameters, in order, each
    /// percent-encoded.
    pub fn url(self, values: &[&str]) -> String {
        let mut values = values.iter();
        self.path()
            .split('/')
            .map(|seg| match seg.starts_with('{') {
                true => values.next().map(|v| encode(v)).unwrap_or_default(),
                false => seg.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// Percent-encodes a path segment or query value (names are simple, but be safe).
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_fills_the_parameters_in_order_percent_encoded() {
        assert_eq!(
            Endpoint::Release.url(&["shop", "r 1/2"]),
            "/v1/projects/shop/releases/r%201%2F2"
        );
        assert_eq!(Endpoint::Health.url(&[]), "/v1/health");
        assert_eq!(
            Endpoint::ExecSpec.params().collect::<Vec<_>>(),
            ["project", "service"]
        );
    }

    #[test]
    fn no_two_endpoints_share_a_method_and_path() {
        let mut seen = std::collections::BTreeSet::new();
        for endpoint in Endpoint::ALL {
            let (method, path) = endpoint.route();
            assert!(seen.insert((method.as_str(), path)), "{endpoint:?}");
        }
    }
}
