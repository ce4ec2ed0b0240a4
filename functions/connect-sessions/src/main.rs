//! `connect-sessions`: makes connect links (`POST connect-sessions`, API key).

use crm_sync::connect::{ConnectService, http};
use lambda_http::{Error, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    crm_sync::telemetry::init();
    let service = ConnectService::from_env().await;
    run(service_fn(|request| {
        http::create_session(&service, request)
    }))
    .await
}
