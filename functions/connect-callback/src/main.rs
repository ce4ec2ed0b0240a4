//! `connect-callback`: the CRM's OAuth redirect and the page's credentials form
//! (`GET`/`POST connect/callback`, no API key); the one function that stores connections.

use crm_sync::connect::{ConnectService, http};
use lambda_http::{Error, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    crm_sync::telemetry::init();
    let service = ConnectService::from_env().await;
    run(service_fn(|request| http::callback(&service, request))).await
}
