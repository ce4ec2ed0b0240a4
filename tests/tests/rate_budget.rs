//! The CRM accounts' shared rate budgets end to end, against emulators that enforce their CRM's
//! limits: crm-sync at high concurrency gets no 429 the test did not inject; a live booking
//! during a saturating batch is answered within the live wait; the CRM's rate-limit headers
//! lower the shared bucket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crm_sync::App;
use crm_sync::budget::spec::Lane;
use crm_sync::budget::{Budgets, Priority, run_as};
use crm_sync::config::StoreKind;
use crm_sync::connection::Connection;
use crm_sync::domain::CrmType;
use crm_sync::error::Error;
use crm_sync::http::{Operation, handle};
use crm_sync::store::budget::MemoryBudgetStore;
use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use crm_sync_tests::emulator::pipedrive::PipedriveEmulator;
use crm_sync_tests::emulator::salesforce::{SalesforceEmulator, client};
use crm_sync_tests::emulator::{Fault, SlidingWindow};
use crm_sync_tests::harness::*;
use lambda_http::http::Method;
use serde_json::{Value, json};

const TOKEN: &str = "hubspot-budget-token-7d1";

/// An app on local stores whose budgets live in `store`, with `connection` stored as `crm`.
async fn app_with(
    dir: &TempDir,
    store: Arc<MemoryBudgetStore>,
    connection: &Connection,
) -> Arc<App> {
    let app = local_app(dir).with_budget_store(store);
    store_connection(&app, "crm", connection).await;
    Arc::new(app)
}

/// A HubSpot account limited to 100 requests per rolling second (a ten-secondly limit scaled
/// down so the test is quick), the connection's budget sized to the same.
async fn fast_hubspot() -> (HubSpotEmulator, Connection) {
    let hubspot = HubSpotEmulator::start(&[TOKEN]).await.unwrap();
    hubspot.state.lock().unwrap().ten_secondly = SlidingWindow::new(100, Duration::from_secs(1));
    let mut connection = connection(
        CrmType::Hubspot,
        hubspot.base_url(),
        &[("accessToken", TOKEN)],
    );
    connection.settings.extra.insert(
        "rateBudget".into(),
        json!({"requests": 100, "windowSeconds": 1}),
    );
    (hubspot, connection)
}

fn booking(contact_id: &str, external_id: &str) -> Value {
    json!({"connectionId": "crm", "appointment": {"externalId": external_id,
        "customerId": contact_id, "title": "Budget test", "start": "2026-03-02T15:00:00Z"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crm_sync_at_high_concurrency_gets_no_429_the_emulator_did_not_inject() {
    let (hubspot, connection) = fast_hubspot().await;
    let contacts: Vec<String> = {
        let mut state = hubspot.state.lock().unwrap();
        (0..50)
            .map(|i| state.insert("contacts", &[("email", &format!("c{i}@example.com"))]))
            .collect()
    };
    // Some refusals the test injects, so that injected and enforced 429s are told apart.
    hubspot.server.control.inject(
        Fault::status(429)
            .retry_after(0)
            .times(15)
            .matching("POST /crm/v3/objects/meetings"),
    );
    let dir = TempDir::new("budget-concurrency");
    let app = app_with(&dir, Arc::default(), &connection).await;
    const SYNCS: usize = 300;
    let next = Arc::new(AtomicUsize::new(0));
    let told_to_wait = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (app, next, contacts, told_to_wait) = (
            app.clone(),
            next.clone(),
            contacts.clone(),
            told_to_wait.clone(),
        );
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= SYNCS {
                    return;
                }
                let body = booking(&contacts[i % contacts.len()], &format!("hc-{i}"));
                // A caller told to come back (our budget, or a 429 passed on) comes back.
                loop {
                    match app.sync_appointment(&body).await {
                        Ok(_) => break,
                        Err(failure) => {
                            let wait = failure.error.retry_after().unwrap_or_default();
                            assert!(
                                matches!(
                                    failure.error,
                                    Error::BudgetExhausted { .. } | Error::SyncInProgress
                                ),
                                "{:?}",
                                failure.error
                            );
                            told_to_wait.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
                        }
                    }
                }
            }
        });
    }
    while let Some(worker) = workers.join_next().await {
        worker.unwrap();
    }
    let elapsed = started.elapsed();
    let counts = hubspot.server.control.counts();
    println!(
        "{SYNCS} syncs by 50 callers in {:.1} s: {} CRM calls ({:.2} a sync), {} injected 429s, \
         {} enforced 429s, {} answers to come back later",
        elapsed.as_secs_f64(),
        counts.requests,
        counts.requests as f64 / SYNCS as f64,
        counts.injected_rate_limited,
        counts.rate_limited,
        told_to_wait.load(Ordering::Relaxed),
    );
    assert_eq!(
        counts.injected_rate_limited, 15,
        "the injected ones happened"
    );
    assert_eq!(
        counts.rate_limited, 0,
        "the emulator enforced no 429 on crm-sync"
    );
    assert_eq!(hubspot.state.lock().unwrap().all("meetings").len(), SYNCS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_sync_appointment_during_a_running_batch_is_answered_within_the_live_wait_and_without_a_rate_limit_error()
 {
    let (hubspot, connection) = fast_hubspot().await;
    let contacts: Vec<String> = {
        let mut state = hubspot.state.lock().unwrap();
        state.insert(
            "contacts",
            &[
                ("email", "live@example.com"),
                ("firstname", "Live"),
                ("lastname", "Caller"),
            ],
        );
        (0..100)
            .map(|i| state.insert("contacts", &[("email", &format!("b{i}@example.com"))]))
            .collect()
    };
    let dir = TempDir::new("budget-live");
    let app = app_with(&dir, Arc::default(), &connection).await;
    let live_wait = app.config.live_wait;

    // Forty batch workers drain a backlog far larger than the account allows in the test.
    let stop = Arc::new(AtomicBool::new(false));
    let batch_done = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..40 {
        let (app, stop, batch_done, contacts) = (
            app.clone(),
            stop.clone(),
            batch_done.clone(),
            contacts.clone(),
        );
        workers.spawn(run_as(Priority::Batch, async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = booking(
                    &contacts[(worker * 7 + n) % contacts.len()],
                    &format!("batch-{worker}-{n}"),
                );
                app.sync_appointment(&body)
                    .await
                    .expect("batch work waits for its tokens");
                batch_done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = batch_done.load(Ordering::Relaxed);
    let calls_before = hubspot.server.control.request_count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_second = hubspot.server.control.request_count() - calls_before;
    assert!(
        per_second >= 40,
        "the batch saturates the budget: {per_second} CRM calls in a second"
    );

    let live = json!({"connectionId": "crm",
        "customer": {"email": "live@example.com", "firstName": "Live", "lastName": "Caller"},
        "appointment": {"externalId": "live-booking-1", "title": "Consultation",
                        "start": "2026-03-03T16:00:00Z"}});
    let asked = Instant::now();
    let (status, body) = read_response(
        handle(
            &app,
            Operation::SyncAppointment,
            api_request(Method::POST, Some(TEST_API_KEY), Some(&live)),
        )
        .await
        .unwrap(),
    );
    let answered_in = asked.elapsed();
    stop.store(true, Ordering::Relaxed);
    while let Some(worker) = workers.join_next().await {
        worker.unwrap();
    }
    let batch = batch_done.load(Ordering::Relaxed);
    println!(
        "live sync-appointment answered {status} in {:.0} ms (live wait {} ms) while the batch ran at \
         {per_second} CRM calls/s; batch syncs: {before} before, {batch} in all",
        answered_in.as_secs_f64() * 1e3,
        live_wait.as_millis()
    );
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("created")),
        "{body}"
    );
    assert!(
        answered_in < live_wait,
        "answered in {answered_in:?}, live wait {live_wait:?}"
    );
    assert!(batch > before, "the batch kept running");
    assert_eq!(hubspot.server.control.counts().rate_limited, 0);
}

/// The bucket's tokens for `connection`'s account, as the store holds them now.
fn tokens_left(
    store: &MemoryBudgetStore,
    connection: &Connection,
    base_url: &str,
    lane: Lane,
) -> f64 {
    let budgets = Budgets::new(
        Arc::new(MemoryBudgetStore::default()),
        Duration::ZERO,
        Duration::ZERO,
    );
    let budget = budgets.for_connection(connection).unwrap().unwrap();
    let key = budget.key(&reqwest::Url::parse(base_url).unwrap());
    let spec = budget.plan().lane(lane).unwrap().clone();
    let full_at = store.full_at(&key, lane).expect("the bucket was used");
    let now = chrono::Utc::now().timestamp_micros();
    (f64::from(spec.burst) - (full_at - now).max(0) as f64 / spec.token_us()).max(0.0)
}

#[tokio::test]
async fn hubspot_remaining_requests_lower_the_shared_bucket() {
    let hubspot = HubSpotEmulator::start(&[TOKEN]).await.unwrap();
    let connection = connection(
        CrmType::Hubspot,
        hubspot.base_url(),
        &[("accessToken", TOKEN)],
    );
    // Other apps of the portal spent 97 of its 100 requests in these ten seconds.
    for _ in 0..97 {
        hubspot.state.lock().unwrap().ten_secondly.take().unwrap();
    }
    let store = Arc::new(MemoryBudgetStore::default());
    let dir = TempDir::new("budget-hubspot");
    let app = app_with(&dir, store.clone(), &connection).await;
    let contact = hubspot
        .state
        .lock()
        .unwrap()
        .insert("contacts", &[("email", "x@example.com")]);
    app.sync_appointment(&booking(&contact, "hs-remaining"))
        .await
        .unwrap();
    let left = tokens_left(&store, &connection, hubspot.base_url(), Lane::General);
    assert!(
        left <= 2.5,
        "HubSpot said 2 remain; the bucket holds {left:.2}"
    );
}

#[tokio::test]
async fn pipedrive_remaining_requests_lower_the_shared_bucket() {
    let pipedrive = PipedriveEmulator::start(&["pd-budget-token"])
        .await
        .unwrap();
    let connection = connection(
        CrmType::Pipedrive,
        pipedrive.base_url(),
        &[("apiToken", "pd-budget-token")],
    );
    // Other integrations with the same token spent 18 of its 20 requests in this window.
    for _ in 0..18 {
        pipedrive.state.lock().unwrap().burst.take().unwrap();
    }
    let store = Arc::new(MemoryBudgetStore::default());
    let dir = TempDir::new("budget-pipedrive");
    let app = app_with(&dir, store.clone(), &connection).await;
    let person = pipedrive.state.lock().unwrap().insert_person(
        "Budget Person",
        Some("bp@example.com"),
        None,
    );
    app.sync_appointment(&booking(&person.to_string(), "pd-remaining"))
        .await
        .unwrap();
    let left = tokens_left(&store, &connection, pipedrive.base_url(), Lane::General);
    assert!(
        left <= 1.5,
        "Pipedrive said 1 remains; the bucket holds {left:.2}"
    );
    assert_eq!(pipedrive.server.control.counts().rate_limited, 0);
}

#[tokio::test]
async fn salesforce_api_usage_lowers_the_shared_bucket() {
    let salesforce = SalesforceEmulator::start(client("sf-budget", "sf-secret", "sf-refresh"))
        .await
        .unwrap();
    let mut connection = connection(
        CrmType::Salesforce,
        salesforce.base_url(),
        &[
            ("clientId", "sf-budget"),
            ("clientSecret", "sf-secret"),
            ("refreshToken", "sf-refresh"),
        ],
    );
    connection.settings.base_url = None;
    connection
        .settings
        .extra
        .insert("loginUrl".into(), json!(salesforce.base_url()));
    {
        let mut state = salesforce.state.lock().unwrap();
        state.api_used = state.daily_limit - 10;
    }
    let store = Arc::new(MemoryBudgetStore::default());
    let dir = TempDir::new("budget-salesforce");
    let app = app_with(&dir, store.clone(), &connection).await;
    app.sync_customer(&json!({"connectionId": "crm", "customer": {"email": "sf@example.com"}}))
        .await
        .unwrap();
    let used = salesforce.state.lock().unwrap().api_used;
    let left = tokens_left(&store, &connection, salesforce.base_url(), Lane::General);
    let remaining = salesforce.state.lock().unwrap().daily_limit - used;
    assert!(
        left <= remaining as f64 + 0.5,
        "Salesforce said {remaining} remain of the day; the bucket holds {left:.2}"
    );
}

#[tokio::test]
async fn a_rate_limit_refusal_from_a_crm_without_headers_pauses_batch_work() {
    use crm_sync_tests::emulator::freshsales::FreshsalesEmulator;
    let freshsales = FreshsalesEmulator::start(&["fs-budget-key"]).await.unwrap();
    let connection = connection(
        CrmType::Freshsales,
        freshsales.base_url(),
        &[("apiKey", "fs-budget-key")],
    );
    // A refusal that does not say when to come back (no `Retry-After`).
    freshsales.server.control.inject(Fault::status(429));
    let store = Arc::new(MemoryBudgetStore::default());
    let dir = TempDir::new("budget-freshsales");
    let app = app_with(&dir, store.clone(), &connection).await;
    app.sync_customer(&json!({"connectionId": "crm", "customer": {"email": "fs@example.com"}}))
        .await
        .expect("the short wait is waited out");
    let budgets = Budgets::new(
        Arc::new(MemoryBudgetStore::default()),
        Duration::ZERO,
        Duration::ZERO,
    );
    let reserve = budgets
        .for_connection(&connection)
        .unwrap()
        .unwrap()
        .plan()
        .general
        .reserve;
    let left = tokens_left(&store, &connection, freshsales.base_url(), Lane::General);
    assert!(
        left <= f64::from(reserve) + 0.5,
        "after Freshsales' 429 the bucket keeps only the live reserve ({reserve}), not {left:.2}"
    );
    // Batch work now waits for the refill; live work still has the reserve.
    let error = run_as(Priority::Batch, async {
        let config = {
            let mut config = test_config(StoreKind::Local, dir.path());
            config.batch_wait = Duration::from_millis(10);
            config
        };
        let impatient = App::new(config, app.connections.clone(), app.records.clone())
            .with_budget_store(store.clone());
        impatient
            .sync_customer(
                &json!({"connectionId": "crm", "customer": {"email": "fs2@example.com"}}),
            )
            .await
    })
    .await
    .unwrap_err();
    assert!(
        matches!(error.error, Error::BudgetExhausted { .. }),
        "{:?}",
        error.error
    );
    app.sync_customer(&json!({"connectionId": "crm", "customer": {"email": "fs3@example.com"}}))
        .await
        .expect("live work keeps the reserve");
}

/// A refusal that says when to come back holds the bucket that long and no longer: on an hourly
/// limit, dropping to the reserve would pause batch work for many minutes after a 429 that asked
/// for one second.
#[tokio::test]
async fn a_rate_limit_refusal_with_retry_after_holds_batch_work_only_that_long() {
    use crm_sync_tests::emulator::freshsales::FreshsalesEmulator;
    let freshsales = FreshsalesEmulator::start(&["fs-budget-key"]).await.unwrap();
    let connection = connection(
        CrmType::Freshsales,
        freshsales.base_url(),
        &[("apiKey", "fs-budget-key")],
    );
    freshsales
        .server
        .control
        .inject(Fault::status(429).retry_after(1));
    let store = Arc::new(MemoryBudgetStore::default());
    let dir = TempDir::new("budget-freshsales-retry-after");
    let app = app_with(&dir, store.clone(), &connection).await;
    app.sync_customer(&json!({"connectionId": "crm", "customer": {"email": "fs@example.com"}}))
        .await
        .expect("the short wait is waited out");
    let plan = Budgets::new(
        Arc::new(MemoryBudgetStore::default()),
        Duration::ZERO,
        Duration::ZERO,
    )
    .for_connection(&connection)
    .unwrap()
    .unwrap()
    .plan()
    .clone();
    let left = tokens_left(&store, &connection, freshsales.base_url(), Lane::General);
    // One second of an hourly bucket (0.26 tokens a second) is less than one token.
    assert!(
        left > f64::from(plan.general.burst) - 8.0,
        "held for the second asked, not down to the reserve ({}): {left:.2} left",
        plan.general.reserve
    );
    // Batch work goes on at once.
    run_as(Priority::Batch, async {
        app.sync_customer(&json!({"connectionId": "crm", "customer": {"email": "fs2@example.com"}}))
            .await
    })
    .await
    .expect("batch work is not paused for longer than asked");
}
