//! The Zoho CRM emulator as the conformance suite sees it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use crm_sync::connection::{Connection, ConnectionSettings, SecretString};
use crm_sync::crm::zoho::CANCELLED_TITLE_PREFIX;
use crm_sync::domain::CrmType;
use crm_sync::store::EntityKind;
use serde_json::json;

use super::{EmulatedAppointment, EmulatedContact, EmulatedCrm, EmulatedLead};
use crate::emulator::Control;
use crate::emulator::oauth::OAuthTokens;
use crate::emulator::zoho::{ZohoEmulator, ZohoRecord};

pub const CLIENT_ID: &str = "1000.CONFORMANCE7Q2XJ";
pub const CLIENT_SECRET: &str = "zoho-conformance-client-secret-91d";
pub const REFRESH_TOKEN: &str = "1000.zoho-conformance-refresh-4be2";

pub struct ZohoUnderTest {
    pub emulator: ZohoEmulator,
}

/// The emulated client and its refresh token, with one-hour access tokens as Zoho issues them.
pub fn tokens() -> OAuthTokens {
    OAuthTokens::new(
        CLIENT_ID,
        CLIENT_SECRET,
        REFRESH_TOKEN,
        chrono::Duration::hours(1),
    )
}

/// Starts a fresh Zoho emulator for one test.
pub async fn start() -> Box<dyn EmulatedCrm> {
    let emulator = ZohoEmulator::start(tokens())
        .await
        .expect("emulator starts");
    Box::new(ZohoUnderTest { emulator })
}

/// A connection to the emulator: client credentials and a refresh token (no access token yet,
/// so the first call refreshes), with the accounts server and the API both on the emulator.
pub fn connection(base_url: &str, refresh_token: &str) -> Connection {
    let mut settings = ConnectionSettings {
        base_url: Some(base_url.into()),
        ..Default::default()
    };
    settings.extra.insert("accountsUrl".into(), json!(base_url));
    Connection {
        id: None,
        crm_type: CrmType::Zoho,
        credentials: [
            ("clientId", CLIENT_ID),
            ("clientSecret", CLIENT_SECRET),
            ("refreshToken", refresh_token),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), SecretString::new(*v)))
        .collect(),
        settings,
    }
}

fn text(record: &ZohoRecord, field: &str) -> Option<String> {
    record.text(field).map(str::to_string)
}

fn time(record: &ZohoRecord, field: &str) -> DateTime<Utc> {
    let raw = record.text(field).expect("a meeting has its times");
    DateTime::parse_from_rfc3339(raw)
        .expect("stored in Zoho's datetime form")
        .with_timezone(&Utc)
}

#[async_trait]
impl EmulatedCrm for ZohoUnderTest {
    fn crm_type(&self) -> CrmType {
        CrmType::Zoho
    }

    /// As a stored connection holds it after its last refresh: with a live access token.
    fn connection(&self) -> Connection {
        let mut connection = connection(self.emulator.base_url(), REFRESH_TOKEN);
        let token = self.emulator.state.lock().unwrap().tokens.issue();
        connection
            .credentials
            .insert("accessToken".into(), SecretString::new(token));
        let expires_at = Utc::now() + chrono::Duration::hours(1);
        let extra = &mut connection.settings.extra;
        extra.insert("apiDomain".into(), json!(self.emulator.base_url()));
        extra.insert(
            "accessTokenExpiresAt".into(),
            json!(expires_at.to_rfc3339()),
        );
        connection
    }

    fn connection_with_bad_credentials(&self) -> Connection {
        connection(self.emulator.base_url(), "1000.revoked-refresh-token")
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
                first_name: text(&c, "First_Name"),
                last_name: text(&c, "Last_Name"),
                email: text(&c, "Email"),
                phones: ["Phone", "Mobile"]
                    .iter()
                    .filter_map(|f| text(&c, f))
                    .collect(),
                id: c.id,
            })
            .collect()
    }

    /// Cancelled is Zoho's `$event_cancelled`, or the title mark of a meeting Zoho would not
    /// cancel (see the adapter's `update_appointment`).
    fn appointments(&self) -> Vec<EmulatedAppointment> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("Events")
            .into_iter()
            .map(|e| {
                let title = text(&e, "Event_Title").unwrap_or_default();
                EmulatedAppointment {
                    contact_ids: e
                        .lookup_id("Who_Id")
                        .map(str::to_string)
                        .into_iter()
                        .collect(),
                    start: time(&e, "Start_DateTime"),
                    end: time(&e, "End_DateTime"),
                    cancelled: e.fields.get("$event_cancelled") == Some(&json!(true))
                        || title.starts_with(CANCELLED_TITLE_PREFIX),
                    title,
                    id: e.id,
                }
            })
            .collect()
    }

    /// A Zoho lead stands alone; it reads as "name (company)".
    fn leads(&self) -> Vec<EmulatedLead> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("Leads")
            .into_iter()
            .map(|l| {
                let name = [text(&l, "First_Name"), text(&l, "Last_Name")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                EmulatedLead {
                    contact_ids: vec![],
                    title: format!("{name} ({})", text(&l, "Company").unwrap_or_default()),
                    id: l.id,
                }
            })
            .collect()
    }

    fn create_route(&self, entity: EntityKind) -> &'static str {
        match entity {
            EntityKind::Customer => "POST /crm/v8/Contacts",
            EntityKind::Lead => "POST /crm/v8/Leads",
            EntityKind::Appointment => "POST /crm/v8/Events$",
        }
    }

    fn custom_contact_field(&self) -> &'static str {
        "Booking_City"
    }

    fn add_contact(
        &self,
        first_name: &str,
        last_name: &str,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> String {
        let mut fields = vec![("First_Name", first_name), ("Last_Name", last_name)];
        fields.extend(email.map(|e| ("Email", e)));
        fields.extend(phone.map(|p| ("Phone", p)));
        self.emulator
            .state
            .lock()
            .unwrap()
            .insert("Contacts", &fields)
    }
}
