//! Serves every function's handler at `http://ADDR/lambda-url/<function>`, the paths `make dev`
//! serves them at, in one process: `local-api [--listen ADDR]`, stores and API key from the same
//! environment as the functions. Tests that call the API over HTTP (the n8n workflows, the
//! Schemathesis run) use it instead of `cargo lambda watch`, which builds and starts one binary per
//! function and answers 500 itself to bodies that are not UTF-8. Each request reaches crm-sync as
//! API Gateway and the Lambda runtime deliver it (`crm_sync_tests::gateway`).

use std::net::SocketAddr;
use std::sync::Arc;

use crm_sync::App;

type Failure = Box<dyn std::error::Error>;

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
    let router = crm_sync_tests::gateway::router(app);
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
