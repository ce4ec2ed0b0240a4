//! Zoho CRM v8: Contacts and Leads (search, upsert, update), meetings (the Events module) linked
//! to the contact, and OAuth2 access tokens kept fresh through the shared `OAuthSession`.
//!
//! Auth is `Authorization: Zoho-oauthtoken <access token>`. Hosts, paths, fields and answers
//! follow https://www.zoho.com/crm/developer/docs/api/v8/ (multi-dc, refresh, insert-records,
//! update-records, upsert-records, search-records, get-records, cancel-meetings, get-org-data;
//! events-response) and Zoho's own OpenAPI documents for v8 (github.com/zoho/crm-oas, `v8.0/`).
//! The data-centre hosts are those of Zoho's official CRM SDKs (`dc/*DataCenter`).

use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use chrono_tz::Tz;
use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use serde_json::{Map, Value, json};

use super::http::{CrmHttp, CrmResponse, Idempotency, status_error};
use super::oauth::{AccessGrant, OAuthProvider, OAuthSession, TokenGrant};
use super::{
    AccountInfo, AdapterContext, BulkContact, ContactLookup, CrmAdapter, CrmContact, Outcome,
    StampedRecord, Upserted, appointment_description, customer_fields, has_phone, lead_description,
    map_properties, not_someone_else, property_name, same_email, stamp_field, stamp_warning, text,
};
use crate::connection::{Connection, ConnectionSettings};
use crate::domain::{Appointment, AppointmentStatus, CrmType, Customer, Lead};
use crate::error::{Error, Result};

/// The API version every path uses (`/crm/v8/...`), the current one in Zoho's docs.
pub const API_VERSION: &str = "v8";
pub const DEFAULT_DATA_CENTER: &str = "com";
/// Zoho access tokens live one hour (`expires_in: 3600`).
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Marks an event Zoho would not cancel (see `update_appointment`).
pub const CANCELLED_TITLE_PREFIX: &str = "Cancelled: ";

/// `dataCenter` setting -> (accounts server, API domain). Canada's accounts server is on
/// zohocloud.ca, unlike the others.
pub const DATA_CENTERS: [(&str, &str, &str); 9] = [
    (
        "com",
        "https://accounts.zoho.com",
        "https://www.zohoapis.com",
    ),
    ("eu", "https://accounts.zoho.eu", "https://www.zohoapis.eu"),
    ("in", "https://accounts.zoho.in", "https://www.zohoapis.in"),
    (
        "com.au",
        "https://accounts.zoho.com.au",
        "https://www.zohoapis.com.au",
    ),
    ("jp", "https://accounts.zoho.jp", "https://www.zohoapis.jp"),
    (
        "ca",
        "https://accounts.zohocloud.ca",
        "https://www.zohoapis.ca",
    ),
    ("sa", "https://accounts.zoho.sa", "https://www.zohoapis.sa"),
    ("uk", "https://accounts.zoho.uk", "https://www.zohoapis.uk"),
    (
        "com.cn",
        "https://accounts.zoho.com.cn",
        "https://www.zohoapis.com.cn",
    ),
];

/// Our customer field -> Contacts field.
const CONTACT_FIELDS: &[(&str, &str)] = &[
    ("firstName", "First_Name"),
    ("lastName", "Last_Name"),
    ("email", "Email"),
    ("phone", "Phone"),
    ("address", "Mailing_Street"),
    ("city", "Mailing_City"),
    ("state", "Mailing_State"),
    ("zipCode", "Mailing_Zip"),
    ("country", "Mailing_Country"),
];

/// Our lead field -> Leads field. `source` has no default: `Lead_Source` is a picklist whose
/// values each org defines, so it is written only where the connection maps it.
const LEAD_FIELDS: &[(&str, &str)] = &[
    ("firstName", "First_Name"),
    ("lastName", "Last_Name"),
    ("email", "Email"),
    ("phone", "Phone"),
    ("address", "Street"),
    ("city", "City"),
    ("state", "State"),
    ("zipCode", "Zip_Code"),
    ("country", "Country"),
    ("company", "Company"),
    ("notes", "Description"),
];

/// Our appointment field -> Events field.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("title", "Event_Title"),
    ("notes", "Description"),
    ("location", "Venue"),
];

/// Phone fields read besides the mapped `phone` one.
const OTHER_PHONE_FIELDS: &[&str] = &["Mobile"];

pub struct ZohoAdapter {
    http: CrmHttp,
    session: OAuthSession,
    /// `baseUrl`: an explicit API host (emulator, sandbox) that wins over the token's `api_domain`.
    api_override: Option<String>,
    /// The data centre's API domain, for a token answer that names none.
    default_api: &'static str,
    settings: ConnectionSettings,
    /// A custom text field on Contacts, Leads and Events that holds our stamp; `None` when the
    /// connection turns stamping off (`"stampField": ""`).
    stamp_field: Option<String>,
}

/// The field our stamp goes in unless the connection's `stampField` names another.
pub const DEFAULT_STAMP_FIELD: &str = "CRM_Sync_Id";

/// Records one insert, update or upsert call takes ("You can insert/upsert a maximum of 100
/// records per API call", upsert-records).
pub const MAX_RECORDS_PER_WRITE: usize = 100;

impl ZohoAdapter {
    pub fn new(connection: &Connection, ctx: &AdapterContext) -> Result<Self> {
        let settings = &connection.settings;
        let (accounts, api) = data_center(settings.extra_str("dataCenter")).map_err(|m| {
            Error::ConnectionInvalid {
                id: connection.id_str().to_string(),
                message: m,
            }
        })?;
        let accounts = settings
            .extra_str("accountsUrl")
            .unwrap_or(accounts)
            .trim_end_matches('/');
        let provider = token_provider(accounts);
        Ok(ZohoAdapter {
            http: ctx.http.clone(),
            session: OAuthSession::new(connection, ctx, provider)?,
            api_override: settings
                .base_url
                .as_deref()
                .map(|u| u.trim_end_matches('/').to_string()),
            default_api: api,
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

    /// `GET /{module}/search?criteria=(field:equals:stamp)`; `None` without a stamp field.
    async fn search_stamp(&self, module: &str, stamp: &str) -> Result<Option<Vec<Value>>> {
        let Some(field) = &self.stamp_field else {
            return Ok(None);
        };
        let criteria = format!("({field}:equals:{})", criteria_value(stamp));
        // Zoho's `equals` matches text partially: only the exact stamp counts.
        let fields = format!("id,{field}");
        let found = self.search(module, "criteria", &criteria, &fields).await?;
        Ok(Some(
            found
                .into_iter()
                .filter(|r| r[field.as_str()].as_str() == Some(stamp))
                .collect(),
        ))
    }

    fn api_base<'a>(&'a self, grant: &'a AccessGrant) -> &'a str {
        match &self.api_override {
            Some(base) => base,
            None if !grant.api_base.is_empty() => grant.api_base.trim_end_matches('/'),
            None => self.default_api,
        }
    }

    /// Sends with the session's token; when Zoho refuses the token itself (expired or revoked
    /// early), refreshes once (single-flight across invocations) and sends once more. A 401 means
    /// nothing was done, so the retry is safe even for creates.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<CrmResponse> {
        let grant = self.session.grant().await?;
        let response = self
            .send(&grant, &method, path, query, body, idempotency)
            .await?;
        if !token_refused(&response) {
            return Ok(response);
        }
        let grant = self.session.refresh_after_rejection(&grant).await?;
        self.send(&grant, &method, path, query, body, idempotency)
            .await
    }

    async fn send(
        &self,
        grant: &AccessGrant,
        method: &Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<CrmResponse> {
        let url = format!("{}/crm/{API_VERSION}{path}", self.api_base(grant));
        let auth = format!("Zoho-oauthtoken {}", grant.access_token.expose());
        self.http
            .send(idempotency, |client| {
                let request = client
                    .request(method.clone(), &url)
                    .header(AUTHORIZATION, &auth)
                    .query(query);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await
    }

    /// One record by id; Zoho answers an unknown id with 204 (or `INVALID_DATA` on the id).
    async fn get_record(&self, module: &str, id: &str, fields: &str) -> Result<Option<Value>> {
        let path = format!("/{module}/{}", record_id(id)?);
        let response = self
            .call(
                Method::GET,
                &path,
                &[("fields", fields)],
                None,
                Idempotency::Idempotent,
            )
            .await?;
        match checked(response) {
            Ok(response) => Ok(records_of(&response).into_iter().next()),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /{module}/search?{by}=...`: Zoho matches emails partially and phones in any notation;
    /// no match is 204 with no body.
    async fn search(
        &self,
        module: &str,
        by: &str,
        value: &str,
        fields: &str,
    ) -> Result<Vec<Value>> {
        let path = format!("/{module}/search");
        let response = self
            .call(
                Method::GET,
                &path,
                &[(by, value), ("fields", fields)],
                None,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(records_of(&checked(response)?))
    }

    /// `POST /{module}`: a create, so never repeated blindly.
    async fn insert(&self, module: &str, record: Map<String, Value>) -> Result<Written> {
        let body = json!({ "data": [record] });
        let response = self
            .call(
                Method::POST,
                &format!("/{module}"),
                &[],
                Some(&body),
                Idempotency::NotIdempotent,
            )
            .await?;
        written(&response)
    }

    /// `POST /{module}/upsert` keyed on `duplicate_check_field`. Unlike an insert it is safe to
    /// repeat: a retry after a lost answer finds the record the first attempt made.
    async fn upsert(
        &self,
        module: &str,
        record: Map<String, Value>,
        duplicate_check_field: &str,
    ) -> Result<Written> {
        let body = json!({ "data": [record], "duplicate_check_fields": [duplicate_check_field] });
        let response = self
            .call(
                Method::POST,
                &format!("/{module}/upsert"),
                &[],
                Some(&body),
                Idempotency::Idempotent,
            )
            .await?;
        written(&response)
    }

    async fn update(&self, module: &str, id: &str, record: Map<String, Value>) -> Result<()> {
        let path = format!("/{module}/{}", record_id(id)?);
        let body = json!({ "data": [record] });
        let response = self
            .call(
                Method::PUT,
                &path,
                &[],
                Some(&body),
                Idempotency::Idempotent,
            )
            .await?;
        written(&response).map(|_| ())
    }

    /// `POST /Events/{id}/actions/cancel`: `Ok(false)` when Zoho will not cancel this meeting
    /// (nobody was invited, it has ended, or it is cancelled already).
    async fn cancel_meeting(&self, id: &str) -> Result<bool> {
        let path = format!("/Events/{}/actions/cancel", record_id(id)?);
        let body = json!({"data": [{"send_cancelling_mail": self.send_invitations()}]});
        let response = self
            .call(
                Method::POST,
                &path,
                &[],
                Some(&body),
                Idempotency::Idempotent,
            )
            .await?;
        let refused = ["NOT_ALLOWED", "CANNOT_PERFORM_ACTION"];
        if entry(&response).is_some_and(|e| refused.contains(&code_of(e))) {
            return Ok(false);
        }
        written(&response).map(|_| true)
    }

    /// `sendInvitations`: whether Zoho emails the customer meeting invitations and cancellations.
    /// Off by default: the booking assistant already confirms with the customer.
    fn send_invitations(&self) -> bool {
        match self.settings.extra.get("sendInvitations") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }

    fn default_country(&self) -> &str {
        self.settings.default_country.as_deref().unwrap_or("US")
    }

    /// The `fields` query parameter: every field read back, under the connection's names.
    fn field_list(&self, entity: &str, defaults: &[(&'static str, &'static str)]) -> String {
        let mut names: Vec<&str> = defaults
            .iter()
            .filter_map(|(ours, _)| property_name(entity, ours, defaults, &self.settings))
            .collect();
        names.extend(OTHER_PHONE_FIELDS);
        names.dedup();
        names.join(",")
    }

    /// A person's record. On create, Zoho's mandatory `Last_Name` gets a stand-in when the
    /// caller has none; on update it is left alone so a name typed in Zoho is never overwritten.
    fn person_record(
        &self,
        entity: &str,
        defaults: &[(&'static str, &'static str)],
        mut fields: Vec<(&'static str, String)>,
        person: &Customer,
        creating: bool,
    ) -> Map<String, Value> {
        if creating && person.last_name.is_none() {
            fields.extend(last_name_stand_in(person).map(|s| ("lastName", s)));
        }
        map_properties(entity, &fields, defaults, &self.settings)
    }

    fn contact_record(&self, customer: &Customer, creating: bool) -> Map<String, Value> {
        self.person_record(
            "contact",
            CONTACT_FIELDS,
            customer_fields(customer),
            customer,
            creating,
        )
    }

    fn lead_record(&self, lead: &Lead, creating: bool) -> Map<String, Value> {
        let mut fields = customer_fields(&lead.person);
        // Company is mandatory in Zoho's standard Leads layout; the placeholder only fills a
        // create, so a company a person set in Zoho survives later updates.
        let company = lead.company.clone().or_else(|| {
            creating
                .then(|| self.settings.extra_str("defaultLeadCompany"))
                .flatten()
                .map(str::to_string)
        });
        fields.extend(company.map(|c| ("company", c)));
        // The source goes into the description unless it has a field (mapped) of its own.
        fields.extend(lead_description(lead, LEAD_FIELDS, &self.settings).map(|n| ("notes", n)));
        fields.extend(lead.source.clone().map(|s| ("source", s)));
        self.person_record("lead", LEAD_FIELDS, fields, &lead.person, creating)
    }

    fn event_record(
        &self,
        appointment: &Appointment,
        marked_cancelled: bool,
    ) -> Map<String, Value> {
        let title = if marked_cancelled {
            format!("{CANCELLED_TITLE_PREFIX}{}", appointment.title)
        } else {
            appointment.title.clone()
        };
        let mut fields = vec![("title", title)];
        // The zone it was booked in, in words: the CRM keeps the instant only.
        fields.push(("notes", appointment_description(appointment)));
        fields.extend(appointment.location.clone().map(|l| ("location", l)));
        let mut record = map_properties("appointment", &fields, EVENT_FIELDS, &self.settings);
        record.insert(
            "Start_DateTime".into(),
            zoho_datetime(appointment.start_local()).into(),
        );
        record.insert(
            "End_DateTime".into(),
            zoho_datetime(appointment.end_local()).into(),
        );
        record
    }

    /// A contact or lead record in our vocabulary (`entity` names the field mapping).
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
        let phone_field =
            property_name(entity, "phone", defaults, &self.settings).unwrap_or("Phone");
        let phones: Vec<String> = std::iter::once(phone_field)
            .chain(OTHER_PHONE_FIELDS.iter().copied())
            .filter_map(|name| text(record, name))
            .collect();
        let email = read("email");
        // A last name equal to the email or a phone is the stand-in written on create.
        let last_name = read("lastName")
            .filter(|l| email.as_deref() != Some(l.as_str()) && !phones.contains(l));
        Some(CrmContact {
            crm_id: id_of(record)?,
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

    fn email_field(&self, entity: &str, defaults: &'static [(&'static str, &'static str)]) -> &str {
        property_name(entity, "email", defaults, &self.settings).unwrap_or("Email")
    }
}

#[async_trait]
impl CrmAdapter for ZohoAdapter {
    fn crm_type(&self) -> CrmType {
        CrmType::Zoho
    }

    async fn test_connection(&self) -> Result<AccountInfo> {
        let response = checked(
            self.call(Method::GET, "/org", &[], None, Idempotency::Idempotent)
                .await?,
        )?;
        let org = &response.body["org"][0];
        let name = text(org, "company_name").unwrap_or_else(|| "unnamed".into());
        let domain = text(org, "domain_name")
            .or_else(|| id_of(org))
            .unwrap_or_else(|| "unknown".into());
        // The lookup a lost answer relies on proves the stamp field exists in each module.
        let mut warnings = Vec::new();
        for module in ["Contacts", "Leads", "Events"] {
            let lookup = self.search_stamp(module, "test-connection").await;
            warnings.extend(stamp_warning(lookup, |message| {
                format!("Zoho {module} cannot be searched by the stamp field: {message}. Create the single-line field once in Contacts, Leads and Meetings, or set stampField to \"\" to sync without stamps")
            })?);
        }
        Ok(AccountInfo {
            account: format!("Zoho CRM org {name} ({domain})"),
            warnings,
        })
    }

    async fn find_contacts(&self, lookup: &ContactLookup) -> Result<Vec<CrmContact>> {
        let fields = self.field_list("contact", CONTACT_FIELDS);
        let records = match lookup {
            ContactLookup::Id(id) => self
                .get_record("Contacts", id, &fields)
                .await?
                .into_iter()
                .collect(),
            ContactLookup::Email(email) => {
                self.search("Contacts", "email", email.as_str(), &fields)
                    .await?
            }
            // The national number is contained in every notation of it ("(415) 555-0199",
            // "+1 415 555 0199"); the caller keeps only records equal in E.164.
            ContactLookup::Phone(phone) => {
                self.search("Contacts", "phone", &phone.national_number(), &fields)
                    .await?
            }
        };
        let contacts = records
            .iter()
            .filter_map(|r| self.to_person("contact", CONTACT_FIELDS, r));
        Ok(match lookup {
            // Zoho's email search also matches parts of addresses and secondary emails.
            ContactLookup::Email(email) => contacts
                .filter(|c| same_email(c.email.as_deref(), email.as_str()))
                .collect(),
            _ => contacts.collect(),
        })
    }

    /// With an email, the write is Zoho's upsert keyed on it: records created moments ago may
    /// not be in the search index yet (Zoho answers 204 until they are), so the search that came
    /// first can miss one. The upsert then updates that record instead of duplicating it, and we
    /// report it as the duplicate it is, so the shared flow answers `updated`. Without an email
    /// there is nothing for an upsert to key on and it is a plain insert.
    async fn create_contact(&self, customer: &Customer, stamp: &str) -> Result<String> {
        let record = self.stamped(self.contact_record(customer, true), stamp);
        if customer.email.is_none() {
            return self.insert("Contacts", record).await.map(|w| w.id);
        }
        let key = self.email_field("contact", CONTACT_FIELDS).to_string();
        let written = self.upsert("Contacts", record, &key).await?;
        match written.action.as_deref() {
            Some("update") => Err(Error::CrmDuplicate {
                existing_id: Some(written.id),
                message: "Zoho already held a contact with this email (not yet searchable)".into(),
            }),
            _ => Ok(written.id),
        }
    }

    async fn update_contact(&self, crm_id: &str, customer: &Customer) -> Result<()> {
        self.update("Contacts", crm_id, self.contact_record(customer, false))
            .await
    }

    fn bulk_contact_limit(&self) -> usize {
        MAX_RECORDS_PER_WRITE
    }

    /// `POST /Contacts/upsert` with up to 100 records and `duplicate_check_fields` the email
    /// field, as a single create does: Zoho updates the contact with that email or inserts one
    /// (`action`), so a resend after a lost answer finds what the first made. Zoho answers each
    /// record at its index (200, 207 for a mix, 400 when none succeeded). A customer without a
    /// last name is not sent: an insert needs one, and the stand-in a create uses must not
    /// overwrite an existing contact's, so it is synced alone.
    async fn upsert_contacts(&self, contacts: &[BulkContact<'_>]) -> Result<Vec<Result<Upserted>>> {
        let mut outcomes: Vec<Result<Upserted>> = Vec::with_capacity(contacts.len());
        let (mut sent, mut data) = (Vec::new(), Vec::new());
        for (index, contact) in contacts.iter().enumerate() {
            let customer = contact.customer;
            if customer.email.is_none() || customer.last_name.is_none() {
                outcomes.push(Err(Error::CrmRejected {
                    message: "a Zoho upsert needs an email and a last name; synced alone".into(),
                }));
                continue;
            }
            outcomes.push(Err(Error::CrmUnavailable(
                "Zoho's upsert answered nothing for this contact".into(),
            )));
            let record = self.stamped(self.contact_record(customer, true), &contact.plan.stamp);
            data.push(Value::Object(record));
            sent.push(index);
        }
        if data.is_empty() {
            return Ok(outcomes);
        }
        let key = self.email_field("contact", CONTACT_FIELDS).to_string();
        let body = json!({ "data": data, "duplicate_check_fields": [key] });
        let response = self
            .call(
                Method::POST,
                "/Contacts/upsert",
                &[],
                Some(&body),
                Idempotency::Idempotent,
            )
            .await?;
        let answers = match response.body.get("data").and_then(Value::as_array) {
            Some(answers) if answers.len() == sent.len() => answers.clone(),
            _ => return Err(zoho_error(&response)),
        };
        for (index, answer) in sent.into_iter().zip(answers) {
            let one = CrmResponse {
                body: json!({ "data": [answer] }),
                ..response.clone()
            };
            outcomes[index] = written(&one).map(|written| Upserted {
                crm_id: written.id,
                outcome: match written.action.as_deref() {
                    Some("update") => Outcome::Updated,
                    _ => Outcome::Created,
                },
            });
        }
        Ok(outcomes)
    }

    /// Zoho leads are people in their own module; converting one makes the contact.
    fn lead_needs_contact(&self) -> bool {
        false
    }

    async fn find_lead(&self, lead: &Lead, _contact_id: Option<&str>) -> Result<Option<String>> {
        let person = &lead.person;
        let fields = self.field_list("lead", LEAD_FIELDS);
        let to_person = |r: &Value| self.to_person("lead", LEAD_FIELDS, r);
        if let Some(email) = &person.email {
            let found = self
                .search("Leads", "email", email.as_str(), &fields)
                .await?;
            let exact = found
                .iter()
                .filter_map(to_person)
                .find(|l| same_email(l.email.as_deref(), email.as_str()));
            if let Some(lead) = exact {
                return Ok(Some(lead.crm_id));
            }
        }
        if let Some(phone) = &person.phone {
            let found = self
                .search("Leads", "phone", &phone.national_number(), &fields)
                .await?;
            let same_person = found.iter().filter_map(to_person).find(|l| {
                has_phone(l, phone, self.default_country())
                    && not_someone_else(person.email.as_ref(), l.email.as_deref())
            });
            return Ok(same_person.map(|l| l.crm_id));
        }
        Ok(None)
    }

    /// Upserted on the email like contacts; the shared lead flow has no duplicate path, so an
    /// upsert that found a not-yet-searchable lead is reported as the lead it wrote.
    async fn create_lead(
        &self,
        lead: &Lead,
        _contact_id: Option<&str>,
        stamp: &str,
    ) -> Result<String> {
        let record = self.stamped(self.lead_record(lead, true), stamp);
        let written = match &lead.person.email {
            Some(_) => {
                let key = self.email_field("lead", LEAD_FIELDS).to_string();
                self.upsert("Leads", record, &key).await?
            }
            None => self.insert("Leads", record).await?,
        };
        Ok(written.id)
    }

    async fn update_lead(
        &self,
        crm_id: &str,
        lead: &Lead,
        _contact_id: Option<&str>,
    ) -> Result<()> {
        self.update("Leads", crm_id, self.lead_record(lead, false))
            .await
    }

    /// A meeting with the contact as `Who_Id` (a contact needs no `$se_module`; that goes with
    /// `What_Id`) and as participant, so it shows on the contact and can be cancelled later.
    async fn create_appointment(
        &self,
        appointment: &Appointment,
        contact_id: &str,
        stamp: &str,
    ) -> Result<String> {
        let contact_id = record_id(contact_id)?;
        let cancelled = appointment.status == AppointmentStatus::Cancelled;
        let mut record = self.stamped(self.event_record(appointment, cancelled), stamp);
        record.insert("Who_Id".into(), json!({ "id": contact_id }));
        record.insert(
            "Participants".into(),
            json!([{"type": "contact", "participant": contact_id}]),
        );
        record.insert("$send_notification".into(), self.send_invitations().into());
        self.insert("Events", record).await.map(|w| w.id)
    }

    /// Zoho's search index trails writes by seconds: a reconcile that soon after a lost answer
    /// can miss the record (documented in the README).
    async fn find_stamped(&self, stamp: &str, record: StampedRecord<'_>) -> Result<Option<String>> {
        let module = match record {
            StampedRecord::Contact => "Contacts",
            StampedRecord::Lead { .. } => "Leads",
            StampedRecord::Appointment { .. } => "Events",
        };
        Ok(self
            .search_stamp(module, stamp)
            .await?
            .unwrap_or_default()
            .first()
            .and_then(id_of))
    }

    /// A cancel is Zoho's own: the cancel-meeting action keeps the event and marks it
    /// `$event_cancelled`, so its history stays with the contact (a delete would lose it, and
    /// the next resend would book it again). Zoho refuses that action for meetings whose
    /// attendees were never invited or that have already ended; those keep their event too and
    /// say it in the title, the one place a person looking at the calendar sees it.
    async fn update_appointment(
        &self,
        crm_id: &str,
        appointment: &Appointment,
        contact_id: &str,
        _stamp: &str,
    ) -> Result<()> {
        let cancelled = appointment.status == AppointmentStatus::Cancelled;
        if cancelled && self.cancel_meeting(crm_id).await? {
            return Ok(());
        }
        let mut record = self.event_record(appointment, cancelled);
        record.insert("Who_Id".into(), json!({ "id": record_id(contact_id)? }));
        self.update("Events", crm_id, record).await
    }
}

/// The token endpoint of the accounts server `accounts`, as a refresh and an authorization-code
/// exchange both use it.
pub fn token_provider(accounts: &str) -> OAuthProvider {
    OAuthProvider {
        token_url: format!("{}/oauth/v2/token", accounts.trim_end_matches('/')),
        grant: TokenGrant::RefreshToken,
        api_base_field: Some("api_domain"),
        api_base_setting: "apiDomain",
        default_lifetime: Some(ACCESS_TOKEN_LIFETIME),
    }
}

/// Resolves the `dataCenter` setting (default `com`; `us`, `au` and `cn` are accepted too).
pub fn data_center(
    setting: Option<&str>,
) -> std::result::Result<(&'static str, &'static str), String> {
    let wanted = setting
        .unwrap_or(DEFAULT_DATA_CENTER)
        .trim()
        .trim_start_matches('.')
        .to_ascii_lowercase();
    let wanted = match wanted.as_str() {
        "us" => "com",
        "au" => "com.au",
        "cn" => "com.cn",
        other => other,
    };
    DATA_CENTERS
        .iter()
        .find(|(dc, _, _)| *dc == wanted)
        .map(|(_, accounts, api)| (*accounts, *api))
        .ok_or_else(|| {
            let known: Vec<&str> = DATA_CENTERS.iter().map(|(dc, _, _)| *dc).collect();
            format!(
                "dataCenter '{wanted}' is not a Zoho data centre; use one of {}",
                known.join(", ")
            )
        })
}

/// Zoho's datetime form, `yyyy-MM-ddTHH:mm:ss±HH:mm`, in the appointment's own zone so the wall
/// time a person reads in Zoho is the one booked.
pub fn zoho_datetime(at: DateTime<Tz>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// Zoho record ids are numbers (up to 19 digits); anything else is refused, not escaped.
fn record_id(id: &str) -> Result<&str> {
    if !id.is_empty() && id.len() <= 19 && id.chars().all(|c| c.is_ascii_digit()) {
        Ok(id)
    } else {
        Err(Error::validation(
            "customerId",
            "is not a valid Zoho record id",
        ))
    }
}

/// Whether Zoho refused the access token itself, which a refresh can fix (a missing scope cannot).
fn token_refused(response: &CrmResponse) -> bool {
    response.status == 401 && code_of(&response.body) != "OAUTH_SCOPE_MISMATCH"
}

/// The stand-in last name of a new record: the email or phone a person would look it up by.
fn last_name_stand_in(person: &Customer) -> Option<String> {
    person
        .email
        .as_ref()
        .map(|e| e.as_str().to_string())
        .or_else(|| person.phone.as_ref().map(|p| p.as_str().to_string()))
}

/// What a write answered for its one record.
#[derive(Debug, Clone, PartialEq)]
struct Written {
    id: String,
    /// `insert` or `update`, for upserts.
    action: Option<String>,
}

fn entry(response: &CrmResponse) -> Option<&Value> {
    response.body.get("data")?.as_array()?.first()
}

fn code_of(value: &Value) -> &str {
    value.get("code").and_then(Value::as_str).unwrap_or("")
}

/// A write's per-record answer. Zoho reports record errors inside `data[]`, in 2xx answers too.
fn written(response: &CrmResponse) -> Result<Written> {
    match entry(response) {
        Some(record)
            if response.is_success()
                && record.get("status").and_then(Value::as_str) == Some("success") =>
        {
            let id = id_of(&record["details"]).ok_or_else(|| {
                Error::CrmUnavailable("Zoho answered a write without a record id".into())
            })?;
            Ok(Written {
                id,
                action: text(record, "action"),
            })
        }
        _ => Err(zoho_error(response)),
    }
}

/// The answer itself when it is a success, else its error.
fn checked(response: CrmResponse) -> Result<CrmResponse> {
    if response.is_success() {
        Ok(response)
    } else {
        Err(zoho_error(&response))
    }
}

/// The records of a read; a 204 has none.
fn records_of(response: &CrmResponse) -> Vec<Value> {
    response
        .body
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn id_of(value: &Value) -> Option<String> {
    match value.get("id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Maps Zoho's error to ours: `{"code","details","message","status":"error"}` at the top level,
/// or the first failed record of `data[]`.
fn zoho_error(response: &CrmResponse) -> Error {
    let failed = entry(response)
        .filter(|e| e.get("status").and_then(Value::as_str) == Some("error"))
        .unwrap_or(&response.body);
    let code = code_of(failed);
    let details = &failed["details"];
    let mut message = match text(failed, "message") {
        Some(m) if !code.is_empty() => format!("{code}: {m}"),
        Some(m) => m,
        None => format!(
            "HTTP {} {}",
            response.status,
            response.text.chars().take(200).collect::<String>()
        ),
    };
    if let Some(field) = text(details, "api_name") {
        message = format!("{message} (field {field})");
    }
    let names_the_path_id = details.get("resource_path_index").is_some()
        || text(details, "api_name").as_deref() == Some("id")
        || (details.get("id").is_some() && details.get("api_name").is_none());
    match code {
        _ if response.status == 429 || code == "TOO_MANY_REQUESTS" => Error::RateLimited {
            retry_after: response.retry_after().or_else(|| {
                details
                    .get("retry_after")
                    .and_then(Value::as_u64)
                    .map(Duration::from_secs)
            }),
        },
        "INVALID_TOKEN"
        | "AUTHENTICATION_FAILURE"
        | "OAUTH_SCOPE_MISMATCH"
        | "NO_PERMISSION"
        | "UNAUTHORIZED" => Error::CrmAuth(message),
        "DUPLICATE_DATA" => Error::CrmDuplicate {
            existing_id: id_of(details).or_else(|| id_of(&details["duplicate_record"])),
            message,
        },
        "INVALID_DATA" if names_the_path_id => Error::NotFound("the Zoho record".into()),
        "INTERNAL_ERROR" => Error::CrmUnavailable(message),
        _ if response.status >= 500 => status_error(response, message),
        // Record errors (MANDATORY_NOT_FOUND, INVALID_DATA, NOT_ALLOWED…) and a wrong path
        // (INVALID_URL_PATTERN, INVALID_MODULE) are refusals of what we sent, not a missing record.
        _ if !code.is_empty() => Error::CrmRejected { message },
        _ => status_error(response, message),
    }
}

/// A value inside search `criteria`: Zoho wants `(`, `)`, `,` and `\` escaped with a backslash.
fn criteria_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '(' | ')' | ',' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn datetimes_carry_the_offset_of_the_appointment_zone_across_dst() {
        let at = |zone: Tz, y, m, d, h| {
            zoho_datetime(
                Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
                    .unwrap()
                    .with_timezone(&zone),
            )
        };
        assert_eq!(
            at(chrono_tz::America::New_York, 2025, 7, 1, 14),
            "2025-07-01T10:00:00-04:00"
        );
        assert_eq!(
            at(chrono_tz::America::New_York, 2025, 12, 1, 15),
            "2025-12-01T10:00:00-05:00"
        );
        assert_eq!(
            at(chrono_tz::Asia::Kolkata, 2025, 7, 1, 4),
            "2025-07-01T09:30:00+05:30"
        );
        assert_eq!(at(Tz::UTC, 2025, 7, 1, 4), "2025-07-01T04:00:00+00:00");
    }

    #[test]
    fn the_data_centre_names_both_hosts() {
        assert_eq!(
            data_center(None).unwrap(),
            ("https://accounts.zoho.com", "https://www.zohoapis.com")
        );
        assert_eq!(
            data_center(Some("EU")).unwrap(),
            ("https://accounts.zoho.eu", "https://www.zohoapis.eu")
        );
        assert_eq!(
            data_center(Some("ca")).unwrap(),
            ("https://accounts.zohocloud.ca", "https://www.zohoapis.ca")
        );
        assert_eq!(
            data_center(Some("au")).unwrap().1,
            "https://www.zohoapis.com.au"
        );
        assert!(data_center(Some("mars")).unwrap_err().contains("com.cn"));
    }

    #[test]
    fn record_errors_inside_a_success_status_are_errors() {
        let mandatory = CrmResponse::json(
            201,
            json!({"data": [{"code": "MANDATORY_NOT_FOUND", "details": {"api_name": "Company", "json_path": "$.data[0].Company"},
                "message": "required field not found", "status": "error"}]}),
        );
        match written(&mandatory).unwrap_err() {
            Error::CrmRejected { message } => assert!(message.contains("Company"), "{message}"),
            other => panic!("{other:?}"),
        }
        let duplicate = CrmResponse::json(
            400,
            json!({"data": [{"code": "DUPLICATE_DATA", "details": {"api_name": "Email", "json_path": "$.data[0].Email",
                "id": "4150868000000376008", "duplicate_record": {"id": "4150868000000376008"}, "more_records": false},
                "message": "duplicate data", "status": "error"}]}),
        );
        assert!(matches!(written(&duplicate).unwrap_err(),
            Error::CrmDuplicate { existing_id: Some(id), .. } if id == "4150868000000376008"));
        let ok = CrmResponse::json(
            200,
            json!({"data": [{"code": "SUCCESS", "duplicate_field": "Email", "action": "update",
                "details": {"id": "41"}, "message": "record updated", "status": "success"}]}),
        );
        assert_eq!(
            written(&ok).unwrap(),
            Written {
                id: "41".into(),
                action: Some("update".into())
            }
        );
    }

    #[test]
    fn top_level_errors_map_to_what_a_caller_can_do() {
        let expired = CrmResponse::json(
            401,
            json!({"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"}),
        );
        assert!(token_refused(&expired));
        assert!(matches!(zoho_error(&expired), Error::CrmAuth(_)));
        let scope = CrmResponse::json(
            401,
            json!({"code": "OAUTH_SCOPE_MISMATCH", "details": {}, "message": "invalid oauth scope to access this URL", "status": "error"}),
        );
        assert!(!token_refused(&scope));
        let limited = CrmResponse::json(
            429,
            json!({"code": "TOO_MANY_REQUESTS", "details": {"retry_after": 60}, "message": "Rate limit exceeded", "status": "error"}),
        );
        assert_eq!(
            zoho_error(&limited),
            Error::RateLimited {
                retry_after: Some(Duration::from_secs(60))
            }
        );
        let unknown_id = CrmResponse::json(
            400,
            json!({"data": [{"code": "INVALID_DATA", "details": {"resource_path_index": 1}, "message": "invalid record id", "status": "error"}]}),
        );
        assert!(matches!(zoho_error(&unknown_id), Error::NotFound(_)));
        let bad_path = CrmResponse::json(
            404,
            json!({"code": "INVALID_URL_PATTERN", "details": {}, "message": "Please check if the URL trying to access is a correct one", "status": "error"}),
        );
        assert!(matches!(zoho_error(&bad_path), Error::CrmRejected { .. }));
        let down = CrmResponse::json(
            500,
            json!({"code": "INTERNAL_ERROR", "details": {}, "message": "Internal Server Error", "status": "error"}),
        );
        assert!(matches!(zoho_error(&down), Error::CrmUnavailable(_)));
    }

    #[test]
    fn record_ids_are_digits_only() {
        assert_eq!(
            record_id("4150868000000376008").unwrap(),
            "4150868000000376008"
        );
        for bad in ["", "41/../org", "abc", "12345678901234567890"] {
            assert!(record_id(bad).is_err(), "{bad}");
        }
    }
}
