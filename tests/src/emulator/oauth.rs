//! The OAuth2 side of an emulated CRM (Salesforce, Zoho, Dynamics 365, SugarCRM): a client, its
//! refresh tokens, access tokens that expire, and authorization codes handed out by a consent
//! page (RFC 6749 section 4.1, with PKCE's S256 challenge, RFC 7636). Each CRM emulator wraps it in its own token endpoint and answer
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
    /// Authorization codes handed out and not yet exchanged.
    codes: HashMap<String, AuthorizationCode>,
}

/// A code the consent page handed out: for whom, for which redirect URI and PKCE challenge.
#[derive(Debug, Clone)]
struct AuthorizationCode {
    redirect_uri: String,
    challenge: Option<String>,
    expires: DateTime<Utc>,
}

/// How long a code may wait for its exchange (Zoho: 2 minutes; Salesforce: 15).
const CODE_LIFETIME: Duration = Duration::minutes(2);

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
            codes: HashMap::new(),
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

    /// The consent page's "Allow": checks the authorization request and hands out a code for
    /// its redirect URI (and PKCE challenge, which must be S256).
    pub fn authorize(&mut self, request: &HashMap<String, String>) -> Result<String, OAuthError> {
        let field = |name: &str| request.get(name).map(String::as_str).unwrap_or("");
        let refused = |error: &'static str, description: &'static str| OAuthError {
            status: 400,
            error,
            description,
        };
        if field("response_type") != "code" {
            return Err(refused(
                "unsupported_response_type",
                "response type not supported",
            ));
        }
        if field("client_id") != self.client_id {
            return Err(refused("invalid_client_id", "client identifier invalid"));
        }
        if !(field("redirect_uri").starts_with("http://")
            || field("redirect_uri").starts_with("https://"))
        {
            return Err(refused(
                "redirect_uri_mismatch",
                "redirect_uri must be an http(s) URL",
            ));
        }
        let challenge = match (field("code_challenge"), field("code_challenge_method")) {
            ("", _) => None,
            (challenge, "S256") => Some(challenge.to_string()),
            _ => {
                return Err(refused(
                    "invalid_request",
                    "code_challenge_method must be S256",
                ));
            }
        };
        let code = format!("code-{}", uuid::Uuid::new_v4().simple());
        self.codes.insert(
            code.clone(),
            AuthorizationCode {
                redirect_uri: field("redirect_uri").to_string(),
                challenge,
                expires: Utc::now() + CODE_LIFETIME,
            },
        );
        Ok(code)
    }

    /// `grant_type=authorization_code`: the code once, for the redirect URI it was given for,
    /// with the PKCE verifier when a challenge was sent; a new refresh token with the access token.
    pub fn exchange_code(&mut self, form: &HashMap<String, String>) -> Result<Issued, OAuthError> {
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
        let invalid_grant = |description: &'static str| OAuthError {
            status: 400,
            error: "invalid_grant",
            description,
        };
        if field("grant_type") != "authorization_code" {
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
        // Used or not, a code is gone once presented.
        let code = self
            .codes
            .remove(field("code"))
            .ok_or_else(|| invalid_grant("invalid authorization code"))?;
        if code.expires < Utc::now() {
            return Err(invalid_grant("expired authorization code"));
        }
        if code.redirect_uri != field("redirect_uri") {
            return Err(OAuthError {
                status: 400,
                error: "redirect_uri_mismatch",
                description: "redirect_uri must match configuration",
            });
        }
        if let Some(challenge) = &code.challenge {
            use base64::Engine;
            use sha2::Digest;
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(field("code_verifier").as_bytes()));
            if &computed != challenge {
                return Err(invalid_grant("invalid code verifier"));
            }
        }
        Ok(self.open_session())
    }
}

/// A CRM's consent page: what the app asks for, and Allow / Deny, posted back to `action` with
/// the authorization request in hidden fields.
pub fn consent_page(crm: &str, action: &str, request: &HashMap<String, String>) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let hidden: String = request
        .iter()
        .filter(|(name, _)| name.as_str() != "decision")
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(name),
                escape(value)
            )
        })
        .collect();
    format!(
        "<!doctype html><html><head><title>{crm}: allow access?</title></head><body>\
         <h1>{crm} (emulated)</h1><p>The app <b>{client}</b> asks for access: {scope}.</p>\
         <form method=\"post\" action=\"{action}\">{hidden}\
         <button type=\"submit\" name=\"decision\" value=\"allow\" id=\"allow\">Allow</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\" id=\"deny\">Deny</button></form></body></html>",
        client = escape(request.get("client_id").map(String::as_str).unwrap_or("")),
        scope = escape(request.get("scope").map(String::as_str).unwrap_or("")),
    )
}

/// Where the consent page's decision sends the browser: the redirect URI with a code (and
/// `on_allow`'s extra parameters), or with `error=access_denied`; `Err` for a request that
/// cannot be redirected (an unknown client, no redirect URI), which the CRM shows as a page.
pub fn consent_redirect(
    tokens: &mut OAuthTokens,
    decision: &HashMap<String, String>,
    on_allow: &[(&str, &str)],
) -> Result<String, OAuthError> {
    let state = decision.get("state").cloned().unwrap_or_default();
    let redirect_uri = decision.get("redirect_uri").cloned().unwrap_or_default();
    let mut params: Vec<(String, String)> = Vec::new();
    if decision.get("decision").map(String::as_str) == Some("allow") {
        let code = tokens.authorize(decision)?;
        params.push(("code".into(), code));
        params.extend(on_allow.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    } else {
        if decision.get("client_id") != Some(&tokens.client_id) || redirect_uri.is_empty() {
            return Err(OAuthError {
                status: 400,
                error: "invalid_client_id",
                description: "client identifier invalid",
            });
        }
        params.push(("error".into(), "access_denied".into()));
        params.push((
            "error_description".into(),
            "end-user denied authorization".into(),
        ));
    }
    params.push(("state".into(), state));
    let mut url = url::Url::parse(&redirect_uri).map_err(|_| OAuthError {
        status: 400,
        error: "redirect_uri_mismatch",
        description: "redirect_uri is not a URL",
    })?;
    url.query_pairs_mut().extend_pairs(params);
    Ok(url.into())
}
