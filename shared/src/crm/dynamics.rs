//! Microsoft Dynamics 365 (Dataverse Web API v9.2): contacts, leads and appointments (regarding
//! the contact, the contact a required attendee), with client-credential tokens from Microsoft
//! Entra ID kept fresh through the shared `OAuthSession`.
//!
//! Sources (learn.microsoft.com): the client-credentials grant
//! (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow) and
//! the Dataverse scope `<environment>/.default`
//! (https://learn.microsoft.com/power-apps/developer/data-platform/authenticate-oauth); request
//! headers, status codes and the `{"error":{"code","message"}}` body
//! (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/compose-http-requests-handle-errors);
//! create answering 204 with `OData-EntityId`
//! (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-entity-web-api);
//! update and `If-Match: *` so a PATCH never creates
//! (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/update-delete-entities-using-web-api,
//! https://learn.microsoft.com/power-apps/developer/data-platform/webapi/perform-conditional-operations-using-web-api);
//! `$filter` functions and quoting (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query/filter-rows);
//! the contact, lead, appointment and activityparty tables
//! (https://learn.microsoft.com/power-apps/developer/data-platform/reference/entities/appointment,
//! .../contact, .../activityparty; https://learn.microsoft.com/dynamics365/sales/developer/entities/lead);
//! duplicate detection (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/manage-duplicate-detection-create-update);
//! upsert by an alternate key, `PATCH /contacts(emailaddress1='...')` with no condition, the key
//! column left out of the body (https://learn.microsoft.com/power-apps/developer/data-platform/use-upsert-insert-update-record,
//! https://learn.microsoft.com/power-apps/developer/data-platform/use-alternate-key-reference-record);
//! service protection limits, 429 with `Retry-After`
//! (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits); `WhoAmI`
//! (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/whoami).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::Method;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, IF_MATCH,
};
use serde_json::{Map, Value, json};

use super::http::{CrmHttp, CrmResponse, Idempotency, status_error};
use super::oauth::{AccessGrant, OAuthProvider, OAuthSession, TokenGrant};
use super::{
    AccountInfo, AdapterContext, BulkContact, ContactLookup, CrmAdapter, CrmContact, Outcome,
    StampedRecord, Upserted, appointment_description, customer_fields, encode_path_segment,
    has_phone, last_name_stand_in, lead_description, map_properties, not_someone_else,
    property_name, same_email, stamp_field, stamp_warning, text,
};
use crate::connection::{Connection, ConnectionSettings};
use crate::domain::{Appointment, AppointmentStatus, CrmType, Customer, E164Phone, Lead};
use crate::error::{Error, Result};

/// The Web API version every path uses (`/api/data/v9.2/...`).
pub const API_VERSION: &str = "v9.2";
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Entra ID documents 60 to 90 minutes; the answer's `expires_in` is used when it has one.
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The column our stamp goes in unless the connection's `stampField` names another: a custom
/// text column the admin adds to contact, lead and appointment (`new_` is the default
/// publisher's prefix).
pub const DEFAULT_STAMP_FIELD: &str = "new_crmsyncid";
/// Appointment `statecode`/`statuscode` pairs (appointment table reference).
pub const STATE_CANCELED: (u8, u8) = (2, 4);
pub const STATE_SCHEDULED: (u8, u8) = (3, 5);
/// Activity party `participationtypemask` of a required attendee.
pub const REQUIRED_ATTENDEE: u8 = 5;
/// The error code Dataverse gives when duplicate detection refuses a write.
const DUPLICATE_DETECTED: &str = "0x80040333";
/// Rows asked for by a phone search: the filter is coarse (see `phone_filter`).
const PHONE_SEARCH_ROWS: &str = "100";

/// Our customer field -> contact column.
const CONTACT_FIELDS: &[(&str, &str)] = &[
    ("firstName", "firstname"),
    ("lastName", "lastname"),
    ("email", "emailaddress1"),
    ("phone", "telephone1"),
    ("address", "address1_line1"),
    ("city", "address1_city"),
    ("state", "address1_stateorprovince"),
    ("zipCode", "address1_postalcode"),
    ("country", "address1_country"),
];

/// Our lead field -> lead column. `source` has no default: `leadsourcecode` is a choice whose
/// values are numbers each org may change, so it is written only where the connection maps it.
const LEAD_FIELDS: &[(&str, &str)] = &[
    ("firstName", "firstname"),
    ("lastName", "lastname"),
    ("email", "emailaddress1"),
    ("phone", "telephone1"),
    ("address", "address1_line1"),
    ("city", "address1_city"),
    ("state", "address1_stateorprovince"),
    ("zipCode", "address1_postalcode"),
    ("country", "address1_country"),
    ("company", "companyname"),
    ("notes", "description"),
];

/// Our appointment field -> appointment column.
const APPOINTMENT_FIELDS: &[(&str, &str)] = &[
    ("title", "subject"),
    ("notes", "description"),
    ("location", "location"),
];

/// Phone columns read and searched besides the mapped `phone` one.
const OTHER_PHONE_FIELDS: &[&str] = &["mobilephone", "telephone2"];

/// Contact upserts in one `$batch`. Dataverse takes up to 1,000 requests a batch, but a batch
/// must also finish within its execution-time limit (2 minutes) and its time counts against the
/// service protection limits; Microsoft advises small batches (execute-batch-operations-using-web-api,
/// api-limits), so 50.
const BATCH_UPSERTS: usize = 50;

/// One Dataverse table as the adapter uses it.
#[derive(Debug, Clone, Copy)]
struct Table {
    entity_set: &'static str,
    id_column: &'static str,
}

const CONTACTS: Table = Table {
    entity_set: "contacts",
    id_column: "contactid",
};
const LEADS: Table = Table {
    entity_set: "leads",
    id_column: "leadid",
};
/// An appointment's key is the activity's: `activityid`.
const APPOINTMENTS: Table = Table {
    entity_set: "appointments",
    id_column: "activityid",
};

pub struct DynamicsAdapter {
    http: CrmHttp,
    session: OAuthSession,
    /// The environment URL (`https://contoso.crm.dynamics.com`), without a trailing slash.
    environment: String,
    settings: ConnectionSettings,
    stamp_field: Option<String>,
    /// Columns an admin made alternate keys of (`alternateKeys.contact`, `.lead`): creates on
    /// those tables become upserts by the key, so two syncs of one person race to one row.
    alternate_keys: AlternateKeys,
    connection_id: String,
}

#[derive(Debug, Default, Clone)]
struct AlternateKeys {
    contact: Option<String>,
    lead: Option<String>,
}

impl AlternateKeys {
    /// `settings.alternateKeys`: `{"contact": "<column>", "lead": "<column>"}`, both optional.
    fn from_settings(settings: &ConnectionSettings) -> std::result::Result<Self, String> {
        let Some(value) = settings.extra.get("alternateKeys").filter(|v| !v.is_null()) else {
            return Ok(AlternateKeys::default());
        };
        let Some(map) = value.as_object() else {
            return Err("setting 'alternateKeys' must be an object such as {\"contact\": \"emailaddress1\"}".into());
        };
        let column = |entity: &str| match map.get(entity) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(c)) if is_column_name(c.trim()) => Ok(Some(c.trim().to_string())),
            Some(_) => Err(format!(
                "setting 'alternateKeys.{entity}' must be a column's logical name (such as emailaddress1)"
            )),
        };
        Ok(AlternateKeys {
            contact: column("contact")?,
            lead: column("lead")?,
        })
    }
}

/// A column's logical name: lower-case letters, digits and underscores.
fn is_column_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl DynamicsAdapter {
    pub fn new(connection: &Connection, ctx: &AdapterContext) -> Result<Self> {
        let settings = &connection.settings;
        let invalid = |message: &str| Error::ConnectionInvalid {
            id: connection.id_str().to_string(),
            message: message.to_string(),
        };
        let environment = settings
            .extra_str("environmentUrl")
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .ok_or_else(|| {
                invalid("setting 'environmentUrl' (https://<org>.crm.dynamics.com) is missing")
            })?;
        let tenant = settings
            .extra_str("tenantId")
            .map(str::trim)
            .filter(|t| is_tenant(t))
            .ok_or_else(|| {
                invalid(
                    "setting 'tenantId' (the Entra ID tenant's id or domain) is missing or invalid",
                )
            })?;
        let authority = settings
            .extra_str("authorityUrl")
            .unwrap_or(DEFAULT_AUTHORITY)
            .trim_end_matches('/');
        let provider = OAuthProvider {
            token_url: format!("{authority}/{tenant}/oauth2/v2.0/token"),
            grant: TokenGrant::ClientCredentials {
                scope: format!("{environment}/.default"),
            },
            api_base_field: None,
            api_base_setting: "environmentUrl",
            default_lifetime: Some(ACCESS_TOKEN_LIFETIME),
        };
        Ok(DynamicsAdapter {
            http: ctx.http.clone(),
            session: OAuthSession::new(connection, ctx, provider)?,
            environment,
            settings: settings.clone(),
            stamp_field: stamp_field(settings, "stampField", DEFAULT_STAMP_FIELD),
            alternate_keys: AlternateKeys::from_settings(settings).map_err(|m| invalid(&m))?,
            connection_id: connection.id_str().to_string(),
        })
    }

    fn stamped(&self, mut record: Map<String, Value>, stamp: &str) -> Map<String, Value> {
        if let Some(field) = &self.stamp_field {
            record.insert(field.clone(), stamp.into());
        }
        record
    }

    /// Sends with the session's token; when Dataverse refuses the token itself (401, as for an
    /// expired one), fetches a new one (single-flight across invocations) and sends once more.
    /// A 401 means nothing was done, so the retry is safe even for creates.
    async fn call(&self, request: &WebApiRequest<'_>) -> Result<CrmResponse> {
        let grant = self.session.grant().await?;
        let response = self.send(&grant, request).await?;
        if response.status != 401 {
            return Ok(response);
        }
        let grant = self.session.refresh_after_rejection(&grant).await?;
        self.send(&grant, request).await
    }

    async fn send(&self, grant: &AccessGrant, request: &WebApiRequest<'_>) -> Result<CrmResponse> {
        let url = format!(
            "{}/api/data/{API_VERSION}/{}",
            self.environment, request.path
        );
        let auth = format!("Bearer {}", grant.access_token.expose());
        self.http
            .send(request.idempotency, |client| {
                let mut builder = client
                    .request(request.method.clone(), &url)
                    .header(AUTHORIZATION, &auth)
                    .header(ACCEPT, "application/json")
                    .header("OData-MaxVersion", "4.0")
                    .header("OData-Version", "4.0")
                    .query(request.query);
                if let Some(etag) = request.if_match {
                    builder = builder.header(IF_MATCH, etag);
                }
                if let Some(prefer) = request.prefer {
                    builder = builder.header("Prefer", prefer);
                }
                match (request.body, request.multipart) {
                    (_, Some((content_type, text))) => builder
                        .header(CONTENT_TYPE, content_type)
                        .body(text.to_string()),
                    (Some(body), None) => builder.json(body),
                    (None, None) => builder,
                }
            })
            .await
    }

    /// `GET /{set}?$filter=...&$select=...`: the rows of one page (no more are needed: lookups
    /// are narrow, and a phone lookup asks for `PHONE_SEARCH_ROWS`).
    async fn query(
        &self,
        table: Table,
        filter: &str,
        select: &str,
        top: &str,
    ) -> Result<Vec<Value>> {
        let query = [("$filter", filter), ("$select", select), ("$top", top)];
        let response = checked(
            self.call(&WebApiRequest::get(table.entity_set, &query))
                .await?,
        )?;
        Ok(response.body["value"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// One row by id; `None` when Dataverse has none.
    async fn get_row(&self, table: Table, id: &str, select: &str) -> Result<Option<Value>> {
        let path = format!("{}({})", table.entity_set, record_id(id)?);
        let query = [("$select", select)];
        match checked(self.call(&WebApiRequest::get(&path, &query)).await?) {
            Ok(response) => Ok(Some(response.body)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /{set}`: 204 with the new row's URL in `OData-EntityId`. A create, so never
    /// repeated blindly.
    async fn create(&self, table: Table, record: Map<String, Value>) -> Result<String> {
        let body = Value::Object(record);
        let request = WebApiRequest {
            method: Method::POST,
            path: table.entity_set,
            query: &[],
            body: Some(&body),
            if_match: None,
            prefer: None,
            multipart: None,
            idempotency: Idempotency::NotIdempotent,
        };
        let response = checked(self.call(&request).await?)?;
        created_id(&response, table.id_column).ok_or_else(|| {
            Error::CrmUnavailable("Dataverse answered a create without the new row's id".into())
        })
    }

    /// A create, or an upsert by the table's alternate key when one is configured and the row
    /// has a value for it.
    async fn create_or_upsert(
        &self,
        table: Table,
        entity: &str,
        key: Option<&str>,
        record: Map<String, Value>,
    ) -> Result<String> {
        let value =
            key.and_then(|column| Some((column, text(&Value::Object(record.clone()), column)?)));
        match value {
            Some((column, value)) => {
                self.upsert_by_key(table, entity, column, &value, record)
                    .await
            }
            None => self.create(table, record).await,
        }
    }

    /// `PATCH /{set}({column}='{value}')` with no condition: Dataverse creates the row, or
    /// updates the one holding that key (use-upsert-insert-update-record). The key column stays
    /// out of the body (the URL carries it). Idempotent, so a lost answer may be resent.
    async fn upsert_by_key(
        &self,
        table: Table,
        entity: &str,
        column: &str,
        value: &str,
        mut record: Map<String, Value>,
    ) -> Result<String> {
        record.remove(column);
        let path = key_path(table, column, value);
        let body = Value::Object(record);
        // The row in the answer (201 created, 200 updated), so its id is read from the body.
        let request = WebApiRequest {
            method: Method::PATCH,
            path: &path,
            query: &[("$select", table.id_column)],
            body: Some(&body),
            if_match: None,
            prefer: Some("return=representation"),
            multipart: None,
            idempotency: Idempotency::Idempotent,
        };
        let response = self.call(&request).await?;
        if response.status == 400
            && response.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("key in the request URI is not valid"))
        {
            return Err(Error::ConnectionInvalid {
                id: self.connection_id.clone(),
                message: format!(
                    "setting 'alternateKeys.{entity}': {} has no alternate key on '{column}' in this environment",
                    table.entity_set
                ),
            });
        }
        let response = checked(response)?;
        created_id(&response, table.id_column).ok_or_else(|| {
            Error::CrmUnavailable("Dataverse answered an upsert without the row's id".into())
        })
    }

    /// `PATCH /{set}({id})` with `If-Match: *`: an update only, never the upsert a bare PATCH
    /// is, so a row deleted meanwhile answers 404 instead of coming back.
    async fn update(&self, table: Table, id: &str, record: Map<String, Value>) -> Result<()> {
        let path = format!("{}({})", table.entity_set, record_id(id)?);
        let body = Value::Object(record);
        let request = WebApiRequest {
            method: Method::PATCH,
            path: &path,
            query: &[],
            body: Some(&body),
            if_match: Some("*"),
            prefer: None,
            multipart: None,
            idempotency: Idempotency::Idempotent,
        };
        checked(self.call(&request).await?).map(|_| ())
    }

    /// `None` without a stamp field; else the rows of `table` holding `stamp`.
    async fn search_stamp(&self, table: Table, stamp: &str) -> Result<Option<Vec<Value>>> {
        let Some(field) = &self.stamp_field else {
            return Ok(None);
        };
        let filter = format!("{field} eq {}", odata_string(stamp));
        self.query(table, &filter, table.id_column, "1")
            .await
            .map(Some)
    }

    fn default_country(&self) -> &str {
        self.settings.default_country.as_deref().unwrap_or("US")
    }

    fn phone_field(&self, entity: &str, defaults: &[(&'static str, &'static str)]) -> String {
        property_name(entity, "phone", defaults, &self.settings)
            .unwrap_or("telephone1")
            .to_string()
    }

    fn email_field(&self, entity: &str, defaults: &[(&'static str, &'static str)]) -> String {
        property_name(entity, "email", defaults, &self.settings)
            .unwrap_or("emailaddress1")
            .to_string()
    }

    /// The `$select` list: the id and every column read back, under the connection's names.
    fn select(
        &self,
        table: Table,
        entity: &str,
        defaults: &[(&'static str, &'static str)],
    ) -> String {
        let mut names: Vec<&str> = vec![table.id_column];
        names.extend(
            defaults
                .iter()
                .filter_map(|(ours, _)| property_name(entity, ours, defaults, &self.settings)),
        );
        names.extend(OTHER_PHONE_FIELDS);
        names.dedup();
        names.join(",")
    }

    /// Dataverse keeps phones as typed, so no filter can compare them in E.164: this one asks
    /// for rows whose phone columns end in the number's last four digits (contiguous in every
    /// usual notation), and the caller keeps those equal in E.164.
    fn phone_filter(
        &self,
        entity: &str,
        defaults: &[(&'static str, &'static str)],
        phone: &E164Phone,
    ) -> String {
        let national = phone.national_number();
        let tail = &national[national.len().saturating_sub(4)..];
        let mut columns = vec![self.phone_field(entity, defaults)];
        columns.extend(OTHER_PHONE_FIELDS.iter().map(|c| c.to_string()));
        columns.dedup();
        columns
            .iter()
            .map(|c| format!("endswith({c},{})", odata_string(tail)))
            .collect::<Vec<_>>()
            .join(" or ")
    }

    fn person_record(
        &self,
        entity: &str,
        defaults: &[(&'static str, &'static str)],
        fields: Vec<(&'static str, String)>,
    ) -> Map<String, Value> {
        map_properties(entity, &fields, defaults, &self.settings)
    }

    fn contact_record(&self, customer: &Customer) -> Map<String, Value> {
        self.person_record("contact", CONTACT_FIELDS, customer_fields(customer))
    }

    /// `subject` (Topic) and `lastname` are what the lead form requires; the API does not
    /// enforce them, but a person opening the lead expects both, so a create fills them.
    fn lead_record(&self, lead: &Lead, creating: bool) -> Map<String, Value> {
        let mut fields = customer_fields(&lead.person);
        if creating && lead.person.last_name.is_none() {
            fields.extend(last_name_stand_in(&lead.person).map(|s| ("lastName", s)));
        }
        fields.extend(lead.company.clone().map(|c| ("company", c)));
        // The source goes into the description unless it has a field (mapped) of its own.
        fields.extend(lead_description(lead, LEAD_FIELDS, &self.settings).map(|n| ("notes", n)));
        fields.extend(lead.source.clone().map(|s| ("source", s)));
        let mut record = self.person_record("lead", LEAD_FIELDS, fields);
        record.insert("subject".into(), lead.title().into());
        record
    }

    fn appointment_record(
        &self,
        appointment: &Appointment,
        contact_id: &str,
    ) -> Map<String, Value> {
        let mut fields = vec![("title", appointment.title.clone())];
        // The zone it was booked in, in words: the CRM keeps the instant only.
        fields.push(("notes", appointment_description(appointment)));
        fields.extend(appointment.location.clone().map(|l| ("location", l)));
        let mut record = map_properties("appointment", &fields, APPOINTMENT_FIELDS, &self.settings);
        record.insert(
            "scheduledstart".into(),
            dataverse_datetime(appointment.window.start()).into(),
        );
        record.insert(
            "scheduledend".into(),
            dataverse_datetime(appointment.window.end()).into(),
        );
        record.insert(
            "regardingobjectid_contact_appointment@odata.bind".into(),
            format!("/contacts({contact_id})").into(),
        );
        record
    }

    /// `PATCH` of the state columns alone: how the Web API sets an activity's state.
    async fn set_state(&self, id: &str, (state, status): (u8, u8)) -> Result<()> {
        let mut record = Map::new();
        record.insert("statecode".into(), state.into());
        record.insert("statuscode".into(), status.into());
        self.update(APPOINTMENTS, id, record).await
    }

    fn to_person(
        &self,
        table: Table,
        entity: &str,
        defaults: &[(&'static str, &'static str)],
        record: &Value,
    ) -> Option<CrmContact> {
        let read = |ours: &str| {
            property_name(entity, ours, defaults, &self.settings)
                .and_then(|name| text(record, name))
        };
        let phone_field = self.phone_field(entity, defaults);
        let mut phone_fields = vec![phone_field.as_str()];
        phone_fields.extend(OTHER_PHONE_FIELDS);
        phone_fields.dedup();
        let phones: Vec<String> = phone_fields
            .iter()
            .filter_map(|f| text(record, f))
            .collect();
        let email = read("email");
        let last_name = read("lastName")
            .filter(|l| email.as_deref() != Some(l.as_str()) && !phones.contains(l));
        Some(CrmContact {
            crm_id: text(record, table.id_column)?,
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
impl CrmAdapter for DynamicsAdapter {
    fn crm_type(&self) -> CrmType {
        CrmType::Dynamics
    }

    /// `WhoAmI` names the organization and the application user the token acts as.
    async fn test_connection(&self) -> Result<AccountInfo> {
        let response = checked(self.call(&WebApiRequest::get("WhoAmI", &[])).await?)?;
        let organization =
            text(&response.body, "OrganizationId").unwrap_or_else(|| "unknown".into());
        let host = self
            .environment
            .split("://")
            .nth(1)
            .unwrap_or(&self.environment)
            .to_string();
        // The lookup a lost answer relies on proves the stamp column exists in each table.
        let mut warnings = Vec::new();
        for table in [CONTACTS, LEADS, APPOINTMENTS] {
            let lookup = self.search_stamp(table, "test-connection").await;
            warnings.extend(stamp_warning(lookup, |message| {
                format!(
                    "Dataverse {} cannot be queried by the stamp column: {message}. Add the text column to contact, lead and appointment, or set stampField to \"\" to sync without stamps",
                    table.entity_set
                )
            })?);
        }
        Ok(AccountInfo {
            account: format!("Dynamics 365 organization {organization} ({host})"),
            warnings,
        })
    }

    async fn find_contacts(&self, lookup: &ContactLookup) -> Result<Vec<CrmContact>> {
        let select = self.select(CONTACTS, "contact", CONTACT_FIELDS);
        let active = "statecode eq 0";
        let records = match lookup {
            // An id that is no GUID names no contact.
            ContactLookup::Id(id) if record_id(id).is_err() => vec![],
            ContactLookup::Id(id) => self
                .get_row(CONTACTS, id, &select)
                .await?
                .into_iter()
                .collect(),
            ContactLookup::Email(email) => {
                let column = self.email_field("contact", CONTACT_FIELDS);
                let filter = format!("{active} and {column} eq {}", odata_string(email.as_str()));
                self.query(CONTACTS, &filter, &select, "50").await?
            }
            ContactLookup::Phone(phone) => {
                let filter = format!(
                    "{active} and ({})",
                    self.phone_filter("contact", CONTACT_FIELDS, phone)
                );
                self.query(CONTACTS, &filter, &select, PHONE_SEARCH_ROWS)
                    .await?
            }
        };
        let contacts = records
            .iter()
            .filter_map(|r| self.to_person(CONTACTS, "contact", CONTACT_FIELDS, r));
        Ok(match lookup {
            ContactLookup::Phone(phone) => contacts
                .filter(|c| has_phone(c, phone, self.default_country()))
                .collect(),
            _ => contacts.collect(),
        })
    }

    async fn create_contact(&self, customer: &Customer, stamp: &str) -> Result<String> {
        let record = self.stamped(self.contact_record(customer), stamp);
        let key = self.alternate_keys.contact.as_deref();
        self.create_or_upsert(CONTACTS, "contact", key, record)
            .await
    }

    async fn update_contact(&self, crm_id: &str, customer: &Customer) -> Result<()> {
        self.update(CONTACTS, crm_id, self.contact_record(customer))
            .await
    }

    /// With an alternate key on the contacts' email column, a batch's new customers go to
    /// Dataverse as upserts by that key, 50 to a `$batch`; without one there is nothing to
    /// upsert by, and each customer is synced alone.
    fn bulk_contact_limit(&self) -> usize {
        match &self.alternate_keys.contact {
            Some(key) if *key == self.email_field("contact", CONTACT_FIELDS) => BATCH_UPSERTS,
            _ => 0,
        }
    }

    /// One `$batch` (`Prefer: odata.continue-on-error`) of `PATCH /contacts({key}='{email}')`
    /// upserts, each answering its row (201 created, 200 updated). Upserts by key are
    /// idempotent, so a resend after a lost answer updates what the first created. No stamp is
    /// written: the key finds the contact again, and an existing contact keeps its stamp. A part
    /// Dataverse refuses answers that contact's error, and the caller syncs it alone.
    async fn upsert_contacts(&self, contacts: &[BulkContact<'_>]) -> Result<Vec<Result<Upserted>>> {
        let Some(column) = self.alternate_keys.contact.as_deref() else {
            return Err(Error::CrmRejected {
                message: "a Dataverse bulk upsert needs an alternate key on contacts".into(),
            });
        };
        let boundary = format!("batch_{}", uuid::Uuid::new_v4());
        let (mut text, mut sent, mut outcomes) = (String::new(), Vec::new(), Vec::new());
        for (index, contact) in contacts.iter().enumerate() {
            let mut record = self.contact_record(contact.customer);
            let Some(key) = record
                .remove(column)
                .and_then(|v| v.as_str().map(str::to_string))
            else {
                outcomes.push(Err(Error::CrmRejected {
                    message: format!(
                        "a Dataverse upsert by '{column}' needs a value for it; synced alone"
                    ),
                }));
                continue;
            };
            outcomes.push(Err(Error::CrmUnavailable(
                "Dataverse's $batch answered nothing for this contact".into(),
            )));
            sent.push(index);
            text.push_str(&format!(
                "--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
                 PATCH /api/data/{API_VERSION}/{}?$select={} HTTP/1.1\r\n\
                 Content-Type: application/json\r\nPrefer: return=representation\r\n\r\n{}\r\n",
                key_path(CONTACTS, column, &key),
                CONTACTS.id_column,
                Value::Object(record),
            ));
        }
        if sent.is_empty() {
            return Ok(outcomes);
        }
        text.push_str(&format!("--{boundary}--\r\n"));
        let content_type = format!("multipart/mixed; boundary={boundary}");
        let request = WebApiRequest {
            method: Method::POST,
            path: "$batch",
            query: &[],
            body: None,
            if_match: None,
            prefer: Some("odata.continue-on-error"),
            multipart: Some((&content_type, &text)),
            idempotency: Idempotency::Idempotent,
        };
        let response = checked(self.call(&request).await?)?;
        let answers = batch_answers(&response)?;
        if answers.len() != sent.len() {
            return Err(Error::CrmUnavailable(format!(
                "Dataverse's $batch answered {} parts for {} requests",
                answers.len(),
                sent.len()
            )));
        }
        for (index, answer) in sent.into_iter().zip(answers) {
            let created = answer.status == 201;
            outcomes[index] = checked(answer).and_then(|answer| {
                let crm_id = created_id(&answer, CONTACTS.id_column).ok_or_else(|| {
                    Error::CrmUnavailable(
                        "Dataverse answered an upsert without the row's id".into(),
                    )
                })?;
                let outcome = if created {
                    Outcome::Created
                } else {
                    Outcome::Updated
                };
                Ok(Upserted { crm_id, outcome })
            });
        }
        Ok(outcomes)
    }

    /// A Dynamics lead is a person of its own; qualifying it makes the contact.
    fn lead_needs_contact(&self) -> bool {
        false
    }

    /// An open lead (`statecode` 0: qualified and disqualified leads are read-only) with this
    /// email, else this phone.
    async fn find_lead(&self, lead: &Lead, _contact_id: Option<&str>) -> Result<Option<String>> {
        let person = &lead.person;
        let select = self.select(LEADS, "lead", LEAD_FIELDS);
        let to_person = |r: &Value| self.to_person(LEADS, "lead", LEAD_FIELDS, r);
        if let Some(email) = &person.email {
            let column = self.email_field("lead", LEAD_FIELDS);
            let filter = format!(
                "statecode eq 0 and {column} eq {}",
                odata_string(email.as_str())
            );
            let found = self.query(LEADS, &filter, &select, "50").await?;
            if let Some(lead) = found
                .iter()
                .filter_map(to_person)
                .find(|l| same_email(l.email.as_deref(), email.as_str()))
            {
                return Ok(Some(lead.crm_id));
            }
        }
        if let Some(phone) = &person.phone {
            let filter = format!(
                "statecode eq 0 and ({})",
                self.phone_filter("lead", LEAD_FIELDS, phone)
            );
            let found = self
                .query(LEADS, &filter, &select, PHONE_SEARCH_ROWS)
                .await?;
            let same_person = found.iter().filter_map(to_person).find(|l| {
                has_phone(l, phone, self.default_country())
                    && not_someone_else(person.email.as_ref(), l.email.as_deref())
            });
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
        let record = self.stamped(self.lead_record(lead, true), stamp);
        let key = self.alternate_keys.lead.as_deref();
        self.create_or_upsert(LEADS, "lead", key, record).await
    }

    async fn update_lead(
        &self,
        crm_id: &str,
        lead: &Lead,
        _contact_id: Option<&str>,
    ) -> Result<()> {
        self.update(LEADS, crm_id, self.lead_record(lead, false))
            .await
    }

    /// Regarding the contact, and the contact a required attendee through the activity party
    /// list (deep insert). `statecode` cannot be set on create, so a booking that arrives
    /// cancelled is created, then cancelled.
    async fn create_appointment(
        &self,
        appointment: &Appointment,
        contact_id: &str,
        stamp: &str,
    ) -> Result<String> {
        let contact_id = record_id(contact_id)?;
        let mut record = self.stamped(self.appointment_record(appointment, contact_id), stamp);
        record.insert(
            "appointment_activity_parties".into(),
            json!([{
                "partyid_contact@odata.bind": format!("/contacts({contact_id})"),
                "participationtypemask": REQUIRED_ATTENDEE,
            }]),
        );
        let id = self.create(APPOINTMENTS, record).await?;
        if appointment.status == AppointmentStatus::Cancelled {
            self.set_state(&id, STATE_CANCELED).await?;
        }
        Ok(id)
    }

    async fn find_stamped(&self, stamp: &str, record: StampedRecord<'_>) -> Result<Option<String>> {
        let table = match record {
            StampedRecord::Contact => CONTACTS,
            StampedRecord::Lead { .. } => LEADS,
            StampedRecord::Appointment { .. } => APPOINTMENTS,
        };
        Ok(self
            .search_stamp(table, stamp)
            .await?
            .unwrap_or_default()
            .first()
            .and_then(|r| text(r, table.id_column)))
    }

    /// A cancel is the appointment's own state, Canceled (2/4), so it stays on the contact's
    /// timeline. Canceled and completed appointments are read-only, so the state is read first:
    /// a closed one is reopened as Scheduled (3/5) before it is moved, and an open one is moved
    /// before it is cancelled. Each step is a PATCH the next attempt can repeat.
    async fn update_appointment(
        &self,
        crm_id: &str,
        appointment: &Appointment,
        contact_id: &str,
        _stamp: &str,
    ) -> Result<()> {
        let current = self
            .get_row(APPOINTMENTS, crm_id, "activityid,statecode")
            .await?
            .ok_or_else(|| Error::NotFound("the Dynamics appointment".into()))?;
        let closed = matches!(current["statecode"].as_u64(), Some(1 | 2));
        let cancel = appointment.status == AppointmentStatus::Cancelled;
        let record = self.appointment_record(appointment, record_id(contact_id)?);
        match (closed, cancel) {
            // Already closed and staying cancelled: nothing a person would see changes.
            (true, true) => Ok(()),
            (true, false) => {
                self.set_state(crm_id, STATE_SCHEDULED).await?;
                self.update(APPOINTMENTS, crm_id, record).await
            }
            (false, true) => {
                self.update(APPOINTMENTS, crm_id, record).await?;
                self.set_state(crm_id, STATE_CANCELED).await
            }
            (false, false) => self.update(APPOINTMENTS, crm_id, record).await,
        }
    }
}

/// One Web API request.
struct WebApiRequest<'a> {
    method: Method,
    path: &'a str,
    query: &'a [(&'a str, &'a str)],
    body: Option<&'a Value>,
    if_match: Option<&'a str>,
    /// `Prefer`, as `return=representation` for the row in the answer.
    prefer: Option<&'a str>,
    /// A `$batch` body: its content type (with the boundary) and text, sent instead of `body`.
    multipart: Option<(&'a str, &'a str)>,
    idempotency: Idempotency,
}

impl<'a> WebApiRequest<'a> {
    fn get(path: &'a str, query: &'a [(&'a str, &'a str)]) -> Self {
        WebApiRequest {
            method: Method::GET,
            path,
            query,
            body: None,
            if_match: None,
            prefer: None,
            multipart: None,
            idempotency: Idempotency::Idempotent,
        }
    }
}

/// Dataverse's date and time form for `UserLocal` columns: stored as UTC, sent with `Z`.
pub fn dataverse_datetime(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `{set}({column}='{value}')`: the row of `table` that an alternate key names, encoded for
/// the URL path.
fn key_path(table: Table, column: &str, value: &str) -> String {
    format!(
        "{}({column}={})",
        table.entity_set,
        encode_path_segment(&odata_string(value))
    )
}

/// A string literal in `$filter`: single quotes, a quote inside doubled.
fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A tenant is a GUID or a domain name (`contoso.onmicrosoft.com`).
fn is_tenant(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Dataverse ids are GUIDs; anything else is refused, not escaped.
fn record_id(id: &str) -> Result<&str> {
    let groups: Vec<&str> = id.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    let is_guid = groups.len() == 5
        && groups
            .iter()
            .zip(lengths)
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    if is_guid {
        Ok(id)
    } else {
        Err(Error::validation(
            "customerId",
            "is not a valid Dynamics 365 record id (a GUID)",
        ))
    }
}

/// The new row's id: from `OData-EntityId` (`.../contacts(<guid>)`), or from the body when the
/// answer carries the row (`Prefer: return=representation`).
fn created_id(response: &CrmResponse, id_column: &str) -> Option<String> {
    let from_header = response
        .headers
        .get("odata-entityid")
        .and_then(|v| v.to_str().ok())
        .and_then(|url| {
            url.rsplit_once('(')?
                .1
                .strip_suffix(')')
                .map(str::to_string)
        })
        .filter(|id| record_id(id).is_ok());
    from_header.or_else(|| text(&response.body, id_column))
}

/// The parts of a `$batch` answer (`multipart/mixed`, each an `application/http` response
/// with its status line, headers and body), in order.
fn batch_answers(response: &CrmResponse) -> Result<Vec<CrmResponse>> {
    let unreadable = || Error::CrmUnavailable("Dataverse's $batch answer could not be read".into());
    let boundary = response
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| {
            ct.split(';').find_map(|p| {
                let (name, value) = p.split_once('=')?;
                (name.trim() == "boundary").then(|| value.trim().trim_matches('"').to_string())
            })
        })
        .ok_or_else(unreadable)?;
    let closing = format!("--{boundary}--");
    let end = response.text.find(&closing).ok_or_else(unreadable)?;
    response.text[..end]
        .split(&format!("--{boundary}"))
        .skip(1)
        .map(|part| {
            // The part's own headers, then the HTTP response.
            let (_, http) = split_head(part.trim_start_matches(['\r', '\n']));
            let (head, body) = split_head(http);
            let mut lines = head.lines();
            let status = lines
                .next()
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|code| code.parse::<u16>().ok())
                .ok_or_else(unreadable)?;
            let mut headers = HeaderMap::new();
            for (name, value) in lines.filter_map(|l| l.split_once(':')) {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.trim().as_bytes()),
                    HeaderValue::from_str(value.trim()),
                ) {
                    headers.insert(name, value);
                }
            }
            let text = body.trim_end().to_string();
            Ok(CrmResponse {
                status,
                headers,
                body: serde_json::from_str(&text).unwrap_or(Value::Null),
                text,
            })
        })
        .collect()
}

/// What comes before the first blank line, and after it.
fn split_head(text: &str) -> (&str, &str) {
    text.split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .unwrap_or((text, ""))
}

/// The answer itself when it is a success, else its error.
fn checked(response: CrmResponse) -> Result<CrmResponse> {
    if response.is_success() {
        Ok(response)
    } else {
        Err(dynamics_error(&response))
    }
}

/// Maps Dataverse's `{"error":{"code","message"}}` to ours. The code is often empty and does not
/// follow the status, so the status decides, except for duplicate detection, which the docs
/// show answered with 500 and list under 412.
fn dynamics_error(response: &CrmResponse) -> Error {
    let error = &response.body["error"];
    let code = error.get("code").and_then(Value::as_str).unwrap_or("");
    let message = match error.get("message").and_then(Value::as_str) {
        Some(m) if !code.is_empty() => format!("{code}: {m}"),
        Some(m) => m.to_string(),
        None => format!(
            "HTTP {} {}",
            response.status,
            response.text.chars().take(200).collect::<String>()
        ),
    };
    match response.status {
        _ if code.eq_ignore_ascii_case(DUPLICATE_DETECTED) => Error::CrmDuplicate {
            existing_id: None,
            message,
        },
        412 => Error::CrmDuplicate {
            existing_id: None,
            message,
        },
        // 400 for what we sent (a column the table lacks, a value too long).
        _ => status_error(response, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn datetimes_are_sent_in_utc() {
        let at = Utc.with_ymd_and_hms(2025, 11, 2, 17, 0, 0).unwrap();
        assert_eq!(dataverse_datetime(at), "2025-11-02T17:00:00Z");
    }

    #[test]
    fn filter_strings_double_their_quotes() {
        assert_eq!(
            odata_string("o'brien@example.com"),
            "'o''brien@example.com'"
        );
    }

    #[test]
    fn ids_are_guids_only() {
        assert!(record_id("4b5a9d0e-1c2f-4e3a-8b7c-6d5e4f3a2b1c").is_ok());
        for bad in [
            "",
            "999999",
            "contacts(1)",
            "4b5a9d0e-1c2f-4e3a-8b7c-6d5e4f3a2b1",
        ] {
            assert!(record_id(bad).is_err(), "{bad}");
        }
        assert!(is_tenant("contoso.onmicrosoft.com"));
        assert!(!is_tenant("contoso/../common"));
    }

    #[test]
    fn the_new_rows_id_comes_from_odata_entityid() {
        let mut response = CrmResponse::json(204, Value::Null);
        response.headers.insert(
            "odata-entityid",
            "https://contoso.crm.dynamics.com/api/data/v9.2/contacts(4b5a9d0e-1c2f-4e3a-8b7c-6d5e4f3a2b1c)"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            created_id(&response, "contactid").as_deref(),
            Some("4b5a9d0e-1c2f-4e3a-8b7c-6d5e4f3a2b1c")
        );
    }

    #[test]
    fn odata_errors_map_to_what_a_caller_can_do() {
        let limited = CrmResponse::json(
            429,
            json!({"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit of 6000 over time window of 300 seconds."}}),
        );
        assert!(matches!(
            dynamics_error(&limited),
            Error::RateLimited { .. }
        ));
        let duplicate = CrmResponse::json(
            500,
            json!({"error": {"code": "0x80040333", "message": "A record was not created or updated because a duplicate of the current record already exists."}}),
        );
        assert!(matches!(
            dynamics_error(&duplicate),
            Error::CrmDuplicate { .. }
        ));
        let missing = CrmResponse::json(
            404,
            json!({"error": {"code": "", "message": "appointment With Id = 4b5a9d0e-1c2f-4e3a-8b7c-6d5e4f3a2b1c Does Not Exist"}}),
        );
        assert!(matches!(dynamics_error(&missing), Error::NotFound(_)));
        let bad_column = CrmResponse::json(
            400,
            json!({"error": {"code": "0x80060888", "message": "Could not find a property named 'new_crmsyncid' on type 'Microsoft.Dynamics.CRM.contact'."}}),
        );
        match dynamics_error(&bad_column) {
            Error::CrmRejected { message } => assert!(message.contains("new_crmsyncid")),
            other => panic!("{other:?}"),
        }
        let down = CrmResponse::json(503, Value::Null);
        assert!(matches!(dynamics_error(&down), Error::CrmUnavailable(_)));
    }
}
