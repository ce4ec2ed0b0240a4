//! The rate-budget store suite against the local files and against DynamoDB on moto (started by
//! `make test`): conditional takes, refill, and fifty concurrent takers that never get more than
//! the bucket, in a bounded number of writes.

use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use crm_sync::store::budget::BudgetStore;
use crm_sync::store::budget_dynamodb::DynamoDbBudgetStore;
use crm_sync::store::budget_local::LocalBudgetStore;
use crm_sync_tests::budget_suite::*;
use crm_sync_tests::harness::{TempDir, aws_sdk_config};
use crm_sync_tests::store_suite::create_records_table;

/// Counts the DynamoDB operations the SDK sends, by name.
#[derive(Debug, Clone, Default)]
struct Operations(Arc<Mutex<Vec<String>>>);

impl Intercept for Operations {
    fn name(&self) -> &'static str {
        "Operations"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("unknown");
        let operation = target.rsplit('.').next().unwrap_or(target).to_string();
        self.0.lock().unwrap().push(operation);
        Ok(())
    }
}

impl Operations {
    fn count(&self, name: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|o| *o == name).count()
    }
}

/// A budget store on a fresh table (as the template defines it), its operations counted.
async fn dynamodb() -> (DynamoDbBudgetStore, Operations) {
    let sdk = aws_sdk_config().await;
    let table = format!("records-{}", uuid::Uuid::new_v4());
    create_records_table(&aws_sdk_dynamodb::Client::new(&sdk), &table).await;
    let operations = Operations::default();
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(operations.clone())
            .build(),
    );
    (DynamoDbBudgetStore::new(client, table), operations)
}

#[tokio::test]
async fn local_takes_are_granted_until_the_bucket_is_empty() {
    let dir = TempDir::new("budget");
    takes_are_granted_until_the_bucket_is_empty(&LocalBudgetStore::new(dir.path())).await;
}

#[tokio::test]
async fn dynamodb_takes_are_conditional_updates_granted_until_the_bucket_is_empty() {
    let (store, operations) = dynamodb().await;
    takes_are_granted_until_the_bucket_is_empty(&store).await;
    assert_eq!(
        operations.count("GetItem") + operations.count("PutItem"),
        0,
        "a take is an UpdateItem, with no read before it"
    );
}

#[tokio::test]
async fn local_bucket_refills_at_its_rate() {
    let dir = TempDir::new("budget");
    the_bucket_refills_at_its_rate(&LocalBudgetStore::new(dir.path())).await;
}

#[tokio::test]
async fn dynamodb_bucket_refills_at_its_rate() {
    the_bucket_refills_at_its_rate(&dynamodb().await.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_fifty_concurrent_takers_never_exceed_the_bucket() {
    let dir = TempDir::new("budget");
    let store: Arc<dyn BudgetStore> = Arc::new(LocalBudgetStore::new(dir.path()));
    fifty_concurrent_takers_never_exceed_the_bucket(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_fifty_concurrent_takers_never_exceed_the_bucket_in_at_most_two_writes_a_take() {
    let (store, operations) = dynamodb().await;
    let attempts = fifty_concurrent_takers_never_exceed_the_bucket(Arc::new(store)).await;
    let writes = operations.count("UpdateItem");
    assert!(
        writes <= 2 * attempts,
        "{writes} UpdateItem calls for {attempts} takes: a take retries at most once"
    );
    println!("{attempts} takes by 50 takers, {writes} UpdateItem calls");
}
