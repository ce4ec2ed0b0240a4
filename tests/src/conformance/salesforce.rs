//! The Salesforce emulator as the conformance suite sees it.

use async_trait::async_trait;
use crm_sync::connection::{Connection, ConnectionSettings, SecretString};
use crm_sync::crm::salesforce::CANCELLED_PREFIX;
use crm_sync::domain::CrmType;
use crm_sync::store::EntityKind;
use serde_json::json;

use super::{EmulatedAppointment, EmulatedContact, EmulatedCrm, EmulatedLead};
use crate::emulator::Control;
use crate::emulator::salesforce::{SalesforceEmulator, client, parse_time};

pub const CLIENT_ID: &str = "3MVG9conformance.client";
pub const CLIENT_SECRET: &str = "salesforce-conformance-secret-81c2";
pub const REFRESH_TOKEN: &str = "5Aep861conformance-refresh-token";

pub struct SalesforceUnderTest {
    pub emulator: SalesforceEmulator,
}

/// Starts a fresh Salesforce emulator for one test.
pub async fn start() -> Box<dyn EmulatedCrm> {
    let emulator = SalesforceEmulator::start(client(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN))
        .await
        .expect("emulator starts");
    Box::new(SalesforceUnderTest { emulator })
}

/// A connection as the OAuth flow leaves it: client, refresh token, and (optionally) a session
/// on the instance, with the emulator as both login and instance host.
pub fn connection(base_url: &str, refresh_token: &str, access_token: Option<&str>) -> Connection {
    let mut credentials = vec![
        ("clientId", CLIENT_ID),
        ("clientSecret", CLIENT_SECRET),
        ("refreshToken", refresh_token),
    ];
    credentials.extend(access_token.map(|t| ("accessToken", t)));
    let mut settings = ConnectionSettings::default();
    settings.extra.insert("loginUrl".into(), json!(base_url));
    if access_token.is_some() {
        settings.extra.insert("instanceUrl".into(), json!(base_url));
    }
    Connection {
        id: None,
        crm_type: CrmType::Salesforce,
        credentials: credentials
            .into_iter()
            .map(|(k, v)| (k.to_string(), SecretString::new(v)))
            .collect(),
        settings,
    }
}

#[async_trait]
impl EmulatedCrm for SalesforceUnderTest {
    fn crm_type(&self) -> CrmType {
        CrmType::Salesforce
    }

    fn connection(&self) -> Connection {
        let token = self.emulator.state.lock().unwrap().tokens.issue();
        connection(self.emulator.base_url(), REFRESH_TOKEN, Some(&token))
    }

    /// A revoked session and a revoked refresh token: the refresh after the 401 fails too.
    fn connection_with_bad_credentials(&self) -> Connection {
        connection(
            self.emulator.base_url(),
            "5Aep861revoked-refresh-token",
            Some("00Drevoked!session"),
        )
    }

    fn control(&self) -> &Control {
        &self.emulator.server.control
    }

    fn contacts(&self) -> Vec<EmulatedContact> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("Contact")
            .into_iter()
            .map(|c| EmulatedContact {
                first_name: c.get("FirstName").map(str::to_string),
                last_name: c.get("LastName").map(str::to_string),
                email: c.get("Email").map(str::to_string),
                phones: ["Phone", "MobilePhone"]
                    .iter()
                    .filter_map(|p| c.get(p))
                    .map(str::to_string)
                    .collect(),
                id: c.id,
            })
            .collect()
    }

    fn appointments(&self) -> Vec<EmulatedAppointment> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("Event")
            .into_iter()
            .map(|e| {
                let subject = e.get("Subject").unwrap_or_default().to_string();
                EmulatedAppointment {
                    contact_ids: e.get("WhoId").map(str::to_string).into_iter().collect(),
                    cancelled: subject.starts_with(CANCELLED_PREFIX)
                        && e.get("ShowAs") == Some("Free"),
                    title: subject,
                    start: e
                        .get("StartDateTime")
                        .and_then(parse_time)
                        .expect("start time"),
                    end: e.get("EndDateTime").and_then(parse_time).expect("end time"),
                    id: e.id,
                }
            })
            .collect()
    }

    /// A Lead is not attached to a contact; its title is the name with the company.
    fn leads(&self) -> Vec<EmulatedLead> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("Lead")
            .into_iter()
            .map(|l| EmulatedLead {
                contact_ids: vec![],
                title: format!(
                    "{} {} ({})",
                    l.get("FirstName").unwrap_or_default(),
                    l.get("LastName").unwrap_or_default(),
                    l.get("Company").unwrap_or_default()
                ),
                id: l.id,
            })
            .collect()
    }

    fn create_route(&self, entity: EntityKind) -> &'static str {
        match entity {
            EntityKind::Customer => "POST /services/data/v62.0/sobjects/Contact$",
            EntityKind::Lead => "POST /services/data/v62.0/sobjects/Lead$",
            EntityKind::Appointment => "POST /services/data/v62.0/sobjects/Event$",
        }
    }

    fn custom_contact_field(&self) -> &'static str {
        "Booking_City__c"
    }

    fn add_contact(
        &self,
        first_name: &str,
        last_name: &str,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> String {
        let mut fields = vec![("FirstName", first_name), ("LastName", last_name)];
        fields.extend(email.map(|e| ("Email", e)));
        fields.extend(phone.map(|p| ("Phone", p)));
        self.emulator
            .state
            .lock()
            .unwrap()
            .insert("Contact", &fields)
    }
}
