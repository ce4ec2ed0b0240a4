//! The `CrmAdapter` port, one module per CRM, and the upsert logic every adapter shares.

pub mod dynamics;
pub mod freshsales;
pub mod http;
pub mod hubspot;
pub mod oauth;
pub mod pipedrive;
pub mod salesforce;
pub mod sugarcrm;
pub mod zoho;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use std::sync::Arc;

use crate::connection::{Connection, ConnectionSettings};
use crate::domain::{Appointment, CrmType, Customer, E164Phone, Lead};
use crate::error::{Error, Result};
use crate::store::{ConnectionStore, SyncRecordStore};
pub use http::CrmHttp;

/// How a contact is looked up.
#[derive(Debug, Clone, PartialEq)]
pub enum ContactLookup {
    Id(String),
    Email(crate::domain::Email),
    Phone(E164Phone),
}

/// A contact as the CRM holds it, in our vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrmContact {
    pub crm_id: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    /// Every phone number on the record, as the CRM stores them (not necessarily E.164).
    pub phones: Vec<String>,
    pub address: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip_code: Option<String>,
    pub country: Option<String>,
}

/// What the CRM answered about the account behind a connection.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountInfo {
    /// A human-readable name of the account (portal id, org, company domain).
    pub account: String,
    /// What works but needs the account admin's attention (a missing stamp field).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    /// An appointment written as cancelled (the caller's answer; CRMs are told `Updated`).
    Cancelled,
}

/// A record crm-sync may have created before, looked up by the stamp it was created with.
#[derive(Debug, Clone, Copy)]
pub enum StampedRecord<'a> {
    Contact,
    Lead {
        contact_id: Option<&'a str>,
    },
    /// A meeting of `contact_id`; CRMs that cannot stamp one match it by contact, start and title.
    Appointment {
        appointment: &'a Appointment,
        contact_id: &'a str,
    },
}

/// How one write of a sync runs: the CRM id synced before, the stamp a create carries, and
/// whether an earlier attempt may have created the record without our hearing of it.
#[derive(Debug, Clone, PartialEq)]
pub struct WritePlan {
    pub known_id: Option<String>,
    /// Our source key for the record (the booking's `externalId`, else the sync id).
    pub stamp: String,
    /// The last attempt's outcome is unknown: look for the stamp before creating.
    pub reconcile: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upserted {
    pub crm_id: String,
    pub outcome: Outcome,
}

/// One CRM's API, spoken in our model. Adapters only map; the upsert logic lives here.
#[async_trait]
pub trait CrmAdapter: Send + Sync {
    fn crm_type(&self) -> CrmType;
    /// A cheap authenticated call that proves the credentials work.
    async fn test_connection(&self) -> Result<AccountInfo>;
    /// Every contact that matches; an unknown id gives an empty list.
    async fn find_contacts(&self, lookup: &ContactLookup) -> Result<Vec<CrmContact>>;
    /// Creates the contact carrying `stamp` where this CRM can hold it.
    async fn create_contact(&self, customer: &Customer, stamp: &str) -> Result<String>;
    async fn update_contact(&self, crm_id: &str, customer: &Customer) -> Result<()>;
    /// Whether this CRM's lead must be attached to a contact (then one is upserted first).
    fn lead_needs_contact(&self) -> bool;
    /// An existing lead for this person, if the CRM can tell.
    async fn find_lead(&self, lead: &Lead, contact_id: Option<&str>) -> Result<Option<String>>;
    async fn create_lead(
        &self,
        lead: &Lead,
        contact_id: Option<&str>,
        stamp: &str,
    ) -> Result<String>;
    async fn update_lead(&self, crm_id: &str, lead: &Lead, contact_id: Option<&str>) -> Result<()>;
    async fn create_appointment(
        &self,
        appointment: &Appointment,
        contact_id: &str,
        stamp: &str,
    ) -> Result<String>;
    /// The record created with `stamp`, if the CRM holds one: after a create whose answer was
    /// lost, the next attempt adopts it instead of creating another.
    async fn find_stamped(&self, stamp: &str, record: StampedRecord<'_>) -> Result<Option<String>>;
    /// Why this CRM keeps our `field` of `entity` (`contact`, `lead`, `appointment`) nowhere with
    /// this connection's settings; `None` when it is stored (a standard or mapped field).
    fn not_stored_reason(&self, _entity: &str, _field: &str) -> Option<String> {
        None
    }
    /// Puts what the lead's fields cannot hold (`lead_note`: its notes and source) on the lead
    /// as a note of the CRM's own, unless the lead already has a note with this text. CRMs whose
    /// lead has a description field write it there instead (`lead_description`) and keep this.
    async fn note_lead(
        &self,
        _lead_id: &str,
        _contact_id: Option<&str>,
        _lead: &Lead,
    ) -> Result<()> {
        Ok(())
    }
    /// Moves, renames or cancels an existing appointment (`NotFound` if it was deleted). CRMs
    /// that keep the stamp in a text the update rewrites (a note) write it again.
    async fn update_appointment(
        &self,
        crm_id: &str,
        appointment: &Appointment,
        contact_id: &str,
        stamp: &str,
    ) -> Result<()>;
    /// How many contacts one bulk write of this CRM takes (its documented batch size); 0 when
    /// it has none, and the scheduled sync writes contacts one by one.
    fn bulk_contact_limit(&self) -> usize {
        0
    }
    /// Creates or updates `contacts` (each with an email, at most `bulk_contact_limit()`,
    /// no two with one email) matched by email, in one bulk write of the CRM's: a resend after
    /// a lost answer finds the contacts it created. Answers each contact's outcome in order; a
    /// contact the CRM refused answers its own error, and the caller syncs it alone. An error of
    /// the whole write is the write's.
    async fn upsert_contacts(
        &self,
        _contacts: &[BulkContact<'_>],
    ) -> Result<Vec<Result<Upserted>>> {
        Err(Error::CrmRejected {
            message: format!("{} has no bulk contact write", self.crm_type()),
        })
    }
}

/// A contact of a bulk write, with what its own sync would know.
#[derive(Debug, Clone, Copy)]
pub struct BulkContact<'a> {
    pub customer: &'a Customer,
    pub plan: &'a WritePlan,
}

/// What adapters share, built once per cold start: the HTTP client, the stores an OAuth
/// adapter writes refreshed tokens to (connections) and takes its refresh lease from (records),
/// and the CRM accounts' rate budgets.
#[derive(Clone)]
pub struct AdapterContext {
    pub http: CrmHttp,
    pub connections: Arc<dyn ConnectionStore>,
    pub records: Arc<dyn SyncRecordStore>,
    pub budgets: crate::budget::Budgets,
}

/// Builds the adapter a connection names; its requests take from the account's rate budget.
pub fn adapter_for(connection: &Connection, ctx: &AdapterContext) -> Result<Box<dyn CrmAdapter>> {
    let budget = ctx.budgets.for_connection(connection)?;
    let ctx = &AdapterContext {
        http: ctx.http.clone().with_budget(budget),
        ..ctx.clone()
    };
    match connection.crm_type {
        CrmType::Hubspot => Ok(Box::new(hubspot::HubSpotAdapter::new(
            connection,
            ctx.http.clone(),
        )?)),
        CrmType::Freshsales => Ok(Box::new(freshsales::FreshsalesAdapter::new(
            connection,
            ctx.http.clone(),
        )?)),
        CrmType::Pipedrive => Ok(Box::new(pipedrive::PipedriveAdapter::new(
            connection,
            ctx.http.clone(),
        )?)),
        CrmType::Salesforce => Ok(Box::new(salesforce::SalesforceAdapter::new(
            connection, ctx,
        )?)),
        CrmType::Zoho => Ok(Box::new(zoho::ZohoAdapter::new(connection, ctx)?)),
        CrmType::Dynamics => Ok(Box::new(dynamics::DynamicsAdapter::new(connection, ctx)?)),
        CrmType::Sugarcrm => Ok(Box::new(sugarcrm::SugarCrmAdapter::new(connection, ctx)?)),
    }
}

/// Finds the contact by known id, then email, then phone, and updates it only if something
/// differs; creates it when nothing matches. Several matches change nothing: `Ambiguous`.
pub async fn upsert_contact(
    adapter: &dyn CrmAdapter,
    customer: &Customer,
    plan: &WritePlan,
    default_country: &str,
) -> Result<Upserted> {
    let adopted = match plan.known_id {
        None if plan.reconcile => {
            adapter
                .find_stamped(&plan.stamp, StampedRecord::Contact)
                .await?
        }
        _ => None,
    };
    let existing = match plan.known_id.as_deref().or(adopted.as_deref()) {
        Some(id) => adapter
            .find_contacts(&ContactLookup::Id(id.to_string()))
            .await?
            .into_iter()
            .next(),
        None => None,
    };
    let existing = match existing {
        Some(contact) => Some(contact),
        None => find_matching_contact(adapter, customer, default_country).await?,
    };
    let adopted = adopted.is_some();
    let stored = |field: &str| adapter.not_stored_reason("contact", field).is_none();
    match existing {
        Some(contact) if contact_matches(&contact, customer, default_country, stored) => {
            Ok(Upserted {
                crm_id: contact.crm_id,
                outcome: adopted_or(adopted, Outcome::Unchanged),
            })
        }
        Some(contact) => {
            adapter.update_contact(&contact.crm_id, customer).await?;
            Ok(Upserted {
                crm_id: contact.crm_id,
                outcome: adopted_or(adopted, Outcome::Updated),
            })
        }
        None => match adapter.create_contact(customer, &plan.stamp).await {
            Ok(crm_id) => Ok(Upserted {
                crm_id,
                outcome: Outcome::Created,
            }),
            // The CRM's search lagged behind a recent create; it names the record it has.
            Err(Error::CrmDuplicate {
                existing_id: Some(crm_id),
                ..
            }) => {
                adapter.update_contact(&crm_id, customer).await?;
                Ok(Upserted {
                    crm_id,
                    outcome: Outcome::Updated,
                })
            }
            Err(e) => Err(e),
        },
    }
}

async fn find_matching_contact(
    adapter: &dyn CrmAdapter,
    customer: &Customer,
    default_country: &str,
) -> Result<Option<CrmContact>> {
    if let Some(email) = &customer.email {
        let found = adapter
            .find_contacts(&ContactLookup::Email(email.clone()))
            .await?;
        let found: Vec<_> = found
            .into_iter()
            .filter(|c| same_email(c.email.as_deref(), email.as_str()))
            .collect();
        if let Some(one) = single_or_ambiguous(found, "email")? {
            return Ok(Some(one));
        }
    }
    if let Some(phone) = &customer.phone {
        let found = adapter
            .find_contacts(&ContactLookup::Phone(phone.clone()))
            .await?;
        let found: Vec<_> = found
            .into_iter()
            .filter(|c| has_phone(c, phone, default_country))
            .filter(|c| not_someone_else(customer.email.as_ref(), c.email.as_deref()))
            .collect();
        return single_or_ambiguous(found, "phone");
    }
    Ok(None)
}

fn single_or_ambiguous(mut found: Vec<CrmContact>, by: &str) -> Result<Option<CrmContact>> {
    match found.len() {
        0 | 1 => Ok(found.pop()),
        n => Err(Error::Ambiguous {
            message: format!("{n} CRM contacts match this {by}; nothing was changed"),
            ids: found.into_iter().map(|c| c.crm_id).collect(),
        }),
    }
}

/// A record found by phone is our person unless it has another email: someone else on a
/// shared (household, office) phone.
pub(crate) fn not_someone_else(ours: Option<&crate::domain::Email>, theirs: Option<&str>) -> bool {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => same_email(Some(theirs), ours.as_str()),
        _ => true,
    }
}

/// A `test-connection` warning when the CRM refuses the lookup a stamp is found by (the field is
/// missing); other errors are the connection's own and pass on.
pub(crate) fn stamp_warning<T>(
    lookup: Result<T>,
    warning: impl FnOnce(String) -> String,
) -> Result<Option<String>> {
    match lookup {
        Ok(_) => Ok(None),
        Err(Error::CrmRejected { message }) => Ok(Some(warning(message))),
        Err(e) => Err(e),
    }
}

/// The value of a text field of a JSON record, trimmed; `None` when absent or blank.
pub(crate) fn text(value: &Value, field: &str) -> Option<String> {
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

pub(crate) fn same_email(theirs: Option<&str>, ours: &str) -> bool {
    theirs.is_some_and(|t| t.trim().eq_ignore_ascii_case(ours))
}

pub(crate) fn has_phone(contact: &CrmContact, phone: &E164Phone, default_country: &str) -> bool {
    contact
        .phones
        .iter()
        .any(|raw| E164Phone::parse(raw, default_country).is_ok_and(|p| &p == phone))
}

/// Whether the CRM already holds every value we would send (fields we lack, and fields the CRM
/// keeps nowhere, are not compared: a change only to those stores nothing).
fn contact_matches(
    contact: &CrmContact,
    customer: &Customer,
    default_country: &str,
    stored: impl Fn(&str) -> bool,
) -> bool {
    let same = |field: &str, ours: &Option<String>, theirs: &Option<String>| match ours {
        None => true,
        Some(_) if !stored(field) => true,
        Some(v) => theirs.as_deref().map(str::trim) == Some(v.as_str()),
    };
    same("firstName", &customer.first_name, &contact.first_name)
        && same("lastName", &customer.last_name, &contact.last_name)
        && customer
            .email
            .as_ref()
            .is_none_or(|e| same_email(contact.email.as_deref(), e.as_str()))
        && customer
            .phone
            .as_ref()
            .is_none_or(|p| has_phone(contact, p, default_country))
        && same("address", &customer.address, &contact.address)
        && same("city", &customer.city, &contact.city)
        && same("state", &customer.state, &contact.state)
        && same("zipCode", &customer.zip_code, &contact.zip_code)
        && same("country", &customer.country, &contact.country)
}

/// Updates the lead we synced before, or one the CRM already has for this person, or creates one.
pub async fn upsert_lead(
    adapter: &dyn CrmAdapter,
    lead: &Lead,
    plan: &WritePlan,
    contact_id: Option<&str>,
) -> Result<Upserted> {
    let adopted = match plan.known_id {
        None if plan.reconcile => {
            adapter
                .find_stamped(&plan.stamp, StampedRecord::Lead { contact_id })
                .await?
        }
        _ => None,
    };
    let upserted = write_lead(adapter, lead, plan, contact_id, adopted).await?;
    adapter
        .note_lead(&upserted.crm_id, contact_id, lead)
        .await?;
    Ok(upserted)
}

async fn write_lead(
    adapter: &dyn CrmAdapter,
    lead: &Lead,
    plan: &WritePlan,
    contact_id: Option<&str>,
    adopted: Option<String>,
) -> Result<Upserted> {
    if let Some(id) = plan.known_id.as_deref().or(adopted.as_deref()) {
        match adapter.update_lead(id, lead, contact_id).await {
            Ok(()) => {
                return Ok(Upserted {
                    crm_id: id.to_string(),
                    outcome: adopted_or(adopted.is_some(), Outcome::Updated),
                });
            }
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(id) = adapter.find_lead(lead, contact_id).await? {
        adapter.update_lead(&id, lead, contact_id).await?;
        return Ok(Upserted {
            crm_id: id,
            outcome: Outcome::Updated,
        });
    }
    let crm_id = adapter.create_lead(lead, contact_id, &plan.stamp).await?;
    Ok(Upserted {
        crm_id,
        outcome: Outcome::Created,
    })
}

/// One of our fields the CRM keeps nowhere, as the sync answers list it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotStored {
    /// The request field, e.g. `customer.city`.
    pub field: String,
    pub reason: String,
}

/// The fields present in `fields` (ours, as `customer_fields` names them) that the CRM keeps
/// nowhere for `entity`, named from the request's `prefix` (`customer`, `lead`).
pub fn not_stored(
    adapter: &dyn CrmAdapter,
    entity: &str,
    prefix: &str,
    fields: &[(&'static str, String)],
) -> Vec<NotStored> {
    fields
        .iter()
        .filter_map(|(field, _)| {
            adapter
                .not_stored_reason(entity, field)
                .map(|reason| NotStored {
                    field: format!("{prefix}.{field}"),
                    reason,
                })
        })
        .collect()
}

/// Updates the appointment we synced before (a reschedule or cancel), or creates it.
pub async fn upsert_appointment(
    adapter: &dyn CrmAdapter,
    appointment: &Appointment,
    plan: &WritePlan,
    contact_id: &str,
) -> Result<Upserted> {
    let adopted = match plan.known_id {
        None if plan.reconcile => {
            let record = StampedRecord::Appointment {
                appointment,
                contact_id,
            };
            adapter.find_stamped(&plan.stamp, record).await?
        }
        _ => None,
    };
    if let Some(id) = plan.known_id.as_deref().or(adopted.as_deref()) {
        match adapter
            .update_appointment(id, appointment, contact_id, &plan.stamp)
            .await
        {
            Ok(()) => {
                return Ok(Upserted {
                    crm_id: id.to_string(),
                    outcome: adopted_or(adopted.is_some(), Outcome::Updated),
                });
            }
            // Deleted in the CRM by a person: book it again rather than fail forever.
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let crm_id = adapter
        .create_appointment(appointment, contact_id, &plan.stamp)
        .await?;
    Ok(Upserted {
        crm_id,
        outcome: Outcome::Created,
    })
}

/// A record adopted after a lost answer was created by this sync: the caller hears `created`.
fn adopted_or(adopted: bool, outcome: Outcome) -> Outcome {
    if adopted { Outcome::Created } else { outcome }
}

/// The CRM field a connection stamps our key into: the setting `key`, else `default`; an empty
/// setting turns stamping off.
pub fn stamp_field(settings: &ConnectionSettings, key: &str, default: &str) -> Option<String> {
    match settings.extra.get(key) {
        Some(Value::String(name)) if name.trim().is_empty() => None,
        Some(Value::String(name)) => Some(name.trim().to_string()),
        Some(Value::Null) => None,
        _ => Some(default.to_string()),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a value in a URL path or
/// query (stamps are caller-given booking ids).
pub fn encode_path_segment(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The stand-in last name of a new record for CRMs that require one: the email or phone a
/// person would look it up by.
pub(crate) fn last_name_stand_in(person: &Customer) -> Option<String> {
    person
        .email
        .as_ref()
        .map(|e| e.as_str().to_string())
        .or_else(|| person.phone.as_ref().map(|p| p.as_str().to_string()))
}

/// Our customer fields by our names, for adapters whose CRM takes a flat property map.
pub fn customer_fields(customer: &Customer) -> Vec<(&'static str, String)> {
    let fields = [
        ("firstName", customer.first_name.clone()),
        ("lastName", customer.last_name.clone()),
        (
            "email",
            customer.email.as_ref().map(|e| e.as_str().to_string()),
        ),
        (
            "phone",
            customer.phone.as_ref().map(|p| p.as_str().to_string()),
        ),
        ("address", customer.address.clone()),
        ("city", customer.city.clone()),
        ("state", customer.state.clone()),
        ("zipCode", customer.zip_code.clone()),
        ("country", customer.country.clone()),
    ];
    fields
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

/// Turns `(our field, value)` pairs into the CRM's property map: the CRM's default name for each
/// field from `defaults`, unless the connection's `fieldMappings.<entity>` names another.
/// Fields with no CRM name are left out.
pub fn map_properties(
    entity: &str,
    fields: &[(&'static str, String)],
    defaults: &[(&'static str, &'static str)],
    settings: &ConnectionSettings,
) -> Map<String, Value> {
    let overrides = settings.field_mappings.get(entity);
    fields
        .iter()
        .filter_map(|(ours, value)| {
            let crm_name = overrides
                .and_then(|m| m.get(*ours).map(String::as_str))
                .or_else(|| defaults.iter().find(|(o, _)| o == ours).map(|(_, c)| *c))?;
            Some((crm_name.to_string(), Value::String(value.clone())))
        })
        .collect()
}

/// The CRM name a property is read back under, honouring the same overrides as `map_properties`.
pub fn property_name<'a>(
    entity: &str,
    ours: &str,
    defaults: &'a [(&'static str, &'static str)],
    settings: &'a ConnectionSettings,
) -> Option<&'a str> {
    settings
        .field_mappings
        .get(entity)
        .and_then(|m| m.get(ours).map(String::as_str))
        .or_else(|| defaults.iter().find(|(o, _)| *o == ours).map(|(_, c)| *c))
}

/// `Source: …` when neither the CRM's `defaults` nor the connection's mappings give the lead's
/// source a field of its own.
fn source_line(
    lead: &Lead,
    defaults: &[(&'static str, &'static str)],
    settings: &ConnectionSettings,
) -> Option<String> {
    let source = lead.source.as_deref()?;
    match property_name("lead", "source", defaults, settings) {
        Some(_) => None,
        None => Some(format!("Source: {source}")),
    }
}

fn paragraphs(parts: [Option<String>; 2]) -> Option<String> {
    let parts: Vec<String> = parts.into_iter().flatten().collect();
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

/// The lead's description for CRMs that hold one: its notes, then its source where the source
/// has no field of its own.
pub fn lead_description(
    lead: &Lead,
    defaults: &[(&'static str, &'static str)],
    settings: &ConnectionSettings,
) -> Option<String> {
    paragraphs([lead.notes.clone(), source_line(lead, defaults, settings)])
}

/// The note text for CRMs whose lead has no description: the notes and the source, each where
/// no field (default or mapped) takes it. `None` when the fields took everything.
pub fn lead_note(
    lead: &Lead,
    defaults: &[(&'static str, &'static str)],
    settings: &ConnectionSettings,
) -> Option<String> {
    let notes = match property_name("lead", "notes", defaults, settings) {
        Some(_) => None,
        None => lead.notes.clone(),
    };
    paragraphs([notes, source_line(lead, defaults, settings)])
}

/// `Booked for 2025-07-01 10:00 PDT (America/Los_Angeles)`: CRMs show times in each viewer's
/// zone, so the zone the caller booked in is kept in words for people.
pub fn booked_line(appointment: &Appointment) -> String {
    let start = appointment.start_local();
    format!(
        "Booked for {} {} ({})",
        start.format("%Y-%m-%d %H:%M"),
        start.format("%Z"),
        appointment.timezone.name()
    )
}

/// The meeting's description for CRMs whose meeting has no time zone field: its notes, then
/// `booked_line`.
pub fn appointment_description(appointment: &Appointment) -> String {
    match &appointment.notes {
        Some(notes) => format!("{notes}\n\n{}", booked_line(appointment)),
        None => booked_line(appointment),
    }
}
