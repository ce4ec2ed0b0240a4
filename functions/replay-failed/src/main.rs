//! `replay-failed`: run on a schedule by EventBridge, syncs failed and abandoned records again.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

/// Records per run; the rest wait for the next run (the function's timeout bounds the work).
const BATCH: usize = 200;

#[tokio::main]
async fn main() -> Result<(), Error> {
    crm_sync::telemetry::init();
    let app = crm_sync::App::from_env().await;
    run(service_fn(|_event: LambdaEvent<Value>| async {
        let summary = app.replay_failed(BATCH).await?;
        Ok::<_, Error>(serde_json::to_value(summary)?)
    }))
    .await
}
