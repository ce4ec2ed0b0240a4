//! HubSpot CRM v3: contacts, meetings associated with the contact, and the leads object.
//!
//! Auth is a private-app token (`Authorization: Bearer`). Paths, properties and association
//! type ids follow developers.hubspot.com (CRM objects v3, search, meetings, leads).

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::http::{CrmHttp, CrmResponse, Idempotency, status_error};
use super::{
    AccountInfo, BulkContact, ContactLookup, CrmAdapter, CrmContact, Outcome, StampedRecord,
    Upserted, booked_line, customer_fields, encode_path_segment, lead_note, map_properties,
    property_name, stamp_field, text,
};
use crate::connection::{Connection, ConnectionSettings, SecretString};
use crate::domain::{Appointment, AppointmentStatus, CrmType, Customer, Lead};
use crate::error::{Error, Result};

pub const DEFAULT_BASE_URL: &str = "https://api.hubapi.com";
/// HUBSPOT_DEFINED association type ids (directional).
pub const MEETING_TO_CONTACT: u32 = 200;
pub const LEAD_TO_PRIMARY_CONTACT: u32 = 578;
pub const NOTE_TO_CONTACT: u32 = 202;

/// Our customer field -> HubSpot contact property.
const CONTACT_PROPERTIES: &[(&str, &str)] = &[
    ("firstName", "firstname"),
    ("lastName", "lastname"),
    ("email", "email"),
    ("phone", "phone"),
    ("address", "address"),
    ("city", "city"),
    ("state", "state"),
    ("zipCode", "zip"),
    ("country", "country"),
];

/// Inputs one batch call takes: "Batch operations are limited to 100 records at a time"
/// (developers.hubspot.com, CRM contacts guide, Limits).
pub const BATCH_LIMIT: usize = 100;

/// The custom property our stamp goes in unless the connection's `stampProperty` names another.
pub const DEFAULT_STAMP_PROPERTY: &str = "crm_sync_id";

pub struct HubSpotAdapter {
    http: CrmHttp,
    base_url: String,
    token: SecretString,
    settings: ConnectionSettings,
    /// A unique-value property on contacts, leads and meetings; `None` when the connection
    /// turns stamping off (`"stampProperty": ""`).
    stamp_property: Option<String>,
}

impl HubSpotAdapter {
    pub fn new(connection: &Connection, http: CrmHttp) -> Result<Self> {
        Ok(HubSpotAdapter {
            http,
            base_url: connection
                .settings
                .base_url
                .as_deref()
                .unwrap_or(DEFAULT_BASE_URL)
                .trim_end_matches('/')
                .into(),
            token: connection
                .credential_or_alias("accessToken", &["apiKey"])?
                .clone(),
            settings: connection.settings.clone(),
            stamp_property: stamp_field(
                &connection.settings,
                "stampProperty",
                DEFAULT_STAMP_PROPERTY,
            ),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<CrmResponse> {
        let url = format!("{}{path}", self.base_url);
        let response = self
            .http
            .send(idempotency, |client| {
                let request = client
                    .request(method.clone(), &url)
                    .bearer_auth(self.token.expose());
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        if response.is_success() {
            Ok(response)
        } else {
            Err(hubspot_error(&response))
        }
    }

    fn contact_property_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = CONTACT_PROPERTIES
            .iter()
            .filter_map(|(ours, _)| {
                property_name("contact", ours, CONTACT_PROPERTIES, &self.settings)
            })
            .collect();
        names.push("mobilephone");
        names
    }

    fn contact_properties(&self, customer: &Customer) -> Map<String, Value> {
        map_properties(
            "contact",
            &customer_fields(customer),
            CONTACT_PROPERTIES,
            &self.settings,
        )
    }

    fn to_contact(&self, object: &Value) -> Option<CrmContact> {
        let props = object.get("properties")?;
        let read = |ours: &str| {
            property_name("contact", ours, CONTACT_PROPERTIES, &self.settings)
                .and_then(|name| props.get(name))
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let phones = ["phone", "mobilephone"]
            .iter()
            .filter_map(|name| {
                props
                    .get(*name)
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
            })
            .map(str::to_string)
            .collect();
        Some(CrmContact {
            crm_id: object.get("id")?.as_str()?.to_string(),
            first_name: read("firstName"),
            last_name: read("lastName"),
            email: read("email"),
            phones,
            address: read("address"),
            city: read("city"),
            state: read("state"),
            zip_code: read("zipCode"),
            country: read("country"),
        })
    }

    /// One object read by id or by a unique property; `None` when HubSpot answers 404.
    async fn read(&self, path: &str) -> Result<Option<Value>> {
        match self
            .call(Method::GET, path, None, Idempotency::Idempotent)
            .await
        {
            Ok(response) => Ok(Some(response.body)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn search(
        &self,
        object_type: &str,
        filter_groups: Value,
        properties: Vec<&str>,
    ) -> Result<Vec<Value>> {
        let body = json!({"filterGroups": filter_groups, "properties": properties, "limit": 10});
        let path = format!("/crm/v3/objects/{object_type}/search");
        let response = self
            .call(Method::POST, &path, Some(&body), Idempotency::Idempotent)
            .await?;
        Ok(response
            .body
            .get("results")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    async fn create(&self, object_type: &str, mut body: Value, stamp: &str) -> Result<String> {
        if let Some(property) = &self.stamp_property {
            body["properties"][property] = stamp.into();
        }
        let path = format!("/crm/v3/objects/{object_type}");
        let response = self
            .call(Method::POST, &path, Some(&body), Idempotency::NotIdempotent)
            .await?;
        object_id(&response)
    }

    /// The contact's note whose text is `note`, if it has one.
    async fn contact_note_with(&self, contact_id: &str, note: &str) -> Result<Option<String>> {
        let path = format!(
            "/crm/v4/objects/contacts/{}/associations/notes",
            path_segment(contact_id)?
        );
        let response = self
            .call(Method::GET, &path, None, Idempotency::Idempotent)
            .await?;
        let inputs: Vec<Value> = response.body["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| match &r["toObjectId"] {
                Value::Number(n) => Some(n.to_string()),
                Value::String(s) => Some(s.clone()),
                _ => None,
            })
            .map(|id| json!({ "id": id }))
            .collect();
        if inputs.is_empty() {
            return Ok(None);
        }
        let body = json!({"properties": ["hs_note_body"], "inputs": inputs});
        let response = self
            .call(
                Method::POST,
                "/crm/v3/objects/notes/batch/read",
                Some(&body),
                Idempotency::Idempotent,
            )
            .await?;
        Ok(response.body["results"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["properties"]["hs_note_body"].as_str().map(str::trim) == Some(note.trim()))
            .and_then(|n| n["id"].as_str())
            .map(str::to_string))
    }

    async fn update(
        &self,
        object_type: &str,
        id: &str,
        properties: Map<String, Value>,
    ) -> Result<()> {
        let path = format!("/crm/v3/objects/{object_type}/{}", path_segment(id)?);
        let body = json!({ "properties": properties });
        self.call(Method::PATCH, &path, Some(&body), Idempotency::Idempotent)
            .await
            .map(|_| ())
    }

    fn meeting_properties(&self, appointment: &Appointment) -> Map<String, Value> {
        let iso = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let mut props = Map::new();
        props.insert(
            "hs_timestamp".into(),
            iso(appointment.window.start()).into(),
        );
        props.insert("hs_meeting_title".into(), appointment.title.clone().into());
        props.insert(
            "hs_meeting_start_time".into(),
            iso(appointment.window.start()).into(),
        );
        props.insert(
            "hs_meeting_end_time".into(),
            iso(appointment.window.end()).into(),
        );
        let outcome = match appointment.status {
            AppointmentStatus::Scheduled => "SCHEDULED",
            AppointmentStatus::Cancelled => "CANCELED",
        };
        props.insert("hs_meeting_outcome".into(), outcome.into());
        if let Some(notes) = &appointment.notes {
            props.insert("hs_meeting_body".into(), notes.clone().into());
        }
        if let Some(location) = &appointment.location {
            props.insert("hs_meeting_location".into(), location.clone().into());
        }
        // HubSpot shows times in the viewer's zone; the zone it was booked in is kept for people.
        props.insert(
            "hs_internal_meeting_notes".into(),
            booked_line(appointment).into(),
        );
        props
    }

    fn lead_properties(&self, lead: &Lead) -> Map<String, Value> {
        let mut fields: Vec<(&'static str, String)> = vec![("title", lead.title())];
        fields.extend(lead.source.clone().map(|s| ("source", s)));
        fields.extend(lead.notes.clone().map(|n| ("notes", n)));
        // Only the name has a standard property; unmapped source and notes become a note.
        map_properties(
            "lead",
            &fields,
            &[("title", "hs_lead_name")],
            &self.settings,
        )
    }
}

#[async_trait]
impl CrmAdapter for HubSpotAdapter {
    fn crm_type(&self) -> CrmType {
        CrmType::Hubspot
    }

    async fn test_connection(&self) -> Result<AccountInfo> {
        let response = self
            .call(
                Method::GET,
                "/account-info/v3/details",
                None,
                Idempotency::Idempotent,
            )
            .await?;
        let portal = response
            .body
            .get("portalId")
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into());
        let domain = response
            .body
            .get("uiDomain")
            .and_then(Value::as_str)
            .unwrap_or("app.hubspot.com");
        let mut warnings = Vec::new();
        if let Some(property) = &self.stamp_property {
            for object_type in ["contacts", "leads", "meetings"] {
                let path = format!(
                    "/crm/v3/properties/{object_type}/{}",
                    encode_path_segment(property)
                );
                match self
                    .call(Method::GET, &path, None, Idempotency::Idempotent)
                    .await
                {
                    Ok(_) => {}
                    Err(Error::NotFound(_)) => warnings.push(format!(
                        "HubSpot {object_type} have no '{property}' property: create it once as a single-line text property with unique values (or set stampProperty to \"\" to sync without stamps)"
                    )),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(AccountInfo {
            account: format!("HubSpot portal {portal} ({domain})"),
            warnings,
        })
    }

    async fn find_contacts(&self, lookup: &ContactLookup) -> Result<Vec<CrmContact>> {
        let properties = self.contact_property_names();
        let objects = match lookup {
            ContactLookup::Id(id) => {
                let path = format!(
                    "/crm/v3/objects/contacts/{}?properties={}",
                    path_segment(id)?,
                    properties.join(",")
                );
                self.read(&path).await?.into_iter().collect()
            }
            ContactLookup::Email(email) => {
                let name = property_name("contact", "email", CONTACT_PROPERTIES, &self.settings)
                    .unwrap_or("email");
                if name == "email" {
                    // A direct read by email (`idProperty=email`): consistent right after a
                    // create, unlike the search index, and outside the search API's own limit.
                    let path = format!(
                        "/crm/v3/objects/contacts/{}?idProperty=email&properties={}",
                        encode_path_segment(email.as_str()),
                        properties.join(",")
                    );
                    self.read(&path).await?.into_iter().collect()
                } else {
                    let groups = json!([{"filters": [{"propertyName": name, "operator": "EQ", "value": email.as_str()}]}]);
                    self.search("contacts", groups, properties).await?
                }
            }
            ContactLookup::Phone(phone) => {
                // phone/mobilephone hold what was typed; the calculated properties hold digits only.
                // Each may miss, so all four are asked and the adapter's caller compares in E.164.
                let national = phone.national_number();
                let groups = json!([
                    {"filters": [{"propertyName": "phone", "operator": "EQ", "value": phone.as_str()}]},
                    {"filters": [{"propertyName": "mobilephone", "operator": "EQ", "value": phone.as_str()}]},
                    {"filters": [{"propertyName": "hs_searchable_calculated_phone_number", "operator": "EQ", "value": national}]},
                    {"filters": [{"propertyName": "hs_searchable_calculated_mobile_number", "operator": "EQ", "value": national}]},
                ]);
                self.search("contacts", groups, properties).await?
            }
        };
        Ok(objects.iter().filter_map(|o| self.to_contact(o)).collect())
    }

    async fn create_contact(&self, customer: &Customer, stamp: &str) -> Result<String> {
        self.create(
            "contacts",
            json!({ "properties": self.contact_properties(customer) }),
            stamp,
        )
        .await
    }

    async fn update_contact(&self, crm_id: &str, customer: &Customer) -> Result<()> {
        self.update("contacts", crm_id, self.contact_properties(customer))
            .await
    }

    /// Batch upsert by email takes 100 contacts a call, while email is the contacts' own
    /// `email` property (a mapping elsewhere leaves HubSpot nothing unique to upsert by).
    fn bulk_contact_limit(&self) -> usize {
        match property_name("contact", "email", CONTACT_PROPERTIES, &self.settings) {
            Some("email") => BATCH_LIMIT,
            _ => 0,
        }
    }

    /// `POST /crm/v3/objects/contacts/batch/upsert` with `idProperty: "email"`: HubSpot finds
    /// each contact by its (unique) email or creates it, so a resend after a lost answer
    /// updates what the first created. Results are matched back by `objectWriteTraceId` (the
    /// input's index), else by email; `new` tells a created contact. No stamp is written: a
    /// contact is found again by its email, and an existing contact keeps the stamp it has.
    async fn upsert_contacts(&self, contacts: &[BulkContact<'_>]) -> Result<Vec<Result<Upserted>>> {
        let mut at_email = std::collections::HashMap::new();
        let mut inputs = Vec::with_capacity(contacts.len());
        for (index, contact) in contacts.iter().enumerate() {
            let Some(email) = &contact.customer.email else {
                return Err(Error::CrmRejected {
                    message: "a HubSpot batch upsert needs each contact's email".into(),
                });
            };
            at_email.insert(email.as_str().to_string(), index);
            inputs.push(json!({
                "idProperty": "email",
                "id": email.as_str(),
                "objectWriteTraceId": index.to_string(),
                "properties": self.contact_properties(contact.customer),
            }));
        }
        let response = self
            .call(
                Method::POST,
                "/crm/v3/objects/contacts/batch/upsert",
                Some(&json!({ "inputs": inputs })),
                Idempotency::Idempotent,
            )
            .await?;
        let index_of = |item: &Value, email: Option<&str>| {
            text(item, "objectWriteTraceId")
                .and_then(|trace| trace.parse::<usize>().ok())
                .filter(|i| *i < contacts.len())
                .or_else(|| email.and_then(|e| at_email.get(&e.to_ascii_lowercase()).copied()))
        };
        let mut outcomes: Vec<Result<Upserted>> = (0..contacts.len())
            .map(|_| {
                Err(Error::CrmUnavailable(
                    "HubSpot's batch upsert answered nothing for this contact".into(),
                ))
            })
            .collect();
        for result in response.body["results"].as_array().into_iter().flatten() {
            let email = result["properties"]["email"].as_str();
            let (Some(index), Ok(crm_id)) = (index_of(result, email), object_id_of(result)) else {
                continue;
            };
            let outcome = if result["new"].as_bool() == Some(true) {
                Outcome::Created
            } else {
                Outcome::Updated
            };
            outcomes[index] = Ok(Upserted { crm_id, outcome });
        }
        for refusal in response.body["errors"].as_array().into_iter().flatten() {
            let context = &refusal["context"];
            let traces = context["objectWriteTraceId"]
                .as_array()
                .into_iter()
                .flatten();
            let emails = context["ids"].as_array().into_iter().flatten();
            let message = text(refusal, "message").unwrap_or_else(|| "refused".into());
            let error = match text(refusal, "category").as_deref() {
                Some("CONFLICT") => Error::CrmDuplicate {
                    existing_id: existing_id(&message),
                    message: message.clone(),
                },
                Some("OBJECT_NOT_FOUND") => Error::NotFound(message.clone()),
                _ => Error::CrmRejected {
                    message: message.clone(),
                },
            };
            let indexes: Vec<usize> = traces
                .filter_map(|t| t.as_str()?.parse::<usize>().ok())
                .chain(
                    emails.filter_map(|e| at_email.get(&e.as_str()?.to_ascii_lowercase()).copied()),
                )
                .filter(|i| *i < contacts.len())
                .collect();
            for index in indexes {
                if outcomes[index].is_err() {
                    outcomes[index] = Err(error.clone());
                }
            }
        }
        Ok(outcomes)
    }

    fn lead_needs_contact(&self) -> bool {
        true
    }

    async fn find_lead(&self, _lead: &Lead, contact_id: Option<&str>) -> Result<Option<String>> {
        let Some(contact_id) = contact_id else {
            return Ok(None);
        };
        let groups = json!([{"filters": [{"propertyName": "associations.contact", "operator": "EQ", "value": contact_id}]}]);
        let found = self.search("leads", groups, vec!["hs_lead_name"]).await?;
        Ok(found
            .first()
            .and_then(|o| o.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    async fn create_lead(
        &self,
        lead: &Lead,
        contact_id: Option<&str>,
        stamp: &str,
    ) -> Result<String> {
        let contact_id = contact_id.ok_or_else(|| Error::CrmRejected {
            message: "a HubSpot lead must be associated with a contact".into(),
        })?;
        let body = json!({
            "properties": self.lead_properties(lead),
            "associations": [association(contact_id, LEAD_TO_PRIMARY_CONTACT)],
        });
        self.create("leads", body, stamp).await
    }

    async fn update_lead(
        &self,
        crm_id: &str,
        lead: &Lead,
        _contact_id: Option<&str>,
    ) -> Result<()> {
        self.update("leads", crm_id, self.lead_properties(lead))
            .await
    }

    /// A note (the notes object) on the lead's contact, associated with the lead by HubSpot's
    /// default note-to-lead association. A note with the same text on the contact is reused:
    /// after a lost answer, the retry associates it instead of writing it twice.
    async fn note_lead(&self, lead_id: &str, contact_id: Option<&str>, lead: &Lead) -> Result<()> {
        let (Some(note), Some(contact_id)) = (lead_note(lead, &[], &self.settings), contact_id)
        else {
            return Ok(());
        };
        let note_id = match self.contact_note_with(contact_id, &note).await? {
            Some(id) => id,
            None => {
                let body = json!({
                    "properties": {
                        "hs_note_body": note,
                        "hs_timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    },
                    "associations": [association(contact_id, NOTE_TO_CONTACT)],
                });
                let response = self
                    .call(
                        Method::POST,
                        "/crm/v3/objects/notes",
                        Some(&body),
                        Idempotency::NotIdempotent,
                    )
                    .await?;
                object_id(&response)?
            }
        };
        let path = format!(
            "/crm/v4/objects/notes/{}/associations/default/leads/{}",
            path_segment(&note_id)?,
            path_segment(lead_id)?
        );
        self.call(Method::PUT, &path, None, Idempotency::Idempotent)
            .await
            .map(|_| ())
    }

    async fn create_appointment(
        &self,
        appointment: &Appointment,
        contact_id: &str,
        stamp: &str,
    ) -> Result<String> {
        let body = json!({
            "properties": self.meeting_properties(appointment),
            "associations": [association(contact_id, MEETING_TO_CONTACT)],
        });
        self.create("meetings", body, stamp).await
    }

    /// A direct read by the unique stamp property (`idProperty`), not the search index, which
    /// lags behind creates.
    async fn find_stamped(&self, stamp: &str, record: StampedRecord<'_>) -> Result<Option<String>> {
        let Some(property) = &self.stamp_property else {
            return Ok(None);
        };
        let object_type = match record {
            StampedRecord::Contact => "contacts",
            StampedRecord::Lead { .. } => "leads",
            StampedRecord::Appointment { .. } => "meetings",
        };
        let path = format!(
            "/crm/v3/objects/{object_type}/{}?idProperty={}&properties={}",
            encode_path_segment(stamp),
            encode_path_segment(property),
            encode_path_segment(property),
        );
        self.read(&path)
            .await?
            .map(|o| object_id_of(&o))
            .transpose()
    }

    async fn update_appointment(
        &self,
        crm_id: &str,
        appointment: &Appointment,
        _contact_id: &str,
        _stamp: &str,
    ) -> Result<()> {
        self.update("meetings", crm_id, self.meeting_properties(appointment))
            .await
    }
}

fn association(to_id: &str, type_id: u32) -> Value {
    json!({"to": {"id": to_id}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]})
}

/// CRM ids go into paths, so anything but a plain id is refused rather than escaped.
fn path_segment(id: &str) -> Result<&str> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(id)
    } else {
        Err(Error::validation(
            "customerId",
            "is not a valid HubSpot record id",
        ))
    }
}

fn object_id(response: &CrmResponse) -> Result<String> {
    object_id_of(&response.body)
}

fn object_id_of(object: &Value) -> Result<String> {
    object
        .get("id")
        .and_then(|id| {
            id.as_str()
                .map(str::to_string)
                .or_else(|| id.as_u64().map(|n| n.to_string()))
        })
        .ok_or_else(|| Error::CrmUnavailable("HubSpot answered without a record id".into()))
}

/// HubSpot errors: `{"status":"error","message":…,"category":…}`; a 409 names the existing id.
fn hubspot_error(response: &CrmResponse) -> Error {
    let message = response.error_message("message");
    match status_error(response, message.clone()) {
        Error::CrmDuplicate { .. } => Error::CrmDuplicate {
            existing_id: existing_id(&message),
            message,
        },
        other => other,
    }
}

fn existing_id(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("Existing ID:")?;
    let id: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_existing_id_is_read_from_a_conflict_message() {
        assert_eq!(
            existing_id("Contact already exists. Existing ID: 37765128953").as_deref(),
            Some("37765128953")
        );
        assert_eq!(existing_id("Conflict"), None);
    }
}
