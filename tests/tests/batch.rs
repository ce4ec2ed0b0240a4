//! `sync-batch`, `scheduled-sync`, `sync-records` (and its replay) and `Prefer: respond-async`,
//! end to end through the Lambda handlers against the HubSpot emulator, every answer checked
//! against openapi.yaml; on the local stores, and on moto's DynamoDB for the production store.

use crm_sync::App;
use crm_sync::config::StoreKind;
use crm_sync::domain::CrmType;
use crm_sync::http::Operation;
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::emulator::Fault;
use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use crm_sync_tests::harness::*;
use lambda_http::http::Method;
use serde_json::{Value, json};

const TOKEN: &str = "hubspot-batch-token-3e8a";

struct Api {
    app: App,
    hubspot: HubSpotEmulator,
    spec: OpenApi,
    _dir: TempDir,
}

impl Api {
    async fn start() -> Self {
        let dir = TempDir::new("batch");
        let app = local_app(&dir);
        Self::with_app(app, dir).await
    }

    async fn with_app(app: App, dir: TempDir) -> Self {
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
        Api {
            app,
            hubspot,
            spec: OpenApi::crm_sync(),
            _dir: dir,
        }
    }

    async fn post(&self, operation: Operation, body: Value) -> ApiAnswer {
        let request = api_request(Method::POST, Some(TEST_API_KEY), Some(&body));
        call_checked(&self.app, &self.spec, operation, request).await
    }

    async fn post_with(
        &self,
        operation: Operation,
        body: Value,
        header: (&str, &str),
    ) -> ApiAnswer {
        let mut request = api_request(Method::POST, Some(TEST_API_KEY), Some(&body));
        request.headers_mut().insert(
            lambda_http::http::HeaderName::from_bytes(header.0.as_bytes()).unwrap(),
            header.1.parse().unwrap(),
        );
        call_checked(&self.app, &self.spec, operation, request).await
    }

    async fn records(&self, query: &[(&str, &str)]) -> ApiAnswer {
        let request = get_request(Some(TEST_API_KEY), query);
        call_checked(&self.app, &self.spec, Operation::SyncRecords, request).await
    }

    async fn drain(&self) -> crm_sync::sync::DrainSummary {
        drain_once(&self.app).await
    }

    fn held(&self, object_type: &str) -> usize {
        self.hubspot.state.lock().unwrap().all(object_type).len()
    }
}

fn mixed_items() -> Value {
    json!([
        {"type": "customer", "customer": {"firstName": "Ada", "lastName": "Batch", "email": "ada@batch.example.com"}},
        {"type": "customer", "customer": {"firstName": "No", "email": "not-an-email"}},
        {"lead": {"externalId": "lead-b1", "firstName": "Lee", "lastName": "Batch", "email": "lee@batch.example.com", "company": "Lee Co"}},
        {"type": "appointment", "customer": {"firstName": "Bo", "lastName": "Batch", "phone": "+1 415 555 0199"},
         "appointment": {"externalId": "bk-b1", "title": "Tune-up", "start": "2026-04-01T09:00:00", "timezone": "America/Chicago"}},
        {"type": "appointment", "appointment": {"externalId": "bk-b2", "start": "2026-04-01T09:00:00", "endTime": "2026-04-01T08:00:00"},
         "customer": {"email": "late@batch.example.com"}},
        {"type": "order"},
    ])
}

#[tokio::test]
async fn a_batch_queues_valid_items_answers_bad_ones_by_index_and_the_schedule_syncs_them() {
    let api = Api::start().await;
    let body = json!({"connectionId": "demo", "batchId": "n8n-2026-04-01", "items": mixed_items()});
    let answer = api.post(Operation::SyncBatch, body.clone()).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let b = &answer.body;
    assert_eq!(b["batchId"], "n8n-2026-04-01");
    assert_eq!(
        b["counts"],
        json!({"received": 6, "queued": 3, "unchanged": 0, "rejected": 3})
    );
    let rejected: Vec<(u64, &str)> = b["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rejected,
        vec![
            (1, "customer.email"),
            (4, "appointment.endTime"),
            (5, "type")
        ]
    );
    let accepted: Vec<u64> = b["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["index"].as_u64().unwrap())
        .collect();
    assert_eq!(accepted, vec![0, 2, 3]);
    assert_eq!(api.hubspot.server.control.request_count(), 0, "no CRM call");

    // Pending with the batch id until the schedule runs; the batch's counts show it.
    let progress = api
        .records(&[("connectionId", "demo"), ("batchId", "n8n-2026-04-01")])
        .await;
    assert_eq!(progress.status, 200, "{}", progress.body);
    assert_eq!(
        progress.body["counts"],
        json!({"pending": 3, "synced": 0, "failed": 0, "unknown": 0})
    );

    let summary = api.drain().await;
    assert_eq!((summary.synced, summary.failed), (3, 0), "{summary:?}");
    assert!(summary.done);
    assert_eq!(api.held("contacts"), 3, "Ada, Lee (the lead's contact), Bo");
    assert_eq!(api.held("leads"), 1);
    assert_eq!(api.held("meetings"), 1);
    let progress = api
        .records(&[("connectionId", "demo"), ("batchId", "n8n-2026-04-01")])
        .await;
    assert_eq!(
        progress.body["counts"],
        json!({"pending": 0, "synced": 3, "failed": 0, "unknown": 0})
    );
    let sync_id = b["items"][0]["syncId"].as_str().unwrap();
    let one = api.records(&[("syncId", sync_id)]).await;
    assert_eq!(one.body["record"]["status"], "synced");
    assert_eq!(one.body["record"]["batchId"], "n8n-2026-04-01");
    assert!(
        one.body["record"]["expiresAt"].is_string(),
        "synced records expire"
    );

    // Resent: the first answer, nothing queued, no CRM call.
    let calls = api.hubspot.server.control.request_count();
    let again = api.post(Operation::SyncBatch, body.clone()).await;
    assert_eq!((again.status, &again.body), (202, b));
    assert_eq!(api.drain().await.examined, 0);
    assert_eq!(api.hubspot.server.control.request_count(), calls);

    // The same batch id with another body is refused.
    let mut other = body.clone();
    other["items"] = json!([{"customer": {"email": "someone@batch.example.com"}}]);
    let refused = api.post(Operation::SyncBatch, other).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(refused.body["error"]["field"], "batchId");

    // A new batch with the same values: unchanged, nothing to do.
    let same = json!({"connectionId": "demo", "items": [mixed_items()[0]]});
    let unchanged = api.post(Operation::SyncBatch, same).await;
    assert_eq!(unchanged.body["items"][0]["status"], "unchanged");
    assert_eq!(unchanged.body["items"][0]["syncId"], sync_id);
}

#[tokio::test]
async fn items_of_one_entity_share_a_record_and_the_last_values_win() {
    let api = Api::start().await;
    let booking = |title: &str, status: &str| {
        json!({"customer": {"email": "twice@batch.example.com"},
               "appointment": {"externalId": "bk-twice", "title": title, "start": "2026-05-01T10:00:00Z", "status": status}})
    };
    let answer = api
        .post(
            Operation::SyncBatch,
            json!({"connectionId": "demo", "items": [booking("First", "scheduled"), booking("Moved", "cancelled")]}),
        )
        .await;
    assert_eq!(answer.status, 202);
    assert_eq!(
        answer.body["items"][0]["syncId"],
        answer.body["items"][1]["syncId"]
    );
    api.drain().await;
    let state = api.hubspot.state.lock().unwrap();
    let meetings = state.all("meetings");
    assert_eq!(meetings.len(), 1);
    assert_eq!(meetings[0].prop("hs_meeting_title"), Some("Moved"));
    assert_eq!(meetings[0].prop("hs_meeting_outcome"), Some("CANCELED"));
}

#[tokio::test]
async fn an_idempotency_key_resend_is_answered_again_and_limits_are_enforced() {
    let api = Api::start().await;
    let body = json!({"connectionId": "demo", "items": [{"customer": {"email": "key@batch.example.com"}}]});
    let first = api
        .post_with(
            Operation::SyncBatch,
            body.clone(),
            ("Idempotency-Key", "batch-key-1"),
        )
        .await;
    assert_eq!(first.status, 202);
    let again = api
        .post_with(
            Operation::SyncBatch,
            body,
            ("Idempotency-Key", "batch-key-1"),
        )
        .await;
    assert_eq!(again.body, first.body, "the same batchId and syncIds");

    let many: Vec<Value> = (0..501)
        .map(|i| json!({"customer": {"email": format!("m{i}@batch.example.com")}}))
        .collect();
    let too_many = api
        .post(
            Operation::SyncBatch,
            json!({"connectionId": "demo", "items": many}),
        )
        .await;
    assert_eq!(too_many.status, 400);
    assert_eq!(too_many.body["error"]["field"], "items");

    let huge = "x".repeat(crm_sync::sync::MAX_BATCH_BYTES);
    let too_large = api
        .post(
            Operation::SyncBatch,
            json!({"connectionId": "demo", "items": [{"customer": {"email": "a@b.example.com", "city": huge}}]}),
        )
        .await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.body["error"]["code"], "payload_too_large");
    let empty = api
        .post(
            Operation::SyncBatch,
            json!({"connectionId": "demo", "items": []}),
        )
        .await;
    assert_eq!(empty.status, 400);
    let unknown = api
        .post(
            Operation::SyncBatch,
            json!({"connectionId": "nope", "items": [{"customer": {"email": "a@b.example.com"}}]}),
        )
        .await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn failed_records_are_paged_and_replayed_back_to_pending() {
    let api = Api::start().await;
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"customer": {"firstName": "Refused", "email": format!("r{i}@batch.example.com")}}))
        .collect();
    let answer = api
        .post(
            Operation::SyncBatch,
            json!({"connectionId": "demo", "batchId": "refused", "items": items}),
        )
        .await;
    assert_eq!(answer.body["counts"]["queued"], 5);
    // The CRM refuses the data: failed, and not for the schedule to retry.
    for route in [
        "POST /crm/v3/objects/contacts/batch/upsert",
        "POST /crm/v3/objects/contacts$",
    ] {
        api.hubspot
            .server
            .control
            .inject(Fault::status(400).times(100).matching(route));
    }
    let summary = api.drain().await;
    assert_eq!(summary.failed, 5, "{summary:?}");
    assert_eq!(api.drain().await.examined, 0, "left for a person");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![
            ("connectionId", "demo"),
            ("status", "failed"),
            ("limit", "2"),
        ];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.as_str()));
        }
        let page = api.records(&query).await;
        assert_eq!(page.status, 200, "{}", page.body);
        for record in page.body["records"].as_array().unwrap() {
            assert_eq!(record["lastError"]["code"], "crm_rejected");
            seen.push(record["syncId"].as_str().unwrap().to_string());
        }
        match page.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5);
    let bad = api
        .records(&[("connectionId", "demo"), ("cursor", "zz")])
        .await;
    assert_eq!(
        (bad.status, &bad.body["error"]["field"]),
        (400, &json!("cursor"))
    );
    let neither = api.records(&[]).await;
    assert_eq!(neither.status, 400);
    let missing = api.records(&[("syncId", "no-such-sync")]).await;
    assert_eq!(missing.status, 404);

    api.hubspot.server.control.clear_faults();
    let replayed = api
        .post(
            Operation::ReplaySyncRecords,
            json!({"connectionId": "demo", "batchId": "refused"}),
        )
        .await;
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    assert_eq!(
        replayed.body,
        json!({"connectionId": "demo", "batchId": "refused", "requeued": 5, "more": false})
    );
    let summary = api.drain().await;
    assert_eq!(summary.synced, 5, "{summary:?}");
    assert_eq!(api.held("contacts"), 5);
}

#[tokio::test]
async fn prefer_respond_async_answers_202_queued_and_the_schedule_finishes_the_sync() {
    let api = Api::start().await;
    let body = json!({"connectionId": "demo", "customer": {"firstName": "Later", "email": "later@batch.example.com"}});
    api.hubspot
        .server
        .control
        .inject(Fault::status(503).times(50));
    let answer = api
        .post_with(
            Operation::SyncCustomer,
            body.clone(),
            ("Prefer", "respond-async"),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["status"], "queued");
    assert_eq!(answer.body["reason"]["code"], "crm_unavailable");
    let sync_id = answer.body["syncId"].as_str().unwrap().to_string();
    // Without the preference, the same outage is an error.
    let plain = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"email": "now@batch.example.com"}}),
        )
        .await;
    assert_eq!(plain.status, 503);
    // A refusal is still an error with the preference.
    api.hubspot.server.control.clear_faults();
    let invalid = api
        .post_with(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"email": "bad"}}),
            ("Prefer", "respond-async"),
        )
        .await;
    assert_eq!(invalid.status, 400);

    tokio::time::sleep(api.app.settle_time().to_std().unwrap()).await;
    let summary = api.drain().await;
    assert!(summary.synced >= 1, "{summary:?}");
    let record = api.records(&[("syncId", &sync_id)]).await;
    assert_eq!(record.body["record"]["status"], "synced", "{}", record.body);
    let contacts = api.hubspot.state.lock().unwrap().all("contacts").len();
    assert_eq!(contacts, 2, "later@ and now@, once each");
    let calls = api.hubspot.server.control.request_count();
    let resent = api.post(Operation::SyncCustomer, body).await;
    assert_eq!(resent.body["status"], "unchanged");
    assert_eq!(api.hubspot.server.control.request_count(), calls);
}

#[tokio::test]
async fn the_production_stores_on_moto_queue_list_and_drain_a_batch() {
    let (secrets, records) = crm_sync_tests::harness::aws_stores().await;
    let dir = TempDir::new("batch-aws");
    let app = App::on_aws(test_config(StoreKind::Aws, dir.path()), secrets, records);
    let api = Api::with_app(app, dir).await;
    let items: Vec<Value> = (0..12)
        .map(|i| match i % 3 {
            0 => json!({"customer": {"email": format!("moto{i}@batch.example.com")}}),
            1 => json!({"lead": {"externalId": format!("moto-lead-{i}"), "email": format!("moto{i}@batch.example.com"), "company": "Moto"}}),
            _ => json!({"customer": {"email": format!("moto{i}@batch.example.com")},
                        "appointment": {"externalId": format!("moto-bk-{i}"), "start": "2026-06-01T10:00:00Z"}}),
        })
        .collect();
    let answer = api
        .post(
            Operation::SyncBatch,
            json!({"connectionId": "demo", "batchId": "moto-1", "items": items}),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["counts"]["queued"], 12);
    let page = api
        .records(&[
            ("connectionId", "demo"),
            ("batchId", "moto-1"),
            ("limit", "5"),
        ])
        .await;
    assert_eq!(page.body["records"].as_array().unwrap().len(), 5);
    assert!(page.body["nextCursor"].is_string());
    assert_eq!(page.body["counts"]["pending"], 12);
    let next = api
        .records(&[
            ("connectionId", "demo"),
            ("batchId", "moto-1"),
            ("limit", "5"),
            ("cursor", page.body["nextCursor"].as_str().unwrap()),
        ])
        .await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert_ne!(next.body["records"][0], page.body["records"][0]);

    let summary = api.drain().await;
    assert_eq!((summary.synced, summary.failed), (12, 0), "{summary:?}");
    let done = api
        .records(&[("connectionId", "demo"), ("batchId", "moto-1")])
        .await;
    assert_eq!(done.body["counts"]["synced"], 12, "{}", done.body);
    let sync_id = answer.body["items"][4]["syncId"].as_str().unwrap();
    let one = api.records(&[("syncId", sync_id)]).await;
    assert_eq!(one.body["record"]["status"], "synced", "{}", one.body);
    assert_eq!(api.held("meetings"), 4);
}

/// Customers new to crm-sync go to HubSpot a hundred a call (batch upsert by email): contacts
/// HubSpot holds already are updated, not doubled; a customer without an email, and each later
/// change of a contact crm-sync knows, go one by one.
#[tokio::test]
async fn new_customers_go_to_hubspot_a_hundred_a_call_and_existing_contacts_are_updated() {
    let api = Api::start().await;
    // Ten of the 250 are in HubSpot already, written there by another connection (crm-sync's
    // records of this one do not know them).
    store_connection(
        &api.app,
        "other",
        &connection(
            CrmType::Hubspot,
            api.hubspot.base_url(),
            &[("accessToken", TOKEN)],
        ),
    )
    .await;
    for i in 0..10 {
        let body = json!({"connectionId": "other", "customer": {"firstName": "Old", "lastName": format!("Name{i}"), "email": format!("c{i}@bulk.example.com")}});
        assert_eq!(api.post(Operation::SyncCustomer, body).await.status, 200);
    }
    let held_before = api.held("contacts");
    let mut items: Vec<Value> = (0..250)
        .map(|i| json!({"type": "customer", "customer": {"firstName": "Bulk", "lastName": format!("Person{i}"), "email": format!("C{i}@Bulk.example.com"), "externalId": format!("bulk-{i}")}}))
        .collect();
    items.push(json!({"type": "customer", "customer": {"firstName": "Phone", "lastName": "Only", "phone": "+1 415 555 0142"}}));
    let body = json!({"connectionId": "demo", "batchId": "bulk-1", "items": items});
    let answer = api.post(Operation::SyncBatch, body).await;
    assert_eq!(answer.body["counts"]["queued"], 251, "{}", answer.body);

    let before = api.hubspot.server.control.request_count();
    let summary = api.drain().await;
    assert_eq!((summary.synced, summary.failed), (251, 0), "{summary:?}");
    let requests = api.hubspot.server.control.requests();
    let upserts: Vec<_> = requests[before..]
        .iter()
        .filter(|r| r.path == "/crm/v3/objects/contacts/batch/upsert")
        .collect();
    let sizes: Vec<usize> = upserts
        .iter()
        .map(|r| r.body["inputs"].as_array().unwrap().len())
        .collect();
    let others: Vec<_> = requests[before..]
        .iter()
        .filter(|r| !r.path.ends_with("/batch/upsert"))
        .map(|r| format!("{} {} {:?}", r.method, r.path, r.status))
        .collect();
    assert_eq!(
        sizes,
        vec![100, 100, 50],
        "250 customers in three calls; also {others:?}"
    );
    assert!(upserts.iter().all(|r| r.status == Some(200)));
    let calls = requests.len() - before;
    assert!(
        calls <= 3 + 3,
        "{calls} calls: three batch upserts and the phone-only customer's search and create"
    );
    assert_eq!(
        api.held("contacts"),
        held_before + 240 + 1,
        "ten updated, 241 created"
    );
    let contacts = api.hubspot.state.lock().unwrap().all("contacts");
    let c3 = contacts
        .iter()
        .find(|c| c.prop("email") == Some("c3@bulk.example.com"))
        .unwrap();
    assert_eq!(
        (c3.prop("firstname"), c3.prop("lastname")),
        (Some("Bulk"), Some("Person3"))
    );
    let c3_id = c3.id.clone();
    let progress = api
        .records(&[("connectionId", "demo"), ("batchId", "bulk-1")])
        .await;
    assert_eq!(
        progress.body["counts"],
        json!({"pending": 0, "synced": 251, "failed": 0, "unknown": 0})
    );
    let record = api
        .records(&[(
            "syncId",
            answer.body["items"][3]["syncId"].as_str().unwrap(),
        )])
        .await;
    assert_eq!(record.body["record"]["crmId"], c3_id.as_str());

    // Resent: unchanged, no call. Changed: a contact crm-sync knows is updated by its id.
    let again = json!({"connectionId": "demo", "items": [
        {"customer": {"firstName": "Bulk", "lastName": "Person3", "email": "c3@bulk.example.com", "externalId": "bulk-3"}},
        {"customer": {"firstName": "Renamed", "lastName": "Person4", "email": "c4@bulk.example.com", "externalId": "bulk-4"}},
    ]});
    let answer = api.post(Operation::SyncBatch, again).await;
    assert_eq!(answer.body["counts"]["unchanged"], 1, "{}", answer.body);
    let before = api.hubspot.server.control.request_count();
    assert_eq!(api.drain().await.synced, 1);
    let requests = api.hubspot.server.control.requests();
    assert!(
        requests[before..]
            .iter()
            .all(|r| !r.path.ends_with("/batch/upsert")),
        "a known contact is updated by its id"
    );
}
