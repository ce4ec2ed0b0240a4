//! The HTTP side of API Gateway in front of the functions, for tests that call crm-sync over
//! HTTP: every handler served at `/lambda-url/<function>` and below it (the paths `make dev`
//! serves; `sync-records` serves a GET and a POST `replay` sub-path, one per method), each
//! request handed over as API Gateway (REST API, Lambda proxy integration, payload 1.0) and the
//! Lambda runtime deliver it. The proxy event's JSON is built (headers and multiValueHeaders,
//! decoded query parameters, requestContext, the body, base64 with `isBase64Encoded` when it is
//! not UTF-8) and read by lambda_http's own event parsing. A function that fails or panics
//! answers 502, as API Gateway does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::{Body as AxumBody, to_bytes};
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use crm_sync::App;
use crm_sync::http::{Operation, handle_by_method};
use serde_json::{Value, json};

/// API Gateway's payload limit; a larger body is refused before any function sees it.
const MAX_BODY: usize = 10 * 1024 * 1024;

/// The deployed stage and base path (infra/template.yaml), as the events name them.
const STAGE: &str = "dev";
const BASE_PATH: &str = "/api/v1/integrations/crm";

/// Every function's handler at `/lambda-url/<function>`, with a trailing `/`, and below it.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/lambda-url/{function}", any(invoke))
        .route("/lambda-url/{function}/", any(invoke))
        .route("/lambda-url/{function}/{*rest}", any(invoke))
        .with_state(app)
}

/// The operations a function serves (`sync-records` serves two, one per method).
pub fn operations(function: &str) -> Vec<Operation> {
    [
        Operation::Platforms,
        Operation::TestConnection,
        Operation::SyncCustomer,
        Operation::SyncAppointment,
        Operation::SyncLead,
        Operation::GetCustomer,
        Operation::SyncBatch,
        Operation::SyncRecords,
        Operation::ReplaySyncRecords,
    ]
    .into_iter()
    .filter(|op| op.name().split('/').next() == Some(function))
    .collect()
}

async fn invoke(
    State(app): State<Arc<App>>,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
) -> Response {
    let function = params.get("function").map(String::as_str).unwrap_or("");
    let operations = operations(function);
    if operations.is_empty() {
        return (StatusCode::NOT_FOUND, "no such function").into_response();
    }
    let resource = match params.get("rest").filter(|rest| !rest.is_empty()) {
        Some(rest) => format!("{BASE_PATH}/{function}/{rest}"),
        None => format!("{BASE_PATH}/{function}"),
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return gateway_error(StatusCode::PAYLOAD_TOO_LARGE, "Request Too Long");
    };
    let event = proxy_event(&resource, &parts, &bytes);
    // What the runtime does with the invocation payload before the handler runs.
    let request = match lambda_http::request::from_str(&event.to_string()) {
        Ok(request) => request,
        Err(error) => {
            tracing::error!(%error, "the proxy event did not parse");
            return gateway_error(StatusCode::BAD_GATEWAY, "Internal server error");
        }
    };
    // Its own task, so a panic is a failed invocation (502), not a dropped connection.
    let invocation = tokio::spawn(async move {
        let Ok(response) = handle_by_method(&app, &operations, request).await;
        lambda_http::IntoResponse::into_response(response).await
    });
    match invocation.await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, AxumBody::from(body.to_vec()))
        }
        Err(_) => gateway_error(StatusCode::BAD_GATEWAY, "Internal server error"),
    }
}

/// API Gateway's REST API proxy event (payload 1.0) for one request to `resource` (the path
/// below the stage: the resources have no path parameters, so it is the resource too).
pub fn proxy_event(resource: &str, parts: &Parts, body: &[u8]) -> Value {
    let mut headers = BTreeMap::<String, String>::new();
    let mut multi_headers = BTreeMap::<String, Vec<String>>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.insert(name.to_string(), value.clone());
        multi_headers
            .entry(name.to_string())
            .or_default()
            .push(value);
    }
    let mut query = BTreeMap::<String, String>::new();
    let mut multi_query = BTreeMap::<String, Vec<String>>::new();
    for (name, value) in url_pairs(parts.uri.query().unwrap_or("")) {
        query.insert(name.clone(), value.clone());
        multi_query.entry(name).or_default().push(value);
    }
    // API Gateway passes UTF-8 bodies as text and anything else base64-encoded.
    let (body, is_base64) = match std::str::from_utf8(body) {
        _ if body.is_empty() => (Value::Null, false),
        Ok(text) => (json!(text), false),
        Err(_) => (
            json!(base64::engine::general_purpose::STANDARD.encode(body)),
            true,
        ),
    };
    let nullable = |map: Value| match map.as_object() {
        Some(m) if m.is_empty() => Value::Null,
        _ => map,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let request_id = uuid::Uuid::new_v4().to_string();
    json!({
        "resource": resource,
        "path": resource,
        "httpMethod": parts.method.as_str(),
        "headers": nullable(json!(headers)),
        "multiValueHeaders": nullable(json!(multi_headers)),
        "queryStringParameters": nullable(json!(query)),
        "multiValueQueryStringParameters": nullable(json!(multi_query)),
        "pathParameters": null,
        "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "resourceId": "local",
            "resourcePath": resource,
            "httpMethod": parts.method.as_str(),
            "path": format!("/{STAGE}{resource}"),
            "stage": STAGE,
            "protocol": "HTTP/1.1",
            "requestId": request_id,
            "extendedRequestId": request_id,
            "requestTimeEpoch": now,
            "domainName": headers.get("host").cloned().unwrap_or_else(|| "localhost".into()),
            "identity": {
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("user-agent"),
                "apiKey": headers.get("x-api-key"),
            },
        },
        "body": body,
        "isBase64Encoded": is_base64,
    })
}

/// An answer API Gateway gives itself, in its shape: `{"message": …}`.
fn gateway_error(status: StatusCode, message: &str) -> Response {
    let mut response = (status, json!({ "message": message }).to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `a=1&b=x%40y` as decoded pairs (`+` a space, as API Gateway decodes query strings).
fn url_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}
