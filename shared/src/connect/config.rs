//! The connect functions' settings, read once per cold start beside the shared `Config`.

use std::time::Duration;

/// Kept apart from `Config` because only the three connect functions (and the CLI's
/// `connect-link`) read it.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// How long a new link works unless its creator asks for another time
    /// (`CRM_SYNC_CONNECT_LINK_MINUTES`, default 30).
    pub link_ttl: Duration,
    /// The longest a link may be asked to work.
    pub max_link_ttl: Duration,
    /// How long a "Connect with …" may take, from leaving the page to the CRM's callback.
    pub authorization_ttl: Duration,
    /// The connect page's public URL (`CRM_SYNC_CONNECT_PAGE_URL`). Unset when deployed: the page
    /// is `/connect` beside the route API Gateway says the request came in on.
    pub page_url: Option<String>,
    /// The callback's public URL, the redirect URI registered with each CRM
    /// (`CRM_SYNC_CONNECT_CALLBACK_URL`); unset when deployed, as for the page.
    pub callback_url: Option<String>,
    /// Where each OAuth CRM's app client (id and secret) is kept: the secret (or, locally, the file
    /// under `oauth-apps/`) `<prefix><crmType>` (`CRM_SYNC_OAUTH_APP_PREFIX`).
    pub oauth_app_prefix: String,
}

impl ConnectConfig {
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let url = |name: &str| {
            get(name)
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty())
        };
        let minutes = get("CRM_SYNC_CONNECT_LINK_MINUTES")
            .and_then(|m| m.trim().parse::<u64>().ok())
            .filter(|m| *m > 0)
            .unwrap_or(30);
        ConnectConfig {
            link_ttl: Duration::from_secs(60 * minutes),
            max_link_ttl: Duration::from_secs(7 * 24 * 3600),
            authorization_ttl: Duration::from_secs(10 * 60),
            page_url: url("CRM_SYNC_CONNECT_PAGE_URL"),
            callback_url: url("CRM_SYNC_CONNECT_CALLBACK_URL"),
            oauth_app_prefix: get("CRM_SYNC_OAUTH_APP_PREFIX")
                .unwrap_or_else(|| "crm-sync/oauth-apps/".into()),
        }
    }
}
