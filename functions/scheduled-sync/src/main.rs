//! `scheduled-sync`: run on a schedule by EventBridge, syncs what is due (queued batch items,
//! transient failures, lost answers, abandoned syncs) until its time budget runs out.

use crm_sync::sync::TimeBudget;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    crm_sync::telemetry::init();
    let app = crm_sync::App::from_env().await;
    let app = &app;
    run(service_fn(|event: LambdaEvent<Value>| async move {
        // Records in flight when the budget ends still finish before the function's timeout.
        let budget =
            TimeBudget::before_deadline(event.context.deadline(), app.config.drain_reserve);
        let summary = app.scheduled_sync(&budget).await?;
        Ok::<_, Error>(serde_json::to_value(summary)?)
    }))
    .await
}
