//! Production stores: connections in AWS Secrets Manager, sync records in DynamoDB.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use super::{
    ConnectionStore, IdempotentRequest, RecordKey, RecordPage, RecordQuery, RecordedError,
    SyncRecord, SyncRecordStore, SyncStatus, WriteOutcome, decode_cursor, encode_cursor,
    idempotency_key, lease_key,
};
use crate::connection::{Connection, ConnectionId};
use crate::error::{Error, Result};

/// The GSI that lists records by status, oldest update first.
pub const STATUS_INDEX: &str = "status-index";
/// The GSI that finds a record by its `syncId` (keys only; the item is then read by key).
pub const SYNC_ID_INDEX: &str = "sync-id-index";
/// The GSI that lists one connection's records by `listKey` (status, then oldest update first).
pub const CONNECTION_INDEX: &str = "connection-index";
/// The GSI that lists one batch's records (`batchKey` = connection and batch id) by `listKey`.
pub const BATCH_INDEX: &str = "batch-index";

fn sdk_error<E: std::error::Error + 'static, R: std::fmt::Debug>(
    service: &str,
    e: SdkError<E, R>,
) -> Error {
    // DisplayErrorContext walks the source chain; request bodies (which hold secrets) are not in it.
    Error::Store(format!(
        "{service}: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(&e)
    ))
}

/// The SDK configuration (region, credential chain, `AWS_ENDPOINT_URL`), loaded by the first AWS
/// call and shared by the clients built from it. Nothing is loaded at init, so an operation that
/// makes no AWS call (`platforms`) never pays for it.
#[derive(Clone, Default)]
pub struct LazySdkConfig(Arc<tokio::sync::OnceCell<SdkConfig>>);

impl LazySdkConfig {
    async fn get(&self) -> &SdkConfig {
        self.0.get_or_init(load_sdk_config).await
    }
}

/// The SDK configuration from the environment (region, credentials: on Lambda, the function's
/// role), sending through the process's one HTTP client.
pub async fn load_sdk_config() -> SdkConfig {
    sdk_config_loader().load().await
}

/// The SDK's default loader, with the process's one HTTP client.
pub fn sdk_config_loader() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(crate::transport::aws_http_client())
}

/// A client given ready-made (tests), or built from the shared SDK configuration on first use.
pub(crate) struct LazyClient<C> {
    client: tokio::sync::OnceCell<C>,
    sdk: LazySdkConfig,
    build: fn(&SdkConfig) -> C,
}

impl<C> LazyClient<C> {
    pub(crate) fn ready(client: C, build: fn(&SdkConfig) -> C) -> Self {
        LazyClient {
            client: tokio::sync::OnceCell::new_with(Some(client)),
            sdk: LazySdkConfig::default(),
            build,
        }
    }
    fn on_first_use(sdk: LazySdkConfig, build: fn(&SdkConfig) -> C) -> Self {
        LazyClient {
            client: tokio::sync::OnceCell::new(),
            sdk,
            build,
        }
    }
    pub(crate) async fn get(&self) -> &C {
        self.client
            .get_or_init(|| async { (self.build)(self.sdk.get().await) })
            .await
    }
}

/// Each connection is the secret `<prefix><id>` whose string value is the connection JSON.
pub struct SecretsManagerConnectionStore {
    client: LazyClient<aws_sdk_secretsmanager::Client>,
    prefix: String,
}

impl SecretsManagerConnectionStore {
    pub fn new(client: aws_sdk_secretsmanager::Client, prefix: impl Into<String>) -> Self {
        SecretsManagerConnectionStore {
            client: LazyClient::ready(client, aws_sdk_secretsmanager::Client::new),
            prefix: prefix.into(),
        }
    }
    /// A store whose client is built from `sdk` by its first call.
    pub fn lazy(sdk: LazySdkConfig, prefix: impl Into<String>) -> Self {
        SecretsManagerConnectionStore {
            client: LazyClient::on_first_use(sdk, aws_sdk_secretsmanager::Client::new),
            prefix: prefix.into(),
        }
    }
    /// What every connection secret's name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    fn name(&self, id: &ConnectionId) -> String {
        format!("{}{}", self.prefix, id.as_str())
    }
}

#[async_trait]
impl ConnectionStore for SecretsManagerConnectionStore {
    async fn get(&self, id: &ConnectionId) -> Result<Connection> {
        let out = self
            .client
            .get()
            .await
            .get_secret_value()
            .secret_id(self.name(id))
            .send()
            .await;
        match out {
            Ok(out) => {
                let json = out
                    .secret_string()
                    .ok_or_else(|| Error::ConnectionInvalid {
                        id: id.to_string(),
                        message: "the secret has no string value".into(),
                    })?;
                Connection::from_secret_json(id, json)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Err(Error::ConnectionNotFound(id.to_string()))
            }
            Err(e) => Err(sdk_error("Secrets Manager", e)),
        }
    }

    async fn put(&self, id: &ConnectionId, connection: &Connection) -> Result<()> {
        let json = connection.to_secret_json();
        let put = self
            .client
            .get()
            .await
            .put_secret_value()
            .secret_id(self.name(id))
            .secret_string(&json)
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                self.client
                    .get()
                    .await
                    .create_secret()
                    .name(self.name(id))
                    .description(format!(
                        "crm-sync connection {id} ({})",
                        connection.crm_type
                    ))
                    .secret_string(json)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| sdk_error("Secrets Manager", e))
            }
            Err(e) => Err(sdk_error("Secrets Manager", e)),
        }
    }

    async fn list(&self) -> Result<Vec<ConnectionId>> {
        let mut ids = Vec::new();
        let mut pages = self
            .client
            .get()
            .await
            .list_secrets()
            .filters(
                aws_sdk_secretsmanager::types::Filter::builder()
                    .key(aws_sdk_secretsmanager::types::FilterNameStringType::Name)
                    .values(&self.prefix)
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("Secrets Manager", e))?;
            for secret in page.secret_list() {
                if let Some(id) = secret.name().and_then(|n| n.strip_prefix(&self.prefix))
                    && let Ok(id) = ConnectionId::parse(id)
                {
                    ids.push(id);
                }
            }
        }
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(ids)
    }

    async fn delete(&self, id: &ConnectionId) -> Result<()> {
        // Removed at once: a secret kept for recovery would block re-adding a connection of that id.
        match self
            .client
            .get()
            .await
            .delete_secret()
            .secret_id(self.name(id))
            .force_delete_without_recovery(true)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Err(Error::ConnectionNotFound(id.to_string()))
            }
            Err(e) => Err(sdk_error("Secrets Manager", e)),
        }
    }
}

/// One item per record, keyed by `pk` = the record key.
pub struct DynamoDbSyncRecordStore {
    client: Arc<LazyClient<aws_sdk_dynamodb::Client>>,
    table: String,
}

impl DynamoDbSyncRecordStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoDbSyncRecordStore {
            client: Arc::new(LazyClient::ready(client, aws_sdk_dynamodb::Client::new)),
            table: table.into(),
        }
    }
    /// A store whose client is built from `sdk` by its first call.
    pub fn lazy(sdk: LazySdkConfig, table: impl Into<String>) -> Self {
        DynamoDbSyncRecordStore {
            client: Arc::new(LazyClient::on_first_use(sdk, aws_sdk_dynamodb::Client::new)),
            table: table.into(),
        }
    }
    pub fn table(&self) -> &str {
        &self.table
    }
    /// The accounts' rate budgets, in the same table through the same client.
    pub fn budget_store(&self) -> super::budget_dynamodb::DynamoDbBudgetStore {
        super::budget_dynamodb::DynamoDbBudgetStore::shared(self.client.clone(), &self.table)
    }
}

/// Sends a put that succeeds only over `expected_version` (`None`: only when no item exists).
async fn put_versioned(
    put: aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder,
    expected_version: Option<u64>,
) -> Result<WriteOutcome> {
    let put = match expected_version {
        None => put.condition_expression("attribute_not_exists(pk)"),
        Some(version) => put
            .condition_expression("#version = :expected")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":expected", n(version)),
    };
    match put.send().await {
        Ok(_) => Ok(WriteOutcome::Written),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
        {
            Ok(WriteOutcome::Conflict)
        }
        Err(e) => Err(sdk_error("DynamoDB", e)),
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Timestamps are stored as fixed-width RFC 3339 UTC so that they sort as strings in the GSI.
fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn to_item(record: &SyncRecord) -> Result<HashMap<String, AttributeValue>> {
    let mut item = HashMap::from([
        ("pk".to_string(), s(record.key().as_str())),
        ("syncId".into(), s(&record.sync_id)),
        ("connectionId".into(), s(&record.connection_id)),
        ("crmType".into(), s(record.crm_type.as_str())),
        ("entity".into(), s(record.entity.as_str())),
        ("sourceKey".into(), s(&record.source_key)),
        ("status".into(), s(record.status.as_str())),
        ("attempts".into(), n(record.attempts)),
        ("payloadHash".into(), s(&record.payload_hash)),
        ("payload".into(), s(record.payload.to_string())),
        ("createdAt".into(), s(timestamp(record.created_at))),
        ("updatedAt".into(), s(timestamp(record.updated_at))),
        ("version".into(), n(record.version)),
    ]);
    item.insert("listKey".into(), s(record.list_key()));
    if let Some(crm_id) = &record.crm_id {
        item.insert("crmId".into(), s(crm_id));
    }
    if let Some(batch_id) = &record.batch_id {
        item.insert("batchId".into(), s(batch_id));
        item.insert(
            "batchKey".into(),
            s(batch_key(&record.connection_id, batch_id)),
        );
    }
    if record.queued {
        item.insert("queued".into(), AttributeValue::Bool(true));
    }
    if let Some(expires_at) = record.expires_at {
        // The table's TTL attribute (epoch seconds).
        item.insert("expiresAt".into(), n(expires_at.timestamp()));
    }
    if let Some(error) = &record.last_error {
        let json = serde_json::to_string(error).map_err(|e| Error::Store(e.to_string()))?;
        item.insert("lastError".into(), s(json));
    }
    Ok(item)
}

fn from_item(item: &HashMap<String, AttributeValue>) -> Result<SyncRecord> {
    let text = |name: &str| -> Result<String> {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .ok_or_else(|| Error::Store(format!("sync record item lacks '{name}'")))
    };
    let number = |name: &str| -> Result<u64> {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Store(format!("sync record item lacks number '{name}'")))
    };
    let time = |name: &str| -> Result<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&text(name)?)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| Error::Store(format!("sync record '{name}': {e}")))
    };
    let bad = |name: &str| Error::Store(format!("sync record item has an invalid '{name}'"));
    Ok(SyncRecord {
        sync_id: text("syncId")?,
        connection_id: text("connectionId")?,
        crm_type: text("crmType")?.parse().map_err(|_| bad("crmType"))?,
        entity: serde_json::from_value(serde_json::Value::String(text("entity")?))
            .map_err(|_| bad("entity"))?,
        source_key: text("sourceKey")?,
        crm_id: text("crmId").ok(),
        status: SyncStatus::parse(&text("status")?).ok_or_else(|| bad("status"))?,
        attempts: number("attempts")? as u32,
        last_error: match text("lastError") {
            Ok(json) => {
                Some(serde_json::from_str::<RecordedError>(&json).map_err(|_| bad("lastError"))?)
            }
            Err(_) => None,
        },
        payload_hash: text("payloadHash")?,
        payload: serde_json::from_str(&text("payload")?).map_err(|_| bad("payload"))?,
        created_at: time("createdAt")?,
        updated_at: time("updatedAt")?,
        version: number("version")?,
        batch_id: text("batchId").ok(),
        queued: item
            .get("queued")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        expires_at: number("expiresAt")
            .ok()
            .and_then(|t| DateTime::from_timestamp(t as i64, 0)),
    })
}

fn batch_key(connection_id: &str, batch_id: &str) -> String {
    format!("{connection_id}#{batch_id}")
}

/// The index, its hash key and the key condition that read `query`.
fn listing(query: &RecordQuery) -> (&'static str, &'static str, String, String) {
    let (index, hash_name, hash) = match &query.batch_id {
        Some(batch) => (
            BATCH_INDEX,
            "batchKey",
            batch_key(&query.connection_id, batch),
        ),
        None => (
            CONNECTION_INDEX,
            "connectionId",
            query.connection_id.clone(),
        ),
    };
    let condition = match query.status {
        Some(_) => "#hash = :hash AND begins_with(listKey, :status)",
        None => "#hash = :hash",
    };
    (index, hash_name, hash, condition.to_string())
}

#[async_trait]
impl SyncRecordStore for DynamoDbSyncRecordStore {
    async fn get(&self, key: &RecordKey) -> Result<Option<SyncRecord>> {
        let out = self
            .client
            .get()
            .await
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB", e))?;
        out.item().map(from_item).transpose()
    }

    async fn put(
        &self,
        record: &SyncRecord,
        expected_version: Option<u64>,
    ) -> Result<WriteOutcome> {
        let request = self
            .client
            .get()
            .await
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(record)?));
        put_versioned(request, expected_version).await
    }

    async fn list_by_status(&self, status: SyncStatus, limit: usize) -> Result<Vec<SyncRecord>> {
        let mut records = Vec::new();
        let mut start_key = None;
        loop {
            let out = self
                .client
                .get()
                .await
                .query()
                .table_name(&self.table)
                .index_name(STATUS_INDEX)
                .key_condition_expression("#status = :status")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", s(status.as_str()))
                .scan_index_forward(true)
                .limit((limit - records.len()).min(100) as i32)
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(|e| sdk_error("DynamoDB", e))?;
            for item in out.items() {
                records.push(from_item(item)?);
            }
            start_key = out.last_evaluated_key().cloned();
            if start_key.is_none() || records.len() >= limit {
                return Ok(records);
            }
        }
    }

    async fn find_by_sync_id(&self, sync_id: &str) -> Result<Option<SyncRecord>> {
        let out = self
            .client
            .get()
            .await
            .query()
            .table_name(&self.table)
            .index_name(SYNC_ID_INDEX)
            .key_condition_expression("syncId = :id")
            .expression_attribute_values(":id", s(sync_id))
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB", e))?;
        let Some(pk) = out
            .items()
            .first()
            .and_then(|item| item.get("pk"))
            .and_then(|v| v.as_s().ok())
        else {
            return Ok(None);
        };
        // The index holds keys only; the item itself is read consistently.
        let out = self
            .client
            .get()
            .await
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB", e))?;
        out.item().map(from_item).transpose()
    }

    async fn list_records(
        &self,
        query: &RecordQuery,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RecordPage> {
        let (index, hash_name, hash, condition) = listing(query);
        let start = match cursor {
            None => None,
            Some(cursor) => {
                let invalid =
                    || Error::validation("cursor", "is not a cursor this listing handed out");
                let position = decode_cursor(cursor)?;
                let key: HashMap<String, AttributeValue> = position
                    .as_object()
                    .ok_or_else(invalid)?
                    .iter()
                    .map(|(k, v)| v.as_str().map(|v| (k.clone(), s(v))).ok_or_else(invalid))
                    .collect::<Result<_>>()?;
                // A cursor of another listing would start this one somewhere meaningless.
                if key.get(hash_name).and_then(|v| v.as_s().ok()) != Some(&hash) {
                    return Err(invalid());
                }
                Some(key)
            }
        };
        let mut request = self
            .client
            .get()
            .await
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression(condition)
            .expression_attribute_names("#hash", hash_name)
            .expression_attribute_values(":hash", s(hash))
            .scan_index_forward(true)
            .limit(limit.clamp(1, 1000) as i32)
            .set_exclusive_start_key(start);
        if let Some(status) = query.status {
            request =
                request.expression_attribute_values(":status", s(format!("{}#", status.as_str())));
        }
        let out = request.send().await.map_err(|e| sdk_error("DynamoDB", e))?;
        let records = out.items().iter().map(from_item).collect::<Result<_>>()?;
        let next = out.last_evaluated_key().map(|key| {
            let position: serde_json::Map<String, serde_json::Value> = key
                .iter()
                .filter_map(|(k, v)| v.as_s().ok().map(|v| (k.clone(), v.clone().into())))
                .collect();
            encode_cursor(&serde_json::Value::Object(position))
        });
        Ok(RecordPage { records, next })
    }

    async fn count_records(&self, query: &RecordQuery) -> Result<usize> {
        let (index, hash_name, hash, condition) = listing(query);
        let mut count = 0;
        let mut start_key = None;
        loop {
            let mut request = self
                .client
                .get()
                .await
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(&condition)
                .expression_attribute_names("#hash", hash_name)
                .expression_attribute_values(":hash", s(&hash))
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start_key);
            if let Some(status) = query.status {
                request = request
                    .expression_attribute_values(":status", s(format!("{}#", status.as_str())));
            }
            let out = request.send().await.map_err(|e| sdk_error("DynamoDB", e))?;
            count += out.count() as usize;
            start_key = out.last_evaluated_key().cloned();
            if start_key.is_none() {
                return Ok(count);
            }
        }
    }

    async fn try_acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or_default();
        let put = self
            .client
            .get()
            .await
            .put_item()
            .table_name(&self.table)
            .item("pk", s(lease_key(name)))
            .item("owner", s(owner))
            .item("leaseExpiresAtMs", n(expires.timestamp_millis()))
            // The table's TTL attribute (epoch seconds) removes leases nobody released.
            .item("expiresAt", n(expires.timestamp() + 3600))
            .condition_expression("attribute_not_exists(pk) OR leaseExpiresAtMs < :now")
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_error("DynamoDB", e)),
        }
    }

    async fn release_lease(&self, name: &str, owner: &str) -> Result<()> {
        let delete = self
            .client
            .get()
            .await
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(lease_key(name)))
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        match delete {
            Ok(_) => Ok(()),
            // Expired and taken over by someone else: theirs now.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_error("DynamoDB", e)),
        }
    }

    async fn get_idempotent(&self, key: &str) -> Result<Option<IdempotentRequest>> {
        let out = self
            .client
            .get()
            .await
            .get_item()
            .table_name(&self.table)
            .key("pk", s(idempotency_key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("DynamoDB", e))?;
        out.item()
            .and_then(|item| item.get("request"))
            .and_then(|v| v.as_s().ok())
            .map(|json| {
                serde_json::from_str(json)
                    .map_err(|e| Error::Store(format!("unreadable idempotent request: {e}")))
            })
            .transpose()
    }

    async fn put_idempotent(
        &self,
        request: &IdempotentRequest,
        expected_version: Option<u64>,
    ) -> Result<WriteOutcome> {
        let json = serde_json::to_string(request).map_err(|e| Error::Store(e.to_string()))?;
        let put = self
            .client
            .get()
            .await
            .put_item()
            .table_name(&self.table)
            .item("pk", s(idempotency_key(&request.key)))
            .item("request", s(json))
            .item("version", n(request.version))
            // The table's TTL attribute (epoch seconds).
            .item("expiresAt", n(request.expires_at.timestamp()));
        put_versioned(put, expected_version).await
    }
}
