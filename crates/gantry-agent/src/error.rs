//! What an operation of the agent could not do, as the domain says it: whose
//! fault it is, a stable code (`gantry_core::Code`), a message and a hint.
//! Only `api` turns one into an HTTP answer; nothing here knows HTTP.

use gantry_core::Code;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    /// The request is wrong: a name, a value, a mismatch.
    #[error("{message}")]
    Invalid {
        code: Code,
        message: String,
        hint: String,
    },
    /// The request conflicts with what the host holds or runs now.
    #[error("{message}")]
    Conflict {
        code: Code,
        message: String,
        hint: String,
    },
    /// What the request names is not on this host.
    #[error("{message}")]
    NotFound {
        code: Code,
        message: String,
        hint: String,
    },
    /// The request ended before all of it arrived (an upload cut short).
    #[error("{message}")]
    Incomplete {
        code: Code,
        message: String,
        hint: Option<String>,
    },
    /// The agent tried and failed.
    #[error("{message}")]
    Failed { code: Code, message: String },
}

impl AgentError {
    pub(crate) fn invalid(code: Code, message: impl Into<String>, hint: &str) -> Self {
        AgentError::Invalid {
            code,
            message: message.into(),
            hint: hint.to_owned(),
        }
    }

    pub(crate) fn conflict(code: Code, message: impl Into<String>, hint: &str) -> Self {
        AgentError::Conflict {
            code,
            message: message.into(),
            hint: hint.to_owned(),
        }
    }

    pub(crate) fn not_found(code: Code, message: impl Into<String>, hint: &str) -> Self {
        AgentError::NotFound {
            code,
            message: message.into(),
            hint: hint.to_owned(),
        }
    }

    pub(crate) fn failed(code: Code, message: impl Into<String>) -> Self {
        AgentError::Failed {
            code,
            message: message.into(),
        }
    }

    /// The store failed: `agent.store`, whatever the store's own reason.
    pub(crate) fn store(error: StoreError) -> Self {
        Self::failed(
            Code::AgentStore,
            format!("the agent's store failed: {error}"),
        )
    }

    pub(crate) fn code(&self) -> Code {
        match self {
            AgentError::Invalid { code, .. }
            | AgentError::Conflict { code, .. }
            | AgentError::NotFound { code, .. }
            | AgentError::Incomplete { code, .. }
            | AgentError::Failed { code, .. } => *code,
        }
    }

    pub(crate) fn hint(&self) -> Option<&str> {
        match self {
            AgentError::Invalid { hint, .. }
            | AgentError::Conflict { hint, .. }
            | AgentError::NotFound { hint, .. } => Some(hint),
            AgentError::Incomplete { hint, .. } => hint.as_deref(),
            AgentError::Failed { .. } => None,
        }
    }
}

impl From<StoreError> for AgentError {
    fn from(error: StoreError) -> Self {
        AgentError::store(error)
    }
}
