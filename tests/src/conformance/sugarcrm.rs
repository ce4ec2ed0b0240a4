//! The SugarCRM emulator as the conformance suite sees it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use crm_sync::connection::{Connection, ConnectionSettings, SecretString};
use crm_sync::crm::sugarcrm::{DEFAULT_PLATFORM, STATUS_NOT_HELD};
use crm_sync::domain::CrmType;
use crm_sync::store::EntityKind;
use serde_json::json;

use super::{EmulatedAppointment, EmulatedContact, EmulatedCrm, EmulatedLead};
use crate::emulator::Control;
use crate::emulator::oauth::OAuthTokens;
use crate::emulator::sugarcrm::{CUSTOM_CONTACT_FIELD, SugarEmulator, SugarRecord, SugarState};

pub const CLIENT_ID: &str = "sugar";
pub const CLIENT_SECRET: &str = "";
pub const USERNAME: &str = "crm-sync-api";
pub const PASSWORD: &str = "sugar-conformance-password-8Kd";

pub struct SugarUnderTest {
    pub emulator: SugarEmulator,
}

/// The instance's API user, with Sugar's one-hour access tokens, and the platform crm-sync uses
/// registered.
pub fn instance() -> SugarState {
    let tokens = OAuthTokens::new(CLIENT_ID, CLIENT_SECRET, "", chrono::Duration::hours(1));
    SugarState::new(tokens, USERNAME, PASSWORD, DEFAULT_PLATFORM)
}

/// Starts a fresh SugarCRM emulator for one test.
pub async fn start() -> Box<dyn EmulatedCrm> {
    let emulator = SugarEmulator::start(instance())
        .await
        .expect("emulator starts");
    Box::new(SugarUnderTest { emulator })
}

/// A connection to the emulator: the API user's name and password (no token yet, so the first
/// call logs in).
pub fn connection(base_url: &str, password: &str) -> Connection {
    let mut settings = ConnectionSettings::default();
    settings.extra.insert("instanceUrl".into(), json!(base_url));
    Connection {
        id: None,
        crm_type: CrmType::Sugarcrm,
        credentials: [("username", USERNAME), ("password", password)]
            .iter()
            .map(|(k, v)| (k.to_string(), SecretString::new(*v)))
            .collect(),
        settings,
    }
}

fn text(record: &SugarRecord, field: &str) -> Option<String> {
    record.text(field).map(str::to_string)
}

fn time(record: &SugarRecord, field: &str) -> DateTime<Utc> {
    let raw = record.text(field).expect("a meeting has its times");
    DateTime::parse_from_rfc3339(raw)
        .expect("stored in ISO 8601")
        .with_timezone(&Utc)
}

#[async_trait]
impl EmulatedCrm for SugarUnderTest {
    fn crm_type(&self) -> CrmType {
        CrmType::Sugarcrm
    }

    /// As a stored connection holds it after its last login: a live access token and the
    /// refresh token that came with it.
    fn connection(&self) -> Connection {
        let mut connection = connection(self.emulator.base_url(), PASSWORD);
        let issued = self.emulator.state.lock().unwrap().log_in(DEFAULT_PLATFORM);
        let credentials = &mut connection.credentials;
        credentials.insert("accessToken".into(), SecretString::new(issued.access_token));
        credentials.insert(
            "refreshToken".into(),
            SecretString::new(issued.refresh_token.unwrap_or_default()),
        );
        let expires_at = Utc::now() + chrono::Duration::hours(1);
        connection.settings.extra.insert(
            "accessTokenExpiresAt".into(),
            json!(expires_at.to_rfc3339()),
        );
        connection
    }

    fn connection_with_bad_credentials(&self) -> Connection {
        connection(self.emulator.base_url(), "a-changed-password")
    }

    fn control(&self) -> &Control {
        &self.emulator.server.control
    }

    fn contacts(&self) -> Vec<EmulatedContact> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("Contacts")
            .into_iter()
            .map(|c| EmulatedContact {
                first_name: text(&c, "first_name"),
                last_name: text(&c, "last_name"),
                email: c.emails().first().cloned(),
                phones: ["phone_mobile", "phone_work", "phone_home", "phone_other"]
                    .iter()
                    .filter_map(|f| text(&c, f))
                    .collect(),
                id: c.id,
            })
            .collect()
    }

    /// Linked are the contacts of the `contacts` link; cancelled is `Not Held`.
    fn appointments(&self) -> Vec<EmulatedAppointment> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("Meetings")
            .into_iter()
            .map(|m| EmulatedAppointment {
                contact_ids: m.contacts.iter().cloned().collect(),
                title: text(&m, "name").unwrap_or_default(),
                start: time(&m, "date_start"),
                end: time(&m, "date_end"),
                cancelled: m.text("status") == Some(STATUS_NOT_HELD),
                id: m.id,
            })
            .collect()
    }

    /// A Sugar lead stands alone; it reads as "name (account name)".
    fn leads(&self) -> Vec<EmulatedLead> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("Leads")
            .into_iter()
            .map(|l| EmulatedLead {
                contact_ids: vec![],
                title: format!(
                    "{} ({})",
                    text(&l, "full_name").unwrap_or_default(),
                    text(&l, "account_name").unwrap_or_default()
                ),
                id: l.id,
            })
            .collect()
    }

    fn create_route(&self, entity: EntityKind) -> &'static str {
        match entity {
            EntityKind::Customer => "POST /rest/v11/Contacts$",
            EntityKind::Lead => "POST /rest/v11/Leads$",
            EntityKind::Appointment => "POST /rest/v11/Meetings$",
        }
    }

    fn custom_contact_field(&self) -> &'static str {
        CUSTOM_CONTACT_FIELD
    }

    fn add_contact(
        &self,
        first_name: &str,
        last_name: &str,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> String {
        let mut values = vec![("first_name", first_name), ("last_name", last_name)];
        values.extend(email.map(|e| ("email", e)));
        values.extend(phone.map(|p| ("phone_mobile", p)));
        self.emulator
            .state
            .lock()
            .unwrap()
            .insert("Contacts", &values)
    }
}
