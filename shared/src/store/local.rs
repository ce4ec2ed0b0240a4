//! Embedded stores for running without AWS: one JSON file per connection and per sync record.
//!
//! Several local functions run as separate processes, so conditional writes hold an exclusive
//! file lock while they compare versions, and files are replaced atomically by rename.
//!
//! Reading one connection, record or idempotent request is one small file read that no writer can
//! leave half-written, so it is done in place: a hand-off to a blocking thread and back cost the
//! warm path more than the read (README, Cold starts). Listings and locked writes run off the
//! async runtime's threads.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{
    ConnectionStore, IdempotentRequest, RecordKey, RecordPage, RecordQuery, SyncRecord,
    SyncRecordStore, SyncStatus, WriteOutcome, idempotency_key, lease_key, page_in_list_order,
    sha256_hex,
};
use crate::connection::{Connection, ConnectionId};
use crate::error::{Error, Result};

pub(crate) fn io_error(context: &str, e: std::io::Error) -> Error {
    Error::Store(format!("{context}: {e}"))
}

pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
    fs::write(&tmp, contents).map_err(|e| io_error("writing a local store file", e))?;
    fs::rename(&tmp, path).map_err(|e| io_error("replacing a local store file", e))
}

/// Runs `f` under an exclusive lock on `dir/.lock`, off the async runtime's threads.
pub(crate) async fn with_dir_lock<T: Send + 'static>(
    dir: PathBuf,
    f: impl FnOnce(&Path) -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(move || {
        fs::create_dir_all(&dir).map_err(|e| io_error("creating the local store folder", e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".lock"))
            .map_err(|e| io_error("opening the local store lock", e))?;
        lock.lock()
            .map_err(|e| io_error("locking the local store", e))?;
        let result = f(&dir);
        drop(lock);
        result
    })
    .await
    .map_err(|e| Error::Store(format!("local store task failed: {e}")))?
}

/// Connections as `<dir>/<id>.json`, each holding the same JSON a Secrets Manager secret holds.
pub struct LocalConnectionStore {
    dir: PathBuf,
}

impl LocalConnectionStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalConnectionStore { dir: dir.into() }
    }
    fn path(&self, id: &ConnectionId) -> PathBuf {
        self.dir.join(format!("{}.json", id.as_str()))
    }
}

#[async_trait]
impl ConnectionStore for LocalConnectionStore {
    async fn get(&self, id: &ConnectionId) -> Result<Connection> {
        match fs::read_to_string(self.path(id)) {
            Ok(json) => Connection::from_secret_json(id, &json),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(Error::ConnectionNotFound(id.to_string()))
            }
            Err(e) => Err(io_error("reading a connection", e)),
        }
    }

    async fn put(&self, id: &ConnectionId, connection: &Connection) -> Result<()> {
        let path = self.path(id);
        let json = connection.to_secret_json();
        with_dir_lock(self.dir.clone(), move |_| {
            write_atomically(&path, json.as_bytes())
        })
        .await
    }

    async fn list(&self) -> Result<Vec<ConnectionId>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("listing connections", e)),
        };
        let mut ids: Vec<ConnectionId> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .filter_map(|n| ConnectionId::parse(&n).ok())
            .collect();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(ids)
    }

    async fn delete(&self, id: &ConnectionId) -> Result<()> {
        match fs::remove_file(self.path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(Error::ConnectionNotFound(id.to_string()))
            }
            Err(e) => Err(io_error("removing a connection", e)),
        }
    }
}

/// Sync records as `<dir>/<sha256 of key>.json`.
pub struct LocalSyncRecordStore {
    dir: PathBuf,
}

impl LocalSyncRecordStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalSyncRecordStore { dir: dir.into() }
    }

    /// Every record `keep` accepts, read from disk in no particular order (the local run holds
    /// few enough for that; DynamoDB reads them by index). With `status`, files that do not
    /// hold its `"status": "…"` line are skipped unparsed.
    async fn all_records(
        &self,
        status: Option<SyncStatus>,
        keep: impl Fn(&SyncRecord) -> bool + Send + 'static,
    ) -> Result<Vec<SyncRecord>> {
        let marker = status.map(|s| format!("\"status\": \"{}\"", s.as_str()));
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io_error("listing sync records", e)),
            };
            let mut records = Vec::new();
            for entry in entries.filter_map(|e| e.ok()) {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let bytes = match fs::read(&path) {
                    Ok(bytes) => bytes,
                    // Replaced by a rename while listing: read by the next listing.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error("reading a sync record", e)),
                };
                // Records are written pretty-printed (`put`), one `"status": "…"` line each.
                if let Some(marker) = &marker
                    && !std::str::from_utf8(&bytes).is_ok_and(|text| text.contains(marker.as_str()))
                {
                    continue;
                }
                let record: SyncRecord = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Store(format!("unreadable sync record {}: {e}", path.display()))
                })?;
                if keep(&record) {
                    records.push(record);
                }
            }
            Ok(records)
        })
        .await
        .map_err(|e| Error::Store(format!("local store task failed: {e}")))?
    }
}

fn read_record(path: &Path) -> Result<Option<SyncRecord>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Store(format!("unreadable sync record {}: {e}", path.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("reading a sync record", e)),
    }
}

#[async_trait]
impl SyncRecordStore for LocalSyncRecordStore {
    async fn get(&self, key: &RecordKey) -> Result<Option<SyncRecord>> {
        read_record(&self.dir.join(format!("{}.json", key.digest())))
    }

    async fn put(
        &self,
        record: &SyncRecord,
        expected_version: Option<u64>,
    ) -> Result<WriteOutcome> {
        let file = format!("{}.json", record.key().digest());
        let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Store(e.to_string()))?;
        with_dir_lock(self.dir.clone(), move |dir| {
            let path = dir.join(file);
            let current = read_record(&path)?.map(|r| r.version);
            if current != expected_version {
                return Ok(WriteOutcome::Conflict);
            }
            write_atomically(&path, &json)?;
            Ok(WriteOutcome::Written)
        })
        .await
    }

    async fn list_by_status(&self, status: SyncStatus, limit: usize) -> Result<Vec<SyncRecord>> {
        let mut records = self
            .all_records(Some(status), move |r| r.status == status)
            .await?;
        records.sort_by_key(|r| r.updated_at);
        records.truncate(limit);
        Ok(records)
    }

    async fn find_by_sync_id(&self, sync_id: &str) -> Result<Option<SyncRecord>> {
        let sync_id = sync_id.to_string();
        let found = self
            .all_records(None, move |r| r.sync_id == sync_id)
            .await?;
        Ok(found.into_iter().next())
    }

    async fn list_records(
        &self,
        query: &RecordQuery,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RecordPage> {
        let query = query.clone();
        let records = self
            .all_records(query.status, move |r| query.matches(r))
            .await?;
        page_in_list_order(records, cursor, limit)
    }

    async fn count_records(&self, query: &RecordQuery) -> Result<usize> {
        let query = query.clone();
        let records = self
            .all_records(query.status, move |r| query.matches(r))
            .await?;
        Ok(records.len())
    }

    async fn try_acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let file = format!("{}.lease", sha256_hex(lease_key(name).as_bytes()));
        let owner = owner.to_string();
        with_dir_lock(self.dir.clone(), move |dir| {
            let path = dir.join(file);
            let now = chrono::Utc::now().timestamp_millis();
            if let Ok(bytes) = fs::read(&path) {
                let held: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if held["expiresAtMs"]
                    .as_i64()
                    .is_some_and(|expires| expires >= now)
                {
                    return Ok(false);
                }
            }
            let lease =
                serde_json::json!({"owner": owner, "expiresAtMs": now + ttl.as_millis() as i64});
            write_atomically(&path, lease.to_string().as_bytes())?;
            Ok(true)
        })
        .await
    }

    async fn release_lease(&self, name: &str, owner: &str) -> Result<()> {
        let file = format!("{}.lease", sha256_hex(lease_key(name).as_bytes()));
        let owner = owner.to_string();
        with_dir_lock(self.dir.clone(), move |dir| {
            let path = dir.join(file);
            let held: serde_json::Value = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            if held["owner"] == owner.as_str() {
                fs::remove_file(&path).map_err(|e| io_error("releasing a lease", e))?;
            }
            Ok(())
        })
        .await
    }

    async fn get_idempotent(&self, key: &str) -> Result<Option<IdempotentRequest>> {
        read_idempotent(&self.dir.join(idempotency_file(key)))
    }

    async fn put_idempotent(
        &self,
        request: &IdempotentRequest,
        expected_version: Option<u64>,
    ) -> Result<WriteOutcome> {
        let file = idempotency_file(&request.key);
        let json = serde_json::to_vec(request).map_err(|e| Error::Store(e.to_string()))?;
        with_dir_lock(self.dir.clone(), move |dir| {
            let path = dir.join(file);
            if read_idempotent(&path)?.map(|r| r.version) != expected_version {
                return Ok(WriteOutcome::Conflict);
            }
            write_atomically(&path, &json)?;
            Ok(WriteOutcome::Written)
        })
        .await
    }
}

/// Idempotent requests as `<dir>/<sha256 of key>.idempotency`, beside the records.
fn idempotency_file(key: &str) -> String {
    format!(
        "{}.idempotency",
        sha256_hex(idempotency_key(key).as_bytes())
    )
}

fn read_idempotent(path: &Path) -> Result<Option<IdempotentRequest>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Store(format!(
                "unreadable idempotent request {}: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("reading an idempotent request", e)),
    }
}

/// Opens both local stores under one data folder.
pub fn open(data_dir: &Path) -> (LocalConnectionStore, LocalSyncRecordStore) {
    (
        LocalConnectionStore::new(data_dir.join("connections")),
        LocalSyncRecordStore::new(data_dir.join("records")),
    )
}
