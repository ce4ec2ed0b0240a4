//! The port for shared rate budgets: one token bucket per CRM account and lane, kept as a
//! "full-at" instant (the generic cell rate algorithm), with in-memory, local-file and DynamoDB
//! implementations.
//!
//! A lane's state is one number: the instant (epoch microseconds) at which its bucket would be
//! full again. Taking tokens worth `cost` microseconds of refill moves it to
//! `max(full_at, now) + cost`, allowed only while that stays at or under a `ceiling` the caller
//! derives from the bucket's size and its priority. So a take is one conditional write that
//! needs no read first: concurrent takers serialise on the item instead of racing a
//! read-modify-write.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::budget::spec::Lane;
use crate::error::Result;

/// One lane's part of a take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneTake {
    pub lane: Lane,
    /// Microseconds of refill the tokens taken stand for.
    pub cost_us: i64,
    /// The latest the lane's new full-at may be for the take to be granted.
    pub ceiling_us: i64,
}

/// What a take came to. Both carry each lane's full-at in the order of the takes: the new one
/// when granted, the current one (never before `now`) when refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    Granted(Vec<i64>),
    Refused(Vec<i64>),
}

/// Where the buckets of every CRM account live, shared by every function instance.
#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// Takes every lane's tokens together, or none. `known` is the caller's last sight of each
    /// lane's full-at: a hint that saves a second write, never trusted for the decision.
    async fn take(
        &self,
        key: &str,
        takes: &[LaneTake],
        now_us: i64,
        known: &[Option<i64>],
    ) -> Result<Taken>;
    /// Moves the lane's full-at to `at_least_us` unless it is later already: fewer tokens, when
    /// the CRM says fewer requests remain than the bucket holds.
    async fn hold_until(&self, key: &str, lane: Lane, at_least_us: i64) -> Result<()>;
}

/// The algorithm's step over the lanes' current full-at: every lane's new full-at, or `None`
/// when one of them would pass its ceiling.
pub fn apply(current: &[Option<i64>], takes: &[LaneTake], now_us: i64) -> Option<Vec<i64>> {
    takes
        .iter()
        .zip(current)
        .map(|(take, full_at)| {
            let next = full_at.unwrap_or(now_us).max(now_us) + take.cost_us;
            (next <= take.ceiling_us).then_some(next)
        })
        .collect()
}

/// The lanes' current full-at as a refusal reports them.
pub fn refused(current: &[Option<i64>], now_us: i64) -> Taken {
    Taken::Refused(
        current
            .iter()
            .map(|f| f.unwrap_or(now_us).max(now_us))
            .collect(),
    )
}

/// Buckets in this process's memory, for unit tests and for an app wired without a shared
/// store (they are then per process, not per account).
#[derive(Default)]
pub struct MemoryBudgetStore {
    lanes: Mutex<HashMap<(String, Lane), i64>>,
}

impl MemoryBudgetStore {
    /// A lane's full-at, if it was ever taken from.
    pub fn full_at(&self, key: &str, lane: Lane) -> Option<i64> {
        let lanes = self.lanes.lock().expect("not poisoned");
        lanes.get(&(key.to_string(), lane)).copied()
    }
}

#[async_trait]
impl BudgetStore for MemoryBudgetStore {
    async fn take(
        &self,
        key: &str,
        takes: &[LaneTake],
        now_us: i64,
        _known: &[Option<i64>],
    ) -> Result<Taken> {
        let mut lanes = self.lanes.lock().expect("not poisoned");
        let current: Vec<Option<i64>> = takes
            .iter()
            .map(|t| lanes.get(&(key.to_string(), t.lane)).copied())
            .collect();
        Ok(match apply(&current, takes, now_us) {
            Some(next) => {
                for (take, full_at) in takes.iter().zip(&next) {
                    lanes.insert((key.to_string(), take.lane), *full_at);
                }
                Taken::Granted(next)
            }
            None => refused(&current, now_us),
        })
    }

    async fn hold_until(&self, key: &str, lane: Lane, at_least_us: i64) -> Result<()> {
        let mut lanes = self.lanes.lock().expect("not poisoned");
        let full_at = lanes.entry((key.to_string(), lane)).or_insert(at_least_us);
        *full_at = (*full_at).max(at_least_us);
        Ok(())
    }
}

/// The storage key of an account's buckets; never collides with records, leases or
/// idempotency keys.
pub fn budget_key(account: &str) -> String {
    format!("budget#{account}")
}
