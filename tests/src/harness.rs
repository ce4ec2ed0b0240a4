//! What the tests share: temporary data folders, apps wired to local or moto-backed stores,
//! API requests as API Gateway delivers them, and log capture.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crm_sync::App;
use crm_sync::config::{Config, StoreKind};
use crm_sync::connection::{Connection, ConnectionId, ConnectionSettings, SecretString};
use crm_sync::domain::CrmType;
use crm_sync::http::{Operation, handle};
use lambda_http::http::Method;
use lambda_http::{Body, Request, RequestExt};
use serde_json::Value;

use crate::contract::OpenApi;

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!("crm-sync-{label}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Settings tuned for tests: short timeouts and waits so fault cases finish quickly.
pub fn test_config(store: StoreKind, data_dir: &Path) -> Config {
    let mut config = Config::from_lookup(|_| None);
    config.store = store;
    config.data_dir = data_dir.to_path_buf();
    config.api_key = Some(TEST_API_KEY.into());
    config.crm_timeout = Duration::from_millis(1500);
    config.max_retry_wait = Duration::from_secs(2);
    config.crm_attempts = 3;
    config.sync_lease = Duration::from_secs(30);
    config
}

pub const TEST_API_KEY: &str = "test-api-key-0123456789";

/// An app on the embedded local stores in `dir`.
pub fn local_app(dir: &TempDir) -> App {
    let config = test_config(StoreKind::Local, dir.path());
    let (connections, records) = crm_sync::store::local::open(dir.path());
    App::new(config, Arc::new(connections), Arc::new(records))
}

/// `bodies` posted to `operation` at once, each by a cold start of its own (an `App` on the same
/// local stores, with nothing cached): what each answered, in order.
pub async fn from_cold_starts(
    dir: &TempDir,
    operation: Operation,
    bodies: &[Value],
) -> Vec<(u16, Value)> {
    let tasks: Vec<_> = bodies
        .iter()
        .map(|body| {
            let app = local_app(dir);
            let body = body.clone();
            tokio::spawn(async move {
                let spec = OpenApi::crm_sync();
                let request = api_request(Method::POST, Some(TEST_API_KEY), Some(&body));
                let answer = call_checked(&app, &spec, operation, request).await;
                (answer.status, answer.body)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("the call ran"));
    }
    answers
}

pub async fn store_connection(app: &App, id: &str, connection: &Connection) {
    let id = ConnectionId::parse(id).expect("valid id");
    app.connections
        .put(&id, connection)
        .await
        .expect("connection stored");
}

pub fn connection(crm_type: CrmType, base_url: &str, credentials: &[(&str, &str)]) -> Connection {
    Connection {
        id: None,
        crm_type,
        credentials: credentials
            .iter()
            .map(|(k, v)| (k.to_string(), SecretString::new(*v)))
            .collect(),
        settings: ConnectionSettings {
            base_url: Some(base_url.into()),
            ..Default::default()
        },
    }
}

/// A request as API Gateway hands it to a function.
pub fn api_request(method: Method, api_key: Option<&str>, body: Option<&Value>) -> Request {
    let mut builder = lambda_http::http::Request::builder()
        .method(method)
        .uri("https://api.example.com/");
    if let Some(key) = api_key {
        builder = builder.header("x-api-key", key);
    }
    builder = builder.header("content-type", "application/json");
    builder
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or(Body::Empty),
        )
        .expect("request")
}

pub fn get_request(api_key: Option<&str>, query: &[(&str, &str)]) -> Request {
    let params: std::collections::HashMap<String, String> = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    api_request(Method::GET, api_key, None).with_query_string_parameters(params)
}

/// The status and JSON body of a function's response.
pub fn read_response(response: lambda_http::Response<Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null);
    (status, body)
}

/// A function's answer.
pub struct ApiAnswer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

/// The method an operation is served on.
pub fn operation_method(operation: Operation) -> Method {
    operation.method()
}

/// Calls the function for `operation` and checks its response (and a successful request)
/// against `spec`, crm-sync's OpenAPI document.
pub async fn call_checked(
    app: &App,
    spec: &OpenApi,
    operation: Operation,
    request: Request,
) -> ApiAnswer {
    let method = request.method().to_string();
    let sent: Value = serde_json::from_slice(request.body().as_ref()).unwrap_or(Value::Null);
    let response = handle(app, operation, request).await.unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, body) = read_response(response);
    let path = format!("/{}", operation.name());
    // A wrong method is documented under the method the operation is served on.
    let spec_method = if status == 405 {
        operation_method(operation).to_string()
    } else {
        method.clone()
    };
    spec.check_response(&spec_method, &path, status, &body)
        .unwrap_or_else(|e| panic!("{e}\nbody: {body}"));
    if status == 200 && method == "POST" {
        spec.check_request("POST", &path, &sent)
            .unwrap_or_else(|e| panic!("{e}\nrequest: {sent}"));
    }
    ApiAnswer {
        status,
        body,
        retry_after,
    }
}

/// What the local record store under `dir` holds on disk: every sync record (and lease) file's
/// text, for tests that read records back or check that no secret reached them.
pub fn sync_record_files(dir: &TempDir) -> Vec<String> {
    std::fs::read_dir(dir.path().join("records"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                // The store's lock file is empty.
                .filter(|text| !text.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The AWS endpoint (moto) the test command started; AWS store tests need it.
pub fn aws_endpoint() -> String {
    std::env::var("CRM_SYNC_TEST_AWS_ENDPOINT").expect(
        "CRM_SYNC_TEST_AWS_ENDPOINT is not set: run the tests with `make test`, which starts moto_server \
         (or start `moto_server -H 127.0.0.1 -p 5000` and set CRM_SYNC_TEST_AWS_ENDPOINT=http://127.0.0.1:5000)",
    )
}

/// An SDK configuration pointed at moto with dummy credentials.
pub async fn aws_sdk_config() -> aws_config::SdkConfig {
    let endpoint = aws_endpoint();
    crm_sync::store::aws::sdk_config_loader()
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

/// Everything written by `tracing` while the guard lives, for checking what logs contain.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// The capture every test of this process logs into, installed as the global subscriber
    /// (JSON, like production's) on first use. A global one sees every callsite; a per-test
    /// thread-local subscriber can miss callsites that other threads registered first.
    pub fn global() -> &'static LogCapture {
        static GLOBAL: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(|| {
            let capture = LogCapture::default();
            let writer = capture.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_max_level(tracing::Level::DEBUG)
                .with_current_span(false)
                .with_span_list(true)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber");
            capture
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fresh production stores on moto: a new table (as the template defines it) and a new secret prefix.
pub async fn aws_stores() -> (
    crm_sync::store::aws::SecretsManagerConnectionStore,
    crm_sync::store::aws::DynamoDbSyncRecordStore,
) {
    let sdk = aws_sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = format!("records-{}", uuid::Uuid::new_v4());
    crate::store_suite::create_records_table(&dynamodb, &table).await;
    let prefix = format!("crm-sync-test-{}/connections/", uuid::Uuid::new_v4());
    (
        crm_sync::store::aws::SecretsManagerConnectionStore::new(
            aws_sdk_secretsmanager::Client::new(&sdk),
            prefix,
        ),
        crm_sync::store::aws::DynamoDbSyncRecordStore::new(dynamodb, table),
    )
}

/// One `scheduled-sync` run with a minute to start records in.
pub async fn drain_once(app: &App) -> crm_sync::sync::DrainSummary {
    app.scheduled_sync(&crm_sync::sync::TimeBudget::of(
        std::time::Duration::from_secs(60),
    ))
    .await
    .expect("the scheduled sync runs")
}
