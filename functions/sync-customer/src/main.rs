//! `sync-customer`: the Lambda function behind the API's sync-customer endpoint.

use crm_sync::http::{Operation, handle};
use lambda_http::{Error, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    crm_sync::telemetry::init();
    let app = crm_sync::App::from_env().await;
    run(service_fn(|request| {
        handle(&app, Operation::SyncCustomer, request)
    }))
    .await
}
