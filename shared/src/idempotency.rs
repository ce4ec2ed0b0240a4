//! `Idempotency-Key` on the sync endpoints, as Stripe and Lambda Powertools define it: the same
//! key with the same body answers the stored response without calling the CRM; the same key
//! with another body is refused (422); the same key while its first request runs answers 409
//! with `Retry-After`. Keys expire after `Config::idempotency_ttl`.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::store::{IdempotentRequest, StoredResponse, SyncRecordStore, WriteOutcome, sha256_hex};

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Claim {
    /// The same request finished before: answer this again.
    Replay(StoredResponse),
    /// This request runs; `finish` stores its answer.
    Run(IdempotentRequest),
}

/// A key as callers may send it: 1 to 255 visible ASCII characters.
pub fn parse_key(raw: &[u8]) -> Result<String> {
    let valid = !raw.is_empty() && raw.len() <= 255 && raw.iter().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(String::from_utf8_lossy(raw).into_owned())
    } else {
        Err(Error::validation(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters (a UUID is a good key)",
        ))
    }
}

/// A digest of the request that ignores key order and white space in a JSON body.
pub fn request_hash(operation: &str, body: &[u8]) -> String {
    let canonical = match serde_json::from_slice::<Value>(body) {
        Ok(value) => canonical_json(&value),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    sha256_hex(format!("{operation}\n{canonical}").as_bytes())
}

fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

/// Takes the key for this request, or says why not. A first request that has run longer than
/// `lease` is taken to have died and the key is taken over.
pub async fn claim(
    records: &dyn SyncRecordStore,
    key: String,
    request_hash: String,
    ttl: Duration,
    lease: Duration,
) -> Result<Claim> {
    let now = Utc::now();
    let stored = records.get_idempotent(&key).await?;
    let live = stored.as_ref().filter(|s| s.expires_at > now);
    if let Some(stored) = live {
        if stored.request_hash != request_hash {
            return Err(Error::IdempotencyKeyReused);
        }
        let lease = chrono::Duration::from_std(lease).unwrap_or_default();
        match &stored.response {
            Some(response) => return Ok(Claim::Replay(response.clone())),
            None if now - stored.created_at < lease => return Err(Error::SyncInProgress),
            None => {}
        }
    }
    let claimed = IdempotentRequest {
        key,
        request_hash,
        response: None,
        created_at: now,
        expires_at: now + chrono::Duration::from_std(ttl).unwrap_or_default(),
        version: stored.as_ref().map_or(1, |s| s.version + 1),
    };
    match records
        .put_idempotent(&claimed, stored.as_ref().map(|s| s.version))
        .await?
    {
        WriteOutcome::Written => Ok(Claim::Run(claimed)),
        WriteOutcome::Conflict => Err(Error::SyncInProgress),
    }
}

/// Stores the answer of a claimed request. Answers that a retry could change (409, 429, 5xx)
/// are not kept: the key is freed so that the retry runs.
pub async fn finish(
    records: &dyn SyncRecordStore,
    claimed: IdempotentRequest,
    status: u16,
    body: Value,
) {
    let keep = status < 500 && status != 409 && status != 429;
    let finished = IdempotentRequest {
        response: keep.then_some(StoredResponse { status, body }),
        expires_at: if keep { claimed.expires_at } else { Utc::now() },
        version: claimed.version + 1,
        ..claimed.clone()
    };
    if let Err(e) = records
        .put_idempotent(&finished, Some(claimed.version))
        .await
    {
        // The key stays claimed until its lease runs out; a retry then runs again, which the
        // sync record keeps safe.
        tracing::warn!(error = %e, "could not store the answer of an idempotent request");
    }
}
