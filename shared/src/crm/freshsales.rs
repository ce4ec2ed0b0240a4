//! Freshworks CRM (Freshsales): contacts, leads as contacts at the "Lead" lifecycle stage, and
//! appointments linked to their contact.
//!
//! Auth is the user's API key (`Authorization: Token token=<key>`) against the account's bundle
//! alias (`https://<alias>.myfreshworks.com/crm/sales/api/...`). Paths, fields and bodies follow
//! https://developers.freshworks.com/crm/api/ (contacts, upsert a contact, lookup search,
//! appointments, upsert an account, admin configuration selectors). The current API documents
//! no Leads resource (that was Freshsales Classic, freshsales.io): the funnel is the contact's
//! lifecycle stage, so a lead here is a contact created at the "Lead" stage.

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Map, Value, json};

use super::http::{CrmHttp, CrmResponse, Idempotency, status_error};
use super::{
    AccountInfo, ContactLookup, CrmAdapter, CrmContact, StampedRecord, customer_fields,
    encode_path_segment, lead_note, map_properties, property_name, stamp_field, stamp_warning,
};
use crate::connection::{Connection, ConnectionSettings};
use crate::domain::{Appointment, AppointmentStatus, CrmType, Customer, E164Phone, Email, Lead};
use crate::error::{Error, Result};

/// What a cancelled appointment's title starts with. The API documents no cancelled state for
/// appointments (only an account-defined `outcome_id`), and deleting would lose the history.
pub const CANCELLED_TITLE_PREFIX: &str = "Cancelled: ";
/// The lifecycle stage type Freshworks gives its built-in "Lead" stage.
pub const LEAD_STAGE_TYPE: &str = "Lead";

/// Our customer field -> Freshworks contact attribute.
const CONTACT_FIELDS: &[(&str, &str)] = &[
    ("firstName", "first_name"),
    ("lastName", "last_name"),
    ("email", "email"),
    ("phone", "mobile_number"),
    ("address", "address"),
    ("city", "city"),
    ("state", "state"),
    ("zipCode", "zipcode"),
    ("country", "country"),
];
/// Where people type phone numbers on a contact.
const PHONE_FIELDS: [&str; 2] = ["mobile_number", "work_number"];
const APPOINTMENT_FIELDS: &[(&str, &str)] = &[("notes", "description"), ("location", "location")];

pub struct FreshsalesAdapter {
    http: CrmHttp,
    base_url: String,
    authorization: HeaderValue,
    settings: ConnectionSettings,
    default_country: String,
    /// A custom text field (`cf_…`) on contacts (and so leads) that holds our stamp; `None`
    /// when the connection turns stamping off (`"stampField": ""`).
    stamp_field: Option<String>,
}

/// The field our stamp goes in unless the connection's `stampField` names another.
pub const DEFAULT_STAMP_FIELD: &str = "cf_crm_sync_id";

impl FreshsalesAdapter {
    pub fn new(connection: &Connection, http: CrmHttp) -> Result<Self> {
        let invalid = |message: &str| Error::ConnectionInvalid {
            id: connection.id_str().to_string(),
            message: message.to_string(),
        };
        let base_url = match (
            connection.settings.base_url.as_deref(),
            connection.setting_or_alias("bundleAlias", &["domain"]),
        ) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, Some(alias)) => bundle_url(alias).ok_or_else(|| {
                invalid("setting 'bundleAlias' must look like 'acme' or 'acme.myfreshworks.com/crm/sales'")
            })?,
            (None, None) => return Err(invalid("setting 'bundleAlias' is missing")),
        };
        let key = connection.credential("apiKey")?;
        let mut authorization = HeaderValue::from_str(&format!("Token token={}", key.expose()))
            .map_err(|_| invalid("credential 'apiKey' has characters an API key cannot have"))?;
        authorization.set_sensitive(true);
        let stamp_field = stamp_field(&connection.settings, "stampField", DEFAULT_STAMP_FIELD);
        if stamp_field
            .as_deref()
            .is_some_and(|f| !f.starts_with("cf_"))
        {
            return Err(invalid(
                "setting 'stampField' must name a custom field (cf_…)",
            ));
        }
        Ok(FreshsalesAdapter {
            http,
            base_url,
            authorization,
            stamp_field,
            settings: connection.settings.clone(),
            default_country: connection
                .settings
                .default_country
                .clone()
                .unwrap_or_else(|| "US".into()),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<CrmResponse> {
        let url = format!("{}/api{path}", self.base_url);
        let response = self
            .http
            .send(idempotency, |client| {
                let mut request = client
                    .request(method.clone(), &url)
                    .header(AUTHORIZATION, self.authorization.clone());
                if !query.is_empty() {
                    request = request.query(query);
                }
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        if response.is_success() {
            Ok(response)
        } else {
            Err(freshsales_error(&response))
        }
    }

    fn contact_attributes(&self, customer: &Customer) -> Map<String, Value> {
        map_properties(
            "contact",
            &customer_fields(customer),
            CONTACT_FIELDS,
            &self.settings,
        )
    }

    fn to_contact(&self, object: &Value) -> Option<CrmContact> {
        let read = |ours: &str| {
            property_name("contact", ours, CONTACT_FIELDS, &self.settings)
                .and_then(|name| attribute_text(object, name))
        };
        let email = read("email").or_else(|| primary_email(object));
        let mut phones: Vec<String> = Vec::new();
        let mapped = property_name("contact", "phone", CONTACT_FIELDS, &self.settings);
        let typed = mapped
            .into_iter()
            .chain(PHONE_FIELDS)
            .filter_map(|name| attribute_text(object, name));
        let listed = object
            .get("phone_numbers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| text_of(p.get("value")?));
        for phone in typed.chain(listed) {
            if !phones.contains(&phone) {
                phones.push(phone);
            }
        }
        Some(CrmContact {
            crm_id: record_id(object.get("id")?)?,
            first_name: read("firstName"),
            last_name: read("lastName"),
            email,
            phones,
            address: read("address"),
            city: read("city"),
            state: read("state"),
            zip_code: read("zipCode"),
            country: read("country"),
        })
    }

    /// Exact lookup on the email field (the API's lookup search takes email, name or a custom field).
    async fn contacts_with_email(&self, email: &Email) -> Result<Vec<Value>> {
        let query = [
            ("q", email.as_str()),
            ("f", "email"),
            ("entities", "contact"),
        ];
        let response = self
            .call(
                Method::GET,
                "/lookup",
                &query,
                None,
                Idempotency::Idempotent,
            )
            .await?;
        // `{"contacts": {"contacts": [...]}}`; a flat list is read too.
        let contacts = response.body.get("contacts");
        let list = contacts
            .and_then(|c| c.get("contacts"))
            .or(contacts)
            .and_then(Value::as_array);
        Ok(list.cloned().unwrap_or_default())
    }

    /// Contacts whose phone fields hold this number in any common notation. Lookup search only
    /// takes email, name or custom fields, so this is the filtered search integrators use
    /// (`POST /api/filtered_search/contact`, `is_in`). Freshworks keeps phones as typed and
    /// `is_in` compares exactly, so each field is asked for every notation at once; the shared
    /// upsert then compares in E.164.
    async fn contacts_with_phone(&self, phone: &E164Phone) -> Result<Vec<Value>> {
        let notations = phone_notations(phone);
        let mut fields: Vec<&str> = PHONE_FIELDS.to_vec();
        if let Some(mapped) = property_name("contact", "phone", CONTACT_FIELDS, &self.settings)
            && !fields.contains(&mapped)
        {
            fields.push(mapped);
        }
        let mut found: Vec<Value> = Vec::new();
        for field in fields {
            // Rules in one filtered search are ANDed, so each phone field is its own search.
            let body = json!({"filter_rule": [{"attribute": field, "operator": "is_in", "value": notations}]});
            let response = self
                .call(
                    Method::POST,
                    "/filtered_search/contact",
                    &[],
                    Some(&body),
                    Idempotency::Idempotent,
                )
                .await?;
            for contact in response
                .body
                .get("contacts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let id = contact.get("id").and_then(record_id);
                if !found.iter().any(|c| c.get("id").and_then(record_id) == id) {
                    found.push(contact.clone());
                }
            }
        }
        Ok(found)
    }

    /// Creates the contact. With an email it goes through the upsert keyed on that email, so a
    /// retry after a lost answer, or a race with another writer, updates instead of duplicating.
    fn stamped(&self, mut attributes: Map<String, Value>, stamp: &str) -> Map<String, Value> {
        if let Some(field) = &self.stamp_field {
            attributes.insert(field.clone(), stamp.into());
        }
        attributes
    }

    async fn create_person(
        &self,
        attributes: Map<String, Value>,
        email: Option<&Email>,
    ) -> Result<String> {
        let contact = with_custom_fields(attributes);
        let response = match email {
            Some(email) => {
                let body =
                    json!({"unique_identifier": {"emails": email.as_str()}, "contact": contact});
                self.call(
                    Method::POST,
                    "/contacts/upsert",
                    &[],
                    Some(&body),
                    Idempotency::Idempotent,
                )
                .await?
            }
            None => {
                let body = json!({ "contact": contact });
                self.call(
                    Method::POST,
                    "/contacts",
                    &[],
                    Some(&body),
                    Idempotency::NotIdempotent,
                )
                .await?
            }
        };
        entity_id(&response, "contact")
    }

    async fn update_person(&self, crm_id: &str, attributes: Map<String, Value>) -> Result<()> {
        let path = format!("/contacts/{}", path_segment(crm_id)?);
        let body = json!({ "contact": with_custom_fields(attributes) });
        self.call(
            Method::PUT,
            &path,
            &[],
            Some(&body),
            Idempotency::Idempotent,
        )
        .await
        .map(|_| ())
    }

    /// The person's attributes plus the lead's own (source, notes: where the connection maps
    /// them, else in a note, see `note_lead`) and the company as the contact's primary sales
    /// account.
    async fn lead_attributes(&self, lead: &Lead) -> Result<Map<String, Value>> {
        let mut attributes = self.contact_attributes(&lead.person);
        let mut fields: Vec<(&'static str, String)> = Vec::new();
        fields.extend(lead.source.clone().map(|s| ("source", s)));
        fields.extend(lead.notes.clone().map(|n| ("notes", n)));
        attributes.extend(map_properties("lead", &fields, &[], &self.settings));
        if let Some(company) = &lead.company {
            let account = self.sales_account_id(company).await?;
            attributes.insert(
                "sales_accounts".into(),
                json!([{"id": account, "is_primary": true}]),
            );
        }
        Ok(attributes)
    }

    /// The account named `name`, created if the CRM has none (upsert keyed on the name).
    async fn sales_account_id(&self, name: &str) -> Result<Value> {
        let body = json!({"unique_identifier": {"name": name}, "sales_account": {"name": name}});
        let response = self
            .call(
                Method::POST,
                "/sales_accounts/upsert",
                &[],
                Some(&body),
                Idempotency::Idempotent,
            )
            .await?;
        response
            .body
            .pointer("/sales_account/id")
            .cloned()
            .ok_or_else(|| {
                Error::CrmUnavailable("Freshworks CRM answered without an account id".into())
            })
    }

    /// The id of the lifecycle stage new leads start at: the connection's `leadLifecycleStage`
    /// (a stage name or id), else the built-in stage of type "Lead".
    async fn lead_stage_id(&self) -> Result<Value> {
        let response = self
            .call(
                Method::GET,
                "/selector/lifecycle_stages",
                &[],
                None,
                Idempotency::Idempotent,
            )
            .await?;
        let stages = response
            .body
            .get("lifecycle_stages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let wanted = self.settings.extra_str("leadLifecycleStage");
        let matches = |stage: &Value| match wanted {
            Some(wanted) => {
                stage.get("id").and_then(record_id).as_deref() == Some(wanted)
                    || stage
                        .get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.eq_ignore_ascii_case(wanted))
            }
            None => stage.get("type").and_then(Value::as_str) == Some(LEAD_STAGE_TYPE),
        };
        stages
            .iter()
            .find(|s| matches(s))
            .and_then(|s| s.get("id").cloned())
            .ok_or_else(|| Error::CrmRejected {
                message: format!(
                    "this Freshworks CRM account has no lifecycle stage {}",
                    wanted.unwrap_or("of type Lead")
                ),
            })
    }

    /// Appointments take no custom fields: the stamp is the description's last line.
    fn stamped_appointment(
        &self,
        appointment: &Appointment,
        contact_id: &str,
        create: bool,
        stamp: &str,
    ) -> Value {
        let mut body = self.appointment_body(appointment, contact_id, create);
        let description = body["appointment"]["description"]
            .as_str()
            .map(|d| format!("{d}\n\n"))
            .unwrap_or_default();
        body["appointment"]["description"] = format!("{description}{}", stamp_line(stamp)).into();
        body
    }

    fn appointment_body(&self, appointment: &Appointment, contact_id: &str, create: bool) -> Value {
        let cancelled = appointment.status == AppointmentStatus::Cancelled;
        let title = if cancelled {
            format!("{CANCELLED_TITLE_PREFIX}{}", appointment.title)
        } else {
            appointment.title.clone()
        };
        let description = match (cancelled, &appointment.notes) {
            (true, Some(notes)) => Some(format!(
                "Cancelled through the booking assistant.\n\n{notes}"
            )),
            (true, None) => Some("Cancelled through the booking assistant.".to_string()),
            (false, notes) => notes.clone(),
        };
        let mut fields: Vec<(&'static str, String)> = Vec::new();
        fields.extend(description.map(|d| ("notes", d)));
        fields.extend(appointment.location.clone().map(|l| ("location", l)));
        let mut body = with_custom_fields(map_properties(
            "appointment",
            &fields,
            APPOINTMENT_FIELDS,
            &self.settings,
        ));
        // The wall time in the booking's zone, with its offset: the instant is exact either way
        // and people reading the raw record see the time the customer booked.
        let local = |t: chrono::DateTime<chrono_tz::Tz>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
        };
        body.insert("title".into(), title.into());
        body.insert("from_date".into(), local(appointment.start_local()).into());
        body.insert("end_date".into(), local(appointment.end_local()).into());
        body.insert("time_zone".into(), appointment.timezone.name().into());
        body.insert("targetable_type".into(), "Contact".into());
        body.insert("targetable_id".into(), id_value(contact_id));
        if create {
            // Attendees are a nested list of rows; an update leaves them as created rather than
            // risk adding the contact a second time.
            body.insert(
                "appointment_attendees_attributes".into(),
                json!([{"attendee_type": "Contact", "attendee_id": id_value(contact_id)}]),
            );
        }
        // An account may define a "cancelled" outcome; a booking made again clears it.
        if let Some(outcome) = self.settings.extra.get("cancelledOutcomeId") {
            let outcome = if cancelled {
                outcome.clone()
            } else {
                Value::Null
            };
            body.insert("outcome_id".into(), outcome);
        }
        json!({ "appointment": body })
    }
}

#[async_trait]
impl CrmAdapter for FreshsalesAdapter {
    fn crm_type(&self) -> CrmType {
        CrmType::Freshsales
    }

    async fn test_connection(&self) -> Result<AccountInfo> {
        let response = self
            .call(
                Method::GET,
                "/selector/owners",
                &[],
                None,
                Idempotency::Idempotent,
            )
            .await?;
        let users = response
            .body
            .get("users")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let host = self.base_url.split("://").nth(1).unwrap_or(&self.base_url);
        // The lookup a lost answer relies on proves the stamp field can be searched.
        let mut warnings = Vec::new();
        if let Some(field) = &self.stamp_field {
            let query = [
                ("q", "test-connection"),
                ("f", field.as_str()),
                ("entities", "contact"),
            ];
            let lookup = self
                .call(
                    Method::GET,
                    "/lookup",
                    &query,
                    None,
                    Idempotency::Idempotent,
                )
                .await;
            warnings.extend(stamp_warning(lookup, |message| {
                format!(
                    "Freshsales contacts cannot be looked up by '{field}': {message}. Create the text custom field once, or set stampField to \"\" to sync without stamps"
                )
            })?);
        }
        Ok(AccountInfo {
            account: format!("Freshworks CRM {host} ({users} users)"),
            warnings,
        })
    }

    async fn find_contacts(&self, lookup: &ContactLookup) -> Result<Vec<CrmContact>> {
        let objects = match lookup {
            ContactLookup::Id(id) => {
                let path = format!("/contacts/{}", path_segment(id)?);
                match self
                    .call(Method::GET, &path, &[], None, Idempotency::Idempotent)
                    .await
                {
                    Ok(response) => response.body.get("contact").cloned().into_iter().collect(),
                    Err(Error::NotFound(_)) => vec![],
                    Err(e) => return Err(e),
                }
            }
            ContactLookup::Email(email) => self.contacts_with_email(email).await?,
            ContactLookup::Phone(phone) => self.contacts_with_phone(phone).await?,
        };
        Ok(objects.iter().filter_map(|o| self.to_contact(o)).collect())
    }

    async fn create_contact(&self, customer: &Customer, stamp: &str) -> Result<String> {
        let attributes = self.stamped(self.contact_attributes(customer), stamp);
        self.create_person(attributes, customer.email.as_ref())
            .await
    }

    async fn update_contact(&self, crm_id: &str, customer: &Customer) -> Result<()> {
        self.update_person(crm_id, self.contact_attributes(customer))
            .await
    }

    /// The lead is the contact itself (at the Lead stage), not a record attached to one.
    fn lead_needs_contact(&self) -> bool {
        false
    }

    /// The person's contact, whatever its stage: Freshworks has one record per person, so a
    /// customer who calls again as a lead is that same record.
    async fn find_lead(&self, lead: &Lead, _contact_id: Option<&str>) -> Result<Option<String>> {
        let person = &lead.person;
        let mut found = Vec::new();
        if let Some(email) = &person.email {
            found = self
                .find_contacts(&ContactLookup::Email(email.clone()))
                .await?
                .into_iter()
                .filter(|c| {
                    c.email
                        .as_deref()
                        .is_some_and(|e| e.trim().eq_ignore_ascii_case(email.as_str()))
                })
                .collect();
        }
        if found.is_empty()
            && let Some(phone) = &person.phone
        {
            found = self
                .find_contacts(&ContactLookup::Phone(phone.clone()))
                .await?
                .into_iter()
                .filter(|c| {
                    c.phones.iter().any(|raw| {
                        E164Phone::parse(raw, &self.default_country).as_ref() == Ok(phone)
                    })
                })
                // Same number, another email: someone else sharing the phone.
                .filter(|c| match (&person.email, c.email.as_deref()) {
                    (Some(ours), Some(theirs)) => theirs.trim().eq_ignore_ascii_case(ours.as_str()),
                    _ => true,
                })
                .collect();
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop().map(|c| c.crm_id)),
            n => Err(Error::Ambiguous {
                message: format!("{n} CRM contacts match this lead; nothing was changed"),
                ids: found.into_iter().map(|c| c.crm_id).collect(),
            }),
        }
    }

    async fn create_lead(
        &self,
        lead: &Lead,
        _contact_id: Option<&str>,
        stamp: &str,
    ) -> Result<String> {
        let mut attributes = self.stamped(self.lead_attributes(lead).await?, stamp);
        attributes.insert("lifecycle_stage_id".into(), self.lead_stage_id().await?);
        self.create_person(attributes, lead.person.email.as_ref())
            .await
    }

    /// Leaves the lifecycle stage alone: a salesperson may have moved the person on since, and a
    /// new call is no reason to put a customer back to Lead.
    async fn update_lead(
        &self,
        crm_id: &str,
        lead: &Lead,
        _contact_id: Option<&str>,
    ) -> Result<()> {
        let attributes = self.lead_attributes(lead).await?;
        self.update_person(crm_id, attributes).await
    }

    async fn create_appointment(
        &self,
        appointment: &Appointment,
        contact_id: &str,
        stamp: &str,
    ) -> Result<String> {
        path_segment(contact_id)?;
        let body = self.stamped_appointment(appointment, contact_id, true, stamp);
        let response = self
            .call(
                Method::POST,
                "/appointments",
                &[],
                Some(&body),
                Idempotency::NotIdempotent,
            )
            .await?;
        entity_id(&response, "appointment")
    }

    /// A note (`POST /notes`) on the lead's contact, unless the contact has one with this text
    /// (`include=notes`): after a lost answer, the retry finds it.
    async fn note_lead(&self, lead_id: &str, _contact_id: Option<&str>, lead: &Lead) -> Result<()> {
        let Some(note) = lead_note(lead, &[], &self.settings) else {
            return Ok(());
        };
        let path = format!("/contacts/{}", path_segment(lead_id)?);
        let response = self
            .call(
                Method::GET,
                &path,
                &[("include", "notes")],
                None,
                Idempotency::Idempotent,
            )
            .await?;
        let noted = response.body["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["description"].as_str().map(str::trim) == Some(note.trim()));
        if noted {
            return Ok(());
        }
        let id: u64 = lead_id
            .parse()
            .map_err(|_| Error::validation("lead", "is not a Freshworks contact id"))?;
        let body = json!({"note": {"description": note, "targetable_type": "Contact", "targetable_id": id}});
        self.call(
            Method::POST,
            "/notes",
            &[],
            Some(&body),
            Idempotency::NotIdempotent,
        )
        .await
        .map(|_| ())
    }

    /// Contacts (and leads, which are contacts) by `GET /lookup` on the stamp field; an
    /// appointment among the contact's own (`GET /contacts/{id}?include=appointments`).
    async fn find_stamped(&self, stamp: &str, record: StampedRecord<'_>) -> Result<Option<String>> {
        let Some(field) = &self.stamp_field else {
            return Ok(None);
        };
        let carries_stamp =
            |object: &&Value| object["custom_field"][field.as_str()].as_str() == Some(stamp);
        match record {
            StampedRecord::Contact | StampedRecord::Lead { .. } => {
                let query = [("q", stamp), ("f", field.as_str()), ("entities", "contact")];
                let response = self
                    .call(
                        Method::GET,
                        "/lookup",
                        &query,
                        None,
                        Idempotency::Idempotent,
                    )
                    .await?;
                Ok(response.body["contacts"]["contacts"]
                    .as_array()
                    .and_then(|found| found.iter().find(carries_stamp))
                    .and_then(|c| id_text(&c["id"])))
            }
            StampedRecord::Appointment {
                contact_id,
                appointment,
            } => {
                let path = format!("/contacts/{}", encode_path_segment(contact_id));
                let query = [("include", "appointments")];
                let response = match self
                    .call(Method::GET, &path, &query, None, Idempotency::Idempotent)
                    .await
                {
                    Ok(response) => response,
                    Err(Error::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let found = response.body["appointments"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let line = stamp_line(stamp);
                let expected = &self.appointment_body(appointment, contact_id, true)["appointment"];
                let same_start = |a: &Value| {
                    let instant = |v: &Value| {
                        v.as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    };
                    instant(&a["from_date"]).is_some()
                        && instant(&a["from_date"]) == instant(&expected["from_date"])
                };
                let stamped = found
                    .iter()
                    .find(|a| a["description"].as_str().is_some_and(|d| d.contains(&line)));
                let natural = || {
                    found
                        .iter()
                        .find(|a| a["title"] == expected["title"] && same_start(a))
                };
                Ok(stamped.or_else(natural).and_then(|a| id_text(&a["id"])))
            }
        }
    }

    async fn update_appointment(
        &self,
        crm_id: &str,
        appointment: &Appointment,
        contact_id: &str,
        stamp: &str,
    ) -> Result<()> {
        let path = format!("/appointments/{}", path_segment(crm_id)?);
        let body = self.stamped_appointment(appointment, contact_id, false, stamp);
        self.call(
            Method::PUT,
            &path,
            &[],
            Some(&body),
            Idempotency::Idempotent,
        )
        .await
        .map(|_| ())
    }
}

/// The API root for a bundle alias as Freshworks shows it under API Settings
/// (`acme.myfreshworks.com/crm/sales`), or just its first label (`acme`).
pub fn bundle_url(alias: &str) -> Option<String> {
    let alias = alias.trim();
    let alias = alias
        .strip_prefix("https://")
        .or_else(|| alias.strip_prefix("http://"))
        .unwrap_or(alias)
        .trim_matches('/');
    let valid = !alias.is_empty()
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '/')
        && !alias.contains("..")
        && !alias.starts_with('.');
    if !valid {
        return None;
    }
    Some(match (alias.contains('.'), alias.contains('/')) {
        (true, true) => format!("https://{alias}"),
        (true, false) => format!("https://{alias}/crm/sales"),
        (false, _) => format!("https://{alias}.myfreshworks.com/crm/sales"),
    })
}

/// Every common way this number may have been typed: E.164, digits, national and international.
pub fn phone_notations(phone: &E164Phone) -> Vec<String> {
    let mut notations = vec![
        phone.as_str().to_string(),
        phone.digits().to_string(),
        phone.national_number(),
    ];
    if let Ok(number) = phonenumber::parse(None, phone.as_str()) {
        let national = number
            .format()
            .mode(phonenumber::Mode::National)
            .to_string();
        let international = number
            .format()
            .mode(phonenumber::Mode::International)
            .to_string();
        let prefix = format!("+{} ", number.code().value());
        notations.push(national.chars().filter(char::is_ascii_digit).collect());
        notations.extend(international.strip_prefix(&prefix).map(str::to_string));
        notations.push(national);
        notations.push(international);
    }
    let mut unique = Vec::new();
    for n in notations {
        if !n.is_empty() && !unique.contains(&n) {
            unique.push(n);
        }
    }
    unique
}

/// Freshworks keeps custom fields (`cf_…`) under `custom_field`; everything else is top level.
/// The description line that says which crm-sync booking made an appointment.
fn stamp_line(stamp: &str) -> String {
    format!("crm-sync ref: {stamp}")
}

fn id_text(id: &Value) -> Option<String> {
    id.as_u64()
        .map(|n| n.to_string())
        .or_else(|| id.as_str().map(str::to_string))
}

fn with_custom_fields(attributes: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let mut custom = Map::new();
    for (name, value) in attributes {
        if name.starts_with("cf_") {
            custom.insert(name, value);
        } else {
            out.insert(name, value);
        }
    }
    if !custom.is_empty() {
        out.insert("custom_field".into(), Value::Object(custom));
    }
    out
}

fn attribute_text(object: &Value, name: &str) -> Option<String> {
    let value = if name.starts_with("cf_") {
        object.get("custom_field")?.get(name)?
    } else {
        object.get(name)?
    };
    text_of(value)
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn primary_email(object: &Value) -> Option<String> {
    let emails = object.get("emails")?.as_array()?;
    emails
        .iter()
        .find(|e| e.get("is_primary") == Some(&Value::Bool(true)))
        .or_else(|| emails.first())
        .and_then(|e| text_of(e.get("value")?))
}

/// Freshworks ids are JSON numbers; we carry them as strings.
fn record_id(value: &Value) -> Option<String> {
    value
        .as_u64()
        .map(|n| n.to_string())
        .or_else(|| value.as_str().filter(|s| !s.is_empty()).map(str::to_string))
}

/// An id as the API writes it: a number when it is one.
fn id_value(id: &str) -> Value {
    id.parse::<u64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(id))
}

fn entity_id(response: &CrmResponse, entity: &str) -> Result<String> {
    response
        .body
        .get(entity)
        .and_then(|e| e.get("id"))
        .and_then(record_id)
        .ok_or_else(|| {
            Error::CrmUnavailable(format!("Freshworks CRM answered without the {entity} id"))
        })
}

/// Record ids go into paths; Freshworks ids are numbers, so anything else is refused.
fn path_segment(id: &str) -> Result<&str> {
    if !id.is_empty() && id.len() <= 20 && id.chars().all(|c| c.is_ascii_digit()) {
        Ok(id)
    } else {
        Err(Error::validation(
            "customerId",
            "is not a valid Freshworks CRM record id",
        ))
    }
}

/// The CRM's own words from `{"errors": {"code": …, "message": ["…"]}}`.
fn error_message(body: &Value) -> Option<String> {
    let errors = body.get("errors");
    let message = errors
        .and_then(|e| e.get("message"))
        .or_else(|| body.get("message"))
        .or_else(|| body.get("description"))?;
    match message {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(text_of).collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        }
        _ => None,
    }
}

/// A taken unique value (email) is a 400 saying "… is not unique" rather than a 409.
fn freshsales_error(response: &CrmResponse) -> Error {
    let message = error_message(&response.body).unwrap_or_else(|| {
        format!(
            "HTTP {} {}",
            response.status,
            response.text.chars().take(200).collect::<String>()
        )
    });
    let lower = message.to_ascii_lowercase();
    let duplicate = matches!(response.status, 400 | 409 | 422)
        && (lower.contains("not unique") || lower.contains("already exists"));
    if duplicate {
        Error::CrmDuplicate {
            existing_id: None,
            message,
        }
    } else {
        status_error(response, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earlier_services_domain_names_the_bundle() {
        let connection = Connection {
            id: None,
            crm_type: CrmType::Freshsales,
            credentials: [("apiKey", "k3y"), ("domain", "acme")]
                .map(|(k, v)| (k.to_string(), crate::connection::SecretString::new(v)))
                .into(),
            settings: ConnectionSettings::default(),
        };
        let http = CrmHttp::new(&crate::config::Config::from_lookup(|_| None));
        let adapter = FreshsalesAdapter::new(&connection, http).unwrap();
        assert_eq!(adapter.base_url, "https://acme.myfreshworks.com/crm/sales");
    }

    #[test]
    fn a_bundle_alias_becomes_the_api_root() {
        assert_eq!(
            bundle_url("acme").as_deref(),
            Some("https://acme.myfreshworks.com/crm/sales")
        );
        assert_eq!(
            bundle_url("https://acme.myfreshworks.com/crm/sales/").as_deref(),
            Some("https://acme.myfreshworks.com/crm/sales")
        );
        assert_eq!(
            bundle_url("acme.freshworks.com").as_deref(),
            Some("https://acme.freshworks.com/crm/sales")
        );
        assert_eq!(bundle_url("acme.com?x=1"), None);
        assert_eq!(bundle_url(" "), None);
    }

    #[test]
    fn a_phone_is_asked_for_in_every_common_notation() {
        let phone = E164Phone::parse("+14155550199", "US").unwrap();
        let notations = phone_notations(&phone);
        for typed in [
            "+14155550199",
            "14155550199",
            "4155550199",
            "(415) 555-0199",
            "415-555-0199",
            "+1 415-555-0199",
        ] {
            assert!(
                notations.contains(&typed.to_string()),
                "{typed}: {notations:?}"
            );
        }
        let london = phone_notations(&E164Phone::parse("+442079460958", "US").unwrap());
        assert!(london.contains(&"020 7946 0958".to_string()), "{london:?}");
        assert!(london.contains(&"02079460958".to_string()), "{london:?}");
    }

    #[test]
    fn custom_fields_go_under_custom_field() {
        let mut attributes = Map::new();
        attributes.insert("first_name".into(), "Ada".into());
        attributes.insert("cf_source".into(), "phone".into());
        assert_eq!(
            Value::Object(with_custom_fields(attributes)),
            json!({"first_name": "Ada", "custom_field": {"cf_source": "phone"}})
        );
    }

    #[test]
    fn errors_carry_the_crm_message_and_a_taken_email_is_a_duplicate() {
        let taken = CrmResponse::json(
            400,
            json!({"errors": {"code": 400, "message": ["Email is not unique"]}}),
        );
        assert_eq!(
            freshsales_error(&taken),
            Error::CrmDuplicate {
                existing_id: None,
                message: "Email is not unique".into()
            }
        );
        let missing = CrmResponse::json(
            404,
            json!({"errors": {"code": 404, "message": ["Contact not found"]}}),
        );
        assert_eq!(
            freshsales_error(&missing),
            Error::NotFound("Contact not found".into())
        );
        let refused = CrmResponse::json(401, json!({"message": "Invalid API key"}));
        assert!(matches!(freshsales_error(&refused), Error::CrmAuth(m) if m == "Invalid API key"));
        let bare = CrmResponse::json(502, Value::Null);
        assert!(matches!(freshsales_error(&bare), Error::CrmUnavailable(_)));
    }

    #[test]
    fn ids_are_read_as_numbers_or_strings_and_only_numbers_go_into_paths() {
        assert_eq!(
            record_id(&json!(16000123456u64)).as_deref(),
            Some("16000123456")
        );
        assert_eq!(record_id(&json!("42")).as_deref(), Some("42"));
        assert_eq!(id_value("42"), json!(42));
        assert!(path_segment("16000123456").is_ok());
        assert!(path_segment("../contacts").is_err());
    }
}
