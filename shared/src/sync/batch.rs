//! `POST sync-batch`: many customers, leads and appointments for one connection. Each item is
//! validated as its single endpoint validates it; good ones are queued as pending sync records
//! (with the batch id and the validated payload) for the scheduled sync, bad ones answered by
//! index. A resent batch (same `batchId`) gets the first answer again and queues nothing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    App, Prepared, Target, parse_appointment_request, parse_customer_request, parse_lead_request,
};
use crate::domain::{CrmType, Fields};
use crate::error::{Error, Result};
use crate::idempotency::{self, Claim};
use crate::store::{EntityKind, RecordKey, SyncRecord, SyncStatus, WriteOutcome, sha256_hex};

/// Items per batch. 500 small records make a body of a few hundred KB and are queued in a few
/// seconds, well inside API Gateway's 29 s.
pub const MAX_BATCH_ITEMS: usize = 500;
/// Bytes per batch body: below Lambda's 6 MB invocation payload (the event wraps the body),
/// itself below API Gateway's 10 MB.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Records written at once while queueing.
const WRITES_AT_ONCE: usize = 8;

/// The answer to a batch (202): what was queued, what was already synced, what was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchAccepted {
    pub batch_id: String,
    pub connection_id: String,
    pub crm_type: CrmType,
    pub counts: BatchCounts,
    /// Each accepted item, in request order.
    pub items: Vec<AcceptedItem>,
    /// Each refused item, in request order.
    pub rejected: Vec<RejectedItem>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchCounts {
    pub received: usize,
    pub queued: usize,
    pub unchanged: usize,
    pub rejected: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedItem {
    pub index: usize,
    pub sync_id: String,
    pub entity: EntityKind,
    /// `queued` for the scheduled sync, or `unchanged`: synced before with these values.
    pub status: ItemStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    Queued,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedItem {
    pub index: usize,
    pub code: String,
    /// The field to fix, as in the item (`customer.email`).
    pub field: Option<String>,
    pub message: String,
}

/// The sync id of an item's record, and whether it was queued.
type Queued = (String, ItemStatus);

/// One valid item: the record it belongs to and the payload the drain syncs.
struct QueuedWork {
    index: usize,
    entity: EntityKind,
    source_key: String,
    payload: Value,
}

impl App {
    /// `POST sync-batch`.
    pub async fn sync_batch(&self, body: &Value) -> Result<BatchAccepted> {
        let prepared = self.prepare_batch(body).await?;
        self.run_batch(prepared).await
    }

    /// Reads a batch and checks it against the connection it names; nothing is claimed or
    /// written. The batch's own shape is checked before the connection is looked up, so a
    /// malformed batch is a 400 whether or not its connection exists; items are checked one by
    /// one when it runs, and answered one by one.
    pub async fn prepare_batch(&self, body: &Value) -> Result<Prepared<BatchRequest>> {
        let fields = Fields::new("", body)?;
        self.prepare(&fields, |_| read_batch(&fields, body)).await
    }

    pub async fn run_batch(&self, prepared: Prepared<BatchRequest>) -> Result<BatchAccepted> {
        let Prepared {
            target,
            request:
                BatchRequest {
                    items,
                    given_id,
                    batch_id,
                    hash,
                },
        } = prepared;
        let items = &items[..];
        // A batch id the caller chose may come again: the first answer is the answer.
        let claimed = match given_id {
            None => None,
            Some(_) => {
                let key = format!("sync-batch#{}#{batch_id}", target.connection_id.as_str());
                match idempotency::claim(
                    self.records.as_ref(),
                    key,
                    hash,
                    self.config.idempotency_ttl,
                    self.config.sync_lease,
                )
                .await
                {
                    Ok(Claim::Replay(stored)) => {
                        return serde_json::from_value(stored.body)
                            .map_err(|e| Error::Store(format!("stored batch answer: {e}")));
                    }
                    Ok(Claim::Run(claimed)) => Some(claimed),
                    Err(Error::IdempotencyKeyReused) => return Err(Error::BatchIdReused),
                    Err(e) => return Err(e),
                }
            }
        };
        let answer = self.queue_items(&target, &batch_id, items).await;
        if let Some(claimed) = claimed {
            let (status, stored) = match &answer {
                Ok(accepted) => (202, serde_json::to_value(accepted).unwrap_or(Value::Null)),
                Err(e) => (e.status(), Value::Null),
            };
            idempotency::finish(self.records.as_ref(), claimed, status, stored).await;
        }
        answer
    }

    async fn queue_items(
        &self,
        target: &Target,
        batch_id: &str,
        items: &[Value],
    ) -> Result<BatchAccepted> {
        let items_total = items.len();
        let mut rejected = Vec::new();
        let mut valid = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match read_item(item, target) {
                Ok((entity, source_key, payload)) => valid.push(QueuedWork {
                    index,
                    entity,
                    source_key,
                    payload,
                }),
                Err(error) => rejected.push(rejected_item(index, &error)),
            }
        }
        // Items naming the same entity share its record; the last one's values are queued.
        let mut last_of: HashMap<(EntityKind, String), usize> = HashMap::new();
        for (position, work) in valid.iter().enumerate() {
            last_of.insert((work.entity, work.source_key.clone()), position);
        }
        // Queued records keep the batch's order (microseconds apart) for the drain.
        let accepted_at = Utc::now();
        let last: Vec<(usize, &QueuedWork)> = valid
            .iter()
            .enumerate()
            .filter(|(position, work)| {
                last_of[&(work.entity, work.source_key.clone())] == *position
            })
            .collect();
        // Boxed as `Send` here, where its lifetimes are known (rustc cannot prove it later).
        let writes: BoxFuture<'_, Vec<(usize, Result<Queued>)>> = Box::pin(
            stream::iter(last)
                .map(|(position, work)| async move {
                    let at = accepted_at + chrono::Duration::microseconds(work.index as i64);
                    (position, self.queue(target, batch_id, work, at).await)
                })
                .buffer_unordered(WRITES_AT_ONCE)
                .collect(),
        );
        let outcomes = writes.await;
        let mut by_record: HashMap<(EntityKind, String), Result<Queued>> = HashMap::new();
        for (position, outcome) in outcomes {
            let work = &valid[position];
            if let Err(e @ Error::Store(_)) = &outcome {
                // Storage failing fails the batch: resent, it queues what is missing.
                return Err(e.clone());
            }
            by_record.insert((work.entity, work.source_key.clone()), outcome);
        }
        let mut items = Vec::new();
        for work in &valid {
            match &by_record[&(work.entity, work.source_key.clone())] {
                Ok((sync_id, status)) => items.push(AcceptedItem {
                    index: work.index,
                    sync_id: sync_id.clone(),
                    entity: work.entity,
                    status: *status,
                }),
                Err(error) => rejected.push(rejected_item(work.index, error)),
            }
        }
        rejected.sort_by_key(|r| r.index);
        let counts = BatchCounts {
            received: items_total,
            queued: items
                .iter()
                .filter(|i| i.status == ItemStatus::Queued)
                .count(),
            unchanged: items
                .iter()
                .filter(|i| i.status == ItemStatus::Unchanged)
                .count(),
            rejected: rejected.len(),
        };
        tracing::info!(
            connection_id = %target.connection_id,
            batch_id,
            received = counts.received,
            queued = counts.queued,
            rejected = counts.rejected,
            "batch accepted"
        );
        Ok(BatchAccepted {
            batch_id: batch_id.to_string(),
            connection_id: target.connection_id.to_string(),
            crm_type: target.connection.crm_type,
            counts,
            items,
            rejected,
        })
    }

    /// Writes one item's record as queued (pending for the scheduled sync), unless the record
    /// already holds these values synced, or a sync holds it right now.
    async fn queue(
        &self,
        target: &Target,
        batch_id: &str,
        work: &QueuedWork,
        at: DateTime<Utc>,
    ) -> Result<Queued> {
        let key = RecordKey::new(target.connection_id.as_str(), work.entity, &work.source_key);
        let payload_hash = sha256_hex(work.payload.to_string().as_bytes());
        let lease = chrono::Duration::from_std(self.config.sync_lease).unwrap_or_default();
        // A conflict means another writer moved the record on between our read and write.
        for _ in 0..3 {
            let existing = self.records.get(&key).await?;
            let now = Utc::now();
            if let Some(record) = &existing {
                let same = record.payload_hash == payload_hash;
                if same && record.status == SyncStatus::Synced {
                    return Ok((record.sync_id.clone(), ItemStatus::Unchanged));
                }
                let waiting = record.queued || record.status == SyncStatus::Unknown;
                if same && waiting && record.batch_id.as_deref() == Some(batch_id) {
                    return Ok((record.sync_id.clone(), ItemStatus::Queued));
                }
                if record.in_progress(now, lease) {
                    return Err(Error::SyncInProgress);
                }
            }
            // A record whose last attempt may have written unheard stays `unknown`: the drain
            // looks for its stamp before creating anything.
            let unheard = existing
                .as_ref()
                .is_some_and(SyncRecord::may_have_written_unheard);
            let queued = SyncRecord {
                sync_id: existing
                    .as_ref()
                    .map(|r| r.sync_id.clone())
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                connection_id: target.connection_id.to_string(),
                crm_type: target.connection.crm_type,
                entity: work.entity,
                source_key: work.source_key.clone(),
                crm_id: existing.as_ref().and_then(|r| r.crm_id.clone()),
                status: if unheard {
                    SyncStatus::Unknown
                } else {
                    SyncStatus::Pending
                },
                // New values are new work: the attempts count again from zero.
                attempts: match &existing {
                    Some(r) if unheard => r.attempts,
                    _ => 0,
                },
                last_error: existing.as_ref().and_then(|r| r.last_error.clone()),
                payload_hash: payload_hash.clone(),
                payload: work.payload.clone(),
                created_at: existing.as_ref().map_or(now, |r| r.created_at),
                updated_at: at,
                version: existing.as_ref().map_or(0, |r| r.version) + 1,
                batch_id: Some(batch_id.to_string()),
                queued: !unheard,
                expires_at: None,
            };
            match self
                .records
                .put(&queued, existing.as_ref().map(|r| r.version))
                .await?
            {
                WriteOutcome::Written => return Ok((queued.sync_id, ItemStatus::Queued)),
                WriteOutcome::Conflict => continue,
            }
        }
        Err(Error::SyncInProgress)
    }
}

/// A batch id as callers may choose it: 1 to 128 letters, digits and `._:-`.
pub(super) fn parse_batch_id(raw: &str) -> Result<String> {
    let valid = (1..=128).contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if valid {
        Ok(raw.to_string())
    } else {
        Err(Error::validation(
            "batchId",
            "must be 1 to 128 letters, digits, '.', '_', ':' or '-'",
        ))
    }
}

/// A batch read, its items not yet checked.
pub struct BatchRequest {
    items: Vec<Value>,
    /// The batch id the caller gave, which makes the batch idempotent.
    given_id: Option<String>,
    batch_id: String,
    /// What a batch id given again must match.
    hash: String,
}

/// What a batch holds beside its items' contents: the items (1 to 500) and its batch id.
fn read_batch(fields: &Fields<'_>, body: &Value) -> Result<BatchRequest> {
    let items = match fields.value("items") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) | None => {
            return Err(Error::validation(
                "items",
                "is required: an array of 1 to 500 items",
            ));
        }
        Some(_) => return Err(Error::validation("items", "must be an array")),
    };
    if items.len() > MAX_BATCH_ITEMS {
        return Err(Error::validation(
            "items",
            format!(
                "holds {} items; a batch holds at most {MAX_BATCH_ITEMS}: send the rest in another batch",
                items.len()
            ),
        ));
    }
    // A batch id is text a caller chose; a number is not one.
    let given_id = fields
        .strings(&["batchId"])?
        .into_iter()
        .next()
        .map(|(_, id)| id);
    let batch_id = match &given_id {
        Some(id) => parse_batch_id(id)?,
        None => uuid::Uuid::new_v4().to_string(),
    };
    Ok(BatchRequest {
        items: items.clone(),
        given_id,
        batch_id,
        hash: idempotency::request_hash("sync-batch", body.to_string().as_bytes()),
    })
}

/// One item read as its single endpoint reads its body: the entity, its source key and the
/// validated payload the drain syncs later.
fn read_item(item: &Value, target: &Target) -> Result<(EntityKind, String, Value)> {
    let fields = Fields::new("", item)?;
    let declared = fields.string(&["type"])?;
    let entity = match declared.as_deref() {
        Some("customer") => EntityKind::Customer,
        Some("lead") => EntityKind::Lead,
        Some("appointment") => EntityKind::Appointment,
        Some(other) => {
            return Err(Error::validation(
                "type",
                format!("'{other}' is not customer, lead or appointment"),
            ));
        }
        // Without a type, what the item holds says what it is.
        None if fields.has("appointment") || fields.has("appointmentData") => {
            EntityKind::Appointment
        }
        None if fields.has("lead") || fields.has("leadData") => EntityKind::Lead,
        None if fields.has("customer") || fields.has("customerData") => EntityKind::Customer,
        None => {
            return Err(Error::validation(
                "type",
                "is required: customer, lead or appointment (or an item with customer, lead or appointment)",
            ));
        }
    };
    let stored = |value: Result<Value, serde_json::Error>| {
        value.map_err(|e| Error::Store(format!("serialising a batch item: {e}")))
    };
    let defaults = &target.defaults;
    Ok(match entity {
        EntityKind::Customer => {
            let customer = parse_customer_request(&fields, defaults)?;
            let key = customer.source_key();
            (entity, key, stored(serde_json::to_value(customer))?)
        }
        EntityKind::Lead => {
            let lead = parse_lead_request(&fields, defaults)?;
            let key = lead.source_key();
            (entity, key, stored(serde_json::to_value(lead))?)
        }
        EntityKind::Appointment => {
            let payload = parse_appointment_request(&fields, defaults)?;
            let key = payload.source_key();
            (entity, key, stored(serde_json::to_value(payload))?)
        }
    })
}

fn rejected_item(index: usize, error: &Error) -> RejectedItem {
    RejectedItem {
        index,
        code: error.code().to_string(),
        field: error.field().map(str::to_string),
        message: match error {
            Error::Validation { message, .. } => message.clone(),
            other => other.to_string(),
        },
    }
}
