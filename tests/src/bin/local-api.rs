//! Serves every function's handler at `http://ADDR/lambda-url/<function>`, the paths `make dev`
//! serves them at, in one process: `local-api [--listen ADDR]`, stores and API key from the same
//! environment as the functions. Tests that call the API over HTTP (the n8n workflows, the
//! Schemathesis run) use it instead of `cargo lambda watch`, which builds and starts one binary per
//! function and answers 500 itself to bodies that are not UTF-8. Each request reaches crm-sync as
//! API Gateway and the Lambda runtime deliver it (`crm_sync_tests::gateway`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body as AxumBody, to_bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use crm_sync::App;

/// API Gateway's payload limit; a larger body is refused before any function sees it.
const MAX_BODY: usize = 10 * 1024 * 1024;

type Failure = Box<dyn std::error::Error>;

// ---- connect links: the three connect functions, at /lambda-url/connect-{sessions,page,callback}
// (their binaries' names, as `cargo lambda watch` serves them) and at the stack's own paths,
// /lambda-url/connect and /lambda-url/connect/callback (as openapi.yaml names them).

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
        "connect-page" | "connect" => http::page(&service, event).await,
        "connect-callback" | "callback" => http::callback(&service, event).await,
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
    let functions = ["connect-sessions", "connect-page", "connect-callback"];
    for function in functions.into_iter().chain(["connect", "connect/callback"]) {
        router = router
            .route(&format!("/lambda-url/{function}"), any(invoke_connect))
            .route(&format!("/lambda-url/{function}/"), any(invoke_connect));
    }
    router.with_state(service)
}

/// The request as API Gateway and the Lambda runtime hand it to a function.
async fn lambda_event(request: Request) -> Result<lambda_http::Request, Response> {
    let resource = request.uri().path().to_string();
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response());
    };
    let event = crm_sync_tests::gateway::proxy_event(&resource, &parts, &bytes);
    lambda_http::request::from_str(&event.to_string())
        .map_err(|_| (StatusCode::BAD_GATEWAY, "Internal server error").into_response())
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
    let router = crm_sync_tests::gateway::router(app).merge(connect_routes().await);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("crm-sync functions on http://{listen}/lambda-url/<function>");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        })
        .await?;
    Ok(())
}
