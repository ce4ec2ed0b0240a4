//! The OAuth 2.0 authorization-code flow (RFC 6749 section 4.1) for the CRMs that connect through
//! their consent page: where to send the person, with which scopes, and PKCE (RFC 7636) where the
//! CRM takes it.
//!
//! Salesforce: `{login host}/services/oauth2/authorize`, scopes `api refresh_token`, PKCE S256
//! (help.salesforce.com "OAuth 2.0 Web Server Flow for Web App Integration"). Zoho CRM:
//! `{accounts server}/oauth/v2/auth` with `access_type=offline` and `prompt=consent` (a refresh
//! token every time), scopes `ZohoCRM.modules.ALL,ZohoCRM.org.READ`; Zoho documents PKCE only for
//! mobile and desktop clients, so a server-based client sends none. Zoho answers with the user's
//! `accounts-server`, where the code must be exchanged (zoho.com/accounts/protocol/oauth/multi-dc).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::error::ConnectError;
use crate::connection::ConnectionSettings;
use crate::crm::oauth::OAuthProvider;
use crate::crm::{salesforce, zoho};
use crate::domain::CrmType;

/// A CRM's authorization server for one connection's settings.
#[derive(Debug, Clone)]
pub struct AuthorizationServer {
    pub crm: CrmType,
    /// The login host or accounts server (no trailing slash).
    pub base: String,
    pub authorize_url: String,
    pub token: OAuthProvider,
    scope: &'static str,
    pkce: bool,
    extra: &'static [(&'static str, &'static str)],
}

impl AuthorizationServer {
    /// For a CRM that connects through its consent page, at the host `settings` name.
    pub fn for_settings(crm: CrmType, settings: &ConnectionSettings) -> Result<Self, ConnectError> {
        match crm {
            CrmType::Salesforce => {
                let login = salesforce::login_url(settings.extra_str("loginUrl"))
                    .map_err(|m| ConnectError::invalid("Salesforce environment", m))?;
                Ok(Self::salesforce(&login))
            }
            CrmType::Zoho => {
                let (standard, _) = zoho::data_center(settings.extra_str("dataCenter"))
                    .map_err(|m| ConnectError::invalid("Zoho data centre", m))?;
                let accounts = settings.extra_str("accountsUrl").unwrap_or(standard);
                Ok(Self::zoho(accounts))
            }
            other => Err(ConnectError::WrongCrm(format!(
                "{other} connects with typed credentials, not a sign-in"
            ))),
        }
    }

    fn salesforce(login: &str) -> Self {
        let base = login.trim_end_matches('/').to_string();
        AuthorizationServer {
            crm: CrmType::Salesforce,
            authorize_url: format!("{base}/services/oauth2/authorize"),
            token: salesforce::token_provider(&base),
            base,
            scope: "api refresh_token",
            pkce: true,
            extra: &[],
        }
    }

    /// Zoho's accounts server `accounts` (a data centre's, or the one its callback names).
    pub fn zoho(accounts: &str) -> Self {
        let base = accounts.trim_end_matches('/').to_string();
        AuthorizationServer {
            crm: CrmType::Zoho,
            authorize_url: format!("{base}/oauth/v2/auth"),
            token: zoho::token_provider(&base),
            base,
            scope: "ZohoCRM.modules.ALL,ZohoCRM.org.READ",
            pkce: false,
            extra: &[("access_type", "offline"), ("prompt", "consent")],
        }
    }

    pub fn uses_pkce(&self) -> bool {
        self.pkce
    }

    /// Where to send the browser: the consent page with the client, the redirect URI, the state
    /// and, where used, the PKCE challenge of `verifier`.
    pub fn authorize_redirect(
        &self,
        client_id: &str,
        redirect_uri: &str,
        state: &str,
        verifier: Option<&str>,
    ) -> String {
        let mut url =
            url::Url::parse(&self.authorize_url).expect("an authorize URL from a checked host");
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", self.scope)
                .append_pair("state", state);
            if let Some(verifier) = verifier.filter(|_| self.pkce) {
                query
                    .append_pair("code_challenge", &pkce_challenge(verifier))
                    .append_pair("code_challenge_method", "S256");
            }
            for (name, value) in self.extra {
                query.append_pair(name, value);
            }
        }
        url.into()
    }
}

/// `BASE64URL(SHA256(verifier))`, RFC 7636 section 4.2.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The data centre whose accounts server is `accounts`, if it is one of Zoho's.
pub fn zoho_data_center_of(accounts: &str) -> Option<&'static str> {
    let accounts = accounts.trim_end_matches('/');
    zoho::DATA_CENTERS
        .iter()
        .find(|(_, server, _)| *server == accounts)
        .map(|(dc, _, _)| *dc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(value: serde_json::Value) -> ConnectionSettings {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_pkce_challenge_is_the_unpadded_base64url_sha256_of_the_verifier() {
        // Expected value from Python's hashlib and base64.urlsafe_b64encode, padding removed.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r7wW1gFWFOEjXk"),
            "bwWFMyPfdG9qreDhH2lmftFx_dFeLDalzcT1gb_j68g"
        );
    }

    #[test]
    fn salesforce_sandboxes_sign_in_at_the_test_host_with_pkce() {
        let server = AuthorizationServer::for_settings(
            CrmType::Salesforce,
            &settings(json!({"loginUrl": "https://test.salesforce.com"})),
        )
        .unwrap();
        let url = server.authorize_redirect("client", "https://api.example/cb", "st", Some("v"));
        assert!(url.starts_with("https://test.salesforce.com/services/oauth2/authorize?response_type=code&client_id=client&redirect_uri=https%3A%2F%2Fapi.example%2Fcb&scope=api+refresh_token&state=st&code_challenge="));
        assert!(url.ends_with("&code_challenge_method=S256"));
        assert_eq!(
            server.token.token_url,
            "https://test.salesforce.com/services/oauth2/token"
        );
    }

    #[test]
    fn zoho_signs_in_at_the_chosen_data_centre_for_offline_access_without_pkce() {
        let server = AuthorizationServer::for_settings(
            CrmType::Zoho,
            &settings(json!({"dataCenter": "eu"})),
        )
        .unwrap();
        let url = server.authorize_redirect("1000.X", "https://api.example/cb", "st", Some("v"));
        assert!(url.starts_with("https://accounts.zoho.eu/oauth/v2/auth?"));
        assert!(url.contains("access_type=offline&prompt=consent"));
        assert!(!url.contains("code_challenge"));
        assert_eq!(
            zoho_data_center_of("https://accounts.zohocloud.ca/"),
            Some("ca")
        );
        assert_eq!(zoho_data_center_of("https://evil.example"), None);
    }

    #[test]
    fn token_crms_have_no_authorization_server() {
        assert!(matches!(
            AuthorizationServer::for_settings(CrmType::Hubspot, &ConnectionSettings::default()),
            Err(ConnectError::WrongCrm(_))
        ));
    }
}
