//! OAuth2 token refresh shared by Salesforce and Zoho: single-flight across concurrent
//! invocations, written back to the connection store, on local stores and on moto.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use crm_sync::connection::{Connection, ConnectionId, SecretString};
use crm_sync::crm::oauth::{AccessGrant, OAuthProvider, OAuthSession, TokenGrant};
use crm_sync::crm::{AdapterContext, CrmHttp};
use crm_sync::domain::CrmType;
use crm_sync::error::Error;
use crm_sync::store::local;
use crm_sync::store::{ConnectionStore, SyncRecordStore};
use crm_sync_tests::emulator::oauth::OAuthTokens;
use crm_sync_tests::emulator::{RunningEmulator, serve};
use crm_sync_tests::harness::{TempDir, aws_stores, test_config};
use serde_json::json;

type Tokens = Arc<Mutex<OAuthTokens>>;

async fn token_endpoint(
    State(tokens): State<Tokens>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // Slow enough that concurrent refreshes would overlap if nothing serialised them.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let result = tokens.lock().unwrap().refresh(&form);
    match result {
        Ok(issued) => Json(json!({"access_token": issued.access_token, "refresh_token": issued.refresh_token,
            "instance_url": "https://example.my.salesforce.com", "expires_in": issued.expires_in, "token_type": "Bearer"}))
        .into_response(),
        Err(e) => (StatusCode::from_u16(e.status).unwrap(), Json(json!({"error": e.error, "error_description": e.description}))).into_response(),
    }
}

async fn token_server(rotate: bool) -> (RunningEmulator, Tokens) {
    let mut tokens = OAuthTokens::new(
        "client-1",
        "client-secret-xyz",
        "refresh-secret-abc",
        chrono::Duration::hours(1),
    );
    tokens.rotate_refresh_tokens = rotate;
    let tokens = Arc::new(Mutex::new(tokens));
    let routes = Router::new()
        .route("/token", post(token_endpoint))
        .with_state(tokens.clone());
    let server = serve(
        routes,
        |_| json!({"error": "server_error"}),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    (server, tokens)
}

fn provider(server: &RunningEmulator) -> OAuthProvider {
    OAuthProvider {
        token_url: format!("{}/token", server.base_url),
        grant: TokenGrant::RefreshToken,
        api_base_field: Some("instance_url"),
        api_base_setting: "instanceUrl",
        default_lifetime: None,
    }
}

fn stored_connection(access_token: &str) -> Connection {
    let mut connection = Connection {
        id: None,
        crm_type: CrmType::Salesforce,
        credentials: [
            ("clientId", "client-1"),
            ("clientSecret", "client-secret-xyz"),
            ("refreshToken", "refresh-secret-abc"),
            ("accessToken", access_token),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), SecretString::new(*v)))
        .collect(),
        settings: Default::default(),
    };
    connection
        .settings
        .extra
        .insert("instanceUrl".into(), json!("https://old.my.salesforce.com"));
    connection
}

fn context(
    connections: Arc<dyn ConnectionStore>,
    records: Arc<dyn SyncRecordStore>,
) -> AdapterContext {
    let dir = std::env::temp_dir();
    AdapterContext {
        http: CrmHttp::new(&test_config(crm_sync::config::StoreKind::Local, &dir)),
        connections,
        records,
        // Token refreshes are what these tests count; token endpoints take no budget anyway.
        budgets: crm_sync::budget::Budgets::off(),
    }
}

/// Five cold starts hold the same rejected token and all ask for a refresh at once.
async fn concurrent_rejections_refresh_once(ctx: AdapterContext) {
    let (server, tokens) = token_server(true).await;
    let id = ConnectionId::parse("sf-acme").unwrap();
    ctx.connections
        .put(&id, &stored_connection("stale-token"))
        .await
        .unwrap();
    let stale = AccessGrant {
        access_token: SecretString::new("stale-token"),
        api_base: "https://old.my.salesforce.com".into(),
    };
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let connection = ctx.connections.get(&id).await.unwrap();
        let session = OAuthSession::new(&connection, &ctx, provider(&server)).unwrap();
        let stale = stale.clone();
        tasks.push(tokio::spawn(async move {
            session.refresh_after_rejection(&stale).await
        }));
    }
    let mut grants = Vec::new();
    for task in tasks {
        grants.push(task.await.unwrap().expect("refreshed"));
    }
    assert_eq!(
        tokens.lock().unwrap().refreshes,
        1,
        "one refresh for five invocations"
    );
    assert!(
        grants.iter().all(|g| g == &grants[0]),
        "everyone uses the one new token"
    );
    assert_ne!(grants[0].access_token.expose(), "stale-token");
    assert_eq!(grants[0].api_base, "https://example.my.salesforce.com");
    let stored = ctx.connections.get(&id).await.unwrap();
    assert_eq!(
        stored.credential("accessToken").unwrap(),
        &grants[0].access_token,
        "written back"
    );
    let rotated = stored
        .credential("refreshToken")
        .unwrap()
        .expose()
        .to_string();
    assert!(
        tokens.lock().unwrap().refresh_tokens.contains(&rotated),
        "the rotated refresh token is the one stored"
    );
    assert_eq!(
        stored.settings.extra_str("instanceUrl"),
        Some("https://example.my.salesforce.com")
    );

    // The next cold start uses the stored token without refreshing.
    let session = OAuthSession::new(&stored, &ctx, provider(&server)).unwrap();
    assert_eq!(session.grant().await.unwrap(), grants[0]);
    assert_eq!(tokens.lock().unwrap().refreshes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rejections_refresh_once_on_local_stores() {
    let dir = TempDir::new("oauth");
    let (connections, records) = local::open(dir.path());
    concurrent_rejections_refresh_once(context(Arc::new(connections), Arc::new(records))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rejections_refresh_once_on_aws_stores() {
    let (connections, records) = aws_stores().await;
    concurrent_rejections_refresh_once(context(Arc::new(connections), Arc::new(records))).await;
}

#[tokio::test]
async fn an_expired_token_is_refreshed_before_use_and_a_revoked_refresh_token_fails_clearly() {
    let (server, tokens) = token_server(false).await;
    let dir = TempDir::new("oauth");
    let (connections, records) = local::open(dir.path());
    let ctx = context(Arc::new(connections), Arc::new(records));
    let id = ConnectionId::parse("zoho-acme").unwrap();
    let mut connection = stored_connection("old-token");
    connection.settings.extra.insert(
        "accessTokenExpiresAt".into(),
        json!((chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339()),
    );
    ctx.connections.put(&id, &connection).await.unwrap();
    let stored = ctx.connections.get(&id).await.unwrap();
    let grant = OAuthSession::new(&stored, &ctx, provider(&server))
        .unwrap()
        .grant()
        .await
        .unwrap();
    assert_ne!(grant.access_token.expose(), "old-token");
    assert_eq!(tokens.lock().unwrap().refreshes, 1);

    tokens.lock().unwrap().refresh_tokens.clear();
    tokens.lock().unwrap().expire_all();
    let stored = ctx.connections.get(&id).await.unwrap();
    let error = OAuthSession::new(&stored, &ctx, provider(&server))
        .unwrap()
        .refresh_after_rejection(&grant)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::CrmAuth(_)), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("invalid_grant"), "{message}");
    for secret in [
        "refresh-secret-abc",
        "client-secret-xyz",
        grant.access_token.expose(),
    ] {
        assert!(!message.contains(secret), "no secret in the error");
    }
}
