//! Benchmark: the sync operations through the Lambda handler against the HubSpot emulator on
//! loopback (its own process, so the figures are crm-sync's alone), on the local stores. Prints
//! throughput, latency percentiles and peak memory.
//!
//! `make bench`, or `target/x86_64-unknown-linux-gnu/release/bench [COUNT] [CONCURRENCY]` once
//! `make bench` built it (`bench batch`: the batch section alone.)
//!
//! Goals (checked at the end; the process exits non-zero if one is missed):
//! - an identical resend answers `unchanged` from the sync record alone: no CRM call, p95 < 5 ms;
//! - a created contact (at most three CRM calls: find by email, by phone, create; the stamp
//!   rides on the create) p95 < 50 ms;
//! - peak resident memory of crm-sync stays under 64 MiB (a Lambda function gets 256 MB).
//!
//! Then batch work (`sync-batch` and the scheduled drain), against each CRM's emulator in this
//! process on the in-memory record store:
//! - CRM calls per new customer, each CRM's limits lifted (goal: 1/bulk size where the CRM has a
//!   bulk write: HubSpot 100, Zoho 100, Salesforce 200 and the lookups it needs);
//! - records per second against HubSpot's and Pipedrive's emulated limits (their default tiers,
//!   kept by the emulators) as a share of what those limits allow at the calls a record takes,
//!   the tighter of the general and the search limit (goal: 90%).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crm_sync::App;
use crm_sync::config::StoreKind;
use crm_sync::domain::CrmType;
use crm_sync::http::{Operation, handle};
use crm_sync::sync::TimeBudget;
use crm_sync_tests::conformance::{self, EmulatedCrm};
use crm_sync_tests::harness::*;
use lambda_http::http::Method;
use serde_json::{Value, json};

/// The token the emulator binary accepts by default.
const TOKEN: &str = "demo-hubspot-token";

/// The HubSpot emulator as a child process, stopped when dropped.
struct EmulatorProcess {
    child: std::process::Child,
    base_url: String,
}

impl EmulatorProcess {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let binary = std::env::current_exe()
            .unwrap()
            .with_file_name("crm-emulator");
        let child = std::process::Command::new(&binary)
            .args(["--hubspot", &format!("127.0.0.1:{port}")])
            // The other emulators take free ports too, so a running `make dev` does not clash.
            .args(["--salesforce", "127.0.0.1:0", "--pipedrive", "127.0.0.1:0"])
            .args(["--zoho", "127.0.0.1:0", "--freshsales", "127.0.0.1:0"])
            // The HubSpot account's limit would set the pace; the bench measures crm-sync.
            .arg("--unlimited")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {} (build it with --bins): {e}", binary.display())
            });
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        EmulatorProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn request_count(&self) -> usize {
        self.counts().await.0
    }

    /// Requests so far, and the 429s the emulated CRM answered.
    async fn counts(&self) -> (usize, usize) {
        let url = format!("{}/__emulator/requests/count", self.base_url);
        let answer: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        let number = |name: &str| answer[name].as_u64().unwrap_or(0) as usize;
        (number("count"), number("rateLimited"))
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Phase {
    name: &'static str,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Phase {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
    }
    fn print(&self) {
        println!(
            "{:<22} {:>6} calls  {:>8.0} calls/s  p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms",
            self.name,
            self.latencies.len(),
            self.latencies.len() as f64 / self.elapsed.as_secs_f64(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.95).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
        );
    }
}

async fn run_phase(
    name: &'static str,
    app: Arc<crm_sync::App>,
    operation: Operation,
    bodies: Vec<Value>,
    concurrency: usize,
) -> Phase {
    let started = Instant::now();
    let bodies = Arc::new(bodies);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (app, bodies, next) = (app.clone(), bodies.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let request = api_request(Method::POST, Some(TEST_API_KEY), Some(body));
                let began = Instant::now();
                let (status, answer) =
                    read_response(handle(&app, operation, request).await.unwrap());
                latencies.push(began.elapsed());
                assert_eq!(status, 200, "{answer}");
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    Phase {
        name,
        latencies,
        elapsed: started.elapsed(),
    }
}

fn peak_rss_mib() -> f64 {
    memory_mib("VmHWM:")
}

fn memory_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `bench batch`: the batch section alone (it measures against the emulated limits, so a
    // debug build gives the same shares).
    if std::env::args().nth(1).as_deref() == Some("batch") {
        return exit_with(batch_section().await);
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let count = args.first().copied().unwrap_or(2000);
    let concurrency = args.get(1).copied().unwrap_or(8);

    let hubspot = EmulatorProcess::start();
    let dir = TempDir::new("bench");
    let cold_start = Instant::now();
    let app = Arc::new(local_app(&dir));
    let cold_start = cold_start.elapsed();
    let mut bench_connection = connection(
        CrmType::Hubspot,
        &hubspot.base_url,
        &[("accessToken", TOKEN)],
    );
    // An account as large as the lifted emulator: every request still takes from the budget
    // (leases in the local store), none waits for the CRM's limit.
    bench_connection.settings.extra.insert(
        "rateBudget".into(),
        json!({"requests": 1_000_000, "windowSeconds": 10, "searchRequests": 1_000_000}),
    );
    store_connection(&app, "bench", &bench_connection).await;

    let customers: Vec<Value> = (0..count)
        .map(|i| json!({"connectionId": "bench", "customer": {"firstName": "Bench", "lastName": format!("User {i}"),
            "email": format!("bench{i}@example.com"), "phone": format!("+1415555{:04}", i % 10_000)}}))
        .collect();
    let appointments: Vec<Value> = (0..count)
        .map(|i| {
            json!({"connectionId": "bench", "customer": {"email": format!("bench{i}@example.com")},
            "appointment": {"externalId": format!("bench-{i}"), "start": "2025-07-01T10:00:00",
                            "timezone": "America/Los_Angeles", "durationMinutes": 30}})
        })
        .collect();

    println!(
        "crm-sync bench: {count} entities, concurrency {concurrency}, HubSpot emulator on {}",
        &hubspot.base_url
    );
    println!(
        "app setup (cold start, local stores): {:.2} ms",
        cold_start.as_secs_f64() * 1e3
    );
    let calls_before = hubspot.request_count().await;
    let created = run_phase(
        "sync-customer created",
        app.clone(),
        Operation::SyncCustomer,
        customers.clone(),
        concurrency,
    )
    .await;
    created.print();
    let calls_after_create = hubspot.request_count().await;
    let unchanged = run_phase(
        "sync-customer unchanged",
        app.clone(),
        Operation::SyncCustomer,
        customers,
        concurrency,
    )
    .await;
    unchanged.print();
    let crm_calls_for_resends = hubspot.request_count().await - calls_after_create;
    let booked = run_phase(
        "sync-appointment",
        app.clone(),
        Operation::SyncAppointment,
        appointments,
        concurrency,
    )
    .await;
    booked.print();
    let rss = peak_rss_mib();
    let create_calls = calls_after_create - calls_before;
    let calls_per_contact = create_calls as f64 / count as f64;
    println!(
        "CRM calls: {create_calls} for creates ({calls_per_contact:.2} a new contact), {crm_calls_for_resends} for identical resends"
    );
    let (total_calls, rate_limited) = hubspot.counts().await;
    println!(
        "CRM calls in all: {total_calls} ({:.2} a record over {} records), 429s: {rate_limited}",
        total_calls as f64 / (3 * count) as f64,
        3 * count
    );
    println!("peak resident memory of crm-sync: {rss:.1} MiB");

    let mut missed = batch_section().await;
    if crm_calls_for_resends != 0 || unchanged.percentile(0.95) >= Duration::from_millis(5) {
        missed.push("identical resend: no CRM call and p95 < 5 ms");
    }
    // Read by email, search by phone, create: the stamp rides on the create and adds no call.
    if calls_per_contact > 3.0 {
        missed.push("a new contact: at most 3 CRM calls");
    }
    if created.percentile(0.95) >= Duration::from_millis(50) {
        missed.push("created contact p95 < 50 ms");
    }
    if rate_limited != 0 {
        missed.push("no 429 from the CRM");
    }
    if rss >= 64.0 {
        missed.push("peak memory < 64 MiB");
    }
    exit_with(missed)
}

fn exit_with(missed: Vec<&str>) -> std::process::ExitCode {
    if missed.is_empty() {
        println!("goals: all met");
        std::process::ExitCode::SUCCESS
    } else {
        println!("goals missed: {}", missed.join("; "));
        std::process::ExitCode::FAILURE
    }
}

/// Batch work: CRM calls per new customer with each CRM's limits lifted, then records per
/// second against the limits HubSpot and Pipedrive enforce in seconds (the others' limits run
/// over 5 minutes to a day: a bench-sized batch fits in their bursts). The goals it missed.
async fn batch_section() -> Vec<&'static str> {
    println!(
        "batch: CRM calls per new customer (sync-batch, then the scheduled drain; limits lifted)"
    );
    let mut batch_goals = true;
    for (tag, bulk_size) in [
        ("hubspot", 100),
        ("salesforce", 200),
        ("zoho", 100),
        ("pipedrive", 1),
        ("freshsales", 1),
        ("dynamics", 1),
        ("dynamics-keyed", 50),
        ("sugarcrm", 1),
    ] {
        let crm = conformance::start(tag).await;
        crm.lift_request_budget();
        let run = drain_batch(crm.as_ref(), &customer_items(tag, BATCH_CUSTOMERS), false).await;
        let per_record = run.calls as f64 / BATCH_CUSTOMERS as f64;
        // Salesforce finds existing contacts first: two `IN` queries beside the write. CRMs with
        // no bulk write take a single sync's calls (find by email, by phone, create).
        let goal = match (tag, bulk_size) {
            (_, 1) => None,
            ("salesforce", _) => Some(3.0 / bulk_size as f64),
            _ => Some(1.0 / bulk_size as f64),
        };
        let met = goal.is_none_or(|goal| per_record <= goal * 1.05);
        batch_goals &= met;
        let goal = match goal {
            Some(goal) => format!("goal <= {goal:.3}{}", if met { "" } else { ", MISSED" }),
            None => "no bulk write: a single sync's calls".into(),
        };
        println!(
            "  {tag:<15} {per_record:>6.3} calls a record ({} calls for {BATCH_CUSTOMERS}; bulk size {bulk_size}; {goal})",
            run.calls
        );
    }
    println!(
        "batch throughput (new callers' appointments, budgets on, the emulator keeping its default tier's limits):"
    );
    let mut throughput_met = true;
    // The default tiers: requests per second in all, and the search API's own.
    for (tag, general, search) in [
        ("hubspot", 100.0 / 10.0, 4.0),
        ("pipedrive", 20.0 / 2.0, 10.0 / 2.0),
    ] {
        let crm = conformance::start(tag).await;
        let appointments = appointment_items(THROUGHPUT_APPOINTMENTS);
        let run = drain_batch(crm.as_ref(), &appointments, true).await;
        let records = THROUGHPUT_APPOINTMENTS as f64;
        let records_per_second = records / run.elapsed.as_secs_f64();
        let calls_per_record = run.calls as f64 / records;
        let searches_per_record = run.searches as f64 / records;
        // What the limits allow at the calls a record takes: the tighter of the two lanes.
        let allowed = (general / calls_per_record).min(if run.searches == 0 {
            f64::INFINITY
        } else {
            search / searches_per_record
        });
        let share = records_per_second / allowed;
        let met = share >= 0.9 && run.rate_limited == 0;
        throughput_met &= met;
        println!(
            "  {tag:<15} {THROUGHPUT_APPOINTMENTS} appointments in {:.1} s, {records_per_second:.2} a second at {calls_per_record:.2} calls ({searches_per_record:.2} searches) each: {:.0}% of the {allowed:.2} a second the limits allow (goal >= 90%{}), 429s: {}",
            run.elapsed.as_secs_f64(),
            share * 100.0,
            if met { "" } else { ", MISSED" },
            run.rate_limited
        );
    }
    let mut missed = Vec::new();
    if !batch_goals {
        missed.push("batch calls per record");
    }
    if !throughput_met {
        missed.push("batch throughput >= 90% of the limit, no 429");
    }
    missed
}

/// New customers in a batch of the bench.
const BATCH_CUSTOMERS: usize = 1000;
/// Appointments the throughput run drains against HubSpot's limit (about 45 s of it).
const THROUGHPUT_APPOINTMENTS: usize = 120;

fn customer_items(tag: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"customer": {"firstName": "Batch", "lastName": format!("Person{i}"),
            "email": format!("{tag}{i}@batch-bench.example.com"), "phone": format!("+1646555{:04}", i % 10_000)}}))
        .collect()
}

fn appointment_items(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"customer": {"firstName": "Booked", "lastName": format!("Caller{i}"),
            "email": format!("caller{i}@batch-bench.example.com")},
            "appointment": {"externalId": format!("bench-bk-{i}"), "start": "2026-07-01T10:00:00Z", "durationMinutes": 30}}))
        .collect()
}

struct DrainRun {
    calls: usize,
    /// Calls to the CRM's search API (its own, smaller limit).
    searches: usize,
    rate_limited: usize,
    elapsed: Duration,
}

/// Sends `items` through `sync-batch` (500 a request) and runs the scheduled drain until none
/// is due: the CRM calls it took and how long the drain ran. Records in memory; the rate
/// budgets on when `budgets` (in-process: the leases are the local store's).
async fn drain_batch(crm: &dyn EmulatedCrm, items: &[Value], budgets: bool) -> DrainRun {
    let dir = TempDir::new("bench-batch");
    let mut config = test_config(StoreKind::Local, dir.path());
    config.rate_budgets = budgets;
    config.drain_concurrency = 16;
    let (connections, _) = crm_sync::store::local::open(dir.path());
    let app = App::new(
        config,
        Arc::new(connections),
        Arc::new(crm_sync::store::memory::MemorySyncRecordStore::default()),
    );
    store_connection(&app, "bench", &crm.connection()).await;
    for chunk in items.chunks(500) {
        let body = json!({"connectionId": "bench", "items": chunk});
        let request = api_request(Method::POST, Some(TEST_API_KEY), Some(&body));
        let (status, answer) =
            read_response(handle(&app, Operation::SyncBatch, request).await.unwrap());
        assert_eq!(status, 202, "{answer}");
    }
    let before = crm.control().counts();
    let searches_before = searches(crm);
    let started = Instant::now();
    loop {
        let summary = app
            .scheduled_sync(&TimeBudget::of(Duration::from_secs(600)))
            .await
            .unwrap();
        if summary.examined == 0 {
            break;
        }
        // A transient failure (a budget wait longer than a batch takes) is due again next pass.
        let failed = app
            .records
            .list_by_status(crm_sync::store::SyncStatus::Failed, usize::MAX)
            .await
            .unwrap();
        if let Some(error) = failed
            .iter()
            .filter_map(|r| r.last_error.as_ref())
            .find(|e| !e.transient)
        {
            panic!("{summary:?}: {error:?}");
        }
    }
    let elapsed = started.elapsed();
    let after = crm.control().counts();
    DrainRun {
        calls: after.requests - before.requests,
        searches: searches(crm) - searches_before,
        rate_limited: after.rate_limited - before.rate_limited,
        elapsed,
    }
}

/// Requests so far to the CRM's search API (HubSpot's and Pipedrive's paths end in `/search`).
fn searches(crm: &dyn EmulatedCrm) -> usize {
    crm.control()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/search"))
        .count()
}
