//! The store suite against the embedded local stores and against moto's Secrets Manager and
//! DynamoDB (started by `make test`).

use std::sync::Arc;

use crm_sync::store::aws::{DynamoDbSyncRecordStore, SecretsManagerConnectionStore};
use crm_sync::store::local::{LocalConnectionStore, LocalSyncRecordStore};
use crm_sync_tests::harness::{TempDir, aws_stores};
use crm_sync_tests::store_suite::*;

async fn dynamodb_store() -> DynamoDbSyncRecordStore {
    aws_stores().await.1
}

async fn secrets_store() -> SecretsManagerConnectionStore {
    aws_stores().await.0
}

#[tokio::test]
async fn local_connections_round_trip() {
    let dir = TempDir::new("stores");
    connections_round_trip(&LocalConnectionStore::new(dir.path())).await;
}

#[tokio::test]
async fn secrets_manager_connections_round_trip() {
    connections_round_trip(&secrets_store().await).await;
}

#[tokio::test]
async fn local_records_round_trip_with_conditional_writes() {
    let dir = TempDir::new("stores");
    records_round_trip_with_conditional_writes(&LocalSyncRecordStore::new(dir.path())).await;
}

#[tokio::test]
async fn dynamodb_records_round_trip_with_conditional_writes() {
    records_round_trip_with_conditional_writes(&dynamodb_store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_racing_creates_have_exactly_one_winner() {
    let dir = TempDir::new("stores");
    racing_creates_have_exactly_one_winner(Arc::new(LocalSyncRecordStore::new(dir.path()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_racing_creates_have_exactly_one_winner() {
    racing_creates_have_exactly_one_winner(Arc::new(dynamodb_store().await)).await;
}

#[tokio::test]
async fn local_records_list_by_status_oldest_first() {
    let dir = TempDir::new("stores");
    records_list_by_status_oldest_first(&LocalSyncRecordStore::new(dir.path())).await;
}

#[tokio::test]
async fn dynamodb_records_list_by_status_oldest_first() {
    records_list_by_status_oldest_first(&dynamodb_store().await).await;
}

#[tokio::test]
async fn local_leases_are_exclusive_until_released_or_expired() {
    let dir = TempDir::new("stores");
    leases_are_exclusive_until_released_or_expired(&LocalSyncRecordStore::new(dir.path())).await;
}

#[tokio::test]
async fn dynamodb_leases_are_exclusive_until_released_or_expired() {
    leases_are_exclusive_until_released_or_expired(&dynamodb_store().await).await;
}
