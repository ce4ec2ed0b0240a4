//! End to end through the Lambda handlers with the Salesforce emulator behind: every operation,
//! a session that expires mid-sync, throttling, first login, and a deleted event. Every response
//! is checked against openapi.yaml.

use crm_sync::App;
use crm_sync::connection::ConnectionId;
use crm_sync::crm::salesforce::{API_VERSION, NOT_PROVIDED};
use crm_sync::http::Operation;
use crm_sync_tests::conformance::salesforce::{
    CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, connection,
};
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::emulator::salesforce::{SalesforceEmulator, client};
use crm_sync_tests::harness::*;
use lambda_http::Request;
use lambda_http::http::Method;
use serde_json::{Value, json};

struct Api {
    app: App,
    salesforce: SalesforceEmulator,
    spec: OpenApi,
    dir: TempDir,
}

impl Api {
    /// An app whose `demo` connection holds a live session, and `fresh` only the refresh token.
    async fn start() -> Self {
        LogCapture::global();
        let dir = TempDir::new("salesforce-api");
        let app = local_app(&dir);
        let salesforce = SalesforceEmulator::start(client(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN))
            .await
            .unwrap();
        let token = salesforce.state.lock().unwrap().tokens.issue();
        let mut demo = connection(salesforce.base_url(), REFRESH_TOKEN, Some(&token));
        demo.settings.default_timezone = Some("America/New_York".into());
        demo.settings
            .extra
            .insert("defaultLeadCompany".into(), json!("Walk-in"));
        store_connection(&app, "demo", &demo).await;
        store_connection(
            &app,
            "fresh",
            &connection(salesforce.base_url(), REFRESH_TOKEN, None),
        )
        .await;
        Api {
            app,
            salesforce,
            spec: OpenApi::crm_sync(),
            dir,
        }
    }

    async fn call(&self, operation: Operation, request: Request) -> (u16, Value) {
        let answer = call_checked(&self.app, &self.spec, operation, request).await;
        (answer.status, answer.body)
    }

    async fn post(&self, operation: Operation, body: Value) -> (u16, Value) {
        self.call(
            operation,
            api_request(Method::POST, Some(TEST_API_KEY), Some(&body)),
        )
        .await
    }

    async fn get_customer(&self, query: &[(&str, &str)]) -> (u16, Value) {
        let mut query = query.to_vec();
        query.push(("connectionId", "demo"));
        self.call(
            Operation::GetCustomer,
            get_request(Some(TEST_API_KEY), &query),
        )
        .await
    }

    fn records(&self, sobject: &str) -> Vec<crm_sync_tests::emulator::salesforce::SObject> {
        self.salesforce.state.lock().unwrap().all(sobject)
    }

    fn record_files(&self) -> String {
        sync_record_files(&self.dir).join("\n")
    }
}

#[tokio::test]
async fn platforms_lists_salesforce_as_available_with_its_oauth_fields() {
    let api = Api::start().await;
    let (status, body) = api
        .call(Operation::Platforms, get_request(Some(TEST_API_KEY), &[]))
        .await;
    assert_eq!(status, 200);
    let salesforce = body["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["crmType"] == "salesforce")
        .unwrap();
    assert_eq!(salesforce["available"], true);
    assert_eq!(salesforce["authType"], "oauth2");
    assert_eq!(
        salesforce["credentialFields"],
        json!(["clientId", "clientSecret", "refreshToken"])
    );
    for setting in [
        "loginUrl",
        "instanceUrl",
        "contactExternalIdField",
        "defaultLeadCompany",
    ] {
        assert!(
            salesforce["settingFields"]
                .as_array()
                .unwrap()
                .contains(&json!(setting)),
            "{setting}"
        );
    }
}

#[tokio::test]
async fn a_customer_is_synced_once_and_found_by_id_email_and_phone() {
    let api = Api::start().await;
    // An apostrophe is legal in an email and must survive the SOQL literal.
    let body = json!({"connectionId": "demo", "crmType": "salesforce", "customerData": {
        "firstName": "Siobhan", "lastName": "O'Brien", "email": "Siobhan.O'Brien@example.com",
        "phone": "(415) 555-0100", "address": "1 Market St", "city": "San Francisco", "state": "CA", "zipCode": "94105"}});
    let (status, first) = api.post(Operation::SyncCustomer, body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "created");
    assert_eq!(first["crmType"], "salesforce");
    let (_, again) = api.post(Operation::SyncCustomer, body).await;
    assert_eq!(again["status"], "unchanged");
    assert_eq!(again["syncId"], first["syncId"]);

    let contacts = api.records("Contact");
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].id, first["crmId"].as_str().unwrap());
    assert_eq!(
        contacts[0].get("Email"),
        Some("siobhan.o'brien@example.com")
    );
    assert_eq!(contacts[0].get("Phone"), Some("+14155550100"));
    assert_eq!(contacts[0].get("MailingPostalCode"), Some("94105"));

    let crm_id = first["crmId"].as_str().unwrap();
    for query in [
        [("customerId", crm_id)],
        [("email", "SIOBHAN.O'BRIEN@example.com")],
        [("phone", "415.555.0100")],
    ] {
        let (status, found) = api.get_customer(&query).await;
        assert_eq!(status, 200, "{query:?}: {found}");
        assert_eq!(found["customer"]["crmId"], json!(crm_id));
        assert_eq!(found["customer"]["lastName"], "O'Brien");
        assert_eq!(found["customer"]["phone"], "+14155550100");
        assert_eq!(found["customer"]["zipCode"], "94105");
    }
    for query in [
        [("customerId", "003000000000000AAA")],
        [("email", "x' OR Email != 'y@example.com")],
    ] {
        let (status, body) = api.get_customer(&query).await;
        assert!(status == 404 || status == 400, "{query:?}: {status} {body}");
    }
    let queries: Vec<String> = api
        .salesforce
        .server
        .control
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/query/"))
        .filter_map(|r| r.query.clone())
        .collect();
    assert!(
        queries
            .iter()
            .any(|q| q.contains("o%5C%27brien%40example.com")),
        "the quote is escaped inside the SOQL literal: {queries:?}"
    );
}

#[tokio::test]
async fn a_lead_without_company_or_last_name_gets_the_placeholders_and_no_contact() {
    let api = Api::start().await;
    let (status, body) = api
        .post(
            Operation::SyncLead,
            json!({"connectionId": "demo", "lead": {"firstName": "Kim", "email": "kim@example.com",
            "phone": "+14155550177", "source": "Phone Inquiry", "notes": "Wants a quote"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "created");
    assert!(body.get("contact").is_none(), "a Lead stands alone: {body}");
    let leads = api.records("Lead");
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0].get("LastName"), Some(NOT_PROVIDED));
    assert_eq!(leads[0].get("Company"), Some("Walk-in"));
    assert_eq!(leads[0].get("LeadSource"), Some("Phone Inquiry"));
    assert_eq!(leads[0].get("Description"), Some("Wants a quote"));
    assert_eq!(leads[0].get("Status"), Some("Open - Not Contacted"));
    assert!(api.records("Contact").is_empty());

    // The same person again, now with a company: the lead is found by email and updated.
    let (_, again) = api
        .post(
            Operation::SyncLead,
            json!({"connectionId": "demo", "lead": {"firstName": "Kim", "lastName": "Park",
            "email": "kim@example.com", "company": "Park Dental"}}),
        )
        .await;
    assert_eq!(again["status"], "updated");
    assert_eq!(again["crmId"], body["crmId"]);
    let leads = api.records("Lead");
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0].get("LastName"), Some("Park"));
    assert_eq!(leads[0].get("Company"), Some("Park Dental"));
}

#[tokio::test]
async fn an_appointment_becomes_an_event_and_a_cancel_keeps_it_marked() {
    let api = Api::start().await;
    let body = |status: &str| {
        json!({"connectionId": "demo",
        "customer": {"firstName": "Jane", "lastName": "Doe", "email": "jane@example.com"},
        "appointment": {"externalId": "cal-881", "title": "Dental cleaning", "start": "2025-11-02T09:00:00",
            "timezone": "America/Los_Angeles", "durationMinutes": 60, "notes": "First visit",
            "location": "Suite 4", "status": status}})
    };
    let (status, first) = api
        .post(Operation::SyncAppointment, body("scheduled"))
        .await;
    assert_eq!(status, 200, "{first}");
    let events = api.records("Event");
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.get("WhoId"), first["contact"]["crmId"].as_str());
    assert_eq!(event.get("Subject"), Some("Dental cleaning"));
    // 09:00 in Los Angeles on the day DST ends (PST, UTC-8) is 17:00 UTC.
    assert_eq!(
        event.get("StartDateTime"),
        Some("2025-11-02T17:00:00.000+0000")
    );
    assert_eq!(
        event.get("EndDateTime"),
        Some("2025-11-02T18:00:00.000+0000")
    );
    assert_eq!(event.fields["DurationInMinutes"], json!(60));
    assert_eq!(event.get("ShowAs"), Some("Busy"));
    assert_eq!(event.get("Location"), Some("Suite 4"));
    let description = event.get("Description").unwrap();
    assert!(description.starts_with("First visit"), "{description}");
    assert!(
        description.contains("2025-11-02 09:00 PST (America/Los_Angeles)"),
        "{description}"
    );

    let (_, cancelled) = api
        .post(Operation::SyncAppointment, body("cancelled"))
        .await;
    assert_eq!(cancelled["appointment"]["status"], "cancelled");
    let events = api.records("Event");
    assert_eq!(events.len(), 1, "a cancel does not delete the event");
    assert_eq!(events[0].get("Subject"), Some("Cancelled: Dental cleaning"));
    assert_eq!(events[0].get("ShowAs"), Some("Free"));
}

#[tokio::test]
async fn an_event_a_person_deleted_is_booked_again() {
    let api = Api::start().await;
    let body = |start: &str| {
        json!({"connectionId": "demo", "customer": {"email": "moved@example.com"},
        "appointment": {"externalId": "cal-9", "start": start, "durationMinutes": 30}})
    };
    let (_, first) = api
        .post(Operation::SyncAppointment, body("2025-07-01T10:00:00"))
        .await;
    let event_id = first["appointment"]["crmId"].as_str().unwrap().to_string();
    api.salesforce
        .state
        .lock()
        .unwrap()
        .delete("Event", &event_id);
    let (status, moved) = api
        .post(Operation::SyncAppointment, body("2025-07-02T10:00:00"))
        .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["appointment"]["status"], "created");
    assert_ne!(moved["appointment"]["crmId"], json!(event_id));
    let events = api.records("Event");
    assert_eq!(events.len(), 1);
    // 10:00 in New York (the connection's zone, EDT) is 14:00 UTC.
    assert_eq!(
        events[0].get("StartDateTime"),
        Some("2025-07-02T14:00:00.000+0000")
    );
}

#[tokio::test]
async fn a_session_that_expires_mid_sync_is_refreshed_once_retried_and_stored() {
    let api = Api::start().await;
    let logs = LogCapture::global();
    let id = ConnectionId::parse("demo").unwrap();
    let before = api.app.connections.get(&id).await.unwrap();
    let old_token = before.credential("accessToken").unwrap().clone();
    let (status, _) = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"email": "first@example.com"}}),
        )
        .await;
    assert_eq!(status, 200);

    api.salesforce.state.lock().unwrap().tokens.expire_all();
    let seen = api.salesforce.server.control.request_count();
    let (status, body) = api
        .post(
            Operation::SyncAppointment,
            json!({"connectionId": "demo", "customer": {"email": "second@example.com"},
            "appointment": {"start": "2025-07-01T10:00:00", "durationMinutes": 30}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["appointment"]["status"], "created");

    let requests = api.salesforce.server.control.requests()[seen..].to_vec();
    let route = |i: usize| format!("{} {}", requests[i].method, requests[i].path);
    let query = format!("GET /services/data/{API_VERSION}/query/");
    assert_eq!(route(0), query, "the expired session is tried first");
    assert_eq!(route(1), "POST /services/oauth2/token");
    assert_eq!(route(2), query, "the same request once more");
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.path == "/services/oauth2/token")
            .count(),
        1,
        "one refresh for the whole sync"
    );
    assert_eq!(api.salesforce.state.lock().unwrap().tokens.refreshes, 1);

    let stored = api.app.connections.get(&id).await.unwrap();
    let new_token = stored.credential("accessToken").unwrap();
    assert_ne!(new_token, &old_token);
    assert_eq!(
        api.salesforce
            .state
            .lock()
            .unwrap()
            .tokens
            .check(new_token.expose()),
        crm_sync_tests::emulator::oauth::TokenCheck::Valid,
        "the stored token is the new session"
    );
    assert_eq!(
        stored.settings.extra_str("instanceUrl"),
        Some(api.salesforce.base_url())
    );
    assert_eq!(
        stored.credential("refreshToken").unwrap().expose(),
        REFRESH_TOKEN
    );
    let authorizations: Vec<String> = requests
        .iter()
        .filter_map(|r| r.authorization.clone())
        .collect();
    assert!(authorizations.last().unwrap().ends_with(new_token.expose()));

    let log_text = logs.text();
    let records = api.record_files();
    for secret in [
        CLIENT_SECRET,
        REFRESH_TOKEN,
        old_token.expose(),
        new_token.expose(),
    ] {
        assert!(!log_text.contains(secret), "a secret is in the logs");
        assert!(!records.contains(secret), "a secret is in a sync record");
        assert!(!body.to_string().contains(secret));
    }
}

#[tokio::test]
async fn a_connection_with_only_a_refresh_token_logs_in_and_a_revoked_one_fails_clearly() {
    let api = Api::start().await;
    let (status, tested) = api
        .post(Operation::TestConnection, json!({"connectionId": "fresh"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(tested["ok"], true, "{tested}");
    let account = tested["account"].as_str().unwrap();
    assert!(account.contains(api.salesforce.base_url()), "{account}");
    assert!(account.contains("daily API requests left"), "{account}");
    let stored = api
        .app
        .connections
        .get(&ConnectionId::parse("fresh").unwrap())
        .await
        .unwrap();
    assert!(
        stored.credential("accessToken").is_ok(),
        "the session is kept"
    );
    assert_eq!(
        stored.settings.extra_str("instanceUrl"),
        Some(api.salesforce.base_url()),
        "the API host comes from the token answer"
    );

    let (_, inline) = api
        .post(
            Operation::TestConnection,
            json!({"crmType": "salesforce",
            "credentials": {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "refreshToken": REFRESH_TOKEN},
            "settings": {"loginUrl": api.salesforce.base_url()}}),
        )
        .await;
    assert_eq!(inline["ok"], true, "{inline}");
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
        vec!["demo", "fresh"],
        "inline credentials are never stored"
    );

    api.salesforce
        .state
        .lock()
        .unwrap()
        .tokens
        .refresh_tokens
        .clear();
    api.salesforce.state.lock().unwrap().tokens.expire_all();
    let (status, failed) = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "fresh", "customer": {"email": "x@example.com"}}),
        )
        .await;
    assert_eq!(status, 502, "{failed}");
    assert_eq!(failed["error"]["code"], "crm_auth_failed");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("invalid_grant"), "{message}");
    assert!(!message.contains(REFRESH_TOKEN) && !message.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn request_limit_exceeded_is_rate_limiting_not_an_auth_failure() {
    let api = Api::start().await;
    {
        let mut state = api.salesforce.state.lock().unwrap();
        state.daily_limit = state.api_used;
    }
    let (status, body) = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"email": "late@example.com"}}),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["retryable"], true);
    assert!(body["error"]["syncId"].is_string());
    assert_eq!(
        api.salesforce
            .server
            .control
            .requests()
            .iter()
            .filter(|r| r.path == "/services/oauth2/token")
            .count(),
        0,
        "a 403 for limits is not a reason to refresh the session"
    );
}

#[tokio::test]
async fn with_an_external_id_field_contacts_are_created_by_idempotent_upsert() {
    let api = Api::start().await;
    let id = ConnectionId::parse("demo").unwrap();
    let mut demo = api.app.connections.get(&id).await.unwrap();
    demo.settings.extra.insert(
        "contactExternalIdField".into(),
        json!("Booking_Contact_Id__c"),
    );
    api.app.connections.put(&id, &demo).await.unwrap();

    let (status, body) = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"firstName": "Phone", "phone": "+14155550188"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "created");
    let upserts: Vec<_> = api
        .salesforce
        .server
        .control
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(upserts.len(), 1);
    assert!(
        upserts[0].path.starts_with(&format!(
            "/services/data/{API_VERSION}/sobjects/Contact/Booking_Contact_Id__c/"
        )),
        "{}",
        upserts[0].path
    );
    let contacts = api.records("Contact");
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].id, body["crmId"].as_str().unwrap());
    assert_eq!(contacts[0].get("LastName"), Some(NOT_PROVIDED));
    assert_eq!(
        contacts[0].get("Booking_Contact_Id__c"),
        upserts[0].path.rsplit('/').next()
    );
}

/// A batch's new customers go to Salesforce two hundred a call: SOQL `IN` lists find the contacts
/// their emails already name, one sObject Collections update writes those, one create the rest
/// (stamped). An email two contacts hold is ambiguous and changes nothing, as a single sync's.
#[tokio::test]
async fn a_batch_of_customers_goes_to_salesforce_two_hundred_a_call() {
    let api = Api::start().await;
    let existing = {
        let mut state = api.salesforce.state.lock().unwrap();
        let existing = state.insert(
            "Contact",
            &[("LastName", "Old"), ("Email", "s5@bulk.example.com")],
        );
        state.insert(
            "Contact",
            &[("LastName", "Twin"), ("Email", "s9@bulk.example.com")],
        );
        state.insert(
            "Contact",
            &[("LastName", "Twin"), ("Email", "S9@bulk.example.com")],
        );
        existing
    };
    let items: Vec<Value> = (0..250)
        .map(|i| json!({"customer": {"firstName": "Sal", "lastName": format!("Bulk{i}"), "email": format!("s{i}@bulk.example.com")}}))
        .collect();
    let (status, answer) = api
        .post(
            Operation::SyncBatch,
            json!({"connectionId": "demo", "items": items}),
        )
        .await;
    assert_eq!(
        (status, &answer["counts"]["queued"]),
        (202, &json!(250)),
        "{answer}"
    );
    let before = api.salesforce.server.control.request_count();
    let summary = drain_once(&api.app).await;
    assert_eq!((summary.synced, summary.failed), (249, 1), "{summary:?}");
    let requests = api.salesforce.server.control.requests();
    let calls: Vec<String> = requests[before..]
        .iter()
        .map(|r| {
            let size = r.body["records"].as_array().map_or(0, Vec::len);
            format!(
                "{} {} {size}",
                r.method,
                r.path.rsplit("/services/data/").next().unwrap()
            )
        })
        .collect();
    let path = format!("{API_VERSION}/composite/sobjects");
    let collections: Vec<&String> = calls.iter().filter(|c| c.contains("composite")).collect();
    assert_eq!(
        collections,
        vec![
            &format!("PATCH {path} 1"),
            &format!("POST {path} 198"),
            &format!("POST {path} 50"),
        ],
        "{calls:?}"
    );
    assert!(
        calls.len() <= 3 + 4,
        "three collections and a few queries: {calls:?}"
    );
    let contacts = api.records("Contact");
    assert_eq!(
        contacts.len(),
        3 + 248,
        "s5 updated, the s9 twins left alone"
    );
    let s5: Vec<_> = contacts
        .iter()
        .filter(|c| c.get("Email") == Some("s5@bulk.example.com"))
        .collect();
    assert_eq!((s5.len(), s5[0].id.as_str()), (1, existing.as_str()));
    assert_eq!(s5[0].get("LastName"), Some("Bulk5"));
    let created = contacts
        .iter()
        .find(|c| c.get("Email") == Some("s7@bulk.example.com"))
        .unwrap();
    assert!(
        created.get("CrmSyncId__c").is_some(),
        "created contacts carry the stamp"
    );
    let (_, failed) = api
        .call(
            Operation::SyncRecords,
            get_request(
                Some(TEST_API_KEY),
                &[("connectionId", "demo"), ("status", "failed")],
            ),
        )
        .await;
    assert_eq!(
        failed["records"][0]["lastError"]["code"], "ambiguous_match",
        "{failed}"
    );
}
