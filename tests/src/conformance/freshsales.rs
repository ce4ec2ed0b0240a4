//! The Freshworks CRM (Freshsales) emulator as the conformance suite sees it.

use async_trait::async_trait;
use crm_sync::connection::Connection;
use crm_sync::crm::freshsales::CANCELLED_TITLE_PREFIX;
use crm_sync::domain::CrmType;
use crm_sync::store::EntityKind;

use super::{EmulatedAppointment, EmulatedContact, EmulatedCrm, EmulatedLead};
use crate::emulator::Control;
use crate::emulator::freshsales::{FreshsalesEmulator, parse_time};
use crate::harness::connection;

pub const API_KEY: &str = "freshsales-conformance-key-3c9a";

pub struct FreshsalesUnderTest {
    pub emulator: FreshsalesEmulator,
}

/// Starts a fresh Freshsales emulator for one test.
pub async fn start() -> Box<dyn EmulatedCrm> {
    let emulator = FreshsalesEmulator::start(&[API_KEY])
        .await
        .expect("emulator starts");
    Box::new(FreshsalesUnderTest { emulator })
}

#[async_trait]
impl EmulatedCrm for FreshsalesUnderTest {
    fn crm_type(&self) -> CrmType {
        CrmType::Freshsales
    }

    fn connection(&self) -> Connection {
        connection(
            CrmType::Freshsales,
            self.emulator.base_url(),
            &[("apiKey", API_KEY)],
        )
    }

    fn connection_with_bad_credentials(&self) -> Connection {
        connection(
            CrmType::Freshsales,
            self.emulator.base_url(),
            &[("apiKey", "revoked-key")],
        )
    }

    fn control(&self) -> &Control {
        &self.emulator.server.control
    }

    fn contacts(&self) -> Vec<EmulatedContact> {
        let state = self.emulator.state.lock().unwrap();
        state
            .contacts
            .values()
            .map(|c| EmulatedContact {
                id: c.id.to_string(),
                first_name: c.text("first_name").map(str::to_string),
                last_name: c.text("last_name").map(str::to_string),
                email: c.text("email").map(str::to_string),
                phones: ["mobile_number", "work_number"]
                    .iter()
                    .filter_map(|p| c.text(p))
                    .map(str::to_string)
                    .collect(),
            })
            .collect()
    }

    fn appointments(&self) -> Vec<EmulatedAppointment> {
        let state = self.emulator.state.lock().unwrap();
        state
            .appointments
            .values()
            .map(|a| {
                // The contact it is about, then any contact attending, each once.
                let mut contact_ids: Vec<String> = Vec::new();
                if a.text("targetable_type") == Some("Contact") {
                    contact_ids.extend(a.number("targetable_id").map(|id| id.to_string()));
                }
                for attendee in a
                    .fields
                    .get("appointment_attendees")
                    .and_then(|v| v.as_array())
                    .into_iter()
                    .flatten()
                {
                    if attendee["attendee_type"] == "Contact" {
                        let id = attendee["attendee_id"].to_string();
                        if !contact_ids.contains(&id) {
                            contact_ids.push(id);
                        }
                    }
                }
                let title = a.text("title").unwrap_or_default();
                EmulatedAppointment {
                    id: a.id.to_string(),
                    contact_ids,
                    title: title.to_string(),
                    start: a.text("from_date").and_then(parse_time).expect("from_date"),
                    end: a.text("end_date").and_then(parse_time).expect("end_date"),
                    cancelled: title.starts_with(CANCELLED_TITLE_PREFIX),
                }
            })
            .collect()
    }

    /// Contacts at the Lead lifecycle stage, titled like the CRM shows them: name (account).
    fn leads(&self) -> Vec<EmulatedLead> {
        let state = self.emulator.state.lock().unwrap();
        let lead_stage = state.lead_stage_id();
        state
            .contacts
            .values()
            .filter(|c| c.number("lifecycle_stage_id") == Some(lead_stage))
            .map(|c| EmulatedLead {
                id: c.id.to_string(),
                // The lead is the contact itself, not a record attached to one.
                contact_ids: vec![],
                title: match state.primary_account(c) {
                    Some(account) => format!("{} ({account})", c.display_name()),
                    None => c.display_name(),
                },
            })
            .collect()
    }

    fn create_route(&self, entity: EntityKind) -> &'static str {
        match entity {
            EntityKind::Customer => "POST /api/contacts",
            EntityKind::Lead => "POST /api/contacts",
            EntityKind::Appointment => "POST /api/appointments$",
        }
    }

    /// The per-minute cap becomes `requests` per `window`; the hourly budget is lifted (it
    /// would outlast a test).
    fn keep_limit(
        &self,
        requests: u32,
        window: std::time::Duration,
        _search: (u32, std::time::Duration),
    ) -> Option<serde_json::Value> {
        let mut state = self.emulator.state.lock().unwrap();
        state.budget = crate::emulator::RequestBudget::new(1_000_000, chrono::Duration::hours(1));
        state.per_minute = crate::emulator::SlidingWindow::new(requests, window);
        Some(super::rate_budget_setting(requests, window, None))
    }

    fn lift_request_budget(&self) {
        let mut state = self.emulator.state.lock().unwrap();
        state.budget = crate::emulator::RequestBudget::new(1_000_000, chrono::Duration::hours(1));
        state.per_minute.lift();
    }

    fn custom_contact_field(&self) -> &'static str {
        "cf_booking_city"
    }

    fn add_contact(
        &self,
        first_name: &str,
        last_name: &str,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> String {
        let mut fields = vec![("first_name", first_name), ("last_name", last_name)];
        fields.extend(email.map(|e| ("email", e)));
        fields.extend(phone.map(|p| ("mobile_number", p)));
        self.emulator.state.lock().unwrap().add_contact(&fields)
    }
}
