//! The conformance suite: the same cases for every CRM adapter, each run against that CRM's
//! emulator through the sync operations. A new adapter is done when it passes all of them:
//! `conformance_suite!(start_fn)` in a test file expands to one test per case.

pub mod dynamics;
pub mod freshsales;
pub mod hubspot;
pub mod pipedrive;
pub mod salesforce;
pub mod sugarcrm;
pub mod zoho;

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use crm_sync::App;
use crm_sync::connection::Connection;
use crm_sync::domain::CrmType;
use crm_sync::error::Error;
use crm_sync::store::{EntityKind, RecordKey, SyncStatus};
use serde_json::{Value, json};

use crate::emulator::{Control, Fault};
use crate::harness::{TempDir, local_app, store_connection};

/// A contact as the emulated CRM holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatedContact {
    pub id: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phones: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmulatedAppointment {
    pub id: String,
    pub contact_ids: Vec<String>,
    pub title: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub cancelled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmulatedLead {
    pub id: String,
    pub contact_ids: Vec<String>,
    pub title: String,
}

/// A CRM emulator seen through the CRM-neutral eyes of the suite.
#[async_trait]
pub trait EmulatedCrm: Send + Sync {
    fn crm_type(&self) -> CrmType;
    /// A connection the emulator accepts.
    fn connection(&self) -> Connection;
    /// The same connection with credentials the emulator refuses.
    fn connection_with_bad_credentials(&self) -> Connection;
    fn control(&self) -> &Control;
    fn contacts(&self) -> Vec<EmulatedContact>;
    fn appointments(&self) -> Vec<EmulatedAppointment>;
    fn leads(&self) -> Vec<EmulatedLead>;
    /// A custom contact field this CRM's emulator accepts, named as the CRM's API names it.
    fn custom_contact_field(&self) -> &'static str;
    /// Lifts the request limits a soak's volume would spend (rate limits have tests of their
    /// own).
    fn lift_request_budget(&self) {}
    /// Makes the emulator keep `requests` per `window` (and, where the CRM has a search API of
    /// its own limit, `search` requests per its window) in place of its default tier's limits,
    /// refusing past them as the CRM does; answers the connection's `rateBudget` setting for
    /// the same limits. `None`: this emulator keeps its default limits, which a test's volume
    /// does not reach (days, 5 minutes at 6,000) or which it has none of.
    fn keep_limit(
        &self,
        _requests: u32,
        _window: std::time::Duration,
        _search: (u32, std::time::Duration),
    ) -> Option<serde_json::Value> {
        None
    }
    /// The fault pattern (`Fault::matching`) of the request that creates an entity's record.
    fn create_route(&self, entity: EntityKind) -> &'static str;
    /// Adds a contact as a person using the CRM would, values typed as given.
    fn add_contact(
        &self,
        first_name: &str,
        last_name: &str,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> String;
}

/// An app on local stores with the emulator's connection stored as `conformance`.
pub struct Fixture {
    pub crm: Box<dyn EmulatedCrm>,
    pub app: App,
    _dir: TempDir,
}

pub const CONNECTION: &str = "conformance";

impl Fixture {
    pub async fn new(crm: Box<dyn EmulatedCrm>) -> Self {
        let dir = TempDir::new("conformance");
        let app = local_app(&dir);
        store_connection(&app, CONNECTION, &crm.connection()).await;
        store_connection(
            &app,
            "bad-credentials",
            &crm.connection_with_bad_credentials(),
        )
        .await;
        Fixture {
            crm,
            app,
            _dir: dir,
        }
    }

    pub async fn sync_customer(&self, customer: Value) -> Result<Value, crm_sync::sync::Failure> {
        let response = self
            .app
            .sync_customer(&json!({"connectionId": CONNECTION, "customer": customer}))
            .await?;
        Ok(serde_json::to_value(response).unwrap())
    }

    pub async fn sync_appointment(&self, body: Value) -> Result<Value, crm_sync::sync::Failure> {
        let mut body = body;
        body["connectionId"] = json!(CONNECTION);
        Ok(serde_json::to_value(self.app.sync_appointment(&body).await?).unwrap())
    }

    pub async fn sync_lead(&self, lead: Value) -> Result<Value, crm_sync::sync::Failure> {
        let body = json!({"connectionId": CONNECTION, "lead": lead});
        Ok(serde_json::to_value(self.app.sync_lead(&body).await?).unwrap())
    }

    /// Sends one entity of `kind` (phone-only people: nothing for an upsert on email to key on).
    async fn sync_entity(
        &self,
        kind: EntityKind,
        variant: usize,
    ) -> Result<Value, crm_sync::sync::Failure> {
        let phone = format!("+1 415 555 02{variant:02}");
        let person =
            json!({"firstName": "Lost", "lastName": format!("Answer {variant}"), "phone": phone});
        match kind {
            EntityKind::Customer => self.sync_customer(person).await,
            EntityKind::Lead => {
                let mut lead = person;
                lead["company"] = json!("Quiet Networks");
                lead["externalId"] = json!(format!("lead-{variant}"));
                self.sync_lead(lead).await
            }
            EntityKind::Appointment => {
                self.sync_appointment(json!({
                    "customer": person,
                    "appointment": {"externalId": format!("booking-{variant}"), "title": "Boiler service",
                        "start": "2026-03-10T09:00:00", "timezone": "America/New_York"},
                }))
                .await
            }
        }
    }

    /// How many records of `kind` the emulated CRM holds.
    fn held(&self, kind: EntityKind) -> Vec<String> {
        match kind {
            EntityKind::Customer => self.crm.contacts().into_iter().map(|c| c.id).collect(),
            EntityKind::Lead => self.crm.leads().into_iter().map(|l| l.id).collect(),
            EntityKind::Appointment => self.crm.appointments().into_iter().map(|a| a.id).collect(),
        }
    }

    /// The one sync record of `kind` on the conformance connection.
    async fn only_record(&self, kind: EntityKind) -> crm_sync::store::SyncRecord {
        let mut records = Vec::new();
        for status in [
            SyncStatus::Pending,
            SyncStatus::Synced,
            SyncStatus::Failed,
            SyncStatus::Unknown,
        ] {
            records.extend(
                self.app
                    .records
                    .list_by_status(status, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|r| r.entity == kind),
            );
        }
        assert_eq!(records.len(), 1, "one {kind:?} record: {records:#?}");
        records.remove(0)
    }

    pub async fn record_status(&self, entity: EntityKind, source_key: &str) -> Option<SyncStatus> {
        let key = RecordKey::new(CONNECTION, entity, source_key);
        self.app.records.get(&key).await.unwrap().map(|r| r.status)
    }
}

fn status(response: &Value) -> &str {
    response["status"].as_str().unwrap_or_default()
}

/// The emulated CRM `tag` names (`hubspot`, `salesforce`, `pipedrive`, `zoho`, `freshsales`,
/// `dynamics`, `sugarcrm`), started on a free loopback port.
/// A connection's `rateBudget` setting for `requests` per `window`, and `search` requests per
/// its window where the CRM's search API has a limit of its own.
pub fn rate_budget_setting(
    requests: u32,
    window: std::time::Duration,
    search: Option<(u32, std::time::Duration)>,
) -> Value {
    let mut setting = json!({"requests": requests, "windowSeconds": window.as_secs_f64()});
    if let Some((search_requests, search_window)) = search {
        setting["searchRequests"] = json!(search_requests);
        setting["searchWindowSeconds"] = json!(search_window.as_secs_f64());
    }
    setting
}

pub async fn start(tag: &str) -> Box<dyn EmulatedCrm> {
    match tag {
        "hubspot" => hubspot::start().await,
        "salesforce" => salesforce::start().await,
        "pipedrive" => pipedrive::start().await,
        "zoho" => zoho::start().await,
        "freshsales" => freshsales::start().await,
        "dynamics" => dynamics::start().await,
        "dynamics-keyed" => dynamics::start_keyed().await,
        "sugarcrm" => sugarcrm::start().await,
        other => panic!("no emulator {other}"),
    }
}

pub async fn creates_a_contact_and_a_resend_is_unchanged(fx: Fixture) {
    let customer = json!({"firstName": "Ada", "lastName": "Lovelace", "email": "Ada@Example.com", "phone": "(415) 555-2671"});
    let first = fx.sync_customer(customer.clone()).await.expect("created");
    assert_eq!(status(&first), "created");
    let contacts = fx.crm.contacts();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].id, first["crmId"].as_str().unwrap());
    assert_eq!(contacts[0].email.as_deref(), Some("ada@example.com"));
    assert!(
        contacts[0].phones.iter().any(|p| p == "+14155552671"),
        "phone stored in E.164: {:?}",
        contacts[0].phones
    );

    let calls = fx.crm.control().request_count();
    let again = fx.sync_customer(customer).await.expect("resend");
    assert_eq!(status(&again), "unchanged");
    assert_eq!(again["crmId"], first["crmId"]);
    assert_eq!(again["syncId"], first["syncId"]);
    assert_eq!(
        fx.crm.control().request_count(),
        calls,
        "an identical resend needs no CRM call"
    );
    assert_eq!(fx.crm.contacts().len(), 1);
}

pub async fn a_changed_resend_updates_the_same_contact(fx: Fixture) {
    let first = fx
        .sync_customer(json!({"firstName": "Ada", "email": "ada@example.com"}))
        .await
        .unwrap();
    let second = fx
        .sync_customer(
            json!({"firstName": "Augusta", "lastName": "King", "email": "ada@example.com"}),
        )
        .await
        .unwrap();
    assert_eq!(status(&second), "updated");
    assert_eq!(second["crmId"], first["crmId"]);
    let contacts = fx.crm.contacts();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].first_name.as_deref(), Some("Augusta"));
    assert_eq!(contacts[0].last_name.as_deref(), Some("King"));
}

pub async fn a_contact_the_crm_already_holds_identically_is_unchanged(fx: Fixture) {
    let id = fx.crm.add_contact(
        "Grace",
        "Hopper",
        Some("grace@example.com"),
        Some("+14155550123"),
    );
    let calls_before = fx.crm.control().request_count();
    let response = fx
        .sync_customer(json!({"firstName": "Grace", "lastName": "Hopper", "email": "GRACE@example.com", "phone": "+1 415 555 0123"}))
        .await
        .unwrap();
    assert_eq!(status(&response), "unchanged");
    assert_eq!(response["crmId"], json!(id));
    let writes = fx.crm.control().requests()[calls_before..]
        .iter()
        .filter(|r| {
            r.method == "PATCH"
                || r.method == "PUT"
                // Searches that are POSTs: HubSpot's `/search`, Sugar's `/filter`.
                || (r.method == "POST" && !r.path.contains("search") && !r.path.ends_with("/filter"))
        })
        .count();
    assert_eq!(writes, 0, "nothing is written when nothing differs");
}

pub async fn an_existing_contact_is_found_by_email_and_updated(fx: Fixture) {
    let id = fx
        .crm
        .add_contact("Alan", "Turing", Some("alan@example.com"), None);
    let response = fx.sync_customer(json!({"firstName": "Alan", "lastName": "Turing", "email": "alan@example.com", "phone": "+442079460958"})).await.unwrap();
    assert_eq!(status(&response), "updated");
    assert_eq!(response["crmId"], json!(id));
    assert_eq!(fx.crm.contacts().len(), 1);
}

pub async fn an_existing_contact_is_found_by_phone_typed_any_way(fx: Fixture) {
    let id = fx
        .crm
        .add_contact("Katherine", "Johnson", None, Some("(415) 555-0199"));
    let response = fx.sync_customer(json!({"firstName": "Katherine", "lastName": "Johnson", "city": "Hampton", "phone": "+14155550199"})).await.unwrap();
    // The city is the only news: a CRM that keeps it nowhere says so and changes nothing.
    let city_not_stored = response["notStored"]
        .as_array()
        .is_some_and(|n| n.iter().any(|f| f["field"] == "customer.city"));
    let expected = if city_not_stored {
        "unchanged"
    } else {
        "updated"
    };
    assert_eq!(status(&response), expected, "{response}");
    assert_eq!(response["crmId"], json!(id));
    assert_eq!(
        fx.crm.contacts().len(),
        1,
        "matched by phone, not duplicated"
    );
}

pub async fn several_matches_answer_ambiguous_and_change_nothing(fx: Fixture) {
    let a = fx.crm.add_contact("Sam", "One", None, Some("+14155550111"));
    let b = fx.crm.add_contact("Sam", "Two", None, Some("415-555-0111"));
    let before = fx.crm.contacts();
    let failure = fx
        .sync_customer(json!({"firstName": "Sam", "phone": "+14155550111"}))
        .await
        .unwrap_err();
    match &failure.error {
        Error::Ambiguous { ids, .. } => {
            let mut ids = ids.clone();
            ids.sort();
            let mut expected = vec![a, b];
            expected.sort();
            assert_eq!(ids, expected);
        }
        other => panic!("expected ambiguous, got {other:?}"),
    }
    assert_eq!(failure.error.status(), 409);
    assert_eq!(fx.crm.contacts(), before, "nothing changed");
}

pub async fn an_appointment_is_linked_to_the_contact_and_a_resend_moves_the_same_event(
    fx: Fixture,
) {
    let body = |start: &str, status: &str| {
        json!({
            "customer": {"firstName": "Mary", "lastName": "Jackson", "email": "mary@example.com"},
            "appointment": {"externalId": "booking-42", "title": "Consultation", "start": start,
                            "durationMinutes": 45, "timezone": "America/New_York", "status": status}
        })
    };
    let first = fx
        .sync_appointment(body("2025-07-01T10:00:00-04:00", "scheduled"))
        .await
        .unwrap();
    assert_eq!(first["appointment"]["status"], "created");
    assert_eq!(first["contact"]["status"], "created");
    let contact_id = first["contact"]["crmId"].as_str().unwrap().to_string();
    let appointments = fx.crm.appointments();
    assert_eq!(appointments.len(), 1);
    assert_eq!(appointments[0].contact_ids, vec![contact_id.clone()]);
    assert_eq!(
        appointments[0].start,
        Utc.with_ymd_and_hms(2025, 7, 1, 14, 0, 0).unwrap()
    );
    assert_eq!(
        appointments[0].end,
        Utc.with_ymd_and_hms(2025, 7, 1, 14, 45, 0).unwrap()
    );
    assert_eq!(appointments[0].title, "Consultation");

    let same = fx
        .sync_appointment(body("2025-07-01T10:00:00-04:00", "scheduled"))
        .await
        .unwrap();
    assert_eq!(same["appointment"]["status"], "unchanged");
    assert_eq!(same["contact"]["crmId"], json!(contact_id));

    let moved = fx
        .sync_appointment(body("2025-07-02T15:30:00-04:00", "scheduled"))
        .await
        .unwrap();
    assert_eq!(moved["appointment"]["status"], "updated");
    assert_eq!(moved["appointment"]["crmId"], first["appointment"]["crmId"]);
    let appointments = fx.crm.appointments();
    assert_eq!(
        appointments.len(),
        1,
        "a reschedule moves the event, it does not add one"
    );
    assert_eq!(
        appointments[0].start,
        Utc.with_ymd_and_hms(2025, 7, 2, 19, 30, 0).unwrap()
    );

    let cancelled = fx
        .sync_appointment(body("2025-07-02T15:30:00-04:00", "cancelled"))
        .await
        .unwrap();
    assert_eq!(cancelled["appointment"]["status"], "cancelled");
    assert_eq!(cancelled["status"], "cancelled", "not like a reschedule");
    let appointments = fx.crm.appointments();
    assert_eq!(
        appointments.len(),
        1,
        "a cancel marks the event, it does not delete it"
    );
    assert!(appointments[0].cancelled);
    assert_eq!(fx.crm.contacts().len(), 1);
}

pub async fn wall_time_survives_in_every_zone_and_across_dst(fx: Fixture) {
    // (zone, local wall time, the UTC instant the CRM must hold)
    let cases = [
        (
            "America/Los_Angeles",
            "2025-03-08T10:00:00",
            "2025-03-08T18:00:00Z",
        ),
        (
            "America/Los_Angeles",
            "2025-03-10T10:00:00",
            "2025-03-10T17:00:00Z",
        ),
        (
            "America/Los_Angeles",
            "2025-11-03T10:00:00",
            "2025-11-03T18:00:00Z",
        ),
        (
            "Europe/London",
            "2025-03-29T10:00:00",
            "2025-03-29T10:00:00Z",
        ),
        (
            "Europe/London",
            "2025-03-31T10:00:00",
            "2025-03-31T09:00:00Z",
        ),
        (
            "Australia/Sydney",
            "2025-04-05T10:00:00",
            "2025-04-04T23:00:00Z",
        ),
        (
            "Australia/Sydney",
            "2025-04-07T10:00:00",
            "2025-04-07T00:00:00Z",
        ),
        (
            "Asia/Kolkata",
            "2025-07-01T10:00:00",
            "2025-07-01T04:30:00Z",
        ),
    ];
    for (i, (zone, wall, utc)) in cases.iter().enumerate() {
        let response = fx
            .sync_appointment(json!({
                "customer": {"email": "tz@example.com"},
                "appointment": {"externalId": format!("tz-{i}"), "start": wall, "timezone": zone, "durationMinutes": 30}
            }))
            .await
            .unwrap();
        let crm_id = response["appointment"]["crmId"].as_str().unwrap();
        let stored = fx
            .crm
            .appointments()
            .into_iter()
            .find(|a| a.id == crm_id)
            .expect("appointment stored");
        let expected: DateTime<Utc> = utc.parse().unwrap();
        assert_eq!(stored.start, expected, "{wall} in {zone}");
        let tz = Tz::from_str(zone).unwrap();
        assert_eq!(
            stored.start.with_timezone(&tz).format("%H:%M").to_string(),
            "10:00",
            "{zone}"
        );
    }
}

pub async fn a_lead_is_created_then_updated_in_place(fx: Fixture) {
    let body = |company: &str| json!({"connectionId": CONNECTION, "lead": {"firstName": "Dorothy", "lastName": "Vaughan", "email": "dorothy@example.com", "company": company}});
    let first = serde_json::to_value(fx.app.sync_lead(&body("NACA")).await.unwrap()).unwrap();
    assert_eq!(status(&first), "created");
    let leads = fx.crm.leads();
    assert_eq!(leads.len(), 1);
    assert!(
        leads[0].title.contains("NACA"),
        "lead title {:?}",
        leads[0].title
    );
    let second = serde_json::to_value(fx.app.sync_lead(&body("NASA")).await.unwrap()).unwrap();
    assert_eq!(status(&second), "updated");
    assert_eq!(second["crmId"], first["crmId"]);
    let leads = fx.crm.leads();
    assert_eq!(leads.len(), 1);
    assert!(leads[0].title.contains("NASA"));
}

pub async fn get_customer_finds_by_id_email_and_phone_and_answers_not_found(fx: Fixture) {
    let id = fx.crm.add_contact(
        "Annie",
        "Easley",
        Some("annie@example.com"),
        Some("216-555-0100"),
    );
    for query in [
        json!({"customerId": id}),
        json!({"email": "ANNIE@example.com"}),
        json!({"phone": "+12165550100"}),
    ] {
        let mut query = query;
        query["connectionId"] = json!(CONNECTION);
        let found = fx
            .app
            .get_customer(&query)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        assert_eq!(found.contact.crm_id, id);
        assert_eq!(found.contact.email.as_deref(), Some("annie@example.com"));
        assert_eq!(found.phone.as_deref(), Some("+12165550100"));
    }
    for query in [
        json!({"customerId": "999999"}),
        json!({"email": "nobody@example.com"}),
        json!({"phone": "+12165550199"}),
    ] {
        let mut query = query;
        query["connectionId"] = json!(CONNECTION);
        let error = fx.app.get_customer(&query).await.unwrap_err();
        assert_eq!(error.status(), 404, "{query}");
    }
}

pub async fn refused_credentials_fail_clearly_and_are_recorded(fx: Fixture) {
    let body = json!({"connectionId": "bad-credentials", "customer": {"email": "x@example.com"}});
    let failure = fx.app.sync_customer(&body).await.unwrap_err();
    assert!(
        matches!(failure.error, Error::CrmAuth(_)),
        "{:?}",
        failure.error
    );
    assert!(failure.sync_id.is_some());
    let key = RecordKey::new(
        "bad-credentials",
        EntityKind::Customer,
        "email:x@example.com",
    );
    let record = fx.app.records.get(&key).await.unwrap().expect("recorded");
    assert_eq!(record.status, SyncStatus::Failed);
    assert_eq!(record.last_error.unwrap().code, "crm_auth_failed");

    let tested = fx
        .app
        .test_connection(&json!({"connectionId": "bad-credentials"}))
        .await
        .unwrap();
    assert!(!tested.ok);
    let tested = fx
        .app
        .test_connection(&json!({"connectionId": CONNECTION}))
        .await
        .unwrap();
    assert!(tested.ok, "{tested:?}");
}

pub async fn a_short_rate_limit_is_waited_out_and_a_long_one_is_passed_on(fx: Fixture) {
    fx.crm.control().inject(Fault::status(429).retry_after(1));
    let started = std::time::Instant::now();
    let response = fx
        .sync_customer(json!({"email": "patient@example.com"}))
        .await
        .expect("retried after the wait");
    assert_eq!(status(&response), "created");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "Retry-After honoured"
    );

    fx.crm
        .control()
        .inject(Fault::status(429).retry_after(120).times(10));
    let failure = fx
        .sync_customer(json!({"email": "impatient@example.com"}))
        .await
        .unwrap_err();
    assert_eq!(
        failure.error,
        Error::RateLimited {
            retry_after: Some(std::time::Duration::from_secs(120))
        }
    );
    assert_eq!(
        fx.record_status(EntityKind::Customer, "email:impatient@example.com")
            .await,
        Some(SyncStatus::Failed)
    );
    fx.crm.control().clear_faults();

    let summary = fx.app.replay_failed().await.unwrap();
    assert_eq!(summary.synced, 1, "{summary:?}");
    assert_eq!(
        fx.record_status(EntityKind::Customer, "email:impatient@example.com")
            .await,
        Some(SyncStatus::Synced)
    );
    assert_eq!(fx.crm.contacts().len(), 2);
}

pub async fn a_crm_outage_is_recorded_and_replayed_without_duplicates(fx: Fixture) {
    fx.crm.control().inject(Fault::status(503).times(20));
    let failure = fx
        .sync_customer(json!({"email": "later@example.com", "firstName": "Later"}))
        .await
        .unwrap_err();
    assert!(
        matches!(failure.error, Error::CrmUnavailable(_)),
        "{:?}",
        failure.error
    );
    assert_eq!(failure.error.status(), 503);
    fx.crm.control().clear_faults();

    let summary = fx.app.replay_failed().await.unwrap();
    assert_eq!(summary.synced, 1, "{summary:?}");
    let again = fx.app.replay_failed().await.unwrap();
    assert_eq!(again.examined, 0, "nothing left to replay");
    let contacts = fx.crm.contacts();
    assert_eq!(contacts.len(), 1);
    let resent = fx
        .sync_customer(json!({"email": "later@example.com", "firstName": "Later"}))
        .await
        .unwrap();
    assert_eq!(status(&resent), "unchanged");
}

pub async fn a_slow_crm_times_out_as_unavailable(fx: Fixture) {
    fx.crm
        .control()
        .inject(Fault::delay(std::time::Duration::from_secs(3)).times(5));
    let failure = fx
        .sync_customer(json!({"email": "slow@example.com"}))
        .await
        .unwrap_err();
    assert!(
        matches!(failure.error, Error::CrmUnavailable(_)),
        "{:?}",
        failure.error
    );
    assert!(
        failure.error.to_string().contains("no answer within"),
        "{}",
        failure.error
    );
}

const ENTITIES: [EntityKind; 3] = [
    EntityKind::Customer,
    EntityKind::Lead,
    EntityKind::Appointment,
];

/// The CRM applies the create and its answer is lost; whether the next attempt is a resend or
/// the replay schedule, the record it made is adopted: one record in the CRM, the sync `synced`
/// with that record's id, and a resend after that is `unchanged`.
async fn a_lost_create_answer_is_adopted(fx: Fixture, replay_first: bool) {
    for (n, kind) in ENTITIES.into_iter().enumerate() {
        let variant = n + if replay_first { 10 } else { 0 };
        let before = fx.held(kind).len();
        fx.crm
            .control()
            .inject(Fault::lose_answer().matching(fx.crm.create_route(kind)));
        let lost = fx.sync_entity(kind, variant).await;
        fx.crm.control().clear_faults();
        let held = fx.held(kind);
        assert_eq!(
            held.len(),
            before + 1,
            "{kind:?}: the CRM applied the create"
        );
        if let Err(failure) = &lost {
            assert!(
                matches!(failure.error, Error::CrmUnavailable(_)),
                "{kind:?}: {:?}",
                failure.error
            );
            let record = fx.only_record(kind).await;
            assert_eq!(record.status, SyncStatus::Unknown, "{kind:?}: {record:?}");
            assert!(record.crm_id.is_none());
        }
        // The answer may still be on its way: the record is in progress for one CRM timeout.
        if lost.is_err() {
            let early = fx.sync_entity(kind, variant).await.unwrap_err();
            assert_eq!(early.error, Error::SyncInProgress, "{kind:?}");
            tokio::time::sleep(fx.app.settle_time().to_std().unwrap()).await;
        }
        let crm_id = if replay_first {
            let summary = fx.app.replay_failed().await.unwrap();
            assert_eq!(summary.failed, 0, "{kind:?}: {summary:?}");
            let record = fx.only_record(kind).await;
            assert_eq!(record.status, SyncStatus::Synced, "{kind:?}: {record:?}");
            let resent = fx.sync_entity(kind, variant).await.expect("resend");
            assert_eq!(status(&resent), "unchanged", "{kind:?}: {resent}");
            record.crm_id.expect("synced with its id")
        } else {
            let resent = fx.sync_entity(kind, variant).await.expect("resend");
            let summary = fx.app.replay_failed().await.unwrap();
            assert_eq!(summary.examined, 0, "{kind:?}: nothing left to replay");
            let record = fx.only_record(kind).await;
            assert_eq!(record.status, SyncStatus::Synced, "{kind:?}: {record:?}");
            let id = record.crm_id.expect("synced with its id");
            let answered = match kind {
                EntityKind::Appointment => &resent["appointment"]["crmId"],
                _ => &resent["crmId"],
            };
            assert_eq!(answered, &json!(id), "{kind:?}: {resent}");
            id
        };
        let after = fx.held(kind);
        if after.len() != before + 1 {
            for r in fx.crm.control().requests() {
                eprintln!("{} {} {:?} -> {:?}", r.method, r.path, r.query, r.status);
            }
        }
        assert_eq!(
            after.len(),
            before + 1,
            "{kind:?}: no second record: {after:?}"
        );
        assert!(after.contains(&crm_id), "{kind:?}: {crm_id} in {after:?}");
    }
}

pub async fn a_lost_create_answer_then_a_resend_makes_one_record(fx: Fixture) {
    a_lost_create_answer_is_adopted(fx, false).await;
}

pub async fn a_lost_create_answer_then_the_replay_makes_one_record(fx: Fixture) {
    a_lost_create_answer_is_adopted(fx, true).await;
}

/// One booking as the soak expects the CRM to end up holding it.
#[derive(Debug, Clone)]
struct ExpectedBooking {
    caller: usize,
    title: String,
    start: DateTime<Utc>,
    cancelled: bool,
}

/// 500 bookings (new callers, returning callers, reschedules, cancels) while a quarter of the
/// writes lose their answer after the CRM applied them and a tenth are refused (503, 429); each
/// request is resent until it succeeds, callers side by side. The CRM must end with one contact
/// per caller and one meeting per booking, each at its latest time and status.
pub async fn a_soak_with_lost_answers_leaves_one_record_per_caller_and_booking(fx: Fixture) {
    use std::sync::Arc;
    let mut config = fx.app.config.clone();
    config.crm_timeout = std::time::Duration::from_millis(500);
    config.max_retry_wait = std::time::Duration::from_millis(200);
    let app = Arc::new(App::new(
        config,
        fx.app.connections.clone(),
        fx.app.records.clone(),
    ));
    const CALLERS: usize = 120;
    let base = Utc.with_ymd_and_hms(2026, 6, 1, 14, 0, 0).unwrap();
    let mut bookings: Vec<ExpectedBooking> = Vec::new();
    // Each caller's requests in order: (booking index, its state after this request).
    let mut per_caller: Vec<Vec<(usize, ExpectedBooking)>> = vec![Vec::new(); CALLERS];
    for i in 0..500usize {
        let caller = (i * 37) % CALLERS;
        let theirs: Vec<usize> = (0..bookings.len())
            .filter(|b| bookings[*b].caller == caller)
            .collect();
        let index = match (i % 10, theirs.last()) {
            (6 | 7, Some(&b)) => {
                bookings[b].start += chrono::Duration::hours(26);
                bookings[b].cancelled = false;
                b
            }
            (8, Some(&b)) => {
                bookings[b].cancelled = true;
                b
            }
            _ => {
                bookings.push(ExpectedBooking {
                    caller,
                    title: format!("Soak service {}", bookings.len()),
                    start: base + chrono::Duration::hours(i as i64),
                    cancelled: false,
                });
                bookings.len() - 1
            }
        };
        per_caller[caller].push((index, bookings[index].clone()));
    }
    fx.crm.lift_request_budget();
    // The CRM's limits are lifted, so is the account's budget (still taken from, never short).
    let mut lifted = fx.crm.connection();
    lifted.settings.extra.insert(
        "rateBudget".into(),
        json!({"requests": 1_000_000, "windowSeconds": 1, "searchRequests": 1_000_000}),
    );
    store_connection(&app, CONNECTION, &lifted).await;
    fx.crm.control().chaos(crate::emulator::Chaos {
        lost_answer_percent: 25,
        error_percent: 10,
        seed: 0x9e37_79b9_7f4a_7c15,
    });
    let limit = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for (caller, requests) in per_caller.into_iter().enumerate() {
        let (app, limit) = (app.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            for (index, booking) in requests {
                let mut customer = json!({"firstName": "Caller", "lastName": format!("No {caller}"),
                                          "phone": format!("+1 212 555 {:04}", 3000 + caller)});
                if caller % 3 != 0 {
                    customer["email"] = json!(format!("caller{caller}@soak.example.com"));
                }
                let body = json!({"connectionId": CONNECTION, "customer": customer,
                    "appointment": {"externalId": format!("soak-{index}"), "title": booking.title,
                        "start": booking.start.to_rfc3339(), "timezone": "UTC",
                        "status": if booking.cancelled { "cancelled" } else { "scheduled" }}});
                let mut tries = 0;
                while let Err(failure) = app.sync_appointment(&body).await {
                    tries += 1;
                    assert!(
                        tries < 200,
                        "booking {index} never synced: {:?}",
                        failure.error
                    );
                    // As n8n's retry does: a pause, longer than a sync in progress takes.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("caller task");
    }
    fx.crm.control().clear_faults();

    let contacts = fx.crm.contacts();
    let callers: std::collections::BTreeSet<usize> = bookings.iter().map(|b| b.caller).collect();
    assert_eq!(contacts.len(), callers.len(), "one contact per caller");
    let appointments = fx.crm.appointments();
    for booking in &bookings {
        let held: Vec<_> = appointments
            .iter()
            .filter(|a| a.title.ends_with(&booking.title))
            .collect();
        assert_eq!(held.len(), 1, "{booking:?}: {held:?}");
        assert_eq!(held[0].start, booking.start, "{booking:?}");
        assert_eq!(held[0].cancelled, booking.cancelled, "{booking:?}");
    }
    assert_eq!(
        appointments.len(),
        bookings.len(),
        "one meeting per booking"
    );
}

/// Whether `value` holds `key: expected` anywhere (CRMs nest custom fields differently).
fn holds_pair(value: &Value, key: &str, expected: &str) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| (k == key && v == expected) || holds_pair(v, key, expected)),
        Value::Array(items) => items.iter().any(|v| holds_pair(v, key, expected)),
        _ => false,
    }
}

pub async fn a_field_mapping_writes_and_reads_the_mapped_crm_field(fx: Fixture) {
    let custom = fx.crm.custom_contact_field();
    let mut mapped = fx.crm.connection();
    mapped.settings.field_mappings.insert(
        "contact".into(),
        [("city".to_string(), custom.to_string())].into(),
    );
    store_connection(&fx.app, "mapped", &mapped).await;
    store_connection(&fx.app, "mapped-again", &mapped).await;
    let customer = json!({"firstName": "Homer", "lastName": "Simpson", "email": "homer@example.com", "city": "Springfield"});
    let before = fx.crm.control().request_count();
    let first = fx
        .app
        .sync_customer(&json!({"connectionId": "mapped", "customer": customer}))
        .await
        .unwrap();
    assert_eq!(first.status, crm_sync::crm::Outcome::Created);
    let sent = fx.crm.control().requests()[before..].to_vec();
    assert!(
        sent.iter()
            .any(|r| holds_pair(&r.body, custom, "Springfield")),
        "the city went to {custom}: {:?}",
        sent.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    // A connection with no sync record of its own compares with what the CRM holds: the mapped
    // field is read back from where it was written, so nothing differs.
    let second = fx
        .app
        .sync_customer(&json!({"connectionId": "mapped-again", "customer": customer}))
        .await
        .unwrap();
    assert_eq!(second.status, crm_sync::crm::Outcome::Unchanged);
    assert_eq!(second.crm_id, first.crm_id);
}

/// Expands to one `#[tokio::test]` per conformance case, each with a fresh emulator from
/// `$start` (an async fn returning `Box<dyn EmulatedCrm>`).
#[macro_export]
macro_rules! conformance_suite {
    ($start:path) => {
        $crate::conformance_suite!(@cases $start;
            creates_a_contact_and_a_resend_is_unchanged,
            a_changed_resend_updates_the_same_contact,
            a_contact_the_crm_already_holds_identically_is_unchanged,
            an_existing_contact_is_found_by_email_and_updated,
            an_existing_contact_is_found_by_phone_typed_any_way,
            several_matches_answer_ambiguous_and_change_nothing,
            an_appointment_is_linked_to_the_contact_and_a_resend_moves_the_same_event,
            wall_time_survives_in_every_zone_and_across_dst,
            a_lead_is_created_then_updated_in_place,
            get_customer_finds_by_id_email_and_phone_and_answers_not_found,
            refused_credentials_fail_clearly_and_are_recorded,
            a_short_rate_limit_is_waited_out_and_a_long_one_is_passed_on,
            a_crm_outage_is_recorded_and_replayed_without_duplicates,
            a_slow_crm_times_out_as_unavailable,
            a_field_mapping_writes_and_reads_the_mapped_crm_field,
            a_lost_create_answer_then_a_resend_makes_one_record,
            a_lost_create_answer_then_the_replay_makes_one_record,
        );
    };
    (@cases $start:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let fixture = $crate::conformance::Fixture::new($start().await).await;
                $crate::conformance::$case(fixture).await;
            }
        )+
    };
}
