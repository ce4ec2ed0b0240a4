//! SugarCRM REST API v11: Contacts and Leads (filter API, create, update), Meetings linked to the
//! contact, and password-grant tokens with rotating refresh tokens kept through the shared
//! `OAuthSession`.
//!
//! Sources (support.sugarcrm.com, Sugar Developer Guide 13.0/14.0, Integration > Web Services >
//! REST API): the token endpoint `POST /oauth2/token` with the password and refresh_token grants
//! and `platform` (.../rest_api/endpoints/oauth2token_post/), the `OAuth-Token` header, the
//! filter API and its operators (.../rest_api/endpoints/modulefilter_post/), records
//! (`POST /<module>`, `GET|PUT /<module>/:record`), `GET /me`, the error body
//! `{"error","error_message"}` and its labels (.../rest_api/api_exceptions), Meetings'
//! `date_start`, `duration_hours`, `duration_minutes` (the server computes `date_end`),
//! `status` (`Planned`, `Held`, `Not Held`), `parent_type`/`parent_id` and the `contacts` link,
//! and email addresses as the `email` array (sugarclub.sugarcrm.com dev blog, "Using e-mail
//! fields correctly in Sugar"); API platforms (Admin > Configure API Platforms,
//! developer.sugarcrm.com "Unknown platforms to be restricted in Winter '18").

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::http::{CrmHttp, CrmResponse, Idempotency, status_error};
use super::oauth::{AccessGrant, OAuthProvider, OAuthSession, TokenGrant};
use super::{
    AccountInfo, AdapterContext, ContactLookup, CrmAdapter, CrmContact, StampedRecord,
    appointment_description, customer_fields, has_phone, last_name_stand_in, lead_description,
    map_properties, not_someone_else, property_name, same_email, stamp_field, stamp_warning, text,
};
use crate::connection::{Connection, ConnectionSettings};
use crate::domain::{Appointment, AppointmentStatus, CrmType, Customer, E164Phone, Lead};
use crate::error::{Error, Result};

/// The REST API version every path uses (`/rest/v11/...`).
pub const API_VERSION: &str = "v11";
/// The API platform tokens are issued for. Sugar keeps one session per user and platform, so a
/// platform of our own keeps crm-sync from logging the API user out of the web UI (`base`) and
/// the reverse; the admin registers it once under Configure API Platforms.
pub const DEFAULT_PLATFORM: &str = "crm_sync";
/// Sugar's own access token lifetime (an hour) when the answer says none.
pub const ACCESS_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);
/// The field our stamp goes in unless the connection's `stampField` names another: a custom
/// text field (Sugar suffixes custom fields with `_c`) on Contacts, Leads and Meetings.
pub const DEFAULT_STAMP_FIELD: &str = "crm_sync_id_c";
/// Meeting statuses (`meeting_status_dom`): `Not Held` is the one Sugar labels Canceled.
pub const STATUS_PLANNED: &str = "Planned";
pub const STATUS_NOT_HELD: &str = "Not Held";
/// Rows asked for by a phone search: the filter is coarse (see `phone_filter`).
const PHONE_SEARCH_ROWS: u32 = 100;

/// Our customer field -> Contacts field. The email is not here: Sugar keeps addresses in the
/// `email` array (see `email_array`).
const CONTACT_FIELDS: &[(&str, &str)] = &[
    ("firstName", "first_name"),
    ("lastName", "last_name"),
    ("phone", "phone_mobile"),
    ("address", "primary_address_street"),
    ("city", "primary_address_city"),
    ("state", "primary_address_state"),
    ("zipCode", "primary_address_postalcode"),
    ("country", "primary_address_country"),
];

/// Our lead field -> Leads field. `source` has no default: `lead_source` is a dropdown whose
/// keys each instance may change, so it is written only where the connection maps it.
const LEAD_FIELDS: &[(&str, &str)] = &[
    ("firstName", "first_name"),
    ("lastName", "last_name"),
    ("phone", "phone_mobile"),
    ("address", "primary_address_street"),
    ("city", "primary_address_city"),
    ("state", "primary_address_state"),
    ("zipCode", "primary_address_postalcode"),
    ("country", "primary_address_country"),
    ("company", "account_name"),
    ("notes", "description"),
];

/// Our appointment field -> Meetings field.
const MEETING_FIELDS: &[(&str, &str)] = &[
    ("title", "name"),
    ("notes", "description"),
    ("location", "location"),
];

/// Phone fields read and searched besides the mapped `phone` one.
const OTHER_PHONE_FIELDS: &[&str] = &["phone_work", "phone_home", "phone_other"];

pub struct SugarCrmAdapter {
    http: CrmHttp,
    session: OAuthSession,
    /// The instance URL (`https://example.sugarondemand.com`), without a trailing slash.
    instance: String,
    settings: ConnectionSettings,
    stamp_field: Option<String>,
}

impl SugarCrmAdapter {
    pub fn new(connection: &Connection, ctx: &AdapterContext) -> Result<Self> {
        let settings = &connection.settings;
        let instance = settings
            .extra_str("instanceUrl")
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .ok_or_else(|| Error::ConnectionInvalid {
                id: connection.id_str().to_string(),
                message: "setting 'instanceUrl' (https://<instance>.sugarondemand.com) is missing"
                    .into(),
            })?;
        let platform = settings
            .extra_str("platform")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_PLATFORM)
            .to_string();
        let provider = OAuthProvider {
            token_url: format!("{instance}/rest/{API_VERSION}/oauth2/token"),
            grant: TokenGrant::SugarPassword { platform },
            api_base_field: None,
            api_base_setting: "instanceUrl",
            default_lifetime: Some(ACCESS_TOKEN_LIFETIME),
        };
        Ok(SugarCrmAdapter {
            http: ctx.http.clone(),
            session: OAuthSession::new(connection, ctx, provider)?,
            instance,
            settings: settings.clone(),
            stamp_field: stamp_field(settings, "stampField", DEFAULT_STAMP_FIELD),
        })
    }

    fn stamped(&self, mut record: Map<String, Value>, stamp: &str) -> Map<String, Value> {
        if let Some(field) = &self.stamp_field {
            record.insert(field.clone(), stamp.into());
        }
        record
    }

    /// Sends with the session's token; when Sugar refuses the token (401 `invalid_grant` for an
    /// expired one, `need_login` for one it no longer knows), gets a new one (single-flight
    /// across invocations) and sends once more. A 401 means nothing was done.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<CrmResponse> {
        let grant = self.session.grant().await?;
        let response = self.send(&grant, &method, path, body, idempotency).await?;
        if response.status != 401 {
            return Ok(response);
        }
        let grant = self.session.refresh_after_rejection(&grant).await?;
        self.send(&grant, &method, path, body, idempotency).await
    }

    async fn send(
        &self,
        grant: &AccessGrant,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<CrmResponse> {
        let url = format!("{}/rest/{API_VERSION}{path}", self.instance);
        let token = grant.access_token.expose();
        self.http
            .send(idempotency, |client| {
                let request = client
                    .request(method.clone(), &url)
                    .header("OAuth-Token", token);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await
    }

    /// `POST /{module}/filter`: a read, safe to repeat.
    async fn filter(
        &self,
        module: &str,
        filter: Value,
        fields: &str,
        max: u32,
    ) -> Result<Vec<Value>> {
        let body = json!({"filter": filter, "fields": fields, "max_num": max});
        let path = format!("/{module}/filter");
        let response = checked(
            self.call(Method::POST, &path, Some(&body), Idempotency::Idempotent)
                .await?,
        )?;
        Ok(response.body["records"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// One record by id; `None` when Sugar has none (404 `not_found`).
    async fn get_record(&self, module: &str, id: &str, fields: &str) -> Result<Option<Value>> {
        let path = format!("/{module}/{}?fields={fields}", record_id(id)?);
        match checked(
            self.call(Method::GET, &path, None, Idempotency::Idempotent)
                .await?,
        ) {
            Ok(response) => Ok(Some(response.body)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /{module}`: answers the saved record. A create, so never repeated blindly.
    async fn create(&self, module: &str, record: Map<String, Value>) -> Result<String> {
        let body = Value::Object(record);
        let response = checked(
            self.call(
                Method::POST,
                &format!("/{module}"),
                Some(&body),
                Idempotency::NotIdempotent,
            )
            .await?,
        )?;
        text(&response.body, "id").ok_or_else(|| {
            Error::CrmUnavailable("SugarCRM answered a create without the record's id".into())
        })
    }

    async fn update(&self, module: &str, id: &str, record: Map<String, Value>) -> Result<()> {
        let path = format!("/{module}/{}", record_id(id)?);
        let body = Value::Object(record);
        checked(
            self.call(Method::PUT, &path, Some(&body), Idempotency::Idempotent)
                .await?,
        )
        .map(|_| ())
    }

    /// `None` without a stamp field; else the records of `module` holding `stamp`.
    async fn search_stamp(&self, module: &str, stamp: &str) -> Result<Option<Vec<Value>>> {
        let Some(field) = &self.stamp_field else {
            return Ok(None);
        };
        let filter = json!([{ field.as_str(): {"$equals": stamp} }]);
        self.filter(module, filter, "id", 1).await.map(Some)
    }

    fn default_country(&self) -> &str {
        self.settings.default_country.as_deref().unwrap_or("US")
    }

    fn phone_fields(&self, entity: &str, defaults: &[(&'static str, &'static str)]) -> Vec<String> {
        let mapped =
            property_name(entity, "phone", defaults, &self.settings).unwrap_or("phone_mobile");
        let mut fields = vec![mapped.to_string()];
        fields.extend(
            OTHER_PHONE_FIELDS
                .iter()
                .filter(|f| **f != mapped)
                .map(|f| f.to_string()),
        );
        fields
    }

    /// The `fields` list: every field read back, under the connection's names.
    fn field_list(&self, entity: &str, defaults: &[(&'static str, &'static str)]) -> String {
        let mut names: Vec<String> = vec!["id".into(), "email".into()];
        names.extend(
            defaults
                .iter()
                .filter_map(|(ours, _)| property_name(entity, ours, defaults, &self.settings))
                .map(str::to_string),
        );
        names.extend(self.phone_fields(entity, defaults));
        names.dedup();
        names.join(",")
    }

    /// Sugar keeps phones as typed, so no filter can compare them in E.164: this one asks for
    /// records whose phone fields end in the number's last four digits (contiguous in every
    /// usual notation), and the caller keeps those equal in E.164.
    fn phone_filter(
        &self,
        entity: &str,
        defaults: &[(&'static str, &'static str)],
        phone: &E164Phone,
    ) -> Value {
        let national = phone.national_number();
        let tail = &national[national.len().saturating_sub(4)..];
        let any: Vec<Value> = self
            .phone_fields(entity, defaults)
            .iter()
            .map(|f| json!({ f.as_str(): {"$ends": tail} }))
            .collect();
        json!({ "$or": any })
    }

    /// The people of `module` with this email or phone, in our vocabulary.
    async fn find_people(
        &self,
        module: &str,
        entity: &str,
        defaults: &[(&'static str, &'static str)],
        extra: Option<Value>,
        lookup: &ContactLookup,
    ) -> Result<Vec<CrmContact>> {
        let fields = self.field_list(entity, defaults);
        let (condition, max) = match lookup {
            ContactLookup::Id(id) => {
                let found = match record_id(id) {
                    Ok(_) => self.get_record(module, id, &fields).await?,
                    // An id Sugar could not have given names no record.
                    Err(_) => None,
                };
                return Ok(found
                    .iter()
                    .filter_map(|r| self.to_person(entity, defaults, r))
                    .collect());
            }
            ContactLookup::Email(email) => (
                json!({"email_addresses.email_address": {"$equals": email.as_str()}}),
                50,
            ),
            ContactLookup::Phone(phone) => (
                self.phone_filter(entity, defaults, phone),
                PHONE_SEARCH_ROWS,
            ),
        };
        let mut filter = vec![condition];
        filter.extend(extra);
        let records = self
            .filter(module, Value::Array(filter), &fields, max)
            .await?;
        let people = records
            .iter()
            .filter_map(|r| self.to_person(entity, defaults, r));
        Ok(match lookup {
            ContactLookup::Email(email) => people
                .filter(|c| same_email(c.email.as_deref(), email.as_str()))
                .collect(),
            ContactLookup::Phone(phone) => people
                .filter(|c| has_phone(c, phone, self.default_country()))
                .collect(),
            ContactLookup::Id(_) => people.collect(),
        })
    }

    /// A person's record. On create, Sugar's required `last_name` gets a stand-in when the
    /// caller has none; on update it is left alone. `existing` are the addresses the record
    /// holds: Sugar replaces the whole set with what is sent, so they are sent again.
    fn person_record(
        &self,
        entity: &str,
        defaults: &[(&'static str, &'static str)],
        mut fields: Vec<(&'static str, String)>,
        person: &Customer,
        creating: bool,
        existing: &[Value],
    ) -> Map<String, Value> {
        if creating && person.last_name.is_none() {
            fields.extend(last_name_stand_in(person).map(|s| ("lastName", s)));
        }
        let mut record = map_properties(entity, &fields, defaults, &self.settings);
        if let Some(email) = &person.email {
            record.insert("email".into(), email_array(email.as_str(), existing));
        }
        record
    }

    fn lead_fields(&self, lead: &Lead) -> Vec<(&'static str, String)> {
        let mut fields = customer_fields(&lead.person);
        fields.extend(lead.company.clone().map(|c| ("company", c)));
        // The source goes into the description unless it has a field (mapped) of its own.
        fields.extend(lead_description(lead, LEAD_FIELDS, &self.settings).map(|n| ("notes", n)));
        fields.extend(lead.source.clone().map(|s| ("source", s)));
        fields
    }

    /// The addresses a record holds, for an update that must not drop them.
    async fn existing_emails(&self, module: &str, id: &str) -> Result<Vec<Value>> {
        match self.get_record(module, id, "id,email").await? {
            Some(record) => Ok(record["email"].as_array().cloned().unwrap_or_default()),
            None => Err(Error::NotFound(format!("the SugarCRM {module} record"))),
        }
    }

    /// The meeting's fields: the start in UTC and the length as Sugar's duration fields (Sugar
    /// computes `date_end` from them), linked to the contact as parent and as invitee.
    fn meeting_record(&self, appointment: &Appointment, contact_id: &str) -> Map<String, Value> {
        let mut fields = vec![("title", appointment.title.clone())];
        // The zone it was booked in, in words: the CRM keeps the instant only.
        fields.push(("notes", appointment_description(appointment)));
        fields.extend(appointment.location.clone().map(|l| ("location", l)));
        let mut record = map_properties("appointment", &fields, MEETING_FIELDS, &self.settings);
        let minutes = appointment.window.duration_minutes();
        record.insert(
            "date_start".into(),
            sugar_datetime(appointment.window.start()).into(),
        );
        record.insert("duration_hours".into(), (minutes / 60).into());
        record.insert("duration_minutes".into(), (minutes % 60).into());
        let status = match appointment.status {
            AppointmentStatus::Cancelled => STATUS_NOT_HELD,
            AppointmentStatus::Scheduled => STATUS_PLANNED,
        };
        record.insert("status".into(), status.into());
        record.insert("parent_type".into(), "Contacts".into());
        record.insert("parent_id".into(), contact_id.into());
        record.insert("contacts".into(), json!({"add": [contact_id]}));
        record
    }

    fn to_person(
        &self,
        entity: &str,
        defaults: &[(&'static str, &'static str)],
        record: &Value,
    ) -> Option<CrmContact> {
        let read = |ours: &str| {
            property_name(entity, ours, defaults, &self.settings)
                .and_then(|name| text(record, name))
        };
        let phones: Vec<String> = self
            .phone_fields(entity, defaults)
            .iter()
            .filter_map(|f| text(record, f))
            .collect();
        let email = primary_email(record);
        let last_name = read("lastName")
            .filter(|l| email.as_deref() != Some(l.as_str()) && !phones.contains(l));
        Some(CrmContact {
            crm_id: text(record, "id")?,
            first_name: read("firstName"),
            last_name,
            email,
            phones,
            address: read("address"),
            city: read("city"),
            state: read("state"),
            zip_code: read("zipCode"),
            country: read("country"),
        })
    }
}

#[async_trait]
impl CrmAdapter for SugarCrmAdapter {
    fn crm_type(&self) -> CrmType {
        CrmType::Sugarcrm
    }

    /// `GET /me` names the API user; then the stamp field is tried in each module.
    async fn test_connection(&self) -> Result<AccountInfo> {
        let response = checked(
            self.call(Method::GET, "/me", None, Idempotency::Idempotent)
                .await?,
        )?;
        let user = &response.body["current_user"];
        let name = text(user, "user_name").unwrap_or_else(|| "unknown user".into());
        let host = self
            .instance
            .split("://")
            .nth(1)
            .unwrap_or(&self.instance)
            .to_string();
        let mut warnings = Vec::new();
        for module in ["Contacts", "Leads", "Meetings"] {
            let lookup = self.search_stamp(module, "test-connection").await;
            warnings.extend(stamp_warning(lookup, |message| {
                format!("SugarCRM {module} cannot be filtered by the stamp field: {message}. Add the text field in Studio to Contacts, Leads and Meetings, or set stampField to \"\" to sync without stamps")
            })?);
        }
        Ok(AccountInfo {
            account: format!("SugarCRM {host} as {name}"),
            warnings,
        })
    }

    async fn find_contacts(&self, lookup: &ContactLookup) -> Result<Vec<CrmContact>> {
        self.find_people("Contacts", "contact", CONTACT_FIELDS, None, lookup)
            .await
    }

    async fn create_contact(&self, customer: &Customer, stamp: &str) -> Result<String> {
        let record = self.person_record(
            "contact",
            CONTACT_FIELDS,
            customer_fields(customer),
            customer,
            true,
            &[],
        );
        self.create("Contacts", self.stamped(record, stamp)).await
    }

    async fn update_contact(&self, crm_id: &str, customer: &Customer) -> Result<()> {
        let existing = match customer.email {
            Some(_) => self.existing_emails("Contacts", crm_id).await?,
            None => vec![],
        };
        let record = self.person_record(
            "contact",
            CONTACT_FIELDS,
            customer_fields(customer),
            customer,
            false,
            &existing,
        );
        self.update("Contacts", crm_id, record).await
    }

    /// Sugar leads are people of their own; converting one makes the contact.
    fn lead_needs_contact(&self) -> bool {
        false
    }

    /// A lead not yet converted with this email, else this phone. Sugar's own duplicate check
    /// (`/Leads/duplicateCheck`) matches on names, account and work phone but not on email, so
    /// the filter API is asked directly.
    async fn find_lead(&self, lead: &Lead, _contact_id: Option<&str>) -> Result<Option<String>> {
        let person = &lead.person;
        let open = json!({"status": {"$not_equals": "Converted"}});
        if let Some(email) = &person.email {
            let lookup = ContactLookup::Email(email.clone());
            let found = self
                .find_people("Leads", "lead", LEAD_FIELDS, Some(open.clone()), &lookup)
                .await?;
            if let Some(lead) = found.into_iter().next() {
                return Ok(Some(lead.crm_id));
            }
        }
        if let Some(phone) = &person.phone {
            let lookup = ContactLookup::Phone(phone.clone());
            let found = self
                .find_people("Leads", "lead", LEAD_FIELDS, Some(open), &lookup)
                .await?;
            let same_person = found
                .into_iter()
                .find(|l| not_someone_else(person.email.as_ref(), l.email.as_deref()));
            return Ok(same_person.map(|l| l.crm_id));
        }
        Ok(None)
    }

    async fn create_lead(
        &self,
        lead: &Lead,
        _contact_id: Option<&str>,
        stamp: &str,
    ) -> Result<String> {
        let record = self.person_record(
            "lead",
            LEAD_FIELDS,
            self.lead_fields(lead),
            &lead.person,
            true,
            &[],
        );
        self.create("Leads", self.stamped(record, stamp)).await
    }

    async fn update_lead(
        &self,
        crm_id: &str,
        lead: &Lead,
        _contact_id: Option<&str>,
    ) -> Result<()> {
        let existing = match lead.person.email {
            Some(_) => self.existing_emails("Leads", crm_id).await?,
            None => vec![],
        };
        let record = self.person_record(
            "lead",
            LEAD_FIELDS,
            self.lead_fields(lead),
            &lead.person,
            false,
            &existing,
        );
        self.update("Leads", crm_id, record).await
    }

    async fn create_appointment(
        &self,
        appointment: &Appointment,
        contact_id: &str,
        stamp: &str,
    ) -> Result<String> {
        let record = self.meeting_record(appointment, record_id(contact_id)?);
        self.create("Meetings", self.stamped(record, stamp)).await
    }

    async fn find_stamped(&self, stamp: &str, record: StampedRecord<'_>) -> Result<Option<String>> {
        let module = match record {
            StampedRecord::Contact => "Contacts",
            StampedRecord::Lead { .. } => "Leads",
            StampedRecord::Appointment { .. } => "Meetings",
        };
        Ok(self
            .search_stamp(module, stamp)
            .await?
            .unwrap_or_default()
            .first()
            .and_then(|r| text(r, "id")))
    }

    /// A reschedule moves `date_start` and the durations; a cancel sets `Not Held`, which Sugar
    /// shows as Canceled, and keeps the meeting on the contact.
    async fn update_appointment(
        &self,
        crm_id: &str,
        appointment: &Appointment,
        contact_id: &str,
        _stamp: &str,
    ) -> Result<()> {
        let record = self.meeting_record(appointment, record_id(contact_id)?);
        self.update("Meetings", crm_id, record).await
    }
}

/// Sugar's datetime form, ISO 8601 with an offset: always UTC, so the instant never depends on
/// the API user's time zone (a time without an offset is read in it).
pub fn sugar_datetime(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

/// The `email` array to send: `address` as the primary one, the others kept (Sugar replaces the
/// whole set with what it is sent, matching addresses case-insensitively).
fn email_array(address: &str, existing: &[Value]) -> Value {
    let mut addresses = vec![json!({"email_address": address, "primary_address": true})];
    addresses.extend(
        existing
            .iter()
            .filter(|e| {
                e["email_address"]
                    .as_str()
                    .is_some_and(|a| !a.eq_ignore_ascii_case(address))
            })
            .map(|e| json!({"email_address": e["email_address"], "primary_address": false})),
    );
    Value::Array(addresses)
}

/// The primary address of a record's `email` array (flags may be booleans or "0"/"1"), else
/// the legacy `email1`.
fn primary_email(record: &Value) -> Option<String> {
    let flag = |v: &Value| {
        v.as_bool()
            .unwrap_or_else(|| v.as_str() == Some("1") || v.as_i64() == Some(1))
    };
    let addresses = record["email"].as_array();
    addresses
        .and_then(|all| {
            all.iter()
                .find(|e| flag(&e["primary_address"]))
                .or_else(|| all.first())
        })
        .and_then(|e| text(e, "email_address"))
        .or_else(|| text(record, "email1"))
}

/// Sugar ids are GUIDs, or other short keys (`seed_sally_id`); anything else is refused.
fn record_id(id: &str) -> Result<&str> {
    if !id.is_empty()
        && id.len() <= 36
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(id)
    } else {
        Err(Error::validation(
            "customerId",
            "is not a valid SugarCRM record id",
        ))
    }
}

fn checked(response: CrmResponse) -> Result<CrmResponse> {
    if response.is_success() {
        Ok(response)
    } else {
        Err(sugar_error(&response))
    }
}

/// Maps Sugar's `{"error": label, "error_message": text}` to ours.
fn sugar_error(response: &CrmResponse) -> Error {
    let label = response.body["error"].as_str().unwrap_or("");
    let message = match response.body["error_message"].as_str() {
        Some(m) if !label.is_empty() => format!("{label}: {m}"),
        Some(m) => m.to_string(),
        None => format!(
            "HTTP {} {}",
            response.status,
            response.text.chars().take(200).collect::<String>()
        ),
    };
    match label {
        // A route that does not exist is a refusal of what we sent, not a missing record.
        "no_method" => Error::CrmRejected { message },
        "not_authorized" | "need_login" | "invalid_grant" => Error::CrmAuth(message),
        "maintenance" | "service_unavailable" => Error::CrmUnavailable(message),
        "edit_conflict" => Error::CrmRejected { message },
        _ => status_error(response, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn datetimes_are_sent_with_a_utc_offset() {
        let at = Utc.with_ymd_and_hms(2025, 11, 2, 17, 0, 0).unwrap();
        assert_eq!(sugar_datetime(at), "2025-11-02T17:00:00+00:00");
    }

    #[test]
    fn an_update_keeps_the_other_addresses_and_makes_ours_primary() {
        let existing = [
            json!({"email_address": "OLD@example.com", "primary_address": true}),
            json!({"email_address": "work@example.com", "primary_address": false}),
        ];
        assert_eq!(
            email_array("old@example.com", &existing),
            json!([{"email_address": "old@example.com", "primary_address": true},
                   {"email_address": "work@example.com", "primary_address": false}])
        );
        let record = json!({"email": [{"email_address": "b@example.com", "primary_address": "0"},
                                      {"email_address": "a@example.com", "primary_address": "1"}]});
        assert_eq!(primary_email(&record).as_deref(), Some("a@example.com"));
        assert_eq!(
            primary_email(&json!({"email1": "c@example.com"})).as_deref(),
            Some("c@example.com")
        );
    }

    #[test]
    fn sugar_errors_map_to_what_a_caller_can_do() {
        let expired = CrmResponse::json(
            401,
            json!({"error": "invalid_grant", "error_message": "The access token provided has expired."}),
        );
        assert!(matches!(sugar_error(&expired), Error::CrmAuth(_)));
        let missing = CrmResponse::json(
            404,
            json!({"error": "not_found", "error_message": "Could not find record: 1 in module: Contacts"}),
        );
        assert!(matches!(sugar_error(&missing), Error::NotFound(_)));
        let no_route = CrmResponse::json(
            404,
            json!({"error": "no_method", "error_message": "Could not find a route with 1 elements"}),
        );
        assert!(matches!(sugar_error(&no_route), Error::CrmRejected { .. }));
        let unknown_field = CrmResponse::json(
            422,
            json!({"error": "invalid_parameter", "error_message": "Unknown field crm_sync_id_c"}),
        );
        assert!(matches!(
            sugar_error(&unknown_field),
            Error::CrmRejected { .. }
        ));
        let maintenance = CrmResponse::json(
            503,
            json!({"error": "maintenance", "error_message": "Maintenance in progress"}),
        );
        assert!(matches!(
            sugar_error(&maintenance),
            Error::CrmUnavailable(_)
        ));
        let limited = CrmResponse::json(
            429,
            json!({"error": "too_many_requests", "error_message": "Too many requests"}),
        );
        assert!(matches!(sugar_error(&limited), Error::RateLimited { .. }));
    }

    #[test]
    fn ids_are_short_keys_only() {
        assert!(record_id("f6b5a3c2-9d1e-11ef-8a0b-0242ac120002").is_ok());
        assert!(record_id("seed_sally_id").is_ok());
        for bad in ["", "../me", "a b", "x?fields=password"] {
            assert!(record_id(bad).is_err(), "{bad}");
        }
    }
}
