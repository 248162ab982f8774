//! Running the proxy out of file descriptors: the soft limit lowered to 0
//! for the whole process, and a client connection opened before, to ask
//! through while none is left. For tests in a binary of their own, since
//! the limit (and the proxy's log) is process-wide.

use std::net::SocketAddr;
use std::path::PathBuf;

use gantry_proxy::RouteTable;
use http_body_util::BodyExt as _;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tempfile::TempDir;

use super::{Body, TestProxy, empty};

/// A proxy serving a table and logging to a file, and a client connection
/// to it, open before the descriptors run out.
pub struct Starving {
    pub proxy: TestProxy,
    pub sender: SendRequest<Body>,
    log: PathBuf,
    _logs: TempDir,
}

impl Starving {
    pub async fn start(table: &RouteTable) -> Starving {
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("proxy.log");
        let proxy = TestProxy::start_with(tempfile::tempdir().unwrap(), |config| {
            config.log_file = Some((log.clone(), 1 << 20));
        });
        proxy.put_routes(table).await;
        // A host with no route proves the connection is served, and opens
        // nothing upstream.
        let mut sender = connection(proxy.addr).await;
        assert_eq!(
            ask(&mut sender, "nowhere.test").await.0,
            StatusCode::NOT_FOUND
        );
        Starving {
            proxy,
            sender,
            log,
            _logs: logs,
        }
    }

    /// What a GET for `host` gets while no descriptor is left.
    pub async fn ask_out_of_descriptors(
        &mut self,
        host: &str,
    ) -> (StatusCode, Option<String>, String) {
        let out = OutOfDescriptors::now();
        let answer = ask(&mut self.sender, host).await;
        drop(out);
        answer
    }

    /// The proxy's log so far.
    pub fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

/// No new descriptor for anyone in the process until dropped: the soft
/// limit is 0 (those open stay usable), then what it was. Filling the table
/// instead would race with descriptors other tasks close meanwhile.
pub struct OutOfDescriptors {
    limit: Rlimit,
}

impl OutOfDescriptors {
    pub fn now() -> OutOfDescriptors {
        let limit = getrlimit(Resource::Nofile);
        let none = Rlimit {
            current: Some(0),
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, none).unwrap();
        OutOfDescriptors { limit }
    }
}

impl Drop for OutOfDescriptors {
    fn drop(&mut self) {
        let _ = setrlimit(Resource::Nofile, self.limit);
    }
}

/// An HTTP/1.1 connection to `proxy`, open before the descriptors run out.
pub async fn connection(proxy: SocketAddr) -> SendRequest<Body> {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// A GET of `/` for `host` on a connection already open: status,
/// Retry-After and body text.
pub async fn ask(
    sender: &mut SendRequest<Body>,
    host: &str,
) -> (StatusCode, Option<String>, String) {
    let request = Request::get("/")
        .header("host", host)
        .body(empty())
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry_after,
        String::from_utf8_lossy(&body).into_owned(),
    )
}
