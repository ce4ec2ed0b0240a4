//! Freshworks CRM (Freshsales) emulator: contacts (unique email, create/update/upsert, lookup
//! and filtered search), sales accounts (upsert by name), lifecycle stages, appointments,
//! API-key auth, `{"errors": {"code", "message": [...]}}` error bodies and the per-account
//! hourly request limit.
//!
//! Behaviour follows https://developers.freshworks.com/crm/api/: entity-wrapped bodies
//! (`{"contact": {...}}`), numeric ids, `Authorization: Token token=<key>`, lookup by `email`,
//! `name` or a `cf_` field, upsert keyed on `unique_identifier` (200 updated, 201 created),
//! appointments with `from_date`/`end_date`/`time_zone` and a `targetable`, and 429 once the
//! hourly limit of the plan is spent. Filtered search (`POST /api/filtered_search/contact`,
//! ANDed `filter_rule`s, `is_in`) follows how integrators call it. Where the docs are silent the
//! choices are marked here: exact error wording, 200 on a plain create, `Retry-After` on the 429.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{IdSequence, RequestBudget, RunningEmulator, SlidingWindow, serve};

/// Requests per hour per account on the Blossom/Garden plans.
pub const HOURLY_LIMIT: u32 = 1000;
/// Paid plans' per-minute cap (support.freshsales.io article 50000010026).
pub const PER_MINUTE_LIMIT: u32 = 400;

const CONTACT_TEXT: &[&str] = &[
    "first_name",
    "last_name",
    "email",
    "job_title",
    "mobile_number",
    "work_number",
    "address",
    "city",
    "state",
    "zipcode",
    "country",
    "time_zone",
    "external_id",
    "medium",
    "keyword",
    "facebook",
    "twitter",
    "linkedin",
];
const CONTACT_IDS: &[&str] = &[
    "owner_id",
    "lifecycle_stage_id",
    "contact_status_id",
    "lead_source_id",
    "territory_id",
    "campaign_id",
];
const APPOINTMENT_TEXT: &[&str] = &[
    "title",
    "description",
    "location",
    "time_zone",
    "latitude",
    "longitude",
];
const APPOINTMENT_IDS: &[&str] = &["targetable_id", "outcome_id", "owner_id", "creater_id"];

/// One stored record: its attributes as the API names them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub fields: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Record {
    pub fn text(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }
    pub fn number(&self, name: &str) -> Option<u64> {
        self.fields.get(name).and_then(id_of)
    }
    /// `first last`, or the email when the contact has no name (as Freshworks shows it).
    pub fn display_name(&self) -> String {
        let name = [self.text("first_name"), self.text("last_name")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        if name.is_empty() {
            self.text("email").unwrap_or_default().to_string()
        } else {
            name
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LifecycleStage {
    pub id: u64,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub position: u32,
}

pub struct FreshsalesState {
    pub api_keys: HashSet<String>,
    ids: IdSequence,
    pub contacts: BTreeMap<u64, Record>,
    pub sales_accounts: BTreeMap<u64, Record>,
    pub appointments: BTreeMap<u64, Record>,
    /// Notes on contacts (`targetable_type`/`targetable_id`).
    pub notes: BTreeMap<u64, Record>,
    pub lifecycle_stages: Vec<LifecycleStage>,
    /// Outcomes an admin defined for the appointment activity type: `(id, name)`.
    pub appointment_outcomes: Vec<(u64, String)>,
    pub budget: RequestBudget,
    /// Paid plans' cap of 400 requests per minute, beside the hourly budget.
    pub per_minute: SlidingWindow,
    /// The custom fields the account admin created (`cf_…`); a lookup on another is refused.
    pub custom_fields: BTreeSet<String>,
}

impl FreshsalesState {
    pub fn new(api_keys: &[&str]) -> Self {
        let mut ids = IdSequence::starting_at(16_000_000_000);
        let mut next = || ids_next(&mut ids);
        let lifecycle_stages = [
            ("Lead", "Lead"),
            ("Sales Qualified Lead", "Sales Qualified Lead"),
            ("Customer", "Customer"),
        ]
        .iter()
        .zip(1..)
        .map(|((name, kind), position)| LifecycleStage {
            id: next(),
            name: name.to_string(),
            kind: kind.to_string(),
            position,
        })
        .collect();
        let appointment_outcomes = ["Interested", "Not interested", "Cancelled"]
            .iter()
            .map(|name| (next(), name.to_string()))
            .collect();
        FreshsalesState {
            api_keys: api_keys.iter().map(|k| k.to_string()).collect(),
            ids,
            contacts: BTreeMap::new(),
            sales_accounts: BTreeMap::new(),
            appointments: BTreeMap::new(),
            notes: BTreeMap::new(),
            lifecycle_stages,
            appointment_outcomes,
            budget: RequestBudget::new(HOURLY_LIMIT, chrono::Duration::hours(1)),
            per_minute: SlidingWindow::new(PER_MINUTE_LIMIT, std::time::Duration::from_secs(60)),
            custom_fields: ["cf_booking_city", "cf_crm_sync_id"]
                .iter()
                .map(|f| f.to_string())
                .collect(),
        }
    }

    /// Everything the CRM holds, for saving between runs of the local emulator.
    pub fn snapshot(&self) -> Value {
        json!({"lastId": self.ids.last(), "contacts": self.contacts, "salesAccounts": self.sales_accounts,
               "appointments": self.appointments, "notes": self.notes, "lifecycleStages": self.lifecycle_stages,
               "appointmentOutcomes": self.appointment_outcomes})
    }

    /// Loads what `snapshot` saved.
    pub fn restore(&mut self, snapshot: &Value) -> Result<(), serde_json::Error> {
        let read = |key: &str| snapshot.get(key).cloned().unwrap_or(Value::Null);
        self.contacts = serde_json::from_value(read("contacts"))?;
        self.sales_accounts = serde_json::from_value(read("salesAccounts"))?;
        self.appointments = serde_json::from_value(read("appointments"))?;
        if snapshot.get("notes").is_some() {
            self.notes = serde_json::from_value(read("notes"))?;
        }
        self.lifecycle_stages = serde_json::from_value(read("lifecycleStages"))?;
        self.appointment_outcomes = serde_json::from_value(read("appointmentOutcomes"))?;
        self.ids = IdSequence::starting_at(snapshot["lastId"].as_u64().unwrap_or(16_000_000_000));
        Ok(())
    }

    pub fn lead_stage_id(&self) -> u64 {
        self.lifecycle_stages
            .iter()
            .find(|s| s.kind == "Lead")
            .map(|s| s.id)
            .expect("the built-in Lead stage")
    }

    pub fn outcome_id(&self, name: &str) -> Option<u64> {
        self.appointment_outcomes
            .iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| *id)
    }

    /// The name of a contact's primary sales account.
    pub fn primary_account(&self, contact: &Record) -> Option<String> {
        contact
            .fields
            .get("sales_accounts")
            .and_then(Value::as_array)?
            .iter()
            .find(|a| a.get("is_primary") == Some(&Value::Bool(true)))
            .and_then(|a| a.get("id").and_then(id_of))
            .and_then(|id| self.sales_accounts.get(&id))
            .and_then(|a| a.text("name").map(str::to_string))
    }

    /// Adds a contact as a person using the CRM would (no validation), returning its id.
    pub fn add_contact(&mut self, fields: &[(&str, &str)]) -> String {
        let fields = fields
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        self.insert(Kind::Contact, fields).to_string()
    }

    fn insert(&mut self, kind: Kind, fields: Map<String, Value>) -> u64 {
        let id = ids_next(&mut self.ids);
        let now = Utc::now();
        let record = Record {
            id,
            fields,
            created_at: now,
            updated_at: now,
        };
        self.records_mut(kind).insert(id, record);
        id
    }

    fn records(&self, kind: Kind) -> &BTreeMap<u64, Record> {
        match kind {
            Kind::Contact => &self.contacts,
            Kind::SalesAccount => &self.sales_accounts,
            Kind::Appointment => &self.appointments,
            Kind::Note => &self.notes,
        }
    }

    fn records_mut(&mut self, kind: Kind) -> &mut BTreeMap<u64, Record> {
        match kind {
            Kind::Contact => &mut self.contacts,
            Kind::SalesAccount => &mut self.sales_accounts,
            Kind::Appointment => &mut self.appointments,
            Kind::Note => &mut self.notes,
        }
    }

    fn contact_with_email(&self, email: &str, except: Option<u64>) -> Option<&Record> {
        let email = email.trim();
        self.contacts.values().find(|c| {
            Some(c.id) != except
                && c.text("email")
                    .is_some_and(|e| e.eq_ignore_ascii_case(email))
        })
    }
}

fn ids_next(ids: &mut IdSequence) -> u64 {
    ids.next_id().parse().expect("numeric ids")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Contact,
    SalesAccount,
    Appointment,
    Note,
}

impl Kind {
    fn singular(self) -> &'static str {
        match self {
            Kind::Contact => "contact",
            Kind::SalesAccount => "sales_account",
            Kind::Appointment => "appointment",
            Kind::Note => "note",
        }
    }
}

pub type SharedState = Arc<Mutex<FreshsalesState>>;

pub struct FreshsalesEmulator {
    pub state: SharedState,
    pub server: RunningEmulator,
}

impl FreshsalesEmulator {
    pub async fn start(api_keys: &[&str]) -> std::io::Result<Self> {
        Self::start_on(api_keys, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(api_keys: &[&str], addr: SocketAddr) -> std::io::Result<Self> {
        let state: SharedState = Arc::new(Mutex::new(FreshsalesState::new(api_keys)));
        let server = serve(routes(state.clone()), error_body, addr).await?;
        Ok(FreshsalesEmulator { state, server })
    }

    pub fn base_url(&self) -> &str {
        &self.server.base_url
    }
}

/// Freshworks' error body for a status (wording is the emulator's; the shape is the API's).
pub fn error_body(status: StatusCode) -> Value {
    let message = match status.as_u16() {
        401 => "Incorrect or expired API key",
        403 => "You don't have permission to perform this action",
        404 => "The requested record was not found",
        429 => "API rate limit exceeded for this account",
        400 | 422 => "Invalid request",
        _ => "Something went wrong. Please try again later",
    };
    errors(status, &[message])
}

fn errors(status: StatusCode, messages: &[&str]) -> Value {
    json!({"errors": {"code": status.as_u16(), "message": messages}})
}

/// A refused request: the status and the CRM's message, answered in Freshworks' error body.
#[derive(Debug)]
pub struct Rejection {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (self.status, Json(errors(self.status, &[&self.message]))).into_response()
    }
}

type Reply = Result<Response, Rejection>;

fn bad_request(message: impl Into<String>) -> Rejection {
    Rejection {
        status: StatusCode::BAD_REQUEST,
        message: message.into(),
    }
}

fn not_found() -> Rejection {
    Rejection {
        status: StatusCode::NOT_FOUND,
        message: "The requested record was not found".into(),
    }
}

/// Checks the API key and the account's hourly budget, then answers with `f`.
fn authorised(
    state: &SharedState,
    headers: &HeaderMap,
    f: impl FnOnce(&mut FreshsalesState) -> Reply,
) -> Response {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token token="))
        .unwrap_or("");
    let mut state = state.lock().unwrap();
    if !state.api_keys.contains(key) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(error_body(StatusCode::UNAUTHORIZED)),
        )
            .into_response();
    }
    let minute = state.per_minute.take().map_err(|w| w.as_secs().max(1));
    if let Err(wait) = state.budget.take().and(minute) {
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(error_body(StatusCode::TOO_MANY_REQUESTS)),
        )
            .into_response();
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(wait));
        return response;
    }
    f(&mut state).unwrap_or_else(IntoResponse::into_response)
}

pub fn routes(state: SharedState) -> Router {
    Router::new()
        .route("/api/selector/owners", get(owners))
        .route("/api/selector/lifecycle_stages", get(lifecycle_stages))
        .route("/api/contacts", post(create_contact))
        .route("/api/contacts/upsert", post(upsert_contact))
        .route("/api/contacts/{id}", get(get_contact).put(update_contact))
        .route("/api/lookup", get(lookup))
        .route("/api/filtered_search/{entity}", post(filtered_search))
        .route("/api/sales_accounts/upsert", post(upsert_sales_account))
        .route("/api/appointments", post(create_appointment))
        .route("/api/notes", post(create_note))
        .route(
            "/api/appointments/{id}",
            get(get_appointment).put(update_appointment),
        )
        .with_state(state)
}

fn id_of(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// ISO 8601 with an offset, as appointment dates are written.
pub fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The `{"<entity>": {...}}` object of a request body.
fn entity(bytes: &Bytes, name: &str) -> Result<(Value, Map<String, Value>), Rejection> {
    let body: Value = serde_json::from_slice(bytes)
        .map_err(|_| bad_request("The request body is not valid JSON"))?;
    let object = body
        .get(name)
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| bad_request(format!("'{name}' is required")))?;
    Ok((body, object))
}

fn include(query: &BTreeMap<String, String>, what: &str) -> bool {
    query
        .get("include")
        .is_some_and(|i| i.split(',').any(|p| p.trim() == what))
}

fn contact_json(state: &FreshsalesState, contact: &Record, with_accounts: bool) -> Value {
    let mut out = contact.fields.clone();
    let accounts = out.remove("sales_accounts");
    out.insert("id".into(), contact.id.into());
    out.insert("display_name".into(), contact.display_name().into());
    let emails: Vec<Value> = contact
        .text("email")
        .map(|e| json!({"value": e, "is_primary": true, "label": null, "_destroy": false}))
        .into_iter()
        .collect();
    out.insert("emails".into(), emails.into());
    out.entry("custom_field").or_insert_with(|| json!({}));
    for attribute in CONTACT_TEXT.iter().chain(CONTACT_IDS) {
        out.entry(*attribute).or_insert(Value::Null);
    }
    out.insert("created_at".into(), iso(contact.created_at).into());
    out.insert("updated_at".into(), iso(contact.updated_at).into());
    if with_accounts {
        let linked: Vec<Value> = accounts
            .and_then(|a| a.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|link| {
                let account = state.sales_accounts.get(&link.get("id").and_then(id_of)?)?;
                Some(json!({"partial": true, "id": account.id, "name": account.text("name"),
                            "is_primary": link.get("is_primary").cloned().unwrap_or(Value::Bool(false))}))
            })
            .collect();
        out.insert("sales_accounts".into(), linked.into());
    }
    Value::Object(out)
}

fn record_json(record: &Record) -> Value {
    let mut out = record.fields.clone();
    out.insert("id".into(), record.id.into());
    out.insert("created_at".into(), iso(record.created_at).into());
    out.insert("updated_at".into(), iso(record.updated_at).into());
    Value::Object(out)
}

/// Text attributes take strings (or null to clear); id attributes take numbers or numeric strings.
fn check_scalars(
    input: &Map<String, Value>,
    text: &[&str],
    ids: &[&str],
    other: &[&str],
) -> Result<(), Rejection> {
    for (name, value) in input {
        let ok = if text.contains(&name.as_str()) {
            value.is_string() || value.is_null()
        } else if ids.contains(&name.as_str()) {
            value.is_null() || id_of(value).is_some()
        } else if other.contains(&name.as_str()) {
            true
        } else {
            return Err(bad_request(format!("Unknown attribute '{name}'")));
        };
        if !ok {
            return Err(bad_request(format!("Invalid value for '{name}'")));
        }
    }
    Ok(())
}

/// Applies `input` to `fields`: null clears an attribute, anything else replaces it.
fn merge(fields: &mut Map<String, Value>, input: Map<String, Value>) {
    for (name, value) in input {
        if value.is_null() {
            fields.remove(&name);
        } else {
            fields.insert(name, value);
        }
    }
}

/// Freshworks' checks on a contact write; `existing` is the contact being updated.
fn validate_contact(
    state: &FreshsalesState,
    existing: Option<&Record>,
    mut input: Map<String, Value>,
) -> Result<Map<String, Value>, Rejection> {
    // Some clients send the primary email as `emails`.
    if let Some(emails) = input.remove("emails")
        && emails.is_string()
        && !input.contains_key("email")
    {
        input.insert("email".into(), emails);
    }
    check_scalars(
        &input,
        CONTACT_TEXT,
        CONTACT_IDS,
        &["custom_field", "sales_accounts"],
    )?;
    if let Some(email) = input.get("email").and_then(Value::as_str) {
        let email = email.trim();
        if crm_sync::domain::Email::parse(email).is_err() {
            return Err(bad_request("Email is invalid"));
        }
        if state
            .contact_with_email(email, existing.map(|c| c.id))
            .is_some()
        {
            return Err(bad_request("Email is not unique"));
        }
        input.insert("email".into(), email.into());
    }
    if let Some(stage) = input.get("lifecycle_stage_id").and_then(id_of)
        && !state.lifecycle_stages.iter().any(|s| s.id == stage)
    {
        return Err(bad_request("Lifecycle stage is invalid"));
    }
    if let Some(custom) = input.get("custom_field") {
        let valid = custom.as_object().is_some_and(|m| {
            m.iter()
                .all(|(k, v)| k.starts_with("cf_") && !v.is_object() && !v.is_array())
        });
        if !valid {
            return Err(bad_request("custom_field must map cf_ fields to values"));
        }
    }
    if let Some(accounts) = input.get("sales_accounts") {
        let links = accounts
            .as_array()
            .ok_or_else(|| bad_request("sales_accounts must be a list"))?;
        for link in links {
            let id = link.get("id").and_then(id_of);
            if !id.is_some_and(|id| state.sales_accounts.contains_key(&id)) {
                return Err(bad_request("Sales account does not exist"));
            }
        }
        let primaries = links
            .iter()
            .filter(|l| l.get("is_primary") == Some(&Value::Bool(true)))
            .count();
        if links.len() > 10 || (!links.is_empty() && primaries != 1) {
            return Err(bad_request(
                "A contact can have up to 10 accounts with exactly one primary",
            ));
        }
    }
    let mut merged = existing.map(|c| c.fields.clone()).unwrap_or_default();
    merge(&mut merged, input);
    let has = |name: &str| {
        merged
            .get(name)
            .and_then(Value::as_str)
            .is_some_and(|v| !v.trim().is_empty())
    };
    if !has("email") && !has("mobile_number") {
        return Err(bad_request("Email or mobile number is required"));
    }
    Ok(merged)
}

/// Writes a validated contact; `None` creates one.
fn save_contact(
    state: &mut FreshsalesState,
    id: Option<u64>,
    input: Map<String, Value>,
) -> Result<u64, Rejection> {
    let existing = id.and_then(|id| state.contacts.get(&id));
    let fields = validate_contact(state, existing, input)?;
    Ok(match id {
        Some(id) => {
            let contact = state.contacts.get_mut(&id).expect("checked by the caller");
            contact.fields = fields;
            contact.updated_at = Utc::now();
            id
        }
        None => state.insert(Kind::Contact, fields),
    })
}

fn contact_answer(
    state: &FreshsalesState,
    status: StatusCode,
    id: u64,
    query: &BTreeMap<String, String>,
) -> Reply {
    let json = contact_json(
        state,
        &state.contacts[&id],
        include(query, "sales_accounts"),
    );
    let mut answer = json!({ "contact": json });
    // Side-loaded like Freshsales' other includes: the records beside the contact.
    let targeting = |records: &BTreeMap<u64, Record>| -> Vec<Value> {
        records
            .values()
            .filter(|a| {
                a.fields.get("targetable_type").and_then(Value::as_str) == Some("Contact")
                    && a.fields.get("targetable_id").and_then(id_of) == Some(id)
            })
            .map(record_json)
            .collect()
    };
    if include(query, "appointments") {
        answer["appointments"] = targeting(&state.appointments).into();
    }
    if include(query, "notes") {
        answer["notes"] = targeting(&state.notes).into();
    }
    Ok((status, Json(answer)).into_response())
}

/// The id in a path, if a record of that kind has it.
fn known_id(state: &FreshsalesState, kind: Kind, id: &str) -> Result<u64, Rejection> {
    id.parse::<u64>()
        .ok()
        .filter(|id| state.records(kind).contains_key(id))
        .ok_or_else(not_found)
}

async fn owners(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    authorised(&state, &headers, |_| {
        Ok(Json(json!({"users": [{"id": 16000000001u64, "display_name": "Demo Owner", "email": "owner@example.com"}]}))
            .into_response())
    })
}

async fn lifecycle_stages(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    authorised(&state, &headers, |s| {
        let stages: Vec<Value> = s
            .lifecycle_stages
            .iter()
            .map(|stage| {
                json!({"id": stage.id, "name": stage.name, "position": stage.position, "disabled": false,
                       "default": true, "type": stage.kind, "contact_status_ids": []})
            })
            .collect();
        Ok(Json(json!({ "lifecycle_stages": stages })).into_response())
    })
}

async fn create_contact(
    State(state): State<SharedState>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    authorised(&state, &headers, |s| {
        let (_, input) = entity(&bytes, "contact")?;
        let id = save_contact(s, None, input)?;
        contact_answer(s, StatusCode::OK, id, &query)
    })
}

async fn get_contact(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, |s| {
        let id = known_id(s, Kind::Contact, &id)?;
        contact_answer(s, StatusCode::OK, id, &query)
    })
}

async fn update_contact(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    authorised(&state, &headers, |s| {
        let id = known_id(s, Kind::Contact, &id)?;
        let (_, input) = entity(&bytes, "contact")?;
        let id = save_contact(s, Some(id), input)?;
        contact_answer(s, StatusCode::OK, id, &query)
    })
}

/// `unique_identifier: {"emails": …}` finds the contact to update, or the one to create.
async fn upsert_contact(
    State(state): State<SharedState>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    authorised(&state, &headers, |s| {
        let (body, mut input) = entity(&bytes, "contact")?;
        let identifier = body.get("unique_identifier").and_then(Value::as_object);
        let email = match identifier.map(|i| (i.len(), i.get("emails"))) {
            Some((1, Some(Value::String(email)))) if !email.trim().is_empty() => email.trim(),
            _ => {
                return Err(bad_request(
                    "unique_identifier must be {\"emails\": \"<email>\"}",
                ));
            }
        };
        let existing = s.contact_with_email(email, None).map(|c| c.id);
        if existing.is_none() && !input.contains_key("email") {
            input.insert("email".into(), email.into());
        }
        let id = save_contact(s, existing, input)?;
        let status = if existing.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        contact_answer(s, status, id, &query)
    })
}

/// Exact match on `email`, `name` or a `cf_` field across the asked entities.
async fn lookup(
    State(state): State<SharedState>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, |s| {
        let (Some(q), Some(f), Some(entities)) =
            (query.get("q"), query.get("f"), query.get("entities"))
        else {
            return Err(bad_request("q, f and entities are required"));
        };
        let q = q.trim();
        if f.starts_with("cf_") && !s.custom_fields.contains(f.as_str()) {
            return Err(bad_request(format!("'{f}' is not a field of contact")));
        }
        let matches = |record: &Record, kind: Kind| -> Result<bool, Rejection> {
            Ok(match f.as_str() {
                "email" if kind == Kind::Contact => record
                    .text("email")
                    .is_some_and(|e| e.eq_ignore_ascii_case(q)),
                "name" => {
                    let name = match kind {
                        Kind::Contact => record.display_name(),
                        _ => record.text("name").unwrap_or_default().to_string(),
                    };
                    name.eq_ignore_ascii_case(q)
                }
                custom if custom.starts_with("cf_") => record
                    .fields
                    .get("custom_field")
                    .and_then(|c| c.get(custom))
                    .is_some_and(|v| match v {
                        Value::String(t) => t == q,
                        Value::Number(n) => q.parse::<f64>().ok() == n.as_f64(),
                        _ => false,
                    }),
                other => return Err(bad_request(format!("'{other}' cannot be looked up"))),
            })
        };
        let mut answer = Map::new();
        for name in entities.split(',').map(str::trim) {
            let kind = match name {
                "contact" => Kind::Contact,
                "sales_account" => Kind::SalesAccount,
                "deal" => {
                    answer.insert("deals".into(), json!({"deals": []}));
                    continue;
                }
                other => return Err(bad_request(format!("'{other}' is not a lookup entity"))),
            };
            let mut found = Vec::new();
            for record in s.records(kind).values() {
                if matches(record, kind)? {
                    found.push(match kind {
                        Kind::Contact => contact_json(s, record, false),
                        _ => record_json(record),
                    });
                }
            }
            let plural = format!("{}s", kind.singular());
            answer.insert(plural.clone(), json!({ plural: found }));
        }
        Ok(Json(Value::Object(answer)).into_response())
    })
}

/// `filter_rule` entries are ANDed; `is_in` compares each value exactly (emails ignore case).
async fn filtered_search(
    State(state): State<SharedState>,
    Path(entity_name): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    authorised(&state, &headers, |s| {
        if entity_name != "contact" {
            return Err(bad_request(format!(
                "filtered search on '{entity_name}' is not emulated"
            )));
        }
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|_| bad_request("The request body is not valid JSON"))?;
        let rules = body
            .get("filter_rule")
            .and_then(Value::as_array)
            .ok_or_else(|| bad_request("filter_rule is required"))?;
        let mut conditions = Vec::new();
        for rule in rules {
            let attribute = rule.get("attribute").and_then(Value::as_str).unwrap_or("");
            let operator = rule.get("operator").and_then(Value::as_str).unwrap_or("");
            if operator != "is_in" {
                return Err(bad_request(format!(
                    "operator '{operator}' is not supported"
                )));
            }
            let field = match attribute {
                "contact_email.email" => "email",
                "mobile_number" | "work_number" | "first_name" | "last_name" | "city"
                | "lifecycle_stage_id" => attribute,
                custom if custom.starts_with("cf_") => custom,
                other => {
                    return Err(bad_request(format!(
                        "attribute '{other}' is not filterable"
                    )));
                }
            };
            let values: Vec<String> = match rule.get("value") {
                Some(Value::Array(items)) => items.iter().map(scalar_text).collect(),
                Some(value) => vec![scalar_text(value)],
                None => return Err(bad_request("value is required")),
            };
            conditions.push((field.to_string(), values));
        }
        let matched: Vec<&Record> = s
            .contacts
            .values()
            .filter(|c| {
                conditions.iter().all(|(field, values)| {
                    let actual = if field.starts_with("cf_") {
                        c.fields
                            .get("custom_field")
                            .and_then(|cf| cf.get(field.as_str()))
                    } else {
                        c.fields.get(field.as_str())
                    };
                    let Some(actual) = actual.filter(|v| !v.is_null()).map(scalar_text) else {
                        return false;
                    };
                    values.iter().any(|v| {
                        if field == "email" {
                            v.trim().eq_ignore_ascii_case(actual.trim())
                        } else {
                            *v == actual
                        }
                    })
                })
            })
            .collect();
        let per_page = query
            .get("per_page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(25)
            .clamp(1, 100);
        let page = query
            .get("page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let contacts: Vec<Value> = matched
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|c| contact_json(s, c, false))
            .collect();
        let total = matched.len();
        Ok(Json(json!({"contacts": contacts, "meta": {"total": total, "total_pages": total.div_ceil(per_page)}}))
            .into_response())
    })
}

fn scalar_text(value: &Value) -> String {
    value
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string())
}

/// `unique_identifier: {"name": …}` finds the account to update, or the one to create.
async fn upsert_sales_account(
    State(state): State<SharedState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    authorised(&state, &headers, |s| {
        let (body, mut input) = entity(&bytes, "sales_account")?;
        let name = match body.pointer("/unique_identifier/name") {
            Some(Value::String(name)) if !name.trim().is_empty() => name.trim().to_string(),
            _ => {
                return Err(bad_request(
                    "unique_identifier must be {\"name\": \"<account name>\"}",
                ));
            }
        };
        check_scalars(
            &input,
            &[
                "name", "address", "city", "state", "zipcode", "country", "phone", "website",
            ],
            &["owner_id", "industry_type_id", "business_type_id"],
            &["custom_field"],
        )?;
        input.insert("name".into(), name.clone().into());
        let existing = s
            .sales_accounts
            .values()
            .find(|a| {
                a.text("name")
                    .is_some_and(|n| n.eq_ignore_ascii_case(&name))
            })
            .map(|a| a.id);
        let (id, status) = match existing {
            Some(id) => {
                let account = s.sales_accounts.get_mut(&id).expect("found above");
                merge(&mut account.fields, input);
                account.updated_at = Utc::now();
                (id, StatusCode::OK)
            }
            None => (s.insert(Kind::SalesAccount, input), StatusCode::CREATED),
        };
        let json = record_json(&s.sales_accounts[&id]);
        Ok((status, Json(json!({ "sales_account": json }))).into_response())
    })
}

/// Freshworks' checks on an appointment write; `existing` is the appointment being updated.
fn validate_appointment(
    state: &FreshsalesState,
    existing: Option<&Record>,
    mut input: Map<String, Value>,
) -> Result<Map<String, Value>, Rejection> {
    let attendees = input.remove("appointment_attendees_attributes");
    check_scalars(
        &input,
        APPOINTMENT_TEXT,
        APPOINTMENT_IDS,
        &["from_date", "end_date", "is_allday", "targetable_type"],
    )?;
    for name in ["from_date", "end_date"] {
        if input
            .get(name)
            .is_some_and(|v| v.as_str().and_then(parse_time).is_none())
        {
            return Err(bad_request(format!(
                "'{name}' must be an ISO 8601 date-time with an offset"
            )));
        }
    }
    if input.get("is_allday").is_some_and(|v| !v.is_boolean()) {
        return Err(bad_request("is_allday must be true or false"));
    }
    if let Some(outcome) = input.get("outcome_id").and_then(id_of)
        && !state
            .appointment_outcomes
            .iter()
            .any(|(id, _)| *id == outcome)
    {
        return Err(bad_request("Outcome is invalid"));
    }
    let mut merged = existing.map(|a| a.fields.clone()).unwrap_or_default();
    merge(&mut merged, input);
    for required in ["title", "from_date", "end_date"] {
        if merged
            .get(required)
            .and_then(Value::as_str)
            .is_none_or(|v| v.trim().is_empty())
        {
            return Err(bad_request(format!("'{required}' is required")));
        }
    }
    let start = merged["from_date"].as_str().and_then(parse_time);
    let end = merged["end_date"].as_str().and_then(parse_time);
    if end <= start {
        return Err(bad_request("End date should be after the start date"));
    }
    let exists = |kind: &str, id: Option<u64>| match (kind, id) {
        ("Contact", Some(id)) => state.contacts.contains_key(&id),
        ("SalesAccount", Some(id)) => state.sales_accounts.contains_key(&id),
        ("Deal", Some(_)) => true,
        _ => false,
    };
    match (
        merged.get("targetable_type").and_then(Value::as_str),
        merged.get("targetable_id").and_then(id_of),
    ) {
        (None, None) => {}
        (Some(kind), id) if exists(kind, id) => {}
        (Some(kind), _) if !["Contact", "SalesAccount", "Deal"].contains(&kind) => {
            return Err(bad_request(
                "targetable_type must be Contact, SalesAccount or Deal",
            ));
        }
        _ => return Err(bad_request("The targetable record does not exist")),
    }
    if let Some(attendees) = attendees {
        let list = attendees
            .as_array()
            .ok_or_else(|| bad_request("appointment_attendees_attributes must be a list"))?;
        let mut all = merged
            .get("appointment_attendees")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for attendee in list {
            let kind = attendee.get("attendee_type").and_then(Value::as_str);
            let id = attendee.get("attendee_id").and_then(id_of);
            let known = match (kind, id) {
                (Some("Contact"), Some(id)) => state.contacts.contains_key(&id),
                (Some("FdMultitenant::User"), Some(_)) => true,
                _ => false,
            };
            if !known {
                return Err(bad_request("An attendee does not exist"));
            }
            // Nested attributes without an id add a row each time they are sent.
            all.push(json!({"attendee_type": kind, "attendee_id": id}));
        }
        merged.insert("appointment_attendees".into(), all.into());
    }
    Ok(merged)
}

fn appointment_answer(state: &FreshsalesState, id: u64) -> Reply {
    Ok(Json(json!({"appointment": record_json(&state.appointments[&id])})).into_response())
}

async fn create_appointment(
    State(state): State<SharedState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    authorised(&state, &headers, |s| {
        let (_, input) = entity(&bytes, "appointment")?;
        let fields = validate_appointment(s, None, input)?;
        let id = s.insert(Kind::Appointment, fields);
        appointment_answer(s, id)
    })
}

async fn get_appointment(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, |s| {
        let id = known_id(s, Kind::Appointment, &id)?;
        appointment_answer(s, id)
    })
}

async fn update_appointment(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    authorised(&state, &headers, |s| {
        let id = known_id(s, Kind::Appointment, &id)?;
        let (_, input) = entity(&bytes, "appointment")?;
        let fields = validate_appointment(s, s.appointments.get(&id), input)?;
        let appointment = s.appointments.get_mut(&id).expect("checked above");
        appointment.fields = fields;
        appointment.updated_at = Utc::now();
        appointment_answer(s, id)
    })
}

/// `POST /notes`: a note's `description` on a record (`targetable_type`, `targetable_id`).
async fn create_note(
    State(state): State<SharedState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    authorised(&state, &headers, |s| {
        let (_, input) = entity(&bytes, "note")?;
        if input
            .get("description")
            .and_then(Value::as_str)
            .is_none_or(|d| d.trim().is_empty())
        {
            return Err(bad_request("description can't be blank"));
        }
        let target = input.get("targetable_id").and_then(id_of);
        match input.get("targetable_type").and_then(Value::as_str) {
            Some("Contact") => {
                let known = target.is_some_and(|id| s.contacts.contains_key(&id));
                if !known {
                    return Err(bad_request("targetable_id is not a contact"));
                }
            }
            _ => {
                return Err(bad_request(
                    "targetable_type must be Contact, SalesAccount or Deal",
                ));
            }
        }
        let id = s.insert(Kind::Note, input);
        let note = record_json(&s.notes[&id]);
        Ok((StatusCode::CREATED, Json(json!({ "note": note }))).into_response())
    })
}
