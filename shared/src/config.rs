//! Configuration from the environment, read once per cold start.

use std::path::PathBuf;
use std::time::Duration;

/// Which implementation serves the connection and sync-record stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Secrets Manager and DynamoDB (through `aws-config`, so `AWS_ENDPOINT_URL` redirects them).
    Aws,
    /// Files under `CRM_SYNC_DATA_DIR`, for running without AWS.
    Local,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub store: StoreKind,
    /// Root of the local stores (`connections/`, `records/`).
    pub data_dir: PathBuf,
    pub table_name: String,
    pub secret_prefix: String,
    /// The key callers must send in `x-api-key`. `None` leaves the check to API Gateway.
    pub api_key: Option<String>,
    pub crm_timeout: Duration,
    /// The longest wait for a CRM's `Retry-After` inside one invocation; longer waits fail fast.
    pub max_retry_wait: Duration,
    /// Attempts per CRM call for retryable failures (429, 5xx, timeouts).
    pub crm_attempts: u32,
    /// How long a pending record blocks a concurrent sync of the same record.
    pub sync_lease: Duration,
    /// Replays stop after this many attempts; the record stays `failed` for a person to look at.
    pub max_sync_attempts: u32,
    /// How long an `Idempotency-Key` and its stored answer are kept.
    pub idempotency_ttl: Duration,
    /// How long a warm container serves a connection from memory before reading Secrets Manager
    /// again (`0`: every request reads it). A CRM's 401/403 drops it sooner.
    pub connection_cache_ttl: Duration,
    /// Whether CRM requests take tokens from their account's shared rate budget
    /// (`CRM_SYNC_RATE_BUDGETS=off` turns budgets off).
    pub rate_budgets: bool,
    /// The longest a live request queues for a token of its account's budget; a longer wait
    /// answers 429 at once, with the wait as `Retry-After`.
    pub live_wait: Duration,
    /// The longest batch work waits for tokens above the live reserve before giving up for now.
    pub batch_wait: Duration,
    /// How long a synced record is kept before the table's TTL removes it (`None`: kept).
    pub synced_retention: Option<Duration>,
    /// Records of one connection the scheduled sync runs at once (other people's records only:
    /// one person's records run in order).
    pub drain_concurrency: usize,
    /// The scheduled sync starts no record with less than this left before its deadline.
    pub drain_reserve: Duration,
}

pub const LOCAL_DEV_API_KEY: &str = "local-dev-key";

impl Config {
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let store = match get("CRM_SYNC_STORE").as_deref().map(str::trim) {
            Some("aws") => StoreKind::Aws,
            _ => StoreKind::Local,
        };
        let millis = |name: &str, default: u64| {
            Duration::from_millis(
                get(name)
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(default),
            )
        };
        let number = |name: &str, default: u32| {
            get(name)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        let api_key = get("CRM_SYNC_API_KEY")
            .filter(|k| !k.is_empty())
            .or_else(|| (store == StoreKind::Local).then(|| LOCAL_DEV_API_KEY.to_string()));
        Config {
            store,
            data_dir: get("CRM_SYNC_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".local")),
            table_name: get("CRM_SYNC_TABLE").unwrap_or_else(|| "crm-sync-records".into()),
            secret_prefix: get("CRM_SYNC_SECRET_PREFIX")
                .unwrap_or_else(|| "crm-sync/connections/".into()),
            api_key,
            crm_timeout: millis("CRM_SYNC_CRM_TIMEOUT_MS", 10_000),
            max_retry_wait: millis("CRM_SYNC_MAX_RETRY_WAIT_MS", 5_000),
            crm_attempts: number("CRM_SYNC_CRM_ATTEMPTS", 3).max(1),
            sync_lease: millis("CRM_SYNC_LEASE_MS", 60_000),
            max_sync_attempts: number("CRM_SYNC_MAX_ATTEMPTS", 8).max(1),
            idempotency_ttl: Duration::from_secs(
                3600 * u64::from(number("CRM_SYNC_IDEMPOTENCY_TTL_HOURS", 24).max(1)),
            ),
            connection_cache_ttl: Duration::from_secs(u64::from(number(
                "CRM_SYNC_CONNECTION_CACHE_SECONDS",
                300,
            ))),
            rate_budgets: !matches!(
                get("CRM_SYNC_RATE_BUDGETS").as_deref().map(str::trim),
                Some("off" | "false" | "0")
            ),
            live_wait: millis("CRM_SYNC_LIVE_WAIT_MS", 3_000),
            batch_wait: millis("CRM_SYNC_BATCH_WAIT_MS", 60_000),
            synced_retention: match number("CRM_SYNC_SYNCED_RETENTION_DAYS", 365) {
                0 => None,
                days => Some(Duration::from_secs(86_400 * u64::from(days))),
            },
            drain_concurrency: number("CRM_SYNC_DRAIN_CONCURRENCY", 4).max(1) as usize,
            drain_reserve: millis("CRM_SYNC_DRAIN_RESERVE_MS", 30_000),
        }
    }
}
