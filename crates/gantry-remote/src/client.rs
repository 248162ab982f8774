//! A small blocking HTTP/1.1 client over a Unix socket (hyper underneath),
//! for the agent API. Each request opens a connection: the socket is local and
//! the CLI makes a handful of calls.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens on the socket.
    Connect(std::io::Error),
    /// The connection broke or the answer was not HTTP.
    Http(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "{e}"),
            ClientError::Http(e) => f.write_str(e),
        }
    }
}

pub struct Client {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(socket: &Path) -> std::io::Result<Client> {
        Ok(Client {
            socket: socket.to_owned(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// Sends a request and reads the whole answer.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.runtime.block_on(async {
            let mut response = self.send(method, path, body, content_type).await?;
            let status = response.status();
            let body = response
                .body_mut()
                .collect()
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        })
    }

    /// Sends a request and hands each line of the answer to `line` as it
    /// arrives, until it returns false or the answer ends.
    pub fn stream_lines(
        &self,
        path: &str,
        line: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<StatusCode, ClientError> {
        self.runtime.block_on(async {
            let mut response = self
                .send(Method::GET, path, None, "application/json")
                .await?;
            let status = response.status();
            let mut pending: Vec<u8> = Vec::new();
            while let Some(frame) = response.body_mut().frame().await {
                let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                pending.extend_from_slice(data);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let rest = pending.split_off(end + 1);
                    if !line(&pending[..end]) {
                        return Ok(status);
                    }
                    pending = rest;
                }
            }
            if !pending.is_empty() {
                line(&pending);
            }
            Ok(status)
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(ClientError::Connect)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gantry-agent")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))
    }
}
