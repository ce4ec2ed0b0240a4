//! End to end through the Lambda handlers with the Freshsales emulator behind and local stores:
//! sync-customer, sync-lead, sync-appointment, get-customer and test-connection, every response
//! checked against openapi.yaml.

use crm_sync::App;
use crm_sync::domain::CrmType;
use crm_sync::http::Operation;
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::emulator::RequestBudget;
use crm_sync_tests::emulator::freshsales::FreshsalesEmulator;
use crm_sync_tests::harness::*;
use lambda_http::http::Method;
use serde_json::{Value, json};

const API_KEY: &str = "freshsales-e2e-secret-key-51d7";
const REVOKED: &str = "freshsales-revoked-key-0b2e";

struct Api {
    app: App,
    freshsales: FreshsalesEmulator,
    spec: OpenApi,
    dir: TempDir,
}

impl Api {
    async fn start() -> Self {
        let dir = TempDir::new("freshsales-api");
        let app = local_app(&dir);
        let freshsales = FreshsalesEmulator::start(&[API_KEY]).await.unwrap();
        let mut demo = connection(
            CrmType::Freshsales,
            freshsales.base_url(),
            &[("apiKey", API_KEY)],
        );
        let cancelled = freshsales.state.lock().unwrap().outcome_id("Cancelled");
        demo.settings
            .extra
            .insert("cancelledOutcomeId".into(), json!(cancelled));
        store_connection(&app, "demo", &demo).await;
        let revoked = connection(
            CrmType::Freshsales,
            freshsales.base_url(),
            &[("apiKey", REVOKED)],
        );
        store_connection(&app, "revoked", &revoked).await;
        Api {
            app,
            freshsales,
            spec: OpenApi::crm_sync(),
            dir,
        }
    }

    async fn call(&self, operation: Operation, request: lambda_http::Request) -> ApiAnswer {
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

    fn records(&self) -> String {
        sync_record_files(&self.dir).join("\n")
    }
}

#[tokio::test]
async fn a_customer_syncs_once_and_is_found_again_by_email_or_a_phone_typed_anywhere() {
    let api = Api::start().await;
    let body = json!({"crmType": "freshsales", "connectionId": "demo", "customerData": {
        "firstName": "Jane", "lastName": "Doe", "email": "jane@example.com", "phone": "415-555-0100",
        "address": "1 Market St", "city": "San Francisco", "state": "CA", "zipCode": "94105"}});
    let first = api.post(Operation::SyncCustomer, body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], "created");
    assert_eq!(first.body["crmType"], "freshsales");
    let again = api.post(Operation::SyncCustomer, body).await;
    assert_eq!(again.body["status"], "unchanged");
    {
        let state = api.freshsales.state.lock().unwrap();
        assert_eq!(state.contacts.len(), 1);
        let jane = state.contacts.values().next().unwrap();
        assert_eq!(jane.id.to_string(), first.body["crmId"].as_str().unwrap());
        assert_eq!(jane.text("mobile_number"), Some("+14155550100"));
        assert_eq!(jane.text("zipcode"), Some("94105"));
        assert_eq!(
            jane.text("lifecycle_stage_id"),
            None,
            "a customer is no lead"
        );
    }

    let by_email = api
        .get(&[("connectionId", "demo"), ("email", "JANE@example.com")])
        .await;
    assert_eq!(by_email.status, 200, "{}", by_email.body);
    assert_eq!(by_email.body["customer"]["zipCode"], "94105");

    // Someone typed this number into the work phone field by hand.
    let ana = api.freshsales.state.lock().unwrap().add_contact(&[
        ("first_name", "Ana"),
        ("email", "ana@example.com"),
        ("work_number", "(212) 555-0142"),
    ]);
    let by_phone = api
        .get(&[("connectionId", "demo"), ("phone", "212.555.0142")])
        .await;
    assert_eq!(by_phone.status, 200, "{}", by_phone.body);
    assert_eq!(by_phone.body["customer"]["crmId"], json!(ana));
    assert_eq!(by_phone.body["customer"]["phone"], "+12125550142");

    let missing = api
        .get(&[("connectionId", "demo"), ("email", "nobody@example.com")])
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_lead_is_a_contact_at_the_lead_stage_and_a_known_customer_keeps_their_stage() {
    let api = Api::start().await;
    let answer = api
        .post(Operation::SyncLead, json!({"connectionId": "demo", "leadData": {"firstName": "Sam", "lastName": "Lee",
            "email": "sam@example.com", "phone": "+14155550177", "company": "Lee Plumbing", "notes": "Wants a quote"}}))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["status"], "created");
    assert!(
        answer.body.get("contact").is_none(),
        "the lead is the contact itself"
    );
    {
        let state = api.freshsales.state.lock().unwrap();
        let sam = &state.contacts[&answer.body["crmId"].as_str().unwrap().parse().unwrap()];
        assert_eq!(
            sam.number("lifecycle_stage_id"),
            Some(state.lead_stage_id())
        );
        assert_eq!(state.primary_account(sam).as_deref(), Some("Lee Plumbing"));
        assert_eq!(sam.text("mobile_number"), Some("+14155550177"));
    }

    let customer_stage = {
        let mut state = api.freshsales.state.lock().unwrap();
        let stage = state
            .lifecycle_stages
            .iter()
            .find(|s| s.kind == "Customer")
            .unwrap()
            .id;
        let id = state.add_contact(&[("first_name", "Kim"), ("email", "kim@example.com")]);
        let kim = state.contacts.get_mut(&id.parse().unwrap()).unwrap();
        kim.fields.insert("lifecycle_stage_id".into(), json!(stage));
        stage
    };
    let known = api
        .post(
            Operation::SyncLead,
            json!({"connectionId": "demo", "lead": {"firstName": "Kim", "email": "kim@example.com", "company": "Kim Co"}}),
        )
        .await;
    assert_eq!(known.status, 200, "{}", known.body);
    assert_eq!(known.body["status"], "updated");
    let state = api.freshsales.state.lock().unwrap();
    assert_eq!(state.contacts.len(), 2, "no duplicate for a known person");
    let kim = &state.contacts[&known.body["crmId"].as_str().unwrap().parse().unwrap()];
    assert_eq!(kim.number("lifecycle_stage_id"), Some(customer_stage));
    assert_eq!(state.primary_account(kim).as_deref(), Some("Kim Co"));
}

#[tokio::test]
async fn an_appointment_keeps_its_wall_time_and_a_cancel_marks_it_without_deleting() {
    let api = Api::start().await;
    let body = |status: &str| {
        json!({"connectionId": "demo",
        "customer": {"firstName": "Jane", "email": "jane@example.com", "phone": "+14155550100"},
        "appointment": {"externalId": "cal-881", "title": "Dental cleaning", "start": "2025-11-02T09:00:00",
                        "timezone": "America/Los_Angeles", "durationMinutes": 60, "notes": "First visit",
                        "status": status}})
    };
    let first = api
        .post(Operation::SyncAppointment, body("scheduled"))
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["appointment"]["status"], "created");
    let again = api
        .post(Operation::SyncAppointment, body("scheduled"))
        .await;
    assert_eq!(again.body["appointment"]["status"], "unchanged");
    {
        let state = api.freshsales.state.lock().unwrap();
        assert_eq!(state.appointments.len(), 1);
        let visit = state.appointments.values().next().unwrap();
        // 09:00 in Los Angeles on the day DST ends is PST, UTC-8.
        assert_eq!(visit.text("from_date"), Some("2025-11-02T09:00:00-08:00"));
        assert_eq!(visit.text("end_date"), Some("2025-11-02T10:00:00-08:00"));
        assert_eq!(visit.text("time_zone"), Some("America/Los_Angeles"));
        // The notes, then the stamp a lost answer is reconciled by.
        assert_eq!(
            visit.text("description"),
            Some("First visit\n\ncrm-sync ref: cal-881")
        );
        assert_eq!(visit.text("targetable_type"), Some("Contact"));
        assert_eq!(
            visit.number("targetable_id").map(|id| id.to_string()),
            first.body["contact"]["crmId"].as_str().map(str::to_string)
        );
    }

    let cancelled = api
        .post(Operation::SyncAppointment, body("cancelled"))
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body["appointment"]["status"], "cancelled");
    {
        let state = api.freshsales.state.lock().unwrap();
        assert_eq!(state.appointments.len(), 1, "a cancel never deletes");
        let visit = state.appointments.values().next().unwrap();
        assert_eq!(visit.text("title"), Some("Cancelled: Dental cleaning"));
        assert!(visit.text("description").unwrap().starts_with("Cancelled"));
        assert_eq!(visit.number("outcome_id"), state.outcome_id("Cancelled"));
        assert_eq!(
            visit.fields["appointment_attendees"]
                .as_array()
                .unwrap()
                .len(),
            1,
            "an update does not add the attendee again"
        );
    }

    let booked_again = api
        .post(Operation::SyncAppointment, body("scheduled"))
        .await;
    assert_eq!(booked_again.body["appointment"]["status"], "updated");
    let state = api.freshsales.state.lock().unwrap();
    let visit = state.appointments.values().next().unwrap();
    assert_eq!(visit.text("title"), Some("Dental cleaning"));
    assert_eq!(visit.number("outcome_id"), None);
}

#[tokio::test]
async fn test_connection_tells_a_working_key_from_a_refused_one_without_leaking_it() {
    let api = Api::start().await;
    let ok = api
        .post(Operation::TestConnection, json!({"connectionId": "demo"}))
        .await;
    assert_eq!(ok.body["ok"], true, "{}", ok.body);
    assert!(ok.body.get("warnings").is_none(), "{}", ok.body);
    // Without the stamp field a lost answer cannot be reconciled: the test says so.
    api.freshsales
        .state
        .lock()
        .unwrap()
        .custom_fields
        .remove("cf_crm_sync_id");
    let warned = api
        .post(Operation::TestConnection, json!({"connectionId": "demo"}))
        .await;
    assert_eq!(warned.body["ok"], true, "{}", warned.body);
    assert!(
        warned.body["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("cf_crm_sync_id")),
        "{}",
        warned.body
    );
    let refused = api
        .post(
            Operation::TestConnection,
            json!({"connectionId": "revoked"}),
        )
        .await;
    assert_eq!(refused.body["ok"], false);
    assert_eq!(refused.body["error"]["code"], "crm_auth_failed");
    let failed = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "revoked", "customer": {"email": "r@example.com"}}),
        )
        .await;
    assert_eq!(failed.status, 502);
    for text in [
        ok.body.to_string(),
        refused.body.to_string(),
        failed.body.to_string(),
        api.records(),
    ] {
        assert!(!text.contains(API_KEY) && !text.contains(REVOKED), "{text}");
    }
}

#[tokio::test]
async fn a_spent_hourly_limit_is_429_with_the_wait_the_crm_gave() {
    let api = Api::start().await;
    api.freshsales.state.lock().unwrap().budget = RequestBudget::new(2, chrono::Duration::hours(1));
    let answer = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"email": "busy@example.com", "phone": "+14155550123"}}),
        )
        .await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(answer.body["error"]["retryable"], true);
    let wait: u64 = answer.retry_after.unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&wait), "{wait}");
    assert!(api.freshsales.state.lock().unwrap().contacts.is_empty());
}

#[tokio::test]
async fn a_leads_notes_and_source_become_a_note_on_its_contact_once() {
    let api = Api::start().await;
    let body = json!({"connectionId": "demo", "lead": {"firstName": "Sam", "email": "sam@example.com",
        "notes": "Wants a quote", "source": "Phone call"}});
    let answer = api.post(Operation::SyncLead, body.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut changed = body.clone();
    changed["lead"]["lastName"] = json!("Lee");
    assert_eq!(api.post(Operation::SyncLead, changed).await.status, 200);
    let state = api.freshsales.state.lock().unwrap();
    let id: u64 = answer.body["crmId"].as_str().unwrap().parse().unwrap();
    let notes: Vec<_> = state
        .notes
        .values()
        .filter(|n| n.fields.get("targetable_id").and_then(|v| v.as_u64()) == Some(id))
        .map(|n| n.text("description").unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        notes,
        vec!["Wants a quote\n\nSource: Phone call".to_string()]
    );
}
