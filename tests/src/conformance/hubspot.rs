//! The HubSpot emulator as the conformance suite sees it.

use async_trait::async_trait;
use crm_sync::connection::Connection;
use crm_sync::domain::CrmType;
use crm_sync::store::EntityKind;

use super::{EmulatedAppointment, EmulatedContact, EmulatedCrm, EmulatedLead};
use crate::emulator::Control;
use crate::emulator::hubspot::{HubSpotEmulator, parse_time};
use crate::harness::connection;

pub const TOKEN: &str = "hubspot-conformance-token-5b1f";

pub struct HubSpotUnderTest {
    pub emulator: HubSpotEmulator,
}

/// Starts a fresh HubSpot emulator for one test.
pub async fn start() -> Box<dyn EmulatedCrm> {
    let emulator = HubSpotEmulator::start(&[TOKEN])
        .await
        .expect("emulator starts");
    Box::new(HubSpotUnderTest { emulator })
}

#[async_trait]
impl EmulatedCrm for HubSpotUnderTest {
    fn crm_type(&self) -> CrmType {
        CrmType::Hubspot
    }

    fn connection(&self) -> Connection {
        connection(
            CrmType::Hubspot,
            self.emulator.base_url(),
            &[("accessToken", TOKEN)],
        )
    }

    fn connection_with_bad_credentials(&self) -> Connection {
        connection(
            CrmType::Hubspot,
            self.emulator.base_url(),
            &[("accessToken", "revoked-token")],
        )
    }

    fn control(&self) -> &Control {
        &self.emulator.server.control
    }

    fn keep_limit(
        &self,
        requests: u32,
        window: std::time::Duration,
        search: (u32, std::time::Duration),
    ) -> Option<serde_json::Value> {
        let mut state = self.emulator.state.lock().unwrap();
        state.ten_secondly = crate::emulator::SlidingWindow::new(requests, window);
        state.search_secondly = crate::emulator::SlidingWindow::new(search.0, search.1);
        Some(super::rate_budget_setting(requests, window, Some(search)))
    }

    fn lift_request_budget(&self) {
        self.emulator.state.lock().unwrap().lift_rate_limits();
    }

    fn contacts(&self) -> Vec<EmulatedContact> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("contacts")
            .into_iter()
            .map(|c| EmulatedContact {
                first_name: c.prop("firstname").map(str::to_string),
                last_name: c.prop("lastname").map(str::to_string),
                email: c.prop("email").map(str::to_string),
                phones: ["phone", "mobilephone"]
                    .iter()
                    .filter_map(|p| c.prop(p))
                    .map(str::to_string)
                    .collect(),
                id: c.id,
            })
            .collect()
    }

    fn appointments(&self) -> Vec<EmulatedAppointment> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("meetings")
            .into_iter()
            .map(|m| EmulatedAppointment {
                contact_ids: m.associated("contacts"),
                title: m.prop("hs_meeting_title").unwrap_or_default().to_string(),
                start: m
                    .prop("hs_meeting_start_time")
                    .and_then(parse_time)
                    .expect("start time"),
                end: m
                    .prop("hs_meeting_end_time")
                    .and_then(parse_time)
                    .expect("end time"),
                cancelled: m.prop("hs_meeting_outcome") == Some("CANCELED"),
                id: m.id,
            })
            .collect()
    }

    fn leads(&self) -> Vec<EmulatedLead> {
        let state = self.emulator.state.lock().unwrap();
        state
            .all("leads")
            .into_iter()
            .map(|l| EmulatedLead {
                contact_ids: l.associated("contacts"),
                title: l.prop("hs_lead_name").unwrap_or_default().to_string(),
                id: l.id,
            })
            .collect()
    }

    fn create_route(&self, entity: EntityKind) -> &'static str {
        match entity {
            EntityKind::Customer => "POST /crm/v3/objects/contacts$",
            EntityKind::Lead => "POST /crm/v3/objects/leads$",
            EntityKind::Appointment => "POST /crm/v3/objects/meetings$",
        }
    }

    fn custom_contact_field(&self) -> &'static str {
        "booking_city"
    }

    fn add_contact(
        &self,
        first_name: &str,
        last_name: &str,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> String {
        let mut props = vec![("firstname", first_name), ("lastname", last_name)];
        props.extend(email.map(|e| ("email", e)));
        props.extend(phone.map(|p| ("phone", p)));
        self.emulator
            .state
            .lock()
            .unwrap()
            .insert("contacts", &props)
    }
}
