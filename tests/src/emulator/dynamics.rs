//! Microsoft Dynamics 365 (Dataverse Web API v9.2) emulator: Entra ID's client-credentials token
//! endpoint and the Web API tables contacts, leads and appointments (create, retrieve, update,
//! query with `$filter`/`$select`/`$top`, `WhoAmI`), with Dataverse's answers, error bodies and
//! service protection limits.
//!
//! Behaviour follows learn.microsoft.com: the token request and its errors
//! (entra/identity-platform/v2-oauth2-client-creds-grant-flow); create answering 204 with
//! `OData-EntityId` (power-apps/developer/data-platform/webapi/create-entity-web-api); PATCH an
//! upsert unless `If-Match: *` (404 "... With Id = ... Does Not Exist") or `If-None-Match: *`
//! (412) (webapi/update-delete-entities-using-web-api, webapi/perform-conditional-operations-using-web-api);
//! `$filter` with `eq`, `ne`, `and`, `or`, `not`, `contains`, `startswith`, `endswith`,
//! case-insensitive, quotes doubled, `$skip` unsupported (webapi/query/filter-rows,
//! webapi/query/page-results); the `{"error":{"code","message"}}` body
//! (webapi/compose-http-requests-handle-errors); appointments keyed by `activityid`,
//! `statecode` not valid for create and its state/status pairs, completed and canceled ones
//! read-only, `regardingobjectid_contact_appointment` and `appointment_activity_parties` with
//! `participationtypemask` 5/6/7 (reference/entities/appointment, reference/entities/activityparty);
//! 429 with `Retry-After` and `0x80072322` past 6000 requests in 300 seconds
//! (data-platform/api-limits); alternate keys in URLs (`contacts(emailaddress1='...')`),
//! refused where the table has no such key, and PATCH by one an upsert
//! (data-platform/use-alternate-key-reference-record, data-platform/use-upsert-insert-update-record);
//! `$batch` of `application/http` parts answered in order, stopping at the first failure unless
//! `Prefer: odata.continue-on-error`, at most 1000 requests (webapi/execute-batch-operations-using-web-api).
//! Two details are this emulator's reading, not quoted text: the
//! refusal of an unknown column (`0x80060888`, the code Dataverse gives for a query it cannot
//! parse) and the wording of the refusal to change a closed appointment.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::oauth::{OAuthTokens, TokenCheck};
use super::{RequestBudget, RunningEmulator, serve};

pub const TABLES: [&str; 3] = ["contacts", "leads", "appointments"];
pub const ORGANIZATION_ID: &str = "7b3b1f0e-4c1a-4d3e-9a77-1c2d3e4f5a60";
const USER_ID: &str = "2f9d8c7b-6a5e-4d3c-8b2a-1f0e9d8c7b6a";
const BUSINESS_UNIT_ID: &str = "a1b2c3d4-e5f6-4a5b-8c7d-9e0f1a2b3c4d";
/// The custom text column the admin added for crm-sync's stamp, and one more contact column
/// for field-mapping tests.
pub const STAMP_COLUMN: &str = "new_crmsyncid";
pub const CUSTOM_CONTACT_COLUMN: &str = "new_bookingcity";
/// Service protection: concurrent requests per user.
pub const CONCURRENT_LIMIT: usize = 52;
/// Requests one `$batch` may hold.
pub const BATCH_LIMIT: usize = 1000;
/// Marks a request the emulator runs from inside a `$batch` (never sent by a client).
const BATCH_PART: &str = "x-emulator-batch-part";
/// Service protection: requests per user in a five-minute window.
pub const REQUEST_LIMIT: u32 = 6000;

const PERSON_COLUMNS: &[&str] = &[
    "firstname",
    "lastname",
    "fullname",
    "emailaddress1",
    "emailaddress2",
    "telephone1",
    "telephone2",
    "mobilephone",
    "address1_line1",
    "address1_city",
    "address1_stateorprovince",
    "address1_postalcode",
    "address1_country",
    "description",
    "statecode",
    "statuscode",
    "createdon",
    "modifiedon",
    STAMP_COLUMN,
];

/// Columns of each table (besides its key) this emulator knows.
fn columns(table: &str) -> Vec<&'static str> {
    match table {
        "contacts" => {
            let mut c = PERSON_COLUMNS.to_vec();
            c.extend(["contactid", "jobtitle", CUSTOM_CONTACT_COLUMN]);
            c
        }
        "leads" => {
            let mut c = PERSON_COLUMNS.to_vec();
            c.extend(["leadid", "subject", "companyname", "leadsourcecode"]);
            c
        }
        _ => vec![
            "activityid",
            "subject",
            "description",
            "location",
            "scheduledstart",
            "scheduledend",
            "scheduleddurationminutes",
            "isalldayevent",
            "statecode",
            "statuscode",
            "_regardingobjectid_value",
            "createdon",
            "modifiedon",
            STAMP_COLUMN,
        ],
    }
}

pub fn key_column(table: &str) -> &'static str {
    match table {
        "contacts" => "contactid",
        "leads" => "leadid",
        _ => "activityid",
    }
}

fn logical_name(table: &str) -> &'static str {
    match table {
        "contacts" => "contact",
        "leads" => "lead",
        _ => "appointment",
    }
}

pub type Row = Map<String, Value>;

pub struct DynamicsState {
    pub tokens: OAuthTokens,
    /// The environment URL the emulator answers as (its own base URL).
    pub environment: String,
    /// table -> id -> row
    pub tables: BTreeMap<String, BTreeMap<String, Row>>,
    /// The activity parties of each appointment: (contact id, participation type).
    pub parties: BTreeMap<String, Vec<(String, u64)>>,
    version: u64,
    pub budget: RequestBudget,
    /// The alternate keys an admin defined: table -> key column (single-column keys).
    pub alternate_keys: BTreeMap<String, String>,
    /// How many requests each `$batch` held, in order.
    pub batches: Vec<usize>,
    /// The other two service protection limits: concurrent requests and combined execution time.
    pub protection: ServiceProtection,
}

/// Dataverse's per-user concurrency and execution-time limits (data-platform/api-limits): at
/// most `concurrent_limit` requests at once (refused at once, `0x80072326`), and at most
/// `execution_limit` of combined execution time in the sliding `execution_window`
/// (`0x80072321`). `work` is how long each Web API request takes here, so that tests can make
/// requests overlap and spend execution time.
#[derive(Debug)]
pub struct ServiceProtection {
    pub concurrent_limit: usize,
    pub execution_limit: std::time::Duration,
    pub execution_window: std::time::Duration,
    pub work: std::time::Duration,
    in_flight: usize,
    executed: std::collections::VecDeque<(std::time::Instant, std::time::Duration)>,
}

impl Default for ServiceProtection {
    fn default() -> Self {
        ServiceProtection {
            concurrent_limit: CONCURRENT_LIMIT,
            execution_limit: std::time::Duration::from_secs(20 * 60),
            execution_window: std::time::Duration::from_secs(300),
            work: std::time::Duration::ZERO,
            in_flight: 0,
            executed: Default::default(),
        }
    }
}

impl ServiceProtection {
    /// Admits a request, or the refusal: its code, message and `Retry-After` seconds.
    fn admit(&mut self) -> Result<(), (&'static str, String, u64)> {
        let now = std::time::Instant::now();
        while self
            .executed
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= self.execution_window)
        {
            self.executed.pop_front();
        }
        let spent: std::time::Duration = self.executed.iter().map(|(_, d)| *d).sum();
        if spent >= self.execution_limit {
            let oldest = self.executed.front().map(|(at, _)| *at).unwrap_or(now);
            let free_in = self
                .execution_window
                .saturating_sub(now.duration_since(oldest));
            return Err((
                "0x80072321",
                format!(
                    "Combined execution time of incoming requests exceeded limit of {} milliseconds over time window of {} seconds.",
                    self.execution_limit.as_millis(),
                    self.execution_window.as_secs()
                ),
                free_in.as_secs().max(1),
            ));
        }
        if self.in_flight >= self.concurrent_limit {
            return Err((
                "0x80072326",
                format!(
                    "Number of concurrent requests exceeded the limit of {}.",
                    self.concurrent_limit
                ),
                1,
            ));
        }
        self.in_flight += 1;
        Ok(())
    }

    fn done(&mut self, took: std::time::Duration) {
        self.in_flight -= 1;
        self.executed.push_back((std::time::Instant::now(), took));
    }
}

impl DynamicsState {
    pub fn new(tokens: OAuthTokens) -> Self {
        DynamicsState {
            tokens,
            environment: String::new(),
            tables: TABLES
                .iter()
                .map(|t| (t.to_string(), BTreeMap::new()))
                .collect(),
            parties: BTreeMap::new(),
            version: 1_000_000,
            budget: RequestBudget::new(REQUEST_LIMIT, chrono::Duration::minutes(5)),
            alternate_keys: BTreeMap::new(),
            batches: Vec::new(),
            protection: ServiceProtection::default(),
        }
    }

    pub fn snapshot(&self) -> Value {
        json!({"tables": self.tables, "parties": self.parties, "version": self.version})
    }

    pub fn restore(&mut self, snapshot: &Value) -> Result<(), serde_json::Error> {
        self.tables = serde_json::from_value(snapshot["tables"].clone())?;
        for table in TABLES {
            self.tables.entry(table.into()).or_default();
        }
        self.parties = serde_json::from_value(snapshot["parties"].clone()).unwrap_or_default();
        self.version = snapshot["version"].as_u64().unwrap_or(self.version);
        Ok(())
    }

    pub fn all(&self, table: &str) -> Vec<Row> {
        self.tables
            .get(table)
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds a row as a person using Dynamics would (no validation), returning its id.
    pub fn insert(&mut self, table: &str, values: &[(&str, &str)]) -> String {
        let row: Row = values
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        self.store(table, None, row)
    }

    fn store(&mut self, table: &str, id: Option<String>, mut row: Row) -> String {
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let now = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        row.insert(key_column(table).into(), id.clone().into());
        row.insert("createdon".into(), now.clone().into());
        row.entry("statecode").or_insert(json!(0));
        let status = if table == "appointments" { 5 } else { 1 };
        if table == "appointments" {
            // A booked appointment: Scheduled/Busy.
            row.insert("statecode".into(), json!(3));
        }
        row.entry("statuscode").or_insert(json!(status));
        self.touch(table, &mut row, now);
        self.tables
            .entry(table.into())
            .or_default()
            .insert(id.clone(), row);
        id
    }

    fn touch(&mut self, table: &str, row: &mut Row, now: String) {
        self.version += 1;
        row.insert("modifiedon".into(), now.into());
        row.insert(
            "@odata.etag".into(),
            format!("W/\"{}\"", self.version).into(),
        );
        if table != "appointments" {
            let name = ["firstname", "lastname"]
                .iter()
                .filter_map(|c| row.get(*c).and_then(Value::as_str))
                .filter(|v| !v.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            row.insert("fullname".into(), name.into());
        }
    }
}

pub type SharedState = Arc<Mutex<DynamicsState>>;

pub struct DynamicsEmulator {
    pub state: SharedState,
    pub server: RunningEmulator,
}

impl DynamicsEmulator {
    pub async fn start(tokens: OAuthTokens) -> std::io::Result<Self> {
        Self::start_on(tokens, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(tokens: OAuthTokens, addr: SocketAddr) -> std::io::Result<Self> {
        let state: SharedState = Arc::new(Mutex::new(DynamicsState::new(tokens)));
        let server = serve(routes(state.clone()), error_body, addr).await?;
        state.lock().unwrap().environment = server.base_url.clone();
        Ok(DynamicsEmulator { state, server })
    }

    pub fn base_url(&self) -> &str {
        &self.server.base_url
    }
}

/// Dataverse's error body for a status (used by fault injection too).
pub fn error_body(status: StatusCode) -> Value {
    let (code, message) = match status.as_u16() {
        429 => (
            "0x80072322",
            "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
        ),
        401 => ("0x8004a101", "The user authentication failed!"),
        404 => ("0x80060888", "Resource not found for the segment."),
        400 => ("0x80040203", "Invalid argument."),
        503 => ("", "Service Unavailable"),
        _ => ("0x80040216", "An unexpected error occurred."),
    };
    json!({"error": {"code": code, "message": message}})
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

fn unknown_column(table: &str, column: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "0x80060888",
        format!(
            "Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.{}'.",
            logical_name(table)
        ),
    )
}

fn does_not_exist(table: &str, id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "0x80040217",
        format!("{} With Id = {id} Does Not Exist", logical_name(table)),
    )
}

/// Checks the bearer token and the service protection limit before `f` answers.
fn authorised(
    state: &SharedState,
    headers: &HeaderMap,
    f: impl FnOnce(&mut DynamicsState) -> Response,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut state = state.lock().unwrap();
    if token.map(|t| state.tokens.check(t.trim())) != Some(TokenCheck::Valid) {
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        response.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static(
                "Bearer authorization_uri=https://login.microsoftonline.com/common/oauth2/authorize",
            ),
        );
        return response;
    }
    // A request inside a `$batch` was counted with its batch.
    if !headers.contains_key(BATCH_PART)
        && let Err(retry_after) = state.budget.take()
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
    let mut response = f(&mut state);
    response
        .headers_mut()
        .insert("odata-version", HeaderValue::from_static("4.0"));
    response
}

pub fn routes(state: SharedState) -> Router {
    Router::new()
        .route("/api/data/v9.2/WhoAmI", get(who_am_i))
        .route("/api/data/v9.2/$batch", post(batch))
        .route(
            "/api/data/v9.2/{resource}",
            get(retrieve).post(create).patch(update),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            service_protection,
        ))
        // Entra ID's token endpoint is not Dataverse's: outside its limits.
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "0x80060888",
                "Resource not found for the segment.",
            )
        })
        .with_state(state)
}

/// The concurrency and execution-time limits around every Web API request (not the token
/// endpoint of Entra ID): refused at once with 429, `Retry-After` and the limit's code.
async fn service_protection(
    State(state): State<SharedState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let admitted = {
        let mut s = state.lock().unwrap();
        s.protection.admit().map(|_| s.protection.work)
    };
    let work = match admitted {
        Ok(work) => work,
        Err((code, message, retry_after)) => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, code, message);
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(retry_after));
            return response;
        }
    };
    let started = std::time::Instant::now();
    tokio::time::sleep(work).await;
    let response = next.run(request).await;
    state.lock().unwrap().protection.done(started.elapsed());
    response
}

/// `POST login.microsoftonline.com/{tenant}/oauth2/v2.0/token`, client credentials in the form;
/// the scope must be this environment's `/.default`.
async fn token(
    State(state): State<SharedState>,
    Path(_tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut state = state.lock().unwrap();
    let expected_scope = format!("{}/.default", state.environment);
    match state
        .tokens
        .client_credentials(&form, |scope| scope == expected_scope)
    {
        Ok(issued) => Json(json!({
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "access_token": issued.access_token,
        }))
        .into_response(),
        Err(e) => {
            let code = match e.error {
                "invalid_client" => "AADSTS7000215: Invalid client secret provided.",
                "invalid_scope" => {
                    "AADSTS70011: The provided value for the input parameter 'scope' is not valid."
                }
                _ => "AADSTS70003: The app requested an unsupported grant type.",
            };
            (
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                Json(json!({"error": e.error, "error_description": code, "error_codes": [7000215],
                    "timestamp": Utc::now().to_rfc3339(), "trace_id": uuid::Uuid::new_v4().to_string(),
                    "correlation_id": uuid::Uuid::new_v4().to_string()})),
            )
                .into_response()
        }
    }
}

async fn who_am_i(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    authorised(&state, &headers, |s| {
        Json(json!({
            "@odata.context": format!("{}/api/data/v9.2/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", s.environment),
            "BusinessUnitId": BUSINESS_UNIT_ID, "UserId": USER_ID, "OrganizationId": ORGANIZATION_ID,
        }))
        .into_response()
    })
}

/// The row a key names, if one exists, and the alternate key's column and value if it was one.
type Resolved = (Option<String>, Option<(String, String)>);

/// How a URL names one row: its id, or an alternate key's column and value.
enum RowKey {
    Id(String),
    Alternate { column: String, value: String },
}

fn invalid_key(table: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "0x80060888",
        format!(
            "The key in the request URI is not valid for resource 'Microsoft.Dynamics.CRM.{}'. Ensure that the names and number of key properties match the declared or alternate key properties for the resource.",
            logical_name(table)
        ),
    )
}

/// `contacts`, `contacts(<guid>)` or `contacts(<column>='<value>')`.
fn parse_resource(resource: &str) -> Result<(String, Option<RowKey>), Response> {
    let (table, key) = match resource.split_once('(') {
        Some((table, rest)) => (table, Some(rest.strip_suffix(')').unwrap_or(rest))),
        None => (resource, None),
    };
    if !TABLES.contains(&table) {
        return Err(error(
            StatusCode::NOT_FOUND,
            "0x80060888",
            format!("Resource not found for the segment '{table}'."),
        ));
    }
    let key = match key {
        None => None,
        // `column='value'`: an alternate key, the quotes inside doubled.
        Some(key) if key.contains('=') => {
            let (column, value) = key.split_once('=').expect("has =");
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .ok_or_else(|| invalid_key(table))?;
            Some(RowKey::Alternate {
                column: column.trim().to_string(),
                value: value.replace("''", "'"),
            })
        }
        Some(id) => {
            let id = id.trim_matches('\'');
            if uuid::Uuid::parse_str(id).is_err() {
                return Err(invalid_key(table));
            }
            Some(RowKey::Id(id.to_string()))
        }
    };
    Ok((table.to_string(), key))
}

impl DynamicsState {
    /// The id a key names: an id as it is, an alternate key resolved to its row (`Ok(None)`
    /// when no row holds it). A column that is no alternate key of the table is refused.
    fn resolve(&self, table: &str, key: RowKey) -> Result<Resolved, Response> {
        match key {
            RowKey::Id(id) => Ok((Some(id), None)),
            RowKey::Alternate { column, value } => {
                if self.alternate_keys.get(table) != Some(&column) {
                    return Err(invalid_key(table));
                }
                let found = self.row_with_key(table, &column, &value);
                Ok((found, Some((column, value))))
            }
        }
    }

    /// The row whose key column holds `value` (compared as Dataverse's default collation does,
    /// ignoring case).
    fn row_with_key(&self, table: &str, column: &str, value: &str) -> Option<String> {
        self.tables[table].iter().find_map(|(id, row)| {
            row.get(column)
                .and_then(Value::as_str)
                .filter(|v| v.eq_ignore_ascii_case(value))
                .map(|_| id.clone())
        })
    }
}

fn row_json(table: &str, row: &Row, select: Option<&[String]>) -> Value {
    let mut out = Map::new();
    out.insert(
        "@odata.etag".into(),
        row.get("@odata.etag").cloned().unwrap_or(Value::Null),
    );
    let key = key_column(table);
    for column in columns(table) {
        let wanted = select.is_none_or(|s| s.iter().any(|c| c == column)) || column == key;
        if wanted {
            out.insert(
                column.into(),
                row.get(column).cloned().unwrap_or(Value::Null),
            );
        }
    }
    Value::Object(out)
}

fn parse_select(
    table: &str,
    query: &HashMap<String, String>,
) -> Result<Option<Vec<String>>, Response> {
    let Some(select) = query.get("$select") else {
        return Ok(None);
    };
    let known = columns(table);
    let names: Vec<String> = select.split(',').map(|c| c.trim().to_string()).collect();
    if let Some(bad) = names.iter().find(|c| !known.contains(&c.as_str())) {
        return Err(unknown_column(table, bad));
    }
    Ok(Some(names))
}

async fn retrieve(
    State(state): State<SharedState>,
    Path(resource): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, |s| {
        let (table, key) = match parse_resource(&resource) {
            Ok(parsed) => parsed,
            Err(r) => return r,
        };
        let select = match parse_select(&table, &query) {
            Ok(select) => select,
            Err(r) => return r,
        };
        if let Some(key) = key {
            let id = match s.resolve(&table, key) {
                Ok((Some(id), _)) => id,
                Ok((None, _)) => return no_row_with_key(&table),
                Err(r) => return r,
            };
            return match s.tables[&table].get(&id) {
                Some(row) => {
                    let mut body = row_json(&table, row, select.as_deref());
                    body["@odata.context"] = json!(format!(
                        "{}/api/data/v9.2/$metadata#{table}/$entity",
                        s.environment
                    ));
                    Json(body).into_response()
                }
                None => does_not_exist(&table, &id),
            };
        }
        if query.contains_key("$skip") {
            return error(
                StatusCode::BAD_REQUEST,
                "0x80060888",
                "The query parameter $skip is not supported",
            );
        }
        let filter = match query.get("$filter").map(|f| parse_filter(f)) {
            Some(Ok(filter)) => Some(filter),
            Some(Err(message)) => {
                return error(StatusCode::BAD_REQUEST, "0x80060888", message);
            }
            None => None,
        };
        if let Some(filter) = &filter
            && let Some(bad) = filter
                .columns()
                .into_iter()
                .find(|c| !columns(&table).contains(&c.as_str()))
        {
            return unknown_column(&table, &bad);
        }
        let top = query
            .get("$top")
            .and_then(|t| t.parse::<usize>().ok())
            .unwrap_or(5000)
            .min(5000);
        let rows: Vec<Value> = s.tables[&table]
            .values()
            .filter(|row| filter.as_ref().is_none_or(|f| f.matches(row)))
            .take(top)
            .map(|row| row_json(&table, row, select.as_deref()))
            .collect();
        Json(json!({
            "@odata.context": format!("{}/api/data/v9.2/$metadata#{table}", s.environment),
            "value": rows,
        }))
        .into_response()
    })
}

/// The row a body describes: its columns, and its navigation bindings resolved.
struct Written {
    row: Row,
    parties: Option<Vec<(String, u64)>>,
}

fn bound_contact(s: &DynamicsState, value: &Value) -> Result<String, Response> {
    let target = value.as_str().unwrap_or("");
    let id = target
        .trim_start_matches('/')
        .strip_prefix("contacts(")
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "0x80060888",
                format!("The binding '{target}' does not name a contact."),
            )
        })?;
    if !s.tables["contacts"].contains_key(id) {
        return Err(does_not_exist("contacts", id));
    }
    Ok(id.to_string())
}

fn written(
    s: &DynamicsState,
    table: &str,
    body: &Bytes,
    creating: bool,
) -> Result<Written, Response> {
    let body: Value = serde_json::from_slice(body).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "0x80040203",
            "The request body is not valid JSON.",
        )
    })?;
    let Some(object) = body.as_object() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "0x80040203",
            "The request body must be a JSON object.",
        ));
    };
    let known = columns(table);
    let mut row = Row::new();
    let mut parties = None;
    for (name, value) in object {
        match name.as_str() {
            "regardingobjectid_contact_appointment@odata.bind" if table == "appointments" => {
                row.insert(
                    "_regardingobjectid_value".into(),
                    bound_contact(s, value)?.into(),
                );
            }
            "appointment_activity_parties" if table == "appointments" => {
                let mut list = Vec::new();
                for party in value.as_array().into_iter().flatten() {
                    let mask = party["participationtypemask"].as_u64().unwrap_or(0);
                    if ![5, 6, 7].contains(&mask) {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            "0x80040203",
                            format!(
                                "participationtypemask {mask} is not valid for an appointment."
                            ),
                        ));
                    }
                    let contact = bound_contact(s, &party["partyid_contact@odata.bind"])?;
                    list.push((contact, mask));
                }
                parties = Some(list);
            }
            "statecode" | "statuscode" if creating && table == "appointments" => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "0x80040203",
                    format!("{name} is not valid for create on appointment."),
                ));
            }
            "scheduledstart" | "scheduledend" => {
                let parsed = value
                    .as_str()
                    .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                    .ok_or_else(|| {
                        error(
                            StatusCode::BAD_REQUEST,
                            "0x80040203",
                            format!("Cannot convert the literal '{value}' to the expected type 'Edm.DateTimeOffset'."),
                        )
                    })?;
                // UserLocal columns are stored in UTC.
                let utc = parsed.with_timezone(&Utc).format("%Y-%m-%dT%H:%M:%SZ");
                row.insert(name.clone(), utc.to_string().into());
            }
            column if known.contains(&column) && column != key_column(table) => {
                row.insert(name.clone(), value.clone());
            }
            other => return Err(unknown_column(table, other)),
        }
    }
    Ok(Written { row, parties })
}

/// Valid appointment `statecode` -> `statuscode` values.
fn valid_appointment_state(state: u64, status: u64) -> bool {
    matches!((state, status), (0, 1 | 2) | (1, 3) | (2, 4) | (3, 5 | 6))
}

async fn create(
    State(state): State<SharedState>,
    Path(resource): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, |s| {
        let (table, key) = match parse_resource(&resource) {
            Ok(parsed) => parsed,
            Err(r) => return r,
        };
        if key.is_some() {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "0x80060888",
                "POST is not supported on a single row.",
            );
        }
        let Written { row, parties } = match written(s, &table, &body, true) {
            Ok(w) => w,
            Err(r) => return r,
        };
        if let Some(taken) = s.key_taken(&table, &row, None) {
            return taken;
        }
        let id = s.store(&table, None, row);
        if let Some(parties) = parties {
            s.parties.insert(id.clone(), parties);
        }
        saved(s, &table, &id, true, &headers, None)
    })
}

/// A GET by an alternate key no row holds.
fn no_row_with_key(table: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "0x80040217",
        format!(
            "A record with the specified key values does not exist in {} entity",
            logical_name(table)
        ),
    )
}

impl DynamicsState {
    /// A write that would give a second row the value of the table's alternate key: 412, as
    /// Dataverse refuses a duplicate entity key (`0x80060892`; this code and wording are the
    /// emulator's reading of third-party reports, not quoted from the docs).
    fn key_taken(&self, table: &str, row: &Row, own_id: Option<&str>) -> Option<Response> {
        let column = self.alternate_keys.get(table)?;
        let value = row.get(column)?.as_str()?;
        let holder = self.row_with_key(table, column, value)?;
        (own_id != Some(holder.as_str())).then(|| {
            error(
                StatusCode::PRECONDITION_FAILED,
                "0x80060892",
                format!(
                    "A record that has the attribute values {column} already exists. The entity key requires that this set of attributes contains unique values."
                ),
            )
        })
    }
}

/// The answer to a create or an update: 204 with the row's URL in `OData-EntityId`, or with
/// `Prefer: return=representation` the row (201 when created, 200 when updated), `$select`ed.
fn saved(
    s: &DynamicsState,
    table: &str,
    id: &str,
    created: bool,
    headers: &HeaderMap,
    select: Option<&[String]>,
) -> Response {
    let representation = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.contains("return=representation"));
    if representation {
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return (status, Json(row_json(table, &s.tables[table][id], select))).into_response();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let url = format!("{}/api/data/v9.2/{table}({id})", s.environment);
    response.headers_mut().insert(
        "odata-entityid",
        HeaderValue::from_str(&url).expect("a URL"),
    );
    response
}

async fn update(
    State(state): State<SharedState>,
    Path(resource): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authorised(&state, &headers, |s| {
        let (table, Some(key)) = (match parse_resource(&resource) {
            Ok(parsed) => parsed,
            Err(r) => return r,
        }) else {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "0x80060888",
                "PATCH needs a row's key.",
            );
        };
        let select = match parse_select(&table, &query) {
            Ok(select) => select,
            Err(r) => return r,
        };
        let (id, alternate) = match s.resolve(&table, key) {
            Ok((id, alternate)) => (
                id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                alternate,
            ),
            Err(r) => return r,
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let exists = s.tables[&table].contains_key(&id);
        match (header("if-match"), header("if-none-match"), exists) {
            (Some("*"), _, false) => return does_not_exist(&table, &id),
            (_, Some("*"), true) => {
                return error(
                    StatusCode::PRECONDITION_FAILED,
                    "",
                    "A record with matching key values already exists.",
                );
            }
            (Some(etag), _, true) if etag != "*" => {
                let current = s.tables[&table][&id]
                    .get("@odata.etag")
                    .and_then(Value::as_str);
                if current != Some(etag) {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        "0x80060882",
                        "The version of the existing record doesn't match the RowVersion property provided.",
                    );
                }
            }
            _ => {}
        }
        let Written { mut row, parties } = match written(s, &table, &body, !exists) {
            Ok(w) => w,
            Err(r) => return r,
        };
        // The key columns come from the URL: stripped from the body of an update, copied into
        // the row an upsert creates.
        if let Some((column, value)) = alternate {
            row.remove(&column);
            if !exists {
                row.insert(column, value.into());
            }
        }
        if let Some(taken) = s.key_taken(&table, &row, Some(&id)) {
            return taken;
        }
        if !exists {
            // A PATCH without conditions is an upsert: the row is created under the given key.
            let id = s.store(&table, Some(id), row);
            if let Some(parties) = parties {
                s.parties.insert(id.clone(), parties);
            }
            return saved(s, &table, &id, true, &headers, select.as_deref());
        }
        let current = s.tables[&table][&id].clone();
        if table == "appointments" {
            let state_now = current["statecode"].as_u64().unwrap_or(0);
            let changes_state = row.contains_key("statecode");
            let other_changes =
                row.keys().any(|k| k != "statecode" && k != "statuscode") || parties.is_some();
            if matches!(state_now, 1 | 2) && other_changes {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80040203",
                    "This appointment is closed or canceled and cannot be modified; set its state to open or scheduled first.",
                );
            }
            if changes_state {
                let state_code = row["statecode"].as_u64().unwrap_or(u64::MAX);
                let status =
                    row.get("statuscode")
                        .and_then(Value::as_u64)
                        .unwrap_or(match state_code {
                            0 => 1,
                            1 => 3,
                            2 => 4,
                            _ => 5,
                        });
                if !valid_appointment_state(state_code, status) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "0x80040203",
                        format!(
                            "{status} is not a valid status code for state code {state_code} on appointment."
                        ),
                    );
                }
            }
        }
        let mut merged = current;
        merged.extend(row);
        s.touch(
            &table,
            &mut merged,
            Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
        if let Some(parties) = parties {
            s.parties.insert(id.clone(), parties);
        }
        s.tables
            .get_mut(&table)
            .expect("known")
            .insert(id.clone(), merged);
        saved(s, &table, &id, false, &headers, select.as_deref())
    })
}

/// A parsed `$filter`.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Compare {
        column: String,
        negated: bool,
        value: Value,
    },
    Function {
        name: String,
        column: String,
        value: String,
    },
}

impl Filter {
    fn columns(&self) -> Vec<String> {
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => {
                let mut c = a.columns();
                c.extend(b.columns());
                c
            }
            Filter::Not(f) => f.columns(),
            Filter::Compare { column, .. } | Filter::Function { column, .. } => {
                vec![column.clone()]
            }
        }
    }

    /// String comparisons are case-insensitive, as Dataverse's are.
    fn matches(&self, row: &Row) -> bool {
        let text = |column: &str| match row.get(column) {
            Some(Value::String(s)) => Some(s.to_lowercase()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        };
        match self {
            Filter::And(a, b) => a.matches(row) && b.matches(row),
            Filter::Or(a, b) => a.matches(row) || b.matches(row),
            Filter::Not(f) => !f.matches(row),
            Filter::Compare {
                column,
                negated,
                value,
            } => {
                let actual = text(column);
                let wanted = match value {
                    Value::String(s) => Some(s.to_lowercase()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                };
                (actual == wanted) != *negated
            }
            Filter::Function {
                name,
                column,
                value,
            } => {
                let Some(actual) = text(column) else {
                    return false;
                };
                let value = value.to_lowercase();
                match name.as_str() {
                    "contains" => actual.contains(&value),
                    "startswith" => actual.starts_with(&value),
                    _ => actual.ends_with(&value),
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Open,
    Close,
    Comma,
}

fn tokens(input: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            ',' => {
                out.push(Token::Comma);
                i += 1;
            }
            '\'' => {
                let mut text = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("Unterminated string literal in $filter".into()),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            text.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            text.push(*c);
                            i += 1;
                        }
                    }
                }
                out.push(Token::Text(text));
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(chars[i], '(' | ')' | ',' | '\'')
                {
                    i += 1;
                }
                out.push(Token::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

/// Parses the `$filter` subset: comparisons with `eq`/`ne`, the string functions, `not`,
/// `and` binding tighter than `or`, and parentheses.
pub fn parse_filter(input: &str) -> Result<Filter, String> {
    let tokens = tokens(input)?;
    let mut parser = FilterParser { tokens, at: 0 };
    let filter = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(format!(
            "Syntax error at position {} in '{input}'.",
            parser.at
        ));
    }
    Ok(filter)
}

struct FilterParser {
    tokens: Vec<Token>,
    at: usize,
}

impl FilterParser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn expect(&mut self, wanted: Token) -> Result<(), String> {
        match self.next() {
            Some(t) if t == wanted => Ok(()),
            other => Err(format!("Expected {wanted:?} in $filter, found {other:?}.")),
        }
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.at += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.at += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.peek_word("not") {
            self.at += 1;
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        match self.next() {
            Some(Token::Open) => {
                let inner = self.or()?;
                self.expect(Token::Close)?;
                Ok(inner)
            }
            Some(Token::Word(word)) if self.tokens.get(self.at) == Some(&Token::Open) => {
                let name = word.to_ascii_lowercase();
                if !["contains", "startswith", "endswith"].contains(&name.as_str()) {
                    return Err(format!("An unknown function with name '{word}' was found."));
                }
                self.at += 1;
                let Some(Token::Word(column)) = self.next() else {
                    return Err(format!("{word} needs a column."));
                };
                self.expect(Token::Comma)?;
                let Some(Token::Text(value)) = self.next() else {
                    return Err(format!("{word} needs a string literal."));
                };
                self.expect(Token::Close)?;
                Ok(Filter::Function {
                    name,
                    column,
                    value,
                })
            }
            Some(Token::Word(column)) => {
                let negated = match self.next() {
                    Some(Token::Word(op)) if op.eq_ignore_ascii_case("eq") => false,
                    Some(Token::Word(op)) if op.eq_ignore_ascii_case("ne") => true,
                    other => return Err(format!("Unsupported operator {other:?} in $filter.")),
                };
                let value = match self.next() {
                    Some(Token::Text(text)) => Value::String(text),
                    Some(Token::Word(w)) if w == "null" => Value::Null,
                    Some(Token::Word(w)) => w
                        .parse::<i64>()
                        .map(Value::from)
                        .map_err(|_| format!("Cannot read the literal '{w}' in $filter."))?,
                    other => {
                        return Err(format!("Expected a literal in $filter, found {other:?}."));
                    }
                };
                Ok(Filter::Compare {
                    column,
                    negated,
                    value,
                })
            }
            other => Err(format!("Syntax error in $filter at {other:?}.")),
        }
    }
}

/// `POST /api/data/v9.2/$batch` (webapi/execute-batch-operations-using-web-api): a
/// `multipart/mixed` body of `application/http` parts, each a whole request, run in order and
/// answered in order as `--batchresponse_<id>` parts with full status lines. At most 1000
/// requests; change sets are not emulated (400). Without `Prefer: odata.continue-on-error` the
/// first failing request ends the batch, which answers with its status and that one part; with
/// it, every request runs and the batch answers 200. The batch counts as one request against
/// the service protection limit.
async fn batch(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    let checked = authorised(&state, &headers, |_| StatusCode::OK.into_response());
    if checked.status() != StatusCode::OK {
        return checked;
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(boundary) = multipart_boundary(content_type) else {
        return error(
            StatusCode::BAD_REQUEST,
            "0x80048d19",
            "The content type of a $batch request must be multipart/mixed with a boundary.",
        );
    };
    let text = String::from_utf8_lossy(&body).to_string();
    let parts = match split_multipart(&text, &boundary) {
        Some(parts) => parts,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "0x80048d19",
                "The $batch body does not end with its closing boundary.",
            );
        }
    };
    if parts.len() > BATCH_LIMIT {
        return error(
            StatusCode::BAD_REQUEST,
            "0x80048d19",
            format!("The number of requests in a batch exceeds the limit of {BATCH_LIMIT}."),
        );
    }
    let continue_on_error = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.contains("odata.continue-on-error"));
    state.lock().unwrap().batches.push(parts.len());
    let mut answers = Vec::new();
    for part in parts {
        let answer = match inner_request(&part) {
            Ok(inner) => run_part(&state, &headers, inner).await,
            Err(refusal) => refusal,
        };
        if !answer.status().is_success() && !continue_on_error {
            return multipart_answer(answer.status(), vec![answer]).await;
        }
        answers.push(answer);
    }
    multipart_answer(StatusCode::OK, answers).await
}

/// One request of a batch: method, path and query, headers, body.
struct InnerRequest {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

fn multipart_boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (name, value) = p.split_once('=')?;
        (name.trim() == "boundary").then(|| value.trim().trim_matches('"').to_string())
    })
}

/// The parts between `--boundary` lines; `None` without the closing `--boundary--`.
fn split_multipart(text: &str, boundary: &str) -> Option<Vec<String>> {
    let delimiter = format!("--{boundary}");
    let closing = format!("--{boundary}--");
    let end = text.find(&closing)?;
    Some(
        text[..end]
            .split(&delimiter)
            .skip(1)
            .map(|p| {
                p.trim_start_matches("\r\n")
                    .trim_start_matches('\n')
                    .to_string()
            })
            .collect(),
    )
}

/// Headers up to the first blank line, and what follows it.
fn head_and_rest(text: &str) -> (Vec<(String, String)>, &str) {
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .unwrap_or((text, ""));
    let headers = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (headers, rest)
}

fn inner_request(part: &str) -> Result<InnerRequest, Response> {
    let refused = |message: &str| error(StatusCode::BAD_REQUEST, "0x80048d19", message.to_string());
    let (part_headers, request) = head_and_rest(part);
    let part_type = part_headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if part_type.starts_with("multipart/mixed") {
        return Err(refused("Change sets are not supported by this emulator."));
    }
    if !part_type.starts_with("application/http") {
        return Err(refused("Each batch part must be application/http."));
    }
    let (line, after_line) = request
        .split_once("\r\n")
        .or_else(|| request.split_once('\n'))
        .ok_or_else(|| refused("A batch part has no request line."))?;
    let mut words = line.split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return Err(refused("A batch part has no request line."));
    };
    // The URL is absolute, or relative to the service root.
    let url = if target.starts_with("http") {
        url::Url::parse(target)
    } else {
        url::Url::parse(&format!("http://batch.invalid{target}"))
    }
    .map_err(|_| refused("A batch part's URL is not valid."))?;
    let (headers, body) = head_and_rest(after_line);
    let mut header_map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            header_map.insert(name, value);
        }
    }
    Ok(InnerRequest {
        method: method.to_ascii_uppercase(),
        path: percent_encoding::percent_decode_str(url.path())
            .decode_utf8_lossy()
            .into_owned(),
        query: url.query_pairs().into_owned().collect(),
        headers: header_map,
        body: Bytes::from(body.trim_end().to_string()),
    })
}

/// Runs one request of a batch through the table handlers, with the batch's token.
async fn run_part(state: &SharedState, outer: &HeaderMap, inner: InnerRequest) -> Response {
    let Some(resource) = inner
        .path
        .strip_prefix("/api/data/v9.2/")
        .map(str::to_string)
    else {
        return error(
            StatusCode::NOT_FOUND,
            "0x80060888",
            "Resource not found for the segment.",
        );
    };
    let mut headers = inner.headers;
    if let Some(auth) = outer.get("authorization") {
        headers.insert("authorization", auth.clone());
    }
    headers.insert(BATCH_PART, HeaderValue::from_static("1"));
    let state = State(state.clone());
    match inner.method.as_str() {
        "GET" => retrieve(state, Path(resource), Query(inner.query), headers).await,
        "POST" => create(state, Path(resource), headers, inner.body).await,
        "PATCH" => {
            update(
                state,
                Path(resource),
                Query(inner.query),
                headers,
                inner.body,
            )
            .await
        }
        other => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "0x80060888",
            format!("{other} is not emulated inside a batch."),
        ),
    }
}

/// The batch's answer: each part's status line, headers and body.
async fn multipart_answer(status: StatusCode, answers: Vec<Response>) -> Response {
    let boundary = format!("batchresponse_{}", uuid::Uuid::new_v4());
    let mut text = String::new();
    for answer in answers {
        let (parts, body) = answer.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        text.push_str(&format!(
            "--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 {} {}\r\n",
            parts.status.as_u16(),
            parts.status.canonical_reason().unwrap_or("")
        ));
        for (name, value) in &parts.headers {
            if name == BATCH_PART {
                continue;
            }
            text.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
        }
        text.push_str("\r\n");
        text.push_str(&String::from_utf8_lossy(&body));
        text.push_str("\r\n");
    }
    text.push_str(&format!("--{boundary}--\r\n"));
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")).expect("ascii"),
    );
    response
        .headers_mut()
        .insert("odata-version", HeaderValue::from_static("4.0"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match_as_dataverse_reads_them() {
        let row: Row = json!({"statecode": 0, "emailaddress1": "O'Brien@Example.com", "telephone1": "(415) 555-0199"})
            .as_object()
            .cloned()
            .unwrap();
        let yes = [
            "statecode eq 0 and emailaddress1 eq 'o''brien@example.com'",
            "statecode eq 0 and (endswith(telephone1,'0199') or endswith(mobilephone,'0199'))",
            "not contains(emailaddress1,'nobody')",
            "mobilephone eq null",
        ];
        for filter in yes {
            assert!(parse_filter(filter).unwrap().matches(&row), "{filter}");
        }
        assert!(!parse_filter("statecode ne 0").unwrap().matches(&row));
        assert!(parse_filter("emailaddress1 gt 'a'").is_err());
        assert!(parse_filter("emailaddress1 eq 'open").is_err());
    }
}
