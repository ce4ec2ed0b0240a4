//! Sync records in the process's memory: the record store for load tests and tools that need
//! no persistence. Same semantics as the other stores (the store suite runs on it), none of
//! their I/O.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    IdempotentRequest, RecordKey, RecordPage, RecordQuery, SyncRecord, SyncRecordStore, SyncStatus,
    WriteOutcome, page_in_list_order,
};
use crate::error::Result;

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
        page_in_list_order(self.matching(|r| query.matches(r)), cursor, limit)
    }

    async fn count_records(&self, query: &RecordQuery) -> Result<usize> {
        Ok(self.matching(|r| query.matches(r)).len())
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
