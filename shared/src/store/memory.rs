//! Sync records in the process's memory: the record store for load tests and tools that need
//! no persistence. Same semantics as the other stores (the store suite runs on it), none of
//! their I/O.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    IdempotentRequest, RecordKey, RecordPage, RecordQuery, SyncRecord, SyncRecordStore, SyncStatus,
    WriteOutcome, decode_cursor, encode_cursor,
};
use crate::error::{Error, Result};

#[derive(Default)]
struct Held {
    records: HashMap<String, SyncRecord>,
    leases: HashMap<String, (String, DateTime<Utc>)>,
    idempotent: HashMap<String, IdempotentRequest>,
}

#[derive(Default)]
pub struct MemorySyncRecordStore {
    held: Mutex<Held>,
}

impl MemorySyncRecordStore {
    fn matching(&self, keep: impl Fn(&SyncRecord) -> bool) -> Vec<SyncRecord> {
        let held = self.held.lock().expect("not poisoned");
        held.records.values().filter(|r| keep(r)).cloned().collect()
    }
}

fn matches(record: &SyncRecord, query: &RecordQuery) -> bool {
    record.connection_id == query.connection_id
        && query.status.is_none_or(|s| record.status == s)
        && query
            .batch_id
            .as_ref()
            .is_none_or(|b| record.batch_id.as_ref() == Some(b))
}

#[async_trait]
impl SyncRecordStore for MemorySyncRecordStore {
    async fn get(&self, key: &RecordKey) -> Result<Option<SyncRecord>> {
        let held = self.held.lock().expect("not poisoned");
        Ok(held.records.get(key.as_str()).cloned())
    }

    async fn put(
        &self,
        record: &SyncRecord,
        expected_version: Option<u64>,
    ) -> Result<WriteOutcome> {
        let mut held = self.held.lock().expect("not poisoned");
        let key = record.key().as_str().to_string();
        if held.records.get(&key).map(|r| r.version) != expected_version {
            return Ok(WriteOutcome::Conflict);
        }
        held.records.insert(key, record.clone());
        Ok(WriteOutcome::Written)
    }

    async fn list_by_status(&self, status: SyncStatus, limit: usize) -> Result<Vec<SyncRecord>> {
        let mut records = self.matching(|r| r.status == status);
        records.sort_by_key(|r| r.updated_at);
        records.truncate(limit);
        Ok(records)
    }

    async fn find_by_sync_id(&self, sync_id: &str) -> Result<Option<SyncRecord>> {
        Ok(self.matching(|r| r.sync_id == sync_id).into_iter().next())
    }

    async fn list_records(
        &self,
        query: &RecordQuery,
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
        let mut records = self.matching(|r| matches(r, query));
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

    async fn count_records(&self, query: &RecordQuery) -> Result<usize> {
        Ok(self.matching(|r| matches(r, query)).len())
    }

    async fn try_acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let mut held = self.held.lock().expect("not poisoned");
        let now = Utc::now();
        if held
            .leases
            .get(name)
            .is_some_and(|(_, expires)| *expires >= now)
        {
            return Ok(false);
        }
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or_default();
        held.leases
            .insert(name.to_string(), (owner.to_string(), expires));
        Ok(true)
    }

    async fn release_lease(&self, name: &str, owner: &str) -> Result<()> {
        let mut held = self.held.lock().expect("not poisoned");
        if held.leases.get(name).is_some_and(|(o, _)| o == owner) {
            held.leases.remove(name);
        }
        Ok(())
    }

    async fn get_idempotent(&self, key: &str) -> Result<Option<IdempotentRequest>> {
        let held = self.held.lock().expect("not poisoned");
        Ok(held.idempotent.get(key).cloned())
    }

    async fn put_idempotent(
        &self,
        request: &IdempotentRequest,
        expected_version: Option<u64>,
    ) -> Result<WriteOutcome> {
        let mut held = self.held.lock().expect("not poisoned");
        if held.idempotent.get(&request.key).map(|r| r.version) != expected_version {
            return Ok(WriteOutcome::Conflict);
        }
        held.idempotent.insert(request.key.clone(), request.clone());
        Ok(WriteOutcome::Written)
    }
}
