//! Every way a hub request or command can fail, with its stable code, its
//! HTTP status and a hint. Messages never hold a key, a password or a
//! database URL.

use gantry_core::error::Code;

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{message}")]
    Unauthorized { message: String },
    /// A login, or a password or code asked again, refused: its hint is
    /// about what the person typed, never about API keys, and the same
    /// whether the name exists or not.
    #[error("{message}")]
    LoginRefused { message: String, hint: &'static str },
    /// A forge's webhook delivery unsigned, or signed with no product's
    /// secret: the same code as a bad key, a hint of its own.
    #[error("{message}")]
    BadSignature { message: String },
    #[error("{message}")]
    Forbidden { message: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{message}")]
    Invalid {
        message: String,
        hint: Option<String>,
    },
    /// An attachment that would take its product over its storage quota.
    #[error("attachments of {product} would take {needed} bytes, over its quota of {quota} bytes")]
    QuotaExceeded {
        product: String,
        needed: u64,
        quota: u64,
    },
    /// A body sent as something other than JSON where only JSON is taken.
    #[error("this endpoint takes `Content-Type: application/json`, not {given}")]
    NotJson { given: String },
    #[error("the request body is over the hub's {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("{what} already exists")]
    Exists { what: String },
    #[error("{reference} is claimed by `{holder}` until {expires_at}")]
    Claimed {
        reference: String,
        holder: String,
        expires_at: String,
    },
    #[error("{reference} is {status}: a finished item cannot be claimed or voted on")]
    Finished { reference: String, status: String },
    #[error("If-Match names version {given} but the item is at version {current}")]
    Stale { given: String, current: i64 },
    #[error("this update needs an If-Match header with the item's ETag")]
    PreconditionRequired,
    #[error("the Idempotency-Key was used before with another request")]
    IdempotencyMismatch,
    #[error("too many requests from {who}; retry in {retry_after} s")]
    RateLimited { who: &'static str, retry_after: u64 },
    #[error("the request took longer than {seconds} s")]
    Timeout { seconds: u64 },
    #[error("the password was right; now the second factor: send `code`")]
    SecondFactorRequired,
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the hub failed inside: {0}")]
    Internal(String),
}

impl HubError {
    pub fn invalid(message: impl Into<String>) -> HubError {
        HubError::Invalid {
            message: message.into(),
            hint: None,
        }
    }

    pub fn not_found(what: impl Into<String>) -> HubError {
        HubError::NotFound { what: what.into() }
    }

    pub fn code(&self) -> Code {
        match self {
            HubError::Db(DbError::Location(_)) => Code::HubInvalid,
            HubError::Db(_) | HubError::Internal(_) => Code::HubStore,
            HubError::Io { .. } => Code::IoFailed,
            HubError::Unauthorized { .. }
            | HubError::LoginRefused { .. }
            | HubError::BadSignature { .. } => Code::HubUnauthorized,
            HubError::Forbidden { .. } => Code::HubForbidden,
            HubError::NotFound { .. } => Code::HubNotFound,
            HubError::Invalid { .. } | HubError::NotJson { .. } => Code::HubInvalid,
            HubError::TooLarge { .. } | HubError::QuotaExceeded { .. } => Code::HubTooLarge,
            HubError::Exists { .. } => Code::HubExists,
            HubError::Claimed { .. } => Code::HubClaimed,
            HubError::Finished { .. } => Code::HubItemFinished,
            HubError::Stale { .. } => Code::HubStale,
            HubError::PreconditionRequired => Code::HubPreconditionRequired,
            HubError::IdempotencyMismatch => Code::HubIdempotencyMismatch,
            HubError::RateLimited { .. } => Code::HubRateLimited,
            HubError::Unsupported { .. } => Code::HubUnsupported,
            HubError::SecondFactorRequired => Code::HubSecondFactor,
            HubError::Timeout { .. } => Code::HubTimeout,
        }
    }

    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            HubError::Db(DbError::Location(_)) => 400,
            HubError::Db(_) | HubError::Internal(_) | HubError::Io { .. } => 500,
            HubError::Unauthorized { .. }
            | HubError::LoginRefused { .. }
            | HubError::BadSignature { .. }
            | HubError::SecondFactorRequired => 401,
            HubError::Forbidden { .. } => 403,
            HubError::NotFound { .. } => 404,
            HubError::Invalid { .. } | HubError::IdempotencyMismatch => 422,
            HubError::TooLarge { .. } | HubError::QuotaExceeded { .. } => 413,
            HubError::NotJson { .. } => 415,
            HubError::Exists { .. } | HubError::Claimed { .. } | HubError::Finished { .. } => 409,
            HubError::Stale { .. } => 412,
            HubError::PreconditionRequired => 428,
            HubError::RateLimited { .. } => 429,
            HubError::Unsupported { .. } => 501,
            HubError::Timeout { .. } => 408,
        }
    }

    pub fn hint(&self) -> Option<String> {
        Some(match self {
            HubError::Invalid { hint, .. } => return hint.clone(),
            HubError::LoginRefused { hint, .. } => (*hint).to_owned(),
            HubError::Db(DbError::TooNew { .. }) => {
                "run the newer gantry that wrote this database".to_owned()
            }
            HubError::Db(DbError::Open(_)) => {
                "check that the database is reachable and --database is right".to_owned()
            }
            HubError::Unauthorized { .. } => {
                "send `Authorization: Bearer <key>` with a key from `gantry hub key create`"
                    .to_owned()
            }
            HubError::BadSignature { .. } => {
                "sign the raw body with HMAC-SHA256 and the product's forge secret (from \
                 `POST /api/admin/products/{key}/forge-secret`), sent as \
                 `X-Hub-Signature-256: sha256=<hex>`"
                    .to_owned()
            }
            HubError::Claimed { .. } => {
                "pick another item, or wait until the claim expires".to_owned()
            }
            HubError::Stale { .. } => {
                "GET the item again and send its new ETag in If-Match".to_owned()
            }
            HubError::PreconditionRequired => {
                "GET the item and send its ETag as `If-Match: \"<version>\"`".to_owned()
            }
            HubError::IdempotencyMismatch => {
                "use a new Idempotency-Key for a different request".to_owned()
            }
            HubError::RateLimited { .. } => "wait as long as Retry-After says".to_owned(),
            HubError::SecondFactorRequired => {
                "a 6-digit code from the authenticator app, or one of the recovery codes".to_owned()
            }
            HubError::TooLarge { .. } => "send a smaller body".to_owned(),
            HubError::QuotaExceeded { .. } => "delete attachments the product no longer needs \
                 (DELETE /api/agent/items/{id}/attachments/{attachment}), or start the hub \
                 with a larger --attachment-quota-mb"
                .to_owned(),
            HubError::NotJson { .. } => {
                "send the body as JSON with `Content-Type: application/json`".to_owned()
            }
            _ => return None,
        })
    }
}
