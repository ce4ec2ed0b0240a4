//! The Pipedrive emulator as the conformance suite sees it.

use async_trait::async_trait;
use crm_sync::connection::Connection;
use crm_sync::crm::pipedrive::CANCELLED_PREFIX;
use crm_sync::domain::CrmType;
use crm_sync::store::EntityKind;

use super::{EmulatedAppointment, EmulatedContact, EmulatedCrm, EmulatedLead};
use crate::emulator::Control;
use crate::emulator::pipedrive::PipedriveEmulator;
use crate::harness::connection;

pub const TOKEN: &str = "pipedrive-conformance-token-93c2";

pub struct PipedriveUnderTest {
    pub emulator: PipedriveEmulator,
}

/// Starts a fresh Pipedrive emulator for one test.
pub async fn start() -> Box<dyn EmulatedCrm> {
    let emulator = PipedriveEmulator::start(&[TOKEN])
        .await
        .expect("emulator starts");
    Box::new(PipedriveUnderTest { emulator })
}

impl PipedriveUnderTest {
    fn connection_with(&self, token: &str) -> Connection {
        connection(
            CrmType::Pipedrive,
            self.emulator.base_url(),
            &[("apiToken", token)],
        )
    }
}

#[async_trait]
impl EmulatedCrm for PipedriveUnderTest {
    fn crm_type(&self) -> CrmType {
        CrmType::Pipedrive
    }

    fn connection(&self) -> Connection {
        self.connection_with(TOKEN)
    }

    fn connection_with_bad_credentials(&self) -> Connection {
        self.connection_with("regenerated-token")
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
        state.burst = crate::emulator::SlidingWindow::new(requests, window);
        state.search_burst = crate::emulator::SlidingWindow::new(search.0, search.1);
        Some(super::rate_budget_setting(requests, window, Some(search)))
    }

    fn lift_request_budget(&self) {
        self.emulator.state.lock().unwrap().lift_rate_limits();
    }

    fn contacts(&self) -> Vec<EmulatedContact> {
        let state = self.emulator.state.lock().unwrap();
        state
            .live_persons()
            .map(|p| EmulatedContact {
                id: p.id.to_string(),
                first_name: p.first_name().map(str::to_string),
                last_name: p.last_name().map(str::to_string),
                email: p.primary_email().map(str::to_string),
                phones: p.phones.iter().map(|e| e.value.clone()).collect(),
            })
            .collect()
    }

    fn appointments(&self) -> Vec<EmulatedAppointment> {
        let state = self.emulator.state.lock().unwrap();
        state
            .live_activities()
            .map(|a| EmulatedAppointment {
                id: a.id.to_string(),
                contact_ids: a.person_id.iter().map(u64::to_string).collect(),
                title: a.subject.clone(),
                start: a.start().expect("due date and time"),
                end: a.end().expect("duration"),
                // What the adapter writes for a cancel: closed, the slot freed, and said so.
                cancelled: a.done && !a.busy && a.subject.starts_with(CANCELLED_PREFIX),
            })
            .collect()
    }

    fn leads(&self) -> Vec<EmulatedLead> {
        let state = self.emulator.state.lock().unwrap();
        state
            .leads
            .iter()
            .map(|l| EmulatedLead {
                id: l.id.clone(),
                contact_ids: l.person_id.iter().map(u64::to_string).collect(),
                title: l.title.clone(),
            })
            .collect()
    }

    fn create_route(&self, entity: EntityKind) -> &'static str {
        match entity {
            EntityKind::Customer => "POST /api/v2/persons$",
            EntityKind::Lead => "POST /api/v1/leads$",
            EntityKind::Appointment => "POST /api/v2/activities$",
        }
    }

    fn custom_contact_field(&self) -> &'static str {
        "5f1a7c3e9b2d4a6f8e0c1b3d5a7f9e2c4b6d8a0e"
    }

    fn add_contact(
        &self,
        first_name: &str,
        last_name: &str,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> String {
        let name = format!("{first_name} {last_name}");
        self.emulator
            .state
            .lock()
            .unwrap()
            .insert_person(name.trim(), email, phone)
            .to_string()
    }
}
