//! Connect sessions: what a connect link lets its holder do, until when, and the OAuth
//! authorization it has under way. The link carries a random token; only its hash is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::connection::{ConnectionId, ConnectionSettings, SecretString};
use crate::domain::CrmType;
use crate::store::sha256_hex;

/// 32 random bytes from the operating system, base64url without padding (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The token a connect link carries. It is the only way to a session: the store keeps its hash.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkToken(SecretString);

impl LinkToken {
    pub fn generate() -> Self {
        LinkToken(SecretString::new(random_token()))
    }

    /// A token as a link or cookie carries it; anything not shaped like one is no token.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = raw.len() == 43
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| LinkToken(SecretString::new(raw)))
    }

    pub fn session_id(&self) -> SessionId {
        SessionId(sha256_hex(self.0.expose().as_bytes()))
    }

    /// The value, for the link and the cookie that carry it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl std::fmt::Debug for LinkToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkToken([redacted])")
    }
}

/// The stored name of a session: the SHA-256 of its link token, which cannot be turned back into
/// the token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One connect link and what happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectSession {
    pub id: SessionId,
    /// The connection the link creates or replaces.
    pub connection_id: ConnectionId,
    /// The CRM the link's creator fixed; `None` lets the person choose.
    pub crm_type: Option<CrmType>,
    /// Settings the link's creator fixed; the page does not ask for them.
    #[serde(default)]
    pub settings: ConnectionSettings,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// When a connection was stored through the link; a used link opens nothing.
    pub used_at: Option<DateTime<Utc>>,
    /// The "Connect with …" under way, waiting for the CRM's callback.
    pub authorization: Option<PendingAuthorization>,
    /// Bumped on every write; writes are conditional on it.
    pub version: u64,
}

/// What a link can still do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Open,
    Expired,
    Used,
}

impl ConnectSession {
    pub fn state(&self, now: DateTime<Utc>) -> LinkState {
        if self.used_at.is_some() {
            LinkState::Used
        } else if now >= self.expires_at {
            LinkState::Expired
        } else {
            LinkState::Open
        }
    }
}

/// An authorization-code flow started from the page: the state and PKCE verifier it must be
/// finished with, and what the person chose before leaving for the CRM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingAuthorization {
    pub crm_type: CrmType,
    /// SHA-256 of the `state` sent to the CRM; the callback's `state` must hash to it.
    pub state_hash: String,
    /// The PKCE verifier (RFC 7636), for CRMs that take a code challenge.
    pub code_verifier: Option<SecretString>,
    /// The authorization server the person was sent to (login host, Zoho accounts server).
    pub authorization_server: String,
    /// Sent again with the code, as RFC 6749 section 4.1.3 asks.
    pub redirect_uri: String,
    /// The settings chosen on the page and fixed by the link, for the connection.
    pub settings: ConnectionSettings,
    pub started_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_43_character_base64url_and_only_their_hash_names_the_session() {
        let a = LinkToken::generate();
        let b = LinkToken::generate();
        assert_ne!(a.expose(), b.expose());
        assert!(LinkToken::parse(a.expose()).is_some());
        assert_eq!(
            a.session_id(),
            LinkToken::parse(a.expose()).unwrap().session_id()
        );
        assert_ne!(a.session_id().as_str(), a.expose());
        assert!(LinkToken::parse("short").is_none());
        assert!(LinkToken::parse(&format!("{}=", &a.expose()[..42])).is_none());
        assert_eq!(format!("{a:?}"), "LinkToken([redacted])");
    }
}
