//! SugarCRM REST API v11 emulator: the OAuth2 token endpoint (password and refresh_token grants,
//! platforms, rotating refresh tokens, one session per user and platform) and the Contacts,
//! Leads and Meetings modules (create, retrieve, update, the filter API, `/me`), with Sugar's
//! answers and error bodies.
//!
//! Behaviour follows the Sugar Developer Guide (support.sugarcrm.com, 13.0/14.0, Integration >
//! Web Services > REST API): `POST /oauth2/token` and its answer
//! (.../endpoints/oauth2token_post/), `{"error","error_message"}` bodies and their labels and
//! statuses (.../api_exceptions: 401 `need_login`/`invalid_grant`, 404 `not_found`, 422
//! `missing_parameter`/`invalid_parameter`, 301 `incorrect_version`), the filter API with
//! `$equals`, `$not_equals`, `$starts`, `$ends`, `$contains`, `$in`, `$or`, `$and`, a bare value
//! meaning `$equals`, and `{"next_offset","records"}` (.../endpoints/modulefilter_post/); the
//! `email` array replacing a record's whole set of addresses (sugarclub dev blog, "Using e-mail
//! fields correctly in Sugar"); unknown platforms refused with 422 "Invalid platform specified."
//! (developer.sugarcrm.com, Winter '18); one session per user and platform (a new login ends the
//! last one); Meetings computing `date_end` from `date_start` and the duration fields, a create
//! without `date_start` refused, `status` in `Planned`/`Held`/`Not Held`, link fields as objects of
//! actions (`{"add": [...]}`), a Contacts parent invited. Sugar itself has no request limit; an
//! instance may put one in front, which `rate_limit` stands for (429 with `Retry-After`; its body
//! label is this emulator's choice).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::oauth::{Issued, OAuthTokens, TokenCheck};
use super::{RequestBudget, RunningEmulator, serve};

pub const MODULES: [&str; 3] = ["Contacts", "Leads", "Meetings"];
pub const STAMP_FIELD: &str = "crm_sync_id_c";
pub const CUSTOM_CONTACT_FIELD: &str = "booking_city_c";
const USER_ID: &str = "seed_max_id";
const MEETING_STATUSES: [&str; 4] = ["Planned", "Held", "Not Held", "Deferred"];

const PERSON_FIELDS: &[&str] = &[
    "id",
    "first_name",
    "last_name",
    "full_name",
    "email",
    "email1",
    "phone_mobile",
    "phone_work",
    "phone_home",
    "phone_other",
    "primary_address_street",
    "primary_address_city",
    "primary_address_state",
    "primary_address_postalcode",
    "primary_address_country",
    "description",
    "lead_source",
    "date_entered",
    "date_modified",
    "deleted",
    STAMP_FIELD,
];

fn fields_of(module: &str) -> Vec<&'static str> {
    match module {
        "Contacts" => {
            let mut f = PERSON_FIELDS.to_vec();
            f.extend(["title", "account_id", "account_name", CUSTOM_CONTACT_FIELD]);
            f
        }
        "Leads" => {
            let mut f = PERSON_FIELDS.to_vec();
            f.extend(["status", "account_name", "title"]);
            f
        }
        _ => vec![
            "id",
            "name",
            "description",
            "location",
            "date_start",
            "date_end",
            "duration_hours",
            "duration_minutes",
            "status",
            "type",
            "parent_type",
            "parent_id",
            "date_entered",
            "date_modified",
            "deleted",
            STAMP_FIELD,
        ],
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SugarRecord {
    pub id: String,
    pub fields: Map<String, Value>,
    /// Meetings: the contacts linked through the `contacts` link.
    pub contacts: BTreeSet<String>,
}

impl SugarRecord {
    pub fn text(&self, field: &str) -> Option<&str> {
        self.fields
            .get(field)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The record's email addresses, primary first.
    pub fn emails(&self) -> Vec<String> {
        let mut all: Vec<(bool, String)> = self
            .fields
            .get("email")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let address = e["email_address"].as_str()?.to_string();
                Some((e["primary_address"] == json!(true), address))
            })
            .collect();
        all.sort_by_key(|(primary, _)| !primary);
        all.into_iter().map(|(_, a)| a).collect()
    }
}

pub struct SugarState {
    pub tokens: OAuthTokens,
    pub username: String,
    pub password: String,
    /// Platforms the admin allowed (Configure API Platforms), `base` and `mobile` built in.
    pub platforms: BTreeSet<String>,
    /// The refresh token of the one session each platform has.
    sessions: BTreeMap<String, String>,
    /// module -> id -> record
    pub records: BTreeMap<String, BTreeMap<String, SugarRecord>>,
    /// A request limit in front of the instance, if one is configured.
    pub rate_limit: Option<RequestBudget>,
}

impl SugarState {
    pub fn new(tokens: OAuthTokens, username: &str, password: &str, platform: &str) -> Self {
        SugarState {
            tokens,
            username: username.into(),
            password: password.into(),
            platforms: ["base", "mobile", platform]
                .iter()
                .map(|p| p.to_string())
                .collect(),
            sessions: BTreeMap::new(),
            records: MODULES
                .iter()
                .map(|m| (m.to_string(), BTreeMap::new()))
                .collect(),
            rate_limit: None,
        }
    }

    /// A login on `platform`: a new session, ending the platform's last one.
    pub fn log_in(&mut self, platform: &str) -> Issued {
        if let Some(previous) = self.sessions.remove(platform) {
            self.tokens.refresh_tokens.remove(&previous);
        }
        let issued = self.tokens.open_session();
        self.sessions.insert(
            platform.to_string(),
            issued.refresh_token.clone().unwrap_or_default(),
        );
        issued
    }

    pub fn snapshot(&self) -> Value {
        json!({"records": self.records})
    }

    pub fn restore(&mut self, snapshot: &Value) -> Result<(), serde_json::Error> {
        self.records = serde_json::from_value(snapshot["records"].clone())?;
        for module in MODULES {
            self.records.entry(module.into()).or_default();
        }
        Ok(())
    }

    pub fn all(&self, module: &str) -> Vec<SugarRecord> {
        self.records
            .get(module)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds a record as a person using Sugar would (no validation), returning its id; `email`
    /// becomes the primary address.
    pub fn insert(&mut self, module: &str, values: &[(&str, &str)]) -> String {
        let mut fields = Map::new();
        for (name, value) in values {
            if *name == "email" {
                fields.insert(
                    "email".into(),
                    json!([{"email_address": value, "primary_address": true}]),
                );
            } else {
                fields.insert(name.to_string(), json!(value));
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let record = SugarRecord {
            id: id.clone(),
            fields,
            contacts: BTreeSet::new(),
        };
        self.save(module, record);
        id
    }

    fn save(&mut self, module: &str, mut record: SugarRecord) {
        let now = sugar_time(Utc::now());
        record
            .fields
            .entry("date_entered")
            .or_insert(now.clone().into());
        record.fields.insert("date_modified".into(), now.into());
        record.fields.insert("deleted".into(), false.into());
        record.fields.insert("id".into(), record.id.clone().into());
        let primary = record.emails().first().cloned();
        record
            .fields
            .insert("email1".into(), primary.map_or(Value::Null, Value::from));
        if module != "Meetings" {
            let name = ["first_name", "last_name"]
                .iter()
                .filter_map(|f| record.text(f))
                .collect::<Vec<_>>()
                .join(" ");
            record.fields.insert("full_name".into(), name.into());
        }
        self.records
            .entry(module.into())
            .or_default()
            .insert(record.id.clone(), record);
    }
}

pub type SharedState = Arc<Mutex<SugarState>>;

pub struct SugarEmulator {
    pub state: SharedState,
    pub server: RunningEmulator,
}

impl SugarEmulator {
    pub async fn start(state: SugarState) -> std::io::Result<Self> {
        Self::start_on(state, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(state: SugarState, addr: SocketAddr) -> std::io::Result<Self> {
        let state: SharedState = Arc::new(Mutex::new(state));
        let server = serve(routes(state.clone()), error_body, addr).await?;
        Ok(SugarEmulator { state, server })
    }

    pub fn base_url(&self) -> &str {
        &self.server.base_url
    }
}

/// Sugar's error body for a status (used by fault injection too).
pub fn error_body(status: StatusCode) -> Value {
    let (label, message) = match status.as_u16() {
        401 => ("need_login", "No valid authentication for user."),
        404 => ("not_found", "Could not find record."),
        422 => ("invalid_parameter", "Invalid parameter."),
        429 => ("too_many_requests", "Too many requests; retry later."),
        503 => ("service_unavailable", "Service unavailable."),
        _ => ("fatal_error", "An error occurred."),
    };
    json!({"error": label, "error_message": message})
}

fn error(status: StatusCode, label: &str, message: impl Into<String>) -> Response {
    let mut response = (
        status,
        Json(json!({"error": label, "error_message": message.into()})),
    )
        .into_response();
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

/// `v10` to `v11_24`, as the path's version segment.
fn supported_version(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else {
        return false;
    };
    let (major, minor) = rest.split_once('_').unwrap_or((rest, "0"));
    match (major.parse::<u32>(), minor.parse::<u32>()) {
        (Ok(10), Ok(0)) => true,
        (Ok(11), Ok(minor)) => minor <= 24,
        _ => false,
    }
}

fn bad_version() -> Response {
    error(
        StatusCode::MOVED_PERMANENTLY,
        "incorrect_version",
        "Please change your requested API version to value between 10 and 11.24.",
    )
}

/// Checks the version, the rate limit and the `OAuth-Token` (or bearer) token before `f`.
fn authorised(
    state: &SharedState,
    version: &str,
    headers: &HeaderMap,
    f: impl FnOnce(&mut SugarState) -> Response,
) -> Response {
    if !supported_version(version) {
        return bad_version();
    }
    let token = headers
        .get("oauth-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    let mut state = state.lock().unwrap();
    if let Some(budget) = state.rate_limit.as_mut()
        && let Err(retry_after) = budget.take()
    {
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(error_body(StatusCode::TOO_MANY_REQUESTS)),
        )
            .into_response();
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(retry_after));
        return response;
    }
    match token.map(|t| state.tokens.check(t.trim())) {
        Some(TokenCheck::Valid) => f(&mut state),
        Some(TokenCheck::Expired) => error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "The access token provided has expired.",
        ),
        _ => error(
            StatusCode::UNAUTHORIZED,
            "need_login",
            "No valid authentication for user.",
        ),
    }
}

pub fn routes(state: SharedState) -> Router {
    Router::new()
        .route("/rest/{version}/oauth2/token", post(token))
        .route("/rest/{version}/me", get(me))
        .route("/rest/{version}/{module}", post(create))
        .route("/rest/{version}/{module}/filter", post(filter))
        .route("/rest/{version}/{module}/{id}", get(retrieve).put(update))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no_method",
                "Could not find a route with this method and path",
            )
        })
        .with_state(state)
}

fn sugar_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

/// `POST /oauth2/token` with a JSON body: the password grant opens a session for its platform
/// (ending the platform's last one); the refresh grant uses its token once and hands out the next.
async fn token(
    State(state): State<SharedState>,
    Path(version): Path<String>,
    body: Bytes,
) -> Response {
    if !supported_version(&version) {
        return bad_version();
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let field = |name: &str| body[name].as_str().unwrap_or("").to_string();
    let mut state = state.lock().unwrap();
    if field("client_id") != state.tokens.client_id
        || field("client_secret") != state.tokens.client_secret
    {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "The client credentials are invalid",
        );
    }
    let platform = match field("platform") {
        p if p.is_empty() => "base".to_string(),
        p => p,
    };
    if !state.platforms.contains(&platform) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
            "Invalid platform specified.",
        );
    }
    match field("grant_type").as_str() {
        "password" => {
            if field("username").is_empty() || field("password").is_empty() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Missing parameters. \"username\" and \"password\" required",
                );
            }
            if field("username") != state.username || field("password") != state.password {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "need_login",
                    "You must specify a valid username and password.",
                );
            }
        }
        "refresh_token" => {
            let used = field("refresh_token");
            if !state.tokens.refresh_tokens.remove(&used) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Invalid refresh token",
                );
            }
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Grant type not supported",
            );
        }
    }
    // One session per user and platform: the platform's last refresh token ends here.
    let issued = state.log_in(&platform);
    let refresh_token = issued.refresh_token.clone().unwrap_or_default();
    Json(json!({
        "access_token": issued.access_token, "expires_in": issued.expires_in, "token_type": "bearer",
        "scope": null, "refresh_token": refresh_token, "refresh_expires_in": 1_209_600,
        "download_token": uuid::Uuid::new_v4().to_string(),
    }))
    .into_response()
}

async fn me(
    State(state): State<SharedState>,
    Path(version): Path<String>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &version, &headers, |s| {
        Json(json!({"current_user": {"type": "user", "id": USER_ID, "user_name": s.username,
            "full_name": "Max Jensen", "timezone": "America/New_York", "preferences": {"datepref": "m/d/Y"}}}))
        .into_response()
    })
}

fn known_module(module: &str) -> Result<(), Response> {
    if MODULES.contains(&module) {
        Ok(())
    } else {
        Err(error(
            StatusCode::NOT_FOUND,
            "no_method",
            format!("Could not find a route for module {module}"),
        ))
    }
}

fn not_found(module: &str, id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("Could not find record: {id} in module: {module}"),
    )
}

/// The record as Sugar answers it, `fields` limiting the fields (`id` and `date_modified`
/// always come).
fn record_json(module: &str, record: &SugarRecord, fields: Option<&[String]>) -> Value {
    let mut out = Map::new();
    for name in fields_of(module) {
        let wanted = fields.is_none_or(|f| f.iter().any(|w| w == name))
            || name == "id"
            || name == "date_modified";
        if wanted {
            let value = match name {
                "email" => record.fields.get("email").cloned().unwrap_or(json!([])),
                _ => record.fields.get(name).cloned().unwrap_or(Value::Null),
            };
            out.insert(name.into(), value);
        }
    }
    if module == "Meetings" && fields.is_none_or(|f| f.iter().any(|w| w == "contacts")) {
        out.insert("contacts".into(), json!(record.contacts));
    }
    out.insert("_module".into(), module.into());
    Value::Object(out)
}

fn invalid(message: impl Into<String>) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
        message,
    )
}

/// Applies a create's or update's body to `record`. Fields the module lacks are ignored, as
/// Sugar's save ignores what its vardefs do not name.
fn apply(
    s: &SugarState,
    module: &str,
    record: &mut SugarRecord,
    body: &Map<String, Value>,
) -> Result<(), Response> {
    let known = fields_of(module);
    for (name, value) in body {
        match name.as_str() {
            "id" | "date_entered" | "date_modified" | "deleted" | "date_end" | "full_name"
            | "email1" => {}
            "email" => {
                let mut addresses = Vec::new();
                for entry in value.as_array().into_iter().flatten() {
                    let address = entry["email_address"].as_str().unwrap_or("");
                    if crm_sync::domain::Email::parse(address).is_err() {
                        return Err(invalid(format!("{address} is an invalid email address")));
                    }
                    addresses.push(json!({"email_address": address,
                        "primary_address": entry["primary_address"] == json!(true),
                        "reply_to_address": false, "invalid_email": false, "opt_out": false}));
                }
                record
                    .fields
                    .insert("email".into(), Value::Array(addresses));
            }
            "contacts" if module == "Meetings" => {
                let Some(actions) = value.as_object() else {
                    return Err(invalid("Link field must contain array of actions"));
                };
                for id in actions
                    .get("add")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let id = id.as_str().unwrap_or("");
                    if !s.records["Contacts"].contains_key(id) {
                        return Err(not_found("Contacts", id));
                    }
                    record.contacts.insert(id.to_string());
                }
                for id in actions
                    .get("delete")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    record.contacts.remove(id.as_str().unwrap_or(""));
                }
            }
            "status" if module == "Meetings" => {
                let status = value.as_str().unwrap_or("");
                if !MEETING_STATUSES.contains(&status) {
                    return Err(invalid(format!("{status} is not a valid value for status")));
                }
                record.fields.insert(name.clone(), value.clone());
            }
            "date_start" => {
                let parsed = value
                    .as_str()
                    .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                    .ok_or_else(|| invalid(format!("Did not recognize {name} as a date/time")))?;
                record
                    .fields
                    .insert(name.clone(), sugar_time(parsed.with_timezone(&Utc)).into());
            }
            "duration_hours" | "duration_minutes" => {
                if value.as_i64().is_none_or(|n| n < 0) {
                    return Err(invalid(format!("{name} must be a whole number")));
                }
                record.fields.insert(name.clone(), value.clone());
            }
            field if known.contains(&field) => {
                record.fields.insert(name.clone(), value.clone());
            }
            _ => {}
        }
    }
    if module == "Meetings" {
        let start = record
            .text("date_start")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let Some(start) = start else {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_parameter",
                "Missing parameter: date_start",
            ));
        };
        let number = |f: &str| record.fields.get(f).and_then(Value::as_i64).unwrap_or(0);
        // Sugar computes the end from the start and the durations; a sent date_end is ignored.
        let end = start
            + Duration::hours(number("duration_hours"))
            + Duration::minutes(number("duration_minutes"));
        record
            .fields
            .insert("date_end".into(), sugar_time(end).into());
        record.fields.entry("status").or_insert("Planned".into());
        record.fields.entry("type").or_insert("Sugar".into());
        let parent_is_contact = record.text("parent_type") == Some("Contacts");
        let auto_invite = body.get("auto_invite_parent") != Some(&json!(false));
        if parent_is_contact && auto_invite {
            let parent = record.text("parent_id").unwrap_or("").to_string();
            if !s.records["Contacts"].contains_key(&parent) {
                return Err(not_found("Contacts", &parent));
            }
            record.contacts.insert(parent);
        }
    } else if record.text("last_name").is_none() {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_parameter",
            "Missing parameter: last_name",
        ));
    }
    Ok(())
}

fn body_object(body: &Bytes) -> Result<Map<String, Value>, Response> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .ok_or_else(|| invalid("The request body is not a JSON object"))
}

async fn create(
    State(state): State<SharedState>,
    Path((version, module)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authorised(&state, &version, &headers, |s| {
        if let Err(r) = known_module(&module) {
            return r;
        }
        let body = match body_object(&body) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let mut record = SugarRecord {
            id: uuid::Uuid::new_v4().to_string(),
            fields: Map::new(),
            contacts: BTreeSet::new(),
        };
        if let Err(r) = apply(s, &module, &mut record, &body) {
            return r;
        }
        let id = record.id.clone();
        s.save(&module, record);
        Json(record_json(&module, &s.records[&module][&id], None)).into_response()
    })
}

async fn update(
    State(state): State<SharedState>,
    Path((version, module, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authorised(&state, &version, &headers, |s| {
        if let Err(r) = known_module(&module) {
            return r;
        }
        let body = match body_object(&body) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let Some(mut record) = s.records[&module].get(&id).cloned() else {
            return not_found(&module, &id);
        };
        if let Err(r) = apply(s, &module, &mut record, &body) {
            return r;
        }
        s.save(&module, record);
        Json(record_json(&module, &s.records[&module][&id], None)).into_response()
    })
}

fn wanted_fields(raw: Option<&str>) -> Option<Vec<String>> {
    raw.map(|f| f.split(',').map(|n| n.trim().to_string()).collect())
}

async fn retrieve(
    State(state): State<SharedState>,
    Path((version, module, id)): Path<(String, String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &version, &headers, |s| {
        if let Err(r) = known_module(&module) {
            return r;
        }
        match s.records[&module].get(&id) {
            Some(record) => {
                let fields = wanted_fields(query.get("fields").map(String::as_str));
                Json(record_json(&module, record, fields.as_deref())).into_response()
            }
            None => not_found(&module, &id),
        }
    })
}

/// Whether `record` meets one filter condition (`{"field": value}`, `{"field": {"$op": v}}`,
/// `{"$or": [...]}`, `{"$and": [...]}`). Comparisons ignore case, as MySQL's default
/// collation does.
fn meets(module: &str, record: &SugarRecord, condition: &Value) -> Result<bool, Response> {
    let Some(object) = condition.as_object() else {
        return Err(invalid("A filter condition must be an object"));
    };
    for (field, wanted) in object {
        let ok = match field.as_str() {
            "$or" | "$and" => {
                let parts = wanted
                    .as_array()
                    .ok_or_else(|| invalid(format!("{field} takes an array")))?;
                let mut results = Vec::new();
                for part in parts {
                    results.push(meets(module, record, part)?);
                }
                if field == "$or" {
                    results.iter().any(|r| *r)
                } else {
                    results.iter().all(|r| *r)
                }
            }
            _ => {
                let values: Vec<String> = if field == "email_addresses.email_address" {
                    record.emails()
                } else if fields_of(module).contains(&field.as_str()) {
                    match record.fields.get(field) {
                        Some(Value::String(s)) => vec![s.clone()],
                        Some(Value::Number(n)) => vec![n.to_string()],
                        _ => vec![],
                    }
                } else {
                    return Err(invalid(format!("Unknown field {field}")));
                };
                let values: Vec<String> = values.iter().map(|v| v.to_lowercase()).collect();
                let (operator, operand) = match wanted.as_object().and_then(|o| o.iter().next()) {
                    Some((op, operand)) => (op.as_str(), operand.clone()),
                    None => ("$equals", wanted.clone()),
                };
                let text = operand
                    .as_str()
                    .map(str::to_lowercase)
                    .unwrap_or_else(|| operand.to_string());
                let list: Vec<String> = operand
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_lowercase)
                            .collect()
                    })
                    .unwrap_or_default();
                match operator {
                    "$equals" => values.contains(&text),
                    "$not_equals" => !values.contains(&text),
                    "$starts" => values.iter().any(|v| v.starts_with(&text)),
                    "$ends" => values.iter().any(|v| v.ends_with(&text)),
                    "$contains" => values.iter().any(|v| v.contains(&text)),
                    "$in" => values.iter().any(|v| list.contains(v)),
                    "$not_in" => !values.iter().any(|v| list.contains(v)),
                    "$is_null" => values.is_empty(),
                    "$not_null" => !values.is_empty(),
                    other => {
                        return Err(invalid(format!("Did not recognize the operand: {other}")));
                    }
                }
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `POST /{module}/filter`: every condition of `filter` must hold.
async fn filter(
    State(state): State<SharedState>,
    Path((version, module)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authorised(&state, &version, &headers, |s| {
        if let Err(r) = known_module(&module) {
            return r;
        }
        let body = match body_object(&body) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let conditions = body
            .get("filter")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let max = body.get("max_num").and_then(Value::as_u64).unwrap_or(20) as usize;
        let offset = body.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
        let fields = wanted_fields(body.get("fields").and_then(Value::as_str));
        let mut matched = Vec::new();
        for record in s.records[&module].values() {
            let mut all = true;
            for condition in &conditions {
                match meets(&module, record, condition) {
                    Ok(true) => {}
                    Ok(false) => all = false,
                    Err(r) => return r,
                }
            }
            if all {
                matched.push(record);
            }
        }
        let page: Vec<Value> = matched
            .iter()
            .skip(offset)
            .take(max)
            .map(|r| record_json(&module, r, fields.as_deref()))
            .collect();
        let next_offset = if offset + max < matched.len() {
            json!(offset + max)
        } else {
            json!(-1)
        };
        Json(json!({"next_offset": next_offset, "records": page})).into_response()
    })
}
