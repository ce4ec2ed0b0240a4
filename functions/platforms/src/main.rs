//! `platforms`: the Lambda function behind the API's platforms endpoint. It answers from the
//! configuration alone (no stores, no AWS or CRM clients), so its binary carries none of them.

use lambda_http::{Error, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    crm_sync::telemetry::init();
    let config = crm_sync::config::Config::from_env();
    run(service_fn(|request| {
        crm_sync::http::handle_platforms(&config, request)
    }))
    .await
}
