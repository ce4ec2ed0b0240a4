//! The earlier Node.js service's n8n workflow and documented bodies, sent through the Lambda
//! handlers to every CRM's emulator with only `credentials` swapped for `connectionId`: the CRM
//! ends up holding the booking, customer and lead, and every answer carries `success`. Every
//! response is checked against openapi.yaml.

use chrono::{DateTime, Duration, Utc};
use crm_sync::App;
use crm_sync::http::Operation;
use crm_sync_tests::conformance::{EmulatedContact, EmulatedCrm};
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::harness::*;
use lambda_http::http::Method;
use serde_json::{Value, json};

/// The body of the workflow's node "Sync Appointment to CRM" (`n8n-workflow-otto-ai-router.json`)
/// as rendered for a booking, `credentials` replaced by `connectionId`. The node fills `crmType`
/// from `$json.crmType || 'hubspot'`, so it names the connection's CRM.
fn workflow_appointment(crm: &str) -> Value {
    json!({"crmType": crm, "connectionId": format!("demo-{crm}"),
        "appointmentData": {"id": "apt_1764632000000", "customerName": "John Doe",
            "customerPhone": "+19163337305", "customerEmail": "", "serviceType": "Oil Change",
            "appointmentDate": "2026-12-02T10:00:00.000Z", "status": "confirmed"}})
}

/// `CRM_INTEGRATION_GUIDE.md`, "Sync Customer to CRM".
fn docs_customer(crm: &str) -> Value {
    json!({"crmType": crm, "connectionId": format!("demo-{crm}"),
        "customerData": {"firstName": "John", "lastName": "Doe", "email": "john@example.com",
            "phone": "+19163337305", "address": "123 Main St", "city": "Sacramento",
            "state": "CA", "zipCode": "95814"}})
}

/// `CRM_INTEGRATION_GUIDE.md`, "Sync Lead to CRM".
fn docs_lead(crm: &str) -> Value {
    json!({"crmType": crm, "connectionId": format!("demo-{crm}"),
        "leadData": {"firstName": "Jane", "lastName": "Smith", "email": "jane@example.com",
            "phone": "+19163337306", "company": "ABC Motors",
            "notes": "Interested in service packages"}})
}

/// `CRM_INTEGRATION_EXAMPLES.md`, "Add CRM Sync to Appointment Booking Workflow", as its
/// expressions render for the same booking: the date as both start and end, the caller's phone
/// as `customerId`.
fn docs_appointment(crm: &str) -> Value {
    json!({"crmType": crm, "connectionId": format!("demo-{crm}"),
        "appointmentData": {"title": "Oil Change", "startTime": "2026-12-02T10:00:00.000Z",
            "endTime": "2026-12-02T10:00:00.000Z", "notes": "Confirmation #: apt_1764632000000",
            "customerId": "+19163337305"}})
}

struct Legacy {
    crm: Box<dyn EmulatedCrm>,
    name: &'static str,
    app: App,
    spec: OpenApi,
    _dir: TempDir,
}

impl Legacy {
    async fn start(crm: Box<dyn EmulatedCrm>) -> Self {
        let dir = TempDir::new("legacy-n8n");
        let app = local_app(&dir);
        let name = crm.crm_type().as_str();
        store_connection(&app, &format!("demo-{name}"), &crm.connection()).await;
        Legacy {
            crm,
            name,
            app,
            spec: OpenApi::crm_sync(),
            _dir: dir,
        }
    }

    async fn post(&self, operation: Operation, body: &Value) -> ApiAnswer {
        let request = api_request(Method::POST, Some(TEST_API_KEY), Some(body));
        call_checked(&self.app, &self.spec, operation, request).await
    }

    /// Posts and expects a successful sync.
    async fn synced(&self, operation: Operation, body: &Value) -> Value {
        let answer = self.post(operation, body).await;
        assert_eq!(answer.status, 200, "{}: {}", self.name, answer.body);
        assert_eq!(answer.body["success"], true, "{}", self.name);
        answer.body
    }

    fn contact(&self, crm_id: &Value) -> EmulatedContact {
        self.crm
            .contacts()
            .into_iter()
            .find(|c| c.id == crm_id.as_str().unwrap())
            .unwrap_or_else(|| panic!("{}: no contact {crm_id}", self.name))
    }
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

async fn the_workflows_booking_syncs_its_customer_and_meeting(crm: Box<dyn EmulatedCrm>) {
    let api = Legacy::start(crm).await;
    let body = workflow_appointment(api.name);
    let first = api.synced(Operation::SyncAppointment, &body).await;
    assert_eq!(first["status"], "created");

    let contact = api.contact(&first["contact"]["crmId"]);
    assert_eq!(contact.first_name.as_deref(), Some("John"));
    assert_eq!(contact.last_name.as_deref(), Some("Doe"));
    assert_eq!(contact.email, None, "an empty email is no email");
    assert!(
        contact.phones.iter().any(|p| p == "+19163337305"),
        "{}: {:?}",
        api.name,
        contact.phones
    );
    let meetings = api.crm.appointments();
    assert_eq!(meetings.len(), 1, "{}", api.name);
    let meeting = &meetings[0];
    assert_eq!(meeting.id, first["appointment"]["crmId"].as_str().unwrap());
    assert_eq!(meeting.title, "Oil Change");
    assert_eq!(meeting.start, at("2026-12-02T10:00:00Z"));
    assert_eq!(meeting.end - meeting.start, Duration::minutes(30));
    assert!(meeting.contact_ids.contains(&contact.id), "{}", api.name);
    assert!(!meeting.cancelled);

    // n8n retries: the same booking id is the same meeting.
    let again = api.synced(Operation::SyncAppointment, &body).await;
    assert_eq!(again["status"], "unchanged");
    assert_eq!(again["appointment"]["crmId"], first["appointment"]["crmId"]);

    let mut cancelled = body.clone();
    cancelled["appointmentData"]["status"] = json!("cancelled");
    let cancel = api.synced(Operation::SyncAppointment, &cancelled).await;
    assert_eq!(
        cancel["appointment"]["crmId"],
        first["appointment"]["crmId"]
    );
    let meetings = api.crm.appointments();
    assert_eq!(meetings.len(), 1, "{}", api.name);
    assert!(meetings[0].cancelled, "{}", api.name);
}

async fn undefined_from_the_workflows_interpolation_counts_as_absent(crm: Box<dyn EmulatedCrm>) {
    let api = Legacy::start(crm).await;
    let mut body = workflow_appointment(api.name);
    body["appointmentData"]["customerEmail"] = json!("undefined");
    let answer = api.synced(Operation::SyncAppointment, &body).await;
    let contact = api.contact(&answer["contact"]["crmId"]);
    assert_eq!(contact.email, None, "{}", api.name);
    assert_eq!(contact.last_name.as_deref(), Some("Doe"));
    assert!(
        contact.phones.iter().any(|p| p == "+19163337305"),
        "{}",
        api.name
    );
}

async fn the_docs_customer_lead_and_appointment_bodies_sync(crm: Box<dyn EmulatedCrm>) {
    let api = Legacy::start(crm).await;
    let customer = api
        .synced(Operation::SyncCustomer, &docs_customer(api.name))
        .await;
    assert_eq!(customer["status"], "created");
    let contact = api.contact(&customer["crmId"]);
    assert_eq!(contact.first_name.as_deref(), Some("John"));
    assert_eq!(contact.last_name.as_deref(), Some("Doe"));
    assert_eq!(contact.email.as_deref(), Some("john@example.com"));

    let lead = api.synced(Operation::SyncLead, &docs_lead(api.name)).await;
    assert_eq!(lead["status"], "created");
    let leads = api.crm.leads();
    assert!(
        leads
            .iter()
            .any(|l| l.id == lead["crmId"].as_str().unwrap()),
        "{}: {leads:?}",
        api.name
    );

    // `customerId` holds the caller's phone: the contact with that phone is the one used.
    let booked = api
        .synced(Operation::SyncAppointment, &docs_appointment(api.name))
        .await;
    assert_eq!(
        booked["contact"]["crmId"], customer["crmId"],
        "{}",
        api.name
    );
    let meetings = api.crm.appointments();
    assert_eq!(meetings.len(), 1, "{}", api.name);
    assert_eq!(meetings[0].title, "Oil Change");
    assert_eq!(meetings[0].start, at("2026-12-02T10:00:00Z"));
    assert_eq!(
        meetings[0].end - meetings[0].start,
        Duration::minutes(30),
        "an end equal to the start means the default duration"
    );
    assert!(meetings[0].contact_ids.contains(&contact.id));
}

async fn a_phone_as_customer_id_must_name_exactly_one_contact(crm: Box<dyn EmulatedCrm>) {
    let api = Legacy::start(crm).await;
    let nobody = api
        .post(Operation::SyncAppointment, &docs_appointment(api.name))
        .await;
    assert_eq!(nobody.status, 404, "{}: {}", api.name, nobody.body);
    assert_eq!(nobody.body["success"], false);
    assert_eq!(nobody.body["error"]["code"], "not_found");

    let first = api.crm.add_contact(
        "John",
        "Doe",
        Some("john@example.com"),
        Some("+19163337305"),
    );
    let second = api.crm.add_contact(
        "Joan",
        "Doe",
        Some("joan@example.com"),
        Some("(916) 333-7305"),
    );
    let shared = api
        .post(Operation::SyncAppointment, &docs_appointment(api.name))
        .await;
    assert_eq!(shared.status, 409, "{}: {}", api.name, shared.body);
    assert_eq!(shared.body["success"], false);
    assert_eq!(shared.body["error"]["code"], "ambiguous_match");
    let mut matches: Vec<String> =
        serde_json::from_value(shared.body["error"]["matches"].clone()).unwrap();
    matches.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(matches, expected, "{}", api.name);
    assert!(api.crm.appointments().is_empty(), "{}", api.name);
}

/// One `#[tokio::test]` per CRM for each case, each with a fresh emulator.
macro_rules! for_every_crm {
    ($($case:ident),+ $(,)?) => {
        $(
            mod $case {
                use crm_sync_tests::conformance::{freshsales, hubspot, pipedrive, salesforce, zoho};
                #[tokio::test]
                async fn hubspot() {
                    super::$case(hubspot::start().await).await;
                }
                #[tokio::test]
                async fn salesforce() {
                    super::$case(salesforce::start().await).await;
                }
                #[tokio::test]
                async fn pipedrive() {
                    super::$case(pipedrive::start().await).await;
                }
                #[tokio::test]
                async fn zoho() {
                    super::$case(zoho::start().await).await;
                }
                #[tokio::test]
                async fn freshsales() {
                    super::$case(freshsales::start().await).await;
                }
            }
        )+
    };
}

for_every_crm!(
    the_workflows_booking_syncs_its_customer_and_meeting,
    undefined_from_the_workflows_interpolation_counts_as_absent,
    the_docs_customer_lead_and_appointment_bodies_sync,
    a_phone_as_customer_id_must_name_exactly_one_contact,
);

#[tokio::test]
async fn a_customer_id_may_be_a_record_id_a_phone_of_digits_or_an_email() {
    let api = Legacy::start(crm_sync_tests::conformance::hubspot::start().await).await;
    let john = api.crm.add_contact(
        "John",
        "Doe",
        Some("john@example.com"),
        Some("+19163337305"),
    );
    let mut body = docs_appointment(api.name);
    body["appointmentData"]["customerId"] = json!("9163337305");
    let by_phone = api.synced(Operation::SyncAppointment, &body).await;
    assert_eq!(by_phone["contact"]["crmId"], john);

    let mut body = docs_appointment(api.name);
    body["appointmentData"]["customerId"] = json!(john);
    body["appointmentData"]["startTime"] = json!("2026-12-03T10:00:00Z");
    body["appointmentData"]["endTime"] = json!("2026-12-03T10:00:00Z");
    let by_id = api.synced(Operation::SyncAppointment, &body).await;
    assert_eq!(by_id["contact"]["crmId"], john);

    body["appointmentData"]["customerId"] = json!("John@Example.com");
    let by_email = api.synced(Operation::SyncAppointment, &body).await;
    assert_eq!(by_email["contact"]["crmId"], john);
    assert_eq!(api.crm.contacts().len(), 1, "a lookup creates no contact");
}

#[tokio::test]
async fn a_request_still_carrying_credentials_fails_with_success_false() {
    let api = Legacy::start(crm_sync_tests::conformance::hubspot::start().await).await;
    let mut body = workflow_appointment(api.name);
    body["credentials"] = json!({"apiKey": "pat-na1-old"});
    let answer = api.post(Operation::SyncAppointment, &body).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["success"], false);
    assert_eq!(answer.body["error"]["field"], "credentials");
    assert!(api.crm.contacts().is_empty());
}
