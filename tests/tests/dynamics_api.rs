//! End to end through the Lambda handlers with the Dynamics 365 emulator behind: a sync on one
//! client-credentials token, a token Dataverse refuses early fetched again once and stored, the
//! service protection limit's 429 and `Retry-After`, refused credentials without the secret in
//! the answer, and creates as upserts by a configured alternate key. Every response is checked against openapi.yaml.

use crm_sync::App;
use crm_sync::connection::ConnectionId;
use crm_sync::http::Operation;
use crm_sync_tests::conformance::dynamics::{CLIENT_SECRET, TENANT_ID, connection, tokens};
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::emulator::Fault;
use crm_sync_tests::emulator::dynamics::DynamicsEmulator;
use crm_sync_tests::harness::*;
use lambda_http::Request;
use lambda_http::http::Method;
use serde_json::{Value, json};

struct Api {
    app: App,
    dynamics: DynamicsEmulator,
    spec: OpenApi,
    _dir: TempDir,
}

impl Api {
    /// The `demo` connection holds only the app's client id and secret, as it is first stored.
    async fn start() -> Self {
        let dir = TempDir::new("dynamics-api");
        let app = local_app(&dir);
        let dynamics = DynamicsEmulator::start(tokens()).await.unwrap();
        let mut demo = connection(dynamics.base_url(), CLIENT_SECRET);
        demo.settings.default_timezone = Some("America/New_York".into());
        store_connection(&app, "demo", &demo).await;
        Api {
            app,
            dynamics,
            spec: OpenApi::crm_sync(),
            _dir: dir,
        }
    }

    async fn post(&self, operation: Operation, body: Value) -> (u16, Value) {
        let request: Request = api_request(Method::POST, Some(TEST_API_KEY), Some(&body));
        let answer = call_checked(&self.app, &self.spec, operation, request).await;
        (answer.status, answer.body)
    }

    fn token_requests(&self) -> u32 {
        self.dynamics.state.lock().unwrap().tokens.refreshes
    }
}

#[tokio::test]
async fn a_booking_syncs_on_one_token_with_the_contact_as_regarding_and_required_attendee() {
    let api = Api::start().await;
    let booking = json!({"connectionId": "demo",
        "customer": {"firstName": "Jane", "lastName": "Doe", "email": "jane@example.com", "phone": "(415) 555-0100"},
        "appointment": {"externalId": "cal-881", "title": "Dental cleaning", "start": "2025-11-02T09:00:00",
                        "timezone": "America/Los_Angeles", "durationMinutes": 60, "location": "Room 2"}});
    let (status, booked) = api.post(Operation::SyncAppointment, booking.clone()).await;
    assert_eq!(status, 200, "{booked}");
    assert_eq!(booked["crmType"], "dynamics");
    let contact_id = booked["contact"]["crmId"].as_str().unwrap().to_string();
    let appointment_id = booked["appointment"]["crmId"].as_str().unwrap().to_string();
    {
        let state = api.dynamics.state.lock().unwrap();
        let row = &state.tables["appointments"][&appointment_id];
        // 09:00 in Los Angeles on the day DST ends is PST, UTC-8.
        assert_eq!(row["scheduledstart"], "2025-11-02T17:00:00Z");
        assert_eq!(row["scheduledend"], "2025-11-02T18:00:00Z");
        assert_eq!(row["_regardingobjectid_value"], json!(contact_id));
        assert_eq!(row["location"], "Room 2");
        assert_eq!(row["new_crmsyncid"], "cal-881");
        assert_eq!(
            state.parties[&appointment_id],
            vec![(contact_id.clone(), 5)]
        );
        let contact = &state.tables["contacts"][&contact_id];
        assert_eq!(contact["telephone1"], "+14155550100");
    }

    let mut cancel = booking;
    cancel["appointment"]["status"] = json!("cancelled");
    let (status, cancelled) = api.post(Operation::SyncAppointment, cancel).await;
    assert_eq!(status, 200, "{cancelled}");
    let row = api.dynamics.state.lock().unwrap().tables["appointments"][&appointment_id].clone();
    assert_eq!(
        (row["statecode"].clone(), row["statuscode"].clone()),
        (json!(2), json!(4))
    );

    assert_eq!(
        api.token_requests(),
        1,
        "one token serves every call within its hour"
    );
    let requests = api.dynamics.server.control.requests();
    let token_request = requests
        .iter()
        .find(|r| r.path.ends_with("/oauth2/v2.0/token"))
        .unwrap();
    assert_eq!(
        token_request.path,
        format!("/{TENANT_ID}/oauth2/v2.0/token")
    );
    for request in requests.iter().filter(|r| r.path.starts_with("/api/")) {
        assert!(
            request.path.starts_with("/api/data/v9.2/"),
            "{}",
            request.path
        );
        assert!(
            request
                .authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Bearer "))
        );
    }
    let stored = api
        .app
        .connections
        .get(&ConnectionId::parse("demo").unwrap())
        .await
        .unwrap();
    assert!(stored.credential("accessToken").is_ok());
    assert!(stored.settings.extra_str("accessTokenExpiresAt").is_some());
}

#[tokio::test]
async fn a_token_refused_early_is_fetched_again_once_and_stored() {
    let api = Api::start().await;
    let id = ConnectionId::parse("demo").unwrap();
    let body = |email: &str| json!({"connectionId": "demo", "customer": {"email": email}});
    let (status, _) = api
        .post(Operation::SyncCustomer, body("ada@example.com"))
        .await;
    assert_eq!(status, 200);
    let old_token = api
        .app
        .connections
        .get(&id)
        .await
        .unwrap()
        .credential("accessToken")
        .unwrap()
        .clone();

    api.dynamics.state.lock().unwrap().tokens.expire_all();
    let calls_before = api.dynamics.server.control.request_count();
    let (status, answer) = api
        .post(Operation::SyncCustomer, body("grace@example.com"))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "created");
    assert_eq!(api.token_requests(), 2, "one token request after the 401");
    let new_token = api
        .app
        .connections
        .get(&id)
        .await
        .unwrap()
        .credential("accessToken")
        .unwrap()
        .clone();
    assert_ne!(new_token, old_token, "the new token is written back");
    let requests = &api.dynamics.server.control.requests()[calls_before..];
    assert_eq!(requests[0].status, Some(401));
    assert!(requests[1].path.ends_with("/oauth2/v2.0/token"));
    assert_eq!(
        requests[2].path, requests[0].path,
        "the refused call is sent once more"
    );
    for request in requests {
        assert!(
            request
                .query
                .as_deref()
                .is_none_or(|q| !q.contains(CLIENT_SECRET))
        );
    }
}

#[tokio::test]
async fn the_service_protection_limit_is_waited_out_or_passed_on_with_retry_after() {
    let api = Api::start().await;
    let body = |email: &str| json!({"connectionId": "demo", "customer": {"email": email}});
    api.dynamics
        .server
        .control
        .inject(Fault::status(429).retry_after(1).matching("/api/data/"));
    let started = std::time::Instant::now();
    let (status, answer) = api
        .post(Operation::SyncCustomer, body("patient@example.com"))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));

    // Past the 6000 requests of the five-minute window, Dataverse asks for the rest of it.
    api.dynamics.state.lock().unwrap().budget =
        crm_sync_tests::emulator::RequestBudget::new(0, chrono::Duration::minutes(5));
    let (status, limited) = api
        .post(Operation::SyncCustomer, body("impatient@example.com"))
        .await;
    assert_eq!(status, 429, "{limited}");
    assert_eq!(limited["error"]["code"], "rate_limited");
    let answered = api.dynamics.server.control.requests();
    let last = answered.last().unwrap();
    assert_eq!(last.response["error"]["code"], "0x80072322");
}

#[tokio::test]
async fn refused_client_credentials_fail_clearly_without_the_secret() {
    let api = Api::start().await;
    let (status, tested) = api
        .post(Operation::TestConnection, json!({"connectionId": "demo"}))
        .await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["ok"], true, "{tested}");
    assert!(
        tested["account"]
            .as_str()
            .unwrap()
            .starts_with("Dynamics 365 organization")
    );
    let base = api.dynamics.base_url();
    let (_, refused) = api
        .post(Operation::TestConnection, json!({"crmType": "dynamics",
            "credentials": {"clientId": crm_sync_tests::conformance::dynamics::CLIENT_ID, "clientSecret": "wrong-secret-value"},
            "settings": {"environmentUrl": base, "tenantId": TENANT_ID, "authorityUrl": base}}))
        .await;
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["error"]["code"], "crm_auth_failed");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("invalid_client"), "{message}");
    assert!(!message.contains("wrong-secret-value"));
    let (_, missing) = api
        .post(Operation::TestConnection, json!({"crmType": "dynamics",
            "credentials": {"clientId": "x", "clientSecret": "y"}, "settings": {"tenantId": TENANT_ID}}))
        .await;
    assert_eq!(missing["error"]["code"], "connection_invalid", "{missing}");
}

/// The `demo` connection with `settings.alternateKeys`, and the emulated contacts table with an
/// alternate key on `emailaddress1` when `defined`.
async fn with_alternate_key(api: &Api, defined: bool) {
    let mut demo = connection(api.dynamics.base_url(), CLIENT_SECRET);
    demo.settings
        .extra
        .insert("alternateKeys".into(), json!({"contact": "emailaddress1"}));
    store_connection(&api.app, "demo", &demo).await;
    if defined {
        api.dynamics
            .state
            .lock()
            .unwrap()
            .alternate_keys
            .insert("contacts".into(), "emailaddress1".into());
    }
}

fn contacts_with_email(api: &Api, email: &str) -> Vec<Value> {
    api.dynamics.state.lock().unwrap().tables["contacts"]
        .values()
        .filter(|row| row["emailaddress1"] == email)
        .map(|row| Value::Object(row.clone()))
        .collect()
}

#[tokio::test]
async fn with_an_alternate_key_a_contact_created_meanwhile_is_updated_not_doubled() {
    let api = Api::start().await;
    with_alternate_key(&api, true).await;
    let sync = |first: &str, email: &str| json!({"connectionId": "demo", "customer": {"firstName": first, "lastName": "Keyed", "email": email}});

    // A new person: the create is an upsert by the key, the key column carried by the URL.
    let (status, created) = api
        .post(Operation::SyncCustomer, sync("Ada", "ada@example.com"))
        .await;
    assert_eq!(
        (status, &created["status"]),
        (200, &json!("created")),
        "{created}"
    );
    let upsert = api
        .dynamics
        .server
        .control
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .expect("an upsert");
    assert!(
        upsert.path.contains("/contacts(emailaddress1=")
            && upsert.path.contains("ada%40example.com"),
        "{}",
        upsert.path
    );
    assert!(
        upsert.body.get("emailaddress1").is_none(),
        "{}",
        upsert.body
    );
    let rows = contacts_with_email(&api, "ada@example.com");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["contactid"], created["crmId"]);

    // Someone else creates the same person after crm-sync looked and before it writes (the
    // write is held back while the row appears): the upsert updates that row.
    api.dynamics.server.control.inject(
        Fault::delay(std::time::Duration::from_millis(400))
            .matching("PATCH /api/data/v9.2/contacts("),
    );
    let app_call = {
        let request = api_request(
            Method::POST,
            Some(TEST_API_KEY),
            Some(&sync("Grace", "grace@example.com")),
        );
        let spec = &api.spec;
        let app = &api.app;
        async move { call_checked(app, spec, Operation::SyncCustomer, request).await }
    };
    let meanwhile = async {
        while !api
            .dynamics
            .server
            .control
            .requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.path.contains("grace%40example.com"))
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        api.dynamics.state.lock().unwrap().insert(
            "contacts",
            &[
                ("firstname", "G."),
                ("lastname", "Hopper"),
                ("emailaddress1", "grace@example.com"),
            ],
        )
    };
    let (answer, other_id) = tokio::join!(app_call, meanwhile);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let rows = contacts_with_email(&api, "grace@example.com");
    assert_eq!(rows.len(), 1, "one person, one contact: {rows:?}");
    assert_eq!(rows[0]["contactid"], json!(other_id));
    assert_eq!(rows[0]["firstname"], "Grace");
    assert_eq!(answer.body["crmId"], json!(other_id));
}

#[tokio::test]
async fn an_alternate_key_the_environment_lacks_is_a_clear_connection_error_and_writes_nothing() {
    let api = Api::start().await;
    with_alternate_key(&api, false).await;
    let (status, refused) = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"firstName": "No", "lastName": "Key", "email": "nokey@example.com"}}),
        )
        .await;
    assert_eq!(status, 424, "{refused}");
    assert_eq!(refused["error"]["code"], "connection_invalid");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("alternateKeys.contact") && message.contains("emailaddress1"),
        "{message}"
    );
    assert!(contacts_with_email(&api, "nokey@example.com").is_empty());

    // A value that is no column name is refused before any call.
    let mut demo = connection(api.dynamics.base_url(), CLIENT_SECRET);
    demo.settings
        .extra
        .insert("alternateKeys".into(), json!({"contact": "Email Address"}));
    store_connection(&api.app, "demo", &demo).await;
    let (status, refused) = api
        .post(Operation::TestConnection, json!({"connectionId": "demo"}))
        .await;
    assert_eq!(status, 424, "{refused}");
    assert_eq!(refused["error"]["code"], "connection_invalid", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alternateKeys.contact")
    );
}

/// Five cold starts sync at once on a connection that holds no token yet: Entra ID is asked
/// once (the client-credentials grant is single-flight, as the refresh-token grants are), and
/// every sync uses that token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_cold_starts_at_once_fetch_one_token() {
    let api = Api::start().await;
    // A slow token endpoint, so that unserialised grants would overlap.
    api.dynamics.server.control.inject(
        Fault::delay(std::time::Duration::from_millis(300))
            .matching("/oauth2/v2.0/token")
            .times(5),
    );
    let bodies: Vec<Value> = (0..5)
        .map(|i| json!({"connectionId": "demo", "customer": {"lastName": format!("Cold{i}"), "email": format!("cold{i}@example.com")}}))
        .collect();
    let answers = from_cold_starts(&api._dir, Operation::SyncCustomer, &bodies).await;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
    }
    assert_eq!(api.token_requests(), 1, "one token for five cold starts");
    let stored = api
        .app
        .connections
        .get(&ConnectionId::parse("demo").unwrap())
        .await
        .unwrap();
    assert!(
        stored.credential("accessToken").is_ok(),
        "the token is stored for the next"
    );
}

/// With an alternate key on email, a batch's new customers go to Dataverse as upserts by that
/// key, 50 to a `$batch`: a contact Dataverse already holds is updated, not doubled, and the
/// batch counts as one request.
#[tokio::test]
async fn a_batch_of_customers_goes_to_dataverse_fifty_upserts_a_batch() {
    let api = Api::start().await;
    with_alternate_key(&api, true).await;
    let existing = api.dynamics.state.lock().unwrap().insert(
        "contacts",
        &[
            ("lastname", "Old"),
            ("emailaddress1", "d7@bulk.example.com"),
        ],
    );
    let items: Vec<Value> = (0..120)
        .map(|i| json!({"customer": {"firstName": "Dee", "lastName": format!("Bulk{i}"), "email": format!("d{i}@bulk.example.com")}}))
        .collect();
    let (status, answer) = api
        .post(
            Operation::SyncBatch,
            json!({"connectionId": "demo", "items": items}),
        )
        .await;
    assert_eq!(
        (status, &answer["counts"]["queued"]),
        (202, &json!(120)),
        "{answer}"
    );
    let before = api.dynamics.server.control.request_count();
    let summary = drain_once(&api.app).await;
    assert_eq!((summary.synced, summary.failed), (120, 0), "{summary:?}");
    assert_eq!(api.dynamics.state.lock().unwrap().batches, vec![50, 50, 20]);
    let calls = api.dynamics.server.control.request_count() - before;
    assert!(
        calls <= 4,
        "three batches (and at most one token request): {calls} calls"
    );
    let rows = contacts_with_email(&api, "d7@bulk.example.com");
    assert_eq!(rows.len(), 1, "updated, not doubled");
    assert_eq!(rows[0]["contactid"], json!(existing));
    assert_eq!(rows[0]["lastname"], "Bulk7");
    let all = api.dynamics.state.lock().unwrap().all("contacts").len();
    assert_eq!(all, 120);
    // Each record knows its contact.
    let (_, record) = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"firstName": "Dee", "lastName": "Bulk7", "email": "d7@bulk.example.com"}}),
        )
        .await;
    assert_eq!(record["status"], "unchanged", "{record}");
    assert_eq!(record["crmId"], json!(existing));
}

/// Dataverse refuses a request past its concurrency limit at once (429, `Retry-After`,
/// `0x80072326`): cold starts syncing at once more than the limit allows wait (`Retry-After`
/// and up to half as long again, so they do not come back together) and send again, and every
/// sync lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_past_the_concurrency_limit_are_sent_again_after_the_wait() {
    let api = Api::start().await;
    {
        let mut state = api.dynamics.state.lock().unwrap();
        state.protection.concurrent_limit = 4;
        state.protection.work = std::time::Duration::from_millis(100);
    }
    // They start together: each waits for the one token request, then all send at once.
    let bodies: Vec<Value> = (0..6)
        .map(|i| json!({"connectionId": "demo", "customer": {"lastName": format!("Busy{i}"), "email": format!("busy{i}@example.com")}}))
        .collect();
    let answers = from_cold_starts(&api._dir, Operation::SyncCustomer, &bodies).await;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
    }
    let refused: Vec<_> = api
        .dynamics
        .server
        .control
        .requests()
        .into_iter()
        .filter(|r| r.status == Some(429))
        .collect();
    assert!(!refused.is_empty(), "six at once against a limit of four");
    assert!(
        refused
            .iter()
            .all(|r| r.response["error"]["code"] == "0x80072326" && !r.injected)
    );
    assert_eq!(api.dynamics.state.lock().unwrap().all("contacts").len(), 6);
}

/// Past the combined execution time of its window, Dataverse asks for the rest of the window:
/// too long to wait on a live request, so the caller gets 429 with `Retry-After`.
#[tokio::test]
async fn the_execution_time_limit_is_passed_on_with_retry_after() {
    let api = Api::start().await;
    {
        let mut state = api.dynamics.state.lock().unwrap();
        state.protection.execution_limit = std::time::Duration::from_millis(150);
        state.protection.work = std::time::Duration::from_millis(100);
    }
    let (status, first) = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"lastName": "First", "email": "first@example.com"}}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let (status, limited) = api
        .post(
            Operation::SyncCustomer,
            json!({"connectionId": "demo", "customer": {"lastName": "Second", "email": "second@example.com"}}),
        )
        .await;
    assert_eq!(status, 429, "{limited}");
    assert_eq!(limited["error"]["code"], "rate_limited");
    let last = api.dynamics.server.control.requests().pop().unwrap();
    assert_eq!(last.response["error"]["code"], "0x80072321");
}
