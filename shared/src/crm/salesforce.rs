//! Salesforce REST API: Contact, Lead and Event (linked to the contact by `WhoId`), OAuth2.
//!
//! Sources (developer.salesforce.com): REST resources query, search, sObject rows, sObject rows
//! by external ID (https://developer.salesforce.com/docs/platform/api-rest/guide/dome-upsert.html)
//! and limits; status codes and error bodies
//! (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm);
//! SOQL string escapes (https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select_quotedstringescapes.htm);
//! the Event object (https://developer.salesforce.com/docs/platform/object-reference/references/standard-objects/object-event.html);
//! the refresh-token flow (https://help.salesforce.com/apex/HTViewHelpDoc?id=remoteaccess_oauth_refresh_token_flow.htm).

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::http::{CrmHttp, CrmResponse, Idempotency, status_error};
use super::oauth::{AccessGrant, OAuthProvider, OAuthSession, TokenGrant};
use super::{
    AccountInfo, AdapterContext, BulkContact, ContactLookup, CrmAdapter, CrmContact, Outcome,
    StampedRecord, Upserted, appointment_description, customer_fields, map_properties,
    property_name, same_email, stamp_field, stamp_warning, text,
};
use crate::connection::{Connection, ConnectionSettings};
use crate::domain::{Appointment, AppointmentStatus, CrmType, Customer, E164Phone, Lead};
use crate::error::{Error, Result};

/// Records one sObject Collections call takes ("up to 200 objects", resources-composite-sobjects-collections).
pub const COLLECTION_LIMIT: usize = 200;
/// Characters of quoted values one SOQL `IN` list carries: the query travels in the URL, which
/// Salesforce caps at 16,384 bytes with the headers (URL-encoded, 8,000 characters of emails
/// take about 9,500).
const IN_LIST_CHARS: usize = 8000;

/// The REST API version every path is pinned to (Winter '25).
pub const API_VERSION: &str = "v62.0";
pub const DEFAULT_LOGIN_URL: &str = "https://login.salesforce.com";
/// What Salesforce itself (Web-to-Lead) puts in a required name or company nobody gave.
pub const NOT_PROVIDED: &str = "[not provided]";
/// Event has no status; a cancel is marked in the Subject (and the time shown as free).
pub const CANCELLED_PREFIX: &str = "Cancelled: ";
const SUBJECT_MAX_CHARS: usize = 255;

/// Our customer field -> Contact field.
const CONTACT_FIELDS: &[(&str, &str)] = &[
    ("firstName", "FirstName"),
    ("lastName", "LastName"),
    ("email", "Email"),
    ("phone", "Phone"),
    ("address", "MailingStreet"),
    ("city", "MailingCity"),
    ("state", "MailingState"),
    ("zipCode", "MailingPostalCode"),
    ("country", "MailingCountry"),
];

/// Our lead field -> Lead field.
const LEAD_FIELDS: &[(&str, &str)] = &[
    ("firstName", "FirstName"),
    ("lastName", "LastName"),
    ("email", "Email"),
    ("phone", "Phone"),
    ("address", "Street"),
    ("city", "City"),
    ("state", "State"),
    ("zipCode", "PostalCode"),
    ("country", "Country"),
    ("company", "Company"),
    ("source", "LeadSource"),
    ("notes", "Description"),
];

/// Our appointment field -> Event field (times, contact and cancel marks are not remappable).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("title", "Subject"),
    ("notes", "Description"),
    ("location", "Location"),
];

pub struct SalesforceAdapter {
    http: CrmHttp,
    session: OAuthSession,
    settings: ConnectionSettings,
    country: String,
    contact_external_id_field: Option<String>,
    /// A text field (External ID) on Contact, Lead and Event (an Activity custom field) that
    /// holds our stamp; `None` when the connection turns stamping off (`"stampField": ""`).
    stamp_field: Option<String>,
}

/// The field our stamp goes in unless the connection's `stampField` names another.
pub const DEFAULT_STAMP_FIELD: &str = "CrmSyncId__c";

impl SalesforceAdapter {
    pub fn new(connection: &Connection, ctx: &AdapterContext) -> Result<Self> {
        let invalid = |message: String| Error::ConnectionInvalid {
            id: connection.id_str().to_string(),
            message,
        };
        let settings = &connection.settings;
        let login_url = login_url(settings.extra_str("loginUrl")).map_err(&invalid)?;
        // Field names go into SOQL and URL paths, so only plain API names are accepted.
        let contact_external_id_field = settings
            .extra_str("contactExternalIdField")
            .map(|f| api_name(f).map(str::to_string))
            .transpose()
            .map_err(&invalid)?;
        let stamp_field = stamp_field(settings, "stampField", DEFAULT_STAMP_FIELD)
            .map(|f| api_name(&f).map(str::to_string))
            .transpose()
            .map_err(&invalid)?;
        for entity in ["contact", "lead", "appointment"] {
            for name in settings
                .field_mappings
                .get(entity)
                .into_iter()
                .flat_map(|m| m.values())
            {
                api_name(name).map_err(&invalid)?;
            }
        }
        let session = OAuthSession::new(connection, ctx, token_provider(&login_url))?;
        Ok(SalesforceAdapter {
            http: ctx.http.clone(),
            session,
            settings: settings.clone(),
            country: settings
                .validation_defaults()
                .map(|d| d.country)
                .unwrap_or_else(|_| "US".into()),
            contact_external_id_field,
            stamp_field,
        })
    }

    /// The records of `sobject` carrying `stamp` (SOQL reads the database, not a search index).
    async fn stamped(&self, sobject: &str, stamp: &str) -> Result<Option<Vec<Value>>> {
        let Some(field) = &self.stamp_field else {
            return Ok(None);
        };
        let soql = format!(
            "SELECT Id FROM {sobject} WHERE {field} = {} LIMIT 2",
            soql_literal(stamp)
        );
        self.query(&soql).await.map(Some)
    }

    /// Sends with the current access token; on INVALID_SESSION_ID refreshes once and sends again.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<CrmResponse> {
        let grant = self.session.grant().await?;
        let mut response = self
            .send(&grant, &method, path, query, body, idempotency)
            .await?;
        if session_invalid(&response) {
            // Salesforce did nothing with a request it refused to authenticate: resending is safe.
            let grant = self.session.refresh_after_rejection(&grant).await?;
            response = self
                .send(&grant, &method, path, query, body, idempotency)
                .await?;
        }
        if response.is_success() {
            Ok(response)
        } else {
            Err(salesforce_error(&response))
        }
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
        let url = format!("{}{path}", grant.api_base.trim_end_matches('/'));
        self.http
            .send(idempotency, |client| {
                let request = client
                    .request(method.clone(), &url)
                    .bearer_auth(grant.access_token.expose())
                    .query(query);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await
    }

    async fn query(&self, soql: &str) -> Result<Vec<Value>> {
        let path = format!("/services/data/{API_VERSION}/query/");
        let response = self
            .call(
                Method::GET,
                &path,
                &[("q", soql)],
                None,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(array(&response.body, "records"))
    }

    async fn search(&self, sosl: &str) -> Result<Vec<Value>> {
        let path = format!("/services/data/{API_VERSION}/search/");
        let response = self
            .call(
                Method::GET,
                &path,
                &[("q", sosl)],
                None,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(array(&response.body, "searchRecords"))
    }

    async fn create(
        &self,
        sobject: &str,
        mut record: Map<String, Value>,
        stamp: &str,
    ) -> Result<String> {
        if let Some(field) = &self.stamp_field {
            record.insert(field.clone(), stamp.into());
        }
        let path = format!("/services/data/{API_VERSION}/sobjects/{sobject}");
        let response = self
            .call(
                Method::POST,
                &path,
                &[],
                Some(&Value::Object(record)),
                Idempotency::NotIdempotent,
            )
            .await?;
        record_id(&response)
    }

    async fn update(&self, sobject: &str, id: &str, record: Map<String, Value>) -> Result<()> {
        let id = record_id_segment(id).ok_or_else(|| Error::NotFound(format!("{sobject} {id}")))?;
        let path = format!("/services/data/{API_VERSION}/sobjects/{sobject}/{id}");
        self.call(
            Method::PATCH,
            &path,
            &[],
            Some(&Value::Object(record)),
            Idempotency::Idempotent,
        )
        .await
        .map(|_| ())
    }

    /// Contact fields to read: every mapped customer field and the mobile phone.
    fn contact_field_names(&self) -> Vec<&str> {
        let mut names = vec!["Id"];
        for (ours, _) in CONTACT_FIELDS {
            if let Some(name) = property_name("contact", ours, CONTACT_FIELDS, &self.settings) {
                names.push(name);
            }
        }
        names.push("MobilePhone");
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.to_ascii_lowercase()));
        names
    }

    fn contact_record(&self, customer: &Customer, creating: bool) -> Map<String, Value> {
        let mut record = map_properties(
            "contact",
            &customer_fields(customer),
            CONTACT_FIELDS,
            &self.settings,
        );
        if creating {
            // LastName is required on Contact.
            record
                .entry("LastName")
                .or_insert_with(|| NOT_PROVIDED.into());
        }
        record
    }

    fn to_contact(&self, record: &Value) -> Option<CrmContact> {
        let read = |ours: &str| {
            property_name("contact", ours, CONTACT_FIELDS, &self.settings)
                .and_then(|name| text(record, name))
        };
        let mut phones: Vec<String> = Vec::new();
        for name in [
            property_name("contact", "phone", CONTACT_FIELDS, &self.settings).unwrap_or("Phone"),
            "MobilePhone",
        ] {
            if let Some(phone) = text(record, name).filter(|p| !phones.contains(p)) {
                phones.push(phone);
            }
        }
        Some(CrmContact {
            crm_id: text(record, "Id")?,
            first_name: read("firstName"),
            // Our own placeholder (or Web-to-Lead's) is no one's name.
            last_name: read("lastName").filter(|n| n != NOT_PROVIDED),
            email: read("email"),
            phones,
            address: read("address"),
            city: read("city"),
            state: read("state"),
            zip_code: read("zipCode"),
            country: read("country"),
        })
    }

    fn lead_record(&self, lead: &Lead, creating: bool) -> Map<String, Value> {
        let mut fields = customer_fields(&lead.person);
        fields.extend(lead.company.clone().map(|c| ("company", c)));
        fields.extend(lead.source.clone().map(|s| ("source", s)));
        fields.extend(lead.notes.clone().map(|n| ("notes", n)));
        let mut record = map_properties("lead", &fields, LEAD_FIELDS, &self.settings);
        if creating {
            // LastName and Company are required on Lead (Company unless Person Accounts are on);
            // an update leaves what the lead has rather than overwriting it with a placeholder.
            record
                .entry("LastName")
                .or_insert_with(|| NOT_PROVIDED.into());
            let company = self
                .settings
                .extra_str("defaultLeadCompany")
                .filter(|c| !c.trim().is_empty())
                .unwrap_or(NOT_PROVIDED);
            record.entry("Company").or_insert_with(|| company.into());
        }
        record
    }

    fn event_record(&self, appointment: &Appointment, contact_id: &str) -> Map<String, Value> {
        let cancelled = appointment.status == AppointmentStatus::Cancelled;
        let subject = if cancelled {
            format!("{CANCELLED_PREFIX}{}", appointment.title)
        } else {
            appointment.title.clone()
        };
        // Salesforce shows times in each viewer's zone; the zone it was booked in is kept for people.
        let mut fields = vec![
            ("title", subject.chars().take(SUBJECT_MAX_CHARS).collect()),
            ("notes", appointment_description(appointment)),
        ];
        fields.extend(appointment.location.clone().map(|l| ("location", l)));
        let mut record = map_properties("appointment", &fields, EVENT_FIELDS, &self.settings);
        let (start, end) = (appointment.window.start(), appointment.window.end());
        record.insert("WhoId".into(), contact_id.into());
        record.insert("IsAllDayEvent".into(), false.into());
        record.insert("StartDateTime".into(), utc(start).into());
        record.insert("EndDateTime".into(), utc(end).into());
        // Both may be given when they agree; a window of whole minutes always does.
        if (end - start).num_seconds() % 60 == 0 {
            record.insert(
                "DurationInMinutes".into(),
                appointment.window.duration_minutes().into(),
            );
        }
        // A cancelled booking no longer holds the owner's time.
        record.insert(
            "ShowAs".into(),
            if cancelled { "Free" } else { "Busy" }.into(),
        );
        record
    }
}

#[async_trait]
impl CrmAdapter for SalesforceAdapter {
    fn crm_type(&self) -> CrmType {
        CrmType::Salesforce
    }

    /// `limits` needs a valid token (the versions list does not) and says how much API is left.
    async fn test_connection(&self) -> Result<AccountInfo> {
        let path = format!("/services/data/{API_VERSION}/limits");
        let response = self
            .call(Method::GET, &path, &[], None, Idempotency::Idempotent)
            .await?;
        let instance = self.session.grant().await?.api_base;
        let daily = &response.body["DailyApiRequests"];
        let account = match (daily["Remaining"].as_u64(), daily["Max"].as_u64()) {
            (Some(remaining), Some(max)) => format!(
                "Salesforce org at {instance} ({remaining} of {max} daily API requests left)"
            ),
            _ => format!("Salesforce org at {instance}"),
        };
        // The lookup a lost answer relies on proves the stamp field exists on each object.
        let mut warnings = Vec::new();
        for sobject in ["Contact", "Lead", "Event"] {
            let lookup = self.stamped(sobject, "").await;
            warnings.extend(stamp_warning(lookup, |message| {
                format!("Salesforce {sobject} cannot hold the stamp: {message}. Create the text field once (External ID, unique) on Contact, Lead and Activity, or set stampField to \"\" to sync without stamps")
            })?);
        }
        Ok(AccountInfo { account, warnings })
    }

    async fn find_contacts(&self, lookup: &ContactLookup) -> Result<Vec<CrmContact>> {
        let fields = self.contact_field_names();
        let records = match lookup {
            ContactLookup::Id(id) => {
                // Not shaped like a record id: no record can have it.
                let Some(id) = record_id_segment(id) else {
                    return Ok(vec![]);
                };
                let path = format!("/services/data/{API_VERSION}/sobjects/Contact/{id}");
                let joined = fields.join(",");
                match self
                    .call(
                        Method::GET,
                        &path,
                        &[("fields", joined.as_str())],
                        None,
                        Idempotency::Idempotent,
                    )
                    .await
                {
                    Ok(response) => vec![response.body],
                    Err(Error::NotFound(_)) => vec![],
                    Err(e) => return Err(e),
                }
            }
            ContactLookup::Email(email) => {
                let field = property_name("contact", "email", CONTACT_FIELDS, &self.settings)
                    .unwrap_or("Email");
                let soql = format!(
                    "SELECT {} FROM Contact WHERE {field} = {} LIMIT 10",
                    fields.join(", "),
                    soql_literal(email.as_str())
                );
                self.query(&soql).await?
            }
            ContactLookup::Phone(phone) => {
                // Phone fields hold what was typed, so SOQL equality misses; SOSL's phone search
                // compares digits. The caller keeps only numbers equal in E.164. Note SOSL reads
                // a search index that trails recent writes.
                let sosl = format!(
                    "FIND {{{}}} IN PHONE FIELDS RETURNING Contact({}) LIMIT 10",
                    phone_search_terms(phone).join(" OR "),
                    fields.join(", ")
                );
                self.search(&sosl).await?
            }
        };
        Ok(records.iter().filter_map(|r| self.to_contact(r)).collect())
    }

    async fn create_contact(&self, customer: &Customer, stamp: &str) -> Result<String> {
        let mut record = self.contact_record(customer, true);
        let Some(field) = &self.contact_external_id_field else {
            return self.create("Contact", record, stamp).await;
        };
        if let Some(stamp_field) = &self.stamp_field {
            record.insert(stamp_field.clone(), stamp.into());
        }
        // Upsert by our key for the person: repeating it cannot create a second contact. The key
        // is hashed because values ending like some file extensions (".inc") are answered 404.
        let key = crate::store::sha256_hex(customer.source_key().as_bytes());
        let path = format!("/services/data/{API_VERSION}/sobjects/Contact/{field}/{key}");
        let response = self
            .call(
                Method::PATCH,
                &path,
                &[],
                Some(&Value::Object(record)),
                Idempotency::Idempotent,
            )
            .await?;
        record_id(&response)
    }

    async fn update_contact(&self, crm_id: &str, customer: &Customer) -> Result<()> {
        self.update("Contact", crm_id, self.contact_record(customer, false))
            .await
    }

    fn bulk_contact_limit(&self) -> usize {
        COLLECTION_LIMIT
    }

    /// Up to 200 contacts in a few calls: SOQL reads the contacts these emails (and, after a
    /// lost answer, these stamps) already name, `IN` lists of about 8,000 characters a query;
    /// then one sObject Collections update (`PATCH /composite/sobjects`) of those found and one
    /// create (`POST /composite/sobjects`, `allOrNone` false, each stamped and keyed as a single
    /// create is) of the rest. Each collection answers one result per record, in order. An email
    /// several contacts hold is ambiguous, as a single sync's would be.
    async fn upsert_contacts(&self, contacts: &[BulkContact<'_>]) -> Result<Vec<Result<Upserted>>> {
        let email_field = property_name("contact", "email", CONTACT_FIELDS, &self.settings)
            .unwrap_or("Email")
            .to_string();
        let mut fields = self.contact_field_names();
        if let Some(stamp) = &self.stamp_field {
            fields.push(stamp);
        }
        let select = format!("SELECT {} FROM Contact WHERE", fields.join(", "));
        let emails: Vec<&str> = contacts
            .iter()
            .filter_map(|c| c.customer.email.as_ref().map(|e| e.as_str()))
            .collect();
        let mut found = Vec::new();
        for list in in_lists(&emails) {
            found.extend(
                self.query(&format!("{select} {email_field} IN ({list})"))
                    .await?,
            );
        }
        if let Some(stamp_field) = &self.stamp_field {
            let stamps: Vec<&str> = contacts
                .iter()
                .filter(|c| c.plan.reconcile)
                .map(|c| c.plan.stamp.as_str())
                .collect();
            for list in in_lists(&stamps) {
                found.extend(
                    self.query(&format!("{select} {stamp_field} IN ({list})"))
                        .await?,
                );
            }
        }
        let mut outcomes: Vec<Option<Result<Upserted>>> = vec![None; contacts.len()];
        let (mut updates, mut creates) = (Vec::new(), Vec::new());
        for (index, contact) in contacts.iter().enumerate() {
            let stamped = self
                .stamp_field
                .as_ref()
                .filter(|_| contact.plan.reconcile)
                .and_then(|field| {
                    found
                        .iter()
                        .find(|r| text(r, field).as_deref() == Some(contact.plan.stamp.as_str()))
                });
            let email = contact
                .customer
                .email
                .as_ref()
                .map(|e| e.as_str())
                .unwrap_or_default();
            let mut by_email: Vec<&Value> = found
                .iter()
                .filter(|r| same_email(text(r, &email_field).as_deref(), email))
                .collect();
            by_email.sort_by_key(|r| text(r, "Id"));
            by_email.dedup_by_key(|r| text(r, "Id"));
            let (existing, adopted) = match (stamped, by_email.as_slice()) {
                (Some(record), _) => (Some(record), true),
                (None, []) => (None, false),
                (None, [one]) => (Some(*one), false),
                (None, several) => {
                    outcomes[index] = Some(Err(Error::Ambiguous {
                        message: format!(
                            "{} CRM contacts match this email; nothing was changed",
                            several.len()
                        ),
                        ids: several.iter().filter_map(|r| text(r, "Id")).collect(),
                    }));
                    continue;
                }
            };
            match existing.and_then(|r| text(r, "Id")) {
                Some(id) => {
                    let mut record = self.contact_record(contact.customer, false);
                    record.insert("attributes".into(), json!({"type": "Contact"}));
                    record.insert("id".into(), id.into());
                    updates.push((index, Value::Object(record), adopted));
                }
                None => {
                    let mut record = self.contact_record(contact.customer, true);
                    record.insert("attributes".into(), json!({"type": "Contact"}));
                    if let Some(field) = &self.stamp_field {
                        record.insert(field.clone(), contact.plan.stamp.clone().into());
                    }
                    if let Some(field) = &self.contact_external_id_field {
                        let key =
                            crate::store::sha256_hex(contact.customer.source_key().as_bytes());
                        record.insert(field.clone(), key.into());
                    }
                    creates.push((index, Value::Object(record)));
                }
            }
        }
        let path = format!("/services/data/{API_VERSION}/composite/sobjects");
        if !updates.is_empty() {
            let records: Vec<&Value> = updates.iter().map(|(_, r, _)| r).collect();
            let body = json!({ "allOrNone": false, "records": records });
            let response = self
                .call(
                    Method::PATCH,
                    &path,
                    &[],
                    Some(&body),
                    Idempotency::Idempotent,
                )
                .await?;
            let results = collection_results(&response, updates.len())?;
            for ((index, _, adopted), result) in updates.iter().zip(results) {
                let outcome = if *adopted {
                    Outcome::Created
                } else {
                    Outcome::Updated
                };
                outcomes[*index] = Some(result.map(|crm_id| Upserted { crm_id, outcome }));
            }
        }
        if !creates.is_empty() {
            let records: Vec<&Value> = creates.iter().map(|(_, r)| r).collect();
            let body = json!({ "allOrNone": false, "records": records });
            let response = self
                .call(
                    Method::POST,
                    &path,
                    &[],
                    Some(&body),
                    Idempotency::NotIdempotent,
                )
                .await?;
            let results = collection_results(&response, creates.len())?;
            for ((index, _), result) in creates.iter().zip(results) {
                outcomes[*index] = Some(result.map(|crm_id| Upserted {
                    crm_id,
                    outcome: Outcome::Created,
                }));
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::CrmUnavailable("no result".into()))))
            .collect())
    }

    /// A Lead stands alone; it becomes a contact only when someone converts it.
    fn lead_needs_contact(&self) -> bool {
        false
    }

    async fn find_lead(&self, lead: &Lead, _contact_id: Option<&str>) -> Result<Option<String>> {
        let fields = "Id, Email, Phone, MobilePhone, IsConverted";
        let (records, phone) = match (&lead.person.email, &lead.person.phone) {
            (Some(email), _) => {
                let soql = format!(
                    "SELECT {fields} FROM Lead WHERE Email = {} LIMIT 10",
                    soql_literal(email.as_str())
                );
                (self.query(&soql).await?, None)
            }
            (None, Some(phone)) => {
                let sosl = format!(
                    "FIND {{{}}} IN PHONE FIELDS RETURNING Lead({fields}) LIMIT 10",
                    phone_search_terms(phone).join(" OR ")
                );
                (self.search(&sosl).await?, Some(phone))
            }
            (None, None) => return Ok(None),
        };
        let same_phone = |record: &Value| match phone {
            None => true,
            Some(phone) => ["Phone", "MobilePhone"].iter().any(|f| {
                text(record, f)
                    .is_some_and(|p| E164Phone::parse(&p, &self.country).as_ref() == Ok(phone))
            }),
        };
        // A converted lead is read-only history; the person is a contact now.
        Ok(records
            .iter()
            .filter(|r| r["IsConverted"] != Value::Bool(true))
            .find(|r| same_phone(r))
            .and_then(|r| text(r, "Id")))
    }

    async fn create_lead(
        &self,
        lead: &Lead,
        _contact_id: Option<&str>,
        stamp: &str,
    ) -> Result<String> {
        self.create("Lead", self.lead_record(lead, true), stamp)
            .await
    }

    async fn update_lead(
        &self,
        crm_id: &str,
        lead: &Lead,
        _contact_id: Option<&str>,
    ) -> Result<()> {
        self.update("Lead", crm_id, self.lead_record(lead, false))
            .await
    }

    async fn create_appointment(
        &self,
        appointment: &Appointment,
        contact_id: &str,
        stamp: &str,
    ) -> Result<String> {
        self.create("Event", self.event_record(appointment, contact_id), stamp)
            .await
    }

    async fn find_stamped(&self, stamp: &str, record: StampedRecord<'_>) -> Result<Option<String>> {
        let sobject = match record {
            StampedRecord::Contact => "Contact",
            StampedRecord::Lead { .. } => "Lead",
            StampedRecord::Appointment { .. } => "Event",
        };
        Ok(self
            .stamped(sobject, stamp)
            .await?
            .unwrap_or_default()
            .first()
            .and_then(|r| text(r, "Id")))
    }

    /// A cancel is an update too: Event has no status, and deleting would lose the history a
    /// person expects on the contact's timeline (and send a resend off to book it again).
    async fn update_appointment(
        &self,
        crm_id: &str,
        appointment: &Appointment,
        contact_id: &str,
        _stamp: &str,
    ) -> Result<()> {
        self.update("Event", crm_id, self.event_record(appointment, contact_id))
            .await
    }
}

/// Salesforce's token endpoint on `login_url` (a value `login_url` accepted), as a refresh and an
/// authorization-code exchange both use it.
pub fn token_provider(login_url: &str) -> OAuthProvider {
    OAuthProvider {
        token_url: format!("{login_url}/services/oauth2/token"),
        grant: TokenGrant::RefreshToken,
        api_base_field: Some("instance_url"),
        api_base_setting: "instanceUrl",
        // The answer carries no lifetime (it is the org's session timeout), so the token is used
        // until Salesforce answers INVALID_SESSION_ID.
        default_lifetime: None,
    }
}

/// The login host: production, sandbox (`https://test.salesforce.com`) or a My Domain host.
pub fn login_url(setting: Option<&str>) -> std::result::Result<String, String> {
    let url = setting
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .unwrap_or(DEFAULT_LOGIN_URL)
        .trim_end_matches('/');
    let host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .map(|rest| rest.split(['/', ':']).next().unwrap_or(""))
        .unwrap_or("");
    // The client secret and refresh token are posted there: TLS unless it is this machine.
    let local = ["127.0.0.1", "localhost"].contains(&host);
    if host.is_empty() || !(url.starts_with("https://") || local) {
        return Err(format!(
            "setting 'loginUrl' must be an https URL such as {DEFAULT_LOGIN_URL}"
        ));
    }
    Ok(url.to_string())
}

/// A field name as Salesforce spells API names (`Email`, `Booking_Id__c`), nothing else.
fn api_name(name: &str) -> std::result::Result<&str, String> {
    let ok = name.len() <= 80
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(format!("'{name}' is not a Salesforce field API name"))
    }
}

/// Record ids are 15 (case-sensitive) or 18 characters of letters and digits.
fn record_id_segment(id: &str) -> Option<&str> {
    ((id.len() == 15 || id.len() == 18) && id.chars().all(|c| c.is_ascii_alphanumeric()))
        .then_some(id)
}

/// A SOQL string literal: quotes and backslashes escaped, control characters spelled out.
pub fn soql_literal(value: &str) -> String {
    let mut literal = String::with_capacity(value.len() + 2);
    literal.push('\'');
    for c in value.chars() {
        match c {
            '\\' => literal.push_str("\\\\"),
            '\'' => literal.push_str("\\'"),
            '"' => literal.push_str("\\\""),
            '\n' => literal.push_str("\\n"),
            '\r' => literal.push_str("\\r"),
            '\t' => literal.push_str("\\t"),
            c if c.is_control() => literal.push_str(&format!("\\u{:04x}", c as u32)),
            c => literal.push(c),
        }
    }
    literal.push('\'');
    literal
}

/// Digit strings a phone may be stored under: national number, with trunk prefix, with country
/// code. Digits only, so nothing in them needs SOSL escaping.
pub fn phone_search_terms(phone: &E164Phone) -> Vec<String> {
    let national_format = phonenumber::parse(None, phone.as_str())
        .map(|n| n.format().mode(phonenumber::Mode::National).to_string())
        .unwrap_or_default();
    let mut terms = Vec::new();
    for term in [
        phone.national_number(),
        national_format
            .chars()
            .filter(char::is_ascii_digit)
            .collect(),
        phone.digits().to_string(),
    ] {
        if term.len() >= 2 && !terms.contains(&term) {
            terms.push(term);
        }
    }
    terms
}

fn utc(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn array(body: &Value, key: &str) -> Vec<Value> {
    body.get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn record_id(response: &CrmResponse) -> Result<String> {
    text(&response.body, "id")
        .ok_or_else(|| Error::CrmUnavailable("Salesforce answered without a record id".into()))
}

/// Quoted SOQL values, as `IN` lists of at most `IN_LIST_CHARS` characters each.
fn in_lists(values: &[&str]) -> Vec<String> {
    let mut lists: Vec<String> = Vec::new();
    for value in values {
        let literal = soql_literal(value);
        match lists.last_mut() {
            Some(list) if list.len() + literal.len() + 2 <= IN_LIST_CHARS => {
                list.push_str(", ");
                list.push_str(&literal);
            }
            _ => lists.push(literal),
        }
    }
    lists
}

/// An sObject Collections answer: one `{id, success, errors: [{statusCode, message, fields}]}`
/// per record, in the order sent.
fn collection_results(response: &CrmResponse, sent: usize) -> Result<Vec<Result<String>>> {
    let results = response
        .body
        .as_array()
        .filter(|r| r.len() == sent)
        .ok_or_else(|| {
            Error::CrmUnavailable(format!(
                "Salesforce answered a collection of {sent} records without {sent} results"
            ))
        })?;
    Ok(results
        .iter()
        .map(|result| {
            if result["success"].as_bool() == Some(true) {
                return text(result, "id").ok_or_else(|| {
                    Error::CrmUnavailable("Salesforce answered without a record id".into())
                });
            }
            let first = &result["errors"][0];
            let code = text(first, "statusCode").unwrap_or_default();
            let message = format!("{code}: {}", text(first, "message").unwrap_or_default());
            Err(match code.as_str() {
                "DUPLICATES_DETECTED" | "DUPLICATE_VALUE" | "DUPLICATE_EXTERNAL_ID" => {
                    Error::CrmDuplicate {
                        existing_id: None,
                        message,
                    }
                }
                "ENTITY_IS_DELETED" | "INVALID_CROSS_REFERENCE_KEY" | "NOT_FOUND" => {
                    Error::NotFound(message)
                }
                _ => Error::CrmRejected { message },
            })
        })
        .collect())
}

/// 401 INVALID_SESSION_ID: the access token expired or was revoked.
fn session_invalid(response: &CrmResponse) -> bool {
    response.status == 401 && error_codes(&response.body).any(|c| c == "INVALID_SESSION_ID")
}

fn error_codes(body: &Value) -> impl Iterator<Item = &str> {
    body.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("errorCode").and_then(Value::as_str))
}

/// Salesforce errors: a JSON array of `{"message", "errorCode", "fields"}`.
fn salesforce_error(response: &CrmResponse) -> Error {
    let errors = response.body.as_array().cloned().unwrap_or_default();
    let described: Vec<String> = errors
        .iter()
        .filter_map(|e| {
            let message = e.get("message").and_then(Value::as_str)?;
            Some(match e.get("errorCode").and_then(Value::as_str) {
                Some(code) => format!("{message} ({code})"),
                None => message.to_string(),
            })
        })
        .collect();
    let message = if described.is_empty() {
        format!(
            "HTTP {} {}",
            response.status,
            response.text.chars().take(200).collect::<String>()
        )
    } else {
        described.join("; ")
    };
    let code = error_codes(&response.body).next();
    match (response.status, code) {
        // An external id matched several records; the body lists their URLs.
        (300, _) => Error::Ambiguous {
            message: "several Salesforce contacts have this external id; nothing was changed"
                .into(),
            ids: errors
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|url| url.rsplit('/').next())
                .map(str::to_string)
                .collect(),
        },
        // Salesforce throttles with 403, against a rolling 24-hour allocation.
        (403, Some("REQUEST_LIMIT_EXCEEDED")) => Error::RateLimited {
            retry_after: response.retry_after(),
        },
        (_, Some("DUPLICATES_DETECTED")) => Error::CrmDuplicate {
            existing_id: duplicate_rule_match(&errors),
            message,
        },
        (_, Some("DUPLICATE_VALUE")) => Error::CrmDuplicate {
            existing_id: message
                .split_once("record with id: ")
                .and_then(|(_, rest)| {
                    let id: String = rest
                        .chars()
                        .take_while(char::is_ascii_alphanumeric)
                        .collect();
                    record_id_segment(&id).map(str::to_string)
                }),
            message,
        },
        _ => status_error(response, message),
    }
}

/// The first record a duplicate rule matched, when Salesforce names it.
fn duplicate_rule_match(errors: &[Value]) -> Option<String> {
    errors
        .iter()
        .filter_map(|e| e.pointer("/duplicateResult/matchResults")?.as_array())
        .flatten()
        .filter_map(|m| m.get("matchRecords")?.as_array())
        .flatten()
        .find_map(|r| text(r.get("record")?, "Id"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn soql_literals_escape_quotes_backslashes_and_control_characters() {
        assert_eq!(soql_literal("jane@example.com"), "'jane@example.com'");
        assert_eq!(
            soql_literal("o'brien@example.com"),
            r"'o\'brien@example.com'"
        );
        // Closing the literal early and appending a condition must stay inside the string.
        assert_eq!(soql_literal("x' OR Email != '"), r"'x\' OR Email != \''");
        // A backslash before a quote must not turn the escape back into a bare quote.
        assert_eq!(soql_literal(r"a\' OR 1=1 --"), r"'a\\\' OR 1=1 --'");
        assert_eq!(soql_literal(r"\\"), r"'\\\\'");
        assert_eq!(soql_literal("say \"hi\""), r#"'say \"hi\"'"#);
        assert_eq!(soql_literal("a\nb\r\tc"), r"'a\nb\r\tc'");
        assert_eq!(soql_literal("bell\u{7}"), r"'bell\u0007'");
        assert_eq!(soql_literal("Zoë 東京"), "'Zoë 東京'");
    }

    #[test]
    fn hostile_literals_have_no_unescaped_quote_inside() {
        for hostile in ["'", "\\'", "\\\\'", "'; DELETE", "a'b\\c'd", "'\n'\\"] {
            let literal = soql_literal(hostile);
            let inner = &literal[1..literal.len() - 1];
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                assert_ne!(c, '\'', "bare quote in {literal}");
                if c == '\\' {
                    assert!(chars.next().is_some(), "dangling backslash in {literal}");
                }
            }
        }
    }

    #[test]
    fn phone_search_terms_cover_national_trunk_and_international_digits() {
        let us = E164Phone::parse("+14155552671", "US").unwrap();
        assert_eq!(phone_search_terms(&us), vec!["4155552671", "14155552671"]);
        let gb = E164Phone::parse("+442079460958", "US").unwrap();
        assert_eq!(
            phone_search_terms(&gb),
            vec!["2079460958", "02079460958", "442079460958"]
        );
    }

    #[test]
    fn login_urls_must_be_https_except_on_this_machine() {
        assert_eq!(login_url(None).unwrap(), DEFAULT_LOGIN_URL);
        assert_eq!(
            login_url(Some("https://test.salesforce.com/")).unwrap(),
            "https://test.salesforce.com"
        );
        assert_eq!(
            login_url(Some("http://127.0.0.1:4011")).unwrap(),
            "http://127.0.0.1:4011"
        );
        assert!(login_url(Some("http://login.salesforce.com")).is_err());
        assert!(login_url(Some("login.salesforce.com")).is_err());
    }

    #[test]
    fn field_api_names_are_plain_identifiers() {
        assert!(api_name("Booking_Contact_Id__c").is_ok());
        for bad in ["Email, Id", "Email = 'x'", "a/b", "", "1Field", "Name'"] {
            assert!(api_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_map_by_status_and_error_code() {
        let limit = CrmResponse::json(
            403,
            json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]),
        );
        assert_eq!(
            salesforce_error(&limit),
            Error::RateLimited { retry_after: None }
        );
        let access = CrmResponse::json(
            403,
            json!([{"message": "Insufficient access", "errorCode": "INSUFFICIENT_ACCESS"}]),
        );
        assert!(matches!(salesforce_error(&access), Error::CrmAuth(_)));
        let missing = CrmResponse::json(
            400,
            json!([{"message": "Required fields are missing: [LastName]", "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}]),
        );
        assert_eq!(
            salesforce_error(&missing),
            Error::CrmRejected {
                message: "Required fields are missing: [LastName] (REQUIRED_FIELD_MISSING)".into()
            }
        );
        let gone = CrmResponse::json(
            404,
            json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]),
        );
        assert!(matches!(salesforce_error(&gone), Error::NotFound(_)));
        let several = CrmResponse::json(
            300,
            json!([
                "/services/data/v62.0/sobjects/Contact/003000000000001AAA",
                "/services/data/v62.0/sobjects/Contact/003000000000002AAA"
            ]),
        );
        match salesforce_error(&several) {
            Error::Ambiguous { ids, .. } => {
                assert_eq!(ids, vec!["003000000000001AAA", "003000000000002AAA"])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicates_name_the_existing_record_when_salesforce_does() {
        let rule = CrmResponse::json(
            400,
            json!([{"message": "Use one of these records?", "errorCode": "DUPLICATES_DETECTED", "fields": [],
                "duplicateResult": {"allowSave": false, "duplicateRule": "Standard_Contact_Duplicate_Rule",
                    "matchResults": [{"entityType": "Contact", "matchRecords": [{"matchConfidence": 100.0,
                        "record": {"attributes": {"type": "Contact"}, "Id": "0035g000001AbCdAAK"}}]}]}}]),
        );
        assert_eq!(
            salesforce_error(&rule),
            Error::CrmDuplicate {
                existing_id: Some("0035g000001AbCdAAK".into()),
                message: "Use one of these records? (DUPLICATES_DETECTED)".into()
            }
        );
        let bare = CrmResponse::json(
            400,
            json!([{"message": "Use one of these records?", "errorCode": "DUPLICATES_DETECTED"}]),
        );
        assert!(matches!(
            salesforce_error(&bare),
            Error::CrmDuplicate {
                existing_id: None,
                ..
            }
        ));
        let unique = CrmResponse::json(
            400,
            json!([{"message": "duplicate value found: Booking_Contact_Id__c duplicates value on record with id: 0035g000001AbCdAAK", "errorCode": "DUPLICATE_VALUE"}]),
        );
        assert!(matches!(
            salesforce_error(&unique),
            Error::CrmDuplicate { existing_id: Some(id), .. } if id == "0035g000001AbCdAAK"
        ));
    }

    #[test]
    fn only_invalid_session_triggers_a_refresh() {
        assert!(session_invalid(&CrmResponse::json(
            401,
            json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
        )));
        assert!(!session_invalid(&CrmResponse::json(
            403,
            json!([{"message": "x", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
        )));
    }
}
