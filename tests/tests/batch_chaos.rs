//! Batches under fire. Mixed items go through `sync-batch` into every CRM's emulator (2,000 into
//! HubSpot, 120 into each other CRM) while 30% of the CRM writes fail (lost answers
//! after the write, which time out; 503s; 429s with Retry-After), and `scheduled-sync` runs
//! with random time budgets until everything is synced: every item must end `synced`, held by
//! its CRM exactly once, and no request may be refused for the CRM's own rate limit (the
//! emulators keep their limits, crm-sync's rate budgets are on). And a drain cut short at random
//! points (by its budget, or killed outright) and run again ends in the same state as one
//! uninterrupted run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crm_sync::App;
use crm_sync::config::StoreKind;
use crm_sync::http::{Operation, handle};
use crm_sync::store::{RecordQuery, SyncStatus};
use crm_sync::sync::TimeBudget;
use crm_sync_tests::conformance::{self, EmulatedCrm};
use crm_sync_tests::emulator::Chaos;
use crm_sync_tests::harness::*;
use lambda_http::http::Method;
use serde_json::{Value, json};

/// A seeded generator (xorshift), so that a failing run can be repeated.
struct Draw(u64);

impl Draw {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `n` mixed items for the connection `tag`: a third customers, a third leads, a third
/// appointments, each a person of its own.
fn items(tag: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let name = format!("{tag}{i:05}");
            match i % 3 {
                0 => json!({"type": "customer", "customer": {
                    "firstName": "Batch", "lastName": format!("C{name}"),
                    "email": format!("c{name}@chaos.example.com"),
                    "phone": format!("+1 646 {:03} {:04}", 200 + i / 10_000, i % 10_000)}}),
                1 => json!({"type": "lead", "lead": {
                    "externalId": format!("lead-{name}"), "firstName": "Batch", "lastName": format!("L{name}"),
                    "email": format!("l{name}@chaos.example.com"), "company": "Chaos Ltd"}}),
                _ => json!({"type": "appointment",
                    "customer": {"firstName": "Batch", "lastName": format!("A{name}"),
                                 "email": format!("a{name}@chaos.example.com")},
                    "appointment": {"externalId": format!("bk-{name}"), "title": format!("Visit {name}"),
                                    "start": format!("2026-07-{:02}T{:02}:00:00Z", 1 + i % 28, 8 + i % 9),
                                    "durationMinutes": 45}}),
            }
        })
        .collect()
}

/// A connection under test: its emulated CRM, its id, and the items sent to it.
struct Target {
    crm: Box<dyn EmulatedCrm>,
    id: String,
    items: usize,
}

/// The limits the emulators keep, as `keep_limit` takes them: HubSpot's and Pipedrive's windows
/// and Freshsales' minute, larger than any tier's so that the run takes seconds, but still
/// reached in its bursts; the other CRMs keep their default tiers' limits.
fn kept_limit(tag: &str) -> Option<(u32, Duration, (u32, Duration))> {
    let seconds = Duration::from_secs;
    match tag {
        "hubspot" => Some((3000, seconds(10), (60, seconds(1)))),
        "pipedrive" => Some((200, seconds(2), (100, seconds(2)))),
        "freshsales" => Some((2400, seconds(60), (0, seconds(1)))),
        _ => None,
    }
}

/// Starts each target's emulator keeping its limits (see `kept_limit`) and stores a connection
/// whose rate budget is sized from the same limits.
async fn start_targets(app: &App, sizes: &[(&str, usize)]) -> Vec<Target> {
    let mut targets = Vec::new();
    for (tag, size) in sizes {
        let crm = conformance::start(tag).await;
        let mut connection = crm.connection();
        if let Some((requests, window, search)) = kept_limit(tag)
            && let Some(budget) = crm.keep_limit(requests, window, search)
        {
            connection
                .settings
                .extra
                .insert("rateBudget".into(), budget);
        }
        let id = format!("chaos-{tag}");
        store_connection(app, &id, &connection).await;
        targets.push(Target {
            crm,
            id,
            items: *size,
        });
    }
    targets
}

fn app_in(dir: &TempDir, crm_timeout: Duration) -> App {
    let mut config = test_config(StoreKind::Local, dir.path());
    config.crm_timeout = crm_timeout;
    config.max_retry_wait = Duration::from_millis(200);
    config.sync_lease = Duration::from_millis(800);
    config.drain_concurrency = 16;
    config.max_sync_attempts = 50;
    // Rate budgets on, against emulators that keep their limits: besides exactly-once under
    // faults, no 429 but the injected ones (the budget's leases in the local files).
    // Connections on local files; records in memory, so that thousands of them cost the CRM
    // calls and not the local store's file per record (the store suite holds the stores to the
    // same semantics; tests/tests/batch.rs drains on moto's DynamoDB).
    let (connections, _) = crm_sync::store::local::open(dir.path());
    App::new(
        config,
        std::sync::Arc::new(connections),
        std::sync::Arc::new(crm_sync::store::memory::MemorySyncRecordStore::default()),
    )
}

/// Sends each target's items through the `sync-batch` handler, 500 at a time.
async fn send_batches(app: &App, targets: &[Target]) {
    for target in targets {
        let tag = target.id.trim_start_matches("chaos-").to_string();
        for (n, chunk) in items(&tag, target.items).chunks(500).enumerate() {
            let body =
                json!({"connectionId": target.id, "batchId": format!("{tag}-{n}"), "items": chunk});
            let request = api_request(Method::POST, Some(TEST_API_KEY), Some(&body));
            let (status, answer) =
                read_response(handle(app, Operation::SyncBatch, request).await.unwrap());
            assert_eq!(status, 202, "{answer}");
            assert_eq!(
                answer["counts"]["queued"],
                chunk.len(),
                "{}",
                answer["rejected"]
            );
        }
    }
}

/// Records of any connection not yet synced.
async fn unsynced_anywhere(app: &App) -> usize {
    let mut left = 0;
    for status in [SyncStatus::Pending, SyncStatus::Unknown, SyncStatus::Failed] {
        left += app
            .records
            .list_by_status(status, usize::MAX)
            .await
            .unwrap()
            .len();
    }
    left
}

/// Records of `connection` not yet synced.
async fn unsynced(app: &App, connection: &str) -> usize {
    let mut left = 0;
    for status in [SyncStatus::Pending, SyncStatus::Unknown, SyncStatus::Failed] {
        let query = RecordQuery {
            connection_id: connection.into(),
            status: Some(status),
            batch_id: None,
        };
        left += app.records.count_records(&query).await.unwrap();
    }
    left
}

/// What a CRM holds, in terms that do not depend on its ids: contacts by email (first and last
/// name), leads by title, appointments by title (start, cancelled); with how often each is held.
#[derive(Debug, PartialEq)]
struct Held {
    contacts: BTreeMap<String, (usize, Option<String>, Option<String>)>,
    leads: BTreeMap<String, usize>,
    appointments: BTreeMap<String, (usize, String, bool)>,
}

fn held(crm: &dyn EmulatedCrm) -> Held {
    let mut held = Held {
        contacts: BTreeMap::new(),
        leads: BTreeMap::new(),
        appointments: BTreeMap::new(),
    };
    for c in crm.contacts() {
        let email = c.email.clone().unwrap_or_default().to_lowercase();
        let entry =
            held.contacts
                .entry(email)
                .or_insert((0, c.first_name.clone(), c.last_name.clone()));
        entry.0 += 1;
    }
    for l in crm.leads() {
        *held.leads.entry(l.title).or_default() += 1;
    }
    for a in crm.appointments() {
        let entry = held.appointments.entry(a.title.clone()).or_insert((
            0,
            a.start.to_rfc3339(),
            a.cancelled,
        ));
        entry.0 += 1;
    }
    held
}

/// Every item held exactly once: each customer's and each appointment's person one contact,
/// each lead one lead, each booking one appointment; no email held twice.
/// The emulator refused nothing for its own limits: crm-sync's budget kept to them.
fn assert_no_429_but_injected(target: &Target) {
    let counts = target.crm.control().counts();
    assert_eq!(
        counts.rate_limited, 0,
        "{}: {} requests refused for the CRM's own limit ({} injected)",
        target.id, counts.rate_limited, counts.injected_rate_limited
    );
}

fn assert_each_item_held_once(target: &Target) {
    let tag = target.id.trim_start_matches("chaos-");
    let crm = target.crm.crm_type();
    let held = held(target.crm.as_ref());
    for (email, (count, ..)) in &held.contacts {
        assert_eq!(*count, 1, "{crm}: contact {email} held {count} times");
    }
    for i in 0..target.items {
        let name = format!("{tag}{i:05}");
        match i % 3 {
            0 | 2 => {
                let prefix = if i % 3 == 0 { 'c' } else { 'a' };
                let email = format!("{prefix}{name}@chaos.example.com");
                assert!(held.contacts.contains_key(&email), "{crm}: {email} lost");
            }
            _ => {}
        }
        match i % 3 {
            1 => {
                let marker = format!("L{name}");
                let found: usize = held
                    .leads
                    .iter()
                    .filter(|(title, _)| title.contains(&marker))
                    .map(|(_, n)| n)
                    .sum();
                assert_eq!(found, 1, "{crm}: lead {marker} held {found} times");
            }
            2 => {
                let title = format!("Visit {name}");
                let found: usize = held
                    .appointments
                    .iter()
                    .filter(|(t, _)| t.ends_with(&title))
                    .map(|(_, (n, ..))| n)
                    .sum();
                assert_eq!(found, 1, "{crm}: appointment {title} held {found} times");
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_items_under_thirty_percent_failures_end_synced_exactly_once() {
    let started = Instant::now();
    let dir = TempDir::new("batch-chaos");
    // A lost answer costs one timeout; short ones keep the run short (and a spurious timeout
    // under load is just another lost answer).
    let app = app_in(&dir, Duration::from_millis(300));
    let targets = start_targets(
        &app,
        &[
            ("hubspot", 2000),
            ("salesforce", 120),
            ("pipedrive", 120),
            ("zoho", 120),
            ("freshsales", 120),
            ("dynamics", 120),
            // With an alternate key on email: the customers go as `$batch` upserts.
            ("dynamics-keyed", 120),
            ("sugarcrm", 120),
        ],
    )
    .await;
    send_batches(&app, &targets).await;
    let queued = Instant::now();
    for (n, target) in targets.iter().enumerate() {
        target.crm.control().chaos(Chaos {
            lost_answer_percent: 10,
            error_percent: 20,
            seed: 0x2545_f491_4f6c_dd1d ^ n as u64,
        });
    }
    let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
    let mut runs = 0;
    loop {
        if started.elapsed() >= Duration::from_secs(150) {
            let mut left = Vec::new();
            for target in &targets {
                left.push((target.id.clone(), unsynced(&app, &target.id).await));
            }
            let failed = app
                .records
                .list_by_status(SyncStatus::Failed, 3)
                .await
                .unwrap();
            let errors: Vec<_> = failed.iter().map(|r| &r.last_error).collect();
            panic!("records still unsynced after {runs} runs: {left:?}, {errors:?}");
        }
        // Stopped by its budget at a random point, then run again.
        let budget = Duration::from_millis(500 + draw.below(3000));
        let summary = app.scheduled_sync(&TimeBudget::of(budget)).await.unwrap();
        runs += 1;
        if summary.done {
            if unsynced_anywhere(&app).await == 0 {
                break;
            }
            // What is left lost its answer just now: it is retried once it settled.
            tokio::time::sleep(app.settle_time().to_std().unwrap()).await;
        }
    }
    let drained = queued.elapsed();
    for target in &targets {
        target.crm.control().clear_faults();
        assert_each_item_held_once(target);
        assert_no_429_but_injected(target);
    }
    let requests: usize = targets
        .iter()
        .map(|t| t.crm.control().request_count())
        .sum();
    eprintln!(
        "{} items queued in {:?}, drained in {runs} runs, {:?}, {requests} CRM requests",
        targets.iter().map(|t| t.items).sum::<usize>(),
        queued - started,
        drained
    );
}

/// Drains `targets` with runs cut short at random points until nothing is left.
async fn drain_interrupted(app: &App, targets: &[Target], seed: u64) -> usize {
    let mut draw = Draw(seed);
    let mut runs = 0;
    let _ = targets;
    loop {
        let left = unsynced_anywhere(app).await;
        if left == 0 {
            return runs;
        }
        assert!(runs < 500, "{left} records never synced");
        runs += 1;
        let cut = Duration::from_millis(20 + draw.below(200));
        if draw.below(2) == 0 {
            // Its budget runs out: what it started finishes.
            app.scheduled_sync(&TimeBudget::of(cut)).await.unwrap();
        } else {
            // Killed mid-run: what it held stays claimed until the lease ends, then is reconciled.
            let unlimited = TimeBudget::of(Duration::from_secs(600));
            let _ = tokio::time::timeout(cut, app.scheduled_sync(&unlimited)).await;
            tokio::time::sleep(app.config.sync_lease + Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cut_short_at_random_points_ends_as_one_uninterrupted_run() {
    let sizes = [("hubspot", 150), ("salesforce", 90), ("pipedrive", 90)];
    let dir_once = TempDir::new("drain-once");
    // No faults here: a timeout long enough that one run does everything.
    let once = app_in(&dir_once, Duration::from_secs(5));
    let once_targets = start_targets(&once, &sizes).await;
    send_batches(&once, &once_targets).await;
    let summary = once
        .scheduled_sync(&TimeBudget::of(Duration::from_secs(600)))
        .await
        .unwrap();
    if !(summary.done && summary.failed == 0) {
        let failed = once
            .records
            .list_by_status(SyncStatus::Failed, 5)
            .await
            .unwrap();
        let errors: Vec<_> = failed
            .iter()
            .map(|r| (&r.connection_id, &r.last_error))
            .collect();
        panic!("{summary:?}: {errors:?}");
    }

    let dir_cut = TempDir::new("drain-cut");
    let cut = app_in(&dir_cut, Duration::from_secs(5));
    let cut_targets = start_targets(&cut, &sizes).await;
    send_batches(&cut, &cut_targets).await;
    let runs = drain_interrupted(&cut, &cut_targets, 0x51_7cc1_b727_220a).await;
    assert!(runs > 3, "the drain was cut short {runs} times");

    for (one, other) in once_targets.iter().zip(&cut_targets) {
        assert_each_item_held_once(one);
        assert_no_429_but_injected(one);
        assert_no_429_but_injected(other);
        assert_eq!(
            held(one.crm.as_ref()),
            held(other.crm.as_ref()),
            "{}: the same final state",
            one.crm.crm_type()
        );
        assert_eq!(unsynced(&cut, &other.id).await, 0);
    }
}
