//! Pipedrive emulator: persons, person search and meeting activities (API v2), leads and the
//! current user (API v1), API-token auth, Pipedrive's error bodies, the daily token budget and
//! the 2-second burst limits (Essential: 20 requests, 10 searches) with their rate-limit headers.
//!
//! Shapes follow Pipedrive's official OpenAPI specs
//! (https://developers.pipedrive.com/docs/api/v1/openapi.yaml and
//! https://developers.pipedrive.com/docs/api/v1/openapi-v2.yaml): `{"success":true,"data":…}`,
//! v2 creates answer 200 and v1 lead creates 201, token costs are the specs' `x-token-cost`.
//! v2 refuses unknown fields, non-boolean flags and strings for numbers
//! (https://pipedrive.readme.io/docs/pipedrive-api-v2-migration-guide). Persons have no duplicate
//! rule. Auth and rate-limit headers: https://pipedrive.readme.io/docs/core-api-concepts-authentication,
//! https://pipedrive.readme.io/docs/core-api-concepts-rate-limiting.
//!
//! Not documented, so modelled as the likeliest reading: person search matches phone numbers by
//! their digits; a person's `first_name` is the first word of `name`; exhausting the daily budget
//! answers 429 with `x-daily-ratelimit-token-remaining: 0`.

// Handlers answer refusals as `Err(Response)`: the error is the HTTP answer itself, built once
// per request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{IdSequence, RunningEmulator, SlidingWindow, serve};

/// The company's daily token budget unless a test sets another.
pub const DAILY_TOKEN_BUDGET: u64 = 30_000;
/// Requests per API token in a rolling 2 seconds on the Essential plan, and search requests on
/// every plan (pipedrive.readme.io/docs/core-api-concepts-rate-limiting).
pub const BURST_LIMIT: u32 = 20;
pub const SEARCH_BURST_LIMIT: u32 = 10;
/// Activity types every company starts with (ActivityType `key_string`s).
const ACTIVITY_TYPES: [&str; 6] = ["call", "meeting", "task", "deadline", "email", "lunch"];
const PERSON_FIELDS: [&str; 15] = [
    "name",
    "owner_id",
    "org_id",
    "add_time",
    "emails",
    "phones",
    "visible_to",
    "label_ids",
    "postal_address",
    "notes",
    "im",
    "birthday",
    "job_title",
    "marketing_status",
    "custom_fields",
];
/// Person fields that exist only once contact sync is set up; this company has not.
const CONTACT_SYNC_FIELDS: [&str; 5] = ["postal_address", "notes", "im", "birthday", "job_title"];
const ACTIVITY_FIELDS: [&str; 19] = [
    "subject",
    "type",
    "owner_id",
    "deal_id",
    "lead_id",
    "person_id",
    "org_id",
    "project_id",
    "due_date",
    "due_time",
    "duration",
    "busy",
    "done",
    "location",
    "participants",
    "attendees",
    "public_description",
    "priority",
    "note",
];
const USER_ID: u64 = 1;

/// An entry of a person's `emails` or `phones`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Labeled {
    pub value: String,
    pub primary: bool,
    pub label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Person {
    pub id: u64,
    pub name: String,
    pub emails: Vec<Labeled>,
    pub phones: Vec<Labeled>,
    pub custom_fields: Map<String, Value>,
    pub is_deleted: bool,
    pub add_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Person {
    /// A person with only a name, not yet given an id.
    fn named(name: &str) -> Self {
        let now = now();
        Person {
            id: 0,
            name: name.into(),
            emails: vec![],
            phones: vec![],
            custom_fields: Map::new(),
            is_deleted: false,
            add_time: now,
            update_time: now,
        }
    }

    /// Pipedrive splits `name` into first and last name; the first word is taken as the first.
    pub fn first_name(&self) -> Option<&str> {
        self.name.split_whitespace().next()
    }
    pub fn last_name(&self) -> Option<&str> {
        self.name
            .trim()
            .split_once(char::is_whitespace)
            .map(|(_, rest)| rest.trim())
            .filter(|rest| !rest.is_empty())
    }
    pub fn primary_email(&self) -> Option<&str> {
        primary(&self.emails)
    }
}

fn primary(list: &[Labeled]) -> Option<&str> {
    list.iter()
        .find(|e| e.primary)
        .or(list.first())
        .map(|e| e.value.as_str())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Activity {
    pub id: u64,
    pub subject: String,
    pub kind: String,
    pub person_id: Option<u64>,
    /// (person id, primary)
    pub participants: Vec<(u64, bool)>,
    pub due_date: Option<NaiveDate>,
    /// UTC.
    pub due_time: Option<NaiveTime>,
    pub duration_minutes: Option<u32>,
    pub busy: bool,
    pub done: bool,
    pub marked_as_done_time: Option<DateTime<Utc>>,
    pub location: Option<String>,
    pub note: Option<String>,
    pub is_deleted: bool,
    pub add_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Activity {
    pub fn start(&self) -> Option<DateTime<Utc>> {
        Some(self.due_date?.and_time(self.due_time?).and_utc())
    }
    pub fn end(&self) -> Option<DateTime<Utc>> {
        Some(self.start()? + chrono::Duration::minutes(self.duration_minutes?.into()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lead {
    pub id: String,
    pub title: String,
    pub person_id: Option<u64>,
    pub organization_id: Option<u64>,
    pub is_archived: bool,
    /// Custom field values (deal field keys) at the lead's root.
    pub custom_fields: Map<String, Value>,
    pub add_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// A note (v1 notes API), here only as attached to leads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Note {
    pub id: u64,
    /// HTML, as Pipedrive keeps it.
    pub content: String,
    pub lead_id: Option<String>,
    pub person_id: Option<u64>,
    pub add_time: DateTime<Utc>,
}

pub struct PipedriveState {
    pub tokens: HashSet<String>,
    pub company_domain: String,
    person_ids: IdSequence,
    activity_ids: IdSequence,
    pub persons: BTreeMap<u64, Person>,
    pub activities: BTreeMap<u64, Activity>,
    /// Leads in the order they were added (Pipedrive lists them oldest first).
    pub leads: Vec<Lead>,
    note_ids: IdSequence,
    /// Notes in the order they were added.
    pub notes: Vec<Note>,
    pub daily_token_budget: u64,
    pub tokens_used: u64,
    /// Requests of the API token in any rolling 2 seconds.
    pub burst: SlidingWindow,
    /// Search requests in any rolling 2 seconds.
    pub search_burst: SlidingWindow,
}

impl PipedriveState {
    pub fn new(tokens: &[&str]) -> Self {
        PipedriveState {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            company_domain: "crm-sync-demo".into(),
            person_ids: IdSequence::starting_at(100),
            activity_ids: IdSequence::starting_at(500),
            persons: BTreeMap::new(),
            activities: BTreeMap::new(),
            leads: Vec::new(),
            note_ids: IdSequence::starting_at(900),
            notes: Vec::new(),
            daily_token_budget: DAILY_TOKEN_BUDGET,
            tokens_used: 0,
            burst: SlidingWindow::new(BURST_LIMIT, std::time::Duration::from_secs(2)),
            search_burst: SlidingWindow::new(SEARCH_BURST_LIMIT, std::time::Duration::from_secs(2)),
        }
    }

    /// No burst limits (tests whose volume is not about rate limits).
    /// The burst windows and the daily token budget out of the way (volume tests, benches).
    pub fn lift_rate_limits(&mut self) {
        self.burst.lift();
        self.search_burst.lift();
        self.daily_token_budget = u64::MAX / 2;
    }

    /// Everything the company holds, for saving between runs of the local emulator.
    pub fn snapshot(&self) -> Value {
        json!({
            "lastPersonId": self.person_ids.last(), "lastActivityId": self.activity_ids.last(),
            "persons": self.persons, "activities": self.activities, "leads": self.leads,
            "notes": self.notes, "lastNoteId": self.note_ids.last(),
        })
    }

    /// Loads what `snapshot` saved.
    pub fn restore(&mut self, snapshot: &Value) -> Result<(), serde_json::Error> {
        self.persons = serde_json::from_value(snapshot["persons"].clone())?;
        self.activities = serde_json::from_value(snapshot["activities"].clone())?;
        self.leads = serde_json::from_value(snapshot["leads"].clone())?;
        if !snapshot["notes"].is_null() {
            self.notes = serde_json::from_value(snapshot["notes"].clone())?;
        }
        self.note_ids = IdSequence::starting_at(snapshot["lastNoteId"].as_u64().unwrap_or(900));
        self.person_ids = IdSequence::starting_at(snapshot["lastPersonId"].as_u64().unwrap_or(100));
        self.activity_ids =
            IdSequence::starting_at(snapshot["lastActivityId"].as_u64().unwrap_or(500));
        Ok(())
    }

    /// Adds a person as someone using Pipedrive would (values as typed), returning its id.
    pub fn insert_person(&mut self, name: &str, email: Option<&str>, phone: Option<&str>) -> u64 {
        let entry = |value: &str| {
            vec![Labeled {
                value: value.into(),
                primary: true,
                label: "work".into(),
            }]
        };
        let person = Person {
            id: self.next_person_id(),
            emails: email.map(entry).unwrap_or_default(),
            phones: phone.map(entry).unwrap_or_default(),
            ..Person::named(name)
        };
        let id = person.id;
        self.persons.insert(id, person);
        id
    }

    pub fn live_persons(&self) -> impl Iterator<Item = &Person> {
        self.persons.values().filter(|p| !p.is_deleted)
    }

    pub fn live_activities(&self) -> impl Iterator<Item = &Activity> {
        self.activities.values().filter(|a| !a.is_deleted)
    }

    fn next_person_id(&mut self) -> u64 {
        self.person_ids.next_id().parse().expect("numeric ids")
    }

    fn person_exists(&self, id: u64) -> bool {
        self.persons.get(&id).is_some_and(|p| !p.is_deleted)
    }
}

pub type SharedState = Arc<Mutex<PipedriveState>>;

pub struct PipedriveEmulator {
    pub state: SharedState,
    pub server: RunningEmulator,
}

impl PipedriveEmulator {
    pub async fn start(tokens: &[&str]) -> std::io::Result<Self> {
        Self::start_on(tokens, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(tokens: &[&str], addr: SocketAddr) -> std::io::Result<Self> {
        let state: SharedState = Arc::new(Mutex::new(PipedriveState::new(tokens)));
        let server = serve(routes(state.clone()), error_body, addr).await?;
        Ok(PipedriveEmulator { state, server })
    }

    pub fn base_url(&self) -> &str {
        &self.server.base_url
    }
}

pub fn routes(state: SharedState) -> Router {
    Router::new()
        .route("/api/v1/users/me", get(current_user))
        .route("/api/v2/persons", axum::routing::post(create_person))
        .route("/api/v2/persons/search", get(search_persons))
        .route("/api/v2/persons/{id}", get(get_person).patch(update_person))
        .route(
            "/api/v2/activities",
            get(list_activities).post(create_activity),
        )
        .route(
            "/api/v2/activities/{id}",
            get(get_activity)
                .patch(update_activity)
                .delete(delete_activity),
        )
        .route("/api/v1/leads", get(list_leads).post(create_lead))
        .route("/api/v1/leads/{id}", get(get_lead).patch(update_lead))
        .route("/api/v1/notes", get(list_notes).post(create_note))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            burst_limits,
        ))
        .with_state(state)
}

/// Pipedrive's 2-second burst limits, before the routes: search endpoints' own, then the API
/// token's. A refusal is Pipedrive's 429; every answer carries `x-ratelimit-limit`,
/// `x-ratelimit-remaining` and `x-ratelimit-reset`.
async fn burst_limits(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let search = request
        .uri()
        .path()
        .trim_end_matches('/')
        .ends_with("/search");
    let refused = {
        let mut state = state.lock().unwrap();
        let search_refused = if search {
            state.search_burst.take().err()
        } else {
            None
        };
        search_refused.or_else(|| state.burst.take().err())
    };
    let mut response = match refused {
        Some(wait) => {
            let mut response = answer(
                StatusCode::TOO_MANY_REQUESTS,
                error_body(StatusCode::TOO_MANY_REQUESTS),
            );
            response.headers_mut().insert(
                "retry-after",
                HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64),
            );
            response
        }
        None => next.run(request).await,
    };
    let (limit, remaining) = {
        let mut state = state.lock().unwrap();
        (state.burst.limit, state.burst.remaining())
    };
    if limit == u32::MAX {
        // Lifted: there is no limit to report.
        return response;
    }
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(2u64));
    response
}

/// Pipedrive's error body for a status, as injected faults answer.
pub fn error_body(status: StatusCode) -> Value {
    match status.as_u16() {
        401 => json!({"success": false, "error": "unauthorized access", "errorCode": 401,
            "error_info": "Please check developers.pipedrive.com"}),
        404 => failure("Entity was not found", "Object was not found."),
        429 => json!({"success": false, "error": "Request over limit", "errorCode": 429,
            "error_info": "Please check developers.pipedrive.com"}),
        500..=599 => failure(
            "Internal Server Error occurred. Pipedrive staff was notified about this.",
            "Please check developers.pipedrive.com",
        ),
        _ => failure("Bad request", "Please check developers.pipedrive.com"),
    }
}

fn failure(error: &str, info: &str) -> Value {
    json!({"success": false, "error": error, "error_info": info, "data": null, "additional_data": null})
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn invalid(field: &str, problem: &str) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        failure(
            &format!("Validation failed: {field}: {problem}"),
            "Please check developers.pipedrive.com",
        ),
    )
}

fn not_found() -> Response {
    answer(StatusCode::NOT_FOUND, error_body(StatusCode::NOT_FOUND))
}

fn lead_not_found() -> Response {
    answer(
        StatusCode::NOT_FOUND,
        failure("requested lead not found", "Object was not found."),
    )
}

fn ok(data: Value) -> Response {
    answer(StatusCode::OK, json!({"success": true, "data": data}))
}

fn now() -> DateTime<Utc> {
    // Pipedrive's timestamps have whole seconds.
    DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now is in range")
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

type Reply = Result<Response, Response>;
type Params = BTreeMap<String, String>;

/// Checks the API token (`x-api-token`, or the legacy `api_token` query parameter), charges the
/// operation's token cost to the daily budget, and adds Pipedrive's rate-limit headers.
fn authorised(
    state: &SharedState,
    headers: &HeaderMap,
    query: &Params,
    cost: u64,
    f: impl FnOnce(&mut PipedriveState) -> Reply,
) -> Response {
    let token = headers
        .get("x-api-token")
        .and_then(|v| v.to_str().ok())
        .or(query.get("api_token").map(String::as_str))
        .unwrap_or("");
    let mut state = state.lock().unwrap();
    if !state.tokens.contains(token) {
        return answer(
            StatusCode::UNAUTHORIZED,
            error_body(StatusCode::UNAUTHORIZED),
        );
    }
    let budget = state.daily_token_budget;
    if state.tokens_used + cost > budget {
        let mut response = answer(
            StatusCode::TOO_MANY_REQUESTS,
            error_body(StatusCode::TOO_MANY_REQUESTS),
        );
        let headers = response.headers_mut();
        headers.insert("x-daily-ratelimit-token-limit", HeaderValue::from(budget));
        headers.insert("x-daily-ratelimit-token-remaining", HeaderValue::from(0u64));
        headers.insert("retry-after", HeaderValue::from(2u64));
        return response;
    }
    state.tokens_used += cost;
    let remaining = budget - state.tokens_used;
    let mut response = f(&mut state).unwrap_or_else(|refused| refused);
    let headers = response.headers_mut();
    headers.insert("x-daily-ratelimit-token-limit", HeaderValue::from(budget));
    headers.insert(
        "x-daily-ratelimit-token-remaining",
        HeaderValue::from(remaining),
    );
    response
}

fn json_object(body: &Bytes) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(invalid("body", "must be a JSON object")),
    }
}

/// API v2's strict validation: only documented fields, each of its own JSON type.
fn v2_object(body: &Bytes, allowed: &[&str]) -> Result<Map<String, Value>, Response> {
    let map = json_object(body)?;
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(invalid(unknown, "This field is not allowed")),
        None => Ok(map),
    }
}

fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, Response> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(key, "This value should be of type string.")),
    }
}

fn integer(map: &Map<String, Value>, key: &str) -> Result<Option<u64>, Response> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(key, "This value should be of type integer.")),
    }
}

fn boolean(map: &Map<String, Value>, key: &str) -> Result<Option<bool>, Response> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| invalid(key, "This value should be of type boolean.")),
    }
}

fn path_id(raw: &str) -> Result<u64, Response> {
    raw.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid("id", "This value should be of type integer."))
}

/// `emails` / `phones`: `[{value, primary, label}]`; the first entry is primary if none is.
fn labeled_list(map: &Map<String, Value>, key: &str) -> Result<Option<Vec<Labeled>>, Response> {
    let Some(raw) = map.get(key).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let entries = raw
        .as_array()
        .ok_or_else(|| invalid(key, "This value should be of type array."))?;
    let mut list = Vec::new();
    for entry in entries {
        let entry = entry
            .as_object()
            .ok_or_else(|| invalid(key, "This value should be of type object."))?;
        let value = string(entry, "value")?
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid(&format!("{key}.value"), "This value should not be blank."))?;
        list.push(Labeled {
            value,
            primary: boolean(entry, "primary")?.unwrap_or(false),
            label: string(entry, "label")?.unwrap_or_else(|| "work".into()),
        });
    }
    if !list.iter().any(|e| e.primary)
        && let Some(first) = list.first_mut()
    {
        first.primary = true;
    }
    Ok(Some(list))
}

/// Custom field values keyed by field key (40 hexadecimal characters); `null` clears one.
fn custom_fields(map: &Map<String, Value>) -> Result<Option<Map<String, Value>>, Response> {
    let Some(raw) = map.get("custom_fields").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let fields = raw
        .as_object()
        .ok_or_else(|| invalid("custom_fields", "This value should be of type object."))?;
    match fields.keys().find(|k| !is_field_key(k)) {
        Some(key) => Err(invalid(
            "custom_fields",
            &format!("Unknown custom field key: {key}"),
        )),
        None => Ok(Some(fields.clone())),
    }
}

fn is_field_key(key: &str) -> bool {
    key.len() == 40 && key.chars().all(|c| c.is_ascii_hexdigit())
}

fn labeled_json(list: &[Labeled]) -> Value {
    json!(
        list.iter()
            .map(|e| json!({"value": e.value, "primary": e.primary, "label": e.label}))
            .collect::<Vec<_>>()
    )
}

fn person_json(person: &Person) -> Value {
    let mut data = json!({
        "id": person.id, "name": person.name, "owner_id": USER_ID,
        "add_time": rfc3339(person.add_time), "update_time": rfc3339(person.update_time),
        "emails": labeled_json(&person.emails), "phones": labeled_json(&person.phones),
        "is_deleted": person.is_deleted, "visible_to": 3, "label_ids": [],
        "custom_fields": person.custom_fields,
    });
    if let Some(first) = person.first_name() {
        data["first_name"] = first.into();
    }
    if let Some(last) = person.last_name() {
        data["last_name"] = last.into();
    }
    data
}

async fn current_user(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Params>,
) -> Response {
    authorised(&state, &headers, &query, 2, |s| {
        Ok(ok(json!({
            "id": USER_ID, "name": "Demo User", "default_currency": "USD", "locale": "en_US",
            "lang": 1, "email": "demo@example.com", "activated": true, "has_created_company": true,
            "active_flag": true, "timezone_name": "UTC", "timezone_offset": "+00:00", "role_id": 1,
            "is_you": true, "is_deleted": false, "company_id": 4242,
            "company_name": "crm-sync demo", "company_domain": s.company_domain,
            "company_country": "US",
        })))
    })
}

/// Applies a v2 person body (create or update) to `person`.
fn apply_person(person: &mut Person, body: &Map<String, Value>) -> Result<(), Response> {
    if let Some(field) = CONTACT_SYNC_FIELDS.iter().find(|f| body.contains_key(**f)) {
        return Err(invalid(
            field,
            "This field is available only when contact sync is enabled",
        ));
    }
    for key in ["owner_id", "org_id", "visible_to"] {
        integer(body, key)?;
    }
    if let Some(name) = string(body, "name")? {
        let name = name.trim();
        if name.is_empty() {
            return Err(invalid("name", "This value should not be blank."));
        }
        person.name = name.to_string();
    }
    if let Some(emails) = labeled_list(body, "emails")? {
        person.emails = emails;
    }
    if let Some(phones) = labeled_list(body, "phones")? {
        person.phones = phones;
    }
    for (key, value) in custom_fields(body)?.unwrap_or_default() {
        match value {
            Value::Null => person.custom_fields.remove(&key),
            value => person.custom_fields.insert(key, value),
        };
    }
    person.update_time = now();
    Ok(())
}

async fn create_person(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Params>,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, &query, 5, |s| {
        let body = v2_object(&body, &PERSON_FIELDS)?;
        if string(&body, "name")?.is_none_or(|n| n.trim().is_empty()) {
            return Err(invalid("name", "This value should not be blank."));
        }
        let mut person = Person::named("");
        apply_person(&mut person, &body)?;
        person.id = s.next_person_id();
        let data = person_json(&person);
        s.persons.insert(person.id, person);
        Ok(ok(data))
    })
}

async fn get_person(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<Params>,
) -> Response {
    authorised(&state, &headers, &query, 1, |s| {
        let id = path_id(&id)?;
        match s.persons.get(&id).filter(|p| !p.is_deleted) {
            Some(person) => Ok(ok(person_json(person))),
            None => Err(not_found()),
        }
    })
}

async fn update_person(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<Params>,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, &query, 5, |s| {
        let id = path_id(&id)?;
        let body = v2_object(&body, &PERSON_FIELDS)?;
        let person = s
            .persons
            .get_mut(&id)
            .filter(|p| !p.is_deleted)
            .ok_or_else(not_found)?;
        // Validate on a copy so a refused update changes nothing.
        let mut updated = person.clone();
        apply_person(&mut updated, &body)?;
        *person = updated;
        Ok(ok(person_json(person)))
    })
}

fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

/// Whether `person` matches the search `term` in `field`.
fn person_matches(person: &Person, field: &str, term: &str, exact: bool) -> bool {
    let text = |candidate: &str| {
        let (candidate, term) = (candidate.trim().to_lowercase(), term.trim().to_lowercase());
        if exact {
            candidate == term
        } else {
            candidate.contains(&term)
        }
    };
    match field {
        "email" => person.emails.iter().any(|e| text(&e.value)),
        "phone" => {
            let wanted = digits(term);
            !wanted.is_empty()
                && person.phones.iter().any(|p| {
                    let stored = digits(&p.value);
                    if exact {
                        stored == wanted
                    } else {
                        stored.contains(&wanted)
                    }
                })
        }
        "name" => text(&person.name),
        "custom_fields" => person
            .custom_fields
            .values()
            .filter_map(Value::as_str)
            .any(text),
        _ => false,
    }
}

async fn search_persons(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Params>,
) -> Response {
    authorised(&state, &headers, &query, 20, |s| {
        let exact = match query.get("exact_match").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(invalid(
                    "exact_match",
                    "This value should be of type boolean.",
                ));
            }
        };
        let term = query.get("term").map(|t| t.trim()).unwrap_or("");
        if term.chars().count() < if exact { 1 } else { 2 } {
            return Err(invalid(
                "term",
                "Minimum 2 characters (or 1 if using exact_match)",
            ));
        }
        let all = ["custom_fields", "email", "notes", "phone", "name"];
        let fields: Vec<&str> = match query.get("fields") {
            Some(list) => list.split(',').map(str::trim).collect(),
            None => all.to_vec(),
        };
        if let Some(unknown) = fields.iter().find(|f| !all.contains(f)) {
            return Err(invalid(
                "fields",
                &format!("{unknown} is not a searchable field"),
            ));
        }
        let limit: usize = match query.get("limit") {
            None => 100,
            Some(n) => n
                .parse()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| invalid("limit", "This value should be between 1 and 500."))?,
        };
        let offset: usize = match query.get("cursor") {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| invalid("cursor", "This value is not a valid cursor."))?,
        };
        let found: Vec<&Person> = s
            .live_persons()
            .filter(|p| fields.iter().any(|f| person_matches(p, f, term, exact)))
            .collect();
        let items: Vec<Value> = found
            .iter()
            .skip(offset)
            .take(limit)
            .map(|p| {
                json!({"result_score": if exact { 1.0 } else { 0.5 }, "item": {
                    "id": p.id, "type": "person", "name": p.name,
                    "phones": p.phones.iter().map(|e| &e.value).collect::<Vec<_>>(),
                    "emails": p.emails.iter().map(|e| &e.value).collect::<Vec<_>>(),
                    "visible_to": 3, "owner": {"id": USER_ID}, "custom_fields": [], "notes": [],
                }})
            })
            .collect();
        let mut additional = json!({});
        if offset + limit < found.len() {
            additional["next_cursor"] = (offset + limit).to_string().into();
        }
        Ok(answer(
            StatusCode::OK,
            json!({"success": true, "data": {"items": items}, "additional_data": additional}),
        ))
    })
}

fn activity_json(activity: &Activity) -> Value {
    let mut data = json!({
        "id": activity.id, "subject": activity.subject, "type": activity.kind,
        "owner_id": USER_ID, "creator_user_id": USER_ID, "is_deleted": activity.is_deleted,
        "add_time": rfc3339(activity.add_time), "update_time": rfc3339(activity.update_time),
        "busy": activity.busy, "done": activity.done,
        "participants": activity.participants.iter()
            .map(|(id, primary)| json!({"person_id": id, "primary": primary})).collect::<Vec<_>>(),
        "attendees": [],
    });
    let optional = [
        ("person_id", activity.person_id.map(Value::from)),
        (
            "due_date",
            activity
                .due_date
                .map(|d| d.format("%Y-%m-%d").to_string().into()),
        ),
        (
            "due_time",
            activity
                .due_time
                .map(|t| t.format("%H:%M:%S").to_string().into()),
        ),
        (
            "duration",
            activity
                .duration_minutes
                .map(|m| format!("{:02}:{:02}:00", m / 60, m % 60).into()),
        ),
        (
            "marked_as_done_time",
            activity.marked_as_done_time.map(|t| rfc3339(t).into()),
        ),
        (
            "location",
            activity.location.as_ref().map(|l| json!({"value": l})),
        ),
        ("note", activity.note.clone().map(Value::from)),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            data[key] = value;
        }
    }
    data
}

/// `HH:MM` or `HH:MM:SS` as minutes; `max_hours` bounds the hours (24 for a time of day).
fn clock(map: &Map<String, Value>, key: &str, max_hours: u32) -> Result<Option<u32>, Response> {
    let Some(raw) = string(map, key)? else {
        return Ok(None);
    };
    let parts: Option<Vec<u32>> = raw
        .split(':')
        .map(|p| {
            (p.len() >= 2 && p.chars().all(|c| c.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect();
    match parts.as_deref() {
        Some([h, m]) if *h < max_hours && *m < 60 => Ok(Some(h * 60 + m)),
        Some([h, m, sec]) if *h < max_hours && *m < 60 && *sec < 60 => Ok(Some(h * 60 + m)),
        _ => Err(invalid(key, "This value is not a valid datetime.")),
    }
}

/// Applies a v2 activity body (create or update) to `activity`.
fn apply_activity(
    s: &PipedriveState,
    activity: &mut Activity,
    body: &Map<String, Value>,
) -> Result<(), Response> {
    for key in ["owner_id", "deal_id", "org_id", "project_id", "priority"] {
        integer(body, key)?;
    }
    if let Some(subject) = string(body, "subject")? {
        activity.subject = subject;
    }
    if let Some(kind) = string(body, "type")? {
        if !ACTIVITY_TYPES.contains(&kind.as_str()) {
            return Err(invalid(
                "type",
                &format!("Activity type '{kind}' does not exist"),
            ));
        }
        activity.kind = kind;
    }
    if let Some(person) = integer(body, "person_id")? {
        if !s.person_exists(person) {
            return Err(invalid(
                "person_id",
                &format!("Person {person} was not found"),
            ));
        }
        activity.person_id = Some(person);
    }
    if let Some(raw) = body.get("participants").filter(|v| !v.is_null()) {
        let entries = raw
            .as_array()
            .ok_or_else(|| invalid("participants", "This value should be of type array."))?;
        let mut participants = Vec::new();
        for entry in entries {
            let entry = entry
                .as_object()
                .ok_or_else(|| invalid("participants", "This value should be of type object."))?;
            let person = integer(entry, "person_id")?.ok_or_else(|| {
                invalid("participants.person_id", "This value should not be blank.")
            })?;
            if !s.person_exists(person) {
                return Err(invalid(
                    "participants.person_id",
                    &format!("Person {person} was not found"),
                ));
            }
            participants.push((person, boolean(entry, "primary")?.unwrap_or(false)));
        }
        activity.participants = participants;
    }
    if let Some(date) = string(body, "due_date")? {
        activity.due_date = Some(
            NaiveDate::parse_from_str(&date, "%Y-%m-%d")
                .map_err(|_| invalid("due_date", "This value is not a valid date."))?,
        );
    }
    if let Some(minutes) = clock(body, "due_time", 24)? {
        activity.due_time = NaiveTime::from_hms_opt(minutes / 60, minutes % 60, 0);
    }
    if let Some(minutes) = clock(body, "duration", 10_000)? {
        activity.duration_minutes = Some(minutes);
    }
    if let Some(busy) = boolean(body, "busy")? {
        activity.busy = busy;
    }
    if let Some(done) = boolean(body, "done")? {
        if done && !activity.done {
            activity.marked_as_done_time = Some(now());
        }
        if !done {
            activity.marked_as_done_time = None;
        }
        activity.done = done;
    }
    if let Some(location) = body.get("location").filter(|v| !v.is_null()) {
        let location = location
            .as_object()
            .ok_or_else(|| invalid("location", "This value should be of type object."))?;
        activity.location = string(location, "value")?;
    }
    if let Some(note) = string(body, "note")? {
        activity.note = Some(note);
    }
    activity.update_time = now();
    Ok(())
}

async fn create_activity(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Params>,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, &query, 5, |s| {
        let body = v2_object(&body, &ACTIVITY_FIELDS)?;
        let now = now();
        let mut activity = Activity {
            id: 0,
            subject: "Call".into(),
            kind: "call".into(),
            person_id: None,
            participants: vec![],
            due_date: None,
            due_time: None,
            duration_minutes: None,
            busy: false,
            done: false,
            marked_as_done_time: None,
            location: None,
            note: None,
            is_deleted: false,
            add_time: now,
            update_time: now,
        };
        apply_activity(s, &mut activity, &body)?;
        activity.id = s.activity_ids.next_id().parse().expect("numeric ids");
        let data = activity_json(&activity);
        s.activities.insert(activity.id, activity);
        Ok(ok(data))
    })
}

/// `GET /api/v2/activities`: filtered by `person_id`, sorted by `id`, `add_time` or
/// `update_time`, a page of `limit` (at most 500) from `cursor` (an offset here; opaque to callers).
async fn list_activities(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Params>,
) -> Response {
    authorised(&state, &headers, &query, 20, |s| {
        let number = |key: &str| integer_param(&query, key);
        let person = number("person_id")?;
        let start = number("cursor")?.unwrap_or(0) as usize;
        let limit = number("limit")?.unwrap_or(100).clamp(1, 500) as usize;
        let mut matching: Vec<&Activity> = s
            .activities
            .values()
            .filter(|a| !a.is_deleted)
            .filter(|a| person.is_none_or(|p| a.person_id == Some(p)))
            .collect();
        match query.get("sort_by").map(String::as_str) {
            None | Some("id") => {}
            Some("add_time") => matching.sort_by_key(|a| (a.add_time, a.id)),
            Some("update_time") => matching.sort_by_key(|a| (a.update_time, a.id)),
            Some(_) => return Err(invalid("sort_by", "This value is not a valid choice.")),
        }
        match query.get("sort_direction").map(String::as_str) {
            None | Some("asc") => {}
            Some("desc") => matching.reverse(),
            Some(_) => {
                return Err(invalid(
                    "sort_direction",
                    "This value is not a valid choice.",
                ));
            }
        }
        let page: Vec<Value> = matching
            .iter()
            .skip(start)
            .take(limit)
            .map(|a| activity_json(a))
            .collect();
        let next = (start + limit < matching.len()).then(|| (start + limit).to_string());
        Ok(answer(
            StatusCode::OK,
            json!({"success": true, "data": page, "additional_data": {"next_cursor": next}}),
        ))
    })
}

async fn get_activity(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<Params>,
) -> Response {
    authorised(&state, &headers, &query, 1, |s| {
        let id = path_id(&id)?;
        match s.activities.get(&id).filter(|a| !a.is_deleted) {
            Some(activity) => Ok(ok(activity_json(activity))),
            None => Err(not_found()),
        }
    })
}

async fn update_activity(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<Params>,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, &query, 5, |s| {
        let id = path_id(&id)?;
        let body = v2_object(&body, &ACTIVITY_FIELDS)?;
        let mut activity = s
            .activities
            .get(&id)
            .filter(|a| !a.is_deleted)
            .cloned()
            .ok_or_else(not_found)?;
        apply_activity(s, &mut activity, &body)?;
        let data = activity_json(&activity);
        s.activities.insert(id, activity);
        Ok(ok(data))
    })
}

/// Marks the activity deleted (Pipedrive removes it for good after 30 days).
async fn delete_activity(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<Params>,
) -> Response {
    authorised(&state, &headers, &query, 3, |s| {
        let id = path_id(&id)?;
        let activity = s
            .activities
            .get_mut(&id)
            .filter(|a| !a.is_deleted)
            .ok_or_else(not_found)?;
        activity.is_deleted = true;
        Ok(ok(json!({"id": id})))
    })
}

fn lead_json(lead: &Lead) -> Value {
    let iso = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut data = json!({
        "id": lead.id, "title": lead.title, "owner_id": USER_ID, "creator_id": USER_ID,
        "label_ids": [], "person_id": lead.person_id, "organization_id": lead.organization_id,
        "source_name": "API", "origin": "API", "origin_id": null, "channel": null,
        "channel_id": null, "is_archived": lead.is_archived, "was_seen": false, "value": null,
        "expected_close_date": null, "next_activity_id": null,
        "add_time": iso(lead.add_time), "update_time": iso(lead.update_time), "visible_to": "3",
        "cc_email": format!("crm-sync-demo+lead{}@pipedrivemail.com", &lead.id[..8]),
    });
    for (key, value) in &lead.custom_fields {
        data[key] = value.clone();
    }
    data
}

/// Applies a v1 lead body: v1 takes the documented fields and custom field keys, and ignores
/// anything else.
fn apply_lead(
    s: &PipedriveState,
    lead: &mut Lead,
    body: &Map<String, Value>,
) -> Result<(), Response> {
    if let Some(title) = body.get("title") {
        match title.as_str().map(str::trim) {
            Some(title) if !title.is_empty() => lead.title = title.to_string(),
            _ => return Err(invalid("title", "This value should not be blank.")),
        }
    }
    for (key, target) in [
        ("person_id", &mut lead.person_id),
        ("organization_id", &mut lead.organization_id),
    ] {
        if body.contains_key(key) {
            *target = integer(body, key)?;
        }
    }
    if let Some(person) = lead.person_id
        && !s.person_exists(person)
    {
        return Err(invalid(
            "person_id",
            &format!("Person {person} was not found"),
        ));
    }
    if lead.person_id.is_none() && lead.organization_id.is_none() {
        return Err(invalid(
            "person_id",
            "A lead must be linked to a person or an organization",
        ));
    }
    if let Some(archived) = boolean(body, "is_archived")? {
        lead.is_archived = archived;
    }
    for (key, value) in body.iter().filter(|(k, _)| is_field_key(k)) {
        lead.custom_fields.insert(key.clone(), value.clone());
    }
    lead.update_time = Utc::now();
    Ok(())
}

async fn create_lead(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Params>,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, &query, 10, |s| {
        let body = json_object(&body)?;
        if !body.contains_key("title") {
            return Err(invalid("title", "This value should not be blank."));
        }
        let now = Utc::now();
        let mut lead = Lead {
            id: uuid::Uuid::new_v4().to_string(),
            title: String::new(),
            person_id: None,
            organization_id: None,
            is_archived: false,
            custom_fields: Map::new(),
            add_time: now,
            update_time: now,
        };
        apply_lead(s, &mut lead, &body)?;
        let data = lead_json(&lead);
        s.leads.push(lead);
        Ok(answer(
            StatusCode::CREATED,
            json!({"success": true, "data": data}),
        ))
    })
}

async fn list_leads(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Params>,
) -> Response {
    authorised(&state, &headers, &query, 20, |s| {
        let filter = |key: &str| integer_param(&query, key);
        let (person, organization) = (filter("person_id")?, filter("organization_id")?);
        let start = filter("start")?.unwrap_or(0) as usize;
        let limit = filter("limit")?.unwrap_or(100).clamp(1, 500) as usize;
        let matching: Vec<&Lead> = s
            .leads
            .iter()
            .filter(|l| !l.is_archived)
            .filter(|l| person.is_none_or(|p| l.person_id == Some(p)))
            .filter(|l| organization.is_none_or(|o| l.organization_id == Some(o)))
            .collect();
        let page: Vec<Value> = matching
            .iter()
            .skip(start)
            .take(limit)
            .map(|l| lead_json(l))
            .collect();
        let more = start + limit < matching.len();
        Ok(answer(
            StatusCode::OK,
            json!({"success": true, "data": page, "additional_data":
                {"start": start, "limit": limit, "more_items_in_collection": more}}),
        ))
    })
}

async fn get_lead(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<Params>,
) -> Response {
    authorised(&state, &headers, &query, 2, |s| {
        match s.leads.iter().find(|l| l.id == id) {
            Some(lead) => Ok(ok(lead_json(lead))),
            None => Err(lead_not_found()),
        }
    })
}

async fn update_lead(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<Params>,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, &query, 10, |s| {
        let body = json_object(&body)?;
        let index = s
            .leads
            .iter()
            .position(|l| l.id == id)
            .ok_or_else(lead_not_found)?;
        let mut lead = s.leads[index].clone();
        apply_lead(s, &mut lead, &body)?;
        let data = lead_json(&lead);
        s.leads[index] = lead;
        Ok(ok(data))
    })
}

fn note_json(note: &Note) -> Value {
    json!({
        "id": note.id, "content": note.content, "lead_id": note.lead_id,
        "person_id": note.person_id, "deal_id": null, "org_id": null, "active_flag": true,
        "add_time": note.add_time.format("%Y-%m-%d %H:%M:%S").to_string(),
    })
}

/// `POST /v1/notes`: `content` and at least one of the records it belongs to.
async fn create_note(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Params>,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, &query, 10, |s| {
        let body = json_object(&body)?;
        let content = body
            .get("content")
            .and_then(Value::as_str)
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| invalid("content", "This value should not be blank."))?
            .to_string();
        let lead_id = body
            .get("lead_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let person_id = body.get("person_id").and_then(Value::as_u64);
        if lead_id.is_none() && person_id.is_none() {
            return Err(invalid(
                "lead_id",
                "One of deal_id, lead_id, person_id, org_id or project_id is required.",
            ));
        }
        if let Some(lead) = &lead_id
            && !s.leads.iter().any(|l| &l.id == lead)
        {
            return Err(lead_not_found());
        }
        let note = Note {
            id: s.note_ids.next_id().parse().expect("numeric ids"),
            content,
            lead_id,
            person_id,
            add_time: Utc::now(),
        };
        let data = note_json(&note);
        s.notes.push(note);
        Ok(answer(
            StatusCode::CREATED,
            json!({"success": true, "data": data}),
        ))
    })
}

/// `GET /v1/notes`, filtered by `lead_id` or `person_id`, oldest first, paged by start/limit.
async fn list_notes(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(query): Query<Params>,
) -> Response {
    authorised(&state, &headers, &query, 20, |s| {
        let number = |key: &str| integer_param(&query, key);
        let person = number("person_id")?;
        let start = number("start")?.unwrap_or(0) as usize;
        let limit = number("limit")?.unwrap_or(100).clamp(1, 500) as usize;
        let lead = query.get("lead_id");
        let matching: Vec<&Note> = s
            .notes
            .iter()
            .filter(|n| lead.is_none_or(|l| n.lead_id.as_ref() == Some(l)))
            .filter(|n| person.is_none_or(|p| n.person_id == Some(p)))
            .collect();
        let page: Vec<Value> = matching
            .iter()
            .skip(start)
            .take(limit)
            .map(|n| note_json(n))
            .collect();
        let more = start + limit < matching.len();
        Ok(answer(
            StatusCode::OK,
            json!({"success": true, "data": page, "additional_data":
                {"pagination": {"start": start, "limit": limit, "more_items_in_collection": more}}}),
        ))
    })
}

/// An optional integer query parameter; anything else is Pipedrive's validation error.
fn integer_param(query: &Params, key: &str) -> Result<Option<u64>, Response> {
    query
        .get(key)
        .map(|v| {
            v.parse()
                .map_err(|_| invalid(key, "This value should be of type integer."))
        })
        .transpose()
}
