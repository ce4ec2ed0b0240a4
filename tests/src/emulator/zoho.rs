//! Zoho CRM v8 emulator: the accounts server's token endpoint and the CRM API (Contacts, Leads,
//! Events; insert, update, upsert, search, get, cancel meeting, org), with Zoho's auth, answers
//! and error bodies.
//!
//! Behaviour follows https://www.zoho.com/crm/developer/docs/api/v8/ and Zoho's OpenAPI documents
//! for v8 (github.com/zoho/crm-oas `v8.0/record`, `module_search`, `cancel_meetings`, `org`):
//! `Authorization: Zoho-oauthtoken`, 401 `INVALID_TOKEN` "invalid oauth token" once a token has
//! expired; token errors such as `{"error":"invalid_code"}` answered with HTTP 200; per-record
//! results in `data[]` (`SUCCESS`, `DUPLICATE_DATA` naming the existing id, `MANDATORY_NOT_FOUND`,
//! `INVALID_DATA`) with 201/200, 207 for a mix and 400 when all fail; search answering 204 with
//! no body when nothing matches, emails matched partially and phones in any notation; `Last_Name`
//! mandatory for people, `Company` for leads (standard layout), `Email` the system duplicate
//! check of Contacts and Leads; a meeting can be cancelled only when its attendees were invited
//! and it has not ended. The org's daily API credits are enforced (429 `TOO_MANY_REQUESTS`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::oauth::{OAuthTokens, TokenCheck};
use super::{IdSequence, RequestBudget, RunningEmulator, serve};

pub const MODULES: [&str; 3] = ["Contacts", "Leads", "Events"];
/// The records and users of the emulated org.
const ORG_ID: &str = "4150868000000225001";
const USER_ID: &str = "4150868000000225013";
const USER_NAME: &str = "Patricia Boyle";
const EMAIL_FIELDS: [&str; 2] = ["Email", "Secondary_Email"];
const PHONE_FIELDS: [&str; 6] = [
    "Phone",
    "Mobile",
    "Home_Phone",
    "Other_Phone",
    "Asst_Phone",
    "Fax",
];
const DATETIME_FIELDS: [&str; 2] = ["Start_DateTime", "End_DateTime"];
const MAX_RECORDS_PER_WRITE: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZohoRecord {
    pub id: String,
    pub fields: Map<String, Value>,
    pub created_time: DateTime<Utc>,
    pub modified_time: DateTime<Utc>,
}

impl ZohoRecord {
    pub fn text(&self, field: &str) -> Option<&str> {
        self.fields
            .get(field)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The id a lookup field (`Who_Id`) points at.
    pub fn lookup_id(&self, field: &str) -> Option<&str> {
        self.fields.get(field)?.get("id")?.as_str()
    }
}

/// Standard edition's API credits per rolling 24 hours.
pub const CREDITS_PER_DAY: u32 = 50_000;

pub struct ZohoState {
    pub tokens: OAuthTokens,
    /// What the token endpoint answers as `api_domain`: this emulator.
    pub api_domain: String,
    ids: IdSequence,
    /// module -> id -> record
    pub records: BTreeMap<String, BTreeMap<String, ZohoRecord>>,
    /// How long a written record stays out of search results: Zoho's search index lags behind
    /// writes, answering 204 meanwhile. None by default.
    pub search_index_delay: chrono::Duration,
    /// The org's API credits per 24 hours (one per call here): Standard edition's 50,000
    /// (zoho.com/crm/developer/docs/api/v4/api-limits.html).
    pub credits: RequestBudget,
}

impl ZohoState {
    pub fn new(tokens: OAuthTokens) -> Self {
        ZohoState {
            tokens,
            api_domain: String::new(),
            ids: IdSequence::starting_at(4_150_868_000_000_400_000),
            records: MODULES
                .iter()
                .map(|m| (m.to_string(), BTreeMap::new()))
                .collect(),
            search_index_delay: chrono::Duration::zero(),
            credits: RequestBudget::new(CREDITS_PER_DAY, chrono::Duration::hours(24)),
        }
    }

    /// Everything the CRM holds, for saving between runs of the local emulator.
    pub fn snapshot(&self) -> Value {
        json!({"lastId": self.ids.last(), "records": self.records})
    }

    /// Loads what `snapshot` saved.
    pub fn restore(&mut self, snapshot: &Value) -> Result<(), serde_json::Error> {
        self.records = serde_json::from_value(snapshot["records"].clone())?;
        for module in MODULES {
            self.records.entry(module.into()).or_default();
        }
        if let Some(last) = snapshot["lastId"].as_u64() {
            self.ids = IdSequence::starting_at(last);
        }
        Ok(())
    }

    pub fn all(&self, module: &str) -> Vec<ZohoRecord> {
        self.records
            .get(module)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds a record as a person using Zoho would (no validation), returning its id.
    pub fn insert(&mut self, module: &str, fields: &[(&str, &str)]) -> String {
        let fields = fields
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        self.store(module, fields)
    }

    fn store(&mut self, module: &str, fields: Map<String, Value>) -> String {
        let id = self.ids.next_id();
        let now = Utc::now();
        let record = ZohoRecord {
            id: id.clone(),
            fields,
            created_time: now,
            modified_time: now,
        };
        self.records
            .entry(module.into())
            .or_default()
            .insert(id.clone(), record);
        id
    }
}

pub type SharedState = Arc<Mutex<ZohoState>>;

pub struct ZohoEmulator {
    pub state: SharedState,
    pub server: RunningEmulator,
}

impl ZohoEmulator {
    pub async fn start(tokens: OAuthTokens) -> std::io::Result<Self> {
        Self::start_on(tokens, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(tokens: OAuthTokens, addr: SocketAddr) -> std::io::Result<Self> {
        let state: SharedState = Arc::new(Mutex::new(ZohoState::new(tokens)));
        let server = serve(routes(state.clone()), error_body, addr).await?;
        state.lock().unwrap().api_domain = server.base_url.clone();
        Ok(ZohoEmulator { state, server })
    }

    pub fn base_url(&self) -> &str {
        &self.server.base_url
    }
}

/// Zoho's top-level error body for a status (used by fault injection too).
pub fn error_body(status: StatusCode) -> Value {
    let (code, message) = match status.as_u16() {
        401 => ("INVALID_TOKEN", "invalid oauth token"),
        403 => ("NO_PERMISSION", "permission denied"),
        404 => (
            "INVALID_URL_PATTERN",
            "Please check if the URL trying to access is a correct one",
        ),
        429 => (
            "TOO_MANY_REQUESTS",
            "Rate limit exceeded. Please retry after the specified time.",
        ),
        400 => ("INVALID_REQUEST", "the request is invalid"),
        _ => ("INTERNAL_ERROR", "Internal Server Error"),
    };
    json!({"code": code, "details": {}, "message": message, "status": "error"})
}

fn error(status: StatusCode, code: &str, message: &str, details: Value) -> Response {
    let body = json!({"code": code, "details": details, "message": message, "status": "error"});
    (status, Json(body)).into_response()
}

fn record_error(code: &str, message: &str, details: Value) -> Value {
    json!({"code": code, "details": details, "message": message, "status": "error"})
}

fn field_error(code: &str, message: &str, field: &str, index: usize) -> Value {
    record_error(
        code,
        message,
        json!({"api_name": field, "json_path": format!("$.data[{index}].{field}")}),
    )
}

fn zoho_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

fn user() -> Value {
    json!({"name": USER_NAME, "id": USER_ID, "email": "patricia.b@zylker.example"})
}

fn invalid_module() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "INVALID_MODULE",
        "the module name given seems to be invalid",
        json!({"resource_path_index": 0}),
    )
}

/// Checks `Authorization: Zoho-oauthtoken <token>` before `f` answers.
fn authorised(
    state: &SharedState,
    headers: &HeaderMap,
    f: impl FnOnce(&mut ZohoState) -> Response,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Zoho-oauthtoken "));
    let mut state = state.lock().unwrap();
    match token.map(|t| state.tokens.check(t.trim())) {
        Some(TokenCheck::Valid) => match state.credits.take() {
            Ok(_) => f(&mut state),
            Err(wait) => {
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TOO_MANY_REQUESTS",
                    "Rate limit exceeded. Please retry after the specified time.",
                    json!({}),
                );
                response
                    .headers_mut()
                    .insert("retry-after", axum::http::HeaderValue::from(wait));
                response
            }
        },
        Some(_) => error(
            StatusCode::UNAUTHORIZED,
            "INVALID_TOKEN",
            "invalid oauth token",
            json!({}),
        ),
        None => error(
            StatusCode::UNAUTHORIZED,
            "AUTHENTICATION_FAILURE",
            "Authentication failed",
            json!({}),
        ),
    }
}

pub fn routes(state: SharedState) -> Router {
    Router::new()
        .route("/oauth/v2/token", post(token))
        .route("/crm/v8/org", get(org))
        .route("/crm/v8/{module}", post(insert_records))
        .route("/crm/v8/{module}/search", get(search_records))
        .route("/crm/v8/{module}/upsert", post(upsert_records))
        .route("/crm/v8/{module}/{id}", get(get_record).put(update_record))
        .route("/crm/v8/{module}/{id}/actions/cancel", post(cancel_meeting))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(error_body(StatusCode::NOT_FOUND)),
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST_METHOD",
                "The http request method type is not a valid one",
                json!({}),
            )
        })
        .with_state(state)
}

/// `POST {accounts}/oauth/v2/token`, parameters in the query (as Zoho's docs show) or the form
/// body. Zoho answers a refused refresh with HTTP 200 and an `error` field.
async fn token(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let mut params = query;
    if let Ok(Form(body)) = form {
        params.extend(body);
    }
    let mut state = state.lock().unwrap();
    match state.tokens.refresh(&params) {
        Ok(issued) => Json(json!({
            "access_token": issued.access_token,
            "scope": "ZohoCRM.modules.ALL ZohoCRM.org.READ",
            "api_domain": state.api_domain,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
        }))
        .into_response(),
        Err(e) => {
            let error = match e.error {
                "invalid_grant" => "invalid_code",
                other => other,
            };
            Json(json!({ "error": error })).into_response()
        }
    }
}

async fn org(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    authorised(&state, &headers, |_| {
        Json(json!({"org": [{
            "id": ORG_ID, "company_name": "Zylker Dental", "domain_name": "org60012345",
            "primary_email": "admin@zylker.example", "time_zone": "America/New_York",
            "country_code": "US", "currency_locale": "en_US", "type": "production",
            "max_per_page": 200, "primary_zuid": "60012345",
        }]}))
        .into_response()
    })
}

fn known_module(module: &str) -> bool {
    MODULES.contains(&module)
}

/// The records of a write's body, or the error Zoho gives for the body itself.
fn write_records(body: &Bytes) -> Result<Vec<Map<String, Value>>, Box<Response>> {
    let parsed: Value = serde_json::from_slice(body).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "INVALID_DATA",
            "body is not a valid JSON",
            json!({}),
        ))
    })?;
    match parsed.get("data").and_then(Value::as_array) {
        Some(records) if records.len() > MAX_RECORDS_PER_WRITE => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "the number of records exceeds the limit",
            json!({"api_name": "data", "limit": MAX_RECORDS_PER_WRITE}),
        ))),
        Some(records) if !records.is_empty() => Ok(records
            .iter()
            .map(|r| r.as_object().cloned().unwrap_or_default())
            .collect()),
        _ => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "MANDATORY_NOT_FOUND",
            "required field not found",
            json!({"api_name": "data", "json_path": "$.data"}),
        ))),
    }
}

/// A write: checks the token, the module and the body's `data`, then lets `f` answer.
fn write(
    state: &SharedState,
    headers: &HeaderMap,
    module_ok: bool,
    body: &Bytes,
    f: impl FnOnce(&mut ZohoState, Vec<Map<String, Value>>) -> Response,
) -> Response {
    authorised(state, headers, |s| {
        if !module_ok {
            return invalid_module();
        }
        match write_records(body) {
            Ok(records) => f(s, records),
            Err(response) => *response,
        }
    })
}

/// 201/200 when every record succeeded, 400 when none did, 207 for a mix.
fn write_answer(results: Vec<Value>, all_ok: StatusCode) -> Response {
    let ok = results.iter().filter(|r| r["status"] == "success").count();
    let status = match ok {
        n if n == results.len() => all_ok,
        0 => StatusCode::BAD_REQUEST,
        _ => StatusCode::MULTI_STATUS,
    };
    (status, Json(json!({ "data": results }))).into_response()
}

fn success(record: &ZohoRecord, message: &str) -> Value {
    json!({
        "code": "SUCCESS",
        "details": {
            "Modified_Time": zoho_time(record.modified_time), "Modified_By": user(),
            "Created_Time": zoho_time(record.created_time), "id": record.id, "Created_By": user(),
        },
        "message": message,
        "status": "success",
    })
}

fn mandatory_fields(module: &str) -> &'static [&'static str] {
    match module {
        "Contacts" => &["Last_Name"],
        // Company is mandatory in the standard Leads layout.
        "Leads" => &["Last_Name", "Company"],
        "Events" => &["Event_Title", "Start_DateTime", "End_DateTime"],
        _ => &[],
    }
}

fn is_blank(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        _ => false,
    }
}

/// `yyyy-MM-ddTHH:mm:ss±HH:mm`, the form Zoho's datetime fields take.
fn parse_zoho_datetime(value: &str) -> Option<DateTime<chrono::FixedOffset>> {
    let bytes = value.as_bytes();
    let offset_form = value.len() == 25 && matches!(bytes[19], b'+' | b'-') && bytes[22] == b':';
    offset_form
        .then(|| DateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%:z").ok())
        .flatten()
}

/// Zoho's checks on one record of a write; `existing` is the record an update changes.
fn validate(
    state: &ZohoState,
    module: &str,
    existing: Option<&ZohoRecord>,
    incoming: &Map<String, Value>,
    index: usize,
) -> Result<(), Value> {
    for field in mandatory_fields(module) {
        let missing = match existing {
            None => is_blank(incoming.get(*field)),
            Some(_) => incoming.contains_key(*field) && is_blank(incoming.get(*field)),
        };
        if missing {
            return Err(field_error(
                "MANDATORY_NOT_FOUND",
                "required field not found",
                field,
                index,
            ));
        }
    }
    for (field, value) in incoming {
        let is_text = EMAIL_FIELDS.contains(&field.as_str())
            || PHONE_FIELDS.contains(&field.as_str())
            || DATETIME_FIELDS.contains(&field.as_str())
            || field.ends_with("_Name")
            || ["Company", "Description", "Event_Title", "Venue"].contains(&field.as_str());
        if is_text && !matches!(value, Value::String(_) | Value::Null) {
            return Err(record_error(
                "INVALID_DATA",
                "invalid data",
                json!({"api_name": field, "json_path": format!("$.data[{index}].{field}"), "expected_data_type": "text"}),
            ));
        }
        let text = value.as_str().unwrap_or("").trim();
        if EMAIL_FIELDS.contains(&field.as_str())
            && !text.is_empty()
            && crm_sync::domain::Email::parse(text).is_err()
        {
            return Err(field_error("INVALID_DATA", "invalid data", field, index));
        }
        if PHONE_FIELDS.contains(&field.as_str()) && text.chars().count() > 30 {
            return Err(record_error(
                "INVALID_DATA",
                "invalid data",
                json!({"api_name": field, "json_path": format!("$.data[{index}].{field}"), "maximum_length": 30}),
            ));
        }
        if DATETIME_FIELDS.contains(&field.as_str()) && parse_zoho_datetime(text).is_none() {
            return Err(record_error(
                "INVALID_DATA",
                "invalid data",
                json!({"api_name": field, "json_path": format!("$.data[{index}].{field}"), "expected_data_type": "datetime"}),
            ));
        }
    }
    if module == "Events" {
        validate_event(state, existing, incoming, index)?;
    }
    if module == "Contacts" || module == "Leads" {
        let email = incoming
            .get("Email")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|e| !e.is_empty());
        let duplicate = email.and_then(|email| {
            state.records[module].values().find(|r| {
                Some(r.id.as_str()) != existing.map(|e| e.id.as_str())
                    && r.text("Email")
                        .is_some_and(|theirs| theirs.trim().eq_ignore_ascii_case(email))
            })
        });
        if let Some(duplicate) = duplicate {
            return Err(record_error(
                "DUPLICATE_DATA",
                "duplicate data",
                json!({
                    "api_name": "Email", "json_path": format!("$.data[{index}].Email"), "id": duplicate.id,
                    "duplicate_record": {"id": duplicate.id, "Owner": {"name": USER_NAME, "id": USER_ID},
                                         "module": {"api_name": module, "id": ORG_ID}},
                    "more_records": false,
                }),
            ));
        }
    }
    Ok(())
}

fn validate_event(
    state: &ZohoState,
    existing: Option<&ZohoRecord>,
    incoming: &Map<String, Value>,
    index: usize,
) -> Result<(), Value> {
    let time = |field: &str| {
        incoming
            .get(field)
            .or_else(|| existing.and_then(|e| e.fields.get(field)))
            .and_then(Value::as_str)
            .and_then(parse_zoho_datetime)
    };
    if let (Some(start), Some(end)) = (time("Start_DateTime"), time("End_DateTime"))
        && end < start
    {
        return Err(field_error(
            "INVALID_DATA",
            "End_DateTime should be greater than Start_DateTime",
            "End_DateTime",
            index,
        ));
    }
    if let Some(who) = incoming.get("Who_Id").filter(|v| !v.is_null()) {
        let known = who
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| state.records["Contacts"].contains_key(id));
        if !known {
            return Err(field_error("INVALID_DATA", "invalid data", "Who_Id", index));
        }
    }
    if let Some(participants) = incoming.get("Participants").filter(|v| !v.is_null()) {
        let valid = participants.as_array().is_some_and(|list| {
            list.iter().all(|p| {
                let who = p.get("participant").and_then(Value::as_str).unwrap_or("");
                match p.get("type").and_then(Value::as_str) {
                    Some("contact") => state.records["Contacts"].contains_key(who),
                    Some("lead") => state.records["Leads"].contains_key(who),
                    Some("email") => crm_sync::domain::Email::parse(who).is_ok(),
                    Some("user") => who == USER_ID,
                    _ => false,
                }
            })
        });
        if !valid {
            return Err(field_error(
                "INVALID_DATA",
                "invalid data",
                "Participants",
                index,
            ));
        }
    }
    Ok(())
}

/// Fields as Zoho keeps them: `$`-prefixed keys are instructions, not data; participants get
/// their invitation state.
fn stored_fields(
    state: &mut ZohoState,
    module: &str,
    incoming: &Map<String, Value>,
) -> Map<String, Value> {
    let invite = incoming
        .get("$send_notification")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut fields: Map<String, Value> = incoming
        .iter()
        .filter(|(k, _)| !k.starts_with('$') && k.as_str() != "id")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if module == "Events"
        && let Some(list) = fields
            .get("Participants")
            .and_then(Value::as_array)
            .cloned()
    {
        let enriched: Vec<Value> = list
            .into_iter()
            .map(|p| {
                let who = p["participant"].as_str().unwrap_or("").to_string();
                let person = state.records["Contacts"]
                    .get(&who)
                    .or_else(|| state.records["Leads"].get(&who));
                let name = person.map(full_name);
                let email = person.and_then(|r| r.text("Email")).map(str::to_string);
                json!({
                    "type": p["type"], "participant": who, "invited": invite, "status": "not_known",
                    "id": state.ids.next_id(), "name": name, "Email": email,
                })
            })
            .collect();
        fields.insert("Participants".into(), Value::Array(enriched));
    }
    fields
}

fn full_name(record: &ZohoRecord) -> String {
    [record.text("First_Name"), record.text("Last_Name")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
}

fn create(
    state: &mut ZohoState,
    module: &str,
    incoming: &Map<String, Value>,
    index: usize,
) -> Result<String, Value> {
    validate(state, module, None, incoming, index)?;
    let mut fields = stored_fields(state, module, incoming);
    if module == "Events" {
        fields.insert("$event_cancelled".into(), false.into());
    }
    Ok(state.store(module, fields))
}

fn modify(
    state: &mut ZohoState,
    module: &str,
    id: &str,
    incoming: &Map<String, Value>,
    index: usize,
) -> Result<(), Value> {
    let existing = state.records[module].get(id).cloned();
    let Some(existing) = existing else {
        return Err(record_error(
            "INVALID_DATA",
            "invalid record id",
            json!({"resource_path_index": 1}),
        ));
    };
    validate(state, module, Some(&existing), incoming, index)?;
    let fields = stored_fields(state, module, incoming);
    let record = state
        .records
        .get_mut(module)
        .and_then(|m| m.get_mut(id))
        .expect("checked above");
    record.fields.extend(fields);
    record.modified_time = Utc::now();
    Ok(())
}

fn record_of(state: &ZohoState, module: &str, id: &str) -> ZohoRecord {
    state.records[module][id].clone()
}

async fn insert_records(
    State(state): State<SharedState>,
    Path(module): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write(
        &state,
        &headers,
        known_module(&module),
        &body,
        |s, records| {
            let results = records
                .iter()
                .enumerate()
                .map(|(i, fields)| match create(s, &module, fields, i) {
                    Ok(id) => success(&record_of(s, &module, &id), "record added"),
                    Err(e) => e,
                })
                .collect();
            write_answer(results, StatusCode::CREATED)
        },
    )
}

async fn update_record(
    State(state): State<SharedState>,
    Path((module, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write(
        &state,
        &headers,
        known_module(&module),
        &body,
        |s, records| {
            let result = match modify(s, &module, &id, &records[0], 0) {
                Ok(()) => success(&record_of(s, &module, &id), "record updated"),
                Err(e) => e,
            };
            write_answer(vec![result], StatusCode::OK)
        },
    )
}

/// Inserts or updates on the duplicate check fields (the system's `Email` by default).
async fn upsert_records(
    State(state): State<SharedState>,
    Path(module): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let upsertable = module == "Contacts" || module == "Leads";
    write(&state, &headers, upsertable, &body, |s, records| {
        let parsed: Value = serde_json::from_slice(&body).unwrap_or_default();
        let check_fields: Vec<String> = match parsed.get("duplicate_check_fields") {
            None | Some(Value::Null) => vec!["Email".into()],
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(_) => vec![],
        };
        if check_fields.is_empty() || check_fields.iter().any(|f| f != "Email") {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                "invalid data",
                json!({"api_name": "duplicate_check_fields", "json_path": "$.duplicate_check_fields"}),
            );
        }
        let results = records
            .iter()
            .enumerate()
            .map(|(i, fields)| {
                let wanted = fields
                    .get("Email")
                    .and_then(Value::as_str)
                    .map(|e| e.trim().to_ascii_lowercase())
                    .filter(|e| !e.is_empty());
                let existing = wanted.and_then(|email| {
                    s.records[&module]
                        .values()
                        .find(|r| {
                            r.text("Email").map(|t| t.trim().to_ascii_lowercase())
                                == Some(email.clone())
                        })
                        .map(|r| r.id.clone())
                });
                let (result, action, duplicate_field) = match existing {
                    Some(id) => (
                        modify(s, &module, &id, fields, i).map(|()| id),
                        "update",
                        json!("Email"),
                    ),
                    None => (create(s, &module, fields, i), "insert", Value::Null),
                };
                match result {
                    Ok(id) => {
                        let message = if action == "insert" {
                            "record added"
                        } else {
                            "record updated"
                        };
                        let mut answer = success(&record_of(s, &module, &id), message);
                        answer["action"] = action.into();
                        answer["duplicate_field"] = duplicate_field;
                        answer
                    }
                    Err(e) => e,
                }
            })
            .collect();
        write_answer(results, StatusCode::OK)
    })
}

/// A record as the API answers it; `wanted` limits the fields (`id` always comes).
fn record_json(module: &str, record: &ZohoRecord, wanted: Option<&[String]>) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), record.id.clone().into());
    let mut all = record.fields.clone();
    all.insert("Owner".into(), user());
    all.insert("Created_By".into(), user());
    all.insert("Modified_By".into(), user());
    all.insert("Created_Time".into(), zoho_time(record.created_time).into());
    all.insert(
        "Modified_Time".into(),
        zoho_time(record.modified_time).into(),
    );
    if module != "Events" {
        all.insert("Full_Name".into(), full_name(record).into());
    }
    for (key, value) in all {
        if wanted.is_none_or(|w| w.contains(&key) || key.starts_with('$')) {
            out.insert(key, value);
        }
    }
    Value::Object(out)
}

fn wanted_fields(query: &HashMap<String, String>) -> Option<Vec<String>> {
    query.get("fields").map(|f| {
        f.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

async fn get_record(
    State(state): State<SharedState>,
    Path((module, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, |s| {
        if !known_module(&module) {
            return invalid_module();
        }
        match s.records[&module].get(&id) {
            Some(record) => Json(json!({
                "data": [record_json(&module, record, wanted_fields(&query).as_deref())]
            }))
            .into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        }
    })
}

fn digits(raw: &str) -> String {
    raw.chars().filter(char::is_ascii_digit).collect()
}

/// A search criterion: `(Field:operator:value)`, grouped with `and` / `or`.
#[derive(Debug, Clone, PartialEq)]
enum Criteria {
    Condition {
        field: String,
        operator: String,
        value: String,
    },
    All(Vec<Criteria>),
    Any(Vec<Criteria>),
}

struct CriteriaParser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

impl CriteriaParser<'_> {
    fn parse(text: &str) -> Result<Criteria, String> {
        let mut parser = CriteriaParser {
            chars: text.trim().chars().peekable(),
        };
        let criteria = parser.sequence(false)?;
        match parser.chars.next() {
            None => Ok(criteria),
            Some(c) => Err(format!("unexpected '{c}'")),
        }
    }

    fn skip_spaces(&mut self) {
        while self.chars.peek().is_some_and(|c| c.is_whitespace()) {
            self.chars.next();
        }
    }

    /// Groups joined by one kind of `and` / `or`, up to the closing parenthesis when `nested`.
    fn sequence(&mut self, nested: bool) -> Result<Criteria, String> {
        let mut items = vec![self.group()?];
        let mut joiner: Option<String> = None;
        loop {
            self.skip_spaces();
            match self.chars.peek() {
                None if !nested => break,
                Some(')') if nested => {
                    self.chars.next();
                    break;
                }
                None | Some(')') => return Err("unbalanced parentheses".into()),
                _ => {}
            }
            let mut word = String::new();
            while self.chars.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
                word.push(self.chars.next().expect("peeked").to_ascii_lowercase());
            }
            if word != "and" && word != "or" {
                return Err(format!("expected 'and' or 'or', found '{word}'"));
            }
            if joiner.as_ref().is_some_and(|j| *j != word) {
                return Err("mix 'and' and 'or' only within parentheses".into());
            }
            joiner = Some(word);
            items.push(self.group()?);
        }
        Ok(match (items.len(), joiner.as_deref()) {
            (1, _) => items.pop().expect("one"),
            (_, Some("or")) => Criteria::Any(items),
            _ => Criteria::All(items),
        })
    }

    fn group(&mut self) -> Result<Criteria, String> {
        self.skip_spaces();
        if self.chars.next() != Some('(') {
            return Err("a criterion starts with '('".into());
        }
        self.skip_spaces();
        if self.chars.peek() == Some(&'(') {
            return self.sequence(true);
        }
        let mut condition = String::new();
        loop {
            match self.chars.next() {
                Some('\\') => condition.extend(self.chars.next()),
                Some(')') => break,
                Some(c) => condition.push(c),
                None => return Err("unbalanced parentheses".into()),
            }
        }
        let mut parts = condition.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(field), Some(operator), Some(value)) => Ok(Criteria::Condition {
                field: field.trim().into(),
                operator: operator.trim().into(),
                value: value.into(),
            }),
            _ => Err(format!("'{condition}' is not field:operator:value")),
        }
    }
}

impl Criteria {
    fn matches(&self, record: &ZohoRecord) -> Result<bool, String> {
        match self {
            Criteria::All(items) => {
                for item in items {
                    if !item.matches(record)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Criteria::Any(items) => {
                for item in items {
                    if item.matches(record)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Criteria::Condition {
                field,
                operator,
                value,
            } => {
                let actual = match record.fields.get(field) {
                    Some(Value::String(s)) => s.to_lowercase(),
                    Some(Value::Object(o)) => o
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_lowercase(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string().to_lowercase(),
                };
                let value = value.to_lowercase();
                Ok(match operator.as_str() {
                    // Zoho's `equals` behaves like `contains` for text.
                    "equals" => !actual.is_empty() && actual.contains(&value),
                    "not_equal" => actual != value,
                    "starts_with" => !actual.is_empty() && actual.starts_with(&value),
                    "in" => value.split(',').any(|v| v.trim() == actual),
                    other => return Err(format!("the operator {other} is not supported here")),
                })
            }
        }
    }
}

/// Whether a record matches a search.
type Matcher = Box<dyn Fn(&ZohoRecord) -> Result<bool, String>>;

async fn search_records(
    State(state): State<SharedState>,
    Path(module): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, |s| {
        if !known_module(&module) {
            return invalid_module();
        }
        let param = |name: &str| query.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        // Only the first of criteria, email, phone, word is used.
        let matcher: Matcher = if let Some(criteria) = param("criteria") {
            match CriteriaParser::parse(criteria) {
                Ok(parsed) => Box::new(move |r| parsed.matches(r)),
                Err(reason) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_QUERY",
                        "invalid query formed",
                        json!({"reason": reason}),
                    );
                }
            }
        } else if let Some(email) = param("email") {
            let email = email.to_ascii_lowercase();
            Box::new(move |r| {
                Ok(EMAIL_FIELDS.iter().any(|f| {
                    r.text(f)
                        .is_some_and(|v| v.to_ascii_lowercase().contains(&email))
                }))
            })
        } else if let Some(phone) = param("phone") {
            let well_formed = phone.len() >= 3
                && phone
                    .trim_start_matches('+')
                    .chars()
                    .all(|c| c.is_ascii_digit() || " -().".contains(c));
            let wanted = digits(phone);
            if !well_formed || wanted.is_empty() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "the phone number given seems to be invalid",
                    json!({"param_name": "phone"}),
                );
            }
            Box::new(move |r| {
                Ok(PHONE_FIELDS
                    .iter()
                    .any(|f| r.text(f).is_some_and(|v| digits(v).contains(&wanted))))
            })
        } else if let Some(word) = param("word") {
            if word.chars().count() < 2 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "the word must be at least two characters long",
                    json!({"param_name": "word"}),
                );
            }
            let word = word.to_lowercase();
            Box::new(move |r| {
                Ok(r.fields
                    .values()
                    .filter_map(Value::as_str)
                    .any(|v| v.to_lowercase().contains(&word)))
            })
        } else {
            return error(
                StatusCode::BAD_REQUEST,
                "EXPECTED_PARAM_MISSING",
                "One of the expected parameter is missing",
                json!({"param_names": ["criteria", "email", "phone", "word"]}),
            );
        };
        let indexed_before = Utc::now() - s.search_index_delay;
        let mut matched = Vec::new();
        let indexed = s.records[&module]
            .values()
            .rev()
            .filter(|r| r.modified_time <= indexed_before);
        for record in indexed {
            match matcher(record) {
                Ok(true) => matched.push(record),
                Ok(false) => {}
                Err(reason) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_QUERY",
                        "invalid query formed",
                        json!({"reason": reason}),
                    );
                }
            }
        }
        let per_page = param("per_page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(200)
            .clamp(1, 200);
        let page = param("page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let wanted = wanted_fields(&query);
        let rows: Vec<Value> = matched
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|r| record_json(&module, r, wanted.as_deref()))
            .collect();
        if rows.is_empty() {
            return StatusCode::NO_CONTENT.into_response();
        }
        let info = json!({"per_page": per_page, "count": rows.len(), "page": page,
            "more_records": page * per_page < matched.len(), "sort_by": "id", "sort_order": "desc"});
        Json(json!({"data": rows, "info": info})).into_response()
    })
}

/// `POST /Events/{id}/actions/cancel`: keeps the meeting and marks it `$event_cancelled`.
async fn cancel_meeting(
    State(state): State<SharedState>,
    Path((module, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, |s| {
        if module != "Events" {
            return (
                StatusCode::NOT_FOUND,
                Json(error_body(StatusCode::NOT_FOUND)),
            )
                .into_response();
        }
        let records = match write_records(&body) {
            Ok(r) => r,
            Err(response) => return *response,
        };
        let refuse = |entry: Value| {
            (StatusCode::BAD_REQUEST, Json(json!({ "data": [entry] }))).into_response()
        };
        if !records[0]
            .get("send_cancelling_mail")
            .is_some_and(Value::is_boolean)
        {
            return refuse(field_error(
                "MANDATORY_NOT_FOUND",
                "required field not found",
                "send_cancelling_mail",
                0,
            ));
        }
        let Some(event) = s.records.get_mut("Events").and_then(|m| m.get_mut(&id)) else {
            return refuse(record_error(
                "INVALID_DATA",
                "the id given seems to be invalid",
                json!({ "id": id }),
            ));
        };
        if event.fields.get("$event_cancelled") == Some(&Value::Bool(true)) {
            return refuse(record_error(
                "NOT_ALLOWED",
                "the meeting is already cancelled",
                json!({}),
            ));
        }
        let invited = event
            .fields
            .get("Participants")
            .and_then(Value::as_array)
            .is_some_and(|list| list.iter().any(|p| p["invited"] == true));
        if !invited {
            return refuse(record_error(
                "NOT_ALLOWED",
                "the meeting cannot be cancelled as no participants are invited",
                json!({"reason": "no_participants_invited", "id": id}),
            ));
        }
        let ended = event
            .text("End_DateTime")
            .and_then(parse_zoho_datetime)
            .is_some_and(|end| end < Utc::now());
        if ended {
            return refuse(record_error(
                "NOT_ALLOWED",
                "the meeting cannot be cancelled as it has already ended",
                json!({"reason": "completed_meeting", "id": id}),
            ));
        }
        event.fields.insert("$event_cancelled".into(), true.into());
        event.modified_time = Utc::now();
        Json(json!({"data": [{"code": "SUCCESS", "details": {"id": id},
            "message": "The event is successfully cancelled", "status": "success"}]}))
        .into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_parse_groups_and_escapes() {
        let parsed =
            CriteriaParser::parse("((Last_Name:equals:Burns\\,B) and (First_Name:starts_with:M))")
                .unwrap();
        assert_eq!(
            parsed,
            Criteria::All(vec![
                Criteria::Condition {
                    field: "Last_Name".into(),
                    operator: "equals".into(),
                    value: "Burns,B".into()
                },
                Criteria::Condition {
                    field: "First_Name".into(),
                    operator: "starts_with".into(),
                    value: "M".into()
                },
            ])
        );
        assert!(CriteriaParser::parse("(Email:equals:a@b.co) or (Phone:equals:1)").is_ok());
        assert!(CriteriaParser::parse("((A:equals:1) and (B:equals:2) or (C:equals:3))").is_err());
        assert!(CriteriaParser::parse("(A:equals:1").is_err());
    }

    #[test]
    fn datetimes_need_the_offset_form() {
        assert!(parse_zoho_datetime("2025-07-01T10:00:00-04:00").is_some());
        assert!(parse_zoho_datetime("2025-07-01T10:00:00Z").is_none());
        assert!(parse_zoho_datetime("2025-07-01T10:00:00.000-04:00").is_none());
    }
}
