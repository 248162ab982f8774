//! A host as the use-cases see it: an agent that answers the `/v1` API.
//! `gantry-remote` implements it for this machine (a Unix socket) and, later,
//! for hosts over SSH; the use-cases never know which.

use std::path::Path;

use crate::agent_api::{
    AgentInfo, ApiError, DeployRequest, DeployResult, LogLine, ProxyAction, ProxyInfo, Release,
    RollbackRequest, ServiceSelector, Status,
};

/// Which log lines to read.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    pub service: Option<String>,
    /// Only lines at or after this Unix time in milliseconds.
    pub since_ms: Option<u64>,
    pub tail: Option<usize>,
    pub follow: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No agent answers.
    #[error("cannot reach the agent on {host}: {message}")]
    Unreachable {
        host: String,
        message: String,
        hint: String,
    },
    /// The agent answered with an error.
    #[error("{}", .error.message)]
    Api { status: u16, error: ApiError },
    /// The agent answered something that is not the API.
    #[error("the agent on {host} answered something unexpected: {message}")]
    Protocol { host: String, message: String },
}

pub trait Host {
    /// The host's name, as errors and reports show it.
    fn name(&self) -> &str;
    fn info(&self) -> Result<AgentInfo, HostError>;
    fn missing_blobs(&self, digests: &[String]) -> Result<Vec<String>, HostError>;
    fn upload_blob(&self, digest: &str, path: &Path) -> Result<(), HostError>;
    fn deploy(&self, request: &DeployRequest) -> Result<DeployResult, HostError>;
    fn rollback(&self, project: &str, request: &RollbackRequest)
    -> Result<DeployResult, HostError>;
    fn status(&self, project: &str) -> Result<Status, HostError>;
    fn releases(&self, project: &str) -> Result<Vec<Release>, HostError>;
    fn release(&self, project: &str, id: &str) -> Result<Release, HostError>;
    /// Calls `sink` with each line until it returns false or the lines end.
    fn logs(
        &self,
        project: &str,
        query: &LogQuery,
        sink: &mut dyn FnMut(LogLine) -> bool,
    ) -> Result<(), HostError>;
    fn stop(&self, project: &str, selector: &ServiceSelector) -> Result<Status, HostError>;
    fn restart(&self, project: &str, selector: &ServiceSelector) -> Result<Status, HostError>;
    /// Stops the agent; its services keep running.
    fn shutdown(&self) -> Result<(), HostError>;
    /// Restarts the host's reverse proxy by listener handoff, or stops it.
    fn proxy(&self, action: ProxyAction) -> Result<ProxyInfo, HostError>;
}
