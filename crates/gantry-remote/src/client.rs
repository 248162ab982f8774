//! A small blocking HTTP/1.1 client for the agent API (hyper underneath),
//! over either of the two ways to reach an agent:
//!
//! - `Dial::Unix`: the agent's socket on this machine; each request opens a
//!   connection (the socket is local and the CLI makes a handful of calls);
//! - `Dial::Command`: a program whose stdin and stdout are the connection,
//!   `ssh HOST gantry agent connect` in practice. One such connection is kept
//!   open and reused (keep-alive) until it breaks; then the next request
//!   starts the program again. The program's stderr goes to a file, read when
//!   the connection fails: it says why (OpenSSH's own messages).

use std::ffi::OsString;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::trace::{self, Trace};

#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens on the socket, or the program could not start.
    Connect(std::io::Error),
    /// The connection broke or the answer was not HTTP.
    Http(String),
    /// The transport program ended before an answer came: its exit code
    /// (None: killed by a signal, or still running) and what it wrote on stderr.
    Exited { code: Option<i32>, stderr: String },
    /// The socket is served by `uid`, not by the `expected` user.
    WrongPeer {
        socket: PathBuf,
        uid: u32,
        expected: u32,
    },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "{e}"),
            ClientError::Http(e) => f.write_str(e),
            ClientError::WrongPeer {
                socket,
                uid,
                expected,
            } => write!(
                f,
                "{} is served by uid {uid}, not by uid {expected}",
                socket.display()
            ),
            ClientError::Exited { code, stderr } => {
                let last = stderr.trim().lines().last().unwrap_or_default();
                match code {
                    Some(code) => write!(f, "the transport exited with {code}: {last}"),
                    None => write!(f, "the transport stopped: {last}"),
                }
            }
        }
    }
}

/// How to reach the agent.
#[derive(Clone, Debug)]
pub enum Dial {
    /// A Unix socket; with `served_by`, only a server running as that uid
    /// (its peer credentials, checked on every connection) is talked to.
    Unix {
        socket: PathBuf,
        served_by: Option<u32>,
    },
    /// A program and its arguments; its stdin and stdout carry the HTTP.
    Command(Vec<OsString>),
}

/// A request body: bytes in memory, or a file streamed from disk.
type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// An open connection over a transport program.
struct Piped {
    sender: SendRequest<Body>,
    child: tokio::process::Child,
    stderr: std::fs::File,
    started: Instant,
}

pub struct Client {
    dial: Dial,
    runtime: tokio::runtime::Runtime,
    piped: Mutex<Option<Piped>>,
    trace: Trace,
}

impl Client {
    /// A client of the agent of `host` (the name its requests are traced under).
    pub fn new(host: &str, dial: Dial) -> std::io::Result<Client> {
        Ok(Client {
            dial,
            trace: Trace::new(host),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            piped: Mutex::new(None),
        })
    }

    pub fn unix(host: &str, socket: &Path, served_by: Option<u32>) -> std::io::Result<Client> {
        Client::new(
            host,
            Dial::Unix {
                socket: socket.to_owned(),
                served_by,
            },
        )
    }

    /// Sends a request and reads the whole answer.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let bytes = Bytes::from(body.unwrap_or_default());
        let body = Full::new(bytes.clone())
            .map_err(|never| match never {})
            .boxed_unsync();
        let shown = trace::Body::Bytes(&bytes);
        self.call_body(method, path, (body, shown), None, content_type)
    }

    /// Sends `length` bytes of `file` from its current position as the body
    /// of a PUT, read from disk as the connection takes them; reads the whole
    /// answer. `sent` counts the bytes handed to the connection, also when
    /// the upload breaks off.
    pub fn put_file(
        &self,
        path: &str,
        file: std::fs::File,
        length: u64,
        sent: Arc<AtomicU64>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let body = FileBody {
            file: tokio::fs::File::from_std(file),
            left: length,
            buffer: vec![0u8; CHUNK],
            sent,
        }
        .boxed_unsync();
        self.call_body(
            Method::PUT,
            path,
            (body, trace::Body::File(length)),
            Some(length),
            "application/octet-stream",
        )
    }

    /// Sends `body` (shown in the trace as its second half) and reads the
    /// whole answer.
    fn call_body(
        &self,
        method: Method,
        path: &str,
        (body, shown): (Body, trace::Body<'_>),
        length: Option<u64>,
        content_type: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.trace.request(&method, path, shown);
        let started = Instant::now();
        let answer = self.runtime.block_on(async {
            let mut response = self
                .send(method.clone(), path, body, length, content_type)
                .await?;
            let status = response.status();
            let body = match response.body_mut().collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => return Err(self.broken(e.to_string()).await),
            };
            Ok((status, body))
        });
        let traced = match &answer {
            Ok((status, body)) => Ok((*status, trace::Body::Bytes(body))),
            Err(e) => Err(e),
        };
        self.trace.answered(&method, path, started, traced);
        answer
    }

    /// Sends a request and hands each line of the answer to `line` as it
    /// arrives, until it returns false or the answer ends.
    pub fn stream_lines(
        &self,
        path: &str,
        line: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<StatusCode, ClientError> {
        self.trace
            .request(&Method::GET, path, trace::Body::Bytes(&[]));
        let started = Instant::now();
        let answer = self.stream(path, line);
        let traced = match &answer {
            Ok(status) => Ok((*status, trace::Body::Stream)),
            Err(e) => Err(e),
        };
        self.trace.answered(&Method::GET, path, started, traced);
        answer
    }

    fn stream(
        &self,
        path: &str,
        line: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<StatusCode, ClientError> {
        let mut pending: Vec<u8> = Vec::new();
        let status = self.chunks(path, &mut |data| {
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let rest = pending.split_off(end + 1);
                if !line(&pending[..end]) {
                    return false;
                }
                pending = rest;
            }
            true
        })?;
        if !pending.is_empty() {
            line(&pending);
        }
        Ok(status)
    }

    /// A GET whose body is handed to `chunk` as it arrives, until it
    /// returns false or the body ends: the answer's status.
    pub fn stream_bytes(
        &self,
        path: &str,
        chunk: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<StatusCode, ClientError> {
        self.trace
            .request(&Method::GET, path, trace::Body::Bytes(&[]));
        let started = Instant::now();
        let answer = self.chunks(path, chunk);
        let traced = match &answer {
            Ok(status) => Ok((*status, trace::Body::Stream)),
            Err(e) => Err(e),
        };
        self.trace.answered(&Method::GET, path, started, traced);
        answer
    }

    fn chunks(
        &self,
        path: &str,
        chunk: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<StatusCode, ClientError> {
        self.runtime.block_on(async {
            let empty = Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync();
            let mut response = self
                .send(Method::GET, path, empty, None, "application/json")
                .await?;
            let status = response.status();
            while let Some(frame) = response.body_mut().frame().await {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => return Err(self.broken(e.to_string()).await),
                };
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                if !chunk(data) {
                    // The rest of a stream nobody reads: do not reuse the connection.
                    self.drop_piped();
                    return Ok(status);
                }
            }
            Ok(status)
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        length: Option<u64>,
        content_type: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gantry-agent")
            .header("content-type", content_type);
        // A streamed body says its length up front, so an agent can tell a
        // body cut off halfway from a whole one.
        if let Some(length) = length {
            request = request.header("content-length", length);
        }
        let request = request
            .body(body)
            .map_err(|e| ClientError::Http(e.to_string()))?;
        match &self.dial {
            Dial::Unix { socket, served_by } => {
                let stream = UnixStream::connect(socket)
                    .await
                    .map_err(ClientError::Connect)?;
                if let Some(expected) = served_by {
                    check_peer(&stream, socket, *expected)?;
                }
                let mut sender = handshake(TokioIo::new(stream)).await?;
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| ClientError::Http(e.to_string()))
            }
            Dial::Command(argv) => self.send_piped(argv, request).await,
        }
    }

    async fn send_piped(
        &self,
        argv: &[OsString],
        request: Request<Body>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let reusable = self.take_piped().filter(|p| !p.sender.is_closed());
        let mut piped = match reusable {
            Some(piped) => piped,
            None => spawn(argv, &self.trace).await?,
        };
        if piped.sender.ready().await.is_err() {
            self.trace.connection_ended(piped.started, "was closed");
            piped = spawn(argv, &self.trace).await?;
        }
        match piped.sender.send_request(request).await {
            Ok(response) => {
                *self.lock() = Some(piped);
                Ok(response)
            }
            Err(e) => Err(exited(piped, e.to_string(), &self.trace).await),
        }
    }

    /// The connection broke mid-answer: say why, from the transport's exit.
    async fn broken(&self, message: String) -> ClientError {
        match self.take_piped() {
            Some(piped) => exited(piped, message, &self.trace).await,
            None => ClientError::Http(message),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Piped>> {
        self.piped.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_piped(&self) -> Option<Piped> {
        self.lock().take()
    }

    fn drop_piped(&self) {
        if let Some(mut piped) = self.take_piped() {
            let _ = piped.child.start_kill();
            self.trace.connection_ended(piped.started, "was stopped");
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Closing stdin ends `gantry agent connect`; the ssh client follows.
        if let Some(piped) = self.lock().take() {
            drop(piped.sender);
            let mut child = piped.child;
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), child.wait()).await
            });
            let _ = child.start_kill();
            self.trace.connection_ended(piped.started, "was closed");
        }
    }
}

/// Whoever listens on `socket` runs as `expected`: a socket another user
/// put there is not the agent.
fn check_peer(stream: &UnixStream, socket: &Path, expected: u32) -> Result<(), ClientError> {
    let uid = stream.peer_cred().map_err(ClientError::Connect)?.uid();
    if uid == expected {
        return Ok(());
    }
    Err(ClientError::WrongPeer {
        socket: socket.to_owned(),
        uid,
        expected,
    })
}

async fn handshake<T>(io: T) -> Result<SendRequest<Body>, ClientError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn spawn(argv: &[OsString], trace: &Trace) -> Result<Piped, ClientError> {
    trace.connection_started(argv);
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| ClientError::Connect(std::io::Error::other("no transport program given")))?;
    // A file, not a pipe: an OpenSSH master started with ControlPersist keeps
    // the stderr it inherited open for as long as it lives.
    let stderr = tempfile::tempfile().map_err(ClientError::Connect)?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr.try_clone().map_err(ClientError::Connect)?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            ClientError::Connect(std::io::Error::new(
                e.kind(),
                format!("cannot run {}: {e}", program.to_string_lossy()),
            ))
        })?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(ClientError::Connect(std::io::Error::other(
            "the transport's pipes were not opened",
        )));
    };
    let io = TokioIo::new(tokio::io::join(stdout, stdin));
    let sender = handshake(io).await?;
    Ok(Piped {
        sender,
        child,
        stderr,
        started: Instant::now(),
    })
}

/// The transport failed: wait briefly for it to exit and read what it said.
async fn exited(mut piped: Piped, message: String, trace: &Trace) -> ClientError {
    drop(piped.sender);
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        match piped.child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                let _ = piped.child.start_kill();
                break None;
            }
        }
    };
    let how = match code {
        Some(code) => format!("ended with exit {code}"),
        None => "ended".to_owned(),
    };
    trace.connection_ended(piped.started, &how);
    let mut stderr = String::new();
    let _ = piped.stderr.rewind();
    let _ = piped.stderr.read_to_string(&mut stderr);
    if stderr.trim().is_empty() && code.is_none() {
        return ClientError::Http(message);
    }
    ClientError::Exited { code, stderr }
}

/// The size of the pieces a file is read and sent in.
const CHUNK: usize = 256 * 1024;

/// A file's next `left` bytes as a request body, read as hyper asks.
struct FileBody {
    file: tokio::fs::File,
    left: u64,
    buffer: Vec<u8>,
    sent: Arc<AtomicU64>,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.left).map_or(CHUNK, |left| left.min(CHUNK));
        let mut buffer = tokio::io::ReadBuf::new(&mut this.buffer[..want]);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut this.file), cx, &mut buffer) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) if buffer.filled().is_empty() => {
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file became shorter while it was being sent",
                ))))
            }
            Poll::Ready(Ok(())) => {
                let data = Bytes::copy_from_slice(buffer.filled());
                this.left -= data.len() as u64;
                this.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
