//! Serves every function's handler at `http://ADDR/lambda-url/<function>`, the paths `make dev`
//! serves them at, in one process: `local-api [--listen ADDR]`, stores and API key from the same
//! environment as the functions. Tests that call the API over HTTP (the n8n workflows) use it
//! instead of `cargo lambda watch`, which builds and starts one binary per function.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body as AxumBody, to_bytes};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use crm_sync::App;
use crm_sync::http::{Operation, handle_by_method};
use lambda_http::RequestExt;

type Failure = Box<dyn std::error::Error>;

/// API Gateway's payload limit; a larger body is refused before any function sees it.
const MAX_BODY: usize = 10 * 1024 * 1024;

/// The operations a function serves (`sync-records` serves two, one per method).
fn operations(function: &str) -> Vec<Operation> {
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
    let operations = params
        .get("function")
        .map(|f| operations(f))
        .unwrap_or_default();
    if operations.is_empty() {
        return (StatusCode::NOT_FOUND, "no such function").into_response();
    }
    let event = match lambda_event(request).await {
        Ok(event) => event,
        Err(refused) => return refused,
    };
    let Ok(answer) = handle_by_method(&app, &operations, event).await;
    let (parts, body) = answer.into_parts();
    Response::from_parts(parts, AxumBody::from(body.to_vec()))
}

/// The request as the Lambda runtime hands it to a function.
async fn lambda_event(request: Request) -> Result<lambda_http::Request, Response> {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response());
    };
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<HashMap<String, String>>()
        })
        .unwrap_or_default();
    let mut event = lambda_http::http::Request::builder()
        .method(parts.method)
        .uri(parts.uri);
    for (name, value) in &parts.headers {
        event = event.header(name, value);
    }
    let Ok(event) = event.body(lambda_http::Body::from(bytes.to_vec())) else {
        return Err((StatusCode::BAD_REQUEST, "unreadable request").into_response());
    };
    Ok(event.with_query_string_parameters(query))
}

/// `a=1&b=x%40y` as decoded pairs.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push(high * 16 + low);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---- connect links: the three connect functions, at /lambda-url/connect-{sessions,page,callback}

/// The connect function the path names, with the request.
async fn invoke_connect(
    State(service): State<Arc<crm_sync::connect::ConnectService>>,
    request: Request,
) -> Response {
    use crm_sync::connect::http;
    let function = request
        .uri()
        .path()
        .trim_end_matches('/')
        .rsplit('/')
        .next();
    let function = function.unwrap_or_default().to_string();
    let event = match lambda_event(request).await {
        Ok(event) => event,
        Err(refused) => return refused,
    };
    let answer = match function.as_str() {
        "connect-sessions" => http::create_session(&service, event).await,
        "connect-page" => http::page(&service, event).await,
        "connect-callback" => http::callback(&service, event).await,
        _ => return (StatusCode::NOT_FOUND, "no such function").into_response(),
    };
    let Ok(answer) = answer;
    let (parts, body) = answer.into_parts();
    Response::from_parts(parts, AxumBody::from(body.to_vec()))
}

/// The connect functions' routes, which take precedence over `{function}`.
async fn connect_routes() -> Router {
    let service = Arc::new(crm_sync::connect::ConnectService::from_env().await);
    let mut router = Router::new();
    for function in ["connect-sessions", "connect-page", "connect-callback"] {
        router = router
            .route(&format!("/lambda-url/{function}"), any(invoke_connect))
            .route(&format!("/lambda-url/{function}/"), any(invoke_connect));
    }
    router.with_state(service)
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    crm_sync::telemetry::init();
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("127.0.0.1:9000")
        .parse()?;
    let app = Arc::new(App::from_env().await);
    let router = Router::new()
        .route("/lambda-url/{function}", any(invoke))
        .route("/lambda-url/{function}/", any(invoke))
        .route("/lambda-url/{function}/{*rest}", any(invoke))
        .with_state(app)
        .merge(connect_routes().await);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("crm-sync functions on http://{listen}/lambda-url/<function>");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
