//! End to end through the Lambda handlers: requests as API Gateway delivers them, the HubSpot
//! emulator behind, local stores (and moto's AWS for the production stores). Every response is
//! checked against openapi.yaml.

use std::sync::Arc;

use crm_sync::App;
use crm_sync::config::StoreKind;
use crm_sync::domain::CrmType;
use crm_sync::http::Operation;
use crm_sync::store::aws::{DynamoDbSyncRecordStore, SecretsManagerConnectionStore};
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::emulator::Fault;
use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use crm_sync_tests::harness::*;
use crm_sync_tests::store_suite::create_records_table;
use lambda_http::Request;
use lambda_http::http::Method;
use serde_json::{Value, json};

const TOKEN: &str = "hubspot-e2e-secret-token-7d41";

const ALL: [Operation; 9] = [
    Operation::Platforms,
    Operation::TestConnection,
    Operation::SyncCustomer,
    Operation::SyncAppointment,
    Operation::SyncLead,
    Operation::GetCustomer,
    Operation::SyncBatch,
    Operation::SyncRecords,
    Operation::ReplaySyncRecords,
];

struct Api {
    app: App,
    hubspot: HubSpotEmulator,
    spec: OpenApi,
    dir: TempDir,
}

impl Api {
    async fn start() -> Self {
        let dir = TempDir::new("api");
        let app = local_app(&dir);
        Self::with_app(app, dir).await
    }

    async fn with_app(app: App, dir: TempDir) -> Self {
        LogCapture::global();
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
        store_connection(
            &app,
            "revoked",
            &connection(
                CrmType::Hubspot,
                hubspot.base_url(),
                &[("accessToken", "revoked-9f2")],
            ),
        )
        .await;
        Api {
            app,
            hubspot,
            spec: OpenApi::crm_sync(),
            dir,
        }
    }

    async fn call(&self, operation: Operation, request: Request) -> ApiAnswer {
        call_checked(&self.app, &self.spec, operation, request).await
    }

    async fn post(&self, operation: Operation, body: Value) -> ApiAnswer {
        self.call(
            operation,
            api_request(Method::POST, Some(TEST_API_KEY), Some(&body)),
        )
        .await
    }

    async fn get(&self, operation: Operation, query: &[(&str, &str)]) -> ApiAnswer {
        self.call(operation, get_request(Some(TEST_API_KEY), query))
            .await
    }

    fn record_files(&self) -> Vec<String> {
        sync_record_files(&self.dir)
    }
}

fn field(answer: &ApiAnswer) -> &str {
    answer.body["error"]["field"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn the_spec_documents_exactly_the_served_operations() {
    let spec = OpenApi::crm_sync();
    let mut documented = spec.paths();
    documented.sort();
    let mut served: Vec<String> = ALL.iter().map(|o| format!("/{}", o.name())).collect();
    served.sort();
    assert_eq!(documented, served);
    assert_eq!(
        spec.document()["security"],
        json!([{"apiKey": []}]),
        "every operation needs the API key"
    );
}

#[tokio::test]
async fn platforms_says_what_each_crm_needs() {
    let api = Api::start().await;
    let answer = api.get(Operation::Platforms, &[]).await;
    assert_eq!(answer.status, 200);
    let hubspot = answer.body["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["crmType"] == "hubspot")
        .unwrap();
    assert_eq!(hubspot["available"], true);
    assert_eq!(hubspot["credentialFields"], json!(["accessToken"]));
    assert_eq!(answer.body["platforms"].as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn every_endpoint_refuses_a_missing_or_wrong_api_key() {
    let api = Api::start().await;
    for operation in ALL {
        let method = operation_method(operation);
        for key in [None, Some("not-the-key")] {
            let answer = api
                .call(
                    operation,
                    api_request(method.clone(), key, Some(&json!({}))),
                )
                .await;
            assert_eq!(answer.status, 401, "{}", operation.name());
            assert_eq!(answer.body["error"]["code"], "unauthorized");
        }
    }
    assert_eq!(api.hubspot.server.control.request_count(), 0);
}

#[tokio::test]
async fn a_wrong_method_is_405() {
    let api = Api::start().await;
    let answer = api
        .call(
            Operation::SyncCustomer,
            api_request(Method::GET, Some(TEST_API_KEY), None),
        )
        .await;
    assert_eq!(answer.status, 405);
}

#[tokio::test]
async fn an_old_n8n_payload_syncs_a_customer_once() {
    let api = Api::start().await;
    let body = json!({"crmType": "hubspot", "connectionId": "demo", "customerData": {
        "firstName": "Jane", "lastName": "Doe", "email": "jane@example.com", "phone": "415-555-0100",
        "address": "1 Market St", "city": "San Francisco", "state": "CA", "zipCode": "94105"}});
    let first = api.post(Operation::SyncCustomer, body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], "created");
    assert_eq!(first.body["crmType"], "hubspot");
    let again = api.post(Operation::SyncCustomer, body).await;
    assert_eq!(again.body["status"], "unchanged");
    assert_eq!(again.body["syncId"], first.body["syncId"]);
    let contacts = api.hubspot.state.lock().unwrap().all("contacts");
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].prop("zip"), Some("94105"));
    assert_eq!(contacts[0].prop("phone"), Some("+14155550100"));
    let records = api.record_files();
    assert_eq!(records.len(), 1);
    let record: Value = serde_json::from_str(&records[0]).unwrap();
    assert_eq!(record["status"], "synced");
    assert_eq!(record["crmId"], first.body["crmId"]);
    assert_eq!(record["payload"]["email"], "jane@example.com");
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let api = Api::start().await;
    let cases: Vec<(Operation, Value, u16, &str)> = vec![
        (
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customerData": {"email": "jane@example"}}),
            400,
            "customerData.email",
        ),
        (
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"phone": "12"}}),
            400,
            "customer.phone",
        ),
        (
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"firstName": "No Key"}}),
            400,
            "customer.email",
        ),
        (
            Operation::SyncCustomer,
            json!({"connectionId": "demo"}),
            400,
            "customer",
        ),
        (
            Operation::SyncCustomer,
            json!({"customer": {"email": "a@example.com"}}),
            400,
            "connectionId",
        ),
        (
            Operation::SyncCustomer,
            json!({"connectionId": "nope", "customer": {"email": "a@example.com"}}),
            404,
            "connectionId",
        ),
        (
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "crmType": "salesforce", "customer": {"email": "a@example.com"}}),
            400,
            "crmType",
        ),
        (
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "credentials": {"accessToken": "x"}, "customer": {"email": "a@example.com"}}),
            400,
            "credentials",
        ),
        (
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "customerData": {"email": "a@example.com"},
            "appointmentData": {"startTime": "2025-07-01T10:00:00Z", "endTime": "2025-07-01T09:00:00Z"}}),
            400,
            "appointmentData.endTime",
        ),
        (
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "customerData": {"email": "a@example.com"},
            "appointmentData": {"title": "No start"}}),
            400,
            "appointmentData.start",
        ),
        (
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "customer": {"email": "a@example.com"},
            "appointment": {"start": "2025-07-01T10:00:00", "timezone": "Pacific/Atlantis"}}),
            400,
            "appointment.timezone",
        ),
        (
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "customer": {"email": "bad@"},
            "appointment": {"start": "2025-07-01T10:00:00Z"}}),
            400,
            "customer.email",
        ),
        (
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "appointment": {"start": "2025-07-01T10:00:00Z"}}),
            400,
            "customer",
        ),
        (
            Operation::SyncLead,
            json!({"connectionId": "demo", "leadData": {"email": "x@y", "company": "Acme"}}),
            400,
            "leadData.email",
        ),
        (
            Operation::TestConnection,
            json!({"crmType": "insightly", "credentials": {}}),
            400,
            "crmType",
        ),
    ];
    for (operation, body, status, expected_field) in cases {
        let answer = api.post(operation, body.clone()).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        assert_eq!(field(&answer), expected_field, "{body}");
    }
    let answer = api
        .call(Operation::SyncLead, {
            let mut r = api_request(Method::POST, Some(TEST_API_KEY), None);
            *r.body_mut() = lambda_http::Body::from("{not json");
            r
        })
        .await;
    assert_eq!((answer.status, field(&answer)), (400, "body"));
    let answer = api
        .get(Operation::GetCustomer, &[("connectionId", "demo")])
        .await;
    assert_eq!((answer.status, field(&answer)), (400, "customerId"));
    let answer = api
        .get(
            Operation::GetCustomer,
            &[("connectionId", "demo"), ("email", "nope")],
        )
        .await;
    assert_eq!((answer.status, field(&answer)), (400, "email"));

    assert_eq!(
        api.hubspot.server.control.request_count(),
        0,
        "no CRM call for bad input"
    );
    assert!(
        api.record_files().is_empty(),
        "no sync record for bad input"
    );
}

#[tokio::test]
async fn an_appointment_resent_through_the_api_never_duplicates() {
    let api = Api::start().await;
    let body = json!({"connectionId": "demo",
        "customer": {"firstName": "Jane", "email": "jane@example.com", "phone": "+14155550100"},
        "appointment": {"externalId": "cal-881", "title": "Dental cleaning", "start": "2025-11-02T09:00:00",
                        "timezone": "America/Los_Angeles", "durationMinutes": 60, "notes": "First visit"}});
    let first = api.post(Operation::SyncAppointment, body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    for _ in 0..3 {
        let again = api.post(Operation::SyncAppointment, body.clone()).await;
        assert_eq!(again.body["appointment"]["status"], "unchanged");
        assert_eq!(
            again.body["appointment"]["crmId"],
            first.body["appointment"]["crmId"]
        );
    }
    let state = api.hubspot.state.lock().unwrap();
    assert_eq!(state.all("contacts").len(), 1);
    let meetings = state.all("meetings");
    assert_eq!(meetings.len(), 1);
    // 09:00 in Los Angeles on the day DST ends (PST, UTC-8) is 17:00 UTC.
    assert_eq!(
        meetings[0].prop("hs_meeting_start_time"),
        Some("2025-11-02T17:00:00.000Z")
    );
    assert_eq!(meetings[0].prop("hs_meeting_body"), Some("First visit"));
    assert_eq!(
        meetings[0].associated("contacts"),
        vec![first.body["contact"]["crmId"].as_str().unwrap().to_string()]
    );
}

#[tokio::test]
async fn an_old_appointment_payload_with_a_crm_contact_id_links_to_it() {
    let api = Api::start().await;
    let contact_id = api
        .hubspot
        .state
        .lock()
        .unwrap()
        .insert("contacts", &[("email", "known@example.com")]);
    let answer = api
        .post(
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "crmType": "hubspot",
            "appointmentData": {"title": "Call back", "startTime": "2025-07-01T10:00:00-07:00",
                                "endTime": "2025-07-01T10:15:00-07:00", "customerId": contact_id}}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body["contact"],
        json!({"syncId": null, "crmId": contact_id, "status": "unchanged"})
    );
    let meetings = api.hubspot.state.lock().unwrap().all("meetings");
    assert_eq!(meetings[0].associated("contacts"), vec![contact_id]);
}

#[tokio::test]
async fn a_lead_lands_in_the_lead_object_linked_to_its_contact() {
    let api = Api::start().await;
    let answer = api
        .post(Operation::SyncLead, json!({"connectionId": "demo", "leadData": {"firstName": "Sam", "lastName": "Lee",
            "email": "sam@example.com", "phone": "+14155550177", "company": "Lee Plumbing", "notes": "Wants a quote"}}))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["contact"]["status"], "created");
    let state = api.hubspot.state.lock().unwrap();
    let leads = state.all("leads");
    assert_eq!(leads.len(), 1);
    assert_eq!(
        leads[0].prop("hs_lead_name"),
        Some("Sam Lee (Lee Plumbing)")
    );
    assert_eq!(
        leads[0].associated("contacts"),
        vec![
            answer.body["contact"]["crmId"]
                .as_str()
                .unwrap()
                .to_string()
        ]
    );
}

#[tokio::test]
async fn get_customer_answers_the_normalised_contact_or_404() {
    let api = Api::start().await;
    api.post(Operation::SyncCustomer, json!({"connectionId": "demo", "customer": {"firstName": "Ana", "email": "ana@example.com", "phone": "(212) 555-0142"}})).await;
    let found = api
        .get(
            Operation::GetCustomer,
            &[("connectionId", "demo"), ("phone", "212.555.0142")],
        )
        .await;
    assert_eq!(found.status, 200, "{}", found.body);
    assert_eq!(found.body["customer"]["email"], "ana@example.com");
    assert_eq!(found.body["customer"]["phone"], "+12125550142");
    let missing = api
        .get(
            Operation::GetCustomer,
            &[("connectionId", "demo"), ("email", "nobody@example.com")],
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["code"], "not_found");
}

#[tokio::test]
async fn test_connection_checks_stored_and_inline_credentials_without_storing_them() {
    let api = Api::start().await;
    let stored = api
        .post(Operation::TestConnection, json!({"connectionId": "demo"}))
        .await;
    assert_eq!(
        (stored.status, stored.body["ok"].clone()),
        (200, json!(true)),
        "{}",
        stored.body
    );
    let revoked = api
        .post(
            Operation::TestConnection,
            json!({"connectionId": "revoked"}),
        )
        .await;
    assert_eq!(revoked.body["ok"], false);
    assert_eq!(revoked.body["error"]["code"], "crm_auth_failed");
    let inline = api
        .post(
            Operation::TestConnection,
            json!({"crmType": "hubspot", "credentials": {"accessToken": TOKEN},
            "settings": {"baseUrl": api.hubspot.base_url()}}),
        )
        .await;
    assert_eq!(inline.body["ok"], true, "{}", inline.body);
    let ids: Vec<String> = api
        .app
        .connections
        .list()
        .await
        .unwrap()
        .iter()
        .map(|i| i.to_string())
        .collect();
    assert_eq!(
        ids,
        vec!["demo", "revoked"],
        "inline credentials are never stored"
    );
}

#[tokio::test]
async fn a_rate_limited_sync_is_429_with_the_wait_and_its_sync_id() {
    let api = Api::start().await;
    api.hubspot
        .server
        .control
        .inject(Fault::status(429).retry_after(90).times(5));
    let answer = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"email": "busy@example.com"}}),
        )
        .await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.retry_after.as_deref(), Some("90"));
    assert_eq!(answer.body["error"]["retryAfterSeconds"], 90);
    assert_eq!(answer.body["error"]["retryable"], true);
    assert!(answer.body["error"]["syncId"].is_string());
}

#[tokio::test]
async fn several_matching_contacts_are_409_with_their_ids() {
    let api = Api::start().await;
    let (a, b) = {
        let mut state = api.hubspot.state.lock().unwrap();
        (
            state.insert("contacts", &[("phone", "+14155550111")]),
            state.insert("contacts", &[("phone", "415 555 0111")]),
        )
    };
    let answer = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"phone": "+14155550111"}}),
        )
        .await;
    assert_eq!(answer.status, 409);
    assert_eq!(answer.body["error"]["code"], "ambiguous_match");
    let mut matches: Vec<String> =
        serde_json::from_value(answer.body["error"]["matches"].clone()).unwrap();
    matches.sort();
    assert_eq!(matches, vec![a, b]);
}

#[tokio::test]
async fn secrets_never_appear_in_logs_responses_or_sync_records() {
    let api = Api::start().await;
    let logs = LogCapture::global();
    let inline_secret = "inline-secret-value-c0ffee";
    let mut bodies = Vec::new();
    let requests = vec![
        (
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"email": "s@example.com"}}),
        ),
        (
            Operation::SyncCustomer,
            json!({"connectionId": "revoked", "customer": {"email": "s@example.com"}}),
        ),
        (
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "credentials": {"accessToken": inline_secret}, "customer": {"email": "s@example.com"}}),
        ),
        (
            Operation::TestConnection,
            json!({"crmType": "hubspot", "credentials": {"accessToken": inline_secret}, "settings": {"baseUrl": api.hubspot.base_url()}}),
        ),
        (Operation::TestConnection, json!({"connectionId": "demo"})),
        (
            Operation::SyncLead,
            json!({"connectionId": "revoked", "lead": {"email": "l@example.com"}}),
        ),
    ];
    for (operation, body) in requests {
        bodies.push(api.post(operation, body).await.body.to_string());
    }
    api.hubspot
        .server
        .control
        .inject(Fault::status(500).times(10));
    bodies.push(
        api.post(
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "customer": {"email": "t@example.com"},
        "appointment": {"start": "2025-07-01T10:00:00Z"}}),
        )
        .await
        .body
        .to_string(),
    );
    let log_text = logs.text();
    assert!(
        log_text.contains("sync finished"),
        "the capture saw the sync logs: {log_text}"
    );
    let records = api.record_files().join("\n");
    assert!(!records.is_empty());
    for secret in [TOKEN, "revoked-9f2", inline_secret] {
        assert!(!log_text.contains(secret), "a secret is in the logs");
        assert!(!records.contains(secret), "a secret is in a sync record");
        for body in &bodies {
            assert!(!body.contains(secret), "a secret is in a response: {body}");
        }
    }
}

#[tokio::test]
async fn the_production_stores_on_moto_serve_a_sync_end_to_end() {
    let sdk = aws_sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = format!("records-{}", uuid::Uuid::new_v4());
    create_records_table(&dynamodb, &table).await;
    let prefix = format!("crm-sync-e2e-{}/connections/", uuid::Uuid::new_v4());
    let dir = TempDir::new("api-aws");
    let app = App::new(
        test_config(StoreKind::Aws, dir.path()),
        Arc::new(SecretsManagerConnectionStore::new(
            aws_sdk_secretsmanager::Client::new(&sdk),
            prefix,
        )),
        Arc::new(DynamoDbSyncRecordStore::new(dynamodb.clone(), &table)),
    );
    let api = Api::with_app(app, dir).await;
    let body = json!({"connectionId": "demo", "customer": {"firstName": "Moto", "email": "moto@example.com"}});
    let first = api.post(Operation::SyncCustomer, body.clone()).await;
    assert_eq!(
        (first.status, first.body["status"].clone()),
        (200, json!("created")),
        "{}",
        first.body
    );
    let again = api.post(Operation::SyncCustomer, body).await;
    assert_eq!(again.body["status"], "unchanged");
    let failed = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "revoked", "customer": {"email": "r@example.com"}}),
        )
        .await;
    assert_eq!(failed.status, 502);
    assert_eq!(failed.body["error"]["code"], "crm_auth_failed");

    let items = dynamodb.scan().table_name(&table).send().await.unwrap();
    assert_eq!(items.count(), 2);
    let dump = format!("{:?}", items.items());
    assert!(dump.contains("\"synced\"") && dump.contains("\"failed\""));
    assert!(
        !dump.contains(TOKEN) && !dump.contains("revoked-9f2"),
        "no secret in DynamoDB"
    );
    let missing = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "absent", "customer": {"email": "a@example.com"}}),
        )
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn every_sync_logs_one_json_line_with_connection_crm_operation_status_and_duration() {
    let api = Api::start().await;
    let logs = LogCapture::global();
    // Tests run in parallel into one log: a connection of its own tells this test's line apart.
    let connection_id = format!("log-{}", uuid::Uuid::new_v4().simple());
    let demo_id = crm_sync::connection::ConnectionId::parse("demo").unwrap();
    let demo = api.app.connections.get(&demo_id).await.unwrap();
    store_connection(&api.app, &connection_id, &demo).await;
    let body = json!({"connectionId": connection_id, "customer": {"email": "log@example.com"}});
    let answer = api.post(Operation::SyncCustomer, body).await;
    assert_eq!(answer.status, 200);
    let line: Value = logs
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["fields"]["message"] == "sync finished"
                && l["fields"]["connection_id"] == connection_id.as_str()
        })
        .expect("a sync line for this sync");
    assert_eq!(line["fields"]["crm_id"], answer.body["crmId"]);
    assert_eq!(line["fields"]["crm"], "hubspot");
    assert_eq!(line["fields"]["entity"], "customer");
    assert_eq!(line["fields"]["status"], "created");
    assert!(line["fields"]["duration_ms"].is_u64());
    let spans = line["spans"].as_array().expect("the span list");
    assert!(
        spans.iter().any(|s| s["operation"] == "sync-customer"),
        "{line}"
    );
}

#[tokio::test]
async fn the_customer_may_sit_inside_the_appointment_and_a_cancel_answers_cancelled() {
    let api = Api::start().await;
    let body = |status: &str| {
        json!({"connectionId": "demo",
            "appointment": {"externalId": "nested-1", "title": "Gutter clean", "start": "2026-01-05T10:00:00",
                            "timezone": "America/Chicago", "status": status,
                            "customer": {"firstName": "Nes", "lastName": "Ted", "phone": "+13125550123"}}})
    };
    let first = api
        .post(Operation::SyncAppointment, body("scheduled"))
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["appointment"]["status"], "created");
    assert_eq!(first.body["contact"]["status"], "created");

    let cancelled = api
        .post(Operation::SyncAppointment, body("cancelled"))
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(cancelled.body["appointment"]["status"], "cancelled");
    let again = api
        .post(Operation::SyncAppointment, body("cancelled"))
        .await;
    assert_eq!(again.body["status"], "unchanged");

    let mut bad = body("scheduled");
    bad["appointment"]["customer"]["phone"] = json!("12");
    let refused = api.post(Operation::SyncAppointment, bad).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.body["error"]["field"], "appointment.customer.phone");
}

#[tokio::test]
async fn a_leads_notes_and_source_become_one_note_on_the_lead_and_a_resend_adds_none() {
    let api = Api::start().await;
    let lead = |notes: &str| {
        json!({"connectionId": "demo", "lead": {"firstName": "Sam", "email": "sam@example.com",
            "notes": notes, "source": "Phone call"}})
    };
    let answer = api.post(Operation::SyncLead, lead("Wants a quote")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let lead_id = answer.body["crmId"].as_str().unwrap().to_string();
    let note_on_lead = |state: &crm_sync_tests::emulator::hubspot::HubSpotState| {
        state
            .all("notes")
            .into_iter()
            .filter(|n| n.associated("leads").contains(&lead_id))
            .map(|n| n.prop("hs_note_body").unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    {
        let state = api.hubspot.state.lock().unwrap();
        assert_eq!(
            note_on_lead(&state),
            vec!["Wants a quote\n\nSource: Phone call".to_string()]
        );
        let contact = answer.body["contact"]["crmId"].as_str().unwrap();
        assert!(
            state.all("notes")[0]
                .associated("contacts")
                .contains(&contact.to_string())
        );
    }
    // The same lead again, and again with a field changed but the same notes: no second note.
    api.post(Operation::SyncLead, lead("Wants a quote")).await;
    let mut renamed = lead("Wants a quote");
    renamed["lead"]["lastName"] = json!("Lee");
    assert_eq!(api.post(Operation::SyncLead, renamed).await.status, 200);
    assert_eq!(note_on_lead(&api.hubspot.state.lock().unwrap()).len(), 1);
    // New notes are a new note.
    api.post(Operation::SyncLead, lead("Also asked about boilers"))
        .await;
    assert_eq!(note_on_lead(&api.hubspot.state.lock().unwrap()).len(), 2);
}

#[tokio::test]
async fn the_platforms_function_answers_from_the_configuration_alone_as_the_api_does() {
    let api = Api::start().await;
    let config = &api.app.config;
    let standalone = |request| async move {
        read_response(
            crm_sync::http::handle_platforms(config, request)
                .await
                .unwrap(),
        )
    };
    let (status, body) = standalone(get_request(Some(TEST_API_KEY), &[])).await;
    assert_eq!(status, 200);
    assert_eq!(body, api.get(Operation::Platforms, &[]).await.body);
    let (status, body) = standalone(get_request(Some("not-the-key"), &[])).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, _) = standalone(api_request(Method::POST, Some(TEST_API_KEY), None)).await;
    assert_eq!(status, 405);
}
