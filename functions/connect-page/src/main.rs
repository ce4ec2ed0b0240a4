//! `connect-page`: the page a connect link opens (`GET`/`POST connect`, no API key).

use crm_sync::connect::{ConnectService, http};
use lambda_http::{Error, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    crm_sync::telemetry::init();
    let service = ConnectService::from_env().await;
    run(service_fn(|request| http::page(&service, request))).await
}
