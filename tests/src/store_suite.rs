//! One suite for every store implementation: the local files and the AWS stores (on moto) must
//! behave the same, conditional writes included.

use std::sync::Arc;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use chrono::{Duration, Utc};
use crm_sync::connection::{ConnectionId, SecretString};
use crm_sync::domain::CrmType;
use crm_sync::error::Error;
use crm_sync::store::aws::{BATCH_INDEX, CONNECTION_INDEX, STATUS_INDEX, SYNC_ID_INDEX};
use crm_sync::store::{
    ConnectionStore, EntityKind, RecordQuery, RecordedError, SyncRecord, SyncRecordStore,
    SyncStatus, WriteOutcome,
};
use serde_json::json;

use crate::harness::connection;

pub fn sample_record(source_key: &str, status: SyncStatus) -> SyncRecord {
    let now = Utc::now();
    SyncRecord {
        sync_id: uuid::Uuid::new_v4().to_string(),
        connection_id: "suite".into(),
        crm_type: CrmType::Hubspot,
        entity: EntityKind::Customer,
        source_key: source_key.into(),
        crm_id: None,
        status,
        attempts: 1,
        last_error: None,
        payload_hash: "abc123".into(),
        payload: json!({"email": "suite@example.com", "firstName": "Zoë"}),
        created_at: now,
        updated_at: now,
        version: 1,
        batch_id: None,
        queued: false,
        expires_at: None,
    }
}

pub async fn connections_round_trip(store: &dyn ConnectionStore) {
    let id = ConnectionId::parse("acme-hubspot").unwrap();
    assert!(matches!(
        store.get(&id).await,
        Err(Error::ConnectionNotFound(_))
    ));
    let mut stored = connection(
        CrmType::Hubspot,
        "http://127.0.0.1:1",
        &[("accessToken", "suite-token-1")],
    );
    stored.settings.default_timezone = Some("Europe/Berlin".into());
    store.put(&id, &stored).await.unwrap();
    let read = store.get(&id).await.unwrap();
    assert_eq!(read.crm_type, CrmType::Hubspot);
    assert_eq!(
        read.credential("accessToken").unwrap().expose(),
        "suite-token-1"
    );
    assert_eq!(
        read.settings.default_timezone.as_deref(),
        Some("Europe/Berlin")
    );
    assert_eq!(read.id.as_ref(), Some(&id));

    // A token refresh writes the connection back.
    stored
        .credentials
        .insert("accessToken".into(), SecretString::new("suite-token-2"));
    store.put(&id, &stored).await.unwrap();
    assert_eq!(
        store
            .get(&id)
            .await
            .unwrap()
            .credential("accessToken")
            .unwrap()
            .expose(),
        "suite-token-2"
    );

    let ids: Vec<String> = store
        .list()
        .await
        .unwrap()
        .iter()
        .map(|i| i.to_string())
        .collect();
    assert_eq!(ids, vec!["acme-hubspot".to_string()]);
    store.delete(&id).await.unwrap();
    assert!(matches!(
        store.get(&id).await,
        Err(Error::ConnectionNotFound(_))
    ));
}

pub async fn records_round_trip_with_conditional_writes(store: &dyn SyncRecordStore) {
    let mut record = sample_record("email:suite@example.com", SyncStatus::Pending);
    assert_eq!(store.get(&record.key()).await.unwrap(), None);
    assert_eq!(
        store.put(&record, None).await.unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(
        store.put(&record, None).await.unwrap(),
        WriteOutcome::Conflict,
        "create only once"
    );

    let read = store.get(&record.key()).await.unwrap().expect("stored");
    assert_eq!(read.sync_id, record.sync_id);
    assert_eq!(read.payload, record.payload);
    assert_eq!(read.status, SyncStatus::Pending);

    record.version = 2;
    record.status = SyncStatus::Failed;
    record.last_error = Some(RecordedError {
        code: "crm_unavailable".into(),
        message: "HTTP 503".into(),
        transient: true,
    });
    assert_eq!(
        store.put(&record, Some(5)).await.unwrap(),
        WriteOutcome::Conflict,
        "stale version refused"
    );
    assert_eq!(
        store.put(&record, Some(1)).await.unwrap(),
        WriteOutcome::Written
    );
    let read = store.get(&record.key()).await.unwrap().unwrap();
    assert_eq!(read.version, 2);
    assert_eq!(read.last_error, record.last_error);

    record.version = 3;
    record.status = SyncStatus::Synced;
    record.crm_id = Some("9001".into());
    record.last_error = None;
    record.batch_id = Some("batch-7".into());
    let expires = chrono::DateTime::from_timestamp(Utc::now().timestamp() + 86_400, 0).unwrap();
    record.expires_at = Some(expires);
    assert_eq!(
        store.put(&record, Some(2)).await.unwrap(),
        WriteOutcome::Written
    );
    let read = store.get(&record.key()).await.unwrap().unwrap();
    assert_eq!(read.crm_id.as_deref(), Some("9001"));
    assert_eq!(read.last_error, None);
    assert_eq!(read.batch_id.as_deref(), Some("batch-7"));
    assert_eq!(
        read.expires_at,
        Some(expires),
        "the TTL attribute, in seconds"
    );
    assert!(!read.queued);
}

pub async fn racing_creates_have_exactly_one_winner(store: Arc<dyn SyncRecordStore>) {
    let record = sample_record("phone:+14155550100", SyncStatus::Pending);
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let (store, record) = (store.clone(), record.clone());
            tokio::spawn(async move { store.put(&record, None).await.unwrap() })
        })
        .collect();
    let mut written = 0;
    for attempt in attempts {
        if attempt.await.unwrap() == WriteOutcome::Written {
            written += 1;
        }
    }
    assert_eq!(written, 1);
}

pub async fn records_list_by_status_oldest_first(store: &dyn SyncRecordStore) {
    let base = Utc::now() - Duration::minutes(10);
    for (i, status) in [
        SyncStatus::Failed,
        SyncStatus::Synced,
        SyncStatus::Failed,
        SyncStatus::Failed,
    ]
    .iter()
    .enumerate()
    {
        let mut record = sample_record(&format!("email:list{i}@example.com"), *status);
        // Written newest first, so the order below comes from the store, not from insertion.
        record.updated_at = base - Duration::seconds(i as i64);
        store.put(&record, None).await.unwrap();
    }
    let failed = store.list_by_status(SyncStatus::Failed, 10).await.unwrap();
    let keys: Vec<&str> = failed.iter().map(|r| r.source_key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "email:list3@example.com",
            "email:list2@example.com",
            "email:list0@example.com"
        ]
    );
    assert_eq!(
        store
            .list_by_status(SyncStatus::Failed, 2)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .list_by_status(SyncStatus::Synced, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Creates the sync-record table as `infra/template.yaml` defines it: key `pk`, GSIs on status,
/// sync id, connection and batch.
pub async fn create_records_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    let index = |name: &str, hash: &str, range: Option<&str>, projection: ProjectionType| {
        let mut index = GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(hash, KeyType::Hash))
            .projection(Projection::builder().projection_type(projection).build());
        if let Some(range) = range {
            index = index.key_schema(key(range, KeyType::Range));
        }
        index.build().unwrap()
    };
    let mut table = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash))
        .global_secondary_indexes(index(
            STATUS_INDEX,
            "status",
            Some("updatedAt"),
            ProjectionType::All,
        ))
        .global_secondary_indexes(index(
            SYNC_ID_INDEX,
            "syncId",
            None,
            ProjectionType::KeysOnly,
        ))
        .global_secondary_indexes(index(
            CONNECTION_INDEX,
            "connectionId",
            Some("listKey"),
            ProjectionType::All,
        ))
        .global_secondary_indexes(index(
            BATCH_INDEX,
            "batchKey",
            Some("listKey"),
            ProjectionType::All,
        ));
    for name in [
        "pk",
        "status",
        "updatedAt",
        "syncId",
        "connectionId",
        "listKey",
        "batchKey",
    ] {
        table = table.attribute_definitions(attribute(name));
    }
    table.send().await.expect("table created on moto");
}

/// Listing one connection's records: by status, by batch, paged with a cursor, counted; and a
/// record found by its sync id. Other connections' records never show.
pub async fn records_are_listed_by_connection_status_and_batch(store: &dyn SyncRecordStore) {
    let base = Utc::now() - Duration::minutes(10);
    let mut ids = Vec::new();
    for i in 0..7 {
        let status = if i % 3 == 0 {
            SyncStatus::Failed
        } else {
            SyncStatus::Pending
        };
        let mut record = sample_record(&format!("email:page{i}@example.com"), status);
        record.connection_id = if i == 6 {
            "other".into()
        } else {
            "paged".into()
        };
        record.updated_at = base + Duration::seconds(i);
        record.batch_id = (i < 4).then(|| "batch-1".to_string());
        record.queued = status == SyncStatus::Pending;
        store.put(&record, None).await.unwrap();
        ids.push(record.sync_id.clone());
    }
    let query = |status: Option<SyncStatus>, batch: Option<&str>| RecordQuery {
        connection_id: "paged".into(),
        status,
        batch_id: batch.map(str::to_string),
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_records(&query(None, None), cursor.as_deref(), 2)
            .await
            .unwrap();
        assert!(page.records.len() <= 2);
        seen.extend(page.records.iter().map(|r| r.sync_id.clone()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    // Failed (0, 3) before pending (1, 2, 4, 5), each oldest first.
    let expected: Vec<String> = [0, 3, 1, 2, 4, 5].iter().map(|i| ids[*i].clone()).collect();
    assert_eq!(seen, expected);

    let failed = store
        .list_records(&query(Some(SyncStatus::Failed), None), None, 10)
        .await
        .unwrap();
    assert_eq!(
        failed
            .records
            .iter()
            .map(|r| &r.sync_id)
            .collect::<Vec<_>>(),
        vec![&ids[0], &ids[3]]
    );
    let batch = store
        .list_records(&query(Some(SyncStatus::Pending), Some("batch-1")), None, 10)
        .await
        .unwrap();
    assert_eq!(
        batch.records.iter().map(|r| &r.sync_id).collect::<Vec<_>>(),
        vec![&ids[1], &ids[2]]
    );
    assert!(batch.records.iter().all(|r| r.queued));
    assert_eq!(
        store
            .count_records(&query(None, Some("batch-1")))
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        store
            .count_records(&query(Some(SyncStatus::Failed), Some("batch-1")))
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.count_records(&query(None, None)).await.unwrap(), 6);

    let found = store
        .find_by_sync_id(&ids[6])
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.connection_id, "other");
    assert_eq!(found.batch_id, None);
    assert_eq!(store.find_by_sync_id("no-such-id").await.unwrap(), None);
    let refused = store
        .list_records(&query(None, None), Some("not-a-cursor"), 2)
        .await
        .unwrap_err();
    assert_eq!(refused.field(), Some("cursor"));
}

pub async fn leases_are_exclusive_until_released_or_expired(store: &dyn SyncRecordStore) {
    let ttl = std::time::Duration::from_millis(400);
    assert!(
        store
            .try_acquire_lease("refresh#acme", "first", ttl)
            .await
            .unwrap()
    );
    assert!(
        !store
            .try_acquire_lease("refresh#acme", "second", ttl)
            .await
            .unwrap(),
        "held"
    );
    assert!(
        store
            .try_acquire_lease("refresh#other", "second", ttl)
            .await
            .unwrap(),
        "leases are per name"
    );
    store.release_lease("refresh#acme", "second").await.unwrap();
    assert!(
        !store
            .try_acquire_lease("refresh#acme", "second", ttl)
            .await
            .unwrap(),
        "only the owner releases"
    );
    store.release_lease("refresh#acme", "first").await.unwrap();
    assert!(
        store
            .try_acquire_lease("refresh#acme", "second", ttl)
            .await
            .unwrap(),
        "released"
    );
    tokio::time::sleep(ttl + std::time::Duration::from_millis(200)).await;
    assert!(
        store
            .try_acquire_lease("refresh#acme", "third", ttl)
            .await
            .unwrap(),
        "expired leases are taken over"
    );
    assert!(
        store
            .list_by_status(SyncStatus::Pending, 10)
            .await
            .unwrap()
            .is_empty(),
        "leases are not records"
    );
}
