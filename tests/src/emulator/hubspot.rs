//! HubSpot CRM v3 emulator: contacts, meetings and leads with associations, search, the
//! account-info call, private-app token auth, and HubSpot's error bodies and rate-limit headers.
//!
//! Behaviour follows developers.hubspot.com: search filterGroups (OR of ANDed filters), 409
//! CONFLICT "Contact already exists. Existing ID: N", OBJECT_NOT_FOUND, VALIDATION_ERROR,
//! `hs_searchable_calculated_phone_number` as the national number's digits, meeting->contact
//! association 200 and lead->primary contact 578. The account's rolling limits are enforced:
//! 100 requests per 10 seconds (Free/Starter) and 4 searches per second.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{IdSequence, RunningEmulator, SlidingWindow, serve};

const OBJECT_TYPES: [&str; 4] = ["contacts", "meetings", "leads", "notes"];
pub const DAILY_LIMIT: u64 = 250_000;
/// Free and Starter accounts: 100 requests per rolling 10 seconds (crm-api-notes §2.8).
pub const TEN_SECONDLY_LIMIT: u32 = 100;
/// The CRM search API's own limit, per second (crm-api-notes §2.8).
pub const SEARCH_PER_SECOND: u32 = 4;
/// Inputs one batch call takes ("Batch operations are limited to 100 records at a time").
pub const BATCH_LIMIT: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Association {
    pub to_type: String,
    pub to_id: String,
    pub type_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HsObject {
    pub id: String,
    pub properties: BTreeMap<String, String>,
    pub associations: Vec<Association>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl HsObject {
    pub fn prop(&self, name: &str) -> Option<&str> {
        self.properties
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
    pub fn associated(&self, to_type: &str) -> Vec<String> {
        self.associations
            .iter()
            .filter(|a| a.to_type == to_type)
            .map(|a| a.to_id.clone())
            .collect()
    }
}

pub struct HubSpotState {
    pub tokens: HashSet<String>,
    pub portal_id: u64,
    ids: IdSequence,
    /// object type -> id -> object
    pub objects: BTreeMap<String, BTreeMap<String, HsObject>>,
    pub daily_used: u64,
    /// Custom properties the account admin created with unique values, as (object type, name):
    /// readable through the properties API and usable as `idProperty`.
    pub unique_properties: BTreeSet<(String, String)>,
    /// Every request of the account, in any rolling 10 seconds.
    pub ten_secondly: SlidingWindow,
    /// Search requests, in any rolling second.
    pub search_secondly: SlidingWindow,
}

/// The property crm-sync stamps its key into, created once by the admin on these objects.
pub const STAMP_PROPERTY: &str = "crm_sync_id";

impl HubSpotState {
    pub fn new(tokens: &[&str]) -> Self {
        HubSpotState {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            portal_id: 62515,
            ids: IdSequence::starting_at(1000),
            objects: OBJECT_TYPES
                .iter()
                .map(|t| (t.to_string(), BTreeMap::new()))
                .collect(),
            daily_used: 0,
            unique_properties: ["contacts", "leads", "meetings"]
                .iter()
                .map(|t| (t.to_string(), STAMP_PROPERTY.to_string()))
                .collect(),
            ten_secondly: SlidingWindow::new(
                TEN_SECONDLY_LIMIT,
                std::time::Duration::from_secs(10),
            ),
            search_secondly: SlidingWindow::new(
                SEARCH_PER_SECOND,
                std::time::Duration::from_secs(1),
            ),
        }
    }

    /// No rolling limits (tests whose volume is not about rate limits).
    pub fn lift_rate_limits(&mut self) {
        self.ten_secondly.lift();
        self.search_secondly.lift();
    }

    /// Everything the CRM holds, for saving between runs of the local emulator.
    pub fn snapshot(&self) -> Value {
        json!({"lastId": self.ids.last(), "objects": self.objects})
    }

    /// Loads what `snapshot` saved.
    pub fn restore(&mut self, snapshot: &Value) -> Result<(), serde_json::Error> {
        self.objects = serde_json::from_value(snapshot["objects"].clone())?;
        for object_type in OBJECT_TYPES {
            self.objects.entry(object_type.into()).or_default();
        }
        self.ids = IdSequence::starting_at(snapshot["lastId"].as_u64().unwrap_or(1000));
        Ok(())
    }

    pub fn all(&self, object_type: &str) -> Vec<HsObject> {
        self.objects
            .get(object_type)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds an object as a person using HubSpot would (no validation), returning its id.
    pub fn insert(&mut self, object_type: &str, properties: &[(&str, &str)]) -> String {
        let id = self.ids.next_id();
        let now = Utc::now();
        let mut props: BTreeMap<String, String> = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        calculate_properties(&id, &mut props, now, now);
        let object = HsObject {
            id: id.clone(),
            properties: props,
            associations: vec![],
            created_at: now,
            updated_at: now,
        };
        self.objects
            .entry(object_type.into())
            .or_default()
            .insert(id.clone(), object);
        id
    }
}

pub type SharedState = Arc<Mutex<HubSpotState>>;

pub struct HubSpotEmulator {
    pub state: SharedState,
    pub server: RunningEmulator,
}

impl HubSpotEmulator {
    pub async fn start(tokens: &[&str]) -> std::io::Result<Self> {
        Self::start_on(tokens, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(tokens: &[&str], addr: SocketAddr) -> std::io::Result<Self> {
        let state: SharedState = Arc::new(Mutex::new(HubSpotState::new(tokens)));
        let server = serve(routes(state.clone()), error_body, addr).await?;
        Ok(HubSpotEmulator { state, server })
    }

    pub fn base_url(&self) -> &str {
        &self.server.base_url
    }
}

pub fn error_body(status: StatusCode) -> Value {
    let (message, category) = match status.as_u16() {
        401 => (
            "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            "INVALID_AUTHENTICATION",
        ),
        404 => (
            "Object not found.  objectId are usually numeric.",
            "OBJECT_NOT_FOUND",
        ),
        409 => ("Conflict", "CONFLICT"),
        429 => {
            return json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
                "errorType": "RATE_LIMIT", "correlationId": correlation_id(), "policyName": "TEN_SECONDLY_ROLLING"});
        }
        400 => ("Invalid input JSON on line 1", "VALIDATION_ERROR"),
        _ => ("internal error", "INTERNAL_ERROR"),
    };
    json!({"status": "error", "message": message, "correlationId": correlation_id(), "category": category})
}

fn correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn error(status: StatusCode, message: impl Into<String>, category: &str) -> Response {
    let body = json!({"status": "error", "message": message.into(), "correlationId": correlation_id(), "category": category});
    (status, Json(body)).into_response()
}

/// Checks the bearer token and adds HubSpot's rate-limit headers to what `f` answers.
fn authorised(
    state: &SharedState,
    headers: &HeaderMap,
    f: impl FnOnce(&mut HubSpotState) -> Response,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let mut state = state.lock().unwrap();
    if !state.tokens.contains(token) {
        let mut response = (
            StatusCode::UNAUTHORIZED,
            Json(error_body(StatusCode::UNAUTHORIZED)),
        )
            .into_response();
        response.headers_mut().insert(
            "x-hubspot-auth-failure",
            HeaderValue::from_static("401 Unauthorized"),
        );
        return response;
    }
    state.daily_used += 1;
    let remaining = DAILY_LIMIT.saturating_sub(state.daily_used);
    let mut response = f(&mut state);
    let headers = response.headers_mut();
    headers.insert("x-hubspot-ratelimit-daily", HeaderValue::from(DAILY_LIMIT));
    headers.insert(
        "x-hubspot-ratelimit-daily-remaining",
        HeaderValue::from(remaining),
    );
    response
}

/// HubSpot's rolling limits, before the routes: the search API's per-second limit, then the
/// account's ten-secondly one. A refusal is HubSpot's 429; every answer carries the interval's
/// `X-HubSpot-RateLimit-Max`, `-Remaining` and `-Interval-Milliseconds`.
async fn rate_limits(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let search = request
        .uri()
        .path()
        .trim_end_matches('/')
        .ends_with("/search");
    let refused = {
        let mut state = state.lock().unwrap();
        let search_refused = if search {
            state
                .search_secondly
                .take()
                .err()
                .map(|wait| (wait, "SECONDLY"))
        } else {
            None
        };
        search_refused.or_else(|| {
            state
                .ten_secondly
                .take()
                .err()
                .map(|wait| (wait, "TEN_SECONDLY_ROLLING"))
        })
    };
    let mut response = match refused {
        Some((wait, policy)) => {
            let mut body = error_body(StatusCode::TOO_MANY_REQUESTS);
            body["policyName"] = json!(policy);
            if policy == "SECONDLY" {
                body["message"] = json!("You have reached your secondly limit.");
            }
            let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            response.headers_mut().insert(
                "retry-after",
                HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64),
            );
            response
        }
        None => next.run(request).await,
    };
    let (max, remaining, interval) = {
        let mut state = state.lock().unwrap();
        let window = &mut state.ten_secondly;
        (
            window.limit,
            window.remaining(),
            window.window.as_millis() as u64,
        )
    };
    let headers = response.headers_mut();
    if max == u32::MAX {
        // Lifted: there is no limit to report (a limit of 4 billion would resize the caller's
        // bucket to it).
        return response;
    }
    headers.insert("x-hubspot-ratelimit-max", HeaderValue::from(max));
    headers.insert(
        "x-hubspot-ratelimit-remaining",
        HeaderValue::from(remaining),
    );
    headers.insert(
        "x-hubspot-ratelimit-interval-milliseconds",
        HeaderValue::from(interval),
    );
    response
}

pub fn routes(state: SharedState) -> Router {
    Router::new()
        .route("/account-info/v3/details", get(account_details))
        .route("/crm/v3/objects/{object_type}", post(create_object))
        .route("/crm/v3/objects/{object_type}/search", post(search_objects))
        .route(
            "/crm/v3/objects/{object_type}/{id}",
            get(get_object).patch(update_object),
        )
        .route("/crm/v3/properties/{object_type}/{name}", get(get_property))
        .route("/crm/v3/objects/{object_type}/batch/read", post(batch_read))
        .route(
            "/crm/v3/objects/{object_type}/batch/upsert",
            post(batch_upsert),
        )
        .route(
            "/crm/v4/objects/{from_type}/{from_id}/associations/{to_type}",
            get(list_associations),
        )
        .route(
            "/crm/v4/objects/{from_type}/{from_id}/associations/default/{to_type}/{to_id}",
            axum::routing::put(associate_default),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limits,
        ))
        .with_state(state)
}

async fn account_details(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    authorised(&state, &headers, |s| {
        Json(json!({
            "portalId": s.portal_id, "accountType": "STANDARD", "timeZone": "US/Eastern",
            "companyCurrency": "USD", "additionalCurrencies": [], "utcOffset": "-05:00",
            "utcOffsetMilliseconds": -18_000_000, "uiDomain": "app.hubspot.com", "dataHostingLocation": "na1"
        }))
        .into_response()
    })
}

fn known_type(object_type: &str) -> Result<(), Response> {
    if OBJECT_TYPES.contains(&object_type) {
        Ok(())
    } else {
        Err(error(
            StatusCode::BAD_REQUEST,
            format!("Unable to infer object type from: {object_type}"),
            "VALIDATION_ERROR",
        ))
    }
}

/// Properties HubSpot computes on every write.
fn calculate_properties(
    id: &str,
    props: &mut BTreeMap<String, String>,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
) {
    let iso = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    props.insert("hs_object_id".into(), id.into());
    props.insert("createdate".into(), iso(created));
    props.insert("lastmodifieddate".into(), iso(now));
    for (raw, calculated) in [
        ("phone", "hs_searchable_calculated_phone_number"),
        ("mobilephone", "hs_searchable_calculated_mobile_number"),
    ] {
        match props.get(raw).map(|p| national_digits(p)) {
            Some(digits) if !digits.is_empty() => props.insert(calculated.into(), digits),
            _ => props.remove(calculated),
        };
    }
    if let Some(email) = props.get_mut("email") {
        *email = email.trim().to_ascii_lowercase();
    }
}

/// The national number's digits, as HubSpot's searchable phone properties hold them
/// ("+1 415-555-2671" -> "4155552671"; "020 7946 0958" -> "2079460958").
fn national_digits(raw: &str) -> String {
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    let parsed = if raw.trim_start().starts_with('+') {
        phonenumber::parse(None, raw).ok()
    } else {
        phonenumber::parse(Some(phonenumber::country::Id::US), raw).ok()
    };
    match parsed {
        Some(number) => number.national().value().to_string(),
        None => digits.trim_start_matches('0').to_string(),
    }
}

fn properties_of(body: &Value) -> Result<BTreeMap<String, String>, Response> {
    let Some(map) = body.get("properties").and_then(Value::as_object) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "Invalid input JSON: 'properties' is required",
            "VALIDATION_ERROR",
        ));
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            Value::Number(n) => Ok((k.clone(), n.to_string())),
            Value::Bool(b) => Ok((k.clone(), b.to_string())),
            Value::Null => Ok((k.clone(), String::new())),
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                format!("Invalid value for property {k}"),
                "VALIDATION_ERROR",
            )),
        })
        .collect()
}

/// A refusal of one object's input: the whole answer of a single call, one of `errors` in a
/// batch call's.
struct Refusal {
    status: StatusCode,
    message: String,
    category: &'static str,
}

impl Refusal {
    fn response(self) -> Response {
        error(self.status, self.message, self.category)
    }
}

fn invalid_property(name: &str, message: &str, code: &str) -> Refusal {
    let detail =
        json!([{"isValid": false, "message": message, "error": code, "name": name}]).to_string();
    Refusal {
        status: StatusCode::BAD_REQUEST,
        message: format!("Property values were not valid: {detail}"),
        category: "VALIDATION_ERROR",
    }
}

/// HubSpot's own checks on property values.
fn validate(
    state: &HubSpotState,
    object_type: &str,
    id: Option<&str>,
    props: &BTreeMap<String, String>,
) -> Result<(), Refusal> {
    if object_type == "contacts"
        && let Some(email) = props.get("email").filter(|e| !e.is_empty())
    {
        if crm_sync::domain::Email::parse(email).is_err() {
            return Err(invalid_property(
                "email",
                &format!("Email address {email} is invalid"),
                "INVALID_EMAIL",
            ));
        }
        let email = email.trim().to_ascii_lowercase();
        let existing = state.objects["contacts"]
            .values()
            .find(|c| c.prop("email") == Some(email.as_str()) && Some(c.id.as_str()) != id);
        if let Some(existing) = existing {
            return Err(Refusal {
                status: StatusCode::CONFLICT,
                message: format!("Contact already exists. Existing ID: {}", existing.id),
                category: "CONFLICT",
            });
        }
    }
    for (name, value) in props {
        let is_time = [
            "hs_timestamp",
            "hs_meeting_start_time",
            "hs_meeting_end_time",
        ]
        .contains(&name.as_str());
        if is_time && !value.is_empty() && parse_time(value).is_none() {
            return Err(invalid_property(
                name,
                &format!("{value} is not a valid timestamp"),
                "INVALID_DATE",
            ));
        }
        if name == "hs_meeting_outcome"
            && ![
                "SCHEDULED",
                "COMPLETED",
                "RESCHEDULED",
                "NO_SHOW",
                "CANCELED",
            ]
            .contains(&value.as_str())
        {
            return Err(invalid_property(
                name,
                &format!("{value} was not one of the allowed options"),
                "INVALID_OPTION",
            ));
        }
    }
    Ok(())
}

/// Epoch milliseconds or ISO 8601 UTC, as HubSpot datetime properties accept.
pub fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    value
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .or_else(|| {
            DateTime::parse_from_rfc3339(value)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
}

fn object_json(object: &HsObject, wanted: Option<&[String]>) -> Value {
    let defaults = ["createdate", "hs_object_id", "lastmodifieddate"];
    let properties: Map<String, Value> = object
        .properties
        .iter()
        .filter(|(k, _)| match wanted {
            Some(names) => names.iter().any(|n| n == *k) || defaults.contains(&k.as_str()),
            None => true,
        })
        .map(|(k, v)| {
            (
                k.clone(),
                if v.is_empty() {
                    Value::Null
                } else {
                    Value::String(v.clone())
                },
            )
        })
        .collect();
    json!({
        "id": object.id,
        "properties": properties,
        "createdAt": object.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "updatedAt": object.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "archived": false,
    })
}

fn associations_of(state: &HubSpotState, body: &Value) -> Result<Vec<Association>, Response> {
    let mut out = Vec::new();
    for association in body
        .get("associations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let to_id = association.pointer("/to/id").map(|v| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        });
        let Some(to_id) = to_id else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "association 'to.id' is required",
                "VALIDATION_ERROR",
            ));
        };
        for kind in association
            .get("types")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let type_id = kind
                .get("associationTypeId")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let to_type = match type_id {
                200 | 202 | 578 => "contacts",
                _ => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        format!("associationTypeId {type_id} is not supported"),
                        "VALIDATION_ERROR",
                    ));
                }
            };
            if !state.objects[to_type].contains_key(&to_id) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "One or more associations are invalid: {to_type} {to_id} does not exist"
                    ),
                    "VALIDATION_ERROR",
                ));
            }
            out.push(Association {
                to_type: to_type.into(),
                to_id: to_id.clone(),
                type_id,
            });
        }
    }
    Ok(out)
}

/// Stores a new object of `object_type` (a known type) with its calculated properties.
fn insert_object(
    s: &mut HubSpotState,
    object_type: &str,
    mut props: BTreeMap<String, String>,
    associations: Vec<Association>,
) -> HsObject {
    let id = s.ids.next_id();
    let now = Utc::now();
    calculate_properties(&id, &mut props, now, now);
    let object = HsObject {
        id: id.clone(),
        properties: props,
        associations,
        created_at: now,
        updated_at: now,
    };
    s.objects
        .get_mut(object_type)
        .expect("known type")
        .insert(id, object.clone());
    object
}

/// Writes `updates` over an existing object's properties and recalculates the derived ones.
fn update_stored(
    s: &mut HubSpotState,
    object_type: &str,
    id: &str,
    updates: BTreeMap<String, String>,
) -> HsObject {
    let object = s
        .objects
        .get_mut(object_type)
        .and_then(|m| m.get_mut(id))
        .expect("an existing object");
    object.properties.extend(updates);
    object.updated_at = Utc::now();
    let (created, updated) = (object.created_at, object.updated_at);
    calculate_properties(id, &mut object.properties, created, updated);
    object.clone()
}

async fn create_object(
    State(state): State<SharedState>,
    Path(object_type): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    authorised(&state, &headers, |s| {
        if let Err(r) = known_type(&object_type) {
            return r;
        }
        let mut props = match properties_of(&body) {
            Ok(p) => p,
            Err(r) => return r,
        };
        if let Err(r) = validate(s, &object_type, None, &props) {
            return r.response();
        }
        let associations = match associations_of(s, &body) {
            Ok(a) => a,
            Err(r) => return r,
        };
        match object_type.as_str() {
            "contacts"
                if ["email", "firstname", "lastname"]
                    .iter()
                    .all(|p| props.get(*p).is_none_or(String::is_empty)) =>
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "A contact needs at least one of email, firstname or lastname",
                    "VALIDATION_ERROR",
                );
            }
            "notes" if props.get("hs_timestamp").is_none_or(String::is_empty) => {
                return invalid_property(
                    "hs_timestamp",
                    "hs_timestamp is required",
                    "REQUIRED_FIELD",
                )
                .response();
            }
            "meetings" if props.get("hs_timestamp").is_none_or(String::is_empty) => {
                match props.get("hs_meeting_start_time").cloned() {
                    // Since Nov 2024 hs_timestamp defaults to the meeting's start time.
                    Some(start) if !start.is_empty() => {
                        props.insert("hs_timestamp".into(), start);
                    }
                    _ => {
                        return invalid_property(
                            "hs_timestamp",
                            "hs_timestamp is required",
                            "REQUIRED_FIELD",
                        )
                        .response();
                    }
                }
            }
            "leads" => {
                if props.get("hs_lead_name").is_none_or(String::is_empty) {
                    return invalid_property(
                        "hs_lead_name",
                        "hs_lead_name is required",
                        "REQUIRED_FIELD",
                    )
                    .response();
                }
                if !associations.iter().any(|a| a.to_type == "contacts") {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "A lead must be associated with an existing contact",
                        "VALIDATION_ERROR",
                    );
                }
            }
            _ => {}
        }
        let object = insert_object(s, &object_type, props, associations);
        (StatusCode::CREATED, Json(object_json(&object, None))).into_response()
    })
}

fn wanted_properties(query: &BTreeMap<String, String>) -> Option<Vec<String>> {
    query
        .get("properties")
        .map(|p| p.split(',').map(|s| s.trim().to_string()).collect())
}

async fn get_object(
    State(state): State<SharedState>,
    Path((object_type, id)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, |s| {
        if let Err(r) = known_type(&object_type) {
            return r;
        }
        let object = match query.get("idProperty").map(String::as_str) {
            Some("email") => s.objects[&object_type]
                .values()
                .find(|o| o.prop("email") == Some(id.to_ascii_lowercase().as_str())),
            Some(unique)
                if s.unique_properties
                    .contains(&(object_type.clone(), unique.to_string())) =>
            {
                s.objects[&object_type]
                    .values()
                    .find(|o| o.prop(unique) == Some(id.as_str()))
            }
            Some(other) if other != "hs_object_id" => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{other} is not a unique identifier property of {object_type}"),
                    "VALIDATION_ERROR",
                );
            }
            _ => s.objects[&object_type].get(&id),
        };
        let default_props: Vec<String> = ["email", "firstname", "lastname"]
            .iter()
            .map(|p| p.to_string())
            .collect();
        match object {
            Some(object) => Json(object_json(
                object,
                Some(&wanted_properties(&query).unwrap_or(default_props)),
            ))
            .into_response(),
            None => (
                StatusCode::NOT_FOUND,
                Json(error_body(StatusCode::NOT_FOUND)),
            )
                .into_response(),
        }
    })
}

/// `GET /crm/v3/properties/{objectType}/{propertyName}`: the custom properties the admin made.
async fn get_property(
    State(state): State<SharedState>,
    Path((object_type, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, |s| {
        if let Err(r) = known_type(&object_type) {
            return r;
        }
        if !s
            .unique_properties
            .contains(&(object_type.clone(), name.clone()))
        {
            return (
                StatusCode::NOT_FOUND,
                Json(error_body(StatusCode::NOT_FOUND)),
            )
                .into_response();
        }
        Json(json!({
            "name": name, "label": "CRM Sync Id", "type": "string", "fieldType": "text",
            "groupName": "contactinformation", "hasUniqueValue": true, "hidden": false,
            "formField": false, "calculated": false, "externalOptions": false,
        }))
        .into_response()
    })
}

async fn update_object(
    State(state): State<SharedState>,
    Path((object_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    authorised(&state, &headers, |s| {
        if let Err(r) = known_type(&object_type) {
            return r;
        }
        let updates = match properties_of(&body) {
            Ok(p) => p,
            Err(r) => return r,
        };
        if !s.objects[&object_type].contains_key(&id) {
            return (
                StatusCode::NOT_FOUND,
                Json(error_body(StatusCode::NOT_FOUND)),
            )
                .into_response();
        }
        if let Err(r) = validate(s, &object_type, Some(&id), &updates) {
            return r.response();
        }
        let object = update_stored(s, &object_type, &id, updates);
        Json(object_json(&object, None)).into_response()
    })
}

fn filter_matches(object: &HsObject, filter: &Value) -> Result<bool, String> {
    let name = filter
        .get("propertyName")
        .and_then(Value::as_str)
        .ok_or("filter propertyName is required")?;
    let operator = filter
        .get("operator")
        .and_then(Value::as_str)
        .ok_or("filter operator is required")?;
    let value = filter.get("value").map(|v| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    });
    let values: Vec<String> = match filter.get("values").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
        None => value.clone().into_iter().collect(),
    };
    // `associations.contact` matches objects associated with that contact id.
    let actual: Vec<String> = match name.strip_prefix("associations.") {
        Some(to) => object.associated(&format!("{to}s")),
        None => object
            .prop(name)
            .map(|v| vec![v.to_string()])
            .unwrap_or_default(),
    };
    let eq = |a: &String, b: &String| a.eq_ignore_ascii_case(b);
    Ok(match operator {
        "EQ" => actual.iter().any(|a| values.iter().any(|v| eq(a, v))),
        "NEQ" => !actual.iter().any(|a| values.iter().any(|v| eq(a, v))),
        "IN" => actual.iter().any(|a| values.iter().any(|v| eq(a, v))),
        "HAS_PROPERTY" => !actual.is_empty(),
        "NOT_HAS_PROPERTY" => actual.is_empty(),
        "CONTAINS_TOKEN" => {
            let token = value.unwrap_or_default().to_ascii_lowercase();
            let token = token.trim_matches('*');
            actual
                .iter()
                .any(|a| a.to_ascii_lowercase().contains(token))
        }
        other => {
            return Err(format!(
                "operator {other} is not supported by this emulator"
            ));
        }
    })
}

async fn search_objects(
    State(state): State<SharedState>,
    Path(object_type): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    authorised(&state, &headers, |s| {
        if let Err(r) = known_type(&object_type) {
            return r;
        }
        let groups = body
            .get("filterGroups")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let filter_count: usize = groups
            .iter()
            .map(|g| {
                g.get("filters")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            })
            .sum();
        if groups.len() > 5 || filter_count > 25 {
            return error(
                StatusCode::BAD_REQUEST,
                "Too many filter groups or filters",
                "VALIDATION_ERROR",
            );
        }
        let limit = body
            .get("limit")
            .and_then(Value::as_u64)
            .unwrap_or(10)
            .min(200) as usize;
        let after: usize = body
            .get("after")
            .and_then(|a| {
                a.as_str()
                    .and_then(|s| s.parse().ok())
                    .or(a.as_u64().map(|n| n as usize))
            })
            .unwrap_or(0);
        let wanted: Option<Vec<String>> =
            body.get("properties").and_then(Value::as_array).map(|p| {
                p.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            });
        // Read once, not once per object: a search over thousands of objects holds the state.
        let groups: Vec<Vec<Value>> = groups
            .iter()
            .map(|group| {
                group
                    .get("filters")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let mut matched = Vec::new();
        for object in s.objects[&object_type].values() {
            let mut any = groups.is_empty();
            for filters in &groups {
                let mut all = true;
                for filter in filters {
                    match filter_matches(object, filter) {
                        Ok(true) => {}
                        Ok(false) => all = false,
                        Err(message) => {
                            return error(StatusCode::BAD_REQUEST, message, "VALIDATION_ERROR");
                        }
                    }
                }
                any |= all;
            }
            if any {
                matched.push(object);
            }
        }
        let total = matched.len();
        let page: Vec<Value> = matched
            .iter()
            .skip(after)
            .take(limit)
            .map(|o| object_json(o, Some(wanted.as_deref().unwrap_or(&[]))))
            .collect();
        let mut response = json!({"total": total, "results": page});
        if after + limit < total {
            response["paging"] = json!({"next": {"after": (after + limit).to_string()}});
        }
        Json(response).into_response()
    })
}

/// Whether `object` (of `object_type`) and `other_type`/`other_id` are associated, in either
/// direction: HubSpot associations are two-way, this emulator stores them on the writer's side.
fn linked(
    s: &HubSpotState,
    object_type: &str,
    object: &HsObject,
    other_type: &str,
    other_id: &str,
) -> bool {
    object
        .associated(other_type)
        .iter()
        .any(|id| id == other_id)
        || s.objects[other_type]
            .get(other_id)
            .is_some_and(|o| o.associated(object_type).iter().any(|id| id == &object.id))
}

/// `GET /crm/v4/objects/{fromType}/{fromId}/associations/{toType}`.
async fn list_associations(
    State(state): State<SharedState>,
    Path((from_type, from_id, to_type)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, |s| {
        for t in [&from_type, &to_type] {
            if let Err(r) = known_type(t) {
                return r;
            }
        }
        let results: Vec<Value> = s.objects[&to_type]
            .values()
            .filter(|o| linked(s, &to_type, o, &from_type, &from_id))
            .map(|o| {
                json!({"toObjectId": o.id.parse::<u64>().unwrap_or_default(),
                       "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 0, "label": null}]})
            })
            .collect();
        Json(json!({ "results": results })).into_response()
    })
}

/// `PUT /crm/v4/objects/{fromType}/{fromId}/associations/default/{toType}/{toId}`: the default
/// (unlabelled) association; putting it again changes nothing.
async fn associate_default(
    State(state): State<SharedState>,
    Path((from_type, from_id, to_type, to_id)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    authorised(&state, &headers, |s| {
        for t in [&from_type, &to_type] {
            if let Err(r) = known_type(t) {
                return r;
            }
        }
        if !s.objects[&to_type].contains_key(&to_id) {
            return error(
                StatusCode::NOT_FOUND,
                format!("{to_type} {to_id} does not exist"),
                "OBJECT_NOT_FOUND",
            );
        }
        let Some(from) = s
            .objects
            .get_mut(&from_type)
            .and_then(|m| m.get_mut(&from_id))
        else {
            return error(
                StatusCode::NOT_FOUND,
                format!("{from_type} {from_id} does not exist"),
                "OBJECT_NOT_FOUND",
            );
        };
        if !from.associated(&to_type).contains(&to_id) {
            from.associations.push(Association {
                to_type: to_type.clone(),
                to_id: to_id.clone(),
                type_id: 0,
            });
        }
        Json(json!({"status": "COMPLETE", "results": [{"fromObjectTypeId": from_type, "fromObjectId": from_id,
            "toObjectTypeId": to_type, "toObjectId": to_id, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 0}]}]}))
            .into_response()
    })
}

/// `POST /crm/v3/objects/{objectType}/batch/read`: `inputs` by id, with `properties`.
async fn batch_read(
    State(state): State<SharedState>,
    Path(object_type): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    authorised(&state, &headers, |s| {
        if let Err(r) = known_type(&object_type) {
            return r;
        }
        let wanted: Option<Vec<String>> = body["properties"].as_array().map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        });
        let results: Vec<Value> = body["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|input| input["id"].as_str())
            .filter_map(|id| s.objects[&object_type].get(id))
            .map(|o| object_json(o, wanted.as_deref()))
            .collect();
        Json(json!({"status": "COMPLETE", "results": results})).into_response()
    })
}

/// A batch refused as a whole: 400 `VALIDATION_ERROR`.
fn batch_refused(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message, "VALIDATION_ERROR")
}

/// `POST /crm/v3/objects/contacts/batch/upsert`: creates or updates up to 100 contacts, each
/// named by its email (`idProperty: "email"`, `id`: the email). Each result says whether it was
/// created (`new`); an input refused is one of `errors`, its `objectWriteTraceId` in the error's
/// context, and the answer is then 207 (Multi-Status). Two inputs naming one contact, more than
/// 100 inputs, or an `idProperty` HubSpot cannot upsert by refuse the whole batch (400).
async fn batch_upsert(
    State(state): State<SharedState>,
    Path(object_type): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    authorised(&state, &headers, |s| {
        if object_type != "contacts" {
            return batch_refused(format!(
                "Batch upsert is emulated for contacts only, not {object_type}"
            ));
        }
        let Some(inputs) = body["inputs"].as_array() else {
            return batch_refused("Invalid input JSON: 'inputs' is required");
        };
        if inputs.len() > BATCH_LIMIT {
            return batch_refused(format!(
                "Batch input limit exceeded: {} inputs, at most {BATCH_LIMIT}",
                inputs.len()
            ));
        }
        let mut emails = HashSet::new();
        for input in inputs {
            if input["idProperty"].as_str() != Some("email") {
                return batch_refused("Unable to perform update/upsert by non-unique 0-1 property");
            }
            let Some(email) = input["id"].as_str() else {
                return batch_refused("Invalid input JSON: 'id' is required");
            };
            if !emails.insert(email.trim().to_ascii_lowercase()) {
                return batch_refused(format!("Duplicate IDs found in batch input: [{email}]"));
            }
        }
        let (mut results, mut errors) = (Vec::new(), Vec::new());
        for input in inputs {
            let trace = input["objectWriteTraceId"].clone();
            let email = input["id"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let refused = |refusal: Refusal| {
                let mut context = json!({"ids": [email.clone()]});
                if let Some(trace) = trace.as_str() {
                    context["objectWriteTraceId"] = json!([trace]);
                }
                json!({"status": "error", "category": refusal.category, "message": refusal.message, "context": context})
            };
            let mut props = match properties_of(input) {
                Ok(props) => props,
                Err(_) => {
                    errors.push(refused(Refusal {
                        status: StatusCode::BAD_REQUEST,
                        message: "Invalid input JSON: 'properties' is required".into(),
                        category: "VALIDATION_ERROR",
                    }));
                    continue;
                }
            };
            props.insert("email".into(), email.clone());
            let existing = s.objects["contacts"]
                .values()
                .find(|c| c.prop("email") == Some(email.as_str()))
                .map(|c| c.id.clone());
            if let Err(refusal) = validate(s, "contacts", existing.as_deref(), &props) {
                errors.push(refused(refusal));
                continue;
            }
            let (object, new) = match existing {
                Some(id) => (update_stored(s, "contacts", &id, props), false),
                None => (insert_object(s, "contacts", props, Vec::new()), true),
            };
            let mut result = object_json(&object, None);
            result["new"] = json!(new);
            if !trace.is_null() {
                result["objectWriteTraceId"] = trace;
            }
            results.push(result);
        }
        let now = Utc::now().to_rfc3339();
        let mut answer =
            json!({"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now});
        let status = if errors.is_empty() {
            StatusCode::OK
        } else {
            answer["numErrors"] = json!(errors.len());
            answer["errors"] = json!(errors);
            StatusCode::MULTI_STATUS
        };
        (status, Json(answer)).into_response()
    })
}
