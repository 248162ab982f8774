//! The agent API as a client sees it, over any transport: `Agent<T>`
//! implements `gantry_core::host::Host` once; `Local` and `Ssh` say how the
//! bytes travel and what a broken connection means.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gantry_core::agent_api::{
    AgentInfo, ApiErrorBody, BackupInfo, BackupList, BackupRestored, BlobList, BlobReceipt,
    DeployRequest, DeployResult, ExecSpec, ImageLoaded, ImageManifest, LockGrant, LockHolder,
    LockRelease, LockRequest, LockState, LogLine, ProxyAction, ProxyInfo, Release, RollbackRequest,
    ServiceSelector, Status,
};
use gantry_core::endpoint::{self, Endpoint, encode};
use gantry_core::host::{BackupRef, BlobPart, Host, HostError, LogQuery};
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{Client, ClientError};

/// What differs between ways of reaching an agent.
pub trait Transport {
    /// What a failed connection means, as an error for `host`.
    fn error(&self, host: &str, error: ClientError) -> HostError;
    /// Called once the agent accepted `shutdown`: wait until it is gone.
    fn stopped(&self) {}
    /// No agent listens any more: start it again, if this transport is the
    /// one that starts it, and say whether one answers now. A request that
    /// was refused this way never reached an agent, so it can be sent again.
    fn revive(&self, _host: &str) -> bool {
        false
    }
}

/// An agent reached over transport `T`.
pub struct Agent<T> {
    pub(crate) name: String,
    pub(crate) client: Client,
    pub(crate) transport: T,
}

impl<T: Transport> Agent<T> {
    fn call<R: DeserializeOwned>(
        &self,
        (method, path): (Method, String),
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<R, HostError> {
        let first = self
            .client
            .call(method.clone(), &path, body.clone(), content_type);
        let answer = match first {
            Err(ClientError::Connect(e))
                if nobody_listens(&e) && self.transport.revive(&self.name) =>
            {
                self.client.call(method, &path, body, content_type)
            }
            answer => answer,
        };
        let (status, bytes) = answer.map_err(|e| self.transport(e))?;
        self.decode(status, &bytes)
    }

    fn json<R: DeserializeOwned>(
        &self,
        route: (Method, String),
        body: &impl Serialize,
    ) -> Result<R, HostError> {
        let body = serde_json::to_vec(body).map_err(|e| HostError::Protocol {
            host: self.name.clone(),
            message: e.to_string(),
        })?;
        self.call(route, Some(body), "application/json")
    }

    fn transport(&self, error: ClientError) -> HostError {
        match error {
            // Whatever the transport, an impostor is refused the same way.
            ClientError::WrongPeer {
                socket,
                uid,
                expected,
            } => HostError::WrongPeer {
                socket,
                uid,
                expected,
            },
            other => self.transport.error(&self.name, other),
        }
    }

    fn decode<R: DeserializeOwned>(
        &self,
        status: StatusCode,
        bytes: &[u8],
    ) -> Result<R, HostError> {
        if status.is_success() {
            let bytes = if bytes.is_empty() {
                b"null".as_slice()
            } else {
                bytes
            };
            return serde_json::from_slice(bytes).map_err(|e| HostError::Protocol {
                host: self.name.clone(),
                message: e.to_string(),
            });
        }
        match serde_json::from_slice::<ApiErrorBody>(bytes) {
            Ok(body) => Err(HostError::api(status.as_u16(), body.error)),
            Err(_) => Err(HostError::Protocol {
                host: self.name.clone(),
                message: format!("{status}: {}", String::from_utf8_lossy(bytes)),
            }),
        }
    }
}

/// Whether a connection failed because nothing accepts on the agent's
/// socket (a killed agent leaves it; one that stopped removes it, and is
/// not started again): the request never reached an agent.
fn nobody_listens(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::ConnectionRefused
}

/// The method and path of `endpoint` with `params` in its path.
fn at(endpoint: Endpoint, params: &[&str]) -> (Method, String) {
    let method = match endpoint.method() {
        endpoint::Method::Get => Method::GET,
        endpoint::Method::Post => Method::POST,
        endpoint::Method::Put => Method::PUT,
        endpoint::Method::Delete => Method::DELETE,
    };
    (method, endpoint.url(params))
}

/// As [`at`], with a query string.
fn at_query(endpoint: Endpoint, params: &[&str], query: &str) -> (Method, String) {
    let (method, path) = at(endpoint, params);
    (method, format!("{path}?{query}"))
}

impl<T: Transport> Host for Agent<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> Result<AgentInfo, HostError> {
        self.call(at(Endpoint::Health, &[]), None, "application/json")
    }

    fn missing_blobs(&self, digests: &[String]) -> Result<BlobList, HostError> {
        self.json(
            at(Endpoint::MissingBlobs, &[]),
            &BlobList {
                digests: digests.to_vec(),
                ..BlobList::default()
            },
        )
    }

    fn image_blobs_missing(&self, image: &ImageManifest) -> Result<BlobList, HostError> {
        self.json(at(Endpoint::MissingImageBlobs, &[]), image)
    }

    fn load_image(&self, image: &ImageManifest) -> Result<ImageLoaded, HostError> {
        self.json(at(Endpoint::LoadImage, &[]), image)
    }

    fn upload_blob(&self, part: BlobPart<'_>, sent: &mut u64) -> Result<(), HostError> {
        let BlobPart {
            digest,
            path,
            offset,
        } = part;
        let unreadable = |e: std::io::Error| HostError::Protocol {
            host: self.name.clone(),
            message: format!("cannot read {}: {e}", path.display()),
        };
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        let size = file.metadata().map_err(unreadable)?.len();
        file.seek(SeekFrom::Start(offset)).map_err(unreadable)?;
        let (_, url) = match offset {
            0 => at(Endpoint::PutBlob, &[digest]),
            _ => at_query(Endpoint::PutBlob, &[digest], &format!("offset={offset}")),
        };
        let counter = Arc::new(AtomicU64::new(0));
        let answer = self
            .client
            .put_file(&url, file, size.saturating_sub(offset), counter.clone());
        *sent += counter.load(Ordering::Relaxed);
        let (status, bytes) = answer.map_err(|e| self.transport(e))?;
        let _: BlobReceipt = self.decode(status, &bytes)?;
        Ok(())
    }

    fn deploy(&self, request: &DeployRequest) -> Result<DeployResult, HostError> {
        self.json(at(Endpoint::Deploy, &[request.project.as_str()]), request)
    }

    fn rollback(
        &self,
        project: &str,
        request: &RollbackRequest,
    ) -> Result<DeployResult, HostError> {
        self.json(at(Endpoint::Rollback, &[project]), request)
    }

    fn status(&self, project: &str) -> Result<Status, HostError> {
        self.call(at(Endpoint::Status, &[project]), None, "application/json")
    }

    fn releases(&self, project: &str) -> Result<Vec<Release>, HostError> {
        self.call(at(Endpoint::Releases, &[project]), None, "application/json")
    }

    fn release(&self, project: &str, id: &str) -> Result<Release, HostError> {
        self.call(
            at(Endpoint::Release, &[project, id]),
            None,
            "application/json",
        )
    }

    fn compare(
        &self,
        project: &str,
        request: &gantry_core::agent_api::CompareRequest,
    ) -> Result<gantry_core::agent_api::Comparison, HostError> {
        self.json(at(Endpoint::Compare, &[project]), request)
    }

    fn logs(
        &self,
        project: &str,
        query: &LogQuery,
        sink: &mut dyn FnMut(LogLine) -> bool,
    ) -> Result<(), HostError> {
        let mut params = vec![format!("follow={}", query.follow)];
        if let Some(service) = &query.service {
            params.push(format!("service={}", encode(service)));
        }
        if let Some(since) = query.since_ms {
            params.push(format!("since_ms={since}"));
        }
        if let Some(tail) = query.tail {
            params.push(format!("tail={tail}"));
        }
        let (_, path) = at_query(Endpoint::Logs, &[project], &params.join("&"));
        let mut bad: Option<String> = None;
        let mut error_body = Vec::new();
        let status = self
            .client
            .stream_lines(
                &path,
                &mut |line| match serde_json::from_slice::<LogLine>(line) {
                    Ok(parsed) => sink(parsed),
                    Err(e) => {
                        error_body.extend_from_slice(line);
                        bad = Some(e.to_string());
                        false
                    }
                },
            )
            .map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return self
                .decode::<serde_json::Value>(status, &error_body)
                .map(drop);
        }
        match bad {
            Some(message) => Err(HostError::Protocol {
                host: self.name.clone(),
                message,
            }),
            None => Ok(()),
        }
    }

    fn stop(&self, project: &str, selector: &ServiceSelector) -> Result<Status, HostError> {
        self.json(at(Endpoint::Stop, &[project]), selector)
    }

    fn restart(&self, project: &str, selector: &ServiceSelector) -> Result<Status, HostError> {
        self.json(at(Endpoint::Restart, &[project]), selector)
    }

    fn lock(&self, project: &str, request: &LockRequest) -> Result<LockGrant, HostError> {
        self.json(at(Endpoint::TakeLock, &[project]), request)
    }

    fn lock_holder(
        &self,
        project: &str,
        environment: &str,
    ) -> Result<Option<LockHolder>, HostError> {
        let state: LockState = self.call(
            at_query(
                Endpoint::LockState,
                &[project],
                &format!("environment={}", encode(environment)),
            ),
            None,
            "application/json",
        )?;
        Ok(state.holder)
    }

    fn unlock(&self, project: &str, request: &LockRelease) -> Result<(), HostError> {
        let _: serde_json::Value = self.json(at(Endpoint::ReleaseLock, &[project]), request)?;
        Ok(())
    }

    fn proxy(&self, action: ProxyAction) -> Result<ProxyInfo, HostError> {
        let endpoint = match action {
            ProxyAction::Restart => Endpoint::ProxyRestart,
            ProxyAction::Stop => Endpoint::ProxyStop,
        };
        self.call(at(endpoint, &[]), None, "application/json")
    }

    fn exec_spec(&self, project: &str, service: &str) -> Result<ExecSpec, HostError> {
        self.call(
            at(Endpoint::ExecSpec, &[project, service]),
            None,
            "application/json",
        )
    }

    fn run_task(
        &self,
        project: &str,
        id: &str,
        task: &gantry_core::agent_api::Task,
    ) -> Result<gantry_core::agent_api::Phase, HostError> {
        self.json(at(Endpoint::RunTask, &[project, id]), task)
    }

    fn shutdown(&self) -> Result<(), HostError> {
        let (method, path) = at(Endpoint::Shutdown, &[]);
        let (status, bytes) = self
            .client
            .call(method, &path, None, "application/json")
            .map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return self.decode::<serde_json::Value>(status, &bytes).map(drop);
        }
        self.transport.stopped();
        Ok(())
    }

    fn take_backup(&self, project: &str, service: &str) -> Result<BackupInfo, HostError> {
        self.call(
            at(Endpoint::TakeBackup, &[project, service]),
            None,
            "application/json",
        )
    }

    fn backups(&self, project: &str, service: &str) -> Result<BackupList, HostError> {
        self.call(
            at(Endpoint::Backups, &[project, service]),
            None,
            "application/json",
        )
    }

    fn restore_backup(&self, backup: BackupRef<'_>) -> Result<BackupRestored, HostError> {
        let BackupRef {
            project,
            service,
            id,
        } = backup;
        self.call(
            at(Endpoint::RestoreBackup, &[project, service, id]),
            None,
            "application/json",
        )
    }

    fn download_backup(
        &self,
        backup: BackupRef<'_>,
        out: &mut dyn Write,
    ) -> Result<u64, HostError> {
        let BackupRef {
            project,
            service,
            id,
        } = backup;
        let (_, path) = at(Endpoint::DownloadBackup, &[project, service, id]);
        let (mut written, mut head, mut failed) = (0u64, Vec::new(), None);
        let status = self
            .client
            .stream_bytes(&path, &mut |chunk| {
                // An error's body is JSON: kept to read it, if it is one.
                if head.len() < 64 * 1024 {
                    head.extend_from_slice(chunk);
                }
                match out.write_all(chunk) {
                    Ok(()) => {
                        written += chunk.len() as u64;
                        true
                    }
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return self.decode::<serde_json::Value>(status, &head).map(|_| 0);
        }
        match failed {
            Some(e) => Err(HostError::Protocol {
                host: self.name.clone(),
                message: format!("cannot write the backup: {e}"),
            }),
            None => Ok(written),
        }
    }
}
