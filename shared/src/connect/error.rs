//! What can go wrong in a connect flow, in terms the person at the page can act on. `http` maps
//! each to a status and a page, in one place.

use crate::domain::CrmType;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConnectError {
    /// No session has this link's token (mistyped, or removed long after it expired).
    #[error("this connect link is not valid")]
    LinkUnknown,
    #[error("this connect link has expired")]
    LinkExpired,
    #[error("this connect link was already used")]
    LinkUsed,
    /// The browser sent no session cookie: the link was not opened in this browser.
    #[error("this browser has no open connect link")]
    NoSession,
    /// A form posted from another site.
    #[error("the form did not come from the connect page")]
    ForeignOrigin,
    /// The callback's `state` is missing or is not the one this session sent.
    #[error("the sign-in response does not belong to this connect link")]
    StateMismatch,
    /// The "Connect with …" was started too long ago.
    #[error("the sign-in took too long")]
    AuthorizationExpired,
    /// The person declined at the CRM's consent page (or the CRM refused the request).
    #[error("{crm} answered {error}")]
    ConsentRefused {
        crm: CrmType,
        error: String,
        description: String,
    },
    /// The callback carries something crm-sync did not ask for (no code, an unknown server).
    #[error("the sign-in response is incomplete or altered: {0}")]
    TamperedCallback(String),
    /// The link names another CRM, or the CRM connects another way.
    #[error("{0}")]
    WrongCrm(String),
    /// No OAuth app is set up for this CRM on this service.
    #[error("{0} connections are not set up on this service yet")]
    NotConfigured(CrmType),
    /// A field the person typed is missing or malformed.
    #[error("{label}: {message}")]
    Invalid { label: String, message: String },
    /// The CRM refused the code or the credentials, or could not be reached.
    #[error("{crm} did not accept the connection: {error}")]
    Crm { crm: CrmType, error: Error },
    /// The stores failed.
    #[error("{0}")]
    Store(Error),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
}

impl ConnectError {
    pub fn invalid(label: impl Into<String>, message: impl Into<String>) -> Self {
        ConnectError::Invalid {
            label: label.into(),
            message: message.into(),
        }
    }

    /// A short code for logs (never a value the person typed).
    pub fn code(&self) -> &'static str {
        match self {
            ConnectError::LinkUnknown => "link_unknown",
            ConnectError::LinkExpired => "link_expired",
            ConnectError::LinkUsed => "link_used",
            ConnectError::NoSession => "no_session",
            ConnectError::ForeignOrigin => "foreign_origin",
            ConnectError::StateMismatch => "state_mismatch",
            ConnectError::AuthorizationExpired => "authorization_expired",
            ConnectError::ConsentRefused { .. } => "consent_refused",
            ConnectError::TamperedCallback(_) => "tampered_callback",
            ConnectError::WrongCrm(_) => "wrong_crm",
            ConnectError::NotConfigured(_) => "not_configured",
            ConnectError::Invalid { .. } => "invalid_input",
            ConnectError::Crm { .. } => "crm_refused",
            ConnectError::Store(_) => "store_unavailable",
            ConnectError::MethodNotAllowed(_) => "method_not_allowed",
        }
    }
}
