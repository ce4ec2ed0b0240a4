//! One rate budget per CRM account, shared by every function instance: a token bucket in the
//! `BudgetStore` (DynamoDB, or local files), taken from before each CRM request and corrected
//! from what the CRM's answers say.
//!
//! - **Leases.** A request that finds no token in this process claims a small lease (a few
//!   tokens) in one conditional write and spends it on the next requests of the same account, so
//!   a live sync makes one budget write and a request whose lease is still warm makes none.
//!   Claimed tokens are usable for `lease_ttl` only; the bucket's sizing allows for that.
//! - **Priorities.** Work runs `Live` unless it runs inside `run_as(Priority::Batch, …)` (the
//!   scheduled drain of batch work does). Live requests may take every token and queue for up to
//!   the live wait; batch work takes only tokens above the lane's reserve and waits for them, so
//!   a booking arriving in the middle of a 10,000-record batch finds the reserve there.
//! - **Corrections.** When the CRM reports fewer remaining requests than the bucket holds (other
//!   apps share the account), the bucket is lowered to that; when it reports another limit than
//!   the tier's, this process resizes the bucket; when it refuses a request for its rate limit,
//!   the bucket drops to its reserve, which pauses batch work.
//! - **Failing open.** If the budget store cannot be reached, the request is sent without a
//!   token (and logged): the CRM's own 429 handling still applies.

pub mod headers;
pub mod spec;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

use crate::connection::Connection;
use crate::domain::CrmType;
use crate::error::{Error, Result};
use crate::store::budget::{BudgetStore, LaneTake, Taken};
use spec::{BudgetPlan, Lane, LaneSpec};

/// Whose work a CRM request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A caller is waiting (`sync-*` from n8n): may use the whole bucket, waits at most the
    /// live wait.
    Live,
    /// Background work (a batch drain): leaves the reserve, waits for tokens.
    Batch,
}

impl Priority {
    fn index(self) -> usize {
        match self {
            Priority::Live => 0,
            Priority::Batch => 1,
        }
    }
}

tokio::task_local! {
    static PRIORITY: Priority;
}

/// Runs `work` with its CRM requests at `priority`. Tasks it spawns start `Live` again unless
/// they are wrapped too.
pub async fn run_as<F: Future>(priority: Priority, work: F) -> F::Output {
    PRIORITY.scope(priority, work).await
}

/// The priority of the running task: `Live` outside any `run_as`.
pub fn current_priority() -> Priority {
    PRIORITY.try_with(|p| *p).unwrap_or(Priority::Live)
}

fn epoch_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// Every account's bucket this process has used, over one store. Cloning shares them.
#[derive(Clone)]
pub struct Budgets {
    inner: Arc<Inner>,
}

struct Inner {
    store: Option<Arc<dyn BudgetStore>>,
    buckets: Mutex<HashMap<String, Arc<AccountBucket>>>,
    live_wait: Duration,
    batch_wait: Duration,
}

impl Budgets {
    /// Budgets kept in `store`; live requests queue for at most `live_wait`, batch work waits
    /// at most `batch_wait` before giving up with `BudgetExhausted`.
    pub fn new(store: Arc<dyn BudgetStore>, live_wait: Duration, batch_wait: Duration) -> Self {
        Self::with_store(Some(store), live_wait, batch_wait)
    }

    /// Budgets in `store` with the configured waits, or off when the configuration says so.
    pub fn from_config(config: &crate::config::Config, store: Arc<dyn BudgetStore>) -> Self {
        if config.rate_budgets {
            Self::new(store, config.live_wait, config.batch_wait)
        } else {
            Self::off()
        }
    }

    /// The store an app gets unless it is given one: local files under the data folder for
    /// the local run; for an AWS configuration built without its DynamoDB store (tests), this
    /// process's memory.
    pub fn default_store(config: &crate::config::Config) -> Arc<dyn BudgetStore> {
        match config.store {
            crate::config::StoreKind::Local => Arc::new(
                crate::store::budget_local::LocalBudgetStore::new(config.data_dir.join("budgets")),
            ),
            crate::config::StoreKind::Aws => {
                Arc::new(crate::store::budget::MemoryBudgetStore::default())
            }
        }
    }

    /// No budgets: requests go out as the CRM's answers allow (the behaviour before budgets).
    pub fn off() -> Self {
        Self::with_store(None, Duration::ZERO, Duration::ZERO)
    }

    fn with_store(
        store: Option<Arc<dyn BudgetStore>>,
        live_wait: Duration,
        batch_wait: Duration,
    ) -> Self {
        Budgets {
            inner: Arc::new(Inner {
                store,
                buckets: Mutex::default(),
                live_wait,
                batch_wait,
            }),
        }
    }

    pub fn is_on(&self) -> bool {
        self.inner.store.is_some()
    }

    /// The budget a connection's requests take from; `None` when budgets are off or the
    /// connection has none (see `spec::plan_for`).
    pub fn for_connection(&self, connection: &Connection) -> Result<Option<RateBudget>> {
        if !self.is_on() {
            return Ok(None);
        }
        let Some(plan) = spec::plan_for(connection)? else {
            return Ok(None);
        };
        let account = match &plan.account {
            Some(account) => format!("account:{account}"),
            None => credential_digest(connection),
        };
        Ok(Some(RateBudget {
            budgets: self.clone(),
            crm: connection.crm_type,
            account,
            explicit: plan.account.is_some(),
            plan: Arc::new(plan),
        }))
    }

    fn bucket(&self, key: String, plan: &BudgetPlan) -> Arc<AccountBucket> {
        let mut buckets = self.inner.buckets.lock().expect("not poisoned");
        buckets
            .entry(key.clone())
            .or_insert_with(|| Arc::new(AccountBucket::new(key, plan)))
            .clone()
    }
}

/// The part of the account's identity the API host does not give: the credential the CRM
/// counts by, as a digest (never the secret). Hosts that are the account's own (a Salesforce
/// instance, a Freshsales bundle, a Sugar instance) need none.
fn credential_digest(connection: &Connection) -> String {
    let names: &[&str] = match connection.crm_type {
        // Per portal; a private-app token belongs to one portal.
        CrmType::Hubspot => &["accessToken", "apiKey"],
        // Pipedrive counts bursts per API token.
        CrmType::Pipedrive => &["apiToken"],
        // Credits are per org; the API host (per data centre) is shared by every org.
        CrmType::Zoho => &["refreshToken"],
        // Dataverse counts per (application) user.
        CrmType::Dynamics => &["clientId"],
        CrmType::Salesforce | CrmType::Freshsales | CrmType::Sugarcrm => &[],
    };
    names
        .iter()
        .find_map(|name| connection.credentials.get(*name))
        .map(|secret| {
            let digest = crate::store::sha256_hex(secret.expose().as_bytes());
            format!("credential:{}", &digest[..16])
        })
        .unwrap_or_else(|| "host".into())
}

/// `scheme://host[:port]` of a request, the account's address for most CRMs.
fn origin(url: &reqwest::Url) -> String {
    let mut origin = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        origin.push_str(&format!(":{port}"));
    }
    origin.to_ascii_lowercase()
}

/// Whether a request goes to the CRM's separately limited search API.
fn is_search(crm: CrmType, url: &reqwest::Url) -> bool {
    let path = url.path().trim_end_matches('/');
    match crm {
        CrmType::Hubspot => path.ends_with("/search"),
        CrmType::Pipedrive => path.ends_with("/search") || path.ends_with("/itemSearch"),
        _ => false,
    }
}

/// One connection's handle on its account's budget, attached to the adapter's HTTP client.
#[derive(Clone)]
pub struct RateBudget {
    budgets: Budgets,
    crm: CrmType,
    account: String,
    explicit: bool,
    plan: Arc<BudgetPlan>,
}

impl std::fmt::Debug for RateBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateBudget")
            .field("crm", &self.crm)
            .field("account", &self.account)
            .finish()
    }
}

impl RateBudget {
    /// The bucket's key for a request to `url`: the CRM, the API host unless the connection
    /// names the account, and the account part.
    pub fn key(&self, url: &reqwest::Url) -> String {
        if self.explicit {
            format!("{}#{}", self.crm, self.account)
        } else {
            format!("{}#{}#{}", self.crm, origin(url), self.account)
        }
    }

    pub fn plan(&self) -> &BudgetPlan {
        &self.plan
    }

    fn lanes(&self, url: &reqwest::Url) -> Vec<Lane> {
        let mut lanes = vec![Lane::General];
        if self.plan.search.is_some() && is_search(self.crm, url) {
            lanes.push(Lane::Search);
        }
        lanes
    }

    /// Waits for the tokens a request to `url` needs: at the running task's priority, up to the
    /// live wait for live work (else `BudgetExhausted` with the time one would come), up to the
    /// batch wait for batch work.
    pub async fn acquire(&self, url: &reqwest::Url) -> Result<()> {
        let Some(store) = self.budgets.inner.store.clone() else {
            return Ok(());
        };
        let lanes = self.lanes(url);
        let bucket = self.budgets.bucket(self.key(url), &self.plan);
        let priority = current_priority();
        let live_wait = self.budgets.inner.live_wait;
        let give_up = Instant::now()
            + match priority {
                Priority::Live => Duration::ZERO,
                Priority::Batch => self.budgets.inner.batch_wait,
            };
        // When a refused take was told to come back; set once this take has been refused.
        let mut due_us = None;
        loop {
            match bucket
                .take(store.as_ref(), &lanes, priority, live_wait, due_us)
                .await
            {
                Ok(Claim::Ready(wait)) => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    return Ok(());
                }
                Ok(Claim::NotBefore(wait)) => {
                    if Instant::now() + wait > give_up {
                        tracing::info!(key = %bucket.key, ?priority, wait_ms = wait.as_millis() as u64, "rate budget spent for now");
                        return Err(Error::BudgetExhausted { retry_after: wait });
                    }
                    // The first wait is the bucket's own answer, to the microsecond: a worker
                    // alone on the account (a scheduled pass) loses nothing to it. Waiters
                    // refused again lost a race for the same tokens, and spread out.
                    let wait = if due_us.is_some() {
                        with_jitter(wait)
                    } else {
                        wait
                    };
                    due_us = Some(epoch_us() + wait.as_micros() as i64);
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    tracing::warn!(key = %bucket.key, error = %e, "rate budget unavailable; sending without a token");
                    return Ok(());
                }
            }
        }
    }

    /// Corrects the account's bucket from the CRM's answer to a request to `url`.
    pub async fn observe(&self, url: &reqwest::Url, status: u16, headers: &HeaderMap, body: &str) {
        let Some(store) = self.budgets.inner.store.clone() else {
            return;
        };
        let reading = headers::read(self.crm, status, headers, body);
        if reading == headers::LimitReading::default() {
            return;
        }
        let bucket = self.budgets.bucket(self.key(url), &self.plan);
        if let Some(limit) = reading.limit {
            bucket.resize(limit);
        }
        let lane = if reading.refused && self.lanes(url).contains(&Lane::Search) {
            Lane::Search
        } else {
            Lane::General
        };
        let lowered = if reading.refused {
            bucket.lower(
                lane,
                LowerTo::Reserve {
                    at_most: crate::crm::http::retry_after(headers),
                },
            )
        } else {
            reading
                .remaining
                .and_then(|remaining| bucket.lower(Lane::General, LowerTo::Tokens(remaining)))
        };
        if let Some(at_least_us) = lowered
            && let Err(e) = store.hold_until(&bucket.key, lane, at_least_us).await
        {
            tracing::warn!(key = %bucket.key, error = %e, "could not correct the rate budget");
        }
    }
}

/// How late a timer may wake a refused take and still have it count from the instant it was told
/// to come back (tokio's timer has a resolution of a millisecond): without it, a bucket drained by
/// one worker would refill that much slower than it could. The token's request is then sent that
/// much after the token's instant, well within `SEND_SLACK`.
const TIMER_LATENESS_US: i64 = 2_000;

/// The instant a take counts from: now, or the instant a refused take was told to come back when
/// it wakes a little after it.
fn take_instant(due_us: Option<i64>) -> i64 {
    let now = epoch_us();
    match due_us {
        Some(due) if due <= now => due.max(now - TIMER_LATENESS_US),
        _ => now,
    }
}

/// Up to a fifth more, so waiters that were refused together do not come back together.
fn with_jitter(wait: Duration) -> Duration {
    wait + crate::crm::http::jitter(wait / 5 + Duration::from_millis(1))
}

/// What a take came to.
enum Claim {
    /// The tokens are this process's; send after this wait (a live request queued in the bucket).
    Ready(Duration),
    /// No tokens for this priority before this long.
    NotBefore(Duration),
}

/// Tokens claimed from the shared bucket and not yet spent.
#[derive(Debug, Clone, Copy, Default)]
struct Lease {
    tokens: u32,
    valid_from: Option<Instant>,
    expires: Option<Instant>,
}

impl Lease {
    fn usable(&self, now: Instant) -> bool {
        self.tokens > 0 && self.expires.is_some_and(|e| now < e)
    }
}

enum LowerTo {
    /// Keep at most this many tokens.
    Tokens(u64),
    /// Keep only the batch reserve; for at most `at_most` when the refusal said when to come
    /// back (`Retry-After`): a slow bucket (a daily limit) would otherwise pause batch work for
    /// hours after a refusal that asked for seconds.
    Reserve { at_most: Option<Duration> },
}

/// One account's bucket as this process sees it.
struct AccountBucket {
    key: String,
    /// Per lane; corrected when the CRM reports another limit.
    specs: Mutex<[Option<LaneSpec>; 2]>,
    /// Per lane, the full-at last read back from the store.
    seen: Mutex<[Option<i64>; 2]>,
    /// Per priority, per lane. One claim at a time per priority; live never waits on batch.
    leases: [tokio::sync::Mutex<[Lease; 2]>; 2],
    /// Per lane, the last correction written, so a stream of answers writes few.
    corrected: Mutex<[Option<Instant>; 2]>,
}

impl AccountBucket {
    fn new(key: String, plan: &BudgetPlan) -> Self {
        AccountBucket {
            key,
            specs: Mutex::new([Some(plan.general.clone()), plan.search.clone()]),
            seen: Mutex::default(),
            leases: Default::default(),
            corrected: Mutex::default(),
        }
    }

    fn spec(&self, lane: Lane) -> Option<LaneSpec> {
        self.specs.lock().expect("not poisoned")[lane.index()].clone()
    }

    fn see(&self, lane: Lane, full_at: i64) {
        let mut seen = self.seen.lock().expect("not poisoned");
        let slot = &mut seen[lane.index()];
        *slot = Some(slot.map_or(full_at, |s| s.max(full_at)));
    }

    /// Spends a token of each lane from this process's leases, claiming a lease for each lane
    /// that has none left.
    async fn take(
        &self,
        store: &dyn BudgetStore,
        lanes: &[Lane],
        priority: Priority,
        live_wait: Duration,
        due_us: Option<i64>,
    ) -> Result<Claim> {
        let mut leases = self.leases[priority.index()].lock().await;
        let now = Instant::now();
        let missing: Vec<(Lane, LaneSpec)> = lanes
            .iter()
            .filter(|lane| !leases[lane.index()].usable(now))
            .filter_map(|lane| self.spec(*lane).map(|spec| (*lane, spec)))
            .collect();
        if !missing.is_empty() {
            let now_us = take_instant(due_us);
            let live_wait_us = live_wait.as_micros() as i64;
            let takes: Vec<(LaneTake, u32)> = missing
                .iter()
                .map(|(lane, spec)| {
                    let (size, room_us) = match priority {
                        Priority::Live => (spec.live_lease, spec.tau_us() + live_wait_us),
                        // Rounded as the cost is: a lease of all the room above the reserve
                        // must fit in it (truncating here made it a microsecond too large).
                        Priority::Batch => (
                            spec.batch_lease,
                            (f64::from(spec.burst - spec.reserve) * spec.token_us()).round() as i64,
                        ),
                    };
                    let take = LaneTake {
                        lane: *lane,
                        cost_us: (f64::from(size) * spec.token_us()).round() as i64,
                        ceiling_us: now_us + room_us,
                    };
                    (take, size)
                })
                .collect();
            let known: Vec<Option<i64>> = {
                let seen = self.seen.lock().expect("not poisoned");
                missing.iter().map(|(l, _)| seen[l.index()]).collect()
            };
            let only_takes: Vec<LaneTake> = takes.iter().map(|(t, _)| *t).collect();
            match store.take(&self.key, &only_takes, now_us, &known).await? {
                Taken::Granted(full_ats) => {
                    for (((lane, spec), (_, size)), full_at) in
                        missing.iter().zip(&takes).zip(full_ats)
                    {
                        self.see(*lane, full_at);
                        // The lease's tokens all conform once the bucket could hold them.
                        let conforming_in = (full_at - spec.tau_us() - now_us).max(0);
                        let valid_from = now + Duration::from_micros(conforming_in as u64);
                        leases[lane.index()] = Lease {
                            tokens: *size,
                            valid_from: Some(valid_from),
                            expires: Some(valid_from + spec.lease_ttl),
                        };
                    }
                }
                Taken::Refused(full_ats) => {
                    let mut wait_us = 1_000;
                    for (((lane, spec), (take, _)), full_at) in
                        missing.iter().zip(&takes).zip(full_ats)
                    {
                        self.see(*lane, full_at);
                        // When the same take would fit under the same room.
                        let room_us = take.ceiling_us - now_us;
                        let fits_in = full_at + take.cost_us - room_us - now_us;
                        let until = match priority {
                            // Report when the tokens conform, not merely when a queue opens.
                            Priority::Live => full_at + take.cost_us - spec.tau_us() - now_us,
                            Priority::Batch => fits_in,
                        };
                        wait_us = wait_us.max(until);
                    }
                    return Ok(Claim::NotBefore(Duration::from_micros(wait_us as u64)));
                }
            }
        }
        let mut ready = now;
        for lane in lanes {
            let lease = &mut leases[lane.index()];
            if self.spec(*lane).is_none() {
                continue;
            }
            lease.tokens = lease.tokens.saturating_sub(1);
            if let Some(valid_from) = lease.valid_from {
                ready = ready.max(valid_from);
            }
        }
        Ok(Claim::Ready(ready.saturating_duration_since(now)))
    }

    /// Adopts the limit the CRM reported for the general lane, when it is for the same window
    /// and differs from the one the bucket was sized from.
    fn resize(&self, limit: spec::RateLimit) {
        let mut specs = self.specs.lock().expect("not poisoned");
        let Some(current) = specs[0].as_mut() else {
            return;
        };
        let same_window = limit.window.abs_diff(current.limit.window) <= current.limit.window / 100;
        if same_window && limit.requests != current.limit.requests {
            tracing::info!(key = %self.key, from = current.limit.requests, to = limit.requests,
                window_s = limit.window.as_secs_f64(), "the CRM reports another rate limit; bucket resized");
            *current = LaneSpec::sized(limit, &current.also.clone(), current.reserve_share);
        }
    }

    /// Tokens of `lane` this process holds in leases and has not spent: taken from the bucket,
    /// not yet counted by the CRM.
    fn held(&self, lane: Lane) -> u64 {
        let now = Instant::now();
        self.leases
            .iter()
            .filter_map(|leases| leases.try_lock().ok())
            .map(|leases| leases[lane.index()])
            .filter(|lease| lease.usable(now))
            .map(|lease| u64::from(lease.tokens))
            .sum()
    }

    /// The full-at that leaves the lane with at most `to`, when that is lower than what this
    /// process believes it holds and no correction was written a moment ago.
    fn lower(&self, lane: Lane, to: LowerTo) -> Option<i64> {
        let spec = self.spec(lane)?;
        let now_us = epoch_us();
        let keep = match to {
            // What the CRM still allows, less what this process already holds for it.
            LowerTo::Tokens(n) => {
                n.saturating_sub(self.held(lane)).min(u64::from(spec.burst)) as f64
            }
            LowerTo::Reserve { .. } => f64::from(spec.reserve),
        };
        let mut at_least =
            now_us + ((f64::from(spec.burst) - keep) * spec.token_us()).round() as i64;
        if let LowerTo::Reserve {
            at_most: Some(wait),
        } = to
        {
            at_least = at_least.min(now_us + wait.as_micros() as i64);
        }
        let seen = self.seen.lock().expect("not poisoned")[lane.index()];
        if seen.is_some_and(|s| s >= at_least) {
            return None;
        }
        {
            let mut corrected = self.corrected.lock().expect("not poisoned");
            let last = &mut corrected[lane.index()];
            if matches!(to, LowerTo::Tokens(_))
                && last.is_some_and(|at| at.elapsed() < spec.lease_ttl / 2)
            {
                return None;
            }
            *last = Some(Instant::now());
        }
        self.see(lane, at_least);
        Some(at_least)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{ConnectionSettings, SecretString};
    use crate::store::budget::MemoryBudgetStore;
    use serde_json::json;

    fn connection(crm: CrmType, budget: serde_json::Value) -> Connection {
        let mut settings = ConnectionSettings::default();
        settings.extra.insert("rateBudget".into(), budget);
        Connection {
            id: None,
            crm_type: crm,
            credentials: [("accessToken".to_string(), SecretString::new("t0k"))].into(),
            settings,
        }
    }

    fn url(path: &str) -> reqwest::Url {
        reqwest::Url::parse(&format!("https://api.hubapi.com{path}")).unwrap()
    }

    fn budgets(live_wait: Duration) -> (Budgets, Arc<MemoryBudgetStore>) {
        let store = Arc::new(MemoryBudgetStore::default());
        (
            Budgets::new(store.clone(), live_wait, Duration::from_secs(5)),
            store,
        )
    }

    #[tokio::test]
    async fn a_live_lease_serves_the_next_requests_of_the_process() {
        let (budgets, _) = budgets(Duration::from_secs(1));
        let budget = budgets
            .for_connection(&connection(CrmType::Dynamics, json!({})))
            .unwrap()
            .unwrap();
        assert_eq!(budget.plan().general.live_lease, 4);
        let bucket = budgets.bucket(budget.key(&url("/x")), budget.plan());
        for _ in 0..4 {
            budget
                .acquire(&url("/crm/v3/objects/contacts"))
                .await
                .unwrap();
        }
        let lease = bucket.leases[0].lock().await[0];
        assert_eq!(lease.tokens, 0, "four requests, one lease of four");
    }

    /// One take of batch work from the bucket of `budget` for a request to `target`.
    async fn batch_take(
        budgets: &Budgets,
        budget: &RateBudget,
        target: &reqwest::Url,
        lane: Lane,
        due_us: Option<i64>,
    ) -> Result<Claim> {
        run_as(Priority::Batch, async {
            budgets
                .bucket(budget.key(target), budget.plan())
                .take(
                    budgets.inner.store.as_deref().unwrap(),
                    &[lane],
                    Priority::Batch,
                    Duration::ZERO,
                    due_us,
                )
                .await
        })
        .await
    }

    #[tokio::test]
    async fn batch_takes_a_lease_that_is_all_the_room_above_the_reserve() {
        let (budgets, _) = budgets(Duration::ZERO);
        // 40 searches a second: burst 2, reserve 1, a batch lease of 1: the room and the lease's
        // cost are the same, to the microsecond.
        let budget = budgets
            .for_connection(&connection(
                CrmType::Hubspot,
                json!({"searchRequests": 40, "searchWindowSeconds": 1}),
            ))
            .unwrap()
            .unwrap();
        let spec = budget.plan().search.clone().unwrap();
        assert_eq!(spec.burst - spec.reserve, spec.batch_lease, "{spec:?}");
        let search = url("/crm/v3/objects/leads/search");
        let claim = batch_take(&budgets, &budget, &search, Lane::Search, None)
            .await
            .unwrap();
        assert!(
            matches!(claim, Claim::Ready(_)),
            "a full bucket grants batch work its lease"
        );
    }

    #[tokio::test]
    async fn batch_never_takes_the_reserve_and_live_still_can() {
        let (budgets, _) = budgets(Duration::ZERO);
        let budget = budgets
            .for_connection(&connection(
                CrmType::Sugarcrm,
                json!({"requests": 100, "windowSeconds": 3600}),
            ))
            .unwrap()
            .unwrap();
        let spec = budget.plan().general.clone();
        let target = reqwest::Url::parse("https://sugar.example.com/rest/v11/Contacts").unwrap();
        let mut batch_tokens = 0;
        while batch_take(&budgets, &budget, &target, Lane::General, None)
            .await
            .is_ok_and(|c| matches!(c, Claim::Ready(_)))
        {
            batch_tokens += 1;
            assert!(batch_tokens <= spec.burst, "batch ran past the bucket");
        }
        assert!(batch_tokens <= spec.burst - spec.reserve + spec.batch_lease);
        // The reserve is still there for a live request, with no wait.
        budget.acquire(&target).await.unwrap();
    }

    /// A batch take from a bucket of 20 per 2 s (as Pipedrive Essential: batch work takes only
    /// from a full bucket) that was full at `full_at`, coming back for a token due at `due_us`:
    /// the bucket's new full-at, and the instants just before and after the take.
    async fn batch_take_from_a_bucket_full_at(
        full_at: i64,
        due_us: Option<i64>,
    ) -> (i64, i64, i64, i64) {
        let (budgets, store) = budgets(Duration::ZERO);
        let budget = budgets
            .for_connection(&connection(
                CrmType::Sugarcrm,
                json!({"requests": 20, "windowSeconds": 2}),
            ))
            .unwrap()
            .unwrap();
        let spec = budget.plan().general.clone();
        assert_eq!((spec.burst, spec.reserve, spec.batch_lease), (2, 1, 1));
        let target = reqwest::Url::parse("https://sugar.example.com/rest/v11/Calls").unwrap();
        let key = budget.key(&target);
        store
            .hold_until(&key, Lane::General, full_at)
            .await
            .unwrap();
        let before = epoch_us();
        let claim = batch_take(&budgets, &budget, &target, Lane::General, due_us)
            .await
            .unwrap();
        let after = epoch_us();
        assert!(matches!(claim, Claim::Ready(_)), "a full bucket");
        let cost = spec.token_us().round() as i64;
        (
            store.full_at(&key, Lane::General).unwrap(),
            cost,
            before,
            after,
        )
    }

    #[tokio::test]
    async fn a_batch_take_woken_late_counts_from_when_it_was_told_to_come_back() {
        // Told to come back when the bucket is full; the timer woke it a millisecond late.
        let due = epoch_us() - 1_000;
        let (full_at, cost, _, _) = batch_take_from_a_bucket_full_at(due, Some(due)).await;
        assert_eq!(full_at, due + cost, "the millisecond is not lost");

        // Due ten milliseconds ago: only a timer's lateness is made up.
        let due = epoch_us() - 10_000;
        let (full_at, cost, before, after) = batch_take_from_a_bucket_full_at(due, Some(due)).await;
        assert!(
            full_at >= before - TIMER_LATENESS_US + cost,
            "{full_at} {before}"
        );
        assert!(
            full_at <= after - TIMER_LATENESS_US + cost,
            "{full_at} {after}"
        );

        // A first take counts from now.
        let (full_at, cost, before, _) = batch_take_from_a_bucket_full_at(due, None).await;
        assert!(full_at >= before + cost);
    }

    #[tokio::test]
    async fn a_live_request_is_refused_with_the_wait_when_it_exceeds_the_live_wait() {
        let (budgets, store) = budgets(Duration::from_millis(50));
        let budget = budgets
            .for_connection(&connection(
                CrmType::Hubspot,
                json!({"requests": 10, "windowSeconds": 60}),
            ))
            .unwrap()
            .unwrap();
        // Another instance spent the bucket a moment ago.
        let key = budget.key(&url("/x"));
        store
            .hold_until(&key, Lane::General, epoch_us() + 120_000_000)
            .await
            .unwrap();
        let error = budget
            .acquire(&url("/crm/v3/objects/contacts"))
            .await
            .unwrap_err();
        match error {
            Error::BudgetExhausted { retry_after } => {
                assert!(retry_after > Duration::from_secs(50), "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_search_takes_a_token_of_both_lanes() {
        let (budgets, store) = budgets(Duration::from_secs(1));
        let budget = budgets
            .for_connection(&connection(CrmType::Hubspot, json!({})))
            .unwrap()
            .unwrap();
        budget
            .acquire(&url("/crm/v3/objects/contacts/search"))
            .await
            .unwrap();
        let key = budget.key(&url("/x"));
        assert!(store.full_at(&key, Lane::General).is_some());
        assert!(store.full_at(&key, Lane::Search).is_some());
    }

    #[tokio::test]
    async fn fewer_remaining_requests_lower_the_bucket_and_a_refusal_keeps_only_the_reserve() {
        let (budgets, store) = budgets(Duration::from_secs(1));
        let budget = budgets
            .for_connection(&connection(CrmType::Hubspot, json!({})))
            .unwrap()
            .unwrap();
        let spec = budget.plan().general.clone();
        let target = url("/crm/v3/objects/contacts");
        let key = budget.key(&target);
        let mut headers = HeaderMap::new();
        headers.insert("x-hubspot-ratelimit-remaining", "3".parse().unwrap());
        let before = epoch_us();
        budget.observe(&target, 200, &headers, "").await;
        let held = store.full_at(&key, Lane::General).unwrap();
        let tokens = f64::from(spec.burst) - (held - before) as f64 / spec.token_us();
        assert!(tokens <= 3.01, "{tokens} tokens left");

        let (budgets, store) = self::budgets(Duration::from_secs(1));
        let budget = budgets
            .for_connection(&connection(CrmType::Hubspot, json!({})))
            .unwrap()
            .unwrap();
        budget.observe(&target, 429, &HeaderMap::new(), "").await;
        let held = store.full_at(&key, Lane::General).unwrap();
        let tokens = f64::from(spec.burst) - (held - before) as f64 / spec.token_us();
        assert!(tokens <= f64::from(spec.reserve) + 0.01, "{tokens}");
    }

    #[tokio::test]
    async fn a_reported_limit_for_the_same_window_resizes_the_bucket() {
        let (budgets, _) = budgets(Duration::from_secs(1));
        let budget = budgets
            .for_connection(&connection(
                CrmType::Hubspot,
                json!({"tier": "professional"}),
            ))
            .unwrap()
            .unwrap();
        let target = url("/crm/v3/objects/contacts");
        let mut headers = HeaderMap::new();
        headers.insert("x-hubspot-ratelimit-max", "100".parse().unwrap());
        headers.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            "10000".parse().unwrap(),
        );
        budget.observe(&target, 200, &headers, "").await;
        let bucket = budgets.bucket(budget.key(&target), budget.plan());
        assert_eq!(bucket.spec(Lane::General).unwrap().limit.requests, 100);
    }

    #[tokio::test]
    async fn the_priority_is_live_unless_the_work_runs_as_batch() {
        assert_eq!(current_priority(), Priority::Live);
        let inside = run_as(Priority::Batch, async { current_priority() }).await;
        assert_eq!(inside, Priority::Batch);
    }

    #[test]
    fn accounts_are_keyed_by_host_and_credential_or_by_the_named_account() {
        let (budgets, _) = budgets(Duration::ZERO);
        let one = budgets
            .for_connection(&connection(CrmType::Hubspot, json!({})))
            .unwrap()
            .unwrap();
        let key = one.key(&url("/crm/v3/objects/contacts"));
        assert!(
            key.starts_with("hubspot#https://api.hubapi.com#credential:"),
            "{key}"
        );
        assert!(!key.contains("t0k"));
        let named = budgets
            .for_connection(&connection(
                CrmType::Hubspot,
                json!({"account": "portal-62515"}),
            ))
            .unwrap()
            .unwrap();
        assert_eq!(named.key(&url("/x")), "hubspot#account:portal-62515");
    }
}
