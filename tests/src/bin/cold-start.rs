//! Cold starts as Lambda runs a `provided.al2023` bootstrap: each function's release binary is
//! started under a local Lambda Runtime API (this process) that hands it API Gateway events, beside
//! `lambda-floor`, a bare `lambda_http` hello-world built with the same profile. Prints init
//! (exec to the first `invocation/next`), first and warm invocation latency, peak RSS and the
//! zipped `bootstrap` per function, each with its ratio to the floor. A benchmark: it prints figures.
//!
//! `make bench` (which builds the functions as `make build` selects them, then the tools), or
//! `target/x86_64-unknown-linux-gnu/release/cold-start [COLD_STARTS] [WARM]` once built.
//!
//! With `CRM_SYNC_TEST_AWS_ENDPOINT` set (moto, as `make test` starts it) the functions run in
//! production configuration (`CRM_SYNC_STORE=aws`, credentials from the environment); without it
//! on the local stores. The CRM is the HubSpot emulator, its own process on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use crm_sync::connection::ConnectionId;
use crm_sync::domain::CrmType;
use crm_sync::store::ConnectionStore;
use crm_sync_tests::harness::{TempDir, aws_stores, connection};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

const TOKEN: &str = "demo-hubspot-token";

/// The Runtime API one function process talks to.
struct RuntimeApi {
    address: String,
    events: mpsc::Sender<Value>,
    polls: mpsc::UnboundedReceiver<Instant>,
    responses: mpsc::UnboundedReceiver<(Instant, bool, Bytes)>,
}

struct RuntimeState {
    events: Mutex<mpsc::Receiver<Value>>,
    polls: mpsc::UnboundedSender<Instant>,
    responses: mpsc::UnboundedSender<(Instant, bool, Bytes)>,
    next_id: std::sync::atomic::AtomicU64,
}

impl RuntimeApi {
    async fn start() -> Self {
        let (events_tx, events_rx) = mpsc::channel(1);
        let (polls_tx, polls_rx) = mpsc::unbounded_channel();
        let (responses_tx, responses_rx) = mpsc::unbounded_channel();
        let state = Arc::new(RuntimeState {
            events: Mutex::new(events_rx),
            polls: polls_tx,
            responses: responses_tx,
            next_id: Default::default(),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(|state, body| answered(state, false, body)),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(|state, body| answered(state, true, body)),
            )
            .route(
                "/2018-06-01/runtime/init/error",
                post(|state, body| answered(state, true, body)),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        RuntimeApi {
            address,
            events: events_tx,
            polls: polls_rx,
            responses: responses_rx,
        }
    }

    /// Hands `event` to the waiting function; the time to its answer, and the answer.
    async fn invoke(&mut self, event: Value) -> (Duration, bool, Bytes) {
        let sent = Instant::now();
        self.events.send(event).await.expect("the runtime API runs");
        let (at, error, body) = self.responses.recv().await.expect("an answer");
        (at - sent, error, body)
    }
}

async fn next_invocation(State(state): State<Arc<RuntimeState>>) -> (HeaderMap, Bytes) {
    let _ = state.polls.send(Instant::now());
    let event = state
        .events
        .lock()
        .await
        .recv()
        .await
        .unwrap_or(Value::Null);
    let id = state
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let deadline = chrono::Utc::now().timestamp_millis() + 30_000;
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        headers.insert(name, HeaderValue::from_str(&value).unwrap());
    };
    set("lambda-runtime-aws-request-id", format!("req-{id}"));
    set("lambda-runtime-deadline-ms", deadline.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:bench".into(),
    );
    set("lambda-runtime-trace-id", format!("Root=1-bench-{id}"));
    set("content-type", "application/json".into());
    (headers, Bytes::from(event.to_string()))
}

async fn answered(state: State<Arc<RuntimeState>>, error: bool, body: Bytes) -> StatusCode {
    let _ = state.responses.send((Instant::now(), error, body));
    StatusCode::ACCEPTED
}

/// An API Gateway REST (v1) proxy event, as the functions receive it.
fn api_event(method: &str, path: &str, query: &[(&str, &str)], body: Option<Value>) -> Value {
    let query: serde_json::Map<String, Value> = query
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let multi_query: serde_json::Map<String, Value> =
        query.iter().map(|(k, v)| (k.clone(), json!([v]))).collect();
    json!({
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": {"content-type": "application/json", "x-api-key": "bench"},
        "multiValueHeaders": {"content-type": ["application/json"], "x-api-key": ["bench"]},
        "queryStringParameters": if query.is_empty() { Value::Null } else { Value::Object(query) },
        "multiValueQueryStringParameters":
            if multi_query.is_empty() { Value::Null } else { Value::Object(multi_query) },
        "pathParameters": null,
        "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012", "apiId": "bench", "resourceId": "bench",
            "resourcePath": path, "httpMethod": method, "path": format!("/dev{path}"),
            "stage": "dev", "requestId": "bench", "requestTimeEpoch": 0,
            "protocol": "HTTP/1.1", "domainName": "api.example.com",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "cold-start"}
        },
        "body": body.map(|b| b.to_string()),
        "isBase64Encoded": false
    })
}

/// One function under test: its binary, the event of its first invocation in cold start `n`,
/// and the event repeated warm.
struct Case {
    name: &'static str,
    binary: &'static str,
    first: Box<dyn Fn(usize) -> Value>,
    warm: Value,
}

fn cases() -> Vec<Case> {
    let customer = |email: String| {
        api_event(
            "POST",
            "/sync-customer",
            &[],
            Some(
                json!({"connectionId": "bench", "customer": {"firstName": "Cold", "email": email}}),
            ),
        )
    };
    let lead = |email: String| {
        api_event(
            "POST",
            "/sync-lead",
            &[],
            Some(
                json!({"connectionId": "bench", "lead": {"firstName": "Cold", "lastName": "Lead", "email": email}}),
            ),
        )
    };
    let appointment = |booking: String| {
        api_event(
            "POST",
            "/sync-appointment",
            &[],
            Some(
                json!({"connectionId": "bench", "customer": {"email": "warm@example.com"},
                "appointment": {"externalId": booking, "start": "2030-07-01T10:00:00Z"}}),
            ),
        )
    };
    let platforms = || api_event("GET", "/platforms", &[], None);
    vec![
        Case {
            name: "lambda-floor",
            binary: "lambda-floor",
            first: Box::new(move |_| platforms()),
            warm: platforms(),
        },
        Case {
            name: "platforms",
            binary: "platforms",
            first: Box::new(move |_| platforms()),
            warm: platforms(),
        },
        Case {
            name: "sync-customer (new, then resend)",
            binary: "sync-customer",
            first: Box::new(move |n| customer(format!("cold-{n}-{}@example.com", run_id()))),
            warm: customer("warm@example.com".into()),
        },
        Case {
            name: "sync-lead (new, then resend)",
            binary: "sync-lead",
            first: Box::new(move |n| lead(format!("lead-{n}-{}@example.com", run_id()))),
            warm: lead("warm-lead@example.com".into()),
        },
        Case {
            name: "sync-appointment (new, then resend)",
            binary: "sync-appointment",
            first: Box::new(move |n| appointment(format!("bk-{n}-{}", run_id()))),
            warm: appointment("bk-warm".into()),
        },
        Case {
            name: "get-customer (CRM search)",
            binary: "get-customer",
            first: Box::new(|_| {
                api_event(
                    "GET",
                    "/get-customer",
                    &[("connectionId", "bench"), ("email", "warm@example.com")],
                    None,
                )
            }),
            warm: api_event(
                "GET",
                "/get-customer",
                &[("connectionId", "bench"), ("email", "warm@example.com")],
                None,
            ),
        },
        Case {
            name: "test-connection (CRM call)",
            binary: "test-connection",
            first: Box::new(|_| {
                api_event(
                    "POST",
                    "/test-connection",
                    &[],
                    Some(json!({"connectionId": "bench"})),
                )
            }),
            warm: api_event(
                "POST",
                "/test-connection",
                &[],
                Some(json!({"connectionId": "bench"})),
            ),
        },
        Case {
            name: "scheduled-sync (nothing due)",
            binary: "scheduled-sync",
            first: Box::new(|_| json!({"source": "aws.events", "detail": {}})),
            warm: json!({"source": "aws.events", "detail": {}}),
        },
    ]
}

fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_string())
}

/// What one function measured.
struct Figures {
    init: Duration,
    first: Duration,
    warm_p50: Duration,
    peak_rss_kib: u64,
    binary_bytes: u64,
    zip_bytes: u64,
    answers: String,
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The size of `binary` zipped as `bootstrap`, as a Lambda deployment package.
fn zipped_size(binary: &Path, scratch: &Path) -> u64 {
    let dir = scratch.join(binary.file_name().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(binary, dir.join("bootstrap")).unwrap();
    let zip = dir.join("bootstrap.zip");
    let _ = std::fs::remove_file(&zip);
    let status = Command::new("zip")
        .current_dir(&dir)
        .args(["-q", "-X", "bootstrap.zip", "bootstrap"])
        .status();
    match status {
        Ok(s) if s.success() => std::fs::metadata(zip).map(|m| m.len()).unwrap_or(0),
        _ => 0,
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

async fn measure(
    case: &Case,
    bin_dir: &Path,
    env: &[(String, String)],
    cold_starts: usize,
    warm: usize,
    scratch: &Path,
) -> Figures {
    let binary = bin_dir.join(case.binary);
    let (mut inits, mut firsts, mut warm_latencies) = (Vec::new(), Vec::new(), Vec::new());
    let mut peak = 0;
    let mut answers = Vec::new();
    for n in 0..cold_starts {
        let mut api = RuntimeApi::start().await;
        let started = Instant::now();
        let mut child: Child = Command::new(&binary)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AWS_LAMBDA_RUNTIME_API", &api.address)
            .env("AWS_LAMBDA_FUNCTION_NAME", case.binary)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", case.binary),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "cold-start")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {} (make bench builds it): {e}", binary.display())
            });
        let polled = tokio::time::timeout(Duration::from_secs(10), api.polls.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{} never asked for an invocation", case.binary));
        inits.push(polled - started);
        let (first, error, body) = api.invoke((case.first)(n)).await;
        firsts.push(first);
        if n == 0 {
            answers.push(answer_summary(error, &body));
        }
        if n + 1 == cold_starts {
            for _ in 0..warm {
                let (latency, error, body) = api.invoke(case.warm.clone()).await;
                warm_latencies.push(latency);
                if warm_latencies.len() == warm {
                    answers.push(answer_summary(error, &body));
                }
            }
        }
        peak = peak.max(peak_rss_kib(child.id()));
        let _ = child.kill();
        let _ = child.wait();
    }
    Figures {
        init: median(inits),
        first: median(firsts),
        warm_p50: median(warm_latencies),
        peak_rss_kib: peak,
        binary_bytes: std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0),
        zip_bytes: zipped_size(&binary, scratch),
        answers: answers.join(", then "),
    }
}

/// The status (and crm-sync's `status` or error code) of an answer, to show what was measured.
fn answer_summary(error: bool, body: &[u8]) -> String {
    if error {
        return "function error".into();
    }
    let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let status = answer["statusCode"].as_u64().unwrap_or(0);
    let inner: Value = answer["body"]
        .as_str()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    let detail = inner["status"]
        .as_str()
        .or(inner["error"]["code"].as_str())
        .unwrap_or("");
    match status {
        0 => "answered".into(),
        _ if detail.is_empty() => status.to_string(),
        _ => format!("{status} {detail}"),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn ratio(value: f64, floor: f64) -> String {
    if floor > 0.0 {
        format!("{:.1}x", value / floor)
    } else {
        "-".into()
    }
}

/// The HubSpot emulator as a child process, stopped when dropped.
struct Emulator(Child, String);

impl Emulator {
    fn start(bin_dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(bin_dir.join("crm-emulator"))
            .args(["--hubspot", &format!("127.0.0.1:{port}")])
            .args(["--salesforce", "127.0.0.1:0", "--pipedrive", "127.0.0.1:0"])
            .args(["--zoho", "127.0.0.1:0", "--freshsales", "127.0.0.1:0"])
            // HubSpot's limits would pace the warm invocations that call it; these figures are
            // crm-sync's (the connection's rate budget is as large: every call still takes from it).
            .arg("--unlimited")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting crm-emulator (build it with --bins)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // It stops at once when a port it binds is taken (another emulator still running): every
        // figure after that would be of a CRM that cannot be reached.
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(Some(status)) = child.try_wait() {
            panic!("crm-emulator stopped at start ({status}): is another one still running?");
        }
        Emulator(child, format!("http://127.0.0.1:{port}"))
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let cold_starts: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let warm: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let bin_dir: PathBuf = std::env::current_exe().unwrap().parent().unwrap().into();
    let emulator = Emulator::start(&bin_dir);
    let scratch = TempDir::new("cold-start");
    let mut hubspot = connection(CrmType::Hubspot, &emulator.1, &[("accessToken", TOKEN)]);
    hubspot.settings.extra.insert(
        "rateBudget".into(),
        json!({"requests": 1_000_000, "windowSeconds": 10, "searchRequests": 1_000_000}),
    );
    let id = ConnectionId::parse("bench").unwrap();
    let mut env: Vec<(String, String)> = vec![("RUST_LOG".into(), "info".into())];
    let configuration = match std::env::var("CRM_SYNC_TEST_AWS_ENDPOINT") {
        Ok(endpoint) => {
            let (secrets, records) = aws_stores().await;
            secrets.put(&id, &hubspot).await.unwrap();
            let (prefix, table) = (secrets.prefix().to_string(), records.table().to_string());
            env.extend([
                ("CRM_SYNC_STORE".into(), "aws".into()),
                ("CRM_SYNC_SECRET_PREFIX".into(), prefix),
                ("CRM_SYNC_TABLE".into(), table),
                ("AWS_ENDPOINT_URL".into(), endpoint.clone()),
                ("AWS_REGION".into(), "us-east-1".into()),
            ]);
            format!("production configuration: CRM_SYNC_STORE=aws on moto at {endpoint}")
        }
        Err(_) => {
            let (connections, _) = crm_sync::store::local::open(scratch.path());
            connections.put(&id, &hubspot).await.unwrap();
            env.extend([
                ("CRM_SYNC_STORE".into(), "local".into()),
                (
                    "CRM_SYNC_DATA_DIR".into(),
                    scratch.path().display().to_string(),
                ),
                ("CRM_SYNC_API_KEY".into(), "bench".into()),
            ]);
            "local stores (set CRM_SYNC_TEST_AWS_ENDPOINT to moto for production configuration)"
                .into()
        }
    };
    println!(
        "cold starts under a local Lambda Runtime API, {configuration}; HubSpot emulator on loopback;"
    );
    println!(
        "median of {cold_starts} cold starts for init and first invocation, p50 of {warm} warm invocations\n"
    );
    println!("| function | init | first | warm p50 | peak RSS | bootstrap | zipped | answers |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut floor: Option<Figures> = None;
    let mut missed = Vec::new();
    for case in cases() {
        let f = measure(&case, &bin_dir, &env, cold_starts, warm, scratch.path()).await;
        let base = floor.as_ref().unwrap_or(&f);
        let init_ratio = f.init.as_secs_f64() / base.init.as_secs_f64();
        let rss_ratio = f.peak_rss_kib as f64 / base.peak_rss_kib.max(1) as f64;
        println!(
            "| {} | {} ({}) | {} ({}) | {} ({}) | {:.1} MB ({}) | {:.1} MB | {:.2} MB | {} |",
            case.name,
            ms(f.init),
            ratio(f.init.as_secs_f64(), base.init.as_secs_f64()),
            ms(f.first),
            ratio(f.first.as_secs_f64(), base.first.as_secs_f64()),
            ms(f.warm_p50),
            ratio(f.warm_p50.as_secs_f64(), base.warm_p50.as_secs_f64()),
            f.peak_rss_kib as f64 / 1024.0,
            ratio(f.peak_rss_kib as f64, base.peak_rss_kib as f64),
            f.binary_bytes as f64 / 1e6,
            f.zip_bytes as f64 / 1e6,
            f.answers,
        );
        if floor.is_some() {
            if init_ratio > 2.0 {
                missed.push(format!("{}: init {init_ratio:.1}x > 2x", case.binary));
            }
            if rss_ratio > 2.0 {
                missed.push(format!("{}: peak RSS {rss_ratio:.1}x > 2x", case.binary));
            }
        }
        if f.zip_bytes >= 5_000_000 {
            missed.push(format!(
                "{}: zip {} bytes >= 5 MB",
                case.binary, f.zip_bytes
            ));
        }
        if floor.is_none() {
            floor = Some(f);
        }
    }
    println!(
        "\nratios are to lambda-floor; goals: init and peak RSS within 2x, every zip under 5 MB"
    );
    if missed.is_empty() {
        println!("every goal met");
    } else {
        println!("goals missed: {}", missed.join("; "));
    }
}
