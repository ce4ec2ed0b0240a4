//! The HTTP edge shared by every function: request -> typed call -> JSON response, and the one
//! place errors become status codes.

use std::collections::BTreeMap;

use lambda_http::http::{HeaderValue, Method, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::config::Config;
use crate::domain::{Customer, Lead};
use crate::error::Error;
use crate::sync::{App, AppointmentPayload, BatchRequest, Failure, Prepared};

/// The operations of the API, one per function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Platforms,
    TestConnection,
    SyncCustomer,
    SyncAppointment,
    SyncLead,
    GetCustomer,
    SyncBatch,
    SyncRecords,
    ReplaySyncRecords,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Platforms => "platforms",
            Operation::TestConnection => "test-connection",
            Operation::SyncCustomer => "sync-customer",
            Operation::SyncAppointment => "sync-appointment",
            Operation::SyncLead => "sync-lead",
            Operation::GetCustomer => "get-customer",
            Operation::SyncBatch => "sync-batch",
            Operation::SyncRecords => "sync-records",
            Operation::ReplaySyncRecords => "sync-records/replay",
        }
    }

    /// The operations that write sync work, and so take an `Idempotency-Key`.
    pub fn is_sync(self) -> bool {
        matches!(
            self,
            Operation::SyncCustomer
                | Operation::SyncAppointment
                | Operation::SyncLead
                | Operation::SyncBatch
        )
    }

    /// The single sync endpoints, which answer `Prefer: respond-async` with 202 `queued`.
    fn may_respond_async(self) -> bool {
        matches!(
            self,
            Operation::SyncCustomer | Operation::SyncAppointment | Operation::SyncLead
        )
    }

    pub fn method(self) -> Method {
        match self {
            Operation::Platforms | Operation::GetCustomer | Operation::SyncRecords => Method::GET,
            _ => Method::POST,
        }
    }
}

/// Handles a request for a function that serves several operations, one per method
/// (`sync-records`: GET reads, POST replays). A method none of them takes answers 405.
pub async fn handle_by_method(
    app: &App,
    operations: &[Operation],
    request: Request,
) -> Result<Response<Body>, std::convert::Infallible> {
    let operation = operations
        .iter()
        .copied()
        .find(|op| op.method() == request.method())
        .or_else(|| operations.first().copied())
        .unwrap_or(Operation::Platforms);
    handle(app, operation, request).await
}

/// Handles one API request. Never fails: every error becomes a JSON error response.
pub async fn handle(
    app: &App,
    operation: Operation,
    request: Request,
) -> Result<Response<Body>, std::convert::Infallible> {
    // The runtime's own span carries the Lambda request id; this one adds the operation.
    let span = tracing::info_span!("request", operation = operation.name());
    let response = match admit(app, operation, &request) {
        Err(error) => error_response(&error.into()),
        Ok(()) => respond(app, operation, &request).instrument(span).await,
    };
    Ok(response)
}

/// A sync request read and checked against its connection, ready to run.
enum PreparedSync {
    Customer(Prepared<Customer>),
    Lead(Prepared<Lead>),
    Appointment(Prepared<AppointmentPayload>),
    Batch(Prepared<BatchRequest>),
}

async fn respond(app: &App, operation: Operation, request: &Request) -> Response<Body> {
    let to_json = |v: &dyn erased::Json| v.to_value();
    match operation {
        Operation::Platforms => json_response(StatusCode::OK, &crate::sync::platforms()),
        Operation::GetCustomer => {
            let found = app.get_customer(&query_object(request)).await;
            answer(found.map(|customer| (StatusCode::OK, json!({ "customer": customer }))))
        }
        Operation::TestConnection => {
            let verdict = async { app.test_connection(&body_json(request)?).await }.await;
            answer(verdict.map(|v| (StatusCode::OK, to_json(&v))))
        }
        Operation::SyncRecords => {
            let records = app.sync_records(&query_object(request)).await;
            answer(records.map(|r| (StatusCode::OK, to_json(&r))))
        }
        Operation::ReplaySyncRecords => {
            let replayed = async { app.replay_records(&body_json(request)?).await }.await;
            answer(replayed.map(|r| (StatusCode::OK, to_json(&r))))
        }
        Operation::SyncCustomer => {
            respond_sync(app, operation, request, async |body| {
                app.prepare_customer(body).await.map(PreparedSync::Customer)
            })
            .await
        }
        Operation::SyncLead => {
            respond_sync(app, operation, request, async |body| {
                app.prepare_lead(body).await.map(PreparedSync::Lead)
            })
            .await
        }
        Operation::SyncAppointment => {
            respond_sync(app, operation, request, async |body| {
                app.prepare_appointment(body)
                    .await
                    .map(PreparedSync::Appointment)
            })
            .await
        }
        Operation::SyncBatch => {
            let limit_bytes = crate::sync::MAX_BATCH_BYTES;
            if request.body().len() > limit_bytes {
                return failed(Error::PayloadTooLarge { limit_bytes }.into());
            }
            respond_sync(app, operation, request, async |body| {
                app.prepare_batch(body).await.map(PreparedSync::Batch)
            })
            .await
        }
    }
}

/// A sync request is read and checked (its `Idempotency-Key` too) before it runs, so a malformed
/// one is refused and claims no key; then it runs, once per key when it carries one.
async fn respond_sync(
    app: &App,
    operation: Operation,
    request: &Request,
    prepare: impl AsyncFnOnce(&Value) -> Result<PreparedSync, Error>,
) -> Response<Body> {
    let prepared = async {
        let key = match request.headers().get(crate::idempotency::HEADER) {
            Some(raw) => Some(crate::idempotency::parse_key(raw.as_bytes())?),
            None => None,
        };
        Ok::<_, Error>((key, prepare(&body_json(request)?).await?))
    };
    match prepared.await {
        Err(error) => failed(error.into()),
        Ok((Some(key), prepared)) => respond_once(app, operation, request, key, prepared).await,
        Ok((None, prepared)) => answer_sync(operation, request, run(app, prepared).await),
    }
}

async fn run(app: &App, prepared: PreparedSync) -> Result<(StatusCode, Value), Failure> {
    // Workflows written for the earlier Node.js service read `success`; errors say `false`.
    let synced = |v: &dyn erased::Json| {
        let mut body = v.to_value();
        body["success"] = json!(true);
        body
    };
    Ok(match prepared {
        PreparedSync::Customer(p) => (StatusCode::OK, synced(&app.run_customer(p).await?)),
        PreparedSync::Lead(p) => (StatusCode::OK, synced(&app.run_lead(p).await?)),
        PreparedSync::Appointment(p) => (StatusCode::OK, synced(&app.run_appointment(p).await?)),
        PreparedSync::Batch(p) => (StatusCode::ACCEPTED, synced(&app.run_batch(p).await?)),
    })
}

/// A sync's answer; a single sync the CRM could not take now is 202 `queued` instead of an
/// error when the caller prefers that (`Prefer: respond-async`).
fn answer_sync(
    operation: Operation,
    request: &Request,
    result: Result<(StatusCode, Value), Failure>,
) -> Response<Body> {
    match result {
        Err(failure) if operation.may_respond_async() && prefers_async(request) => {
            queued_response(&failure).unwrap_or_else(|| failed(failure))
        }
        result => answer(result),
    }
}

fn answer(result: Result<(StatusCode, Value), impl Into<Failure>>) -> Response<Body> {
    match result {
        Ok((status, body)) => json_response(status, &body),
        Err(failure) => failed(failure.into()),
    }
}

fn failed(failure: Failure) -> Response<Body> {
    if failure.error.status() >= 500 {
        tracing::warn!(code = failure.error.code(), error = %failure.error, "request failed");
    }
    error_response(&failure)
}

/// A sync request with an `Idempotency-Key`: answered from the stored response when the same
/// request finished before, run and stored otherwise (see `crate::idempotency`).
async fn respond_once(
    app: &App,
    operation: Operation,
    request: &Request,
    key: String,
    prepared: PreparedSync,
) -> Response<Body> {
    use crate::idempotency::{self, Claim};
    // Admitted first (`handle`): only a caller with the API key reads what a key stored.
    let claim = async {
        let key = format!("{}#{}", operation.name(), key);
        let hash = idempotency::request_hash(operation.name(), request.body().as_ref());
        idempotency::claim(
            app.records.as_ref(),
            key,
            hash,
            app.config.idempotency_ttl,
            app.config.sync_lease,
        )
        .await
    };
    match claim.await {
        Err(error) => error_response(&error.into()),
        Ok(Claim::Replay(stored)) => {
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
            let mut response = json_response(status, &stored.body);
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
        Ok(Claim::Run(claimed)) => {
            let response = answer_sync(operation, request, run(app, prepared).await);
            let body: Value =
                serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null);
            idempotency::finish(
                app.records.as_ref(),
                claimed,
                response.status().as_u16(),
                body,
            )
            .await;
            response
        }
    }
}

/// The method and the API key, checked once per request before anything else.
fn admit(app: &App, operation: Operation, request: &Request) -> Result<(), Error> {
    admit_with(&app.config, operation, request)
}

fn admit_with(config: &Config, operation: Operation, request: &Request) -> Result<(), Error> {
    if request.method() != operation.method() && request.method() != Method::OPTIONS {
        return Err(Error::MethodNotAllowed(request.method().to_string()));
    }
    check_api_key(config, request)
}

/// `GET platforms` on its own: it needs the configuration (the API key) and nothing of `App`,
/// so its function's binary carries no store, AWS or CRM client code.
pub async fn handle_platforms(
    config: &Config,
    request: Request,
) -> Result<Response<Body>, std::convert::Infallible> {
    let span = tracing::info_span!("request", operation = Operation::Platforms.name());
    let _entered = span.enter();
    Ok(match admit_with(config, Operation::Platforms, &request) {
        Ok(()) => json_response(StatusCode::OK, &crate::sync::platforms()),
        Err(error) => error_response(&error.into()),
    })
}

/// Whether the request asks for an asynchronous answer (RFC 7240 `Prefer: respond-async`).
fn prefers_async(request: &Request) -> bool {
    request
        .headers()
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|preference| preference.trim().eq_ignore_ascii_case("respond-async"))
}

/// 202 `queued` for a sync the CRM could not take now (unavailable, or rate limited past the
/// live wait) when the caller prefers that to an error: the work is recorded, and the
/// scheduled sync finishes it. Other failures are answered as errors.
fn queued_response(failure: &Failure) -> Option<Response<Body>> {
    let sync_id = failure.sync_id.as_ref()?;
    if !matches!(
        failure.error,
        Error::CrmUnavailable(_) | Error::RateLimited { .. }
    ) {
        return None;
    }
    let body = json!({
        "success": true,
        "status": "queued",
        "syncId": sync_id,
        "reason": {"code": failure.error.code(), "message": failure.error.to_string()},
    });
    let mut response = json_response(StatusCode::ACCEPTED, &body);
    response.headers_mut().insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
    Some(response)
}

mod erased {
    /// Lets `respond` serialise each operation's response type the same way.
    pub trait Json {
        fn to_value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}

/// Compares in constant time, so response timing does not reveal how much of a key was right.
pub(crate) fn check_api_key(config: &Config, request: &Request) -> Result<(), Error> {
    let Some(expected) = &config.api_key else {
        return Ok(());
    };
    let given = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(Error::Unauthorized)
    }
}

pub(crate) fn body_json(request: &Request) -> Result<Value, Error> {
    let bytes: &[u8] = request.body().as_ref();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::validation("body", "a JSON object is required"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| Error::validation("body", format!("is not valid JSON: {e}")))
}

fn query_object(request: &Request) -> Value {
    let params = request.query_string_parameters();
    let map: BTreeMap<String, Value> = params
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    serde_json::to_value(map).unwrap_or_else(|_| json!({}))
}

pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `{"success": false, "error": {"code", "message", "field"}}`, plus what a caller can act on:
/// the sync record that holds the failed work, the matching ids, the wait the CRM asked for.
pub fn error_response(failure: &Failure) -> Response<Body> {
    let error = &failure.error;
    let mut body = json!({
        "code": error.code(),
        "message": error.to_string(),
        "field": error.field(),
    });
    if let Some(sync_id) = &failure.sync_id {
        body["syncId"] = json!(sync_id);
        body["retryable"] = json!(error.is_transient());
    }
    if let Error::Ambiguous { ids, .. } = error {
        body["matches"] = json!(ids);
    }
    let retry_after = error.retry_after().map(|d| d.as_secs_f64().ceil() as u64);
    if let Some(seconds) = retry_after {
        body["retryAfterSeconds"] = json!(seconds);
    }
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, &json!({ "success": false, "error": body }));
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if matches!(error, Error::MethodNotAllowed(_)) {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
    }
    response
}
