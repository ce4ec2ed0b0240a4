//! The OAuth2 side of an emulated CRM (Salesforce, Zoho, Dynamics 365, SugarCRM): a client, its
//! refresh tokens, and access tokens that expire. Each CRM emulator wraps it in its own token endpoint and answer
//! shape (RFC 6749 section 5: `access_token`, `expires_in`; errors `invalid_grant` and
//! `invalid_client`).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};

pub struct OAuthTokens {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_tokens: HashSet<String>,
    access_tokens: HashMap<String, DateTime<Utc>>,
    pub lifetime: Duration,
    /// Whether each refresh hands out a new refresh token and revokes the old one.
    pub rotate_refresh_tokens: bool,
    /// How many refreshes were granted.
    pub refreshes: u32,
}

/// A granted refresh.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: i64,
}

/// A refused refresh, as RFC 6749 words it.
#[derive(Debug, Clone)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    Valid,
    Expired,
    Unknown,
}

impl OAuthTokens {
    pub fn new(
        client_id: &str,
        client_secret: &str,
        refresh_token: &str,
        lifetime: Duration,
    ) -> Self {
        OAuthTokens {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            refresh_tokens: HashSet::from([refresh_token.to_string()]),
            access_tokens: HashMap::new(),
            lifetime,
            rotate_refresh_tokens: false,
            refreshes: 0,
        }
    }

    /// Hands out an access token directly (a connection that already holds one).
    pub fn issue(&mut self) -> String {
        let token = format!("access-{}", uuid::Uuid::new_v4().simple());
        self.access_tokens
            .insert(token.clone(), Utc::now() + self.lifetime);
        token
    }

    pub fn check(&self, token: &str) -> TokenCheck {
        match self.access_tokens.get(token) {
            Some(expires) if *expires > Utc::now() => TokenCheck::Valid,
            Some(_) => TokenCheck::Expired,
            None => TokenCheck::Unknown,
        }
    }

    /// Ends every access token's life now, as if an hour had passed.
    pub fn expire_all(&mut self) {
        let now = Utc::now() - Duration::seconds(1);
        self.access_tokens
            .values_mut()
            .for_each(|expires| *expires = now);
    }

    /// `grant_type=client_credentials` (RFC 6749 section 4.4): the client's id and secret and a
    /// scope; no refresh token is handed out.
    pub fn client_credentials(
        &mut self,
        form: &HashMap<String, String>,
        scope_ok: impl Fn(&str) -> bool,
    ) -> Result<Issued, OAuthError> {
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
        if field("grant_type") != "client_credentials" {
            return Err(OAuthError {
                status: 400,
                error: "unsupported_grant_type",
                description: "grant type not supported",
            });
        }
        if field("client_id") != self.client_id || field("client_secret") != self.client_secret {
            return Err(OAuthError {
                status: 401,
                error: "invalid_client",
                description: "invalid client credentials",
            });
        }
        if !scope_ok(field("scope")) {
            return Err(OAuthError {
                status: 400,
                error: "invalid_scope",
                description: "the provided value for the input parameter 'scope' is not valid",
            });
        }
        self.refreshes += 1;
        Ok(Issued {
            access_token: self.issue(),
            refresh_token: None,
            expires_in: self.lifetime.num_seconds(),
        })
    }

    /// A new session for a user who logged in (password grant): an access token and a refresh
    /// token of its own.
    pub fn open_session(&mut self) -> Issued {
        self.refreshes += 1;
        let refresh_token = format!("refresh-{}", uuid::Uuid::new_v4().simple());
        self.refresh_tokens.insert(refresh_token.clone());
        Issued {
            access_token: self.issue(),
            refresh_token: Some(refresh_token),
            expires_in: self.lifetime.num_seconds(),
        }
    }

    /// Ends every session: refresh tokens and access tokens are forgotten.
    pub fn revoke_all(&mut self) {
        self.refresh_tokens.clear();
        self.access_tokens.clear();
    }

    /// `grant_type=refresh_token` with client credentials in the form.
    pub fn refresh(&mut self, form: &HashMap<String, String>) -> Result<Issued, OAuthError> {
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
        if field("grant_type") != "refresh_token" {
            return Err(OAuthError {
                status: 400,
                error: "unsupported_grant_type",
                description: "grant type not supported",
            });
        }
        if field("client_id") != self.client_id || field("client_secret") != self.client_secret {
            return Err(OAuthError {
                status: 400,
                error: "invalid_client",
                description: "invalid client credentials",
            });
        }
        let refresh_token = field("refresh_token").to_string();
        if !self.refresh_tokens.contains(&refresh_token) {
            return Err(OAuthError {
                status: 400,
                error: "invalid_grant",
                description: "expired access/refresh token",
            });
        }
        self.refreshes += 1;
        let rotated = self.rotate_refresh_tokens.then(|| {
            self.refresh_tokens.remove(&refresh_token);
            let next = format!("refresh-{}", uuid::Uuid::new_v4().simple());
            self.refresh_tokens.insert(next.clone());
            next
        });
        Ok(Issued {
            access_token: self.issue(),
            refresh_token: rotated,
            expires_in: self.lifetime.num_seconds(),
        })
    }
}
