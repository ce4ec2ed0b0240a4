//! Connect links through the three connect functions' handlers, on the local stores and on moto,
//! with the HubSpot, Salesforce and Zoho emulators behind: links and their API key, typed
//! credentials, both OAuth consent flows (PKCE for Salesforce, the accounts server for Zoho), and
//! every refusal ending in a page with nothing stored. The browser test
//! (`tests/connect/run.sh`) drives the same pages in Chromium.

use std::collections::HashMap;
use std::sync::Arc;

use crm_sync::connect::http::{callback, create_session, page};
use crm_sync::connect::store::{
    DynamoDbConnectSessionStore, SecretsManagerOAuthAppStore, open_local,
};
use crm_sync::connect::{ConnectConfig, ConnectService};
use crm_sync::connection::ConnectionId;
use crm_sync::domain::CrmType;
use crm_sync_tests::conformance::{hubspot, salesforce as sf, zoho as zc};
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use crm_sync_tests::emulator::oauth::OAuthTokens;
use crm_sync_tests::emulator::salesforce::{SalesforceEmulator, client};
use crm_sync_tests::emulator::zoho::ZohoEmulator;
use crm_sync_tests::harness::*;
use lambda_http::http::Method;
use lambda_http::{Body, Request, RequestExt};
use serde_json::{Value, json};

const PAGE: &str = "https://connect.example/crm/connect";
const CALLBACK: &str = "https://connect.example/crm/connect/callback";

/// What a handler answered.
struct Answer {
    status: u16,
    headers: lambda_http::http::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

struct Fixture {
    service: ConnectService,
    spec: OpenApi,
    hubspot: HubSpotEmulator,
    salesforce: SalesforceEmulator,
    zoho: ZohoEmulator,
    /// Every page and redirect the handlers answered, for the no-secret check.
    seen: std::sync::Mutex<Vec<String>>,
    _dir: TempDir,
}

fn connect_config() -> ConnectConfig {
    let mut config = ConnectConfig::from_lookup(|_| None);
    config.page_url = Some(PAGE.into());
    config.callback_url = Some(CALLBACK.into());
    config
}

impl Fixture {
    async fn local() -> Self {
        LogCapture::global();
        let dir = TempDir::new("connect");
        let (sessions, apps) = open_local(dir.path());
        let fixture = Self::with(
            ConnectService::new(local_app(&dir), connect_config(), sessions, apps),
            dir,
        )
        .await;
        let apps = fixture._dir.path().join("oauth-apps");
        std::fs::create_dir_all(&apps).unwrap();
        for (crm, id, secret) in [
            ("salesforce", sf::CLIENT_ID, sf::CLIENT_SECRET),
            ("zoho", zc::CLIENT_ID, zc::CLIENT_SECRET),
        ] {
            std::fs::write(
                apps.join(format!("{crm}.json")),
                json!({"clientId": id, "clientSecret": secret}).to_string(),
            )
            .unwrap();
        }
        fixture
    }

    async fn with(service: ConnectService, dir: TempDir) -> Self {
        Fixture {
            service,
            spec: OpenApi::crm_sync(),
            hubspot: HubSpotEmulator::start(&[hubspot::TOKEN]).await.unwrap(),
            salesforce: SalesforceEmulator::start(client(
                sf::CLIENT_ID,
                sf::CLIENT_SECRET,
                "unused",
            ))
            .await
            .unwrap(),
            zoho: ZohoEmulator::start(OAuthTokens::new(
                zc::CLIENT_ID,
                zc::CLIENT_SECRET,
                "unused",
                chrono::Duration::hours(1),
            ))
            .await
            .unwrap(),
            seen: Default::default(),
            _dir: dir,
        }
    }

    fn request(
        method: Method,
        url: &str,
        cookie: Option<&str>,
        form: Option<&[(&str, &str)]>,
        query: &[(&str, &str)],
    ) -> Request {
        let mut builder = lambda_http::http::Request::builder()
            .method(method)
            .uri(url);
        if let Some(cookie) = cookie {
            builder = builder.header("cookie", cookie);
        }
        let body = match form {
            Some(pairs) => {
                builder = builder
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("origin", "https://connect.example");
                Body::from(
                    url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(pairs)
                        .finish(),
                )
            }
            None => Body::Empty,
        };
        let query: HashMap<String, String> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        builder
            .body(body)
            .unwrap()
            .with_query_string_parameters(query)
    }

    fn note(&self, answer: lambda_http::Response<Body>) -> Answer {
        let answer = Answer {
            status: answer.status().as_u16(),
            headers: answer.headers().clone(),
            body: String::from_utf8_lossy(answer.body().as_ref()).into_owned(),
        };
        let mut seen = self.seen.lock().unwrap();
        seen.push(answer.body.clone());
        seen.push(answer.header("location"));
        answer
    }

    async fn create_link(&self, api_key: Option<&str>, body: Value) -> (u16, Value) {
        let request = api_request(Method::POST, api_key, Some(&body));
        let Ok(response) = create_session(&self.service, request).await;
        let (status, answer) = read_response(response);
        self.spec
            .check_response("POST", "/connect-sessions", status, &answer)
            .unwrap_or_else(|e| panic!("{e}\n{answer}"));
        (status, answer)
    }

    /// A new link's token for `body`.
    async fn link(&self, body: Value) -> String {
        let (status, answer) = self.create_link(Some(TEST_API_KEY), body).await;
        assert_eq!(status, 201, "{answer}");
        let url = url::Url::parse(answer["connectUrl"].as_str().unwrap()).unwrap();
        assert!(url.as_str().starts_with(PAGE));
        url.query_pairs()
            .find(|(k, _)| k == "session")
            .map(|(_, v)| v.into_owned())
            .unwrap()
    }

    /// Opens the link: the token moves into a cookie and the page reloads without it.
    async fn open(&self, token: &str) -> String {
        let answer = self.get_page(None, &[("session", token)]).await;
        assert_eq!(answer.status, 303, "{}", answer.body);
        assert_eq!(answer.header("location"), PAGE);
        let cookie = answer.header("set-cookie");
        assert!(
            cookie.contains("HttpOnly")
                && cookie.contains("SameSite=Lax")
                && cookie.contains("Secure")
        );
        assert!(cookie.contains("Path=/crm/connect;"), "{cookie}");
        format!("crm_sync_connect={token}")
    }

    async fn get_page(&self, cookie: Option<&str>, query: &[(&str, &str)]) -> Answer {
        let request = Self::request(Method::GET, PAGE, cookie, None, query);
        let Ok(response) = page(&self.service, request).await;
        self.note(response)
    }

    async fn post_page(&self, cookie: &str, form: &[(&str, &str)]) -> Answer {
        let request = Self::request(Method::POST, PAGE, Some(cookie), Some(form), &[]);
        let Ok(response) = page(&self.service, request).await;
        self.note(response)
    }

    async fn post_callback(&self, cookie: &str, form: &[(&str, &str)]) -> Answer {
        let request = Self::request(Method::POST, CALLBACK, Some(cookie), Some(form), &[]);
        let Ok(response) = callback(&self.service, request).await;
        self.note(response)
    }

    async fn get_callback(&self, cookie: &str, query: &[(String, String)]) -> Answer {
        let query: Vec<(&str, &str)> = query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let request = Self::request(Method::GET, CALLBACK, Some(cookie), None, &query);
        let Ok(response) = callback(&self.service, request).await;
        self.note(response)
    }

    /// Answers the emulated CRM's consent page at `authorize` (the page's redirect) and
    /// returns the query it sends the browser back to the callback with.
    async fn consent(&self, authorize: &str, allow: bool) -> Vec<(String, String)> {
        let url = url::Url::parse(authorize).unwrap();
        let consent_page = reqwest::get(url.as_str()).await.unwrap();
        assert_eq!(consent_page.status(), 200);
        let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        form.push((
            "decision".into(),
            if allow { "allow" } else { "deny" }.into(),
        ));
        crm_sync::transport::install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let decision = http
            .post(format!(
                "{}{}",
                url.origin().ascii_serialization(),
                url.path()
            ))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(decision.status(), 302);
        let back = url::Url::parse(decision.headers()["location"].to_str().unwrap()).unwrap();
        assert!(back.as_str().starts_with(CALLBACK), "{back}");
        back.query_pairs().into_owned().collect()
    }

    async fn stored(&self, id: &str) -> Option<crm_sync::connection::Connection> {
        self.service
            .app
            .connections
            .get_fresh(&ConnectionId::parse(id).unwrap())
            .await
            .ok()
    }

    fn assert_never_shown(&self, secrets: &[&str]) {
        let seen = self.seen.lock().unwrap();
        let logs = LogCapture::global().text();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            for page in seen.iter() {
                assert!(
                    !page.contains(secret),
                    "a secret reached a page or redirect:\n{page}"
                );
            }
            assert!(!logs.contains(secret), "a secret reached the logs");
        }
    }
}

fn query_value(query: &[(String, String)], name: &str) -> String {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn links_need_the_api_key_and_carry_a_token_not_the_connection_id() {
    let f = Fixture::local().await;
    let (status, body) = f.create_link(None, json!({"connectionId": "acme"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = f
        .create_link(Some(TEST_API_KEY), json!({"connectionId": "no such id!"}))
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("connectionId"))
    );
    let (status, body) = f
        .create_link(
            Some(TEST_API_KEY),
            json!({"connectionId": "acme", "settings": {"defaultTimezone": "Mars/Base"}}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("settings.defaultTimezone"))
    );
    let (status, body) = f
        .create_link(
            Some(TEST_API_KEY),
            json!({"connectionId": "acme", "crmType": "hubspot", "expiresInMinutes": 5}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["connectionId"], "acme");
    assert_eq!(body["crmType"], "hubspot");
    let url = body["connectUrl"].as_str().unwrap();
    assert!(!url.contains("acme"), "the link names no connection: {url}");
    let expires: chrono::DateTime<chrono::Utc> =
        body["expiresAt"].as_str().unwrap().parse().unwrap();
    let minutes = (expires - chrono::Utc::now()).num_minutes();
    assert!((4..=5).contains(&minutes), "{minutes}");
    // `null` counts as absent, and a whole number may be written as a float, as elsewhere.
    let (status, _) = f
        .create_link(
            Some(TEST_API_KEY),
            json!({"connectionId": "acme", "crmType": null, "settings": null, "expiresInMinutes": 5.0}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = f
        .create_link(
            Some(TEST_API_KEY),
            json!({"connectionId": "acme", "expiresInMinutes": 5.5}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("expiresInMinutes"))
    );
}

#[tokio::test]
async fn hubspot_by_token_is_tested_before_it_is_stored_and_the_link_works_once() {
    let f = Fixture::local().await;
    let token = f
        .link(
            json!({"connectionId": "acme-hubspot", "settings": {"baseUrl": f.hubspot.base_url()}}),
        )
        .await;
    let cookie = f.open(&token).await;
    let list = f.get_page(Some(&cookie), &[]).await;
    assert_eq!(list.status, 200);
    assert!(list.body.contains("href=\"?crm=hubspot\"") && list.body.contains("Zoho CRM"));
    let csp = list.header("content-security-policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(list.header("x-frame-options"), "DENY");
    assert!(!list.body.contains("<script"));

    let form = f.get_page(Some(&cookie), &[("crm", "hubspot")]).await;
    assert!(form.body.contains(&format!("action=\"{CALLBACK}\"")));
    assert!(form.body.contains("name=\"accessToken\"") && form.body.contains("type=\"password\""));
    assert!(
        !form.body.contains("name=\"baseUrl\""),
        "fixed by the link, and never asked"
    );
    assert!(form.body.contains("Already set for you: API address"));

    let wrong = f
        .post_callback(
            &cookie,
            &[("crm", "hubspot"), ("accessToken", "pat-wrong-token-9")],
        )
        .await;
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    assert!(
        wrong
            .body
            .contains("HubSpot didn&#39;t accept the connection"),
        "{}",
        wrong.body
    );
    assert!(wrong.body.contains("Nothing was stored."));
    assert!(f.stored("acme-hubspot").await.is_none());

    let connected = f
        .post_callback(
            &cookie,
            &[
                ("crm", "hubspot"),
                ("accessToken", hubspot::TOKEN),
                ("defaultTimezone", "America/Chicago"),
            ],
        )
        .await;
    assert_eq!(connected.status, 200, "{}", connected.body);
    assert!(connected.body.contains("HubSpot is connected"));
    assert!(connected.header("set-cookie").contains("Max-Age=0"));
    let stored = f.stored("acme-hubspot").await.unwrap();
    assert_eq!(stored.crm_type, CrmType::Hubspot);
    assert_eq!(stored.credentials["accessToken"].expose(), hubspot::TOKEN);
    assert_eq!(
        stored.settings.base_url.as_deref(),
        Some(f.hubspot.base_url())
    );
    assert_eq!(
        stored.settings.default_timezone.as_deref(),
        Some("America/Chicago")
    );

    let again = f
        .post_callback(
            &cookie,
            &[("crm", "hubspot"), ("accessToken", hubspot::TOKEN)],
        )
        .await;
    assert_eq!(again.status, 410);
    assert!(again.body.contains("This link was already used"));
    assert_eq!(f.get_page(None, &[("session", &token)]).await.status, 410);
    let synced = f
        .service
        .app
        .sync_customer(&json!({"connectionId": "acme-hubspot", "customer": {"email": "jo@example.com", "firstName": "Jo"}}))
        .await
        .unwrap();
    assert_eq!(synced.crm_type, CrmType::Hubspot);
    f.assert_never_shown(&[hubspot::TOKEN, "pat-wrong-token-9", &token]);
}

#[tokio::test]
async fn salesforce_and_zoho_connect_through_their_consent_pages() {
    let f = Fixture::local().await;
    // Salesforce: the link fixes the login host (the emulator); PKCE S256.
    let token = f
        .link(json!({"connectionId": "acme-sf", "crmType": "salesforce", "settings": {"loginUrl": f.salesforce.base_url()}}))
        .await;
    let cookie = f.open(&token).await;
    let form = f.get_page(Some(&cookie), &[]).await;
    assert!(
        form.body.contains("Connect with Salesforce"),
        "{}",
        form.body
    );
    assert!(
        !form.body.contains("name=\"clientSecret\"") && !form.body.contains("name=\"loginUrl\"")
    );
    assert!(
        form.header("content-security-policy")
            .contains(f.salesforce.base_url())
    );
    let started = f
        .post_page(
            &cookie,
            &[("crm", "salesforce"), ("defaultTimezone", "America/Denver")],
        )
        .await;
    assert_eq!(started.status, 303, "{}", started.body);
    let authorize = started.header("location");
    assert!(authorize.starts_with(&format!(
        "{}/services/oauth2/authorize?",
        f.salesforce.base_url()
    )));
    assert!(
        authorize.contains("code_challenge_method=S256")
            && authorize.contains(&format!("client_id={}", sf::CLIENT_ID))
    );
    let back = f.consent(&authorize, true).await;
    let done = f.get_callback(&cookie, &back).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Salesforce is connected"));
    let stored = f.stored("acme-sf").await.unwrap();
    assert_eq!(stored.credentials["clientId"].expose(), sf::CLIENT_ID);
    assert!(
        stored.credentials["refreshToken"]
            .expose()
            .starts_with("refresh-")
    );
    assert_eq!(
        stored.settings.extra_str("instanceUrl"),
        Some(f.salesforce.base_url())
    );
    assert_eq!(
        stored.settings.default_timezone.as_deref(),
        Some("America/Denver")
    );
    let refresh_token = stored.credentials["refreshToken"].expose().to_string();
    let sf_access = stored.credentials["accessToken"].expose().to_string();

    // Zoho: the data centre chosen on the page; the emulator is the accounts server.
    let token = f
        .link(json!({"connectionId": "acme-zoho", "settings": {"accountsUrl": f.zoho.base_url(), "baseUrl": f.zoho.base_url(), "defaultLeadCompany": "Walk-in"}}))
        .await;
    let cookie = f.open(&token).await;
    let form = f.get_page(Some(&cookie), &[("crm", "zoho")]).await;
    assert!(form.body.contains("name=\"dataCenter\""));
    let started = f
        .post_page(&cookie, &[("crm", "zoho"), ("dataCenter", "eu")])
        .await;
    let authorize = started.header("location");
    assert!(authorize.contains("access_type=offline") && !authorize.contains("code_challenge"));
    let back = f.consent(&authorize, true).await;
    assert_eq!(query_value(&back, "accounts-server"), f.zoho.base_url());
    let done = f.get_callback(&cookie, &back).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Zoho CRM is connected"));
    let stored = f.stored("acme-zoho").await.unwrap();
    assert_eq!(stored.settings.extra_str("dataCenter"), Some("eu"));
    assert!(stored.settings.extra_str("accessTokenExpiresAt").is_some());

    for id in ["acme-sf", "acme-zoho"] {
        let answer = f
            .service
            .app
            .test_connection(&json!({"connectionId": id}))
            .await
            .unwrap();
        assert!(answer.ok, "{answer:?}");
        f.service
            .app
            .sync_customer(&json!({"connectionId": id, "customer": {"email": "kim@example.com", "lastName": "Kim"}}))
            .await
            .unwrap();
    }
    let zoho_refresh = f.stored("acme-zoho").await.unwrap().credentials["refreshToken"]
        .expose()
        .to_string();
    f.assert_never_shown(&[
        &refresh_token,
        &sf_access,
        &zoho_refresh,
        sf::CLIENT_SECRET,
        zc::CLIENT_SECRET,
        &token,
    ]);
}

#[tokio::test]
async fn refused_consent_forged_state_and_tampered_callbacks_store_nothing() {
    let f = Fixture::local().await;
    let token = f
        .link(json!({"connectionId": "acme-sf", "crmType": "salesforce", "settings": {"loginUrl": f.salesforce.base_url()}}))
        .await;
    let cookie = f.open(&token).await;
    let start = || f.post_page(&cookie, &[("crm", "salesforce")]);

    let refused = f.consent(&start().await.header("location"), false).await;
    let page = f.get_callback(&cookie, &refused).await;
    assert_eq!(page.status, 403);
    assert!(
        page.body
            .contains("You didn&#39;t allow access in Salesforce"),
        "{}",
        page.body
    );

    let mut forged = f.consent(&start().await.header("location"), true).await;
    forged.retain(|(k, _)| k != "state");
    forged.push(("state".into(), "forged-state".into()));
    let page = f.get_callback(&cookie, &forged).await;
    assert_eq!(page.status, 400);
    assert!(
        page.body
            .contains("This sign-in doesn&#39;t belong to your link")
    );
    // The real state is spent too: a state answers once.
    let mut tampered = f.consent(&start().await.header("location"), true).await;
    for (k, v) in tampered.iter_mut() {
        if k == "code" {
            v.push('x');
        }
    }
    let page = f.get_callback(&cookie, &tampered).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(
        page.body
            .contains("Salesforce didn&#39;t accept the connection"),
        "{}",
        page.body
    );
    let replayed = f.get_callback(&cookie, &tampered).await;
    assert!(
        replayed
            .body
            .contains("This sign-in doesn&#39;t belong to your link")
    );
    assert!(f.stored("acme-sf").await.is_none());

    // Zoho: an accounts server that is not Zoho's is refused before the app's secret goes there.
    let token = f
        .link(json!({"connectionId": "acme-zoho", "crmType": "zoho", "settings": {"accountsUrl": f.zoho.base_url(), "baseUrl": f.zoho.base_url()}}))
        .await;
    let cookie = f.open(&token).await;
    let started = f
        .post_page(&cookie, &[("crm", "zoho"), ("dataCenter", "com")])
        .await;
    let mut back = f.consent(&started.header("location"), true).await;
    for (k, v) in back.iter_mut() {
        if k == "accounts-server" {
            *v = "https://accounts.evil.example".into();
        }
    }
    let page = f.get_callback(&cookie, &back).await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("not one the CRM sends"), "{}", page.body);
    assert!(f.stored("acme-zoho").await.is_none());
    let token_requests = f
        .zoho
        .server
        .control
        .requests()
        .into_iter()
        .filter(|r| r.path == "/oauth/v2/token")
        .count();
    assert_eq!(token_requests, 0);
    let no_cookie = f.get_callback("other=1", &back).await;
    assert!(no_cookie.body.contains("Open your link again"));
    f.assert_never_shown(&[sf::CLIENT_SECRET, zc::CLIENT_SECRET, &token]);
}

#[tokio::test]
async fn expired_unknown_and_foreign_requests_open_nothing() {
    let f = Fixture::local().await;
    let token = f.link(json!({"connectionId": "acme"})).await;
    let cookie = f.open(&token).await;
    // A form from another site.
    let request = {
        let mut r = Fixture::request(
            Method::POST,
            CALLBACK,
            Some(&cookie),
            Some(&[("crm", "hubspot"), ("accessToken", hubspot::TOKEN)]),
            &[],
        );
        r.headers_mut()
            .insert("origin", "https://evil.example".parse().unwrap());
        r
    };
    let Ok(response) = callback(&f.service, request).await;
    assert_eq!(f.note(response).status, 403);
    // The session's expiry moves into the past.
    let id = crm_sync::connect::session::LinkToken::parse(&token)
        .unwrap()
        .session_id();
    let mut session = f.service.sessions.get(&id).await.unwrap().unwrap();
    session.expires_at = chrono::Utc::now() - chrono::Duration::seconds(1);
    let version = session.version;
    session.version += 1;
    f.service
        .sessions
        .put(&session, Some(version))
        .await
        .unwrap();
    let expired = f.get_page(None, &[("session", &token)]).await;
    assert_eq!(expired.status, 410);
    assert!(expired.body.contains("This link has expired"));
    assert!(
        f.get_page(Some(&cookie), &[])
            .await
            .body
            .contains("This link has expired")
    );
    let unknown = f
        .get_page(None, &[("session", "A".repeat(43).as_str())])
        .await;
    assert_eq!(unknown.status, 404);
    assert!(f.stored("acme").await.is_none());
}

/// A malformed request is refused as such (400) before its link is looked up, as the API's own
/// operations refuse theirs: a CRM that is none, an empty one, a form without one.
#[tokio::test]
async fn malformed_connect_requests_are_refused_before_the_link_is_looked_up() {
    let f = Fixture::local().await;
    let unknown_cookie = format!("crm_sync_connect={}", "A".repeat(43));
    for crm in ["AAA", ""] {
        let page = f
            .get_page(None, &[("session", "A".repeat(43).as_str()), ("crm", crm)])
            .await;
        assert_eq!(page.status, 400, "crm={crm:?}: {}", page.body);
        let page = f.get_page(Some(&unknown_cookie), &[("crm", crm)]).await;
        assert_eq!(page.status, 400, "crm={crm:?}: {}", page.body);
    }
    for form in [&[][..], &[("crm", "AAA")][..], &[("accessToken", "x")][..]] {
        assert_eq!(
            f.post_page(&unknown_cookie, form).await.status,
            400,
            "{form:?}"
        );
        assert_eq!(
            f.post_callback(&unknown_cookie, form).await.status,
            400,
            "{form:?}"
        );
    }
    // Well formed, the unknown link is what answers.
    assert_eq!(
        f.post_callback(&unknown_cookie, &[("crm", "hubspot")])
            .await
            .status,
        404
    );
    assert_eq!(
        f.get_page(Some(&unknown_cookie), &[("crm", "zoho")])
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn a_reconnect_replaces_the_credentials_and_keeps_the_settings() {
    let f = Fixture::local().await;
    let mut old = connection(
        CrmType::Hubspot,
        f.hubspot.base_url(),
        &[("accessToken", "revoked-token")],
    );
    old.settings.default_timezone = Some("Europe/Paris".into());
    old.settings
        .extra
        .insert("stampProperty".into(), json!("my_stamp"));
    store_connection(&f.service.app, "acme", &old).await;
    let token = f
        .link(json!({"connectionId": "acme", "crmType": "hubspot"}))
        .await;
    let cookie = f.open(&token).await;
    let done = f
        .post_callback(
            &cookie,
            &[
                ("crm", "hubspot"),
                ("accessToken", hubspot::TOKEN),
                ("defaultTimezone", "Asia/Tokyo"),
            ],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("its settings are kept"));
    let stored = f.stored("acme").await.unwrap();
    assert_eq!(stored.credentials["accessToken"].expose(), hubspot::TOKEN);
    assert_eq!(
        stored.settings.default_timezone.as_deref(),
        Some("Europe/Paris")
    );
    assert_eq!(stored.settings.extra_str("stampProperty"), Some("my_stamp"));
    assert_eq!(
        stored.settings.base_url.as_deref(),
        Some(f.hubspot.base_url())
    );
}

#[tokio::test]
async fn on_aws_the_link_is_an_item_of_the_table_and_the_connection_a_secret() {
    let dir = TempDir::new("connect-aws");
    let (secrets, records) = aws_stores().await;
    let sdk = aws_sdk_config().await;
    let table = records.table().to_string();
    let prefix = secrets.prefix().to_string();
    let app_prefix = format!("{}oauth-apps/", prefix.trim_end_matches("connections/"));
    let app = crm_sync::App::on_aws(
        test_config(crm_sync::config::StoreKind::Aws, dir.path()),
        secrets,
        records,
    );
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let service = ConnectService::new(
        app,
        connect_config(),
        Arc::new(DynamoDbConnectSessionStore::new(dynamodb.clone(), &table)),
        Arc::new(SecretsManagerOAuthAppStore::new(
            aws_sdk_secretsmanager::Client::new(&sdk),
            &app_prefix,
        )),
    );
    aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name(format!("{app_prefix}salesforce"))
        .secret_string(
            json!({"clientId": sf::CLIENT_ID, "clientSecret": sf::CLIENT_SECRET}).to_string(),
        )
        .send()
        .await
        .unwrap();
    let f = Fixture::with(service, dir).await;
    let token = f
        .link(json!({"connectionId": "acme-sf", "settings": {"loginUrl": f.salesforce.base_url()}}))
        .await;
    let item = dynamodb.scan().table_name(&table).send().await.unwrap();
    let keys: Vec<String> = item
        .items()
        .iter()
        .map(|i| i["pk"].as_s().unwrap().clone())
        .collect();
    assert_eq!(keys.len(), 1);
    assert!(
        keys[0].starts_with("connect#") && !keys[0].contains(&token),
        "{keys:?}"
    );
    assert!(
        item.items()[0]["expiresAt"].as_n().is_ok(),
        "the table's TTL removes it"
    );
    let cookie = f.open(&token).await;
    let started = f.post_page(&cookie, &[("crm", "salesforce")]).await;
    let back = f.consent(&started.header("location"), true).await;
    let done = f.get_callback(&cookie, &back).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let stored = f.stored("acme-sf").await.unwrap();
    assert_eq!(stored.crm_type, CrmType::Salesforce);
    assert_eq!(f.get_callback(&cookie, &back).await.status, 410);
}

#[tokio::test]
async fn dynamics_connects_with_the_app_credentials_typed_on_the_page() {
    use crm_sync_tests::conformance::dynamics as dc;
    use crm_sync_tests::emulator::dynamics::DynamicsEmulator;
    let f = Fixture::local().await;
    let dynamics = DynamicsEmulator::start(dc::tokens()).await.unwrap();
    let token = f
        .link(json!({"connectionId": "acme-dynamics", "crmType": "dynamics",
                     "settings": {"environmentUrl": dynamics.base_url(), "authorityUrl": dynamics.base_url()}}))
        .await;
    let cookie = f.open(&token).await;
    let form = f.get_page(Some(&cookie), &[]).await;
    for asked in ["clientId", "clientSecret", "tenantId"] {
        assert!(form.body.contains(&format!("name=\"{asked}\"")), "{asked}");
    }
    assert!(
        !form.body.contains("name=\"environmentUrl\"")
            && !form.body.contains("name=\"authorityUrl\"")
    );
    let done = f
        .post_callback(
            &cookie,
            &[
                ("crm", "dynamics"),
                ("clientId", dc::CLIENT_ID),
                ("clientSecret", dc::CLIENT_SECRET),
                ("tenantId", dc::TENANT_ID),
            ],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Microsoft Dynamics 365 is connected"));
    let stored = f.stored("acme-dynamics").await.unwrap();
    assert_eq!(stored.settings.extra_str("tenantId"), Some(dc::TENANT_ID));
    f.assert_never_shown(&[dc::CLIENT_SECRET, &token]);
}

#[tokio::test]
async fn sugarcrm_connects_with_the_user_typed_on_the_page_and_a_wrong_password_stores_nothing() {
    use crm_sync_tests::conformance::sugarcrm as sc;
    use crm_sync_tests::emulator::sugarcrm::SugarEmulator;
    let f = Fixture::local().await;
    let sugar = SugarEmulator::start(sc::instance()).await.unwrap();
    let token = f
        .link(json!({"connectionId": "acme-sugar", "crmType": "sugarcrm",
                     "settings": {"instanceUrl": sugar.base_url()}}))
        .await;
    let cookie = f.open(&token).await;
    let form = f.get_page(Some(&cookie), &[]).await;
    for asked in ["username", "password"] {
        assert!(form.body.contains(&format!("name=\"{asked}\"")), "{asked}");
    }
    assert!(
        !form.body.contains("name=\"instanceUrl\""),
        "the link fixes it"
    );
    let wrong = "not-the-sugar-password-3Qz";
    let refused = f
        .post_callback(
            &cookie,
            &[
                ("crm", "sugarcrm"),
                ("username", sc::USERNAME),
                ("password", wrong),
            ],
        )
        .await;
    assert_ne!(refused.status, 200, "{}", refused.body);
    assert!(
        f.stored("acme-sugar").await.is_none(),
        "tested before stored"
    );
    let done = f
        .post_callback(
            &cookie,
            &[
                ("crm", "sugarcrm"),
                ("username", sc::USERNAME),
                ("password", sc::PASSWORD),
            ],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("SugarCRM is connected"), "{}", done.body);
    let stored = f.stored("acme-sugar").await.unwrap();
    assert_eq!(stored.crm_type, CrmType::Sugarcrm);
    assert_eq!(
        stored.settings.extra_str("instanceUrl"),
        Some(sugar.base_url())
    );
    f.assert_never_shown(&[sc::PASSWORD, wrong, &token]);
}
