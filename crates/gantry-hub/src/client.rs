//! A blocking client of a hub's agent API, for gantry itself: it files
//! the bugs of failed deploys (`gantry_core::incident::Tracker`). Its own
//! small runtime per client; call it off any async runtime. The key is
//! sent, never shown: errors name the hub's answer, not the request.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};

use gantry_core::incident::{Bug, Tracker};

use crate::webhooks::target;

pub struct HubClient {
    base: String,
    key: String,
    timeout: std::time::Duration,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The most of an answer read.
const ANSWER_MAX: usize = 1024 * 1024;

impl HubClient {
    /// A client of the hub at `url` (`https://hub.example.com`) with an
    /// API key (`ghk_...`).
    pub fn new(url: &str, key: String) -> HubClient {
        HubClient {
            base: url.trim_end_matches('/').to_owned(),
            key,
            timeout: std::time::Duration::from_secs(20),
        }
    }

    /// One request; the answer's status and JSON body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        runtime.block_on(async {
            tokio::time::timeout(self.timeout, self.send(method, path, body))
                .await
                .map_err(|_| {
                    format!(
                        "the hub at {} did not answer within {} s",
                        self.base,
                        self.timeout.as_secs()
                    )
                })?
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.base);
        let target = target::parse(&url).map_err(|e| e.to_string())?;
        // The project's own hub: often on its own network, so internal
        // addresses are fine here.
        let stream = target::connect(&target, true).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake with {}: {e}", self.base))?;
        let driver = tokio::spawn(connection);
        let host = match (target.https, target.port) {
            (true, 443) | (false, 80) => target.host.clone(),
            (_, port) => format!("{}:{port}", target.host),
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(target.path.as_str())
            .header("host", host)
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .header("user-agent", concat!("gantry/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("the request to {} failed: {e}", self.base))?;
        let status = response.status().as_u16();
        let bytes = http_body_util::Limited::new(response.into_body(), ANSWER_MAX)
            .collect()
            .await
            .map_err(|e| format!("cannot read the hub's answer: {e}"))?
            .to_bytes();
        driver.abort();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    fn expect(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        wanted: u16,
    ) -> Result<Value, String> {
        let (status, value) = self.request(method, path, body)?;
        if status == wanted {
            return Ok(value);
        }
        let message = value["error"]["message"].as_str().unwrap_or("no message");
        Err(format!(
            "the hub answered {status} to {method} {path}: {message}"
        ))
    }
}

fn reference(value: &Value) -> Result<String, String> {
    value["reference"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "the hub's answer has no item reference".to_owned())
}

impl Tracker for HubClient {
    fn open_with_label(&self, label: &str) -> Result<Option<String>, String> {
        let path = format!("/api/agent/items?label={label}&status=open,in_progress&limit=1");
        let page = self.expect("GET", &path, None, 200)?;
        page["items"]
            .as_array()
            .and_then(|items| items.first())
            .map(reference)
            .transpose()
    }

    fn file_bug(&self, bug: &Bug) -> Result<String, String> {
        let mut body = json!({
            "type": "bug",
            "title": bug.title,
            "description": bug.description,
            "priority": "high",
            "source": "auto_detected",
            "labels": [{"name": bug.label, "color": "#b91c1c"}],
            "environment": bug.environment,
            "affected_version": bug.affected_version,
        });
        if let Some(product) = &bug.product {
            body["product"] = json!(product);
        }
        reference(&self.expect("POST", "/api/agent/items", Some(&body), 201)?)
    }

    fn comment(&self, reference: &str, body: &str) -> Result<(), String> {
        let path = format!("/api/agent/items/{reference}/comments");
        self.expect("POST", &path, Some(&json!({ "body": body })), 201)
            .map(drop)
    }

    fn shipped(&self, version: &str, commits: &[String]) -> Result<Vec<String>, String> {
        let body = json!({"version": version, "commits": commits});
        let answer = self.expect("POST", "/api/agent/shipped", Some(&body), 200)?;
        Ok(answer["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}
