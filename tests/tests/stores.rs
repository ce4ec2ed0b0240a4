//! The store suite against the embedded local stores and against moto's Secrets Manager and
//! DynamoDB (started by `make test`).

use std::sync::Arc;

use std::time::Duration;

use crm_sync::connection::ConnectionId;
use crm_sync::domain::CrmType;
use crm_sync::store::ConnectionStore;
use crm_sync::store::aws::{DynamoDbSyncRecordStore, SecretsManagerConnectionStore};
use crm_sync::store::cached::CachedConnectionStore;
use crm_sync::store::local::{LocalConnectionStore, LocalSyncRecordStore};
use crm_sync::store::memory::MemorySyncRecordStore;
use crm_sync_tests::harness::{TempDir, aws_stores, connection};
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
async fn local_records_are_listed_by_connection_status_and_batch() {
    let dir = TempDir::new("stores");
    records_are_listed_by_connection_status_and_batch(&LocalSyncRecordStore::new(dir.path())).await;
}

#[tokio::test]
async fn dynamodb_records_are_listed_by_connection_status_and_batch() {
    records_are_listed_by_connection_status_and_batch(&dynamodb_store().await).await;
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

#[tokio::test]
async fn cached_local_connections_round_trip() {
    let dir = TempDir::new("stores");
    let local = Arc::new(LocalConnectionStore::new(dir.path()));
    connections_round_trip(&CachedConnectionStore::new(local, Duration::from_secs(300))).await;
}

#[tokio::test]
async fn cached_secrets_manager_connections_round_trip() {
    let secrets = Arc::new(secrets_store().await);
    connections_round_trip(&CachedConnectionStore::new(
        secrets,
        Duration::from_secs(300),
    ))
    .await;
}

/// What another container or an operator writes is seen after the TTL, at once by `get_fresh`,
/// and after `invalidate` (a CRM refused the cached credentials); our own writes at once.
async fn cache_serves_from_memory_until_stale_refreshed_or_invalidated(
    underlying: Arc<dyn ConnectionStore>,
) {
    let id = ConnectionId::parse("cached").unwrap();
    let token = |t: &str| {
        connection(
            CrmType::Hubspot,
            "http://127.0.0.1:9",
            &[("accessToken", t)],
        )
    };
    let read = |connection: crm_sync::connection::Connection| {
        connection
            .credential("accessToken")
            .unwrap()
            .expose()
            .to_string()
    };
    underlying.put(&id, &token("one")).await.unwrap();
    let cache = CachedConnectionStore::new(underlying.clone(), Duration::from_millis(400));
    assert_eq!(read(cache.get(&id).await.unwrap()), "one");

    underlying.put(&id, &token("two")).await.unwrap();
    assert_eq!(
        read(cache.get(&id).await.unwrap()),
        "one",
        "served from memory"
    );
    cache.invalidate(&id);
    assert_eq!(
        read(cache.get(&id).await.unwrap()),
        "two",
        "read again after invalidate"
    );

    underlying.put(&id, &token("three")).await.unwrap();
    assert_eq!(read(cache.get_fresh(&id).await.unwrap()), "three");

    cache.put(&id, &token("four")).await.unwrap();
    assert_eq!(
        read(underlying.get(&id).await.unwrap()),
        "four",
        "written through"
    );
    assert_eq!(
        read(cache.get(&id).await.unwrap()),
        "four",
        "and remembered"
    );

    underlying.put(&id, &token("five")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        read(cache.get(&id).await.unwrap()),
        "five",
        "read again after the TTL"
    );

    cache.delete(&id).await.unwrap();
    assert!(
        cache.get(&id).await.is_err(),
        "a deleted connection is not served"
    );
}

#[tokio::test]
async fn local_cache_serves_from_memory_until_stale_refreshed_or_invalidated() {
    let dir = TempDir::new("stores");
    cache_serves_from_memory_until_stale_refreshed_or_invalidated(Arc::new(
        LocalConnectionStore::new(dir.path()),
    ))
    .await;
}

#[tokio::test]
async fn secrets_manager_cache_serves_from_memory_until_stale_refreshed_or_invalidated() {
    cache_serves_from_memory_until_stale_refreshed_or_invalidated(Arc::new(secrets_store().await))
        .await;
}

#[tokio::test]
async fn memory_records_round_trip_with_conditional_writes() {
    records_round_trip_with_conditional_writes(&MemorySyncRecordStore::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_racing_creates_have_exactly_one_winner() {
    racing_creates_have_exactly_one_winner(Arc::new(MemorySyncRecordStore::default())).await;
}

#[tokio::test]
async fn memory_records_list_by_status_oldest_first() {
    records_list_by_status_oldest_first(&MemorySyncRecordStore::default()).await;
}

#[tokio::test]
async fn memory_records_are_listed_by_connection_status_and_batch() {
    records_are_listed_by_connection_status_and_batch(&MemorySyncRecordStore::default()).await;
}

#[tokio::test]
async fn memory_leases_are_exclusive_until_released_or_expired() {
    leases_are_exclusive_until_released_or_expired(&MemorySyncRecordStore::default()).await;
}
