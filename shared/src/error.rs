//! The one error type of crm-sync, and its mapping to HTTP status codes and JSON error codes.

use std::time::Duration;

/// What went wrong, in terms a caller can act on. Messages never carry secret values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` names the offending field as the caller sent it.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    /// The `x-api-key` header is missing or wrong.
    #[error("missing or invalid API key (send it in the x-api-key header)")]
    Unauthorized,
    #[error("connection '{0}' does not exist")]
    ConnectionNotFound(String),
    /// The connection exists but cannot be used (unreadable secret, missing credential field).
    #[error("connection '{id}' is misconfigured: {message}")]
    ConnectionInvalid { id: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    /// Several CRM records match; nothing was changed.
    #[error("{message}")]
    Ambiguous { message: String, ids: Vec<String> },
    /// Another request is syncing the same record right now.
    #[error("a sync of this record is already in progress; retry in a few seconds")]
    SyncInProgress,
    /// The CRM refused the connection's credentials.
    #[error("the CRM rejected the connection's credentials: {0}")]
    CrmAuth(String),
    /// The CRM says the record already exists (create raced another writer).
    #[error("the CRM reports a duplicate: {message}")]
    CrmDuplicate {
        existing_id: Option<String>,
        message: String,
    },
    /// The CRM refused the data; `message` is the CRM's own.
    #[error("the CRM rejected the request: {message}")]
    CrmRejected { message: String },
    #[error("the CRM is rate limiting this connection")]
    RateLimited { retry_after: Option<Duration> },
    /// crm-sync's shared budget of the CRM account's requests has no token within the wait
    /// this request may take (`budget`): answered like the CRM's own 429, before asking it.
    #[error("the CRM account's request budget is spent for now; retry in {} s", retry_after.as_secs_f64().ceil().max(1.0))]
    BudgetExhausted { retry_after: Duration },
    /// The CRM answered 5xx, timed out or could not be reached.
    #[error("the CRM is unavailable: {0}")]
    CrmUnavailable(String),
    /// DynamoDB, Secrets Manager or the local stores failed.
    #[error("storage is unavailable: {0}")]
    Store(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// The `Idempotency-Key` was used before with another request body.
    #[error(
        "this Idempotency-Key was used with another request body; use a new key for a new request"
    )]
    IdempotencyKeyReused,
    /// The `batchId` was used before, for this connection, with another request body.
    #[error("this batchId was used with another request body; use a new batchId for a new batch")]
    BatchIdReused,
    /// The request body is over the operation's limit.
    #[error("the request body is over {limit_bytes} bytes; send fewer items per request")]
    PayloadTooLarge { limit_bytes: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Machine-readable code used in JSON error bodies and sync records.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Validation { .. } => "validation_failed",
            Error::Unauthorized => "unauthorized",
            Error::ConnectionNotFound(_) => "connection_not_found",
            Error::ConnectionInvalid { .. } => "connection_invalid",
            Error::NotFound(_) => "not_found",
            Error::Ambiguous { .. } => "ambiguous_match",
            Error::SyncInProgress => "sync_in_progress",
            Error::CrmAuth(_) => "crm_auth_failed",
            Error::CrmDuplicate { .. } => "crm_duplicate",
            Error::CrmRejected { .. } => "crm_rejected",
            Error::RateLimited { .. } | Error::BudgetExhausted { .. } => "rate_limited",
            Error::CrmUnavailable(_) => "crm_unavailable",
            Error::Store(_) => "store_unavailable",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::IdempotencyKeyReused | Error::BatchIdReused => "idempotency_key_reused",
            Error::PayloadTooLarge { .. } => "payload_too_large",
        }
    }

    /// HTTP status for this error. CRM-side faults are 502/503 (a gateway's upstream failed),
    /// except rate limiting, which is passed on as 429 with the CRM's wait.
    pub fn status(&self) -> u16 {
        match self {
            Error::Validation { .. } => 400,
            Error::Unauthorized => 401,
            Error::ConnectionNotFound(_) | Error::NotFound(_) => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::Ambiguous { .. } | Error::SyncInProgress | Error::CrmDuplicate { .. } => 409,
            Error::PayloadTooLarge { .. } => 413,
            Error::CrmRejected { .. } | Error::IdempotencyKeyReused | Error::BatchIdReused => 422,
            Error::ConnectionInvalid { .. } => 424,
            Error::RateLimited { .. } | Error::BudgetExhausted { .. } => 429,
            Error::CrmAuth(_) => 502,
            Error::CrmUnavailable(_) | Error::Store(_) => 503,
        }
    }

    /// The field a caller should fix, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Validation { field, .. } => Some(field),
            Error::ConnectionNotFound(_) => Some("connectionId"),
            Error::IdempotencyKeyReused => Some("Idempotency-Key"),
            Error::BatchIdReused => Some("batchId"),
            Error::PayloadTooLarge { .. } => Some("body"),
            _ => None,
        }
    }

    /// Whether trying the same work again later can succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::SyncInProgress
                | Error::RateLimited { .. }
                | Error::BudgetExhausted { .. }
                | Error::CrmUnavailable(_)
                | Error::Store(_)
        )
    }

    /// A CRM's refusal of one record's data (a bulk write answers these per record): the
    /// record's own sync may still write it (it matches, updates or reports what is wrong).
    pub fn is_record_refusal(&self) -> bool {
        matches!(
            self,
            Error::CrmRejected { .. } | Error::CrmDuplicate { .. } | Error::NotFound(_)
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after } => *retry_after,
            Error::BudgetExhausted { retry_after } => Some(*retry_after),
            // The sync holding the record usually finishes within a second or two.
            Error::SyncInProgress => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}
