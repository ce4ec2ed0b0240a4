//! The skeleton every CRM emulator shares: an axum server on 127.0.0.1, a request log, and a
//! fault injector (status, `Retry-After`, delay) applied before the CRM's own routes, or after
//! them to lose an answer the CRM has already acted on.

pub mod dynamics;
pub mod freshsales;
pub mod hubspot;
pub mod oauth;
pub mod pipedrive;
pub mod salesforce;
pub mod sugarcrm;
pub mod zoho;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A fault to inject into the next matching requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Fault {
    /// The status to answer with; `None` only delays, then lets the CRM answer.
    pub status: Option<u16>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// Wait this long before answering.
    pub delay_ms: u64,
    /// How many matching requests get this fault.
    pub times: u32,
    /// Only requests whose method and path (`POST /crm/v3/...`) contain this (end with it, when
    /// it ends in `$`).
    pub matching: Option<String>,
    /// The CRM applies the request, then the answer is lost: it is held back for `delay_ms`
    /// (at least a minute), past any client's timeout, so the client hears nothing.
    pub lose_answer: bool,
}

impl Fault {
    pub fn status(status: u16) -> Self {
        Fault {
            status: Some(status),
            times: 1,
            ..Default::default()
        }
    }
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
    pub fn delay(delay: Duration) -> Self {
        Fault {
            delay_ms: delay.as_millis() as u64,
            times: 1,
            ..Default::default()
        }
    }
    /// Applied by the CRM, answer never heard (see `lose_answer`).
    pub fn lose_answer() -> Self {
        Fault {
            lose_answer: true,
            times: 1,
            ..Default::default()
        }
    }
    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }
    pub fn matching(mut self, pattern: &str) -> Self {
        self.matching = Some(pattern.to_string());
        self
    }
}

/// A request as the emulator received it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub body: Value,
    /// The status answered (the CRM's own or an injected fault), once answered.
    pub status: Option<u16>,
    /// The JSON body answered, or `Value::Null`.
    pub response: Value,
    /// The answer was a fault injected by the test (or drawn by chaos), not the CRM's own.
    pub injected: bool,
}

impl RecordedRequest {
    /// The CRM refused it for a rate limit: 429, or Salesforce's 403 `REQUEST_LIMIT_EXCEEDED`.
    pub fn rate_limited(&self) -> bool {
        self.status == Some(429)
            || (self.status == Some(403)
                && self.response.to_string().contains("REQUEST_LIMIT_EXCEEDED"))
    }
}

/// Requests and rate-limit refusals an emulator counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallCounts {
    pub requests: usize,
    /// Refused by the emulated CRM's own rate limits.
    pub rate_limited: usize,
    /// Refusals the test injected (faults, chaos).
    pub injected_rate_limited: usize,
}

/// Faults drawn at random for writes (POST, PUT, PATCH that are not searches or token calls):
/// a share of answers lost after the CRM applied the write, and a share refused with 503 or
/// 429 before it ran. Seeded, so a run can be repeated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chaos {
    pub lost_answer_percent: u32,
    pub error_percent: u32,
    pub seed: u64,
}

#[derive(Default)]
struct ControlState {
    faults: VecDeque<Fault>,
    requests: Vec<RecordedRequest>,
    chaos: Option<Chaos>,
}

/// Fault injection and the request log, shared by the server and the test that drives it.
#[derive(Clone, Default)]
pub struct Control {
    inner: Arc<Mutex<ControlState>>,
}

impl Control {
    pub fn inject(&self, fault: Fault) {
        self.inner.lock().unwrap().faults.push_back(fault);
    }
    pub fn clear_faults(&self) {
        let mut state = self.inner.lock().unwrap();
        state.faults.clear();
        state.chaos = None;
    }
    /// Draws faults for writes at random until `clear_faults`.
    pub fn chaos(&self, chaos: Chaos) {
        self.inner.lock().unwrap().chaos = Some(chaos);
    }
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.lock().unwrap().requests.clone()
    }
    pub fn request_count(&self) -> usize {
        self.inner.lock().unwrap().requests.len()
    }
    /// Requests so far, and how many were refused for a rate limit by the CRM or by the test.
    pub fn counts(&self) -> CallCounts {
        let state = self.inner.lock().unwrap();
        let limited = |injected: bool| {
            state
                .requests
                .iter()
                .filter(|r| r.injected == injected && r.rate_limited())
                .count()
        };
        CallCounts {
            requests: state.requests.len(),
            rate_limited: limited(false),
            injected_rate_limited: limited(true),
        }
    }

    /// Notes what request `index` was answered, and hands the answer on unchanged.
    async fn record_response(&self, index: usize, response: Response) -> Response {
        let (parts, body) = response.into_parts();
        let bytes = to_bytes(body, 16 * 1024 * 1024).await.unwrap_or_default();
        if let Some(request) = self.inner.lock().unwrap().requests.get_mut(index) {
            request.status = Some(parts.status.as_u16());
            request.response = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        }
        Response::from_parts(parts, Body::from(bytes))
    }

    fn take_fault(&self, route: &str) -> Option<Fault> {
        let mut state = self.inner.lock().unwrap();
        let is_write = ["POST ", "PUT ", "PATCH "]
            .iter()
            .any(|m| route.starts_with(m))
            && !["search", "token", "query", "lookup", "filter"]
                .iter()
                .any(|read| route.contains(read));
        if let Some(chaos) = state.chaos.as_mut().filter(|_| is_write) {
            // xorshift64: small, seeded, good enough to spread faults.
            chaos.seed ^= chaos.seed << 13;
            chaos.seed ^= chaos.seed >> 7;
            chaos.seed ^= chaos.seed << 17;
            let draw = (chaos.seed % 100) as u32;
            if draw < chaos.lost_answer_percent {
                return Some(Fault::lose_answer());
            }
            if draw < chaos.lost_answer_percent + chaos.error_percent {
                let status = if draw.is_multiple_of(2) { 503 } else { 429 };
                return Some(Fault::status(status).retry_after(0));
            }
        }
        let index = state.faults.iter().position(|f| {
            f.matching
                .as_deref()
                .is_none_or(|m| route_matches(route, m))
        })?;
        let fault = state.faults[index].clone();
        if fault.times <= 1 {
            state.faults.remove(index);
        } else {
            state.faults[index].times -= 1;
        }
        Some(fault)
    }
}

/// Whether `route` contains `pattern`; a pattern ending in `$` must end the route.
fn route_matches(route: &str, pattern: &str) -> bool {
    match pattern.strip_suffix('$') {
        Some(tail) => route.ends_with(tail),
        None => route.contains(pattern),
    }
}

/// How a CRM words an error of a given status (each CRM has its own error body).
pub type ErrorBody = fn(StatusCode) -> Value;

#[derive(Clone)]
struct Layer {
    control: Control,
    error_body: ErrorBody,
}

async fn fault_layer(State(layer): State<Layer>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, 16 * 1024 * 1024).await.unwrap_or_default();
    let route = format!("{} {}", parts.method, parts.uri.path());
    if parts.uri.path().starts_with("/__emulator") {
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    }
    let index = {
        let mut state = layer.control.inner.lock().unwrap();
        state.requests.push(RecordedRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            // SugarCRM sends its token as `OAuth-Token`.
            authorization: ["authorization", "oauth-token"]
                .iter()
                .find_map(|h| parts.headers.get(*h))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            status: None,
            response: Value::Null,
            injected: false,
        });
        state.requests.len() - 1
    };
    if let Some(fault) = layer.control.take_fault(&route) {
        if fault.lose_answer {
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            let response = layer.control.record_response(index, response).await;
            tokio::time::sleep(Duration::from_millis(fault.delay_ms.max(60_000))).await;
            return response;
        }
        if fault.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
        }
        if let Some(status) = fault.status {
            if let Some(request) = layer.control.inner.lock().unwrap().requests.get_mut(index) {
                request.injected = true;
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, Json((layer.error_body)(status))).into_response();
            if let Some(seconds) = fault.retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(seconds));
            }
            return layer.control.record_response(index, response).await;
        }
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    layer.control.record_response(index, response).await
}

/// Admin routes, for driving an emulator that runs as its own process.
fn admin_routes(control: Control) -> Router {
    Router::new()
        .route(
            "/__emulator/faults",
            post(
                |State(c): State<Control>, Json(fault): Json<Fault>| async move {
                    c.inject(fault);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/__emulator/faults",
            delete(|State(c): State<Control>| async move {
                c.clear_faults();
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/__emulator/requests",
            get(|State(c): State<Control>| async move { Json(json!(c.requests())) }),
        )
        .route(
            "/__emulator/requests/count",
            get(|State(c): State<Control>| async move {
                let counts = c.counts();
                Json(
                    json!({ "count": counts.requests, "rateLimited": counts.rate_limited,
                             "injectedRateLimited": counts.injected_rate_limited }),
                )
            }),
        )
        .with_state(control)
}

/// A running emulator.
pub struct RunningEmulator {
    pub base_url: String,
    pub control: Control,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `routes` (a CRM's API) behind the fault layer on `addr` (port 0 picks a free one).
pub async fn serve(
    routes: Router,
    error_body: ErrorBody,
    addr: SocketAddr,
) -> std::io::Result<RunningEmulator> {
    let control = Control::default();
    let app = routes
        .merge(admin_routes(control.clone()))
        .layer(middleware::from_fn_with_state(
            Layer {
                control: control.clone(),
                error_body,
            },
            fault_layer,
        ));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(RunningEmulator {
        base_url,
        control,
        task,
    })
}

/// A request budget per fixed window (CRMs that limit per hour or per day per account).
#[derive(Debug, Clone)]
pub struct RequestBudget {
    pub limit: u32,
    window: chrono::Duration,
    started: chrono::DateTime<chrono::Utc>,
    used: u32,
}

impl RequestBudget {
    pub fn new(limit: u32, window: chrono::Duration) -> Self {
        RequestBudget {
            limit,
            window,
            started: chrono::Utc::now(),
            used: 0,
        }
    }

    /// Counts one request; `Err(seconds until the window resets)` once the budget is spent.
    pub fn take(&mut self) -> Result<u32, u64> {
        let now = chrono::Utc::now();
        if now - self.started >= self.window {
            self.started = now;
            self.used = 0;
        }
        if self.used >= self.limit {
            let left = (self.started + self.window - now).num_seconds().max(1);
            return Err(left as u64);
        }
        self.used += 1;
        Ok(self.limit - self.used)
    }
}

/// A rolling-window limit, as HubSpot's ten-secondly and Pipedrive's 2-second limits are: at
/// most `limit` requests in any `window`.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    pub limit: u32,
    pub window: std::time::Duration,
    sent: VecDeque<std::time::Instant>,
}

impl SlidingWindow {
    pub fn new(limit: u32, window: std::time::Duration) -> Self {
        SlidingWindow {
            limit,
            window,
            sent: VecDeque::new(),
        }
    }

    /// No limit any more (tests whose volume is not about rate limits).
    pub fn lift(&mut self) {
        self.limit = u32::MAX;
    }

    fn forget_old(&mut self, now: std::time::Instant) {
        while self
            .sent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= self.window)
        {
            self.sent.pop_front();
        }
    }

    /// Counts one request: `Ok(requests left in the window)`, or `Err(time until one is free)`.
    pub fn take(&mut self) -> Result<u32, std::time::Duration> {
        if self.limit == u32::MAX {
            return Ok(u32::MAX);
        }
        let now = std::time::Instant::now();
        self.forget_old(now);
        if self.sent.len() as u64 >= u64::from(self.limit) {
            let oldest = *self.sent.front().expect("a full window holds requests");
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        self.sent.push_back(now);
        Ok(self.limit.saturating_sub(self.sent.len() as u32))
    }

    /// Requests still allowed in the window now.
    pub fn remaining(&mut self) -> u32 {
        self.forget_old(std::time::Instant::now());
        self.limit.saturating_sub(self.sent.len() as u32)
    }
}

/// Ids as CRMs hand them out: increasing numbers, as strings.
#[derive(Debug)]
pub struct IdSequence(u64);

impl IdSequence {
    pub fn starting_at(first: u64) -> Self {
        IdSequence(first)
    }
    pub fn last(&self) -> u64 {
        self.0
    }
    pub fn next_id(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}
