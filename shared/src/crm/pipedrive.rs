//! Pipedrive: persons and meeting activities through API v2, leads through API v1.
//!
//! Paths, fields and response shapes follow Pipedrive's official OpenAPI specs
//! (https://developers.pipedrive.com/docs/api/v1/openapi.yaml and
//! https://developers.pipedrive.com/docs/api/v1/openapi-v2.yaml). Auth is the company's API token
//! in the `x-api-token` header on `https://{companyDomain}.pipedrive.com`
//! (https://pipedrive.readme.io/docs/core-api-concepts-authentication); rate limits and their
//! headers: https://pipedrive.readme.io/docs/core-api-concepts-rate-limiting.
//!
//! Why two versions: persons and activities go through v2 because the v1 spec no longer documents
//! those endpoints, v2 costs fewer tokens and validates strictly (`emails`/`phones` arrays, real
//! booleans, PATCH). Leads can only be written through v1 (v2 has lead search only).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use super::http::{CrmHttp, CrmResponse, Idempotency, retry_after, status_error};
use super::{
    AccountInfo, ContactLookup, CrmAdapter, CrmContact, StampedRecord, booked_line,
    customer_fields, lead_note, map_properties, property_name,
};
use crate::connection::{Connection, ConnectionSettings};
use crate::domain::{Appointment, AppointmentStatus, CrmType, Customer, E164Phone, Lead};
use crate::error::{Error, Result};

/// The activity type (an ActivityType `key_string`) appointments are booked as.
pub const MEETING_TYPE: &str = "meeting";
/// Pipedrive has no cancelled state: a cancelled meeting keeps its record, is marked done (off the
/// to-do list), frees the calendar slot (`busy: false`) and says so in its subject.
pub const CANCELLED_PREFIX: &str = "Cancelled: ";
/// Records asked for per lookup: a person search needs only enough to show a match is
/// ambiguous, a lead lookup only the oldest.
const LOOKUP_LIMIT: &str = "10";
/// Customer fields with a standard Pipedrive home (`name`, `emails`, `phones`). The others have
/// none, so they are written only to the person custom fields the connection maps them to.
const NATIVE_CONTACT_FIELDS: [&str; 4] = ["firstName", "lastName", "email", "phone"];

pub struct PipedriveAdapter {
    http: CrmHttp,
    base_url: String,
    /// The API token as a header value marked sensitive, so it never prints.
    token: HeaderValue,
    settings: ConnectionSettings,
    /// Country for reading stored phone numbers written without a country code.
    country: String,
}

impl PipedriveAdapter {
    pub fn new(connection: &Connection, http: CrmHttp) -> Result<Self> {
        let invalid = |message: String| Error::ConnectionInvalid {
            id: connection.id_str().to_string(),
            message,
        };
        let base_url = match &connection.settings.base_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => company_url(connection.setting_or_alias("companyDomain", &["companyDomain"]))
                .map_err(invalid)?,
        };
        let mut token = HeaderValue::from_str(connection.credential("apiToken")?.expose())
            .map_err(|_| invalid("credential 'apiToken' holds characters a token cannot".into()))?;
        token.set_sensitive(true);
        Ok(PipedriveAdapter {
            http: http.with_rate_limit_wait(rate_limit_wait),
            base_url,
            token,
            settings: connection.settings.clone(),
            country: connection.settings.validation_defaults()?.country,
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
        let url = format!("{}{path}", self.base_url);
        let response = self
            .http
            .send(idempotency, |client| {
                let request = client
                    .request(method.clone(), &url)
                    .header("x-api-token", self.token.clone())
                    .query(query);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        if response.is_success() {
            Ok(response)
        } else {
            Err(pipedrive_error(&response))
        }
    }

    /// Creates a record (never retried: a timeout may hide a success) and answers its id.
    async fn create(&self, path: &str, body: &Value) -> Result<String> {
        let response = self
            .call(
                Method::POST,
                path,
                &[],
                Some(body),
                Idempotency::NotIdempotent,
            )
            .await?;
        record_id(&response)
    }

    async fn update(&self, path: &str, body: &Value) -> Result<()> {
        self.call(
            Method::PATCH,
            path,
            &[],
            Some(body),
            Idempotency::Idempotent,
        )
        .await
        .map(|_| ())
    }

    /// A person by id; `None` when Pipedrive has none (or only a deleted one).
    async fn person(&self, id: u64) -> Result<Option<Value>> {
        let path = format!("/api/v2/persons/{id}");
        match self
            .call(Method::GET, &path, &[], None, Idempotency::Idempotent)
            .await
        {
            Ok(response) => Ok(Some(response.body["data"].clone())
                .filter(|p| p.is_object() && p["is_deleted"] != json!(true))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ids of the persons whose `field` (`email` or `phone`) matches `term`.
    async fn search_persons(&self, field: &str, term: &str, exact: bool) -> Result<Vec<u64>> {
        let query = [
            ("term", term),
            ("fields", field),
            ("exact_match", if exact { "true" } else { "false" }),
            ("limit", LOOKUP_LIMIT),
        ];
        let response = self
            .call(
                Method::GET,
                "/api/v2/persons/search",
                &query,
                None,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(response.body["data"]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|found| found["item"]["id"].as_u64())
            .collect())
    }

    /// The persons behind search hits, read in full: search results carry no first/last name
    /// or custom fields, and a single-person read costs 1 token against search's 20.
    async fn persons(&self, ids: &[u64], looked_up_email: Option<&str>) -> Result<Vec<CrmContact>> {
        let mut contacts = Vec::new();
        for id in ids {
            if let Some(person) = self.person(*id).await? {
                contacts.extend(self.to_contact(&person, looked_up_email));
            }
        }
        Ok(contacts)
    }

    /// A person in our vocabulary. Its email is the one it was looked up by when it has it
    /// (Pipedrive keeps several), else its primary one.
    fn to_contact(&self, person: &Value, looked_up_email: Option<&str>) -> Option<CrmContact> {
        let emails = values_primary_first(&person["emails"]);
        let email = looked_up_email
            .and_then(|wanted| emails.iter().find(|e| e.eq_ignore_ascii_case(wanted)))
            .or(emails.first())
            .cloned();
        let text = |v: &Value| {
            v.as_str()
                .or_else(|| v["value"].as_str())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let custom = |ours: &str| {
            property_name("contact", ours, &[], &self.settings)
                .and_then(|key| text(&person["custom_fields"][key]))
        };
        Some(CrmContact {
            crm_id: person["id"].as_u64()?.to_string(),
            first_name: text(&person["first_name"]),
            last_name: text(&person["last_name"]),
            email,
            phones: values_primary_first(&person["phones"]),
            address: custom("address"),
            city: custom("city"),
            state: custom("state"),
            zip_code: custom("zipCode"),
            country: custom("country"),
        })
    }

    /// The v2 person body. On update, `existing` keeps the person's other emails and phones:
    /// Pipedrive replaces the whole list it is sent.
    fn person_body(&self, customer: &Customer, existing: Option<&Value>) -> Value {
        let mut body = Map::new();
        let name = customer.full_name();
        if !name.is_empty() {
            body.insert("name".into(), name.into());
        } else if existing.is_none() {
            // A person needs a name; without one the way we know them stands in.
            let stand_in = customer
                .email
                .as_ref()
                .map(|e| e.as_str().to_string())
                .or_else(|| customer.phone.as_ref().map(|p| p.as_str().to_string()));
            body.extend(stand_in.map(|n| ("name".to_string(), n.into())));
        }
        let list = |key: &str| existing.map(|p| &p[key]).unwrap_or(&Value::Null);
        if let Some(email) = &customer.email {
            let emails = with_primary(list("emails"), email.as_str(), |stored| {
                stored.trim().eq_ignore_ascii_case(email.as_str())
            });
            body.extend(emails.map(|l| ("emails".to_string(), l)));
        }
        if let Some(phone) = &customer.phone {
            let phones = with_primary(list("phones"), phone.as_str(), |stored| {
                E164Phone::parse(stored, &self.country).is_ok_and(|p| &p == phone)
            });
            body.extend(phones.map(|l| ("phones".to_string(), l)));
        }
        let others: Vec<_> = customer_fields(customer)
            .into_iter()
            .filter(|(ours, _)| !NATIVE_CONTACT_FIELDS.contains(ours))
            .collect();
        let custom_fields = map_properties("contact", &others, &[], &self.settings);
        if !custom_fields.is_empty() {
            body.insert("custom_fields".into(), Value::Object(custom_fields));
        }
        Value::Object(body)
    }

    /// The v1 lead body: `title` (required) and the person it belongs to, plus whatever the
    /// connection maps `source` and `notes` to (lead custom fields are deal fields' keys).
    fn lead_body(&self, lead: &Lead, contact_id: Option<&str>) -> Result<Value> {
        let mut fields: Vec<(&'static str, String)> = vec![("title", lead.title())];
        fields.extend(lead.source.clone().map(|s| ("source", s)));
        fields.extend(lead.notes.clone().map(|n| ("notes", n)));
        let mut body = map_properties("lead", &fields, &[("title", "title")], &self.settings);
        body.entry("title").or_insert_with(|| lead.title().into());
        if let Some(id) = contact_id {
            body.insert("person_id".into(), numeric_id(id, "customerId")?.into());
        }
        Ok(Value::Object(body))
    }

    /// The activity with the stamp as its note's last line (activities hold no custom fields).
    fn stamped_activity(
        &self,
        appointment: &Appointment,
        contact_id: &str,
        stamp: &str,
    ) -> Result<Value> {
        let mut body = self.activity_body(appointment, contact_id)?;
        let note = body["note"].as_str().unwrap_or_default().to_string();
        body["note"] = format!("{note}{}", stamp_line(stamp)).into();
        Ok(body)
    }

    fn activity_body(&self, appointment: &Appointment, contact_id: &str) -> Result<Value> {
        let person = numeric_id(contact_id, "customerId")?;
        let start = appointment.window.start();
        let cancelled = appointment.status == AppointmentStatus::Cancelled;
        let subject = if cancelled {
            format!("{CANCELLED_PREFIX}{}", appointment.title)
        } else {
            appointment.title.clone()
        };
        let mut body = json!({
            "subject": subject,
            "type": MEETING_TYPE,
            "due_date": start.format("%Y-%m-%d").to_string(),
            // Pipedrive reads due_time as UTC; the date is the UTC date too.
            "due_time": start.format("%H:%M").to_string(),
            "duration": duration_hhmm(appointment.window.duration_minutes()),
            "person_id": person,
            "participants": [{"person_id": person, "primary": true}],
            "done": cancelled,
            "busy": !cancelled,
            "note": activity_note(appointment),
        });
        if let Some(location) = &appointment.location {
            body["location"] = json!({ "value": location });
        }
        Ok(body)
    }
}

#[async_trait]
impl CrmAdapter for PipedriveAdapter {
    fn crm_type(&self) -> CrmType {
        CrmType::Pipedrive
    }

    async fn test_connection(&self) -> Result<AccountInfo> {
        let response = self
            .call(
                Method::GET,
                "/api/v1/users/me",
                &[],
                None,
                Idempotency::Idempotent,
            )
            .await?;
        let user = &response.body["data"];
        let company = user["company_name"].as_str().unwrap_or("unknown");
        let domain = user["company_domain"].as_str().unwrap_or("unknown");
        Ok(AccountInfo {
            account: format!("Pipedrive company {company} ({domain}.pipedrive.com)"),
            warnings: Vec::new(),
        })
    }

    async fn find_contacts(&self, lookup: &ContactLookup) -> Result<Vec<CrmContact>> {
        match lookup {
            ContactLookup::Id(id) => {
                let id = numeric_id(id, "customerId")?;
                self.persons(&[id], None).await
            }
            ContactLookup::Email(email) => {
                let ids = self.search_persons("email", email.as_str(), true).await?;
                self.persons(&ids, Some(email.as_str())).await
            }
            ContactLookup::Phone(phone) => {
                // How Pipedrive normalises stored numbers for search is not documented; the
                // national number as a partial match finds them in E.164 and as typed, and the
                // caller keeps only exact matches in E.164.
                let ids = self
                    .search_persons("phone", &phone.national_number(), false)
                    .await?;
                self.persons(&ids, None).await
            }
        }
    }

    /// Persons need no stamp: the shared flow finds them by email, then phone, on every attempt.
    async fn create_contact(&self, customer: &Customer, _stamp: &str) -> Result<String> {
        let body = self.person_body(customer, None);
        self.create("/api/v2/persons", &body).await
    }

    async fn update_contact(&self, crm_id: &str, customer: &Customer) -> Result<()> {
        let id = numeric_id(crm_id, "customerId")?;
        let existing = self
            .person(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("Pipedrive person {id}")))?;
        let body = self.person_body(customer, Some(&existing));
        if body.as_object().is_some_and(Map::is_empty) {
            // What differs has no Pipedrive field to go to (an unmapped address, say).
            return Ok(());
        }
        let path = format!("/api/v2/persons/{id}");
        self.update(&path, &body).await
    }

    fn lead_needs_contact(&self) -> bool {
        true
    }

    async fn find_lead(&self, _lead: &Lead, contact_id: Option<&str>) -> Result<Option<String>> {
        let Some(contact_id) = contact_id else {
            return Ok(None);
        };
        let person = numeric_id(contact_id, "customerId")?.to_string();
        // Lists only leads that are not archived, oldest first.
        let query = [("person_id", person.as_str()), ("limit", LOOKUP_LIMIT)];
        let response = self
            .call(
                Method::GET,
                "/api/v1/leads",
                &query,
                None,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(response.body["data"]
            .as_array()
            .and_then(|leads| leads.first())
            .and_then(|lead| lead["id"].as_str())
            .map(str::to_string))
    }

    /// A lead is found by its person on every attempt (`find_lead`), so it needs no stamp.
    async fn create_lead(
        &self,
        lead: &Lead,
        contact_id: Option<&str>,
        _stamp: &str,
    ) -> Result<String> {
        let contact_id = contact_id.ok_or_else(|| Error::CrmRejected {
            message: "a Pipedrive lead must be linked to a person or an organization".into(),
        })?;
        let body = self.lead_body(lead, Some(contact_id))?;
        self.create("/api/v1/leads", &body).await
    }

    async fn update_lead(&self, crm_id: &str, lead: &Lead, contact_id: Option<&str>) -> Result<()> {
        let path = format!("/api/v1/leads/{}", lead_id(crm_id)?);
        let body = self.lead_body(lead, contact_id)?;
        self.update(&path, &body).await
    }

    /// Pipedrive persons have no address fields: ours are stored only where the connection maps
    /// them to person custom fields.
    fn not_stored_reason(&self, entity: &str, field: &str) -> Option<String> {
        let address = ["address", "city", "state", "zipCode", "country"];
        (entity == "contact"
            && address.contains(&field)
            && property_name("contact", field, &[], &self.settings).is_none())
        .then(|| {
            format!(
                "Pipedrive persons have no address fields; map fieldMappings.contact.{field} to a person custom field to store it"
            )
        })
    }

    /// A note (notes API, `lead_id`) on the lead, unless one with this content is there: after
    /// a lost answer, the retry finds it.
    async fn note_lead(&self, lead_id: &str, _contact_id: Option<&str>, lead: &Lead) -> Result<()> {
        let Some(note) = lead_note(lead, &[], &self.settings) else {
            return Ok(());
        };
        let lead_id = self::lead_id(lead_id)?;
        let content: String = note
            .split("\n\n")
            .map(|p| format!("<p>{}</p>", html_escape(p)))
            .collect();
        // One page of the lead's notes: a voice lead has a few, not a hundred.
        let query = [("lead_id", lead_id), ("limit", "100")];
        let response = self
            .call(
                Method::GET,
                "/api/v1/notes",
                &query,
                None,
                Idempotency::Idempotent,
            )
            .await?;
        let noted = response.body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["content"].as_str() == Some(content.as_str()));
        if noted {
            return Ok(());
        }
        let body = json!({ "content": content, "lead_id": lead_id });
        self.create("/api/v1/notes", &body).await.map(|_| ())
    }

    /// Activities hold no custom fields, so the stamp is the note's last line.
    async fn create_appointment(
        &self,
        appointment: &Appointment,
        contact_id: &str,
        stamp: &str,
    ) -> Result<String> {
        let body = self.stamped_activity(appointment, contact_id, stamp)?;
        self.create("/api/v2/activities", &body).await
    }

    /// Persons and leads: `None`, the shared flow's natural match follows. An activity: among
    /// the person's, the one whose note carries the stamp, else one with the same subject and
    /// start (the strongest natural match).
    async fn find_stamped(&self, stamp: &str, record: StampedRecord<'_>) -> Result<Option<String>> {
        let StampedRecord::Appointment {
            appointment,
            contact_id,
        } = record
        else {
            return Ok(None);
        };
        let person = numeric_id(contact_id, "customerId")?.to_string();
        let query = [
            ("person_id", person.as_str()),
            ("limit", LOOKUP_LIMIT),
            ("sort_by", "add_time"),
            ("sort_direction", "desc"),
        ];
        let response = self
            .call(
                Method::GET,
                "/api/v2/activities",
                &query,
                None,
                Idempotency::Idempotent,
            )
            .await?;
        let activities = response.body["data"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let line = stamp_line(stamp);
        let expected = self.activity_body(appointment, contact_id)?;
        let stamped = activities
            .iter()
            .find(|a| a["note"].as_str().is_some_and(|n| n.contains(&line)));
        let natural = || {
            activities.iter().find(|a| {
                ["subject", "due_date", "due_time"]
                    .iter()
                    .all(|k| a[*k] == expected[*k])
            })
        };
        Ok(stamped
            .or_else(natural)
            .and_then(|a| a["id"].as_u64())
            .map(|id| id.to_string()))
    }

    /// A reschedule or cancel updates the same activity; nothing is ever deleted.
    async fn update_appointment(
        &self,
        crm_id: &str,
        appointment: &Appointment,
        contact_id: &str,
        stamp: &str,
    ) -> Result<()> {
        let path = format!("/api/v2/activities/{}", numeric_id(crm_id, "appointment")?);
        let body = self.stamped_activity(appointment, contact_id, stamp)?;
        self.update(&path, &body).await
    }
}

/// `https://{companyDomain}.pipedrive.com`, from `acme`, `acme.pipedrive.com` or the URL people
/// copy from their browser.
fn company_url(domain: Option<&str>) -> std::result::Result<String, String> {
    let raw = domain
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .ok_or("setting 'companyDomain' is missing (the 'acme' of acme.pipedrive.com)")?;
    let host = raw
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_ascii_lowercase();
    let name = host.strip_suffix(".pipedrive.com").unwrap_or(&host);
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(format!("https://{name}.pipedrive.com"))
    } else {
        Err(format!(
            "setting 'companyDomain' ('{raw}') is not a Pipedrive company domain such as 'acme'"
        ))
    }
}

/// Person and activity ids are integers; CRM ids go into paths, so nothing else is accepted.
fn numeric_id(id: &str, field: &str) -> Result<u64> {
    id.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            Error::validation(field, "is not a Pipedrive record id (a positive integer)")
        })
}

/// Lead ids are UUIDs.
fn lead_id(id: &str) -> Result<&str> {
    let valid = id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if valid {
        Ok(id)
    } else {
        Err(Error::validation(
            "lead",
            "is not a Pipedrive lead id (a UUID)",
        ))
    }
}

fn record_id(response: &CrmResponse) -> Result<String> {
    let id = &response.body["data"]["id"];
    id.as_u64()
        .map(|n| n.to_string())
        .or_else(|| id.as_str().map(str::to_string))
        .ok_or_else(|| Error::CrmUnavailable("Pipedrive answered without a record id".into()))
}

/// The `value`s of an `emails`/`phones` list, primary first.
fn values_primary_first(list: &Value) -> Vec<String> {
    let mut entries: Vec<&Value> = list.as_array().into_iter().flatten().collect();
    entries.sort_by_key(|e| e["primary"] != json!(true));
    entries
        .iter()
        .filter_map(|e| e["value"].as_str().or_else(|| e.as_str()))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// The list to send so that `ours` is on it: `None` when the stored list already holds it,
/// else the stored entries (no longer primary) and `ours` as the primary one, the freshest.
fn with_primary(stored: &Value, ours: &str, same: impl Fn(&str) -> bool) -> Option<Value> {
    let stored: Vec<&Value> = stored.as_array().into_iter().flatten().collect();
    if stored
        .iter()
        .any(|e| e["value"].as_str().is_some_and(&same))
    {
        return None;
    }
    let mut list = vec![json!({"value": ours, "primary": true})];
    for entry in stored {
        let Some(value) = entry["value"].as_str() else {
            continue;
        };
        let mut kept = json!({"value": value, "primary": false});
        if let Some(label) = entry["label"].as_str() {
            kept["label"] = label.into();
        }
        list.push(kept);
    }
    Some(Value::Array(list))
}

/// `HH:MM`, as Pipedrive writes durations (hours may pass 24 for multi-day bookings).
fn duration_hhmm(minutes: i64) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// The activity note (HTML): the booking's notes, and the wall time it was booked at, since
/// Pipedrive shows activities in each viewer's own time zone.
/// The note line that says which crm-sync booking made an activity.
fn stamp_line(stamp: &str) -> String {
    format!("<p>crm-sync ref: {}</p>", html_escape(stamp))
}

fn activity_note(appointment: &Appointment) -> String {
    appointment
        .notes
        .iter()
        .map(|n| html_escape(n))
        .chain([booked_line(appointment)])
        .map(|p| format!("<p>{p}</p>"))
        .collect()
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Pipedrive errors: `{"success":false,"error":…,"error_info":…}`. A 429 says its wait in
/// Pipedrive's own headers.
fn pipedrive_error(response: &CrmResponse) -> Error {
    if response.status == 429 {
        return Error::RateLimited {
            retry_after: rate_limit_wait(&response.headers),
        };
    }
    status_error(response, response.error_message("error"))
}

/// How long a Pipedrive 429 asks us to wait. When the company's daily token budget is spent
/// (`x-daily-ratelimit-token-remaining: 0`) nothing short helps: the budget resets at midnight
/// (taken as UTC), so the wait is until then and the call fails fast. Otherwise it is the burst
/// limit's 2-second window: `Retry-After` when sent, else `x-ratelimit-reset` (seconds).
pub fn rate_limit_wait(headers: &HeaderMap) -> Option<Duration> {
    daily_budget_wait(headers, Utc::now()).or_else(|| {
        retry_after(headers).or_else(|| {
            let reset: f64 = headers
                .get("x-ratelimit-reset")?
                .to_str()
                .ok()?
                .trim()
                .parse()
                .ok()?;
            (reset >= 0.0).then(|| Duration::from_secs_f64(reset))
        })
    })
}

fn daily_budget_wait(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let remaining = headers
        .get("x-daily-ratelimit-token-remaining")?
        .to_str()
        .ok()?;
    if remaining.trim() != "0" {
        return None;
    }
    let midnight = (now.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 0)?;
    (midnight.and_utc() - now).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AppointmentWindow;
    use chrono::TimeZone;

    fn adapter(settings: ConnectionSettings) -> PipedriveAdapter {
        let connection = Connection {
            id: None,
            crm_type: CrmType::Pipedrive,
            credentials: [(
                "apiToken".to_string(),
                crate::connection::SecretString::new("t0ken"),
            )]
            .into(),
            settings,
        };
        let http = CrmHttp::with_policy(
            Duration::from_secs(1),
            super::super::http::RetryPolicy {
                attempts: 1,
                max_wait: Duration::from_secs(1),
                base_backoff: Duration::from_millis(10),
            },
        );
        PipedriveAdapter::new(&connection, http).unwrap()
    }

    fn settings(domain: &str) -> ConnectionSettings {
        ConnectionSettings {
            extra: [("companyDomain".to_string(), json!(domain))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_company_domain_is_read_however_it_was_copied() {
        for given in [
            "acme",
            "Acme.pipedrive.com",
            "https://acme.pipedrive.com/",
            " acme ",
        ] {
            assert_eq!(
                company_url(Some(given)).unwrap(),
                "https://acme.pipedrive.com"
            );
        }
        assert!(company_url(None).is_err());
        assert!(company_url(Some("evil.com/x")).is_err());
        assert!(company_url(Some("-acme")).is_err());
        assert_eq!(
            adapter(settings("acme")).base_url,
            "https://acme.pipedrive.com"
        );
    }

    #[test]
    fn the_earlier_services_credentials_with_the_company_domain_work_as_they_are() {
        let connection = Connection {
            id: None,
            crm_type: CrmType::Pipedrive,
            credentials: [("apiToken", "t0ken"), ("companyDomain", "acme")]
                .map(|(k, v)| (k.to_string(), crate::connection::SecretString::new(v)))
                .into(),
            settings: ConnectionSettings::default(),
        };
        let adapter = PipedriveAdapter::new(
            &connection,
            CrmHttp::new(&crate::config::Config::from_lookup(|_| None)),
        );
        assert_eq!(adapter.unwrap().base_url, "https://acme.pipedrive.com");
    }

    #[test]
    fn a_meeting_is_due_at_its_utc_date_and_time_and_a_cancel_frees_the_slot() {
        // 10:00 in Sydney on 5 April 2025 (AEDT, +11) is 23:00 UTC the day before.
        let start = Utc.with_ymd_and_hms(2025, 4, 4, 23, 0, 0).unwrap();
        let mut appointment = Appointment {
            external_id: None,
            title: "Consultation".into(),
            window: AppointmentWindow::new(start, start + chrono::Duration::minutes(90)).unwrap(),
            timezone: chrono_tz::Australia::Sydney,
            notes: Some("Bring <papers> & ID".into()),
            location: None,
            status: AppointmentStatus::Scheduled,
        };
        let adapter = adapter(settings("acme"));
        let body = adapter.activity_body(&appointment, "7").unwrap();
        assert_eq!(body["due_date"], "2025-04-04");
        assert_eq!(body["due_time"], "23:00");
        assert_eq!(body["duration"], "01:30");
        assert_eq!(body["type"], "meeting");
        assert_eq!(
            body["participants"],
            json!([{"person_id": 7, "primary": true}])
        );
        assert_eq!(
            (body["done"].clone(), body["busy"].clone()),
            (json!(false), json!(true))
        );
        assert_eq!(
            body["note"],
            "<p>Bring &lt;papers&gt; &amp; ID</p><p>Booked for 2025-04-05 10:00 AEDT (Australia/Sydney)</p>"
        );
        appointment.status = AppointmentStatus::Cancelled;
        let body = adapter.activity_body(&appointment, "7").unwrap();
        assert_eq!(body["subject"], "Cancelled: Consultation");
        assert_eq!(
            (body["done"].clone(), body["busy"].clone()),
            (json!(true), json!(false))
        );
        assert!(adapter.activity_body(&appointment, "7; DROP").is_err());
    }

    #[test]
    fn an_update_keeps_the_persons_other_emails_and_phones() {
        let adapter = adapter(settings("acme"));
        let customer = Customer {
            first_name: Some("Ada".into()),
            email: Some(crate::domain::Email::parse("ada@example.com").unwrap()),
            phone: Some(E164Phone::parse("+14155552671", "US").unwrap()),
            ..Default::default()
        };
        let existing = json!({
            "emails": [{"value": "ADA@example.com", "primary": false, "label": "home"}],
            "phones": [{"value": "(212) 555-0142", "primary": true, "label": "work"}],
        });
        let body = adapter.person_body(&customer, Some(&existing));
        assert!(body.get("emails").is_none(), "the email is there already");
        assert_eq!(
            body["phones"],
            json!([{"value": "+14155552671", "primary": true},
                   {"value": "(212) 555-0142", "primary": false, "label": "work"}])
        );
        let created = adapter.person_body(
            &Customer {
                first_name: None,
                ..customer
            },
            None,
        );
        assert_eq!(created["name"], "ada@example.com", "a person needs a name");
    }

    #[test]
    fn a_person_reads_back_with_the_email_it_was_found_by_and_mapped_custom_fields() {
        let mut settings = settings("acme");
        let key = "9dc80c50d78a15643bfc4ca79d76156a73a1ca0e";
        settings.field_mappings = [(
            "contact".to_string(),
            [("city".to_string(), key.to_string())].into(),
        )]
        .into();
        let adapter = adapter(settings);
        let person = json!({"id": 12, "first_name": "Ada", "last_name": "King",
            "emails": [{"value": "a@work.example", "primary": true}, {"value": "ada@example.com", "primary": false}],
            "phones": [{"value": "555", "primary": false}, {"value": "+14155552671", "primary": true}],
            "custom_fields": {key: "London"}});
        let contact = adapter
            .to_contact(&person, Some("ADA@example.com"))
            .unwrap();
        assert_eq!(contact.crm_id, "12");
        assert_eq!(contact.email.as_deref(), Some("ada@example.com"));
        assert_eq!(contact.phones, vec!["+14155552671", "555"]);
        assert_eq!(contact.city.as_deref(), Some("London"));
        let customer = Customer {
            city: Some("Paris".into()),
            ..Default::default()
        };
        assert_eq!(
            adapter.person_body(&customer, Some(&person))["custom_fields"],
            json!({key: "Paris"})
        );
    }

    #[test]
    fn a_spent_daily_budget_waits_until_midnight_and_a_burst_for_its_window() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            map
        };
        let now = Utc.with_ymd_and_hms(2025, 7, 1, 22, 30, 0).unwrap();
        let spent = headers(&[
            ("x-daily-ratelimit-token-remaining", "0"),
            ("retry-after", "2"),
        ]);
        assert_eq!(
            daily_budget_wait(&spent, now),
            Some(Duration::from_secs(90 * 60))
        );
        assert!(rate_limit_wait(&spent).unwrap() > Duration::from_secs(2));
        let burst = headers(&[
            ("x-daily-ratelimit-token-remaining", "5000"),
            ("x-ratelimit-reset", "2"),
        ]);
        assert_eq!(rate_limit_wait(&burst), Some(Duration::from_secs(2)));
        let told = headers(&[("retry-after", "7"), ("x-ratelimit-reset", "2")]);
        assert_eq!(rate_limit_wait(&told), Some(Duration::from_secs(7)));
        assert_eq!(rate_limit_wait(&HeaderMap::new()), None);
    }
}
