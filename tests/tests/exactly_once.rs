//! `Idempotency-Key` on the sync endpoints, concurrent identical requests without one (however
//! many arrive at once, the CRM sees one write), and what `test-connection` says of the stamp
//! field a lost answer is reconciled by.

use std::sync::Arc;

use crm_sync::App;
use crm_sync::domain::CrmType;
use crm_sync::http::{Operation, handle};
use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use crm_sync_tests::harness::*;
use lambda_http::Request;
use lambda_http::http::Method;
use serde_json::{Value, json};

const TOKEN: &str = "hubspot-idempotency-token-51c2";

async fn app_with_hubspot() -> (Arc<App>, HubSpotEmulator, TempDir) {
    let dir = TempDir::new("idempotency");
    let app = local_app(&dir);
    let hubspot = HubSpotEmulator::start(&[TOKEN]).await.unwrap();
    store_connection(
        &app,
        "demo",
        &connection(
            CrmType::Hubspot,
            hubspot.base_url(),
            &[("accessToken", TOKEN)],
        ),
    )
    .await;
    (Arc::new(app), hubspot, dir)
}

fn request(body: &Value, key: Option<&str>) -> Request {
    let mut request = api_request(Method::POST, Some(TEST_API_KEY), Some(body));
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("Idempotency-Key", key.parse().unwrap());
    }
    request
}

async fn call(app: &App, body: &Value, key: Option<&str>) -> (u16, Value, Option<String>) {
    let response = handle(app, Operation::SyncCustomer, request(body, key))
        .await
        .unwrap();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, body) = read_response(response);
    (status, body, replayed)
}

fn contact_creates(hubspot: &HubSpotEmulator) -> usize {
    hubspot
        .server
        .control
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/crm/v3/objects/contacts")
        .count()
}

fn customer(email: &str) -> Value {
    json!({"connectionId": "demo", "customer": {"firstName": "Idem", "lastName": "Potent", "email": email}})
}

#[tokio::test]
async fn the_same_key_and_body_answer_the_stored_response_without_a_crm_call() {
    let (app, hubspot, _dir) = app_with_hubspot().await;
    let body = customer("idem@example.com");
    let (status, first, replayed) = call(&app, &body, Some("booking-77")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(replayed, None);
    let calls = hubspot.server.control.request_count();
    let (status, again, replayed) = call(&app, &body, Some("booking-77")).await;
    assert_eq!(status, 200);
    assert_eq!(again, first, "the stored answer, created and all");
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(hubspot.server.control.request_count(), calls, "no CRM call");

    // Key order and white space do not make another body.
    let reordered: Value = serde_json::from_str(
        r#"{ "customer": {"email": "idem@example.com", "lastName": "Potent", "firstName": "Idem"}, "connectionId": "demo" }"#,
    )
    .unwrap();
    let (status, _, replayed) = call(&app, &reordered, Some("booking-77")).await;
    assert_eq!((status, replayed.as_deref()), (200, Some("true")));
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused_and_nothing_is_written() {
    let (app, hubspot, _dir) = app_with_hubspot().await;
    call(&app, &customer("first@example.com"), Some("key-1")).await;
    let calls = hubspot.server.control.request_count();
    let (status, body, _) = call(&app, &customer("second@example.com"), Some("key-1")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(body["error"]["field"], "Idempotency-Key");
    assert_eq!(hubspot.server.control.request_count(), calls);
}

#[tokio::test]
async fn a_malformed_key_is_a_clear_400() {
    let (app, _hubspot, _dir) = app_with_hubspot().await;
    let long = "k".repeat(256);
    let (status, body, _) = call(&app, &customer("a@example.com"), Some(&long)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "Idempotency-Key");
}

#[tokio::test]
async fn a_malformed_request_claims_no_key_and_a_transient_failure_frees_it() {
    let (app, hubspot, _dir) = app_with_hubspot().await;
    let bad = json!({"connectionId": "demo", "customer": {"email": "not-an-email"}});
    let (status, _, _) = call(&app, &bad, Some("bad-1")).await;
    assert_eq!(status, 400);
    let (status, _, replayed) = call(&app, &bad, Some("bad-1")).await;
    assert_eq!(
        (status, replayed),
        (400, None),
        "refused again, not replayed"
    );
    let (status, answer, replayed) =
        call(&app, &customer("fixed@example.com"), Some("bad-1")).await;
    assert_eq!(
        (status, replayed),
        (200, None),
        "the corrected request may use the key: {answer}"
    );

    hubspot
        .server
        .control
        .inject(crm_sync_tests::emulator::Fault::status(503).times(10));
    let body = customer("outage@example.com");
    let (status, _, _) = call(&app, &body, Some("outage-1")).await;
    assert_eq!(status, 503);
    hubspot.server.control.clear_faults();
    let (status, answer, replayed) = call(&app, &body, Some("outage-1")).await;
    assert_eq!((status, replayed), (200, None), "{answer}");
    assert_eq!(answer["status"], "created");
}

/// 50 requests with one key arrive at once: one runs, the others are told it is in progress
/// (409 with Retry-After) or get its stored answer; the CRM sees one create.
#[tokio::test]
async fn fifty_concurrent_requests_with_one_key_make_one_crm_write() {
    let (app, hubspot, _dir) = app_with_hubspot().await;
    let body = customer("fifty@example.com");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (app, body) = (app.clone(), body.clone());
        tasks.spawn(async move {
            let response = handle(
                &app,
                Operation::SyncCustomer,
                request(&body, Some("same-key")),
            )
            .await
            .unwrap();
            let retry_after = response.headers().get("retry-after").cloned();
            let (status, body) = read_response(response);
            if status == 409 {
                assert_eq!(body["error"]["code"], "sync_in_progress");
                assert!(retry_after.is_some(), "409 carries Retry-After");
            } else {
                assert_eq!(status, 200, "{body}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(contact_creates(&hubspot), 1);
    assert_eq!(hubspot.state.lock().unwrap().objects["contacts"].len(), 1);
}

/// The same 50 without a key: the sync record's conditional claim lets one through.
#[tokio::test]
async fn fifty_concurrent_identical_requests_without_a_key_make_one_crm_write() {
    let (app, hubspot, _dir) = app_with_hubspot().await;
    let body = customer("nokey@example.com");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (app, body) = (app.clone(), body.clone());
        tasks.spawn(async move { call(&app, &body, None).await.0 });
    }
    let mut statuses = Vec::new();
    while let Some(done) = tasks.join_next().await {
        statuses.push(done.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    assert_eq!(contact_creates(&hubspot), 1);
    // Every request that was told to wait gets the synced answer on its retry.
    let (status, answer, _) = call(&app, &body, None).await;
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "unchanged");
}

#[tokio::test]
async fn test_connection_warns_when_the_stamp_property_is_missing() {
    let (app, hubspot, _dir) = app_with_hubspot().await;
    let test = |app: Arc<App>| async move {
        let body = json!({"connectionId": "demo"});
        let response = handle(&app, Operation::TestConnection, request(&body, None))
            .await
            .unwrap();
        read_response(response)
    };
    let (status, body) = test(app.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], true);
    assert!(body.get("warnings").is_none(), "{body}");

    hubspot
        .state
        .lock()
        .unwrap()
        .unique_properties
        .retain(|(object_type, _)| object_type != "meetings");
    let (status, body) = test(app.clone()).await;
    assert_eq!((status, &body["ok"]), (200, &json!(true)));
    let warnings = body["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{body}");
    let warning = warnings[0].as_str().unwrap();
    assert!(
        warning.contains("meetings") && warning.contains("crm_sync_id"),
        "{warning}"
    );
    assert!(!warning.contains(TOKEN));
}

#[tokio::test]
async fn the_earlier_services_api_key_name_is_accepted_for_hubspot() {
    let (app, hubspot, _dir) = app_with_hubspot().await;
    store_connection(
        &app,
        "legacy",
        &connection(CrmType::Hubspot, hubspot.base_url(), &[("apiKey", TOKEN)]),
    )
    .await;
    let body = json!({"connectionId": "legacy"});
    let response = handle(&app, Operation::TestConnection, request(&body, None))
        .await
        .unwrap();
    let (status, body) = read_response(response);
    assert_eq!((status, &body["ok"]), (200, &json!(true)), "{body}");
}
