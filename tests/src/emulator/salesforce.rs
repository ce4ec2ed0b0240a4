//! Salesforce REST API emulator: the refresh-token endpoint with expiring sessions, Contact, Lead
//! and Event records, the SOQL and SOSL subset the adapter sends, external-id upsert, the
//! `limits` resource, duplicate rules, and Salesforce's error arrays and API-usage limit.
//!
//! Behaviour follows developer.salesforce.com: error bodies `[{"message","errorCode","fields"}]`
//! (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm),
//! 401 INVALID_SESSION_ID, 403 REQUEST_LIMIT_EXCEEDED and the `Sforce-Limit-Info` header
//! (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm),
//! SOQL escapes (https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select_quotedstringescapes.htm),
//! upsert by external ID with 201/200/300
//! (https://developer.salesforce.com/docs/platform/api-rest/guide/dome-upsert.html), and Event's
//! StartDateTime/EndDateTime/DurationInMinutes rules and the 14-day limit
//! (https://developer.salesforce.com/docs/platform/object-reference/references/standard-objects/object-event.html).
//! The token answer has no `expires_in`; the session lasts the org's timeout.
//! Simplifications: duplicate rules match Contact and Lead on exact email, and a phone search
//! matches a term equal to a phone field's digits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::oauth::OAuthTokens;
use super::{IdSequence, RunningEmulator, serve};

/// API versions this emulator answers (`v31.0` to `v64.0`).
const VERSIONS: std::ops::RangeInclusive<u32> = 31..=64;
pub const DEFAULT_DAILY_LIMIT: u64 = 100_000;
pub const SESSION_HOURS: i64 = 2;
const MAX_EVENT_MINUTES: i64 = 14 * 24 * 60;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Text(usize),
    Email,
    DateTime,
    Int,
    Bool,
    /// A restricted picklist.
    Picklist(&'static [&'static str]),
    /// A lookup to one of these objects.
    Reference(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy)]
struct FieldDef {
    name: &'static str,
    label: &'static str,
    kind: Kind,
    required: bool,
    writable: bool,
    external_id: bool,
}

const fn field(name: &'static str, label: &'static str, kind: Kind) -> FieldDef {
    FieldDef {
        name,
        label,
        kind,
        required: false,
        writable: true,
        external_id: false,
    }
}

const fn required(def: FieldDef) -> FieldDef {
    FieldDef {
        required: true,
        ..def
    }
}

const fn read_only(def: FieldDef) -> FieldDef {
    FieldDef {
        writable: false,
        ..def
    }
}

const SYSTEM_FIELDS: &[FieldDef] = &[
    read_only(field("Id", "Record ID", Kind::Text(18))),
    read_only(field("CreatedDate", "Created Date", Kind::DateTime)),
    read_only(field(
        "LastModifiedDate",
        "Last Modified Date",
        Kind::DateTime,
    )),
];

const CONTACT: &[FieldDef] = &[
    read_only(field("Name", "Full Name", Kind::Text(121))),
    field("FirstName", "First Name", Kind::Text(40)),
    required(field("LastName", "Last Name", Kind::Text(80))),
    field("Email", "Email", Kind::Email),
    field("Phone", "Business Phone", Kind::Text(40)),
    field("MobilePhone", "Mobile Phone", Kind::Text(40)),
    field("MailingStreet", "Mailing Street", Kind::Text(255)),
    field("MailingCity", "Mailing City", Kind::Text(40)),
    field("MailingState", "Mailing State/Province", Kind::Text(80)),
    field(
        "MailingPostalCode",
        "Mailing Zip/Postal Code",
        Kind::Text(20),
    ),
    field("MailingCountry", "Mailing Country", Kind::Text(80)),
    field("LeadSource", "Lead Source", Kind::Text(255)),
    field("Description", "Contact Description", Kind::Text(32000)),
    // Custom fields of the emulated org: an external id for upserts, and a plain text field
    // that connections can map a crm-sync field to.
    field("Booking_City__c", "Booking City", Kind::Text(80)),
    FieldDef {
        external_id: true,
        ..field(
            "Booking_Contact_Id__c",
            "Booking Contact Id",
            Kind::Text(255),
        )
    },
    CRM_SYNC_ID,
];

/// The org admin's External ID text field for crm-sync's stamp, on Contact, Lead and Activity.
const CRM_SYNC_ID: FieldDef = FieldDef {
    external_id: true,
    ..field("CrmSyncId__c", "CRM Sync Id", Kind::Text(255))
};

const LEAD: &[FieldDef] = &[
    read_only(field("Name", "Full Name", Kind::Text(121))),
    field("FirstName", "First Name", Kind::Text(40)),
    required(field("LastName", "Last Name", Kind::Text(80))),
    required(field("Company", "Company", Kind::Text(255))),
    field("Email", "Email", Kind::Email),
    field("Phone", "Phone", Kind::Text(40)),
    field("MobilePhone", "Mobile Phone", Kind::Text(40)),
    field("Street", "Street", Kind::Text(255)),
    field("City", "City", Kind::Text(40)),
    field("State", "State/Province", Kind::Text(80)),
    field("PostalCode", "Zip/Postal Code", Kind::Text(20)),
    field("Country", "Country", Kind::Text(80)),
    field("LeadSource", "Lead Source", Kind::Text(255)),
    field("Description", "Description", Kind::Text(32000)),
    field("Status", "Lead Status", Kind::Text(255)),
    read_only(field("IsConverted", "Converted", Kind::Bool)),
    CRM_SYNC_ID,
];

const EVENT: &[FieldDef] = &[
    field("Subject", "Subject", Kind::Text(255)),
    field("StartDateTime", "Start Date Time", Kind::DateTime),
    field("ActivityDateTime", "Due Date Time", Kind::DateTime),
    field("EndDateTime", "End Date Time", Kind::DateTime),
    field("DurationInMinutes", "Duration", Kind::Int),
    field("IsAllDayEvent", "All-Day Event", Kind::Bool),
    field("WhoId", "Name ID", Kind::Reference(&["Contact", "Lead"])),
    field("Description", "Description", Kind::Text(32000)),
    field("Location", "Location", Kind::Text(255)),
    field(
        "ShowAs",
        "Show Time As",
        Kind::Picklist(&["Busy", "OutOfOffice", "Free"]),
    ),
    CRM_SYNC_ID,
];

/// The objects this emulator holds: (name, key prefix, fields).
const SOBJECTS: &[(&str, &str, &[FieldDef])] = &[
    ("Contact", "003", CONTACT),
    ("Lead", "00Q", LEAD),
    ("Event", "00U", EVENT),
];

fn schema(sobject: &str) -> Option<(&'static str, &'static str, &'static [FieldDef])> {
    SOBJECTS
        .iter()
        .find(|(name, _, _)| name.eq_ignore_ascii_case(sobject))
        .copied()
}

fn field_def(fields: &[FieldDef], name: &str) -> Option<FieldDef> {
    SYSTEM_FIELDS
        .iter()
        .chain(fields)
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .copied()
}

/// One record: its fields as Salesforce stores them (strings, numbers, booleans).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SObject {
    pub id: String,
    pub sobject: String,
    pub fields: BTreeMap<String, Value>,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
}

impl SObject {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    }

    fn value(&self, name: &str) -> Value {
        match name {
            "Id" => self.id.clone().into(),
            "CreatedDate" => format_time(self.created).into(),
            "LastModifiedDate" => format_time(self.modified).into(),
            "Name" => {
                let name = [self.get("FirstName"), self.get("LastName")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                name.into()
            }
            _ => self.fields.get(name).cloned().unwrap_or(Value::Null),
        }
    }

    fn json(&self, version: &str, fields: &[FieldDef]) -> Value {
        let mut object = Map::new();
        object.insert(
            "attributes".into(),
            json!({"type": self.sobject, "url": format!("/services/data/{version}/sobjects/{}/{}", self.sobject, self.id)}),
        );
        for def in fields {
            object.insert(def.name.into(), self.value(def.name));
        }
        Value::Object(object)
    }
}

pub struct SalesforceState {
    pub tokens: OAuthTokens,
    /// What the token endpoint answers as `instance_url` (this server's address).
    pub instance_url: String,
    pub org_id: String,
    pub user_id: String,
    ids: IdSequence,
    /// object name -> id -> record
    pub records: BTreeMap<String, BTreeMap<String, SObject>>,
    /// Ids of records a person deleted (in the recycle bin).
    pub deleted: BTreeSet<String>,
    pub daily_limit: u64,
    pub api_used: u64,
}

impl SalesforceState {
    pub fn new(tokens: OAuthTokens) -> Self {
        SalesforceState {
            tokens,
            instance_url: String::new(),
            org_id: "00D5g000004EmUlEAK".into(),
            user_id: "0055g00000EmUlAAAV".into(),
            ids: IdSequence::starting_at(1000),
            records: SOBJECTS
                .iter()
                .map(|(name, _, _)| (name.to_string(), BTreeMap::new()))
                .collect(),
            deleted: BTreeSet::new(),
            daily_limit: DEFAULT_DAILY_LIMIT,
            api_used: 0,
        }
    }

    /// Everything the org holds, for saving between runs of the local emulator.
    pub fn snapshot(&self) -> Value {
        json!({"lastId": self.ids.last(), "records": self.records, "deleted": self.deleted})
    }

    /// Loads what `snapshot` saved.
    pub fn restore(&mut self, snapshot: &Value) -> Result<(), serde_json::Error> {
        self.records = serde_json::from_value(snapshot["records"].clone())?;
        for (name, _, _) in SOBJECTS {
            self.records.entry(name.to_string()).or_default();
        }
        self.deleted = serde_json::from_value(snapshot["deleted"].clone()).unwrap_or_default();
        self.ids = IdSequence::starting_at(snapshot["lastId"].as_u64().unwrap_or(1000));
        Ok(())
    }

    pub fn all(&self, sobject: &str) -> Vec<SObject> {
        self.records
            .get(sobject)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds a record as a person using Salesforce would (no validation), returning its id.
    pub fn insert(&mut self, sobject: &str, fields: &[(&str, &str)]) -> String {
        let (name, prefix, _) = schema(sobject).expect("a known object");
        let id = record_id(prefix, &mut self.ids);
        let now = Utc::now();
        let record = SObject {
            id: id.clone(),
            sobject: name.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect(),
            created: now,
            modified: now,
        };
        self.records
            .entry(name.into())
            .or_default()
            .insert(id.clone(), record);
        id
    }

    /// Deletes a record as a person would (it goes to the recycle bin).
    pub fn delete(&mut self, sobject: &str, id: &str) {
        if let Some(records) = self.records.get_mut(sobject)
            && records.remove(id).is_some()
        {
            self.deleted.insert(id.to_string());
        }
    }

    fn find(&self, sobject: &str, id: &str) -> Option<&SObject> {
        let records = self.records.get(sobject)?;
        match id.len() {
            18 => records.get(id),
            // The 15-character form is the case-sensitive id without its checksum.
            15 => records.values().find(|r| r.id.starts_with(id)),
            _ => None,
        }
    }

    fn find_any(&self, id: &str) -> Option<&SObject> {
        SOBJECTS.iter().find_map(|(name, _, _)| self.find(name, id))
    }
}

/// An 18-character id: key prefix, pod, sequence, and the case-checksum suffix.
fn record_id(prefix: &str, ids: &mut IdSequence) -> String {
    let fifteen = format!("{prefix}5g0{:0>9}", ids.next_id());
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let suffix: String = fifteen
        .as_bytes()
        .chunks(5)
        .map(|chunk| {
            let bits = chunk
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_ascii_uppercase())
                .fold(0, |acc, (i, _)| acc | (1 << i));
            alphabet[bits] as char
        })
        .collect();
    format!("{fifteen}{suffix}")
}

pub type SharedState = Arc<Mutex<SalesforceState>>;

pub struct SalesforceEmulator {
    pub state: SharedState,
    pub server: RunningEmulator,
}

impl SalesforceEmulator {
    pub async fn start(tokens: OAuthTokens) -> std::io::Result<Self> {
        Self::start_on(tokens, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(tokens: OAuthTokens, addr: SocketAddr) -> std::io::Result<Self> {
        let state: SharedState = Arc::new(Mutex::new(SalesforceState::new(tokens)));
        let server = serve(routes(state.clone()), error_body, addr).await?;
        state.lock().unwrap().instance_url = server.base_url.clone();
        Ok(SalesforceEmulator { state, server })
    }

    pub fn base_url(&self) -> &str {
        &self.server.base_url
    }
}

/// A client with one refresh token whose sessions last `SESSION_HOURS`.
pub fn client(client_id: &str, client_secret: &str, refresh_token: &str) -> OAuthTokens {
    OAuthTokens::new(
        client_id,
        client_secret,
        refresh_token,
        Duration::hours(SESSION_HOURS),
    )
}

/// Salesforce's answer to an injected fault of this status.
pub fn error_body(status: StatusCode) -> Value {
    let (message, code) = match status.as_u16() {
        400 => ("The request body is malformed", "JSON_PARSER_ERROR"),
        401 => ("Session expired or invalid", "INVALID_SESSION_ID"),
        403 => ("TotalRequests Limit exceeded.", "REQUEST_LIMIT_EXCEEDED"),
        404 => ("The requested resource does not exist", "NOT_FOUND"),
        429 => ("Too many requests", "REQUEST_LIMIT_EXCEEDED"),
        503 => ("Server temporarily unavailable", "SERVER_UNAVAILABLE"),
        _ => (
            "An unexpected error occurred. Please include this ErrorId if you contact support: 1417289536-55713 (-1208347890)",
            "UNKNOWN_EXCEPTION",
        ),
    };
    json!([{"message": message, "errorCode": code}])
}

/// An error answer: a status and Salesforce's error array.
#[derive(Debug)]
struct ApiError(StatusCode, Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

type Answer = Result<Response, ApiError>;

fn error(status: StatusCode, code: &str, message: impl Into<String>, fields: &[&str]) -> ApiError {
    ApiError(
        status,
        json!([{"message": message.into(), "errorCode": code, "fields": fields}]),
    )
}

fn not_found() -> ApiError {
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
        &[],
    )
}

/// Checks the session and the org's API allocation, and adds `Sforce-Limit-Info`.
fn authorised(
    state: &SharedState,
    headers: &HeaderMap,
    version: &str,
    f: impl FnOnce(&mut SalesforceState) -> Answer,
) -> Response {
    let known_version = version
        .strip_prefix('v')
        .and_then(|v| v.strip_suffix(".0"))
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|v| VERSIONS.contains(&v));
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let mut state = state.lock().unwrap();
    if state.tokens.check(token) != super::oauth::TokenCheck::Valid {
        return (
            StatusCode::UNAUTHORIZED,
            Json(error_body(StatusCode::UNAUTHORIZED)),
        )
            .into_response();
    }
    if !known_version {
        return not_found().into_response();
    }
    if state.api_used >= state.daily_limit {
        return (
            StatusCode::FORBIDDEN,
            Json(error_body(StatusCode::FORBIDDEN)),
        )
            .into_response();
    }
    state.api_used += 1;
    let usage = format!("api-usage={}/{}", state.api_used, state.daily_limit);
    let mut response = f(&mut state).unwrap_or_else(IntoResponse::into_response);
    response.headers_mut().insert(
        "sforce-limit-info",
        HeaderValue::from_str(&usage).expect("ascii"),
    );
    response
}

pub fn routes(state: SharedState) -> Router {
    Router::new()
        .route("/services/oauth2/token", post(token))
        .route(
            "/services/oauth2/authorize",
            get(authorize_page).post(authorize_decision),
        )
        .route("/services/data/{version}/limits", get(limits))
        .route("/services/data/{version}/limits/", get(limits))
        .route("/services/data/{version}/query", get(query))
        .route("/services/data/{version}/query/", get(query))
        .route("/services/data/{version}/search", get(search))
        .route("/services/data/{version}/search/", get(search))
        .route("/services/data/{version}/sobjects/{sobject}", post(create))
        .route(
            "/services/data/{version}/sobjects/{sobject}/{id}",
            get(retrieve).patch(update),
        )
        .route(
            "/services/data/{version}/sobjects/{sobject}/{field}/{value}",
            patch(upsert),
        )
        .route(
            "/services/data/{version}/composite/sobjects",
            post(collection_create).patch(collection_update),
        )
        .with_state(state)
}

/// `grant_type=refresh_token`, answered as Salesforce does: no `expires_in`, `instance_url`,
/// the identity URL, and errors `{"error", "error_description"}`.
async fn token(
    State(state): State<SharedState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut state = state.lock().unwrap();
    let oauth_error = |error: &str, description: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    if form.get("client_id") != Some(&state.tokens.client_id) {
        return oauth_error("invalid_client_id", "client identifier invalid");
    }
    let granted = if form.get("grant_type").map(String::as_str) == Some("authorization_code") {
        state.tokens.exchange_code(&form)
    } else {
        state.tokens.refresh(&form)
    };
    match granted {
        Err(e) => oauth_error(e.error, e.description),
        Ok(issued) => {
            let id = format!(
                "{}/id/{}/{}",
                state.instance_url, state.org_id, state.user_id
            );
            let issued_at = Utc::now().timestamp_millis().to_string();
            let signature = crm_sync::store::sha256_hex(
                format!("{id}{issued_at}{}", state.tokens.client_secret).as_bytes(),
            );
            let mut body = json!({
                "access_token": issued.access_token, "instance_url": state.instance_url, "id": id,
                "token_type": "Bearer", "issued_at": issued_at, "signature": signature,
                "scope": "refresh_token api",
            });
            if let Some(rotated) = issued.refresh_token {
                body["refresh_token"] = rotated.into();
            }
            Json(body).into_response()
        }
    }
}

/// The web-server flow's consent page (`GET /services/oauth2/authorize?response_type=code&…`).
async fn authorize_page(
    State(state): State<SharedState>,
    Query(request): Query<HashMap<String, String>>,
) -> Response {
    if request.get("client_id") != Some(&state.lock().unwrap().tokens.client_id) {
        return (
            StatusCode::BAD_REQUEST,
            axum::response::Html("error=invalid_client_id: client identifier invalid"),
        )
            .into_response();
    }
    axum::response::Html(super::oauth::consent_page(
        "Salesforce",
        "/services/oauth2/authorize",
        &request,
    ))
    .into_response()
}

/// Allow redirects with `code` and `state`; Deny with `error=access_denied`.
async fn authorize_decision(
    State(state): State<SharedState>,
    Form(decision): Form<HashMap<String, String>>,
) -> Response {
    let mut state = state.lock().unwrap();
    match super::oauth::consent_redirect(&mut state.tokens, &decision, &[]) {
        Ok(location) => (StatusCode::FOUND, [("location", location)]).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::response::Html(format!("error={}: {}", e.error, e.description)),
        )
            .into_response(),
    }
}

async fn limits(
    State(state): State<SharedState>,
    Path(version): Path<String>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, &version, |s| {
        let remaining = s.daily_limit.saturating_sub(s.api_used);
        Ok(Json(json!({
            "DailyApiRequests": {"Max": s.daily_limit, "Remaining": remaining},
            "DataStorageMB": {"Max": 5, "Remaining": 5},
        }))
        .into_response())
    })
}

// ---------------------------------------------------------------------------------------------
// SOQL and SOSL: just what the adapter sends.

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Literal(String),
    Number(u64),
    Symbol(char),
}

/// Splits a query into words, numbers, symbols and string literals (escapes resolved).
fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut literal = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string literal".into()),
                    Some('\'') => break,
                    Some('\\') => literal.push(unescape(&mut chars)?),
                    Some(c) => literal.push(c),
                }
            }
            tokens.push(Token::Literal(literal));
        } else if c.is_ascii_digit() {
            let mut digits = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(d);
                chars.next();
            }
            tokens.push(Token::Number(
                digits.parse().map_err(|_| "number too large")?,
            ));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut word = String::new();
            while let Some(&w) = chars
                .peek()
                .filter(|w| w.is_ascii_alphanumeric() || **w == '_' || **w == '.')
            {
                word.push(w);
                chars.next();
            }
            tokens.push(Token::Word(word));
        } else if "(),=".contains(c) {
            tokens.push(Token::Symbol(c));
            chars.next();
        } else {
            return Err(format!("unexpected token: '{c}'"));
        }
    }
    Ok(tokens)
}

/// The character after a backslash in a SOQL literal; anything undocumented is an error.
fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, String> {
    Ok(match chars.next() {
        Some('n' | 'N') => '\n',
        Some('r' | 'R') => '\r',
        Some('t' | 'T') => '\t',
        Some('b' | 'B') => '\u{8}',
        Some('f' | 'F') => '\u{c}',
        Some(c @ ('"' | '\'' | '\\')) => c,
        Some('u') => {
            let hex: String = (0..4).filter_map(|_| chars.next()).collect();
            u32::from_str_radix(&hex, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or(format!("Invalid unicode escape \\u{hex}"))?
        }
        other => {
            return Err(format!(
                "Illegal character sequence '\\{}' in string literal.",
                other.map(String::from).unwrap_or_default()
            ));
        }
    })
}

struct Tokens {
    tokens: Vec<Token>,
    at: usize,
}

impl Tokens {
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }
    fn keyword(&mut self, word: &str) -> Result<(), String> {
        match self.next() {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case(word) => Ok(()),
            other => Err(format!(
                "expected {word}, found {}",
                describe(other.as_ref())
            )),
        }
    }
    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }
    fn word(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Word(w)) => Ok(w),
            other => Err(format!("unexpected token: {}", describe(other.as_ref()))),
        }
    }
    fn symbol(&mut self, symbol: char) -> Result<(), String> {
        match self.next() {
            Some(Token::Symbol(s)) if s == symbol => Ok(()),
            other => Err(format!(
                "expected '{symbol}', found {}",
                describe(other.as_ref())
            )),
        }
    }
    /// `word (, word)*`
    fn word_list(&mut self) -> Result<Vec<String>, String> {
        let mut words = vec![self.word()?];
        while self.peek() == Some(&Token::Symbol(',')) {
            self.next();
            words.push(self.word()?);
        }
        Ok(words)
    }
    /// `[LIMIT n]` and the end of the statement.
    fn limit_and_end(&mut self) -> Result<Option<usize>, String> {
        let limit = if self.is_keyword("LIMIT") {
            self.next();
            match self.next() {
                Some(Token::Number(n)) => Some(n as usize),
                other => return Err(format!("unexpected token: {}", describe(other.as_ref()))),
            }
        } else {
            None
        };
        match self.next() {
            None => Ok(limit),
            Some(Token::Word(w))
                if ["AND", "ORDER", "GROUP", "OFFSET"]
                    .contains(&w.to_ascii_uppercase().as_str()) =>
            {
                Err(format!(
                    "{w} is valid SOQL but not supported by this emulator"
                ))
            }
            other => Err(format!("unexpected token: {}", describe(other.as_ref()))),
        }
    }
}

fn describe(token: Option<&Token>) -> String {
    match token {
        None => "end of query".into(),
        Some(Token::Word(w)) => format!("'{w}'"),
        Some(Token::Literal(l)) => format!("'{l}'"),
        Some(Token::Number(n)) => n.to_string(),
        Some(Token::Symbol(s)) => format!("'{s}'"),
    }
}

/// `SELECT f, … FROM Object [WHERE Field = 'value' [OR …]] [LIMIT n]`
#[derive(Debug, PartialEq)]
struct Soql {
    fields: Vec<String>,
    sobject: String,
    any_of: Vec<(String, String)>,
    limit: Option<usize>,
}

fn parse_soql(text: &str) -> Result<Soql, String> {
    let mut tokens = Tokens {
        tokens: tokenize(text)?,
        at: 0,
    };
    tokens.keyword("SELECT")?;
    let fields = tokens.word_list()?;
    tokens.keyword("FROM")?;
    let sobject = tokens.word()?;
    let mut any_of = Vec::new();
    if tokens.is_keyword("WHERE") {
        tokens.next();
        loop {
            let field = tokens.word()?;
            // `field = 'v'`, or `field IN ('v', …)`: any of the values.
            let values = if tokens.is_keyword("IN") {
                tokens.next();
                tokens.symbol('(')?;
                let mut values = Vec::new();
                loop {
                    match tokens.next() {
                        Some(Token::Literal(value)) => values.push(value),
                        other => {
                            return Err(format!("unexpected token: {}", describe(other.as_ref())));
                        }
                    }
                    match tokens.next() {
                        Some(Token::Symbol(',')) => {}
                        Some(Token::Symbol(')')) => break,
                        other => {
                            return Err(format!("unexpected token: {}", describe(other.as_ref())));
                        }
                    }
                }
                values
            } else {
                tokens.symbol('=')?;
                match tokens.next() {
                    Some(Token::Literal(value)) => vec![value],
                    other => return Err(format!("unexpected token: {}", describe(other.as_ref()))),
                }
            };
            any_of.extend(values.into_iter().map(|value| (field.clone(), value)));
            if !tokens.is_keyword("OR") {
                break;
            }
            tokens.next();
        }
    }
    let limit = tokens.limit_and_end()?;
    Ok(Soql {
        fields,
        sobject,
        any_of,
        limit,
    })
}

/// `FIND {term [OR term]…} IN PHONE FIELDS RETURNING Object(f, …)[, …] [LIMIT n]`
#[derive(Debug, PartialEq)]
struct Sosl {
    terms: Vec<String>,
    returning: Vec<(String, Vec<String>)>,
    limit: Option<usize>,
}

fn parse_sosl(text: &str) -> Result<Sosl, String> {
    let text = text.trim_start();
    let rest = text
        .get(..4)
        .filter(|f| f.eq_ignore_ascii_case("FIND"))
        .map(|_| text[4..].trim_start())
        .ok_or("expected FIND")?;
    let rest = rest.strip_prefix('{').ok_or("expected '{' after FIND")?;
    // The search expression runs to the first unescaped '}'.
    let mut expression = String::new();
    let mut chars = rest.char_indices();
    let end = loop {
        match chars.next() {
            None => return Err("missing '}' after the search expression".into()),
            Some((_, '\\')) => expression.push(chars.next().ok_or("dangling '\\'")?.1),
            Some((i, '}')) => break i + 1,
            Some((_, c)) => expression.push(c),
        }
    };
    let mut terms = Vec::new();
    for (i, word) in expression.split_whitespace().enumerate() {
        match (i % 2, word.to_ascii_uppercase().as_str()) {
            (1, "OR") => {}
            (1, other) => {
                return Err(format!(
                    "search operator {other} is not supported by this emulator"
                ));
            }
            (_, _) if word.chars().count() < 2 => {
                return Err("search term must be longer than one character".into());
            }
            _ => terms.push(word.to_string()),
        }
    }
    let mut tokens = Tokens {
        tokens: tokenize(&rest[end..])?,
        at: 0,
    };
    tokens.keyword("IN")?;
    if !tokens.is_keyword("PHONE") {
        return Err("only IN PHONE FIELDS is supported by this emulator".into());
    }
    tokens.next();
    tokens.keyword("FIELDS")?;
    tokens.keyword("RETURNING")?;
    let mut returning = Vec::new();
    loop {
        let sobject = tokens.word()?;
        tokens.symbol('(')?;
        let fields = tokens.word_list()?;
        tokens.symbol(')')?;
        returning.push((sobject, fields));
        if tokens.peek() != Some(&Token::Symbol(',')) {
            break;
        }
        tokens.next();
    }
    let limit = tokens.limit_and_end()?;
    Ok(Sosl {
        terms,
        returning,
        limit,
    })
}

/// The fields a query names, or INVALID_TYPE / INVALID_FIELD as Salesforce answers.
fn selected(sobject: &str, names: &[String]) -> Result<(&'static str, Vec<FieldDef>), ApiError> {
    let Some((name, _, fields)) = schema(sobject) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE",
            format!(
                "sObject type '{sobject}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name."
            ),
            &[],
        ));
    };
    let defs = names
        .iter()
        .map(|n| {
            field_def(fields, n).ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD",
                    format!("No such column '{n}' on entity '{name}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name."),
                    &[],
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((name, defs))
}

#[derive(Deserialize)]
struct Q {
    q: Option<String>,
}

async fn query(
    State(state): State<SharedState>,
    Path(version): Path<String>,
    Query(params): Query<Q>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, &version, |s| {
        let soql = parse_soql(params.q.as_deref().unwrap_or(""))
            .map_err(|m| error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", m, &[]))?;
        let (sobject, defs) = selected(&soql.sobject, &soql.fields)?;
        let mut filters = Vec::new();
        for (field, value) in &soql.any_of {
            let (_, def) = selected(sobject, std::slice::from_ref(field))?;
            filters.push((def[0].name, value));
        }
        // Text comparisons in SOQL ignore case.
        let records: Vec<Value> = s.records[sobject]
            .values()
            .filter(|r| {
                filters.is_empty()
                    || filters.iter().any(|(field, value)| {
                        r.value(field)
                            .as_str()
                            .is_some_and(|v| v.eq_ignore_ascii_case(value))
                    })
            })
            .take(soql.limit.unwrap_or(2000))
            .map(|r| r.json(&version, &defs))
            .collect();
        Ok(
            Json(json!({"totalSize": records.len(), "done": true, "records": records}))
                .into_response(),
        )
    })
}

async fn search(
    State(state): State<SharedState>,
    Path(version): Path<String>,
    Query(params): Query<Q>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, &version, |s| {
        let sosl = parse_sosl(params.q.as_deref().unwrap_or(""))
            .map_err(|m| error(StatusCode::BAD_REQUEST, "MALFORMED_SEARCH", m, &[]))?;
        let digits = |v: &str| v.chars().filter(char::is_ascii_digit).collect::<String>();
        let terms: Vec<String> = sosl.terms.iter().map(|t| digits(t)).collect();
        let mut found = Vec::new();
        for (sobject, names) in &sosl.returning {
            let (sobject, defs) = selected(sobject, names)?;
            let phone_fields: Vec<&str> = schema(sobject)
                .map(|(_, _, fields)| fields)
                .unwrap_or_default()
                .iter()
                .filter(|f| f.name.ends_with("Phone"))
                .map(|f| f.name)
                .collect();
            for record in s.records[sobject].values() {
                let matches = phone_fields.iter().any(|f| {
                    record
                        .get(f)
                        .is_some_and(|p| terms.iter().any(|t| !t.is_empty() && *t == digits(p)))
                });
                if matches {
                    found.push(record.json(&version, &defs));
                }
            }
        }
        found.truncate(sosl.limit.unwrap_or(2000));
        Ok(Json(json!({"searchRecords": found})).into_response())
    })
}

// ---------------------------------------------------------------------------------------------
// sObject rows.

fn parse_body(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "Unexpected character: was expecting a JSON object at [line:1, column:1]",
            &[],
        )),
    }
}

/// Parses ISO 8601 with `Z`, `±HH:MM` or Salesforce's own `+0000`.
pub fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .or_else(|_| DateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// How Salesforce writes date-times: `2025-07-01T14:00:00.000+0000`.
fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

/// Checks each field of a write against the object's schema; returns the values to store.
fn validate_fields(
    state: &SalesforceState,
    sobject: &str,
    fields: &[FieldDef],
    body: &Map<String, Value>,
) -> Result<BTreeMap<String, Value>, ApiError> {
    let mut values = BTreeMap::new();
    for (name, value) in body {
        let Some(def) = field_def(fields, name) else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                format!("No such column '{name}' on sobject of type {sobject}"),
                &[],
            ));
        };
        if !def.writable {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                format!(
                    "Unable to create/update fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                    def.name
                ),
                &[def.name],
            ));
        }
        let wrong_type = |expected: &str| {
            error(
                StatusCode::BAD_REQUEST,
                "JSON_PARSER_ERROR",
                format!(
                    "Cannot deserialize instance of {expected} from {value} for field {}",
                    def.name
                ),
                &[def.name],
            )
        };
        let stored = match (def.kind, value) {
            (_, Value::Null) => Value::Null,
            (Kind::Text(max), Value::String(s)) => {
                if s.chars().count() > max {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "STRING_TOO_LONG",
                        format!(
                            "{}: data value too large: {s} (max length={max})",
                            def.label
                        ),
                        &[def.name],
                    ));
                }
                value.clone()
            }
            (Kind::Email, Value::String(s)) => {
                if crm_sync::domain::Email::parse(s).is_err() {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_EMAIL_ADDRESS",
                        format!("{}: invalid email address: {s}", def.label),
                        &[def.name],
                    ));
                }
                value.clone()
            }
            (Kind::DateTime, Value::String(s)) => match parse_time(s) {
                Some(t) => format_time(t).into(),
                None => return Err(wrong_type("dateTime")),
            },
            (Kind::Int, Value::Number(n)) if n.is_i64() => value.clone(),
            (Kind::Bool, Value::Bool(_)) => value.clone(),
            (Kind::Picklist(allowed), Value::String(s)) => {
                if !allowed.contains(&s.as_str()) {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                        format!(
                            "{}: bad value for restricted picklist field: {s}",
                            def.label
                        ),
                        &[def.name],
                    ));
                }
                value.clone()
            }
            (Kind::Reference(targets), Value::String(id)) => {
                let well_formed = (id.len() == 15 || id.len() == 18)
                    && id.chars().all(|c| c.is_ascii_alphanumeric());
                let target = state.find_any(id);
                if !well_formed {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "MALFORMED_ID",
                        format!("{}: id value of incorrect type: {id}", def.label),
                        &[def.name],
                    ));
                }
                match target {
                    Some(t) if targets.contains(&t.sobject.as_str()) => t.id.clone().into(),
                    Some(_) => {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            "FIELD_INTEGRITY_EXCEPTION",
                            format!("{}: id value of incorrect type: {id}", def.label),
                            &[def.name],
                        ));
                    }
                    None => {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            "ENTITY_IS_DELETED",
                            "entity is deleted",
                            &[def.name],
                        ));
                    }
                }
            }
            (Kind::Text(_) | Kind::Email | Kind::Picklist(_) | Kind::Reference(_), _) => {
                return Err(wrong_type("String"));
            }
            (Kind::DateTime, _) => return Err(wrong_type("dateTime")),
            (Kind::Int, _) => return Err(wrong_type("int")),
            (Kind::Bool, _) => return Err(wrong_type("boolean")),
        };
        values.insert(def.name.to_string(), stored);
    }
    Ok(values)
}

/// StartDateTime with EndDateTime or DurationInMinutes (both only when they agree), at most
/// 14 days; the stored record always carries all three.
fn apply_event_times(
    merged: &mut BTreeMap<String, Value>,
    written: &BTreeMap<String, Value>,
) -> Result<(), ApiError> {
    let time = |name: &str| {
        merged
            .get(name)
            .and_then(Value::as_str)
            .and_then(parse_time)
    };
    let Some(start) = time("StartDateTime").or_else(|| time("ActivityDateTime")) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_FIELD_MISSING",
            "Required fields are missing: [StartDateTime]",
            &["StartDateTime"],
        ));
    };
    let given = |name: &str| written.get(name).is_some_and(|v| !v.is_null());
    let duration = merged.get("DurationInMinutes").and_then(Value::as_i64);
    let end = match (given("EndDateTime"), given("DurationInMinutes")) {
        (true, true) => {
            let end = time("EndDateTime").expect("validated");
            if (end - start).num_minutes() != duration.unwrap_or_default()
                || (end - start).num_seconds() % 60 != 0
            {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "FIELD_INTEGRITY_EXCEPTION",
                    "Duration: the duration doesn't match the start and end date and time",
                    &["DurationInMinutes"],
                ));
            }
            end
        }
        (true, false) => time("EndDateTime").expect("validated"),
        // A new start or duration keeps the other: the event moves or stretches.
        (false, _) => match duration {
            Some(minutes) => start + Duration::minutes(minutes),
            None => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "REQUIRED_FIELD_MISSING",
                    "Required fields are missing: [EndDateTime]",
                    &["EndDateTime"],
                ));
            }
        },
    };
    let minutes = (end - start).num_minutes();
    if end < start {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "FIELD_INTEGRITY_EXCEPTION",
            "End Date Time: the end can't be before the start",
            &["EndDateTime"],
        ));
    }
    if minutes > MAX_EVENT_MINUTES {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "FIELD_INTEGRITY_EXCEPTION",
            "Event duration can't exceed 14 days",
            &["DurationInMinutes"],
        ));
    }
    merged.insert("StartDateTime".into(), format_time(start).into());
    merged.insert("ActivityDateTime".into(), format_time(start).into());
    merged.insert("EndDateTime".into(), format_time(end).into());
    merged.insert("DurationInMinutes".into(), minutes.into());
    Ok(())
}

/// Whether the request asks to save despite an alerting duplicate rule.
fn allow_save(headers: &HeaderMap) -> bool {
    headers
        .get("sforce-duplicate-rule-header")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .any(|part| part.trim().eq_ignore_ascii_case("allowSave=true"))
        })
}

/// The org's rules on a record about to be saved: required fields, unique external ids, Event
/// times, and the standard duplicate rules (here: same email on Contact or Lead).
fn check_record(
    state: &SalesforceState,
    sobject: &str,
    fields: &[FieldDef],
    id: Option<&str>,
    merged: &mut BTreeMap<String, Value>,
    written: &BTreeMap<String, Value>,
    allow_duplicates: bool,
) -> Result<(), ApiError> {
    let present = |name: &str| {
        merged
            .get(name)
            .is_some_and(|v| !v.is_null() && v.as_str() != Some(""))
    };
    let missing: Vec<&str> = fields
        .iter()
        .filter(|f| f.required && !present(f.name))
        .map(|f| f.name)
        .collect();
    if !missing.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_FIELD_MISSING",
            format!("Required fields are missing: [{}]", missing.join(", ")),
            &missing,
        ));
    }
    let others = || {
        state.records[sobject]
            .values()
            .filter(move |r| Some(r.id.as_str()) != id)
    };
    for def in fields.iter().filter(|f| f.external_id) {
        let value = merged.get(def.name).and_then(Value::as_str);
        if let Some(other) = value.and_then(|v| others().find(|r| r.get(def.name) == Some(v))) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "DUPLICATE_VALUE",
                format!(
                    "duplicate value found: {} duplicates value on record with id: {}",
                    def.name, other.id
                ),
                &[def.name],
            ));
        }
    }
    if sobject == "Event" {
        apply_event_times(merged, written)?;
    }
    if ["Contact", "Lead"].contains(&sobject) && !allow_duplicates {
        let email = merged.get("Email").and_then(Value::as_str).unwrap_or("");
        let matches: Vec<&SObject> = others()
            .filter(|r| {
                !email.is_empty()
                    && r.get("Email")
                        .is_some_and(|e| e.eq_ignore_ascii_case(email))
            })
            .collect();
        if !matches.is_empty() {
            let match_records: Vec<Value> = matches
                .iter()
                .map(|r| {
                    json!({"additionalInformation": [], "fieldDiffs": [], "matchConfidence": 100.0,
                    "record": {"attributes": {"type": sobject}, "Id": r.id}})
                })
                .collect();
            let body = json!([{
                "message": "Use one of these records?", "errorCode": "DUPLICATES_DETECTED", "fields": [],
                "duplicateResult": {
                    "allowSave": false, "duplicateRule": format!("Standard_{sobject}_Duplicate_Rule"),
                    "duplicateRuleEntityType": sobject, "errorMessage": "Use one of these records?",
                    "matchResults": [{"entityType": sobject, "errors": [], "matchEngine": "ExactMatchEngine",
                        "matchRecords": match_records, "rule": format!("Standard_{sobject}_Match_Rule_v1_1"),
                        "size": matches.len(), "success": true}]
                }
            }]);
            return Err(ApiError(StatusCode::BAD_REQUEST, body));
        }
    }
    Ok(())
}

/// Validates and stores a new record; the id on success.
fn insert_checked(
    state: &mut SalesforceState,
    sobject: &str,
    body: &Map<String, Value>,
    extra: &[(&str, Value)],
    allow_duplicates: bool,
) -> Result<String, ApiError> {
    let (name, prefix, fields) = schema(sobject).ok_or_else(not_found)?;
    let written = validate_fields(state, name, fields, body)?;
    let mut merged: BTreeMap<String, Value> = written
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in extra {
        merged.insert(k.to_string(), v.clone());
    }
    // Defaulted on create.
    match name {
        "Lead" => {
            merged
                .entry("Status".into())
                .or_insert_with(|| "Open - Not Contacted".into());
            merged.insert("IsConverted".into(), false.into());
        }
        "Event" => {
            merged
                .entry("ShowAs".into())
                .or_insert_with(|| "Busy".into());
            merged
                .entry("IsAllDayEvent".into())
                .or_insert_with(|| false.into());
        }
        _ => {}
    }
    check_record(
        state,
        name,
        fields,
        None,
        &mut merged,
        &written,
        allow_duplicates,
    )?;
    let id = record_id(prefix, &mut state.ids);
    let now = Utc::now();
    state.records.get_mut(name).expect("known").insert(
        id.clone(),
        SObject {
            id: id.clone(),
            sobject: name.into(),
            fields: merged,
            created: now,
            modified: now,
        },
    );
    Ok(id)
}

/// Validates and applies a PATCH to an existing record.
fn update_checked(
    state: &mut SalesforceState,
    sobject: &str,
    id: &str,
    body: &Map<String, Value>,
    allow_duplicates: bool,
) -> Result<(), ApiError> {
    let (name, _, fields) = schema(sobject).ok_or_else(not_found)?;
    let Some(existing) = state.find(name, id).cloned() else {
        if state.deleted.iter().any(|d| d.starts_with(id)) {
            return Err(error(
                StatusCode::NOT_FOUND,
                "ENTITY_IS_DELETED",
                "entity is deleted",
                &[],
            ));
        }
        return Err(not_found());
    };
    let written = validate_fields(state, name, fields, body)?;
    let mut merged = existing.fields.clone();
    for (k, v) in &written {
        match v {
            Value::Null => merged.remove(k),
            v => merged.insert(k.clone(), v.clone()),
        };
    }
    check_record(
        state,
        name,
        fields,
        Some(&existing.id),
        &mut merged,
        &written,
        allow_duplicates,
    )?;
    let record = state
        .records
        .get_mut(name)
        .and_then(|m| m.get_mut(&existing.id))
        .expect("found above");
    record.fields = merged;
    record.modified = Utc::now();
    Ok(())
}

fn created(id: &str, upsert: Option<bool>) -> Value {
    let mut body = json!({"id": id, "success": true, "errors": []});
    if let Some(created) = upsert {
        body["created"] = created.into();
    }
    body
}

async fn create(
    State(state): State<SharedState>,
    Path((version, sobject)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, &version, |s| {
        let body = parse_body(&body)?;
        let id = insert_checked(s, &sobject, &body, &[], allow_save(&headers))?;
        Ok((StatusCode::CREATED, Json(created(&id, None))).into_response())
    })
}

#[derive(Deserialize)]
struct Fields {
    fields: Option<String>,
}

async fn retrieve(
    State(state): State<SharedState>,
    Path((version, sobject, id)): Path<(String, String, String)>,
    Query(params): Query<Fields>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, &version, |s| {
        let (name, _, fields) = schema(&sobject).ok_or_else(not_found)?;
        let record = s.find(name, &id).ok_or_else(not_found)?;
        let names: Vec<String> = match params.fields.as_deref() {
            Some(list) => list.split(',').map(|f| f.trim().to_string()).collect(),
            None => SYSTEM_FIELDS
                .iter()
                .chain(fields)
                .map(|f| f.name.to_string())
                .collect(),
        };
        let (_, defs) = selected(name, &names)?;
        Ok(Json(record.json(&version, &defs)).into_response())
    })
}

async fn update(
    State(state): State<SharedState>,
    Path((version, sobject, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, &version, |s| {
        let body = parse_body(&body)?;
        update_checked(s, &sobject, &id, &body, allow_save(&headers))?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
}

/// `PATCH /sobjects/{Object}/{ExternalIdField}/{value}`: 201 created, 200 updated, 300 when
/// several records hold the value.
async fn upsert(
    State(state): State<SharedState>,
    Path((version, sobject, field, value)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, &version, |s| {
        let (name, _, fields) = schema(&sobject).ok_or_else(not_found)?;
        let def = field_def(fields, &field)
            .filter(|d| d.external_id)
            .ok_or_else(|| {
                error(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    format!(
                        "Provided external ID field does not exist or is not accessible: {field}"
                    ),
                    &[],
                )
            })?;
        let body = parse_body(&body)?;
        if let Some(key) = body
            .keys()
            .find(|k| k.eq_ignore_ascii_case("Id") || k.eq_ignore_ascii_case(def.name))
        {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                format!(
                    "The {key} field should not be specified in the sobject data when upserting by {}.",
                    def.name
                ),
                &[],
            ));
        }
        let matching: Vec<String> = s.records[name]
            .values()
            .filter(|r| r.get(def.name) == Some(value.as_str()))
            .map(|r| r.id.clone())
            .collect();
        let allow = allow_save(&headers);
        Ok(match matching.as_slice() {
            [] => {
                let key = [(def.name, Value::String(value.clone()))];
                let id = insert_checked(s, name, &body, &key, allow)?;
                (StatusCode::CREATED, Json(created(&id, Some(true)))).into_response()
            }
            [id] => {
                update_checked(s, name, id, &body, allow)?;
                Json(created(id, Some(false))).into_response()
            }
            several => {
                let urls: Vec<String> = several
                    .iter()
                    .map(|id| format!("/services/data/{version}/sobjects/{name}/{id}"))
                    .collect();
                (StatusCode::MULTIPLE_CHOICES, Json(json!(urls))).into_response()
            }
        })
    })
}

/// Records one sObject Collections call takes ("The list can contain up to 200 objects").
pub const COLLECTION_LIMIT: usize = 200;

/// The records of an sObject Collections request, each with its type (`attributes.type`), as
/// https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-create.html
/// and …-collections-update.html describe; `allOrNone` true is not emulated.
/// A record of a collection: its sObject type and its fields.
type TypedRecord = (String, Map<String, Value>);

fn collection_records(body: &Bytes) -> Result<Vec<TypedRecord>, ApiError> {
    let body = parse_body(body)?;
    if body.get("allOrNone").and_then(Value::as_bool) == Some(true) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
            "allOrNone true is not emulated",
            &[],
        ));
    }
    let records = body
        .get("records")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                "records is required",
                &[],
            )
        })?;
    if records.len() > COLLECTION_LIMIT {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            format!(
                "record limit reached. cannot submit more than {COLLECTION_LIMIT} records into this call"
            ),
            &[],
        ));
    }
    records
        .iter()
        .map(|record| {
            let mut fields = record.as_object().cloned().unwrap_or_default();
            let sobject = fields
                .remove("attributes")
                .and_then(|a| a.get("type").and_then(Value::as_str).map(str::to_string))
                .ok_or_else(|| {
                    error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_TYPE",
                        "Must send a concrete entity type.",
                        &[],
                    )
                })?;
            Ok((sobject, fields))
        })
        .collect()
}

/// One record's result in a collection's answer: `{id, success, errors}`, the errors as
/// `{statusCode, message, fields}` (not the `errorCode` of single-record errors).
fn collection_result(result: Result<String, ApiError>) -> Value {
    match result {
        Ok(id) => created(&id, None),
        Err(ApiError(_, errors)) => {
            let errors: Vec<Value> = errors
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| json!({"statusCode": e["errorCode"], "message": e["message"], "fields": e["fields"]}))
                .collect();
            json!({"success": false, "errors": errors})
        }
    }
}

/// An sObject Collections call: each record written by `write` (its type, its fields), answered
/// 200 with one result per record in order (a failed record does not fail the others with
/// `allOrNone` false).
fn collection(
    state: &SharedState,
    headers: &HeaderMap,
    version: &str,
    body: &Bytes,
    write: impl Fn(&mut SalesforceState, &str, Map<String, Value>, bool) -> Result<String, ApiError>,
) -> Response {
    authorised(state, headers, version, |s| {
        let records = collection_records(body)?;
        let allow = allow_save(headers);
        let results: Vec<Value> = records
            .into_iter()
            .map(|(sobject, fields)| collection_result(write(s, &sobject, fields, allow)))
            .collect();
        Ok(Json(json!(results)).into_response())
    })
}

/// `POST /composite/sobjects`: creates up to 200 records (no `id` in them).
async fn collection_create(
    State(state): State<SharedState>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    collection(
        &state,
        &headers,
        &version,
        &body,
        |s, sobject, fields, allow| {
            if fields.keys().any(|k| k.eq_ignore_ascii_case("Id")) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD",
                    "cannot specify Id in an insert call",
                    &["Id"],
                ));
            }
            insert_checked(s, sobject, &fields, &[], allow)
        },
    )
}

/// `PATCH /composite/sobjects`: updates up to 200 records by their `id`.
async fn collection_update(
    State(state): State<SharedState>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    collection(
        &state,
        &headers,
        &version,
        &body,
        |s, sobject, mut fields, allow| {
            let id = fields
                .remove("id")
                .or_else(|| fields.remove("Id"))
                .and_then(|id| id.as_str().map(str::to_string))
                .ok_or_else(|| {
                    error(
                        StatusCode::BAD_REQUEST,
                        "MISSING_ARGUMENT",
                        "Id not specified in an update call",
                        &[],
                    )
                })?;
            update_checked(s, sobject, &id, &fields, allow).map(|()| id)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soql_in_lists_are_any_of_their_values() {
        let soql = parse_soql(
            "SELECT Id FROM Contact WHERE Email IN ('a@x.io', 'b@x.io') OR CrmSyncId__c = 's'",
        )
        .unwrap();
        assert_eq!(
            soql.any_of,
            vec![
                ("Email".to_string(), "a@x.io".to_string()),
                ("Email".to_string(), "b@x.io".to_string()),
                ("CrmSyncId__c".to_string(), "s".to_string()),
            ]
        );
        assert!(parse_soql("SELECT Id FROM Contact WHERE Email IN ('a' 'b')").is_err());
    }

    #[test]
    fn soql_literals_are_unescaped_as_salesforce_documents() {
        let soql = parse_soql(
            r"SELECT Id, Email FROM Contact WHERE Email = 'o\'brien\\x\n' OR Phone = '1' LIMIT 10",
        )
        .unwrap();
        assert_eq!(soql.fields, vec!["Id", "Email"]);
        assert_eq!(soql.sobject, "Contact");
        assert_eq!(
            soql.any_of,
            vec![
                ("Email".to_string(), "o'brien\\x\n".to_string()),
                ("Phone".to_string(), "1".to_string())
            ]
        );
        assert_eq!(soql.limit, Some(10));
        assert!(parse_soql(r"SELECT Id FROM Contact WHERE Email = 'a\q'").is_err());
        assert!(parse_soql("SELECT Id FROM Contact WHERE Email = 'x' OR 1=1").is_err());
        assert!(parse_soql("SELECT Id FROM Contact WHERE Email = 'x''").is_err());
    }

    #[test]
    fn sosl_phone_searches_parse() {
        let sosl = parse_sosl(
            "FIND {4155552671 OR 14155552671} IN PHONE FIELDS RETURNING Contact(Id, Phone) LIMIT 10",
        )
        .unwrap();
        assert_eq!(sosl.terms, vec!["4155552671", "14155552671"]);
        assert_eq!(
            sosl.returning,
            vec![(
                "Contact".to_string(),
                vec!["Id".to_string(), "Phone".to_string()]
            )]
        );
        assert!(parse_sosl("FIND {x AND y} IN PHONE FIELDS RETURNING Contact(Id)").is_err());
    }

    #[test]
    fn ids_carry_the_case_checksum() {
        let mut ids = IdSequence::starting_at(0);
        let id = record_id("003", &mut ids);
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("0035g0000000001"));
        // Only the lowercase 'g' is not uppercase: the second chunk's bits are 0.
        assert_eq!(&id[15..], "AAA");
    }
}
