//! OAuth2 sessions for CRMs whose access tokens expire: refresh-token grants (Salesforce, Zoho),
//! client credentials (Dynamics 365 through Microsoft Entra ID) and the password grant with
//! rotating refresh tokens (SugarCRM).
//!
//! The connection stores the client's credentials (a refresh token, or a user's password), and
//! the last access token with its expiry and API host. A refresh is single-flight across concurrent functions: a lease in the
//! record store lets one invocation call the token endpoint and write the new token back to the
//! connection store, while the others wait and re-read the connection. Two refreshes racing would
//! waste the CRM's refresh budget (Zoho locks out over-refreshers) and, where refresh tokens
//! rotate, leave one invocation holding a revoked token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::Mutex;

use super::AdapterContext;
use super::http::{CrmResponse, Idempotency, status_error};
use crate::connection::{Connection, ConnectionId, SecretString};
use crate::error::{Error, Result};

/// How an access token is asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenGrant {
    /// `grant_type=refresh_token` with the stored refresh token, as a form (RFC 6749 section 6).
    RefreshToken,
    /// `grant_type=client_credentials` with `scope`, as a form (RFC 6749 section 4.4): no refresh
    /// token, a new access token each time.
    ClientCredentials { scope: String },
    /// SugarCRM's token endpoint, a JSON body naming the API `platform`: the refresh grant while a
    /// refresh token is stored and accepted (each grant rotates it), else the password grant.
    SugarPassword { platform: String },
}

impl TokenGrant {
    fn required_credentials(&self) -> &'static [&'static str] {
        match self {
            TokenGrant::RefreshToken => &["clientId", "clientSecret", "refreshToken"],
            TokenGrant::ClientCredentials { .. } => &["clientId", "clientSecret"],
            TokenGrant::SugarPassword { .. } => &["username", "password"],
        }
    }
}

/// Where a CRM's token endpoint is and how its answer names things.
#[derive(Debug, Clone)]
pub struct OAuthProvider {
    pub token_url: String,
    pub grant: TokenGrant,
    /// The response field that names the API host to use (`instance_url`, `api_domain`); `None`
    /// where the host is a setting the token answer does not repeat.
    pub api_base_field: Option<&'static str>,
    /// The connection setting the API host is kept under (`instanceUrl`, `apiDomain`).
    pub api_base_setting: &'static str,
    /// Used when the CRM's answer says nothing about the token's lifetime.
    pub default_lifetime: Option<Duration>,
}

/// Access token plus the API host it is valid for.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessGrant {
    pub access_token: SecretString,
    pub api_base: String,
}

const EXPIRES_AT_SETTING: &str = "accessTokenExpiresAt";
/// Tokens this close to expiry are refreshed before use rather than after a 401.
const EXPIRY_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
const LEASE_TTL: Duration = Duration::from_secs(20);
const WAIT_FOR_OTHER_REFRESH: Duration = Duration::from_secs(15);

pub struct OAuthSession {
    ctx: AdapterContext,
    connection_id: Option<ConnectionId>,
    provider: OAuthProvider,
    current: Mutex<Connection>,
}

impl OAuthSession {
    pub fn new(
        connection: &Connection,
        ctx: &AdapterContext,
        provider: OAuthProvider,
    ) -> Result<Self> {
        for required in provider.grant.required_credentials() {
            connection.credential(required)?;
        }
        Ok(OAuthSession {
            ctx: ctx.clone(),
            connection_id: connection.id.clone(),
            provider,
            current: Mutex::new(connection.clone()),
        })
    }

    /// A usable grant: the stored one unless it is missing or about to expire.
    pub async fn grant(&self) -> Result<AccessGrant> {
        let stale = {
            let current = self.current.lock().await;
            match usable_grant(&current, &self.provider) {
                Some(grant) => return Ok(grant),
                None => current.credentials.get("accessToken").cloned(),
            }
        };
        self.refresh(stale.as_ref()).await
    }

    /// After the CRM refused `rejected` (401): a grant another invocation refreshed meanwhile, or
    /// a fresh one.
    pub async fn refresh_after_rejection(&self, rejected: &AccessGrant) -> Result<AccessGrant> {
        self.refresh(Some(&rejected.access_token)).await
    }

    async fn refresh(&self, stale: Option<&SecretString>) -> Result<AccessGrant> {
        let Some(id) = self.connection_id.clone() else {
            // Inline credentials (test-connection): nothing to share or write back.
            let connection = self.current.lock().await.clone();
            return self.call_token_endpoint(connection).await;
        };
        let lease = format!("oauth-refresh#{id}");
        let owner = uuid::Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + WAIT_FOR_OTHER_REFRESH;
        loop {
            if let Some(grant) = self.refreshed_elsewhere(&id, stale).await? {
                return Ok(grant);
            }
            if self
                .ctx
                .records
                .try_acquire_lease(&lease, &owner, LEASE_TTL)
                .await?
            {
                // The previous holder may have finished between our read and our lease.
                let result = match self.refreshed_elsewhere(&id, stale).await {
                    Ok(Some(grant)) => Ok(grant),
                    Ok(None) => {
                        let connection = self.ctx.connections.get_fresh(&id).await?;
                        self.call_token_endpoint(connection).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = self.ctx.records.release_lease(&lease, &owner).await {
                    tracing::warn!(error = %e, "could not release the token refresh lease; it expires by itself");
                }
                return result;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::CrmUnavailable(
                    "another invocation is refreshing the CRM token; retry shortly".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The stored connection's grant, if it is usable and not the stale one.
    async fn refreshed_elsewhere(
        &self,
        id: &ConnectionId,
        stale: Option<&SecretString>,
    ) -> Result<Option<AccessGrant>> {
        // Past the container's cache: another container may have refreshed it.
        let stored = self.ctx.connections.get_fresh(id).await?;
        let Some(grant) = usable_grant(&stored, &self.provider) else {
            return Ok(None);
        };
        if stale == Some(&grant.access_token) {
            return Ok(None);
        }
        *self.current.lock().await = stored;
        Ok(Some(grant))
    }

    async fn call_token_endpoint(&self, mut connection: Connection) -> Result<AccessGrant> {
        let token = match &self.provider.grant {
            TokenGrant::RefreshToken => {
                let form = [
                    ("grant_type", "refresh_token".to_string()),
                    ("client_id", secret(&connection, "clientId")?),
                    ("client_secret", secret(&connection, "clientSecret")?),
                    ("refresh_token", secret(&connection, "refreshToken")?),
                ];
                self.post_form(&form).await?
            }
            TokenGrant::ClientCredentials { scope } => {
                let form = [
                    ("grant_type", "client_credentials".to_string()),
                    ("client_id", secret(&connection, "clientId")?),
                    ("client_secret", secret(&connection, "clientSecret")?),
                    ("scope", scope.clone()),
                ];
                self.post_form(&form).await?
            }
            TokenGrant::SugarPassword { platform } => {
                self.sugar_grant(&connection, platform).await?
            }
        };
        connection
            .credentials
            .insert("accessToken".into(), token.access_token.clone());
        if let Some(rotated) = token.refresh_token {
            connection
                .credentials
                .insert("refreshToken".into(), rotated);
        }
        let api_base = match token.api_base {
            Some(base) => base,
            None => connection
                .settings
                .extra_str(self.provider.api_base_setting)
                .unwrap_or_default()
                .to_string(),
        };
        connection.settings.extra.insert(
            self.provider.api_base_setting.into(),
            Value::String(api_base.clone()),
        );
        match token.lifetime.or(self.provider.default_lifetime) {
            Some(lifetime) => {
                let expires_at =
                    Utc::now() + chrono::Duration::from_std(lifetime).unwrap_or_default();
                connection.settings.extra.insert(
                    EXPIRES_AT_SETTING.into(),
                    Value::String(expires_at.to_rfc3339()),
                );
            }
            None => {
                connection.settings.extra.remove(EXPIRES_AT_SETTING);
            }
        }
        if let Some(id) = &self.connection_id {
            self.ctx.connections.put(id, &connection).await?;
            tracing::info!(connection_id = %id, "CRM access token refreshed and stored");
        }
        *self.current.lock().await = connection;
        Ok(AccessGrant {
            access_token: token.access_token,
            api_base,
        })
    }
}

impl OAuthSession {
    /// A token request as an `application/x-www-form-urlencoded` body. Never retried blindly: a
    /// refresh is not idempotent where refresh tokens rotate.
    async fn post_form(&self, form: &[(&str, String)]) -> Result<TokenResponse> {
        let url = self.provider.token_url.clone();
        let response = self
            .ctx
            .http
            // Token endpoints are not the CRM's API: its limit does not count them.
            .without_budget()
            .send(Idempotency::NotIdempotent, |client| {
                client.post(&url).form(form)
            })
            .await?;
        parse_token_response(&response, self.provider.api_base_field)
    }

    /// Sugar's JSON token request: the stored refresh token first (one use each; the answer
    /// carries its successor), the user's password when there is none or Sugar refuses it (it
    /// expired, or another login on this platform ended the session).
    async fn sugar_grant(&self, connection: &Connection, platform: &str) -> Result<TokenResponse> {
        let client_id = connection
            .credentials
            .get("clientId")
            .map_or("sugar", |c| c.expose())
            .to_string();
        let client_secret = connection
            .credentials
            .get("clientSecret")
            .map_or("", |c| c.expose())
            .to_string();
        let url = self.provider.token_url.clone();
        if let Some(refresh_token) = connection.credentials.get("refreshToken") {
            let body = serde_json::json!({
                "grant_type": "refresh_token", "refresh_token": refresh_token.expose(),
                "client_id": client_id, "client_secret": client_secret, "platform": platform,
            });
            let response = self
                .ctx
                .http
                .without_budget()
                .send(Idempotency::NotIdempotent, |client| {
                    client.post(&url).json(&body)
                })
                .await?;
            match parse_token_response(&response, self.provider.api_base_field) {
                Err(Error::CrmAuth(reason)) => {
                    tracing::info!(%reason, "the stored refresh token was refused; logging in again");
                }
                other => return other,
            }
        }
        let body = serde_json::json!({
            "grant_type": "password", "username": secret(connection, "username")?,
            "password": secret(connection, "password")?, "client_id": client_id,
            "client_secret": client_secret, "platform": platform,
        });
        let response = self
            .ctx
            .http
            // Token endpoints are not the CRM's API: its limit does not count them.
            .without_budget()
            .send(Idempotency::NotIdempotent, |client| {
                client.post(&url).json(&body)
            })
            .await?;
        parse_token_response(&response, self.provider.api_base_field)
    }
}

fn secret(connection: &Connection, name: &str) -> Result<String> {
    Ok(connection.credential(name)?.expose().to_string())
}

fn usable_grant(connection: &Connection, provider: &OAuthProvider) -> Option<AccessGrant> {
    let access_token = connection.credentials.get("accessToken")?.clone();
    let api_base = connection
        .settings
        .extra_str(provider.api_base_setting)
        .filter(|b| !b.is_empty())?
        .to_string();
    let expires_at = connection
        .settings
        .extra_str(EXPIRES_AT_SETTING)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    match expires_at {
        Some(at) if at - EXPIRY_MARGIN <= Utc::now() => None,
        _ => Some(AccessGrant {
            access_token,
            api_base,
        }),
    }
}

struct TokenResponse {
    access_token: SecretString,
    refresh_token: Option<SecretString>,
    api_base: Option<String>,
    lifetime: Option<Duration>,
}

fn parse_token_response(
    response: &CrmResponse,
    api_base_field: Option<&str>,
) -> Result<TokenResponse> {
    let body = &response.body;
    // OAuth errors are `{"error", "error_description"}` (Sugar: `error_message`); Zoho answers
    // some of them with 200.
    if let Some(error) = body.get("error").and_then(Value::as_str) {
        let description = body
            .get("error_description")
            .or_else(|| body.get("error_message"))
            .and_then(Value::as_str)
            .unwrap_or("");
        return Err(match response.status {
            429 => Error::RateLimited {
                retry_after: response.retry_after(),
            },
            500..=599 => Error::CrmUnavailable(format!("token endpoint: {error}")),
            _ => Error::CrmAuth(format!(
                "the token request was refused ({error}{}{description})",
                if description.is_empty() { "" } else { ": " }
            )),
        });
    }
    if !response.is_success() {
        return Err(status_error(
            response,
            format!("token endpoint answered HTTP {}", response.status),
        ));
    }
    let access_token = body
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::CrmAuth("the token endpoint answered without an access token".into())
        })?;
    let lifetime = body.get("expires_in").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    });
    Ok(TokenResponse {
        access_token: SecretString::new(access_token),
        refresh_token: body
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(SecretString::new),
        api_base: api_base_field
            .and_then(|field| body.get(field))
            .and_then(Value::as_str)
            .map(|b| b.trim_end_matches('/').to_string()),
        lifetime: lifetime.map(Duration::from_secs),
    })
}
