//! One suite for every rate-budget store: the local files and DynamoDB (on moto) must grant the
//! same tokens, refuse past the bucket, refill at its rate and hold under many concurrent takers.
//!
//! Takes name their instant (`now`) so the cases need no sleeping: a bucket of `TOKENS` tokens,
//! each worth `TOKEN_US` of refill.

use std::sync::Arc;

use crm_sync::budget::spec::Lane;
use crm_sync::store::budget::{BudgetStore, LaneTake, Taken};

const TOKENS: i64 = 10;
const TOKEN_US: i64 = 100_000;
const TAU_US: i64 = TOKENS * TOKEN_US;

fn one(lane: Lane, now_us: i64) -> LaneTake {
    LaneTake {
        lane,
        cost_us: TOKEN_US,
        ceiling_us: now_us + TAU_US,
    }
}

fn key(label: &str) -> String {
    format!("suite#{label}#{}", uuid::Uuid::new_v4())
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Grants one token at a time until the bucket is empty, then refuses and says when it is full;
/// takes of two lanes are all or nothing; `hold_until` only ever moves later.
pub async fn takes_are_granted_until_the_bucket_is_empty(store: &dyn BudgetStore) {
    let key = key("conditional");
    let now = now_us();
    for n in 1..=TOKENS {
        let taken = store
            .take(&key, &[one(Lane::General, now)], now, &[None])
            .await
            .unwrap();
        assert_eq!(taken, Taken::Granted(vec![now + n * TOKEN_US]), "token {n}");
    }
    // A stale hint (the caller thinks the bucket is idle) changes nothing.
    let refused = store
        .take(&key, &[one(Lane::General, now)], now, &[None])
        .await
        .unwrap();
    assert_eq!(refused, Taken::Refused(vec![now + TAU_US]));

    // The search lane is empty: a search takes nothing from the general lane either.
    let other = self::key("lanes");
    for _ in 0..TOKENS {
        store
            .take(&other, &[one(Lane::Search, now)], now, &[None])
            .await
            .unwrap();
    }
    let both = [one(Lane::General, now), one(Lane::Search, now)];
    let refused = store.take(&other, &both, now, &[None, None]).await.unwrap();
    assert!(matches!(refused, Taken::Refused(_)), "{refused:?}");
    let general = store
        .take(&other, &[one(Lane::General, now)], now, &[None])
        .await
        .unwrap();
    assert_eq!(general, Taken::Granted(vec![now + TOKEN_US]), "untouched");

    // Lowered by a correction, never raised by one.
    let held = self::key("hold");
    store
        .hold_until(&held, Lane::General, now + TAU_US - 2 * TOKEN_US)
        .await
        .unwrap();
    store
        .hold_until(&held, Lane::General, now + TOKEN_US)
        .await
        .unwrap();
    let mut granted = 0;
    while let Taken::Granted(_) = store
        .take(&held, &[one(Lane::General, now)], now, &[None])
        .await
        .unwrap()
    {
        granted += 1;
    }
    assert_eq!(granted, 2, "two tokens were left");
}

/// An emptied bucket gives back one token per `TOKEN_US`, and never more than it holds.
pub async fn the_bucket_refills_at_its_rate(store: &dyn BudgetStore) {
    let key = key("refill");
    let start = now_us();
    let all = LaneTake {
        lane: Lane::General,
        cost_us: TAU_US,
        ceiling_us: start + TAU_US,
    };
    assert!(matches!(
        store.take(&key, &[all], start, &[None]).await.unwrap(),
        Taken::Granted(_)
    ));
    let later = start + 3 * TOKEN_US;
    let mut granted = 0;
    let mut known = Some(start + TAU_US);
    while let Taken::Granted(at) = store
        .take(&key, &[one(Lane::General, later)], later, &[known])
        .await
        .unwrap()
    {
        known = Some(at[0]);
        granted += 1;
    }
    assert_eq!(granted, 3, "three tokens refilled");

    // Long idle: full again, but no fuller.
    let idle = start + 100 * TAU_US;
    let mut granted = 0;
    while let Taken::Granted(_) = store
        .take(&key, &[one(Lane::General, idle)], idle, &[known])
        .await
        .unwrap()
    {
        granted += 1;
    }
    assert_eq!(granted, TOKENS);
}

/// Fifty takers at once, each taking one token at a time until refused, get exactly the
/// bucket between them. Answers how many takes were attempted.
///
/// Each grant answers the lane's new full-at, so on an atomic store every grant's value is
/// distinct and there are as many as the bucket holds. moto's server is not atomic under
/// concurrent updates of one item (its threads check and write without a lock): two takers can
/// both see the old value and write the same new one. The suite counts distinct grants, which
/// tests crm-sync's conditions, and reports such lost updates apart. The first token is taken
/// before the fifty start, and the takers know it: an idle bucket's start value is the taker's
/// own `now`, so a lost update there (a write that starts the bucket over, checked against a stale
/// item) would count as an extra distinct grant. From a started bucket every value is the first
/// plus whole tokens, and a lost update can only repeat one. (A taker that does not know the
/// bucket started is refused its start and retries from the item: every take of
/// `takes_are_granted_until_the_bucket_is_empty` goes that way.)
pub async fn fifty_concurrent_takers_never_exceed_the_bucket(store: Arc<dyn BudgetStore>) -> usize {
    // An hour per token: nothing refills while the test runs.
    const HOUR_US: i64 = 3_600_000_000;
    const BURST: i64 = 20;
    let key = key("fifty");
    let now = now_us();
    let first = LaneTake {
        lane: Lane::General,
        cost_us: HOUR_US,
        ceiling_us: now + BURST * HOUR_US,
    };
    let Taken::Granted(first) = store.take(&key, &[first], now, &[None]).await.unwrap() else {
        panic!("an idle bucket grants its first token");
    };
    let started_at = first[0];
    let mut takers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (store, key) = (store.clone(), key.clone());
        takers.spawn(async move {
            let (mut granted, mut attempts) = (Vec::new(), 0);
            let mut known = Some(started_at);
            loop {
                let now = now_us();
                let take = LaneTake {
                    lane: Lane::General,
                    cost_us: HOUR_US,
                    ceiling_us: now + BURST * HOUR_US,
                };
                attempts += 1;
                match store.take(&key, &[take], now, &[known]).await.unwrap() {
                    Taken::Granted(at) => {
                        granted.push(at[0]);
                        known = Some(at[0]);
                    }
                    Taken::Refused(_) => return (granted, attempts),
                }
            }
        });
    }
    let (mut granted, mut attempts) = (vec![first[0]], 0);
    while let Some(taker) = takers.join_next().await {
        let (g, a) = taker.unwrap();
        granted.extend(g);
        attempts += a;
    }
    let grants = granted.len();
    granted.sort_unstable();
    granted.dedup();
    if grants != granted.len() {
        println!(
            "the store lost {} concurrent updates (the same new value granted twice)",
            grants - granted.len()
        );
    }
    assert_eq!(
        granted.len() as i64,
        BURST,
        "the fifty took exactly the bucket"
    );
    attempts
}
