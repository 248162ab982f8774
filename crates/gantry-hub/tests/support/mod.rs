//! A real hub on a loopback port, over SQLite in a temporary directory or
//! over a throwaway PostgreSQL cluster, and a small HTTP client for it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use gantry_hub::model::{Permission, Role};
use gantry_hub::{KeySpec, Limits, Location, Store};
use gantry_testkit::postgres::PgCluster;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Defines one test per database from `async fn NAME(db: Db)`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn on_sqlite() {
                    super::$name(super::support::Db::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn on_postgres() {
                    super::$name(super::support::Db::Postgres).await;
                }
            }
        )*
    };
}

/// Polls `check` until it gives a value, for up to 20 s.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until the hub has reset `stream` ("connection reset by peer":
/// what a client that stopped reading sees once the hub gives up on it),
/// reading nothing from it, since reading would let the hub go on.
pub async fn reset_by_hub(stream: &tokio::net::TcpStream, what: &str) {
    eventually(what, || async {
        let error = stream.take_error().ok().flatten()?;
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset,
            "{what}: {error}"
        );
        Some(())
    })
    .await;
}

/// What keeps a database alive: a directory or a PostgreSQL server.
enum Keep {
    Dir(tempfile::TempDir),
    /// The cluster, and the hub's state directory (key file, attachments).
    Cluster(PgCluster, tempfile::TempDir),
}

pub struct Hub {
    pub addr: SocketAddr,
    /// The hub's database, to read behind its back.
    pub location: Location,
    pub store: Arc<Store>,
    /// Where the hub keeps attachments' contents.
    pub files: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    // Dropped last: the server stops before its database.
    _keep: Keep,
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The database location for `db`, and what keeps it.
fn database(db: Db) -> (Location, Keep) {
    match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            (Location::Sqlite(dir.path().join("hub.db")), Keep::Dir(dir))
        }
        Db::Postgres => {
            let cluster = PgCluster::start();
            let url = cluster.database("hub");
            let files = tempfile::tempdir().unwrap();
            (
                Location::parse(&url).unwrap(),
                Keep::Cluster(cluster, files),
            )
        }
    }
}

/// Runs one statement on the database behind the store's back; the rows
/// it answers, each as text columns.
pub fn raw(location: &Location, statement: &str) -> Vec<Vec<Option<String>>> {
    match location {
        Location::Sqlite(path) => {
            let c = rusqlite::Connection::open(path).unwrap();
            let mut s = c.prepare(statement).unwrap();
            let n = s.column_count();
            s.query_map([], |r| {
                Ok((0..n)
                    .map(|i| r.get::<_, Option<String>>(i).ok().flatten())
                    .collect())
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
        }
        Location::Postgres(url) => {
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
            client
                .simple_query(statement)
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_owned))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()
        }
    }
}

impl Hub {
    /// A hub serving `store`, whose database the caller keeps alive.
    pub async fn serve(store: Arc<Store>, location: Location, files: std::path::PathBuf) -> Hub {
        // The caller keeps the database; nothing to keep here.
        let keep = Keep::Dir(tempfile::tempdir().unwrap());
        let background = gantry_hub::Background::default();
        Hub::listen(store, location, files, keep, Limits::default(), background).await
    }

    pub async fn start(db: Db) -> Hub {
        Hub::with_limits(db, Limits::default()).await
    }

    pub async fn with_limits(db: Db, limits: Limits) -> Hub {
        Hub::with_background(db, limits, gantry_hub::Background::default()).await
    }

    /// A hub whose webhook deliveries and watch run on `background`'s
    /// schedule (tests make it milliseconds).
    pub async fn with_background(
        db: Db,
        limits: Limits,
        background: gantry_hub::Background,
    ) -> Hub {
        let (store, keep, files, location) = tokio::task::spawn_blocking(move || {
            let (location, keep) = database(db);
            let opened = location.clone();
            let (store, files) = match &keep {
                Keep::Dir(dir) => (
                    Store::open(&location).unwrap(),
                    dir.path().join("attachments"),
                ),
                Keep::Cluster(_, state) => (
                    Store::open_in(&location, state.path()).unwrap(),
                    state.path().join("attachments"),
                ),
            };
            store.add_product("SHOP", "The shop").unwrap();
            store.add_product("BLOG", "The blog").unwrap();
            (Arc::new(store), keep, files, opened)
        })
        .await
        .unwrap();
        Hub::listen(store, location, files, keep, limits, background).await
    }

    /// Serves `store` (of the database at `location`, attachments in
    /// `files`, `keep` holding what must live as long as the hub) on a new
    /// port of 127.0.0.1, until the hub is dropped.
    async fn listen(
        store: Arc<Store>,
        location: Location,
        files: std::path::PathBuf,
        keep: Keep,
        limits: Limits,
        background: gantry_hub::Background,
    ) -> Hub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(gantry_hub::serve_with(
            listener,
            store.clone(),
            limits,
            background,
            async move {
                let _ = stopped.await;
            },
        ));
        Hub {
            addr,
            location,
            store,
            files,
            stop: Some(stop),
            server: Some(server),
            _keep: keep,
        }
    }

    /// Stops the hub and waits until it has finished; its database stays.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// A new key; its secret.
    pub async fn key(&self, name: &str, permission: Permission, product: Option<&str>) -> String {
        self.key_with(KeySpec {
            name: name.to_owned(),
            role: Role::Agent,
            permission,
            product: product.map(str::to_owned),
            rate_per_minute: None,
            allow_from: Vec::new(),
        })
        .await
    }

    pub async fn key_with(&self, spec: KeySpec) -> String {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.create_key(&spec).unwrap().secret)
            .await
            .unwrap()
    }

    /// Sends `GET path` with `key` on a socket whose receive buffer is as
    /// small as the system allows, and reads nothing past the status line:
    /// a client that has stopped reading its answer. Tries again while the
    /// hub closes new connections unanswered (its caps still full of ones
    /// closing); panics unless the answer begins `200`.
    pub async fn stalled_get(&self, path: &str, key: &str) -> tokio::net::TcpStream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {key}\r\n\r\n");
        let (stream, head) = eventually("the hub to take a connection", || async {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.set_recv_buffer_size(4096).ok()?;
            let mut stream = socket.connect(self.addr).await.ok()?;
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut head = [0u8; 12];
            // Closed unanswered: a cap was full.
            stream.read_exact(&mut head).await.ok()?;
            Some((stream, head))
        })
        .await;
        assert_eq!(&head, b"HTTP/1.1 200", "GET {path}");
        stream
    }

    /// Waits until `GET /healthz` on a new connection is answered 200.
    pub async fn answers_health(&self, what: &str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        eventually(what, || async {
            let mut probe = tokio::net::TcpStream::connect(self.addr).await.ok()?;
            probe
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut answer = Vec::new();
            let read = probe.read_to_end(&mut answer);
            tokio::time::timeout(std::time::Duration::from_secs(5), read)
                .await
                .ok()?
                .ok()?;
            answer.starts_with(b"HTTP/1.1 200").then_some(())
        })
        .await;
    }

    pub fn client(&self, key: &str) -> Client {
        Client {
            addr: self.addr,
            key: Some(key.to_owned()),
        }
    }

    pub fn anonymous(&self) -> Client {
        Client {
            addr: self.addr,
            key: None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    key: Option<String>,
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn etag(&self) -> String {
        self.header("etag").expect("an ETag").to_owned()
    }

    /// The message of an error answer.
    pub fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The hint of an error answer.
    pub fn hint(&self) -> String {
        self.json()["error"]["hint"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The error code of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Client {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Answer {
        let body = body.map(|b| b.to_string());
        self.send_raw(method, path, headers, body.unwrap_or_default().into_bytes())
            .await
    }

    /// [`Client::send`] on the condition that the item is still at `etag`
    /// (`If-Match`), as a change of an item must be.
    pub async fn send_if_match(
        &self,
        method: &str,
        path: &str,
        etag: &str,
        body: Option<&Value>,
    ) -> Answer {
        self.send(method, path, &[("if-match", etag)], body).await
    }

    pub async fn send_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/json");
        }
        if let Some(key) = &self.key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Sends only a request's head, announcing `length` bytes of body, and
    /// reads the answer: what a client sees of a refusal made on the head
    /// alone. (Sending the body too races the hub's early answer and close,
    /// and the client's write then fails with a broken pipe.)
    pub async fn send_head(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        length: u64,
    ) -> Answer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\ncontent-length: {length}\r\n",
            self.addr
        );
        if let Some(key) = &self.key {
            head.push_str(&format!("authorization: Bearer {key}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut read = Vec::new();
        let mut buf = [0u8; 4096];
        let split = loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the hub closed before answering: {}",
                String::from_utf8_lossy(&read)
            );
            read.extend_from_slice(&buf[..n]);
            if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
        };
        let text = String::from_utf8_lossy(&read[..split]).into_owned();
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let mut headers = hyper::HeaderMap::new();
        for line in lines {
            let (name, value) = line.split_once(':').expect("a header line");
            headers.append(
                hyper::header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                hyper::header::HeaderValue::from_str(value.trim()).unwrap(),
            );
        }
        let wanted: usize = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let mut body = read[split + 4..].to_vec();
        while body.len() < wanted {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the hub closed in the middle of its answer");
            body.extend_from_slice(&buf[..n]);
        }
        Answer {
            status,
            headers,
            text: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[], None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send("POST", path, &[], Some(body)).await
    }

    /// Creates an item; panics unless the hub answers 201.
    pub async fn create(&self, body: &Value) -> Value {
        let answer = self.post("/api/agent/items", body).await;
        assert_eq!(answer.status, 201, "{}", answer.text);
        answer.json()
    }
}
