//! The connect flow's steps, independent of HTTP: make a link, open it, start and finish a CRM's
//! authorization, or check typed credentials; then test the connection and store it, once.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::ConnectService;
use super::authorization::{AuthorizationServer, zoho_data_center_of};
use super::error::ConnectError;
use super::fields::{InputKind, connects_by_authorization, crm_name, fields};
use super::session::{ConnectSession, LinkState, LinkToken, PendingAuthorization, random_token};
use crate::connection::{Connection, ConnectionId, ConnectionSettings, SecretString};
use crate::crm::{self, oauth, zoho};
use crate::domain::CrmType;
use crate::error::Error;
use crate::store::{WriteOutcome, sha256_hex};

/// A form's fields (the first value of each name) or a callback's query.
pub type Form = BTreeMap<String, String>;

/// Settings an OAuth authorization decides: the hosts it happened at and the token's API host
/// and expiry. A reconnect replaces them; it keeps every other setting the connection had.
const AUTHORIZATION_SETTINGS: &[&str] = &[
    "loginUrl",
    "instanceUrl",
    "dataCenter",
    "accountsUrl",
    "apiDomain",
    "accessTokenExpiresAt",
];

/// A link made for a connection.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedLink {
    /// The page with the link's token; works once, until `expires_at`.
    pub connect_url: String,
    pub connection_id: ConnectionId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crm_type: Option<CrmType>,
    pub expires_at: DateTime<Utc>,
}

/// A connection stored through a link.
#[derive(Debug, Clone, PartialEq)]
pub struct Connected {
    pub connection_id: ConnectionId,
    pub crm_type: CrmType,
    /// The CRM account, as `test-connection` names it.
    pub account: String,
    pub warnings: Vec<String>,
    /// It replaced the credentials of a connection of the same id.
    pub reconnected: bool,
}

impl ConnectService {
    /// `POST connect-sessions` and `crm-sync connect-link`: a new single-use link for a
    /// connection id, optionally fixing its CRM and settings.
    pub async fn create_link(&self, body: &Value, page_url: &str) -> Result<CreatedLink, Error> {
        let object = body
            .as_object()
            .ok_or_else(|| Error::validation("body", "must be a JSON object"))?;
        let connection_id = match object.get("connectionId") {
            Some(Value::String(id)) => ConnectionId::parse(id)?,
            _ => {
                return Err(Error::validation(
                    "connectionId",
                    "is required: the id the connection will have",
                ));
            }
        };
        let crm_type = match object.get("crmType") {
            None | Some(Value::Null) => None,
            Some(Value::String(crm)) => Some(
                crm.parse::<CrmType>()
                    .map_err(|m| Error::validation("crmType", m))?,
            ),
            Some(_) => return Err(Error::validation("crmType", "must be a string")),
        };
        let settings: ConnectionSettings = match object.get("settings") {
            None | Some(Value::Null) => ConnectionSettings::default(),
            Some(value @ Value::Object(_)) => {
                serde_json::from_value(value.clone()).map_err(|e| {
                    Error::validation("settings", format!("is not valid connection settings: {e}"))
                })?
            }
            Some(_) => return Err(Error::validation("settings", "must be an object")),
        };
        settings.validation_defaults()?;
        let max_minutes = self.config.max_link_ttl.as_secs() / 60;
        let lifetime = match object.get("expiresInMinutes") {
            None | Some(Value::Null) => self.config.link_ttl,
            Some(value) => match crate::domain::whole_number(value)
                .and_then(|m| u64::try_from(m).ok())
                .filter(|m| (1..=max_minutes).contains(m))
            {
                Some(minutes) => std::time::Duration::from_secs(60 * minutes),
                None => {
                    return Err(Error::validation(
                        "expiresInMinutes",
                        format!("must be a whole number of minutes from 1 to {max_minutes}"),
                    ));
                }
            },
        };
        let token = LinkToken::generate();
        let now = Utc::now();
        let session = ConnectSession {
            id: token.session_id(),
            connection_id: connection_id.clone(),
            crm_type,
            settings,
            created_at: now,
            expires_at: now + chrono::Duration::from_std(lifetime).unwrap_or_default(),
            used_at: None,
            authorization: None,
            version: 1,
        };
        if self.sessions.put(&session, None).await? == WriteOutcome::Conflict {
            return Err(Error::Store(
                "a connect session with this token exists".into(),
            ));
        }
        tracing::info!(connection_id = %connection_id, expires_at = %session.expires_at, "connect link created");
        let mut url = url::Url::parse(page_url)
            .map_err(|e| Error::Store(format!("the connect page URL is not a URL: {e}")))?;
        url.query_pairs_mut().append_pair("session", token.expose());
        Ok(CreatedLink {
            connect_url: url.into(),
            connection_id,
            crm_type,
            expires_at: session.expires_at,
        })
    }

    /// The session of a link token, if the link can still be used.
    pub async fn open(&self, token: &LinkToken) -> Result<ConnectSession, ConnectError> {
        let session = self
            .sessions
            .get(&token.session_id())
            .await
            .map_err(ConnectError::Store)?
            .ok_or(ConnectError::LinkUnknown)?;
        match session.state(Utc::now()) {
            LinkState::Open => Ok(session),
            LinkState::Expired => Err(ConnectError::LinkExpired),
            LinkState::Used => Err(ConnectError::LinkUsed),
        }
    }

    /// "Connect with …": records a state and PKCE verifier in the session and answers where to
    /// send the browser.
    pub async fn start_authorization(
        &self,
        mut session: ConnectSession,
        form: &Form,
        redirect_uri: &str,
    ) -> Result<String, ConnectError> {
        let crm = chosen_crm(&session, form)?;
        if !connects_by_authorization(crm) {
            return Err(ConnectError::WrongCrm(format!(
                "{} connects with typed credentials",
                crm_name(crm)
            )));
        }
        let (_, entered) = read_inputs(crm, form, &session.settings)?;
        let settings = overlay(&entered, &session.settings);
        let server = AuthorizationServer::for_settings(crm, &settings)?;
        let client = self
            .oauth_apps
            .client(crm)
            .await
            .map_err(ConnectError::Store)?
            .ok_or(ConnectError::NotConfigured(crm))?;
        let state = random_token();
        let verifier = server.uses_pkce().then(random_token);
        session.authorization = Some(PendingAuthorization {
            crm_type: crm,
            state_hash: sha256_hex(state.as_bytes()),
            code_verifier: verifier.clone().map(SecretString::new),
            authorization_server: server.base.clone(),
            redirect_uri: redirect_uri.to_string(),
            settings,
            started_at: Utc::now(),
        });
        self.write(session).await?;
        tracing::info!(crm = %crm, "authorization started from a connect link");
        Ok(server.authorize_redirect(&client.client_id, redirect_uri, &state, verifier.as_deref()))
    }

    /// The CRM's redirect back: checks the state, exchanges the code, then tests and stores.
    pub async fn finish_authorization(
        &self,
        mut session: ConnectSession,
        callback: &Form,
    ) -> Result<Connected, ConnectError> {
        let Some(pending) = session.authorization.take() else {
            return Err(ConnectError::StateMismatch);
        };
        // A state answers once: whatever this callback brings, the authorization ends here.
        let session = self.write(session).await?;
        let state_hash = callback
            .get("state")
            .map(|state| sha256_hex(state.as_bytes()))
            .unwrap_or_default();
        if !same_bytes(state_hash.as_bytes(), pending.state_hash.as_bytes()) {
            return Err(ConnectError::StateMismatch);
        }
        let age = Utc::now() - pending.started_at;
        if age > chrono::Duration::from_std(self.config.authorization_ttl).unwrap_or_default() {
            return Err(ConnectError::AuthorizationExpired);
        }
        let crm = pending.crm_type;
        if let Some(error) = callback.get("error") {
            return Err(ConnectError::ConsentRefused {
                crm,
                error: error
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(64)
                    .collect(),
                description: callback
                    .get("error_description")
                    .map(|d| d.chars().take(300).collect())
                    .unwrap_or_default(),
            });
        }
        let code = callback
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ConnectError::TamperedCallback("it carries no authorization code".into())
            })?;
        let mut settings = pending.settings.clone();
        let mut server_base = pending.authorization_server.clone();
        // Zoho names the accounts server of the user's data centre; the code is valid only there,
        // and only Zoho's own servers are trusted with the app's secret.
        if crm == CrmType::Zoho
            && let Some(accounts) = callback.get("accounts-server")
            && accounts.trim_end_matches('/') != server_base
        {
            let dc = zoho_data_center_of(accounts).ok_or_else(|| {
                ConnectError::TamperedCallback(
                    "it names an accounts server that is not Zoho's".into(),
                )
            })?;
            let (standard, _) =
                zoho::data_center(Some(dc)).map_err(ConnectError::TamperedCallback)?;
            server_base = standard.to_string();
            settings
                .extra
                .insert("dataCenter".into(), Value::String(dc.into()));
            settings.extra.remove("accountsUrl");
        }
        let server = match crm {
            CrmType::Zoho => AuthorizationServer::zoho(&server_base),
            _ => {
                let mut at = ConnectionSettings::default();
                at.extra
                    .insert("loginUrl".into(), Value::String(server_base.clone()));
                AuthorizationServer::for_settings(crm, &at)?
            }
        };
        let client = self
            .oauth_apps
            .client(crm)
            .await
            .map_err(ConnectError::Store)?
            .ok_or(ConnectError::NotConfigured(crm))?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.clone()),
            ("client_id", client.client_id.clone()),
            ("client_secret", client.client_secret.expose().to_string()),
            ("redirect_uri", pending.redirect_uri.clone()),
        ];
        if let Some(verifier) = &pending.code_verifier {
            form.push(("code_verifier", verifier.expose().to_string()));
        }
        let token =
            oauth::exchange_authorization_code(&self.app.adapters.http, &server.token, &form)
                .await
                .map_err(|error| ConnectError::Crm { crm, error })?;
        let Some(refresh_token) = token.refresh_token.clone() else {
            return Err(ConnectError::Crm {
                crm,
                error: Error::CrmAuth(
                    "it granted no refresh token, so crm-sync could not stay connected; the app needs offline access (Salesforce: the refresh_token scope)".into(),
                ),
            });
        };
        if crm == CrmType::Salesforce {
            settings
                .extra
                .insert("loginUrl".into(), Value::String(server.base.clone()));
        }
        let mut connection = Connection {
            id: None,
            crm_type: crm,
            credentials: BTreeMap::from([
                ("clientId".to_string(), SecretString::new(client.client_id)),
                ("clientSecret".to_string(), client.client_secret),
                ("refreshToken".to_string(), refresh_token),
            ]),
            settings,
        };
        oauth::store_grant(&mut connection, token, &server.token);
        self.verify_and_store(session, connection, AUTHORIZATION_SETTINGS)
            .await
    }

    /// The page's credentials form: tests and stores the typed credentials.
    pub async fn connect_with_credentials(
        &self,
        session: ConnectSession,
        form: &Form,
    ) -> Result<Connected, ConnectError> {
        let crm = chosen_crm(&session, form)?;
        if connects_by_authorization(crm) {
            return Err(ConnectError::WrongCrm(format!(
                "{} connects through its own sign-in",
                crm_name(crm)
            )));
        }
        let (credentials, entered) = read_inputs(crm, form, &session.settings)?;
        let connection = Connection {
            id: None,
            crm_type: crm,
            credentials,
            settings: overlay(&entered, &session.settings),
        };
        self.verify_and_store(session, connection, &[]).await
    }

    /// Tests `connection` against its CRM, spends the link, then stores the connection. A
    /// connection of the same id and CRM keeps its settings and gets the new credentials.
    async fn verify_and_store(
        &self,
        session: ConnectSession,
        mut connection: Connection,
        authorization_settings: &[&str],
    ) -> Result<Connected, ConnectError> {
        let id = session.connection_id.clone();
        let crm = connection.crm_type;
        let existing = match self.app.connections.get_fresh(&id).await {
            Ok(existing) => Some(existing),
            Err(Error::ConnectionNotFound(_) | Error::ConnectionInvalid { .. }) => None,
            Err(e) => return Err(ConnectError::Store(e)),
        };
        let reconnected = existing.is_some();
        if let Some(existing) = existing.filter(|e| e.crm_type == crm) {
            connection.settings = keep_settings(
                &existing.settings,
                &connection.settings,
                &session.settings,
                authorization_settings,
            );
        }
        // Checked as it will be stored; without an id nothing is written back meanwhile.
        connection.id = None;
        let adapter = crm::adapter_for(&connection, &self.app.adapters).map_err(|e| match e {
            Error::ConnectionInvalid { message, .. } => ConnectError::invalid("Settings", message),
            error => ConnectError::Crm { crm, error },
        })?;
        let info = adapter
            .test_connection()
            .await
            .map_err(|error| ConnectError::Crm { crm, error })?;
        // The link is spent before the connection is written, so two submits cannot both write.
        let mut used = session;
        used.used_at = Some(Utc::now());
        used.authorization = None;
        let used = self.write(used).await?;
        connection.id = Some(id.clone());
        if let Err(e) = self.app.connections.put(&id, &connection).await {
            let mut reopened = used;
            reopened.used_at = None;
            if let Err(again) = self.write(reopened).await {
                tracing::warn!(error = %again, "could not reopen the connect link after a failed store");
            }
            return Err(ConnectError::Store(e));
        }
        tracing::info!(connection_id = %id, crm = %crm, reconnected, "connection stored from a connect link");
        Ok(Connected {
            connection_id: id,
            crm_type: crm,
            account: info.account,
            warnings: info.warnings,
            reconnected,
        })
    }

    /// Writes the next version of `session`; another window's write in between wins.
    async fn write(&self, mut session: ConnectSession) -> Result<ConnectSession, ConnectError> {
        let expected = session.version;
        session.version += 1;
        match self.sessions.put(&session, Some(expected)).await {
            Ok(WriteOutcome::Written) => Ok(session),
            Ok(WriteOutcome::Conflict) => Err(match self.sessions.get(&session.id).await {
                Ok(Some(current)) => match current.state(Utc::now()) {
                    LinkState::Used => ConnectError::LinkUsed,
                    LinkState::Expired => ConnectError::LinkExpired,
                    LinkState::Open => ConnectError::Store(Error::Store(
                        "the link was used in another window at the same time; open it again"
                            .into(),
                    )),
                },
                Ok(None) => ConnectError::LinkUnknown,
                Err(e) => ConnectError::Store(e),
            }),
            Err(e) => Err(ConnectError::Store(e)),
        }
    }
}

/// The CRM the form names, which must be the link's when the link fixes one.
fn chosen_crm(session: &ConnectSession, form: &Form) -> Result<CrmType, ConnectError> {
    let named = match form.get("crm").filter(|c| !c.is_empty()) {
        Some(raw) => Some(CrmType::from_str(raw).map_err(|m| ConnectError::invalid("CRM", m))?),
        None => None,
    };
    match (named, session.crm_type) {
        (Some(named), Some(fixed)) if named != fixed => Err(ConnectError::WrongCrm(format!(
            "this link connects {}, not {}",
            crm_name(fixed),
            crm_name(named)
        ))),
        (Some(crm), _) | (None, Some(crm)) => Ok(crm),
        (None, None) => Err(ConnectError::invalid("CRM", "choose the CRM to connect")),
    }
}

/// The asked fields of `crm` from `form`, checked: credentials and settings. Settings the link
/// fixes are not read from the form.
pub fn read_inputs(
    crm: CrmType,
    form: &Form,
    fixed: &ConnectionSettings,
) -> Result<(BTreeMap<String, SecretString>, ConnectionSettings), ConnectError> {
    let fixed = settings_map(fixed);
    let mut credentials = BTreeMap::new();
    let mut settings = Map::new();
    for field in fields(crm) {
        let Some(input) = field.asked() else {
            continue;
        };
        if !field.credential && fixed.contains_key(field.name) {
            continue;
        }
        let raw = form.get(field.name).map(|v| v.trim()).unwrap_or("");
        if raw.is_empty() {
            if input.required {
                return Err(ConnectError::invalid(input.label, "is required"));
            }
            continue;
        }
        if raw.len() > 4096 {
            return Err(ConnectError::invalid(input.label, "is too long"));
        }
        let invalid = |message: &str| ConnectError::invalid(input.label, message);
        let value = match input.kind {
            InputKind::Secret | InputKind::Text => Value::String(raw.to_string()),
            InputKind::TimeZone => {
                chrono_tz::Tz::from_str(raw)
                    .map_err(|_| invalid("is not a time zone such as America/New_York"))?;
                Value::String(raw.to_string())
            }
            InputKind::Country => {
                if raw.len() != 2 || !raw.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(invalid("must be two letters, such as US"));
                }
                Value::String(raw.to_ascii_uppercase())
            }
            InputKind::Number { min, max } => {
                let number: i64 = raw
                    .parse()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        invalid(&format!("must be a whole number from {min} to {max}"))
                    })?;
                Value::from(number)
            }
            InputKind::Checkbox => Value::Bool(true),
            InputKind::Select(options) => {
                if !options.iter().any(|(value, _)| *value == raw) {
                    return Err(invalid("is not one of the choices"));
                }
                Value::String(raw.to_string())
            }
            InputKind::HttpsUrl(suffixes) => Value::String(
                https_origin(raw, |host| suffixes.iter().any(|s| host.ends_with(s)))
                    .ok_or_else(|| invalid("is not an address of this CRM (https://…)"))?,
            ),
            InputKind::PublicHttpsUrl => Value::String(
                https_origin(raw, |host| host.contains('.') && host != "localhost")
                    .ok_or_else(|| invalid("must be an https:// address on a public host name"))?,
            ),
        };
        if field.credential {
            credentials.insert(
                field.name.to_string(),
                SecretString::new(value.as_str().unwrap_or_default()),
            );
        } else {
            settings.insert(field.name.to_string(), value);
        }
    }
    let settings = serde_json::from_value(Value::Object(settings))
        .map_err(|e| ConnectError::invalid("Settings", e.to_string()))?;
    Ok((credentials, settings))
}

/// `https://host[:port]` of `raw` when it is an https URL on a host name (no IP address) that
/// `allowed` accepts.
fn https_origin(raw: &str, allowed: impl Fn(&str) -> bool) -> Option<String> {
    let url = url::Url::parse(raw).ok()?;
    if url.scheme() != "https" || !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    let url::Host::Domain(host) = url.host()? else {
        return None;
    };
    let host = host.to_ascii_lowercase();
    allowed(&host).then(|| match url.port() {
        Some(port) => format!("https://{host}:{port}"),
        None => format!("https://{host}"),
    })
}

fn settings_map(settings: &ConnectionSettings) -> Map<String, Value> {
    match serde_json::to_value(settings) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn from_map(map: Map<String, Value>) -> ConnectionSettings {
    serde_json::from_value(Value::Object(map)).unwrap_or_default()
}

/// `base` with every setting of `over` put over it.
fn overlay(base: &ConnectionSettings, over: &ConnectionSettings) -> ConnectionSettings {
    let mut merged = settings_map(base);
    merged.extend(settings_map(over));
    from_map(merged)
}

/// A reconnect: the stored settings stay, except those the authorization decides and those the
/// link fixes; what the page asked fills only what the connection did not have.
fn keep_settings(
    stored: &ConnectionSettings,
    new: &ConnectionSettings,
    fixed: &ConnectionSettings,
    authorization_settings: &[&str],
) -> ConnectionSettings {
    let mut merged = settings_map(stored);
    merged.retain(|name, _| !authorization_settings.contains(&name.as_str()));
    let fixed = settings_map(fixed);
    for (name, value) in settings_map(new) {
        if authorization_settings.contains(&name.as_str())
            || fixed.contains_key(&name)
            || !merged.contains_key(&name)
        {
            merged.insert(name, value);
        }
    }
    from_map(merged)
}

/// Compares in constant time.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form(pairs: &[(&str, &str)]) -> Form {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn settings(value: Value) -> ConnectionSettings {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn inputs_are_checked_and_fixed_settings_are_not_read_from_the_form() {
        let fixed = settings(json!({"baseUrl": "http://127.0.0.1:4010", "defaultCountry": "US"}));
        let (credentials, settings) = read_inputs(
            CrmType::Hubspot,
            &form(&[
                ("accessToken", " pat-123 "),
                ("defaultTimezone", "Europe/Paris"),
                ("defaultCountry", "fr"),
                ("defaultAppointmentMinutes", "45"),
                ("baseUrl", "http://169.254.169.254"),
            ]),
            &fixed,
        )
        .unwrap();
        assert_eq!(credentials["accessToken"].expose(), "pat-123");
        assert_eq!(settings.default_timezone.as_deref(), Some("Europe/Paris"));
        assert_eq!(settings.default_country, None, "fixed by the link");
        assert_eq!(settings.base_url, None, "never from the page");
        assert_eq!(settings.default_appointment_minutes, Some(45));
        let missing = read_inputs(CrmType::Hubspot, &form(&[]), &fixed).unwrap_err();
        assert_eq!(
            missing,
            ConnectError::invalid("Private app access token", "is required")
        );
        assert!(
            read_inputs(
                CrmType::Hubspot,
                &form(&[("accessToken", "t"), ("defaultTimezone", "Mars/Base")]),
                &fixed
            )
            .is_err()
        );
    }

    #[test]
    fn addresses_typed_on_the_page_must_be_the_crms_own_https_hosts() {
        let dynamics = |url: &str| {
            read_inputs(
                CrmType::Dynamics,
                &form(&[
                    ("clientId", "c"),
                    ("clientSecret", "s"),
                    ("tenantId", "t"),
                    ("environmentUrl", url),
                ]),
                &ConnectionSettings::default(),
            )
            .map(|(_, s)| s.extra_str("environmentUrl").unwrap().to_string())
        };
        assert_eq!(
            dynamics("https://Acme.crm.dynamics.com/").unwrap(),
            "https://acme.crm.dynamics.com"
        );
        assert!(dynamics("http://acme.crm.dynamics.com").is_err());
        assert!(dynamics("https://dynamics.com.evil.example").is_err());
        assert!(dynamics("https://169.254.169.254").is_err());
        let sugar = |url: &str| {
            read_inputs(
                CrmType::Sugarcrm,
                &form(&[("username", "u"), ("password", "p"), ("instanceUrl", url)]),
                &ConnectionSettings::default(),
            )
        };
        assert!(sugar("https://acme.sugarondemand.com").is_ok());
        assert!(sugar("https://localhost:8443").is_err());
        assert!(sugar("https://10.0.0.1").is_err());
    }

    #[test]
    fn a_reconnect_keeps_the_stored_settings_but_not_the_old_authorization() {
        let stored = settings(
            json!({"defaultTimezone": "America/Chicago", "instanceUrl": "https://old.my.salesforce.com",
            "loginUrl": "https://test.salesforce.com", "stampField": "Mine__c"}),
        );
        let new = settings(
            json!({"defaultTimezone": "Europe/Paris", "loginUrl": "https://login.salesforce.com",
            "instanceUrl": "https://new.my.salesforce.com", "defaultLeadCompany": "Walk-in"}),
        );
        let merged = keep_settings(&stored, &new, &settings(json!({})), AUTHORIZATION_SETTINGS);
        assert_eq!(merged.default_timezone.as_deref(), Some("America/Chicago"));
        assert_eq!(
            merged.extra_str("instanceUrl"),
            Some("https://new.my.salesforce.com")
        );
        assert_eq!(
            merged.extra_str("loginUrl"),
            Some("https://login.salesforce.com")
        );
        assert_eq!(merged.extra_str("stampField"), Some("Mine__c"));
        assert_eq!(merged.extra_str("defaultLeadCompany"), Some("Walk-in"));
        let fixed = settings(json!({"defaultTimezone": "Asia/Tokyo"}));
        let merged = keep_settings(
            &stored,
            &overlay(&new, &fixed),
            &fixed,
            AUTHORIZATION_SETTINGS,
        );
        assert_eq!(
            merged.default_timezone.as_deref(),
            Some("Asia/Tokyo"),
            "the link's creator decides"
        );
    }
}
