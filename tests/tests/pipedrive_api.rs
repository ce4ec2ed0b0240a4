//! End to end through the Lambda handlers with a Pipedrive connection: requests as API Gateway
//! delivers them, the Pipedrive emulator behind, local stores. Every response is checked against
//! openapi.yaml.

use chrono::{NaiveDate, NaiveTime};
use crm_sync::App;
use crm_sync::domain::CrmType;
use crm_sync::http::Operation;
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::emulator::pipedrive::PipedriveEmulator;
use crm_sync_tests::harness::*;
use lambda_http::Request;
use lambda_http::http::Method;
use serde_json::{Value, json};

const TOKEN: &str = "pipedrive-e2e-secret-token-2b8e";
const REVOKED: &str = "pipedrive-revoked-token-77aa";

struct Api {
    app: App,
    pipedrive: PipedriveEmulator,
    spec: OpenApi,
    dir: TempDir,
}

impl Api {
    async fn start() -> Self {
        LogCapture::global();
        let dir = TempDir::new("pipedrive-api");
        let app = local_app(&dir);
        let pipedrive = PipedriveEmulator::start(&[TOKEN]).await.unwrap();
        for (id, token) in [("pd", TOKEN), ("pd-revoked", REVOKED)] {
            let mut stored = connection(
                CrmType::Pipedrive,
                pipedrive.base_url(),
                &[("apiToken", token)],
            );
            stored.settings.default_timezone = Some("America/New_York".into());
            store_connection(&app, id, &stored).await;
        }
        Api {
            app,
            pipedrive,
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

    async fn get(&self, query: &[(&str, &str)]) -> ApiAnswer {
        self.call(
            Operation::GetCustomer,
            get_request(Some(TEST_API_KEY), query),
        )
        .await
    }

    fn record_files(&self) -> String {
        sync_record_files(&self.dir).concat()
    }
}

#[tokio::test]
async fn platforms_offers_pipedrive_with_its_token_and_company_domain() {
    let api = Api::start().await;
    let answer = api
        .call(Operation::Platforms, get_request(Some(TEST_API_KEY), &[]))
        .await;
    let pipedrive = answer.body["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["crmType"] == "pipedrive")
        .unwrap()
        .clone();
    assert_eq!(pipedrive["available"], true);
    assert_eq!(pipedrive["credentialFields"], json!(["apiToken"]));
    let settings = pipedrive["settingFields"].as_array().unwrap();
    assert!(settings.contains(&json!("companyDomain")), "{settings:?}");
    assert!(pipedrive["operations"].as_array().unwrap().len() >= 5);
}

#[tokio::test]
async fn a_customer_syncs_once_and_get_customer_finds_it_by_id_email_and_phone() {
    let api = Api::start().await;
    let body = json!({"crmType": "pipedrive", "connectionId": "pd", "customerData": {
        "firstName": "Jane", "lastName": "Doe", "email": "Jane@Example.com", "phone": "415-555-0100"}});
    let first = api.post(Operation::SyncCustomer, body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], "created");
    assert_eq!(first.body["crmType"], "pipedrive");
    let again = api.post(Operation::SyncCustomer, body).await;
    assert_eq!(again.body["status"], "unchanged");

    let persons: Vec<_> = api
        .pipedrive
        .state
        .lock()
        .unwrap()
        .live_persons()
        .cloned()
        .collect();
    assert_eq!(persons.len(), 1);
    assert_eq!(persons[0].name, "Jane Doe");
    assert_eq!(persons[0].primary_email(), Some("jane@example.com"));
    assert_eq!(persons[0].phones[0].value, "+14155550100");

    let crm_id = first.body["crmId"].as_str().unwrap();
    for query in [
        ("customerId", crm_id),
        ("email", "JANE@example.com"),
        ("phone", "(415) 555-0100"),
    ] {
        let found = api.get(&[("connectionId", "pd"), query]).await;
        assert_eq!(found.status, 200, "{query:?}: {}", found.body);
        assert_eq!(found.body["customer"]["crmId"], crm_id);
        assert_eq!(found.body["customer"]["firstName"], "Jane");
        assert_eq!(found.body["customer"]["lastName"], "Doe");
        assert_eq!(found.body["customer"]["phone"], "+14155550100");
    }
    let missing = api
        .get(&[("connectionId", "pd"), ("customerId", "424242")])
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn a_lead_is_a_pipedrive_lead_linked_to_its_person() {
    let api = Api::start().await;
    let answer = api
        .post(
            Operation::SyncLead,
            json!({"connectionId": "pd", "leadData": {"firstName": "Sam",
            "lastName": "Lee", "email": "sam@example.com", "company": "Lee Plumbing"}}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["contact"]["status"], "created");
    let state = api.pipedrive.state.lock().unwrap();
    assert_eq!(state.leads.len(), 1);
    assert_eq!(state.leads[0].title, "Sam Lee (Lee Plumbing)");
    assert_eq!(answer.body["crmId"], json!(state.leads[0].id));
    assert_eq!(
        state.leads[0].person_id.map(|id| id.to_string()),
        answer.body["contact"]["crmId"].as_str().map(str::to_string)
    );
}

#[tokio::test]
async fn an_appointment_is_a_meeting_due_in_utc_moved_and_cancelled_in_place() {
    let api = Api::start().await;
    let body = |start: &str, status: &str| {
        json!({"connectionId": "pd", "customer": {"firstName": "Mary", "email": "mary@example.com"},
            "appointment": {"externalId": "cal-7", "title": "Dental cleaning", "start": start,
                "durationMinutes": 60, "notes": "First visit", "status": status}})
    };
    // 09:00 in New York on the day DST ends (EST, UTC-5) is 14:00 UTC.
    let first = api
        .post(
            Operation::SyncAppointment,
            body("2025-11-02T09:00:00", "scheduled"),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let activity_id: u64 = first.body["appointment"]["crmId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let person_id: u64 = first.body["contact"]["crmId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    {
        let state = api.pipedrive.state.lock().unwrap();
        let meeting = &state.activities[&activity_id];
        assert_eq!(meeting.kind, "meeting");
        assert_eq!(meeting.person_id, Some(person_id));
        assert_eq!(meeting.participants, vec![(person_id, true)]);
        assert_eq!(meeting.due_date, NaiveDate::from_ymd_opt(2025, 11, 2));
        assert_eq!(meeting.due_time, NaiveTime::from_hms_opt(14, 0, 0));
        assert_eq!(meeting.duration_minutes, Some(60));
        assert!(meeting.busy && !meeting.done);
        let note = meeting.note.as_deref().unwrap();
        assert!(
            note.contains("First visit") && note.contains("2025-11-02 09:00 EST"),
            "{note}"
        );
    }

    // 23:30 in New York is already the next day in UTC.
    let moved = api
        .post(
            Operation::SyncAppointment,
            body("2025-11-03T23:30:00", "scheduled"),
        )
        .await;
    assert_eq!(moved.body["appointment"]["status"], "updated");
    assert_eq!(
        moved.body["appointment"]["crmId"],
        first.body["appointment"]["crmId"]
    );
    let cancelled = api
        .post(
            Operation::SyncAppointment,
            body("2025-11-03T23:30:00", "cancelled"),
        )
        .await;
    assert_eq!(cancelled.body["appointment"]["status"], "cancelled");

    let state = api.pipedrive.state.lock().unwrap();
    assert_eq!(
        state.live_activities().count(),
        1,
        "nothing added or deleted"
    );
    let meeting = &state.activities[&activity_id];
    assert_eq!(meeting.due_date, NaiveDate::from_ymd_opt(2025, 11, 4));
    assert_eq!(meeting.due_time, NaiveTime::from_hms_opt(4, 30, 0));
    assert_eq!(meeting.subject, "Cancelled: Dental cleaning");
    assert!(meeting.done && !meeting.busy, "closed and the slot freed");
}

#[tokio::test]
async fn a_meeting_deleted_in_pipedrive_is_booked_again() {
    let api = Api::start().await;
    let body = |start: &str| {
        json!({"connectionId": "pd", "customer": {"email": "again@example.com"},
            "appointment": {"externalId": "cal-9", "start": start}})
    };
    let first = api
        .post(Operation::SyncAppointment, body("2025-07-01T10:00:00"))
        .await;
    let old_id: u64 = first.body["appointment"]["crmId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    api.pipedrive
        .state
        .lock()
        .unwrap()
        .activities
        .get_mut(&old_id)
        .unwrap()
        .is_deleted = true;
    let again = api
        .post(Operation::SyncAppointment, body("2025-07-01T11:00:00"))
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["appointment"]["status"], "created");
    assert_ne!(
        again.body["appointment"]["crmId"],
        first.body["appointment"]["crmId"]
    );
}

#[tokio::test]
async fn a_spent_daily_token_budget_fails_fast_with_the_wait_until_the_reset() {
    let api = Api::start().await;
    {
        let mut state = api.pipedrive.state.lock().unwrap();
        state.daily_token_budget = state.tokens_used;
    }
    let started = std::time::Instant::now();
    let answer = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "pd", "customer": {"email": "late@example.com"}}),
        )
        .await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(answer.body["error"]["code"], "rate_limited");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "no retry against a spent budget"
    );
    assert_eq!(
        api.pipedrive.server.control.request_count(),
        1,
        "one call, not retried"
    );
    let wait: u64 = answer.retry_after.unwrap().parse().unwrap();
    assert!(
        (1..=24 * 3600).contains(&wait),
        "waits until midnight: {wait}"
    );
}

#[tokio::test]
async fn a_refused_token_is_502_and_no_token_shows_in_answers_records_or_logs() {
    let api = Api::start().await;
    let logs = LogCapture::global();
    let mut bodies = Vec::new();
    let refused = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "pd-revoked", "customer": {"email": "r@example.com"}}),
        )
        .await;
    assert_eq!(refused.status, 502);
    assert_eq!(refused.body["error"]["code"], "crm_auth_failed");
    bodies.push(refused.body.to_string());
    for body in [
        json!({"connectionId": "pd"}),
        json!({"connectionId": "pd-revoked"}),
        json!({"crmType": "pipedrive", "credentials": {"apiToken": TOKEN},
            "settings": {"baseUrl": api.pipedrive.base_url()}}),
    ] {
        let tested = api.post(Operation::TestConnection, body).await;
        assert_eq!(tested.status, 200, "{}", tested.body);
        bodies.push(tested.body.to_string());
    }
    assert!(bodies[1].contains("\"ok\":true") && bodies[3].contains("crm-sync-demo"));
    assert!(bodies[2].contains("crm_auth_failed"));
    let records = api.record_files();
    assert!(!records.is_empty());
    let log_text = logs.text();
    assert!(
        log_text.contains("sync finished"),
        "the capture saw the sync logs"
    );
    for secret in [TOKEN, REVOKED] {
        assert!(!log_text.contains(secret), "a token is in the logs");
        assert!(!records.contains(secret), "a token is in a sync record");
        for body in &bodies {
            assert!(!body.contains(secret), "a token is in an answer: {body}");
        }
    }
}

#[tokio::test]
async fn a_leads_notes_and_source_become_a_note_on_the_lead_once() {
    let api = Api::start().await;
    let body = json!({"connectionId": "pd", "lead": {"firstName": "Sam", "email": "sam@example.com",
        "notes": "Wants a quote <today>", "source": "Phone call"}});
    let answer = api.post(Operation::SyncLead, body.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut changed = body.clone();
    changed["lead"]["lastName"] = json!("Lee");
    assert_eq!(api.post(Operation::SyncLead, changed).await.status, 200);
    let state = api.pipedrive.state.lock().unwrap();
    let lead_id = answer.body["crmId"].as_str().unwrap();
    let notes: Vec<_> = state
        .notes
        .iter()
        .filter(|n| n.lead_id.as_deref() == Some(lead_id))
        .map(|n| n.content.clone())
        .collect();
    assert_eq!(
        notes,
        vec!["<p>Wants a quote &lt;today&gt;</p><p>Source: Phone call</p>".to_string()]
    );
}

#[tokio::test]
async fn an_address_pipedrive_cannot_hold_is_listed_and_a_change_only_to_it_is_unchanged() {
    let api = Api::start().await;
    let body = |city: &str| {
        json!({"connectionId": "pd", "customer": {"firstName": "Ann", "email": "ann@example.com",
            "city": city, "zipCode": "02110"}})
    };
    let first = api.post(Operation::SyncCustomer, body("Boston")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], "created");
    let fields: Vec<&str> = first.body["notStored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["customer.city", "customer.zipCode"]);
    assert!(
        first.body["notStored"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("fieldMappings.contact.city")
    );
    let moved = api.post(Operation::SyncCustomer, body("Cambridge")).await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(
        moved.body["status"], "unchanged",
        "only the city changed, and Pipedrive keeps it nowhere"
    );
    assert_eq!(moved.body["notStored"], first.body["notStored"]);
}
