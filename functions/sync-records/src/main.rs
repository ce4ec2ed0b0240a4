//! `sync-records`: the Lambda function behind `GET sync-records` and `POST sync-records/replay`.

use crm_sync::http::{Operation, handle_by_method};
use lambda_http::{Error, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    crm_sync::telemetry::init();
    let app = crm_sync::App::from_env().await;
    let operations = [Operation::SyncRecords, Operation::ReplaySyncRecords];
    run(service_fn(|request| {
        handle_by_method(&app, &operations, request)
    }))
    .await
}
