//! `GET sync-records` (one record by `syncId`, or a connection's records a page at a time,
//! filtered by status and batch) and `POST sync-records/replay` (failed records of a connection
//! or batch back to pending for the scheduled sync). Reads go by key and index only.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::App;
use crate::domain::{CrmType, Fields};
use crate::error::{Error, Result};
use crate::store::{EntityKind, RecordQuery, RecordedError, SyncRecord, SyncStatus, WriteOutcome};

/// Records per page unless `limit` says otherwise, and the most a page holds.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 100;
/// Failed records one replay call puts back; `more` says when to call again.
const REPLAY_PER_CALL: usize = 500;

/// A sync record as callers see it: no payload (the request it holds is the caller's own).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordView {
    pub sync_id: String,
    pub connection_id: String,
    pub crm_type: CrmType,
    pub entity: EntityKind,
    pub source_key: String,
    pub status: SyncStatus,
    pub crm_id: Option<String>,
    pub attempts: u32,
    pub last_error: Option<RecordedError>,
    pub batch_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the table's TTL may remove it (synced records).
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<SyncRecord> for RecordView {
    fn from(r: SyncRecord) -> Self {
        RecordView {
            sync_id: r.sync_id,
            connection_id: r.connection_id,
            crm_type: r.crm_type,
            entity: r.entity,
            source_key: r.source_key,
            status: r.status,
            crm_id: r.crm_id,
            attempts: r.attempts,
            last_error: r.last_error,
            batch_id: r.batch_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
            expires_at: r.expires_at,
        }
    }
}

/// What `GET sync-records` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RecordsAnswer {
    One {
        record: RecordView,
    },
    #[serde(rename_all = "camelCase")]
    Page {
        connection_id: String,
        records: Vec<RecordView>,
        next_cursor: Option<String>,
        /// With `batchId`: the batch's records by status, to watch it progress.
        #[serde(skip_serializing_if = "Option::is_none")]
        counts: Option<BTreeMap<&'static str, usize>>,
    },
}

/// What `POST sync-records/replay` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayAnswer {
    pub connection_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Failed records put back to pending.
    pub requeued: usize,
    /// More failed records are left: call again.
    pub more: bool,
}

impl App {
    /// `GET sync-records`.
    pub async fn sync_records(&self, query: &Value) -> Result<RecordsAnswer> {
        let fields = Fields::new("", query)?;
        if let Some(sync_id) = fields.string(&["syncId"])? {
            let record = self
                .records
                .find_by_sync_id(&sync_id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("sync record {sync_id}")))?;
            return Ok(RecordsAnswer::One {
                record: record.into(),
            });
        }
        let query = record_query(&fields)?;
        let limit = match fields.text(&["limit"])? {
            None => DEFAULT_PAGE,
            Some((key, raw)) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| Error::validation(key, format!("must be 1 to {MAX_PAGE}")))?,
        };
        let cursor = fields.string(&["cursor"])?;
        let page = self
            .records
            .list_records(&query, cursor.as_deref(), limit)
            .await?;
        let counts = match &query.batch_id {
            None => None,
            Some(_) => {
                let mut counts = BTreeMap::new();
                for status in [
                    SyncStatus::Pending,
                    SyncStatus::Unknown,
                    SyncStatus::Failed,
                    SyncStatus::Synced,
                ] {
                    let of_status = RecordQuery {
                        status: Some(status),
                        ..query.clone()
                    };
                    counts.insert(
                        status.as_str(),
                        self.records.count_records(&of_status).await?,
                    );
                }
                Some(counts)
            }
        };
        Ok(RecordsAnswer::Page {
            connection_id: query.connection_id,
            records: page.records.into_iter().map(RecordView::from).collect(),
            next_cursor: page.next,
            counts,
        })
    }

    /// `POST sync-records/replay`: the failed records of a connection (or of one of its
    /// batches) back to pending, attempts counted from zero, for the scheduled sync.
    pub async fn replay_records(&self, body: &Value) -> Result<ReplayAnswer> {
        let fields = Fields::new("", body)?;
        let mut query = record_query(&fields)?;
        if fields.has("status") {
            return Err(Error::validation(
                "status",
                "replay puts failed records back; it takes no status",
            ));
        }
        query.status = Some(SyncStatus::Failed);
        let mut requeued = 0;
        let mut cursor = None;
        let now = Utc::now();
        loop {
            let page = self
                .records
                .list_records(&query, cursor.as_deref(), MAX_PAGE)
                .await?;
            for record in page.records {
                if requeued == REPLAY_PER_CALL {
                    return Ok(ReplayAnswer {
                        connection_id: query.connection_id,
                        batch_id: query.batch_id,
                        requeued,
                        more: true,
                    });
                }
                let expected = record.version;
                let requeue = SyncRecord {
                    status: SyncStatus::Pending,
                    queued: true,
                    attempts: 0,
                    // Kept in their order, microseconds apart, for the drain.
                    updated_at: now + chrono::Duration::microseconds(requeued as i64),
                    version: expected + 1,
                    ..record
                };
                // A record another writer moved on is no longer failed: left as it is.
                if self.records.put(&requeue, Some(expected)).await? == WriteOutcome::Written {
                    requeued += 1;
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        tracing::info!(connection_id = %query.connection_id, batch_id = query.batch_id.as_deref(), requeued, "failed records put back to pending");
        Ok(ReplayAnswer {
            connection_id: query.connection_id,
            batch_id: query.batch_id,
            requeued,
            more: false,
        })
    }
}

/// `connectionId` (required), `status` and `batchId` of a listing.
fn record_query(fields: &Fields<'_>) -> Result<RecordQuery> {
    // As the sync requests read it: a string, never a number.
    let connection_id = crate::requests::connection_id(fields)?
        .ok_or_else(|| {
            Error::validation(
                "connectionId",
                "is required (or give syncId for one record)",
            )
        })?
        .to_string();
    let status =
        match fields.text(&["status"])? {
            None => None,
            Some((key, raw)) => Some(SyncStatus::parse(&raw).ok_or_else(|| {
                Error::validation(key, "must be pending, synced, failed or unknown")
            })?),
        };
    Ok(RecordQuery {
        connection_id,
        status,
        // A batch id is text a caller chose; a number is not one.
        batch_id: fields
            .strings(&["batchId"])?
            .into_iter()
            .next()
            .map(|(_, id)| id)
            .map(|id| super::batch::parse_batch_id(&id))
            .transpose()?,
    })
}
