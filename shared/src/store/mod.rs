//! Ports for connections, sync records and rate budgets, with AWS, local-file and in-memory
//! implementations side by side.

pub mod aws;
pub mod budget;
pub mod budget_dynamodb;
pub mod budget_local;
pub mod cached;
pub mod local;
pub mod memory;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::connection::{Connection, ConnectionId};
use crate::domain::CrmType;
use crate::error::{Error, Result};

/// Where connections (credentials + settings) live.
#[async_trait]
pub trait ConnectionStore: Send + Sync {
    /// The connection, or `ConnectionNotFound`; a caching store may answer from memory.
    async fn get(&self, id: &ConnectionId) -> Result<Connection>;
    /// The connection as stored now, past any cache (which it refreshes): for a token refresh,
    /// which must see what another container wrote, and for `test-connection`.
    async fn get_fresh(&self, id: &ConnectionId) -> Result<Connection> {
        self.get(id).await
    }
    /// Creates or replaces a connection (token refresh writes back through this).
    async fn put(&self, id: &ConnectionId, connection: &Connection) -> Result<()>;
    async fn list(&self) -> Result<Vec<ConnectionId>>;
    async fn delete(&self, id: &ConnectionId) -> Result<()>;
    /// Forgets any copy of the connection held in memory (its credentials were refused).
    fn invalidate(&self, _id: &ConnectionId) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityKind {
    Customer,
    Lead,
    Appointment,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Customer => "customer",
            EntityKind::Lead => "lead",
            EntityKind::Appointment => "appointment",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncStatus {
    Pending,
    Synced,
    Failed,
    /// The last CRM write was sent and no answer came back (timeout, reset, 5xx): the CRM may
    /// hold the record. The next attempt looks for our stamp before it creates anything.
    Unknown,
}

impl SyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Pending => "pending",
            SyncStatus::Synced => "synced",
            SyncStatus::Failed => "failed",
            SyncStatus::Unknown => "unknown",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(SyncStatus::Pending),
            "synced" => Some(SyncStatus::Synced),
            "failed" => Some(SyncStatus::Failed),
            "unknown" => Some(SyncStatus::Unknown),
            _ => None,
        }
    }
}

/// The last failure of a record, as a caller would see it (no secrets: built from `Error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedError {
    pub code: String,
    pub message: String,
    pub transient: bool,
}

impl From<&Error> for RecordedError {
    fn from(e: &Error) -> Self {
        RecordedError {
            code: e.code().into(),
            message: e.to_string(),
            transient: e.is_transient(),
        }
    }
}

/// One entity synced to one connection: what was sent, what it became, and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRecord {
    pub sync_id: String,
    pub connection_id: String,
    pub crm_type: CrmType,
    pub entity: EntityKind,
    /// What identifies the entity across resends (`email:…`, `phone:…`, `external:…`).
    pub source_key: String,
    pub crm_id: Option<String>,
    pub status: SyncStatus,
    pub attempts: u32,
    pub last_error: Option<RecordedError>,
    /// SHA-256 of `payload`: an identical resend of a synced record needs no CRM call.
    pub payload_hash: String,
    /// The validated request, kept so that failed work can be replayed.
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped on every write; writes are conditional on it, so racing writers cannot both win.
    pub version: u64,
    /// The `sync-batch` that last queued this record, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Pending because it waits for the scheduled sync (a batch item, a replay), not because a
    /// sync holds it: no lease applies, and no earlier attempt can have written unheard.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
    /// When the table's TTL may remove the record (synced records only; work left never expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl SyncRecord {
    pub fn key(&self) -> RecordKey {
        RecordKey::new(&self.connection_id, self.entity, &self.source_key)
    }

    /// The key a CRM record created by this sync carries: the caller's booking or lead id
    /// (`externalId`) when there is one, else the sync id.
    pub fn stamp(&self) -> &str {
        self.source_key
            .strip_prefix("external:")
            .unwrap_or(&self.sync_id)
    }

    /// Held by a running sync: pending, not queued, and claimed less than `lease` ago.
    pub fn in_progress(&self, now: DateTime<Utc>, lease: chrono::Duration) -> bool {
        self.status == SyncStatus::Pending && !self.queued && now - self.updated_at < lease
    }

    /// An earlier attempt may have created the CRM record without our hearing of it: it lost
    /// its answer (`unknown`) or died holding the record (claimed `pending`).
    pub fn may_have_written_unheard(&self) -> bool {
        self.crm_id.is_none()
            && match self.status {
                SyncStatus::Unknown => true,
                SyncStatus::Pending => !self.queued,
                SyncStatus::Synced | SyncStatus::Failed => false,
            }
    }

    /// Where the record sorts in a listing: by status, then least recently updated first.
    pub fn list_key(&self) -> String {
        format!(
            "{}#{}#{}",
            self.status.as_str(),
            self.updated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            self.sync_id
        )
    }
}

/// Which records a listing reads: one connection's, optionally of one status and one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordQuery {
    pub connection_id: String,
    pub status: Option<SyncStatus>,
    pub batch_id: Option<String>,
}

impl RecordQuery {
    /// Whether `record` is one this query lists.
    pub fn matches(&self, record: &SyncRecord) -> bool {
        record.connection_id == self.connection_id
            && self.status.is_none_or(|s| record.status == s)
            && self
                .batch_id
                .as_ref()
                .is_none_or(|b| record.batch_id.as_ref() == Some(b))
    }
}

/// The page after `cursor` of `records` (all a query matched), for the stores that hold them in
/// process: sorted by `SyncRecord::list_key`, the cursor the last key of the page before.
pub fn page_in_list_order(
    mut records: Vec<SyncRecord>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<RecordPage> {
    let after = match cursor {
        Some(cursor) => Some(
            decode_cursor(cursor)?
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::validation("cursor", "is not a cursor this listing handed out")
                })?,
        ),
        None => None,
    };
    records.sort_by_cached_key(SyncRecord::list_key);
    let mut page: Vec<SyncRecord> = records
        .into_iter()
        .filter(|r| after.as_ref().is_none_or(|after| r.list_key() > *after))
        .take(limit + 1)
        .collect();
    let next = (page.len() > limit).then(|| {
        page.truncate(limit);
        encode_cursor(&serde_json::Value::String(
            page.last().map(SyncRecord::list_key).unwrap_or_default(),
        ))
    });
    Ok(RecordPage {
        records: page,
        next,
    })
}

/// One page of a listing, in `SyncRecord::list_key` order; `next` continues it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordPage {
    pub records: Vec<SyncRecord>,
    /// An opaque cursor for the next page, `None` on the last.
    pub next: Option<String>,
}

/// A cursor as callers hand it back: hex of the store's own position, so it survives a URL.
pub fn encode_cursor(position: &serde_json::Value) -> String {
    position
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The position `encode_cursor` made, or a validation error on `cursor`.
pub fn decode_cursor(cursor: &str) -> Result<serde_json::Value> {
    let invalid = || Error::validation("cursor", "is not a cursor this listing handed out");
    if !cursor.len().is_multiple_of(2) || !cursor.is_ascii() {
        return Err(invalid());
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    serde_json::from_slice(&bytes).map_err(|_| invalid())
}

/// The identity of a sync record: connection, entity kind and source key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey(String);

impl RecordKey {
    pub fn new(connection_id: &str, entity: EntityKind, source_key: &str) -> Self {
        RecordKey(format!("{connection_id}#{}#{source_key}", entity.as_str()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// A file-name-safe digest of the key, for the local store.
    pub fn digest(&self) -> String {
        sha256_hex(self.0.as_bytes())
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A request sent with an `Idempotency-Key`: what it was (a hash), and the answer it got once
/// it finished. While `response` is `None` the first request is still running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotentRequest {
    /// `<operation>#<the caller's key>`.
    pub key: String,
    pub request_hash: String,
    pub response: Option<StoredResponse>,
    pub created_at: DateTime<Utc>,
    /// After this the key is free again (and the table's TTL removes the item).
    pub expires_at: DateTime<Utc>,
    pub version: u64,
}

/// An answer as it was sent: replayed as is for the same key and body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

/// The storage key of an idempotent request; never collides with record keys or leases.
pub fn idempotency_key(key: &str) -> String {
    format!("idempotency#{key}")
}

/// Outcome of a conditional write.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// Someone else wrote the record first (its version moved on).
    Conflict,
}

/// Where sync records live.
#[async_trait]
pub trait SyncRecordStore: Send + Sync {
    async fn get(&self, key: &RecordKey) -> Result<Option<SyncRecord>>;
    /// Writes `record` if the stored version is `expected_version` (`None`: the record must not
    /// exist yet).
    async fn put(&self, record: &SyncRecord, expected_version: Option<u64>)
    -> Result<WriteOutcome>;
    /// Records in `status`, least recently updated first.
    async fn list_by_status(&self, status: SyncStatus, limit: usize) -> Result<Vec<SyncRecord>>;
    /// The record a `syncId` names.
    async fn find_by_sync_id(&self, sync_id: &str) -> Result<Option<SyncRecord>>;
    /// Up to `limit` records of `query` after `cursor` (a `RecordPage::next`).
    async fn list_records(
        &self,
        query: &RecordQuery,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RecordPage>;
    /// How many records `query` holds.
    async fn count_records(&self, query: &RecordQuery) -> Result<usize>;
    /// Takes the lease `name` for `ttl` unless another owner holds it unexpired. Leases make work
    /// single-flight across concurrent functions (OAuth token refresh).
    async fn try_acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool>;
    /// Gives the lease back if `owner` still holds it.
    async fn release_lease(&self, name: &str, owner: &str) -> Result<()>;
    /// The request stored under an `Idempotency-Key`, expired or not.
    async fn get_idempotent(&self, key: &str) -> Result<Option<IdempotentRequest>>;
    /// Writes `request` if the stored version is `expected_version` (`None`: none stored).
    async fn put_idempotent(
        &self,
        request: &IdempotentRequest,
        expected_version: Option<u64>,
    ) -> Result<WriteOutcome>;
}

/// The storage key of a lease; never collides with a record key (those start with a connection id).
pub fn lease_key(name: &str) -> String {
    format!("lease#{name}")
}
