//! End to end through the Lambda handlers with the SugarCRM emulator behind: a login with the
//! password grant, the rotated refresh token stored back after each grant, a login again when
//! Sugar ends the session, a meeting cancelled as `Not Held`, an instance's rate limit, and an
//! unregistered platform refused clearly. Every response is checked against openapi.yaml.

use crm_sync::App;
use crm_sync::connection::{ConnectionId, SecretString};
use crm_sync::http::Operation;
use crm_sync_tests::conformance::sugarcrm::{PASSWORD, USERNAME, connection, instance};
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::emulator::RequestBudget;
use crm_sync_tests::emulator::sugarcrm::SugarEmulator;
use crm_sync_tests::harness::*;
use lambda_http::http::Method;
use serde_json::{Value, json};

struct Api {
    app: App,
    sugar: SugarEmulator,
    spec: OpenApi,
    _dir: TempDir,
}

impl Api {
    /// The `demo` connection holds only the API user's name and password, as it is first stored.
    async fn start() -> Self {
        let dir = TempDir::new("sugarcrm-api");
        let app = local_app(&dir);
        let sugar = SugarEmulator::start(instance()).await.unwrap();
        let mut demo = connection(sugar.base_url(), PASSWORD);
        demo.settings.default_timezone = Some("America/New_York".into());
        store_connection(&app, "demo", &demo).await;
        Api {
            app,
            sugar,
            spec: OpenApi::crm_sync(),
            _dir: dir,
        }
    }

    async fn post(&self, operation: Operation, body: Value) -> (u16, Value) {
        let request = api_request(Method::POST, Some(TEST_API_KEY), Some(&body));
        let answer = call_checked(&self.app, &self.spec, operation, request).await;
        (answer.status, answer.body)
    }

    async fn stored_credential(&self, name: &str) -> SecretString {
        let id = ConnectionId::parse("demo").unwrap();
        let stored = self.app.connections.get(&id).await.unwrap();
        stored.credential(name).unwrap().clone()
    }

    fn grants(&self) -> u32 {
        self.sugar.state.lock().unwrap().tokens.refreshes
    }
}

fn customer(email: &str) -> Value {
    json!({"connectionId": "demo", "customer": {"firstName": "Ada", "lastName": "Lovelace", "email": email}})
}

#[tokio::test]
async fn a_booking_logs_in_once_and_a_cancel_marks_the_meeting_not_held() {
    let api = Api::start().await;
    let booking = json!({"connectionId": "demo",
        "customer": {"firstName": "Jane", "lastName": "Doe", "email": "jane@example.com", "phone": "(415) 555-0100"},
        "appointment": {"externalId": "cal-881", "title": "Dental cleaning", "start": "2025-11-02T09:00:00",
                        "timezone": "America/Los_Angeles", "durationMinutes": 90}});
    let (status, booked) = api.post(Operation::SyncAppointment, booking.clone()).await;
    assert_eq!(status, 200, "{booked}");
    assert_eq!(booked["crmType"], "sugarcrm");
    let contact_id = booked["contact"]["crmId"].as_str().unwrap().to_string();
    let meeting_id = booked["appointment"]["crmId"].as_str().unwrap().to_string();
    let meeting = api.sugar.state.lock().unwrap().records["Meetings"][&meeting_id].clone();
    assert_eq!(
        meeting.text("date_start"),
        Some("2025-11-02T17:00:00+00:00")
    );
    assert_eq!(meeting.text("date_end"), Some("2025-11-02T18:30:00+00:00"));
    assert_eq!(
        (
            meeting.fields["duration_hours"].clone(),
            meeting.fields["duration_minutes"].clone()
        ),
        (json!(1), json!(30))
    );
    assert_eq!(meeting.text("parent_type"), Some("Contacts"));
    assert_eq!(meeting.text("parent_id"), Some(contact_id.as_str()));
    assert!(meeting.contacts.contains(&contact_id));
    assert_eq!(meeting.text("crm_sync_id_c"), Some("cal-881"));

    let mut cancel = booking;
    cancel["appointment"]["status"] = json!("cancelled");
    let (status, _) = api.post(Operation::SyncAppointment, cancel).await;
    assert_eq!(status, 200);
    let meeting = api.sugar.state.lock().unwrap().records["Meetings"][&meeting_id].clone();
    assert_eq!(meeting.text("status"), Some("Not Held"));
    assert_eq!(
        api.grants(),
        1,
        "one login serves every call within the hour"
    );
    let requests = api.sugar.server.control.requests();
    let login = &requests[0];
    assert_eq!(login.path, "/rest/v11/oauth2/token");
    assert_eq!(login.body["grant_type"], "password");
    assert_eq!(login.body["platform"], "crm_sync");
    assert!(
        requests[1..].iter().all(|r| r.authorization.is_some()),
        "OAuth-Token on every call"
    );
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_rotated_refresh_token_stored() {
    let api = Api::start().await;
    let (status, _) = api
        .post(Operation::SyncCustomer, customer("ada@example.com"))
        .await;
    assert_eq!(status, 200);
    let first_refresh = api.stored_credential("refreshToken").await;

    api.sugar.state.lock().unwrap().tokens.expire_all();
    let calls_before = api.sugar.server.control.request_count();
    let (status, answer) = api
        .post(Operation::SyncCustomer, customer("grace@example.com"))
        .await;
    assert_eq!(status, 200, "{answer}");
    let requests = &api.sugar.server.control.requests()[calls_before..];
    assert_eq!(requests[0].status, Some(401));
    assert_eq!(requests[1].body["grant_type"], "refresh_token");
    assert_eq!(requests[1].body["refresh_token"], first_refresh.expose());
    assert_eq!(
        requests[2].path, requests[0].path,
        "the refused call is sent once more"
    );
    let second_refresh = api.stored_credential("refreshToken").await;
    assert_ne!(
        second_refresh, first_refresh,
        "Sugar rotated it; the new one is kept"
    );
    assert!(
        !api.sugar
            .state
            .lock()
            .unwrap()
            .tokens
            .refresh_tokens
            .contains(first_refresh.expose())
    );

    // Another login on the platform ends this session: the refresh is refused, the password
    // grant opens a new one.
    {
        let mut state = api.sugar.state.lock().unwrap();
        state.log_in("crm_sync");
        state.tokens.expire_all();
    }
    let (status, answer) = api
        .post(Operation::SyncCustomer, customer("hopper@example.com"))
        .await;
    assert_eq!(status, 200, "{answer}");
    let grants: Vec<Value> = api
        .sugar
        .server
        .control
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/oauth2/token"))
        .map(|r| r.body["grant_type"].clone())
        .collect();
    assert_eq!(
        grants,
        [
            json!("password"),
            json!("refresh_token"),
            json!("refresh_token"),
            json!("password")
        ]
    );
    for request in api.sugar.server.control.requests() {
        let logged = serde_json::to_string(&request.response).unwrap();
        assert!(!logged.contains(PASSWORD));
    }
}

#[tokio::test]
async fn an_instance_rate_limit_is_passed_on_with_its_wait() {
    let api = Api::start().await;
    let (status, _) = api
        .post(Operation::SyncCustomer, customer("ada@example.com"))
        .await;
    assert_eq!(status, 200);
    api.sugar.state.lock().unwrap().rate_limit =
        Some(RequestBudget::new(0, chrono::Duration::hours(1)));
    let (status, limited) = api
        .post(Operation::SyncCustomer, customer("impatient@example.com"))
        .await;
    assert_eq!(status, 429, "{limited}");
    assert_eq!(limited["error"]["code"], "rate_limited");
    api.sugar.state.lock().unwrap().rate_limit = None;
    let summary = api.app.replay_failed().await.unwrap();
    assert_eq!(summary.synced, 1, "{summary:?}");
}

#[tokio::test]
async fn a_wrong_password_and_an_unregistered_platform_fail_clearly() {
    let api = Api::start().await;
    let (_, tested) = api
        .post(Operation::TestConnection, json!({"connectionId": "demo"}))
        .await;
    assert_eq!(tested["ok"], true, "{tested}");
    assert!(
        tested["account"]
            .as_str()
            .unwrap()
            .ends_with(&format!("as {USERNAME}"))
    );
    let base = api.sugar.base_url();
    let inline = |password: &str, platform: &str| {
        json!({"crmType": "sugarcrm", "credentials": {"username": USERNAME, "password": password},
            "settings": {"instanceUrl": base, "platform": platform}})
    };
    let (_, refused) = api
        .post(
            Operation::TestConnection,
            inline("not-the-password", "crm_sync"),
        )
        .await;
    assert_eq!(refused["error"]["code"], "crm_auth_failed", "{refused}");
    assert!(
        !refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not-the-password")
    );
    let (_, platform) = api
        .post(Operation::TestConnection, inline(PASSWORD, "unregistered"))
        .await;
    assert_eq!(platform["ok"], false);
    let message = platform["error"]["message"].as_str().unwrap();
    assert!(message.contains("Invalid platform specified."), "{message}");
}

/// Five cold starts sync at once on a connection that holds only the API user's password: Sugar
/// is logged in to once (the password grant is single-flight), and every sync uses that token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_cold_starts_at_once_log_in_once() {
    let api = Api::start().await;
    // A slow token endpoint, so that unserialised logins would overlap.
    api.sugar.server.control.inject(
        crm_sync_tests::emulator::Fault::delay(std::time::Duration::from_millis(300))
            .matching("/oauth2/token")
            .times(5),
    );
    let bodies: Vec<Value> = (0..5)
        .map(|i| customer(&format!("cold{i}@example.com")))
        .collect();
    let answers = from_cold_starts(&api._dir, Operation::SyncCustomer, &bodies).await;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
    }
    assert_eq!(api.grants(), 1, "one login for five cold starts");
    let refresh = api.stored_credential("refreshToken").await;
    assert!(
        api.sugar
            .state
            .lock()
            .unwrap()
            .tokens
            .refresh_tokens
            .contains(refresh.expose()),
        "the stored refresh token is the one Sugar issued"
    );
}
