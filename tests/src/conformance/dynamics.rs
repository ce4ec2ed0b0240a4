//! The Dynamics 365 emulator as the conformance suite sees it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use crm_sync::connection::{Connection, ConnectionSettings, SecretString};
use crm_sync::domain::CrmType;
use crm_sync::store::EntityKind;
use serde_json::{Value, json};

use super::{EmulatedAppointment, EmulatedContact, EmulatedCrm, EmulatedLead};
use crate::emulator::Control;
use crate::emulator::dynamics::{CUSTOM_CONTACT_COLUMN, DynamicsEmulator, Row};
use crate::emulator::oauth::OAuthTokens;

pub const TENANT_ID: &str = "4d1f6c2a-93b8-4e57-a0c1-5b7e2f9d8a31";
pub const CLIENT_ID: &str = "0c8e5f3b-2d71-4a96-b8e4-7f1a6c3d9e20";
pub const CLIENT_SECRET: &str = "dyn~conformance-client-secret-5Qx";

pub struct DynamicsUnderTest {
    pub emulator: DynamicsEmulator,
    /// Contacts and leads have an alternate key on `emailaddress1`, named in the connection's
    /// `alternateKeys`: creates are upserts by it, a batch's customers `$batch` upserts.
    pub keyed: bool,
}

/// The app registration, with access tokens of an hour as Entra ID issues them.
pub fn tokens() -> OAuthTokens {
    OAuthTokens::new(CLIENT_ID, CLIENT_SECRET, "", chrono::Duration::hours(1))
}

/// Starts a fresh Dynamics emulator for one test.
pub async fn start() -> Box<dyn EmulatedCrm> {
    started(false).await
}

/// Starts a fresh Dynamics emulator whose contacts and leads have an alternate key on email,
/// with a connection that names it.
pub async fn start_keyed() -> Box<dyn EmulatedCrm> {
    started(true).await
}

async fn started(keyed: bool) -> Box<dyn EmulatedCrm> {
    let emulator = DynamicsEmulator::start(tokens())
        .await
        .expect("emulator starts");
    if keyed {
        let mut state = emulator.state.lock().unwrap();
        for table in ["contacts", "leads"] {
            state
                .alternate_keys
                .insert(table.into(), "emailaddress1".into());
        }
    }
    Box::new(DynamicsUnderTest { emulator, keyed })
}

/// A connection to the emulator: the app's client id and secret (no token yet, so the first
/// call asks for one), with Entra ID and the environment both on the emulator.
pub fn connection(base_url: &str, client_secret: &str) -> Connection {
    let mut settings = ConnectionSettings::default();
    settings
        .extra
        .insert("environmentUrl".into(), json!(base_url));
    settings.extra.insert("tenantId".into(), json!(TENANT_ID));
    settings
        .extra
        .insert("authorityUrl".into(), json!(base_url));
    Connection {
        id: None,
        crm_type: CrmType::Dynamics,
        credentials: [("clientId", CLIENT_ID), ("clientSecret", client_secret)]
            .iter()
            .map(|(k, v)| (k.to_string(), SecretString::new(*v)))
            .collect(),
        settings,
    }
}

fn text(row: &Row, column: &str) -> Option<String> {
    row.get(column)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn time(row: &Row, column: &str) -> DateTime<Utc> {
    let raw = text(row, column).expect("an appointment has its times");
    DateTime::parse_from_rfc3339(&raw)
        .expect("stored in UTC")
        .with_timezone(&Utc)
}

#[async_trait]
impl EmulatedCrm for DynamicsUnderTest {
    fn crm_type(&self) -> CrmType {
        CrmType::Dynamics
    }

    /// As a stored connection holds it after its last token request: with a live access token.
    fn connection(&self) -> Connection {
        let mut connection = connection(self.emulator.base_url(), CLIENT_SECRET);
        let token = self.emulator.state.lock().unwrap().tokens.issue();
        connection
            .credentials
            .insert("accessToken".into(), SecretString::new(token));
        let expires_at = Utc::now() + chrono::Duration::hours(1);
        connection.settings.extra.insert(
            "accessTokenExpiresAt".into(),
            json!(expires_at.to_rfc3339()),
        );
        if self.keyed {
            connection.settings.extra.insert(
                "alternateKeys".into(),
                json!({"contact": "emailaddress1", "lead": "emailaddress1"}),
            );
        }
        connection
    }

    fn connection_with_bad_credentials(&self) -> Connection {
        connection(self.emulator.base_url(), "a-revoked-client-secret")
    }

    fn control(&self) -> &Control {
        &self.emulator.server.control
    }

    fn contacts(&self) -> Vec<EmulatedContact> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("contacts")
            .into_iter()
            .map(|c| EmulatedContact {
                first_name: text(&c, "firstname"),
                last_name: text(&c, "lastname"),
                email: text(&c, "emailaddress1"),
                phones: ["telephone1", "mobilephone", "telephone2"]
                    .iter()
                    .filter_map(|p| text(&c, p))
                    .collect(),
                id: text(&c, "contactid").unwrap_or_default(),
            })
            .collect()
    }

    /// Linked is the regarding contact; cancelled is the Canceled state (2).
    fn appointments(&self) -> Vec<EmulatedAppointment> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("appointments")
            .into_iter()
            .map(|a| EmulatedAppointment {
                contact_ids: text(&a, "_regardingobjectid_value").into_iter().collect(),
                title: text(&a, "subject").unwrap_or_default(),
                start: time(&a, "scheduledstart"),
                end: time(&a, "scheduledend"),
                cancelled: a.get("statecode") == Some(&json!(2)),
                id: text(&a, "activityid").unwrap_or_default(),
            })
            .collect()
    }

    /// A Dynamics lead stands alone; its topic reads "name (company)".
    fn leads(&self) -> Vec<EmulatedLead> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("leads")
            .into_iter()
            .map(|l| EmulatedLead {
                contact_ids: vec![],
                title: text(&l, "subject").unwrap_or_default(),
                id: text(&l, "leadid").unwrap_or_default(),
            })
            .collect()
    }

    fn lift_request_budget(&self) {
        self.emulator.state.lock().unwrap().budget =
            crate::emulator::RequestBudget::new(1_000_000, chrono::Duration::minutes(5));
    }

    fn create_route(&self, entity: EntityKind) -> &'static str {
        match entity {
            EntityKind::Customer => "POST /api/data/v9.2/contacts$",
            EntityKind::Lead => "POST /api/data/v9.2/leads$",
            EntityKind::Appointment => "POST /api/data/v9.2/appointments$",
        }
    }

    fn custom_contact_field(&self) -> &'static str {
        CUSTOM_CONTACT_COLUMN
    }

    fn add_contact(
        &self,
        first_name: &str,
        last_name: &str,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> String {
        let mut values = vec![("firstname", first_name), ("lastname", last_name)];
        values.extend(email.map(|e| ("emailaddress1", e)));
        values.extend(phone.map(|p| ("telephone1", p)));
        let mut state = self.emulator.state.lock().unwrap();
        let id = state.insert("contacts", &values);
        // As Dataverse gives a new contact: Active.
        state
            .tables
            .get_mut("contacts")
            .and_then(|t| t.get_mut(&id))
            .map(|row| row.insert("statecode".into(), json!(0)));
        id
    }
}
