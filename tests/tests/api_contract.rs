//! Where the API and openapi.yaml disagreed, as the Schemathesis run (tests/fuzz/run.sh) found
//! it: each case pinned through the Lambda handlers (every response checked against openapi.yaml,
//! every accepted request too), and a body that is not UTF-8 through the API Gateway harness.

use std::sync::Arc;

use crm_sync::App;
use crm_sync::domain::CrmType;
use crm_sync::http::Operation;
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use crm_sync_tests::gateway;
use crm_sync_tests::harness::*;
use lambda_http::http::Method;
use serde_json::{Value, json};

const TOKEN: &str = "hubspot-contract-token-5e0c";

struct Api {
    app: Arc<App>,
    hubspot: HubSpotEmulator,
    spec: OpenApi,
    _dir: TempDir,
}

impl Api {
    async fn start() -> Self {
        let dir = TempDir::new("contract");
        let app = local_app(&dir);
        let hubspot = HubSpotEmulator::start(&[TOKEN]).await.unwrap();
        let demo = connection(
            CrmType::Hubspot,
            hubspot.base_url(),
            &[("accessToken", TOKEN)],
        );
        store_connection(&app, "demo", &demo).await;
        Api {
            app: Arc::new(app),
            hubspot,
            spec: OpenApi::crm_sync(),
            _dir: dir,
        }
    }

    async fn post(&self, operation: Operation, body: Value) -> ApiAnswer {
        self.post_with_key(operation, body, None).await
    }

    async fn post_with_key(
        &self,
        operation: Operation,
        body: Value,
        key: Option<&str>,
    ) -> ApiAnswer {
        let mut request = api_request(Method::POST, Some(TEST_API_KEY), Some(&body));
        if let Some(key) = key {
            request
                .headers_mut()
                .insert("idempotency-key", key.parse().unwrap());
        }
        call_checked(&self.app, &self.spec, operation, request).await
    }

    async fn get(&self, query: &[(&str, &str)]) -> ApiAnswer {
        let request = get_request(Some(TEST_API_KEY), query);
        call_checked(&self.app, &self.spec, Operation::GetCustomer, request).await
    }
}

fn refused(answer: &ApiAnswer) -> (u16, &str) {
    (
        answer.status,
        answer.body["error"]["field"].as_str().unwrap_or("<none>"),
    )
}

#[tokio::test]
async fn an_empty_or_padded_connection_id_is_refused_by_the_spec_and_the_api() {
    let api = Api::start().await;
    let spec = &api.spec;
    assert!(
        spec.check_query(
            "GET",
            "/get-customer",
            "connectionId=&email=a%40example.com"
        )
        .is_err()
    );
    for id in ["", " demo"] {
        let body = json!({"connectionId": id, "customer": {"email": "a@example.com"}});
        assert!(spec.check_request("POST", "/sync-customer", &body).is_err());
        let answer = api.post(Operation::SyncCustomer, body).await;
        assert_eq!(refused(&answer), (400, "connectionId"), "{id:?}");
        let answer = api
            .get(&[("connectionId", id), ("email", "a@example.com")])
            .await;
        assert_eq!(refused(&answer), (400, "connectionId"), "{id:?}");
    }
}

#[tokio::test]
async fn a_connection_id_that_is_not_a_string_is_refused() {
    let api = Api::start().await;
    for id in [json!(null), json!(7), json!(true), json!({"id": "demo"})] {
        let inline = json!({"connectionId": id, "crmType": "hubspot",
            "credentials": {"accessToken": TOKEN}, "settings": {"baseUrl": api.hubspot.base_url()}});
        assert!(
            api.spec
                .check_request("POST", "/test-connection", &inline)
                .is_err()
        );
        let answer = api.post(Operation::TestConnection, inline).await;
        assert_eq!(refused(&answer), (400, "connectionId"), "{id}");
        let stored = json!({"connectionId": id});
        let answer = api.post(Operation::TestConnection, stored).await;
        assert_eq!(refused(&answer), (400, "connectionId"), "{id}");
        let lead = json!({"connectionId": id, "lead": {"email": "a@example.com"}});
        let answer = api.post(Operation::SyncLead, lead).await;
        assert_eq!(refused(&answer), (400, "connectionId"), "{id}");
    }
    assert_eq!(api.hubspot.server.control.request_count(), 0);
}

#[tokio::test]
async fn a_body_that_is_not_utf8_reaches_the_function_base64_encoded_and_is_answered_400() {
    let api = Api::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = gateway::router(api.app.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = reqwest::Client::new();
    let url = |function: &str| format!("http://{address}/lambda-url/{function}");
    for operation in [
        "sync-customer",
        "sync-appointment",
        "sync-lead",
        "test-connection",
        "sync-batch",
        "sync-records/replay",
    ] {
        let response = client
            .post(url(operation))
            .header("x-api-key", TEST_API_KEY)
            .header("content-type", "application/json")
            .body(vec![0xff, 0xfe, b'{', 0x80])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            (status, body["error"]["field"].clone()),
            (400, json!("body"))
        );
        api.spec
            .check_response("POST", &format!("/{operation}"), status, &body)
            .unwrap();
    }
    // The same harness passes UTF-8 through as text.
    let response = client
        .post(url("sync-customer"))
        .header("x-api-key", TEST_API_KEY)
        .body(r#"{"connectionId": "demo", "customer": {"firstName": "Zoë", "email": "zoe@example.com"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // A function serving two operations picks by method, at its own path and below it.
    let records = client
        .get(format!("{}?syncId=no-such-sync", url("sync-records")))
        .header("x-api-key", TEST_API_KEY)
        .send()
        .await
        .unwrap();
    assert_ne!(records.status().as_u16(), 405);
    let replay = client
        .post(url("sync-records/replay"))
        .header("x-api-key", TEST_API_KEY)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status().as_u16(), 400);
    server.abort();
}

#[test]
fn the_gateway_event_carries_a_non_utf8_body_base64_encoded() {
    let (parts, _) = lambda_http::http::Request::builder()
        .method("POST")
        .uri("/lambda-url/sync-customer?x=a%40b")
        .header("x-api-key", "k")
        .body(())
        .unwrap()
        .into_parts();
    let event = gateway::proxy_event(
        "/api/v1/integrations/crm/sync-customer",
        &parts,
        &[0xff, 0x00],
    );
    assert_eq!(event["isBase64Encoded"], true);
    assert_eq!(event["body"], "/wA=");
    assert_eq!(event["queryStringParameters"]["x"], "a@b");
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    assert_eq!(request.body().as_ref(), &[0xff, 0x00]);
    let text = gateway::proxy_event("/api/v1/integrations/crm/sync-customer", &parts, b"{}");
    assert_eq!(
        (text["isBase64Encoded"].clone(), text["body"].clone()),
        (json!(false), json!("{}"))
    );
}

#[tokio::test]
async fn null_in_optional_fields_counts_as_absent() {
    let api = Api::start().await;
    // call_checked also checks every accepted request against openapi.yaml.
    let customer = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "crmType": null, "customerData": null, "credentials": null,
            "customer": {"firstName": "Ana", "lastName": null, "email": "ana@example.com", "phone": null,
            "customerEmail": null, "address": null, "city": null, "state": null, "zipCode": null, "country": null}}),
        )
        .await;
    assert_eq!(customer.status, 200, "{}", customer.body);
    let appointment = api
        .post(
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "customer": {"email": "ana@example.com"}, "customerId": null,
            "appointment": {"start": "2025-07-01T10:00:00Z", "startTime": null, "end": null, "endTime": null,
            "durationMinutes": null, "timezone": null, "title": null, "notes": null, "location": null,
            "status": null, "externalId": null, "customer": null, "customerPhone": null}}),
        )
        .await;
    assert_eq!(appointment.status, 200, "{}", appointment.body);
    let lead = api
        .post(
            Operation::SyncLead,
            json!({"connectionId": "demo", "leadData": null,
            "lead": {"email": "lead@example.com", "company": null, "notes": null, "source": null, "externalId": null}}),
        )
        .await;
    assert_eq!(lead.status, 200, "{}", lead.body);
}

#[tokio::test]
async fn a_malformed_request_is_refused_before_its_idempotency_key_is_claimed() {
    let api = Api::start().await;
    for body in [
        json!([null, null]),
        json!({"connectionId": "demo", "customer": {"email": "bad@"}}),
    ] {
        let answer = api
            .post_with_key(Operation::SyncCustomer, body, Some("key-1"))
            .await;
        assert_eq!(answer.status, 400, "{}", answer.body);
    }
    let valid = json!({"connectionId": "demo", "customer": {"email": "kay@example.com"}});
    let first = api
        .post_with_key(Operation::SyncCustomer, valid.clone(), Some("key-1"))
        .await;
    assert_eq!(
        first.status, 200,
        "the key was not taken by the refused requests"
    );
    let malformed = json!({"connectionId": "demo", "customer": {"email": "also-bad@"}});
    let again = api
        .post_with_key(Operation::SyncCustomer, malformed, Some("key-1"))
        .await;
    assert_eq!(
        refused(&again),
        (400, "customer.email"),
        "malformed is malformed, whatever the key did before"
    );
    let key = api
        .post_with_key(Operation::SyncCustomer, valid, Some(" spaced key"))
        .await;
    assert_eq!(refused(&key), (400, "Idempotency-Key"));
}

#[tokio::test]
async fn a_malformed_request_naming_an_unknown_connection_is_400_and_a_valid_one_404() {
    let api = Api::start().await;
    let malformed = json!({"connectionId": "nope", "customer": {"email": "bad@"}});
    let answer = api.post(Operation::SyncCustomer, malformed).await;
    assert_eq!(refused(&answer), (400, "customer.email"));
    let valid = json!({"connectionId": "nope", "customer": {"email": "a@example.com"}});
    let answer = api.post(Operation::SyncCustomer, valid).await;
    assert_eq!(refused(&answer), (404, "connectionId"));
    let answer = api
        .get(&[("connectionId", "nope"), ("email", "nope")])
        .await;
    assert_eq!(refused(&answer), (400, "email"));
}

#[tokio::test]
async fn every_alias_given_is_checked_not_only_the_one_used() {
    let api = Api::start().await;
    let email = json!({"email": "a@example.com"});
    let appointment = json!({"start": "2025-07-01T10:00:00Z"});
    // (request, the field refused, whether a JSON Schema validator sees it: formats such as
    // `email` and `phone` are for Schemathesis' generators, not this validator).
    let cases = [
        (
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": email, "customerData": {"email": "bad@"}}),
            "customerData.email",
            false,
        ),
        (
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"email": "a@example.com", "customerEmail": "x"}}),
            "customer.customerEmail",
            false,
        ),
        (
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"email": "a@example.com", "firstName": true}}),
            "customer.firstName",
            true,
        ),
        // A phone as a JSON number has lost its + and leading zeros.
        (
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"email": "a@example.com", "mobile": 4155550100u64}}),
            "customer.mobile",
            true,
        ),
        (
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "customer": email,
                "appointment": {"start": "2025-07-01T10:00:00Z", "startTime": "soon"}}),
            "appointment.startTime",
            false,
        ),
        (
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "customer": email, "appointment": appointment,
                "appointmentData": {"title": "no start"}}),
            "appointmentData.start",
            true,
        ),
        (
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "customer": email,
                "appointment": {"start": "2025-07-01T10:00:00Z", "customerPhone": "12"}}),
            "appointment.customerPhone",
            false,
        ),
        (
            Operation::SyncLead,
            json!({"connectionId": "demo", "lead": email, "leadData": {"phone": 12}}),
            "leadData.phone",
            true,
        ),
    ];
    for (operation, body, field, schema_sees_it) in cases {
        if schema_sees_it {
            let path = format!("/{}", operation.name());
            let checked = api.spec.check_request("POST", &path, &body);
            assert!(checked.is_err(), "the spec refuses {body}");
        }
        let answer = api.post(operation, body.clone()).await;
        assert_eq!(refused(&answer), (400, field), "{body}");
    }
    let answer = api
        .get(&[
            ("connectionId", "demo"),
            ("customerId", "1001"),
            ("email", "nope"),
        ])
        .await;
    assert_eq!(refused(&answer), (400, "email"));
    assert_eq!(api.hubspot.server.control.request_count(), 0);
}

#[tokio::test]
async fn the_first_appointment_form_is_the_one_that_must_name_the_customer() {
    let api = Api::start().await;
    let body = json!({"connectionId": "demo",
        "appointment": {"start": "2025-07-01T10:00:00Z", "customerEmail": "first@example.com"},
        "appointmentData": {"start": "2025-07-02T10:00:00Z"}});
    let answer = api.post(Operation::SyncAppointment, body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = json!({"connectionId": "demo",
        "appointment": {"start": "2025-07-01T10:00:00Z"},
        "appointmentData": {"start": "2025-07-02T10:00:00Z", "customerEmail": "second@example.com"}});
    assert!(
        api.spec
            .check_request("POST", "/sync-appointment", &body)
            .is_err()
    );
    let answer = api.post(Operation::SyncAppointment, body).await;
    assert_eq!(refused(&answer), (400, "customer"));
}

#[tokio::test]
async fn whole_numbers_written_with_a_fraction_are_whole_numbers() {
    let api = Api::start().await;
    let answer = api
        .post(
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "customer": {"email": "b@example.com"},
            "appointment": {"start": 1751364000000.0, "durationMinutes": 45.0}}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let meetings = api.hubspot.state.lock().unwrap().all("meetings");
    assert_eq!(
        meetings[0].prop("hs_meeting_start_time"),
        Some("2025-07-01T10:00:00.000Z")
    );
    assert_eq!(
        meetings[0].prop("hs_meeting_end_time"),
        Some("2025-07-01T10:45:00.000Z")
    );
    let answer = api
        .post(
            Operation::TestConnection,
            json!({"crmType": "hubspot", "credentials": {"accessToken": TOKEN},
            "settings": {"baseUrl": api.hubspot.base_url(), "defaultAppointmentMinutes": 30.0}}),
        )
        .await;
    assert_eq!(answer.body["ok"], true, "{}", answer.body);
}

#[tokio::test]
async fn test_connection_answers_incomplete_credentials_with_its_verdict_and_refuses_mixed_forms() {
    let api = Api::start().await;
    let incomplete = api
        .post(
            Operation::TestConnection,
            json!({"crmType": "zoho", "credentials": {}}),
        )
        .await;
    assert_eq!(incomplete.status, 200, "{}", incomplete.body);
    assert_eq!(incomplete.body["ok"], false);
    assert_eq!(incomplete.body["error"]["code"], "connection_invalid");
    let both = json!({"connectionId": "demo", "crmType": "hubspot", "credentials": {"accessToken": TOKEN}});
    assert!(
        api.spec
            .check_request("POST", "/test-connection", &both)
            .is_err()
    );
    let answer = api.post(Operation::TestConnection, both).await;
    assert_eq!(refused(&answer), (400, "credentials"));
    let settings = json!({"connectionId": "demo", "settings": [null, null]});
    let answer = api.post(Operation::TestConnection, settings).await;
    assert_eq!(refused(&answer), (400, "settings"));
    let other_crm = json!({"connectionId": "demo", "crmType": "zoho"});
    let answer = api.post(Operation::TestConnection, other_crm).await;
    assert_eq!(refused(&answer), (400, "crmType"));
}
