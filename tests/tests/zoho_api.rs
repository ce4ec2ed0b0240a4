//! End to end through the Lambda handlers with the Zoho CRM emulator behind: the four sync
//! operations, the OAuth2 refresh (once, then only when Zoho refuses an expired token), Zoho's
//! cancel-meeting action and its search-index lag. Every response is checked against openapi.yaml.

use crm_sync::App;
use crm_sync::connection::{ConnectionId, SecretString};
use crm_sync::http::Operation;
use crm_sync_tests::conformance::zoho::{CLIENT_SECRET, REFRESH_TOKEN, connection, tokens};
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::emulator::oauth::TokenCheck;
use crm_sync_tests::emulator::zoho::{ZohoEmulator, ZohoRecord};
use crm_sync_tests::harness::*;
use lambda_http::Request;
use lambda_http::http::Method;
use serde_json::{Value, json};

struct Api {
    app: App,
    zoho: ZohoEmulator,
    spec: OpenApi,
    _dir: TempDir,
}

impl Api {
    /// The `demo` connection holds only the client credentials and the refresh token, as it is
    /// first stored; the session fetches the access token.
    async fn start(extra_settings: Value) -> Self {
        let dir = TempDir::new("zoho-api");
        let app = local_app(&dir);
        let zoho = ZohoEmulator::start(tokens()).await.unwrap();
        let mut demo = connection(zoho.base_url(), REFRESH_TOKEN);
        demo.settings.default_timezone = Some("America/New_York".into());
        for (key, value) in extra_settings.as_object().into_iter().flatten() {
            demo.settings.extra.insert(key.clone(), value.clone());
        }
        store_connection(&app, "demo", &demo).await;
        Api {
            app,
            zoho,
            spec: OpenApi::crm_sync(),
            _dir: dir,
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

    fn records(&self, module: &str) -> Vec<ZohoRecord> {
        self.zoho.state.lock().unwrap().all(module)
    }

    fn refreshes(&self) -> u32 {
        self.zoho.state.lock().unwrap().tokens.refreshes
    }
}

#[tokio::test]
async fn customer_lead_appointment_and_lookup_sync_end_to_end_on_one_token() {
    let api = Api::start(json!({"defaultLeadCompany": "Walk-in"})).await;

    let customer = json!({"firstName": "Jane", "lastName": "Doe", "email": "jane@example.com",
        "phone": "(415) 555-0100", "address": "1 Market St", "city": "San Francisco", "zipCode": "94105"});
    let (status, first) = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": customer}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["status"].clone(), first["crmType"].clone()),
        (json!("created"), json!("zoho"))
    );
    let contacts = api.records("Contacts");
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].id, first["crmId"].as_str().unwrap());
    assert_eq!(contacts[0].text("Phone"), Some("+14155550100"));
    assert_eq!(contacts[0].text("Mailing_Zip"), Some("94105"));
    assert_eq!(contacts[0].text("Mailing_Street"), Some("1 Market St"));

    // A lead without a company gets the connection's placeholder (Company is mandatory).
    let (status, lead) = api
        .post(
            Operation::SyncLead,
            json!({"connectionId": "demo", "lead": {"firstName": "Sam",
            "email": "sam@example.com", "phone": "+14155550177", "notes": "Wants a quote",
            "source": "Phone call"}}),
        )
        .await;
    assert_eq!(status, 200, "{lead}");
    assert_eq!(lead["status"], "created");
    assert!(lead.get("contact").is_none(), "a Zoho lead stands alone");
    let leads = api.records("Leads");
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0].text("Company"), Some("Walk-in"));
    // Lead_Source is a picklist: the source is kept in words beside the notes.
    assert_eq!(
        leads[0].text("Description"),
        Some("Wants a quote\n\nSource: Phone call")
    );
    assert_eq!(
        leads[0].text("Last_Name"),
        Some("sam@example.com"),
        "stand-in for the mandatory last name"
    );

    let appointment = json!({"connectionId": "demo", "customer": customer,
        "appointment": {"externalId": "cal-881", "title": "Dental cleaning", "start": "2025-11-02T09:00:00",
                        "timezone": "America/Los_Angeles", "durationMinutes": 60, "notes": "First visit",
                        "location": "Room 2"}});
    let (status, booked) = api
        .post(Operation::SyncAppointment, appointment.clone())
        .await;
    assert_eq!(status, 200, "{booked}");
    assert_eq!(booked["appointment"]["status"], "created");
    assert_eq!(booked["contact"]["status"], "unchanged");
    let events = api.records("Events");
    assert_eq!(events.len(), 1);
    // 09:00 in Los Angeles on the day DST ends is PST, UTC-8, and Zoho reads the offset.
    assert_eq!(
        events[0].text("Start_DateTime"),
        Some("2025-11-02T09:00:00-08:00")
    );
    assert_eq!(
        events[0].text("End_DateTime"),
        Some("2025-11-02T10:00:00-08:00")
    );
    assert_eq!(events[0].lookup_id("Who_Id"), Some(contacts[0].id.as_str()));
    assert_eq!(
        events[0].fields["Participants"][0]["participant"],
        json!(contacts[0].id)
    );
    // Zoho keeps the instant; the zone it was booked in is kept in words.
    assert_eq!(
        events[0].text("Description"),
        Some("First visit\n\nBooked for 2025-11-02 09:00 PST (America/Los_Angeles)")
    );
    assert_eq!(events[0].text("Venue"), Some("Room 2"));
    let (_, again) = api.post(Operation::SyncAppointment, appointment).await;
    assert_eq!(again["appointment"]["status"], "unchanged");

    for query in [
        vec![("email", "JANE@example.com")],
        vec![("phone", "415.555.0100")],
        vec![("customerId", contacts[0].id.as_str())],
    ] {
        let (status, found) = api.get_customer(&query).await;
        assert_eq!(status, 200, "{query:?}: {found}");
        assert_eq!(found["customer"]["crmId"], json!(contacts[0].id));
        assert_eq!(found["customer"]["phone"], "+14155550100");
        assert_eq!(found["customer"]["lastName"], "Doe");
        assert_eq!(found["customer"]["zipCode"], "94105");
    }
    let (status, missing) = api.get_customer(&[("email", "nobody@example.com")]).await;
    assert_eq!(
        (status, missing["error"]["code"].clone()),
        (404, json!("not_found"))
    );

    assert_eq!(
        api.refreshes(),
        1,
        "one refresh serves every call within the hour"
    );
    let requests = api.zoho.server.control.requests();
    let api_calls: Vec<_> = requests
        .iter()
        .filter(|r| r.path.starts_with("/crm/"))
        .collect();
    assert!(api_calls.iter().all(|r| {
        r.path.starts_with("/crm/v8/")
            && r.authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Zoho-oauthtoken "))
    }));
    let stored = api
        .app
        .connections
        .get(&ConnectionId::parse("demo").unwrap())
        .await
        .unwrap();
    assert_eq!(
        stored.settings.extra_str("apiDomain"),
        Some(api.zoho.base_url())
    );
    assert!(stored.settings.extra_str("accessTokenExpiresAt").is_some());
}

#[tokio::test]
async fn a_token_that_expires_mid_sync_is_refreshed_once_and_stored() {
    let api = Api::start(json!({})).await;
    let id = ConnectionId::parse("demo").unwrap();
    let (status, _) = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"email": "ada@example.com"}}),
        )
        .await;
    assert_eq!(status, 200);
    let before = api.app.connections.get(&id).await.unwrap();
    let old_token = before.credential("accessToken").unwrap().clone();
    assert_eq!(api.refreshes(), 1);

    // Zoho ends the token early (the stored expiry still says it is good for an hour).
    api.zoho.state.lock().unwrap().tokens.expire_all();
    let calls_before = api.zoho.server.control.request_count();
    let (status, body) = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"email": "grace@example.com"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "created");
    assert_eq!(api.refreshes(), 2, "one refresh after the 401");

    let after = api.app.connections.get(&id).await.unwrap();
    let new_token = after.credential("accessToken").unwrap();
    assert_ne!(
        new_token, &old_token,
        "the new token is written back to the connection store"
    );
    assert_eq!(
        api.zoho
            .state
            .lock()
            .unwrap()
            .tokens
            .check(new_token.expose()),
        TokenCheck::Valid
    );
    assert_eq!(
        after.credential("refreshToken").unwrap(),
        &SecretString::new(REFRESH_TOKEN)
    );

    let requests = &api.zoho.server.control.requests()[calls_before..];
    let refused = format!("Zoho-oauthtoken {}", old_token.expose());
    let retried = format!("Zoho-oauthtoken {}", new_token.expose());
    assert_eq!(requests[0].authorization.as_deref(), Some(refused.as_str()));
    assert_eq!(requests[1].path, "/oauth/v2/token");
    assert_eq!(
        requests[2].path, requests[0].path,
        "the refused call is sent once more"
    );
    assert!(
        requests[2..]
            .iter()
            .all(|r| r.authorization.as_deref() == Some(retried.as_str()))
    );
    for request in requests {
        assert!(
            !request.path.contains(CLIENT_SECRET)
                && request
                    .query
                    .as_deref()
                    .is_none_or(|q| !q.contains(CLIENT_SECRET)),
            "client secret only ever in the token request's body"
        );
    }
}

#[tokio::test]
async fn a_cancel_uses_zohos_cancel_action_when_it_can_and_marks_the_title_when_it_cannot() {
    let api = Api::start(json!({"sendInvitations": true})).await;
    let customer = json!({"firstName": "Mary", "lastName": "Jackson", "email": "mary@example.com"});
    let future = (chrono::Utc::now() + chrono::Duration::days(7))
        .format("%Y-%m-%dT10:00:00")
        .to_string();
    let body = |external: &str, start: &str, status: &str| {
        json!({"connectionId": "demo", "customer": customer,
        "appointment": {"externalId": external, "title": "Consultation", "start": start, "status": status}})
    };

    let (_, upcoming) = api
        .post(
            Operation::SyncAppointment,
            body("soon", &future, "scheduled"),
        )
        .await;
    let (status, cancelled) = api
        .post(
            Operation::SyncAppointment,
            body("soon", &future, "cancelled"),
        )
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(
        cancelled["appointment"]["crmId"],
        upcoming["appointment"]["crmId"]
    );
    let event = api
        .records("Events")
        .into_iter()
        .find(|e| json!(e.id) == upcoming["appointment"]["crmId"])
        .unwrap();
    assert_eq!(
        event.fields["$event_cancelled"],
        json!(true),
        "cancelled by Zoho's own action"
    );
    assert_eq!(event.text("Event_Title"), Some("Consultation"));
    assert_eq!(event.fields["Participants"][0]["invited"], json!(true));

    // A meeting that has ended cannot be cancelled in Zoho; it stays, and its title says it.
    let (_, past) = api
        .post(
            Operation::SyncAppointment,
            body("past", "2025-07-01T10:00:00", "scheduled"),
        )
        .await;
    let (status, _) = api
        .post(
            Operation::SyncAppointment,
            body("past", "2025-07-01T10:00:00", "cancelled"),
        )
        .await;
    assert_eq!(status, 200);
    let event = api
        .records("Events")
        .into_iter()
        .find(|e| json!(e.id) == past["appointment"]["crmId"])
        .unwrap();
    assert_eq!(event.fields["$event_cancelled"], json!(false));
    assert_eq!(event.text("Event_Title"), Some("Cancelled: Consultation"));
    assert_eq!(
        api.records("Events").len(),
        2,
        "nothing deleted, nothing duplicated"
    );
}

#[tokio::test]
async fn a_contact_the_search_index_has_not_caught_up_with_is_updated_not_duplicated() {
    let api = Api::start(json!({})).await;
    let existing = {
        let mut state = api.zoho.state.lock().unwrap();
        state.search_index_delay = chrono::Duration::minutes(5);
        state.insert(
            "Contacts",
            &[("Last_Name", "Hopper"), ("Email", "grace@example.com")],
        )
    };
    let (status, body) = api
        .post(Operation::SyncCustomer, json!({"connectionId": "demo",
            "customer": {"firstName": "Grace", "lastName": "Hopper", "email": "grace@example.com"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["status"].clone(), body["crmId"].clone()),
        (json!("updated"), json!(existing))
    );
    let contacts = api.records("Contacts");
    assert_eq!(contacts.len(), 1, "the upsert keyed on the email found it");
    assert_eq!(contacts[0].text("First_Name"), Some("Grace"));
}

#[tokio::test]
async fn test_connection_names_the_org_and_refused_credentials_fail_clearly() {
    let api = Api::start(json!({})).await;
    let (status, stored) = api
        .post(Operation::TestConnection, json!({"connectionId": "demo"}))
        .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["ok"], true, "{stored}");
    assert_eq!(
        stored["account"],
        "Zoho CRM org Zylker Dental (org60012345)"
    );
    let base = api.zoho.base_url();
    let inline = |refresh: &str| {
        json!({"crmType": "zoho",
        "credentials": {"clientId": crm_sync_tests::conformance::zoho::CLIENT_ID, "clientSecret": CLIENT_SECRET, "refreshToken": refresh},
        "settings": {"baseUrl": base, "accountsUrl": base}})
    };
    let (_, good) = api
        .post(Operation::TestConnection, inline(REFRESH_TOKEN))
        .await;
    assert_eq!(good["ok"], true, "{good}");
    let (_, refused) = api
        .post(
            Operation::TestConnection,
            inline("1000.not-a-refresh-token"),
        )
        .await;
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["error"]["code"], "crm_auth_failed");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("invalid_code"), "{message}");
    assert!(!message.contains(CLIENT_SECRET) && !message.contains("1000.not-a-refresh-token"));
    let (_, unknown_dc) = api.post(Operation::TestConnection, json!({"crmType": "zoho",
        "credentials": {"clientId": "x", "clientSecret": "y", "refreshToken": "z"}, "settings": {"dataCenter": "mars"}})).await;
    assert_eq!(
        unknown_dc["error"]["code"], "connection_invalid",
        "{unknown_dc}"
    );
}

/// A batch's new customers go to Zoho a hundred a call (upsert on the email field): an existing
/// contact is updated, not doubled; one without a last name (an insert needs one, and a stand-in
/// must not overwrite an existing contact's) is synced alone.
#[tokio::test]
async fn a_batch_of_customers_goes_to_zoho_a_hundred_a_call() {
    let api = Api::start(json!({})).await;
    // One contact Zoho holds already (crm-sync's records of this connection do not know it).
    api.zoho.state.lock().unwrap().insert(
        "Contacts",
        &[("Last_Name", "Old"), ("Email", "z7@bulk.example.com")],
    );
    let mut items: Vec<Value> = (0..150)
        .map(|i| json!({"customer": {"firstName": "Zed", "lastName": format!("Bulk{i}"), "email": format!("z{i}@bulk.example.com")}}))
        .collect();
    items.push(json!({"customer": {"firstName": "Only", "email": "first.name@bulk.example.com"}}));
    let (status, answer) = api
        .post(
            Operation::SyncBatch,
            json!({"connectionId": "demo", "items": items}),
        )
        .await;
    assert_eq!(
        (status, &answer["counts"]["queued"]),
        (202, &json!(151)),
        "{answer}"
    );
    let before = api.zoho.server.control.request_count();
    let summary = drain_once(&api.app).await;
    assert_eq!((summary.synced, summary.failed), (151, 0), "{summary:?}");
    let requests = api.zoho.server.control.requests();
    let upserts: Vec<usize> = requests[before..]
        .iter()
        .filter(|r| r.path == "/crm/v8/Contacts/upsert")
        .map(|r| r.body["data"].as_array().unwrap().len())
        .collect();
    assert_eq!(
        upserts,
        vec![100, 50, 1],
        "two bulk calls, and the first-name-only customer's own upsert"
    );
    let contacts = api.records("Contacts");
    assert_eq!(
        contacts.len(),
        151,
        "the one Zoho held was updated, not doubled"
    );
    let z7: Vec<_> = contacts
        .iter()
        .filter(|c| c.text("Email") == Some("z7@bulk.example.com"))
        .collect();
    assert_eq!(z7.len(), 1);
    assert_eq!(z7[0].text("Last_Name"), Some("Bulk7"));
}
